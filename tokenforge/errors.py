"""Errors are part of the API: one reason code per domain error, one table to gRPC
status codes, one table to HTTP status and OpenAI error objects.

A message tells the user what to do next.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import grpc

from tokenforge.money import Bucket, format_amount


class Reason(enum.StrEnum):
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    UNKNOWN_API_KEY = "UNKNOWN_API_KEY"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    SCOPE_MISSING = "SCOPE_MISSING"
    MODEL_NOT_FOUND = "MODEL_NOT_FOUND"
    MODEL_NOT_ALLOWED = "MODEL_NOT_ALLOWED"
    NOT_FOUND = "NOT_FOUND"
    ACCOUNT_NOT_FOUND = "ACCOUNT_NOT_FOUND"
    INSUFFICIENT_BALANCE = "INSUFFICIENT_BALANCE"
    IDEMPOTENCY_CONFLICT = "IDEMPOTENCY_CONFLICT"
    REQUEST_IN_PROGRESS = "REQUEST_IN_PROGRESS"
    HOLD_NOT_OPEN = "HOLD_NOT_OPEN"
    HOLD_EXPIRED = "HOLD_EXPIRED"
    SETTLE_ABOVE_HOLD = "SETTLE_ABOVE_HOLD"
    INVALID_TRANSITION = "INVALID_TRANSITION"
    PROVIDER_NOT_ALLOWED = "PROVIDER_NOT_ALLOWED"
    RATE_LIMITED = "RATE_LIMITED"
    SPEND_CAP_REACHED = "SPEND_CAP_REACHED"
    REQUEST_TOO_LARGE = "REQUEST_TOO_LARGE"
    UPSTREAM_FAILED = "UPSTREAM_FAILED"
    UPSTREAM_TIMEOUT = "UPSTREAM_TIMEOUT"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"
    GATEWAY_BUSY = "GATEWAY_BUSY"
    RECEIPT_PENDING = "RECEIPT_PENDING"
    INTERNAL = "INTERNAL"


ERROR_DOMAIN = "tokenforge.dev"


@dataclass
class DomainError(Exception):
    """A refusal the caller can act on. `metadata` carries machine-readable details."""

    reason: Reason
    message: str
    metadata: dict[str, str] | None = None

    def __post_init__(self) -> None:
        super().__init__(self.message)
        if self.metadata is None:
            self.metadata = {}

    def __str__(self) -> str:
        return self.message


def insufficient_balance(
    bucket: Bucket, available_micros: int, requested_micros: int, what: str, next_step: str
) -> DomainError:
    """The one 402 text (the wallet refusing a hold, the gateway a request's worst case):
    "<balance> too low: <available> available, <what> <requested>. <next step>", the
    amounts in its details."""
    return DomainError(
        Reason.INSUFFICIENT_BALANCE,
        f"{bucket.label} too low: {format_amount(available_micros, bucket)} available, "
        f"{what} {format_amount(requested_micros, bucket)}. {next_step}",
        {
            "bucket": bucket.value,
            "available_micros": str(available_micros),
            "requested_micros": str(requested_micros),
        },
    )


GRPC_STATUS: dict[Reason, grpc.StatusCode] = {
    Reason.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    Reason.UNKNOWN_API_KEY: grpc.StatusCode.UNAUTHENTICATED,
    Reason.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    Reason.SCOPE_MISSING: grpc.StatusCode.PERMISSION_DENIED,
    Reason.MODEL_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Reason.MODEL_NOT_ALLOWED: grpc.StatusCode.PERMISSION_DENIED,
    Reason.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Reason.ACCOUNT_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Reason.INSUFFICIENT_BALANCE: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.IDEMPOTENCY_CONFLICT: grpc.StatusCode.ALREADY_EXISTS,
    Reason.REQUEST_IN_PROGRESS: grpc.StatusCode.ABORTED,
    Reason.HOLD_NOT_OPEN: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.HOLD_EXPIRED: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.SETTLE_ABOVE_HOLD: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.INVALID_TRANSITION: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.PROVIDER_NOT_ALLOWED: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.RATE_LIMITED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.SPEND_CAP_REACHED: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.REQUEST_TOO_LARGE: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.UPSTREAM_FAILED: grpc.StatusCode.UNAVAILABLE,
    Reason.UPSTREAM_TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    Reason.SERVICE_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Reason.GATEWAY_BUSY: grpc.StatusCode.RESOURCE_EXHAUSTED,
    # Not UNAVAILABLE: a caller reads that as "nothing was charged" without the details.
    Reason.RECEIPT_PENDING: grpc.StatusCode.ABORTED,
    Reason.INTERNAL: grpc.StatusCode.INTERNAL,
}

# HTTP status, OpenAI error `type`, OpenAI error `code`.
HTTP_ERROR: dict[Reason, tuple[int, str, str]] = {
    Reason.INVALID_ARGUMENT: (400, "invalid_request_error", "invalid_request"),
    Reason.UNAUTHENTICATED: (401, "invalid_request_error", "invalid_api_key"),
    Reason.UNKNOWN_API_KEY: (401, "invalid_request_error", "invalid_api_key"),
    Reason.PERMISSION_DENIED: (403, "permission_error", "permission_denied"),
    Reason.SCOPE_MISSING: (403, "permission_error", "scope_missing"),
    Reason.MODEL_NOT_FOUND: (404, "invalid_request_error", "model_not_found"),
    Reason.MODEL_NOT_ALLOWED: (403, "permission_error", "model_not_allowed"),
    Reason.NOT_FOUND: (404, "invalid_request_error", "not_found"),
    Reason.ACCOUNT_NOT_FOUND: (404, "invalid_request_error", "account_not_found"),
    # 402, not 429: SDKs retry 429, and retrying does not add money.
    Reason.INSUFFICIENT_BALANCE: (402, "insufficient_balance", "insufficient_balance"),
    Reason.IDEMPOTENCY_CONFLICT: (409, "invalid_request_error", "idempotency_conflict"),
    Reason.REQUEST_IN_PROGRESS: (409, "invalid_request_error", "request_in_progress"),
    Reason.HOLD_NOT_OPEN: (409, "invalid_request_error", "hold_not_open"),
    Reason.HOLD_EXPIRED: (409, "invalid_request_error", "hold_expired"),
    Reason.SETTLE_ABOVE_HOLD: (409, "invalid_request_error", "settle_above_hold"),
    Reason.INVALID_TRANSITION: (409, "invalid_request_error", "invalid_transition"),
    Reason.PROVIDER_NOT_ALLOWED: (400, "invalid_request_error", "provider_not_allowed"),
    # 429 only for limits that clear with time; `Retry-After` says when.
    Reason.RATE_LIMITED: (429, "rate_limit_error", "rate_limit_exceeded"),
    Reason.SPEND_CAP_REACHED: (403, "permission_error", "spend_cap_reached"),
    Reason.REQUEST_TOO_LARGE: (413, "invalid_request_error", "request_too_large"),
    Reason.UPSTREAM_FAILED: (502, "api_error", "upstream_failed"),
    Reason.UPSTREAM_TIMEOUT: (504, "api_error", "upstream_timeout"),
    Reason.SERVICE_UNAVAILABLE: (503, "api_error", "service_unavailable"),
    # This gateway process holds as many upstream calls as it may (a setting): nothing
    # was reserved or charged; `Retry-After` says when to try again (SDKs retry 503).
    Reason.GATEWAY_BUSY: (503, "api_error", "gateway_busy"),
    # The request ran and its charge (`details.charge_micros`) is taken or being taken,
    # but its receipt could not be recorded yet (a database restarting): it must not be
    # sent again (`x-should-retry: false`); GET /v1/usage/{request id} shows the receipt.
    Reason.RECEIPT_PENDING: (503, "api_error", "receipt_pending"),
    Reason.INTERNAL: (500, "api_error", "internal_error"),
}


# Details that are numbers on the wire (the metadata is strings, as gRPC carries it):
# every amount (`*_micros`) and these counts are written as JSON integers.
INTEGER_DETAILS = frozenset({"retry_after_s", "limit", "max_items"})


def details_json(metadata: dict[str, str]) -> dict[str, object]:
    """An error's `details` as clients read them: amounts and counts as integers."""
    details: dict[str, object] = {}
    for key, value in metadata.items():
        numeric = key.endswith("_micros") or key in INTEGER_DETAILS
        details[key] = int(value) if numeric and _is_integer(value) else value
    return details


def _is_integer(text: str) -> bool:
    digits = text.removeprefix("-")
    return digits.isascii() and digits.isdigit()


def error_code(error: DomainError) -> str:
    """The `code` the answer to `error` carries (what a receipt of it names too)."""
    return HTTP_ERROR[error.reason][2]


def openai_error_body(error: DomainError, param: str | None = None) -> dict[str, object]:
    """The OpenAI error object for a domain error (plus our details under `details`)."""
    _, err_type, code = HTTP_ERROR[error.reason]
    body: dict[str, object] = {
        "message": error.message,
        "type": err_type,
        "param": param,
        "code": code,
    }
    if error.metadata:
        body["details"] = details_json(error.metadata)
    return {"error": body}


def http_status(error: DomainError) -> int:
    return HTTP_ERROR[error.reason][0]


# Anthropic Messages clients (`POST /v1/messages`) read the error's `type` by HTTP status.
ANTHROPIC_ERROR_TYPE: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
}


def anthropic_error_body(error: DomainError, request_id: str = "") -> dict[str, object]:
    """Anthropic's error object for a domain error, keeping our message, our `code` and
    our details (e.g. the bucket and amounts of a 402)."""
    status, _, code = HTTP_ERROR[error.reason]
    inner: dict[str, object] = {
        "type": ANTHROPIC_ERROR_TYPE.get(status, "api_error"),
        "message": error.message,
        "code": code,
    }
    if error.metadata:
        inner["details"] = details_json(error.metadata)
    body: dict[str, object] = {"type": "error", "error": inner}
    if request_id:
        body["request_id"] = request_id
    return body

"""Receipts: the after-story of one request, and the rules for recording and listing them.

One receipt per `request_id`. Recording the same receipt again answers the first;
recording a different one under the same `request_id` is an idempotency conflict.
An account sees only its own receipts; another account's is "not found".
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
from dataclasses import dataclass, replace
from datetime import datetime

from tokenforge.errors import DomainError, Reason
from tokenforge.holds import HOLD_IN_DOUBT
from tokenforge.money import Bucket, Price

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


class ReceiptStatus(enum.StrEnum):
    SUCCEEDED = "succeeded"
    # Stopped early (the client went away): charged for what was generated.
    PARTIAL = "partial"
    FAILED = "failed"
    # Not run: nothing charged.
    REJECTED = "rejected"


class RouteKind(enum.StrEnum):
    OFFICIAL = "official"
    ROUTED = "routed"


@dataclass(frozen=True)
class Attempt:
    channel_id: str
    # "ok", "http_502", "timeout", "connect_error", ...
    outcome: str
    latency_ms: int = 0


@dataclass(frozen=True)
class RouteAttempt:
    """One route a request was tried on when it fell back to another route."""

    route_kind: RouteKind | None
    bucket: Bucket | None
    upstream_model: str = ""
    # The route's prices (tokenforge.money.Price, in `bucket`); None without a bucket.
    prices: Price | None = None
    # Empty when the route's bucket could not pay the worst case (not tried).
    hold_id: str = ""
    # "fell_back" (released), "insufficient_balance" (no hold), "hold_in_doubt" (the
    # wallet never answered its Hold: released if placed, hold_id empty), "final" (it paid).
    outcome: str = ""
    channel_attempts: int = 0


@dataclass(frozen=True)
class Receipt:
    request_id: str
    account_id: str
    status: ReceiptStatus
    project_id: str = ""
    key_id: str = ""
    selected_model: str = ""
    upstream_model: str = ""
    route_kind: RouteKind | None = None
    # None only for a request rejected before a route paid for it.
    bucket: Bucket | None = None
    attempts: tuple[Attempt, ...] = ()
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    tokens_reported: bool = False
    # The prices applied (tokenforge.money.Price, in `bucket`); None without a bucket.
    prices: Price | None = None
    charge_micros: int = 0
    hold_id: str = ""
    entry_id: str = ""
    trace_id: str = ""
    catalog_version: str = ""
    run_id: str = ""
    endpoint: str = ""
    fallback_used: bool = False
    started_at: datetime | None = None
    # Set to the time of recording when the sender leaves it empty.
    finished_at: datetime | None = None
    error_code: str = ""
    # Which row of the gateway's settlement table decided the charge.
    settlement_rule: str = ""
    # Every route tried, when the request fell back to another route (else empty).
    route_attempts: tuple[RouteAttempt, ...] = ()
    # The API format the client spoke ("" for OpenAI chat and embeddings).
    client_format: str = ""
    # Parts of prompt_tokens (written to the upstream's cache) and of completion_tokens
    # (reasoning, priced as output).
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    # The protocol of the channel that answered ("" when none did).
    channel_protocol: str = ""

    @property
    def released_hold_ids(self) -> tuple[str, ...]:
        """Holds placed for this request on routes it left (fell back from)."""
        return tuple(
            a.hold_id for a in self.route_attempts if a.hold_id and a.hold_id != self.hold_id
        )

    @property
    def buckets_in_doubt(self) -> tuple[Bucket, ...]:
        """Buckets of the routes whose Hold the wallet never answered (the hold, if
        placed, is released later, named by no hold id here)."""
        return tuple(
            a.bucket
            for a in self.route_attempts
            if a.outcome == HOLD_IN_DOUBT and a.bucket is not None
        )

    def same_as(self, stored: Receipt) -> bool:
        """Is this the receipt already stored (a replay), not a different one?

        A replay that left `finished_at` empty matches the time the store filled in.
        """
        mine = self if self.finished_at is not None else replace(self, finished_at=None)
        theirs = stored if self.finished_at is not None else replace(stored, finished_at=None)
        return mine == theirs


def validate(receipt: Receipt) -> None:
    problems: list[str] = []
    if not receipt.request_id:
        problems.append("request_id is required")
    if not receipt.account_id:
        problems.append("account_id is required")
    if receipt.charge_micros < 0:
        problems.append(f"charge_micros is never negative (got {receipt.charge_micros})")
    if (
        min(
            receipt.prompt_tokens,
            receipt.cached_tokens,
            receipt.completion_tokens,
            receipt.cache_write_tokens,
            receipt.reasoning_tokens,
        )
        < 0
    ):
        problems.append("token counts are never negative")
    prices = receipt.prices
    if prices is not None and (
        min(
            prices.input_per_million,
            prices.cached_input_per_million,
            prices.output_per_million,
            prices.request_fee,
            prices.cache_write,
        )
        < 0
    ):
        problems.append("prices are never negative")
    if prices is not None and prices.bucket is not receipt.bucket:
        problems.append("the prices are in the receipt's bucket")
    if receipt.charge_micros > 0 and receipt.bucket is None:
        problems.append("a receipt with a charge names the bucket that paid it")
    if problems:
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            "The receipt cannot be recorded: " + "; ".join(problems) + ".",
            {"request_id": receipt.request_id},
        )


def conflict(request_id: str) -> DomainError:
    return DomainError(
        Reason.IDEMPOTENCY_CONFLICT,
        f"A different receipt is already recorded for request {request_id}; a request id "
        "has one receipt. Use a new request id for a new request.",
        {"request_id": request_id},
    )


def not_found(request_id: str) -> DomainError:
    return DomainError(
        Reason.NOT_FOUND,
        f"No receipt for request {request_id} in this account. Check the request id "
        "(the x-request-id header of the answer).",
        {"request_id": request_id},
    )


@dataclass(frozen=True)
class Cursor:
    """Where a page ended: the last receipt's (finished_at, request_id)."""

    finished_at: datetime
    request_id: str

    def encode(self) -> str:
        raw = json.dumps([self.finished_at.isoformat(), self.request_id]).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> Cursor:
        try:
            padded = token + "=" * (-len(token) % 4)
            finished_at, request_id = json.loads(base64.urlsafe_b64decode(padded))
            cursor = cls(datetime.fromisoformat(finished_at), str(request_id))
        except (ValueError, TypeError, binascii.Error):
            raise DomainError(
                Reason.INVALID_ARGUMENT,
                "page_token is not one this service gave; pass next_page_token back as is, "
                "or leave it empty for the first page.",
            ) from None
        if cursor.finished_at.tzinfo is None:
            raise DomainError(Reason.INVALID_ARGUMENT, "page_token is not valid.")
        return cursor


def page_size(requested: int) -> int:
    """0 means the default (50); above 500 is capped at 500."""
    if requested < 0:
        raise DomainError(
            Reason.INVALID_ARGUMENT, f"page_size is never negative (got {requested})."
        )
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


@dataclass(frozen=True)
class ReceiptFilter:
    """Which receipts: every field optional; an empty account_id means every account
    (operators and the reconciliation only: the gateway always names the account).
    The time window selects on finished_at: from_time <= t < to_time."""

    account_id: str = ""
    # A model id matches its suffixed forms too: "demo-chat" finds "demo-chat@routed".
    model: str = ""
    bucket: Bucket | None = None
    status: ReceiptStatus | None = None
    key_id: str = ""
    project_id: str = ""
    from_time: datetime | None = None
    to_time: datetime | None = None
    run_id: str = ""

    def check(self) -> None:
        if self.from_time and self.to_time and self.from_time >= self.to_time:
            raise DomainError(
                Reason.INVALID_ARGUMENT,
                "The time window is empty: `from` must be before `to`.",
                {"param": "from"},
            )


class AggregateBy(enum.StrEnum):
    DAY = "day"
    MODEL = "model"
    KEY = "key"
    PROJECT = "project"
    BUCKET = "bucket"
    STATUS = "status"


@dataclass(frozen=True)
class AggregateRow:
    """The receipts of one group in one bucket: money of two buckets is never added."""

    group: str
    bucket: Bucket | None
    requests: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    charge_micros: int
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

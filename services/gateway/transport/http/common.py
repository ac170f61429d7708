"""What every HTTP handler shares: JSON answers, OpenAI error objects, the API key,
the JSON body, and the caller's principal."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from fastapi import Query, Request
from fastapi.responses import Response

from services.gateway.adapters.peers import Peers
from services.gateway.adapters.upstream import Upstream
from services.gateway.domain.validation import check_json
from services.gateway.flow.finish import charged_anyway
from services.gateway.relay import settle_account
from services.gateway.storage.audit import AuditLog
from services.gateway.storage.idempotency import IdempotencyStore
from tokenforge.errors import DomainError, Reason, http_status, openai_error_body
from tokenforge.generated.routing.v1 import routing_pb2
from tokenforge.runtime.logging import request_id_var


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(payload), status, headers=headers, media_type="application/json")


def internal_error(request_id: str) -> DomainError:
    """What a user sees of a failure nobody planned for: the request id, nothing of
    the internals (those go to the log under that id)."""
    return DomainError(
        Reason.INTERNAL,
        f"Something went wrong on our side. Quote request id {request_id} to support.",
        {"request_id": request_id},
    )


def error_response(error: DomainError) -> Response:
    """The OpenAI error object; `Retry-After` when the refusal clears with time, and
    `x-should-retry: false` when the request was charged all the same.

    An INTERNAL error (ours, or a peer's) answers with the request id alone."""
    if error.reason is Reason.INTERNAL:
        error = internal_error(request_id_var.get())
    metadata = error.metadata or {}
    return json_response(
        openai_error_body(error, metadata.get("param")), http_status(error), error_headers(error)
    )


def error_headers(error: DomainError) -> dict[str, str]:
    """`Retry-After` when the refusal clears with time; `x-should-retry: false` after a
    charge (the official SDKs retry a 5xx unless told not to)."""
    metadata = error.metadata or {}
    headers = {"retry-after": metadata["retry_after_s"]} if "retry_after_s" in metadata else {}
    if charged_anyway(error):
        headers["x-should-retry"] = "false"
    return headers


def client_ip_of(request: Request) -> str:
    """The caller's address, as every key check sees it (the IP allow-list): the
    connection's peer, or what a trusted proxy says in `X-Forwarded-For` (the server
    trusts proxy headers only from TOKENFORGE_TRUSTED_PROXIES, none by default)."""
    return request.client.host if request.client else ""


def api_key_of(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise DomainError(
            Reason.UNAUTHENTICATED,
            "Send your API key as `Authorization: Bearer tf_...`; create one in the console.",
        )
    return key.strip()


MAX_BODY_BYTES = 8 * 1024 * 1024

# A page size: 1 to 500 (a 400 outside, never a 500 from an out-of-range integer).
PageSize = Annotated[int, Query(ge=1, le=500, description="Page size, 1 to 500.")]


async def json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise DomainError(
            Reason.REQUEST_TOO_LARGE,
            f"The request body is {len(raw)} bytes; the limit is {MAX_BODY_BYTES} bytes. "
            "Send a shorter prompt or split the input.",
        )
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        # orjson says where (and refuses invalid UTF-8 and lone surrogates).
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            f"The request body is not valid JSON ({error}).",
            {"param": "body"},
        ) from None
    if not isinstance(body, dict):
        raise DomainError(
            Reason.INVALID_ARGUMENT, "The request body must be a JSON object.", {"param": "body"}
        )
    check_json(raw, body)
    return body


@dataclass
class Deps:
    """What the routers need: the peers, the upstream client, the idempotency store."""

    peers: Peers
    upstream: Upstream
    idempotency: IdempotencyStore | None = None
    # The operator console (transport/http/operator.py): the admin digest the operator
    # credential is checked against, and the audit log its actions are written to.
    operator_digest: str = ""
    audit: AuditLog | None = None

    async def principal(self, request: Request, scope: int) -> routing_pb2.Principal:
        """Authenticate the request's API key for one scope, with every check routing
        makes of a key (active, scope, the caller's address against its allow-list)."""
        return await self.peers.routing_client.authenticate(
            api_key_of(request),
            scope,
            client_ip_of(request),
            request_id=request.state.request_id,
        )

    async def reader(self, request: Request) -> routing_pb2.Principal:
        """Authenticate a read of the account's money or receipts; the read then sees
        every answer the account was given (its queued finishes delivered, this
        replica's idle budgets given back: relay.settle_account)."""
        principal = await self.principal(request, routing_pb2.SCOPE_WALLET_READ)
        await settle_account(self.peers, principal.account_id)
        return principal

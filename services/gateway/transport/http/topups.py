"""The user API for top-ups: open, follow, prove a bank transfer, cancel, and the
sandbox provider's outcomes.

Clients never set an order's status, rate or received balance: the payments service
derives them. A body naming one of those fields is refused (400 naming the field)
rather than silently ignored, so a client that believes it can set them learns it
cannot.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request
from fastapi.responses import Response

from services.gateway.adapters.peers import Peers
from services.gateway.presenting import TOPUP_STATUS, credit_use_json, topup_json
from services.gateway.transport.http.answers import TOPUP, TOPUP_USES, answer, listing
from services.gateway.transport.http.common import Deps, PageSize, json_body, json_response
from services.gateway.transport.http.schemas import (
    SandboxOutcomeRequest,
    TopUpRequest,
    TransferProofRequest,
    body_of,
)
from tokenforge.errors import DomainError, Reason
from tokenforge.generated.payments.v1 import payments_pb2
from tokenforge.generated.routing.v1 import routing_pb2
from tokenforge.generated.wallet.v1 import wallet_pb2
from tokenforge.money import MAX_AMOUNT_MICROS, MICROS_PER_UNIT, MoneyError, parse_amount
from tokenforge.wire import bucket_from_name

log = logging.getLogger(__name__)

SANDBOX_OUTCOMES = {
    "pay": payments_pb2.SANDBOX_OUTCOME_PAY,
    "fail": payments_pb2.SANDBOX_OUTCOME_FAIL,
    "expire": payments_pb2.SANDBOX_OUTCOME_EXPIRE,
}
STATUS_FILTER = {name: value for value, name in TOPUP_STATUS.items()}

CREATE_FIELDS = frozenset({"bucket", "provider", "amount", "currency"})
# Derived by the payments service, never taken from a client.
SERVER_FIELDS = frozenset(
    {
        "status",
        "rate",
        "rate_micros_per_minor",
        "received",
        "received_balance",
        "received_micros",
        "received_amount",
        "order_id",
        "expires_at",
        "ledger_entry_id",
        "provider_reference",
        "provider_transaction_id",
        "checkout_url",
        "transitions",
    }
)


def _refuse_server_fields(body: dict[str, object], allowed: frozenset[str]) -> None:
    for name in sorted(body):
        if name in SERVER_FIELDS:
            raise DomainError(
                Reason.INVALID_ARGUMENT,
                f"`{name}` is set by tokenforge, not by the client: the status, the rate and "
                "the received balance follow from the provider, the amount paid and the "
                f"bucket. Send only {', '.join(sorted(allowed))}.",
                {"param": name},
            )


def _minor_units(raw: object) -> int:
    try:
        micros = parse_amount(str(raw)) if isinstance(raw, str | int) else -1
    except MoneyError:
        micros = -1
    if micros <= 0 or micros % 10_000:
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            "amount must be a positive decimal number of the currency with at most 2 "
            f'decimals, like "10.00", and at most {MAX_AMOUNT_MICROS // MICROS_PER_UNIT:,}.',
            {"param": "amount"},
        )
    return micros // 10_000


# A provider name, a currency code; a bank transfer's reference.
MAX_NAME_CHARS = 64
MAX_REFERENCE_CHARS = 256


def _text(body: dict[str, object], name: str, default: str, limit: int) -> str:
    value = body.get(name, default)
    if not isinstance(value, str) or len(value) > limit:
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            f"`{name}` must be a string of at most {limit} characters.",
            {"param": name},
        )
    return value


def router(deps: Deps) -> APIRouter:
    r = APIRouter()
    peers: Peers = deps.peers

    async def ledger_entry_id(
        account_id: str, top_up: payments_pb2.TopUp, request_id: str
    ) -> str | None:
        """The wallet's credit for a paid order, once it is there."""
        if top_up.status != payments_pb2.TOP_UP_STATUS_SUCCEEDED:
            return None
        try:
            answer = await peers.wallet_client.ledger(
                account_id, order_id=top_up.order_id, page_size=1
            )
        except DomainError as error:
            log.warning("ledger lookup for top-up %s failed: %s", top_up.order_id, error)
            return None
        return str(answer.entries[0].entry_id) if answer.entries else None

    async def ledger_entry_ids(
        account_id: str, top_ups: list[payments_pb2.TopUp], request: Request
    ) -> list[str | None]:
        """The credits of a page of orders: one read of the newest top-up credits, then
        a lookup per order only for paid orders older than those (older pages)."""
        paid = [t for t in top_ups if t.status == payments_pb2.TOP_UP_STATUS_SUCCEEDED]
        found: dict[str, str] = {}
        if paid:
            try:
                recent = await peers.wallet_client.ledger(
                    account_id, kind=wallet_pb2.ENTRY_KIND_TOPUP_CREDIT, page_size=500
                )
                found = {e.order_id: e.entry_id for e in recent.entries}
            except DomainError as error:
                log.warning("ledger lookup for top-ups failed: %s", error)
        missing = [t for t in paid if t.order_id not in found]
        older = await asyncio.gather(
            *(ledger_entry_id(account_id, t, request.state.request_id) for t in missing)
        )
        found.update({t.order_id: e for t, e in zip(missing, older, strict=True) if e})
        return [found.get(t.order_id) for t in top_ups]

    async def present(
        account_id: str, top_up: payments_pb2.TopUp, request: Request, status: int = 200
    ) -> Response:
        entry = await ledger_entry_id(account_id, top_up, request.state.request_id)
        return json_response(topup_json(top_up, entry), status)

    @r.post(
        "/v1/topups",
        tags=["topups"],
        status_code=201,
        openapi_extra=body_of(TopUpRequest),
        responses=answer(TOPUP, 200, 201),
    )
    async def create_topup(request: Request) -> Response:
        """Open a top-up order: it names the balance it will credit, for good.

        `provider` is one this deployment offers (`manual_transfer`; `stripe` where
        card payments are configured; `sandbox`, test money, only where it is turned
        on, and then it is also the default); another is refused (400
        `provider_not_allowed`, naming those on).

        Send `Idempotency-Key`: a retry with the same key and body returns the same
        order (200); the same key with another body is refused (409).
        """
        who = await deps.principal(request, routing_pb2.SCOPE_TOPUP)
        body = await json_body(request)
        _refuse_server_fields(body, CREATE_FIELDS)
        bucket = bucket_from_name(_text(body, "bucket", "", MAX_NAME_CHARS))
        # No provider named: the payments service picks its default (the sandbox, only
        # where test money is on) or refuses, naming the providers this deployment offers.
        provider = _text(body, "provider", "", MAX_NAME_CHARS)
        currency = _text(body, "currency", "USD", MAX_NAME_CHARS).upper()
        minor = _minor_units(body.get("amount", ""))
        key = request.headers.get("idempotency-key") or request.state.request_id
        answer = await peers.payments_client.create_top_up(
            who.account_id, bucket, provider, minor, currency, key
        )
        return await present(
            who.account_id, answer.top_up, request, 200 if answer.replayed else 201
        )

    @r.get("/v1/topups", tags=["topups"], responses=answer(listing(TOPUP)))
    async def list_topups(
        request: Request, limit: PageSize = 20, cursor: str | None = None, status: str | None = None
    ) -> Response:
        who = await deps.reader(request)
        wanted = payments_pb2.TOP_UP_STATUS_UNSPECIFIED
        if status:
            if status not in STATUS_FILTER:
                raise DomainError(
                    Reason.INVALID_ARGUMENT,
                    f"status must be one of {', '.join(STATUS_FILTER)}.",
                    {"param": "status"},
                )
            wanted = STATUS_FILTER[status]
        answer = await peers.payments_client.list_top_ups(
            who.account_id, status=wanted, page_size=limit, page_token=cursor or ""
        )
        entries = await ledger_entry_ids(who.account_id, list(answer.top_ups), request)
        return json_response(
            {
                "object": "list",
                "data": [topup_json(t, e) for t, e in zip(answer.top_ups, entries, strict=True)],
                "next_cursor": answer.next_page_token or None,
            }
        )

    @r.get("/v1/topups/{order_id}", tags=["topups"], responses=answer(TOPUP))
    async def get_topup(order_id: str, request: Request) -> Response:
        who = await deps.reader(request)
        top_up = await peers.payments_client.get_top_up(who.account_id, order_id)
        return await present(who.account_id, top_up, request)

    @r.get("/v1/topups/{order_id}/uses", tags=["topups"], responses=answer(TOPUP_USES))
    async def topup_uses(
        order_id: str, request: Request, limit: PageSize = 50, cursor: str | None = None
    ) -> Response:
        """What a credited top-up paid for: its received balance, how much is used and
        left, and the requests (with their receipts) it paid, oldest first. First in,
        first out over the bucket's ledger (docs/GLOSSARY.md, "What a top-up paid for")."""
        who = await deps.reader(request)
        found = await peers.wallet_client.credit_use(
            who.account_id, order_id=order_id, page_size=limit, page_token=cursor or ""
        )
        return json_response(credit_use_json(found))

    @r.post(
        "/v1/topups/{order_id}/proof",
        tags=["topups"],
        openapi_extra=body_of(TransferProofRequest),
        responses=answer(TOPUP),
    )
    async def submit_proof(order_id: str, request: Request) -> Response:
        """Bank transfer orders: send the transfer's reference; an operator reviews it."""
        who = await deps.principal(request, routing_pb2.SCOPE_TOPUP)
        body = await json_body(request)
        _refuse_server_fields(body, frozenset({"transfer_reference"}))
        name = "transfer_reference" if "transfer_reference" in body else "reference"
        reference = _text(body, name, "", MAX_REFERENCE_CHARS)
        top_up = await peers.payments_client.submit_transfer_proof(
            who.account_id, order_id, str(reference)
        )
        return await present(who.account_id, top_up, request)

    @r.post("/v1/topups/{order_id}/cancel", tags=["topups"], responses=answer(TOPUP))
    async def cancel_topup(order_id: str, request: Request) -> Response:
        """Cancel a pending order: nothing was paid, nothing is added."""
        who = await deps.principal(request, routing_pb2.SCOPE_TOPUP)
        top_up = await peers.payments_client.cancel_top_up(who.account_id, order_id)
        return await present(who.account_id, top_up, request)

    @r.post(
        "/v1/topups/{order_id}/sandbox",
        tags=["topups"],
        openapi_extra=body_of(SandboxOutcomeRequest),
        responses=answer(TOPUP),
    )
    async def sandbox_outcome(order_id: str, request: Request) -> Response:
        """Sandbox provider only: pay, fail or expire the order (dev and demos). Where
        the sandbox provider is off (TOKENFORGE_SANDBOX_PROVIDER), this answers 404."""
        who = await deps.principal(request, routing_pb2.SCOPE_TOPUP)
        body = await json_body(request)
        outcome = SANDBOX_OUTCOMES.get(str(body.get("outcome", "")))
        if outcome is None:
            raise DomainError(
                Reason.INVALID_ARGUMENT,
                f"outcome must be one of {', '.join(SANDBOX_OUTCOMES)}.",
                {"param": "outcome"},
            )
        top_up = await peers.payments_client.simulate_sandbox_outcome(
            who.account_id, order_id, outcome
        )
        return await present(who.account_id, top_up, request)

    return r

"""The HTTP front: the OpenAI-compatible API and the user API.

Handlers translate HTTP to use-case calls and map DomainError to the OpenAI error
object through tokenforge.errors.HTTP_ERROR. Every answer carries x-request-id.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from opentelemetry import trace
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.gateway.adapters.peers import Peers
from services.gateway.adapters.upstream import Upstream
from services.gateway.domain.planning import new_request_id
from services.gateway.domain.presenting import (
    amount,
    balance_json,
    ledger_entry_json,
    model_json,
    receipt_json,
    topup_json,
)
from services.gateway.handlers import (
    CHAT,
    EMBEDDINGS,
    ChatCommand,
    charge_policy_name,
    complete,
    preview,
    start_chat_stream,
)
from tokenforge.errors import DomainError, Reason, http_status, openai_error_body
from tokenforge.money import MoneyError, parse_amount
from tokenforge.payments.v1 import payments_pb2
from tokenforge.routing.v1 import routing_pb2
from tokenforge.runtime.logging import request_id_var
from tokenforge.runtime.telemetry import current_trace_id
from tokenforge.usage.v1 import usage_pb2
from tokenforge.wallet.v1 import wallet_pb2
from tokenforge.wire import (
    bucket_from_name,
    bucket_from_proto,
    bucket_to_proto,
    route_kind_from_proto,
)

log = logging.getLogger(__name__)

SANDBOX_OUTCOMES = {
    "pay": payments_pb2.SANDBOX_OUTCOME_PAY,
    "fail": payments_pb2.SANDBOX_OUTCOME_FAIL,
    "expire": payments_pb2.SANDBOX_OUTCOME_EXPIRE,
}


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(payload), status, headers=headers, media_type="application/json")


def error_response(error: DomainError) -> Response:
    return json_response(
        openai_error_body(error, (error.metadata or {}).get("param")), http_status(error)
    )


def api_key_of(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise DomainError(
            Reason.UNAUTHENTICATED,
            "Send your API key as `Authorization: Bearer tf_...`; create one in the console.",
        )
    return key.strip()


async def json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise DomainError(Reason.INVALID_ARGUMENT, "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise DomainError(Reason.INVALID_ARGUMENT, "The request body must be a JSON object.")
    return body


def create_app(peers: Peers, upstream: Upstream) -> FastAPI:
    app = FastAPI(
        title="tokenforge gateway",
        version="1",
        description="One OpenAI-compatible API; the money story of each request, before and after.",
    )

    @app.middleware("http")
    async def request_id_middleware(request: Request, call_next: Any) -> Response:
        request_id = new_request_id()
        request.state.request_id = request_id
        token = request_id_var.set(request_id)
        try:
            response: Response = await call_next(request)
        finally:
            request_id_var.reset(token)
        response.headers["x-request-id"] = request_id
        if trace_id := current_trace_id():
            response.headers["x-trace-id"] = trace_id
        return response

    @app.exception_handler(DomainError)
    async def on_domain_error(request: Request, error: DomainError) -> Response:
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, error: RequestValidationError) -> Response:
        return error_response(
            DomainError(Reason.INVALID_ARGUMENT, f"Invalid request: {error.errors()}")
        )

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, error: StarletteHTTPException) -> Response:
        reason = Reason.NOT_FOUND if error.status_code == 404 else Reason.INVALID_ARGUMENT
        message = (
            f"No such endpoint: {request.method} {request.url.path}. See /openapi.json."
            if error.status_code in (404, 405)
            else str(error.detail)
        )
        return json_response(openai_error_body(DomainError(reason, message)), error.status_code)

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, error: Exception) -> Response:
        log.exception("unexpected error")
        return error_response(
            DomainError(
                Reason.INTERNAL,
                "Something went wrong on our side; nothing was charged for an unfinished "
                f"request. Quote request id {getattr(request.state, 'request_id', '')}.",
            )
        )

    async def principal(request: Request, scope: int) -> routing_pb2.Principal:
        answer = await peers.routing.call(
            peers.routing_stub.Authenticate,
            routing_pb2.AuthenticateRequest(api_key=api_key_of(request), scope=scope),  # type: ignore[arg-type]
            request_id=request.state.request_id,
        )
        principal: routing_pb2.Principal = answer.principal
        return principal

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    def command(request: Request, body: dict[str, Any]) -> ChatCommand:
        return ChatCommand(
            request_id=request.state.request_id,
            api_key=api_key_of(request),
            body=body,
            trace_id=current_trace_id(),
            client_ip=request.client.host if request.client else "",
        )

    def annotate(outcome_receipt: Any, headers: dict[str, str]) -> None:
        r = outcome_receipt
        trace.get_current_span().set_attributes(
            {
                "gen_ai.request.model": r.selected_model,
                "gen_ai.response.model": r.upstream_model,
                "gen_ai.usage.input_tokens": r.prompt_tokens,
                "gen_ai.usage.output_tokens": r.completion_tokens,
                "tokenforge.route": headers.get("x-tokenforge-route", ""),
                "tokenforge.bucket": headers.get("x-tokenforge-bucket", ""),
                "tokenforge.charge_micros": r.charge_micros,
            }
        )

    @app.post("/v1/chat/completions", tags=["openai"])
    async def chat_completions(request: Request) -> Response:
        """Chat completion (OpenAI wire format, `stream` included) with `usage.cost` and a
        `tokenforge` receipt summary; the receipt is at GET /v1/usage/{x-request-id}."""
        body = await json_body(request)
        if body.get("stream") is True:
            stream = await start_chat_stream(peers, upstream, command(request, body))
            return StreamingResponse(
                stream.events(),
                media_type="text/event-stream",
                headers={**stream.headers, "cache-control": "no-cache"},
            )
        outcome = await complete(peers, upstream, command(request, body), CHAT)
        annotate(outcome.receipt, outcome.headers)
        return json_response(outcome.payload, outcome.status, outcome.headers)

    @app.post("/v1/embeddings", tags=["openai"])
    async def embeddings(request: Request) -> Response:
        """Embeddings (OpenAI wire format) with `usage.cost` and a receipt."""
        body = await json_body(request)
        outcome = await complete(peers, upstream, command(request, body), EMBEDDINGS)
        annotate(outcome.receipt, outcome.headers)
        return json_response(outcome.payload, outcome.status, outcome.headers)

    @app.post("/v1/routes/preview", tags=["routes"])
    async def route_preview(request: Request) -> Response:
        """The "before" list of a chat or embeddings body, without calling upstream."""
        body = await json_body(request)
        p = await preview(peers, api_key_of(request), body, request.state.request_id)
        route = p.resolved.route
        bucket = p.price.bucket
        return json_response(
            {
                "selected_model": p.resolved.selected_model,
                "upstream_model": route.upstream_model,
                "route": route_kind_from_proto(route.kind),
                "bucket": bucket.value,
                "bucket_label": bucket.label,
                "prices": {
                    "input_per_million": amount(p.price.input_per_million, bucket),
                    "output_per_million": amount(p.price.output_per_million, bucket),
                    "cached_input_per_million": amount(p.price.cached_input_per_million, bucket),
                    "request_fee": amount(p.price.request_fee, bucket),
                    "text": p.price.describe(),
                },
                "channels": {
                    "primary": route.channels[0].channel_id if route.channels else None,
                    "backups": [c.channel_id for c in route.channels[1:]],
                },
                "retry": {
                    "max_attempts": route.retry.max_attempts,
                    "retry_on": list(route.retry.retry_on),
                    "before_first_byte_only": True,
                },
                "fallback_routes": [
                    {
                        "route": route_kind_from_proto(r.kind),
                        "bucket": bucket_from_proto(r.bucket).value,
                    }
                    for r in p.resolved.fallback_routes
                ],
                "if_the_request_fails": charge_policy_name(route.charge_policy),
                "max_output_tokens": p.plan.max_output_tokens,
                "worst_case_cost": amount(p.plan.worst_case.micros, bucket),
                "available": amount(p.available.micros, bucket),
                "can_run": p.available.micros >= p.plan.worst_case.micros,
                "catalog_version": p.resolved.catalog_version,
                "account_id": p.resolved.principal.account_id,
                "key_id": p.resolved.principal.key_id,
            }
        )

    @app.get("/v1/models", tags=["openai"])
    async def list_models(request: Request) -> Response:
        """Every model with its routes: kind, the bucket that pays, prices."""
        await principal(request, routing_pb2.SCOPE_INFERENCE)
        answer = await peers.routing.call(
            peers.routing_stub.ListModels, routing_pb2.ListModelsRequest()
        )
        created = int(time.time())
        return json_response(
            {
                "object": "list",
                "data": [model_json(m, created) for m in answer.models],
                "catalog_version": answer.catalog_version,
            }
        )

    @app.get("/v1/models/{model_id}", tags=["openai"])
    async def get_model(model_id: str, request: Request) -> Response:
        await principal(request, routing_pb2.SCOPE_INFERENCE)
        answer = await peers.routing.call(
            peers.routing_stub.ListModels, routing_pb2.ListModelsRequest()
        )
        for m in answer.models:
            if m.id == model_id:
                return json_response(model_json(m, int(time.time())))
        raise DomainError(Reason.MODEL_NOT_FOUND, f"No model {model_id!r}; see GET /v1/models.")

    @app.get("/v1/wallet", tags=["wallet"])
    async def wallet(request: Request) -> Response:
        """Both balances side by side: posted, reserved for requests in progress, available."""
        who = await principal(request, routing_pb2.SCOPE_WALLET_READ)
        answer = await peers.wallet.call(
            peers.wallet_stub.GetBalances,
            wallet_pb2.GetBalancesRequest(account_id=who.account_id),
            request_id=request.state.request_id,
        )
        return json_response(
            {"account_id": who.account_id, "balances": [balance_json(b) for b in answer.balances]}
        )

    @app.get("/v1/wallet/ledger", tags=["wallet"])
    async def ledger(
        request: Request,
        bucket: str | None = None,
        request_id: str | None = None,
        order_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Response:
        """Ledger rows, newest first, each with the balance after it."""
        who = await principal(request, routing_pb2.SCOPE_WALLET_READ)
        answer = await peers.wallet.call(
            peers.wallet_stub.ListLedger,
            wallet_pb2.ListLedgerRequest(
                account_id=who.account_id,
                bucket=bucket_to_proto(bucket_from_name(bucket)) if bucket else 0,  # type: ignore[arg-type]
                request_id=request_id or "",
                order_id=order_id or "",
                page_size=limit,
                page_token=cursor or "",
            ),
            request_id=request.state.request_id,
        )
        return json_response(
            {
                "object": "list",
                "data": [ledger_entry_json(e) for e in answer.entries],
                "next_cursor": answer.next_page_token or None,
            }
        )

    @app.get("/v1/usage/{receipt_request_id}", tags=["usage"])
    async def get_receipt(receipt_request_id: str, request: Request) -> Response:
        """The receipt of one request, with its ledger row and trace id."""
        who = await principal(request, routing_pb2.SCOPE_WALLET_READ)
        answer = await peers.usage.call(
            peers.usage_stub.GetReceipt,
            usage_pb2.GetReceiptRequest(account_id=who.account_id, request_id=receipt_request_id),
            request_id=request.state.request_id,
        )
        return json_response(receipt_json(answer.receipt))

    @app.get("/v1/usage", tags=["usage"])
    async def list_receipts(
        request: Request, model: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> Response:
        who = await principal(request, routing_pb2.SCOPE_WALLET_READ)
        answer = await peers.usage.call(
            peers.usage_stub.ListReceipts,
            usage_pb2.ListReceiptsRequest(
                account_id=who.account_id,
                model=model or "",
                page_size=limit,
                page_token=cursor or "",
            ),
            request_id=request.state.request_id,
        )
        return json_response(
            {
                "object": "list",
                "data": [receipt_json(r) for r in answer.receipts],
                "next_cursor": answer.next_page_token or None,
            }
        )

    @app.post("/v1/topups", tags=["topups"])
    async def create_topup(request: Request) -> Response:
        """Open a top-up order: it names the balance it will credit, for good."""
        who = await principal(request, routing_pb2.SCOPE_TOPUP)
        body = await json_body(request)
        bucket = bucket_from_name(str(body.get("bucket", "")))
        provider = str(body.get("provider", "sandbox"))
        currency = str(body.get("currency", "USD")).upper()
        try:
            minor = parse_amount(str(body.get("amount", ""))) // 10_000
        except MoneyError:
            raise DomainError(
                Reason.INVALID_ARGUMENT,
                'amount must be a decimal number of the currency, like "10.00".',
                {"param": "amount"},
            ) from None
        key = request.headers.get("idempotency-key") or request.state.request_id
        answer = await peers.payments.call(
            peers.payments_stub.CreateTopUp,
            payments_pb2.CreateTopUpRequest(
                account_id=who.account_id,
                bucket=bucket_to_proto(bucket),
                provider=provider,
                paid_amount_minor=minor,
                currency=currency,
                idempotency_key=key,
            ),
            request_id=request.state.request_id,
        )
        return json_response(topup_json(answer.top_up), 201)

    @app.get("/v1/topups", tags=["topups"])
    async def list_topups(request: Request, limit: int = 20, cursor: str | None = None) -> Response:
        who = await principal(request, routing_pb2.SCOPE_WALLET_READ)
        answer = await peers.payments.call(
            peers.payments_stub.ListTopUps,
            payments_pb2.ListTopUpsRequest(
                account_id=who.account_id, page_size=limit, page_token=cursor or ""
            ),
            request_id=request.state.request_id,
        )
        return json_response(
            {
                "object": "list",
                "data": [topup_json(t) for t in answer.top_ups],
                "next_cursor": answer.next_page_token or None,
            }
        )

    @app.get("/v1/topups/{order_id}", tags=["topups"])
    async def get_topup(order_id: str, request: Request) -> Response:
        who = await principal(request, routing_pb2.SCOPE_WALLET_READ)
        answer = await peers.payments.call(
            peers.payments_stub.GetTopUp,
            payments_pb2.GetTopUpRequest(account_id=who.account_id, order_id=order_id),
            request_id=request.state.request_id,
        )
        return json_response(topup_json(answer.top_up))

    @app.post("/v1/topups/{order_id}/sandbox", tags=["topups"])
    async def sandbox_outcome(order_id: str, request: Request) -> Response:
        """Sandbox provider only: pay, fail or expire the order (dev and demos)."""
        who = await principal(request, routing_pb2.SCOPE_TOPUP)
        body = await json_body(request)
        outcome = SANDBOX_OUTCOMES.get(str(body.get("outcome", "")))
        if outcome is None:
            raise DomainError(
                Reason.INVALID_ARGUMENT,
                f"outcome must be one of {', '.join(SANDBOX_OUTCOMES)}.",
                {"param": "outcome"},
            )
        answer = await peers.payments.call(
            peers.payments_stub.SimulateSandboxOutcome,
            payments_pb2.SimulateSandboxOutcomeRequest(
                account_id=who.account_id, order_id=order_id, outcome=outcome
            ),
            request_id=request.state.request_id,
        )
        return json_response(topup_json(answer.top_up))

    return app

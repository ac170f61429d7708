"""Webhooks in: a payment provider's signed notifications.

No API key here: the provider's signature over the raw body is the authentication,
so the body is handed to the payments service byte for byte (never parsed and
re-serialized) with the request's headers. 200 for an event accepted, a duplicate
or one that needs nothing; 400 for a bad signature or a stale or future timestamp;
404 for a provider that takes no webhooks.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from services.gateway.adapters.peers import Peers
from services.gateway.transport.http.answers import WEBHOOK, answer
from services.gateway.transport.http.common import Deps, json_response
from tokenforge.generated.payments.v1 import payments_pb2

OUTCOMES = {
    payments_pb2.PROVIDER_EVENT_OUTCOME_ACCEPTED: "accepted",
    payments_pb2.PROVIDER_EVENT_OUTCOME_DUPLICATE: "duplicate",
    payments_pb2.PROVIDER_EVENT_OUTCOME_IGNORED: "ignored",
}

# The provider's own event, signed over its raw bytes (e.g. a Stripe event object).
PROVIDER_EVENT = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"type": "object", "description": "The provider's signed event."}
            }
        },
    }
}


def router(deps: Deps) -> APIRouter:
    r = APIRouter()
    peers: Peers = deps.peers

    @r.post(
        "/webhooks/payments/{provider}",
        tags=["webhooks"],
        openapi_extra=PROVIDER_EVENT,
        responses=answer(WEBHOOK),
    )
    async def provider_webhook(provider: str, request: Request) -> Response:
        body = await request.body()
        answer = await peers.payments_client.handle_provider_event(
            provider,
            body,
            {k.lower(): v for k, v in request.headers.items()},
            request_id=request.state.request_id,
        )
        return json_response(
            {
                "received": True,
                "outcome": OUTCOMES.get(answer.outcome, "accepted"),
                "event_id": answer.provider_event_id,
            }
        )

    return r

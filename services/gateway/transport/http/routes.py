"""POST /v1/routes/preview: the "before" list of a request, without calling upstream."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import Response

from services.gateway.adapters.peers import Peers
from services.gateway.flow.call import charge_policy_name
from services.gateway.flow.preview import preview
from services.gateway.presenting import (
    amount,
)
from services.gateway.transport.http.answers import PREVIEW, answer
from services.gateway.transport.http.common import (
    Deps,
    api_key_of,
    client_ip_of,
    json_body,
    json_response,
)
from services.gateway.transport.http.schemas import ChatCompletionRequest, body_of
from tokenforge.wire import (
    bucket_from_proto,
    route_kind_from_proto,
)

log = logging.getLogger(__name__)


def router(deps: Deps) -> APIRouter:
    r = APIRouter()
    peers: Peers = deps.peers

    @r.post(
        "/v1/routes/preview",
        tags=["routes"],
        openapi_extra=body_of(ChatCompletionRequest),
        responses=answer(PREVIEW),
    )
    async def route_preview(request: Request) -> Response:
        """The "before" list of a chat or embeddings body, without calling upstream."""
        body = await json_body(request)
        p = await preview(
            peers, api_key_of(request), body, request.state.request_id, client_ip_of(request)
        )
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
                    "cache_write_per_million": amount(p.price.cache_write, bucket),
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
                "worst_case": amount(p.plan.worst_case.micros, bucket),
                # Kept one release (docs/GLOSSARY.md, "Wire changes"): `worst_case`.
                "worst_case_cost": amount(p.plan.worst_case.micros, bucket),
                "available": amount(p.available.micros, bucket),
                "can_run": p.available.micros >= p.plan.worst_case.micros,
                "catalog_version": p.resolved.catalog_version,
                "account_id": p.resolved.principal.account_id,
                "key_id": p.resolved.principal.key_id,
            }
        )

    return r

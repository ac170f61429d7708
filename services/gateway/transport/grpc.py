"""GatewayService over gRPC: the route preview for internal callers."""

from __future__ import annotations

import grpc

from services.gateway.adapters.peers import Peers
from services.gateway.domain.planning import new_request_id
from services.gateway.flow.call import charge_policy_name
from services.gateway.flow.preview import preview
from tokenforge.generated.gateway.v1 import gateway_pb2, gateway_pb2_grpc


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):  # type: ignore[misc]
    def __init__(self, peers: Peers) -> None:
        self.peers = peers

    async def PreviewRoute(  # noqa: N802 (gRPC method name)
        self, request: gateway_pb2.PreviewRouteRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.PreviewRouteResponse:
        body: dict[str, object] = {
            "model": request.model,
            "messages": [{"role": "user", "content": "x" * max(request.prompt_tokens, 0)}],
        }
        if request.max_output_tokens:
            body["max_tokens"] = request.max_output_tokens
        p = await preview(self.peers, request.api_key, body, new_request_id())
        route = p.resolved.route
        return gateway_pb2.PreviewRouteResponse(
            selected_model=p.resolved.selected_model,
            upstream_model=route.upstream_model,
            route_kind=route.kind,
            bucket=route.bucket,
            prices=route.prices,
            channel_ids=[c.channel_id for c in route.channels],
            worst_case_micros=p.plan.worst_case.micros,
            available_micros=p.available.micros,
            charge_policy=charge_policy_name(route.charge_policy),
            fallback_allowed=len(p.resolved.fallback_routes) > 0,
            catalog_version=p.resolved.catalog_version,
        )

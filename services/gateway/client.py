"""A small typed async client of the gateway's gRPC side, for internal callers: the
route preview (what a request would cost and where it would go; nothing is held,
charged or sent upstream). Clients of the public API speak HTTP to the gateway.

    client = GatewayClient.connect(settings.gateway_addr, settings.peer_token)
    preview = await client.preview_route(api_key, "demo-chat", prompt_tokens=200)
"""

from __future__ import annotations

from typing import Any

from tokenforge.generated.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from tokenforge.runtime.grpc_client import Peer
from tokenforge.runtime.service_client import ServiceClient


class GatewayClient(ServiceClient):
    """Calls GatewayService; answers the proto messages."""

    service = "gateway"

    def __init__(self, peer: Peer, **options: Any) -> None:
        super().__init__(peer, **options)
        self.stub = gateway_pb2_grpc.GatewayServiceStub(peer.channel)

    async def preview_route(
        self, api_key: str, model: str, *, prompt_tokens: int = 0, max_output_tokens: int = 0
    ) -> gateway_pb2.PreviewRouteResponse:
        """The route, prices and worst case a request of this size would get, and what
        the key's account has available for it."""
        answer: gateway_pb2.PreviewRouteResponse = await self._call(
            "PreviewRoute",
            gateway_pb2.PreviewRouteRequest(
                api_key=api_key,
                model=model,
                prompt_tokens=prompt_tokens,
                max_output_tokens=max_output_tokens,
            ),
        )
        return answer

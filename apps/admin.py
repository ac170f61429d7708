"""Operator actions that span contexts, shared by the CLI and `tokenforge dev`.

Opening an account opens its wallet buckets (wallet) and its default project
(routing); both calls are idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.routing.client import RoutingClient
from services.wallet.client import WalletClient
from tokenforge.generated.routing.v1 import routing_pb2
from tokenforge.generated.wallet.v1 import wallet_pb2
from tokenforge.money import Bucket
from tokenforge.runtime.grpc_client import Peer


@dataclass
class Operator:
    """Peers called with the operator's credential, through the services' typed clients."""

    routing: Peer
    wallet: Peer

    @classmethod
    def connect(cls, services: dict[str, str], admin_token: str) -> Operator:
        return cls(
            routing=Peer("routing", services["routing"], admin_token),
            wallet=Peer("wallet", services["wallet"], admin_token),
        )

    @cached_property
    def routing_client(self) -> RoutingClient:
        return RoutingClient(self.routing)

    @cached_property
    def wallet_client(self) -> WalletClient:
        return WalletClient(self.wallet)

    async def close(self) -> None:
        await self.routing.close()
        await self.wallet.close()

    async def open_account(self, account_id: str, display_name: str = "") -> str:
        """Open the account in wallet and routing; answers its default project id."""
        await self.wallet_client.open_account(account_id)
        return await self.routing_client.open_account(account_id, display_name)

    async def create_key(
        self,
        account_id: str,
        project_id: str,
        name: str,
        settings: routing_pb2.KeySettings | None = None,
    ) -> str:
        answer = await self.routing_client.create_api_key(
            routing_pb2.CreateApiKeyRequest(
                account_id=account_id, project_id=project_id, name=name, settings=settings
            )
        )
        return str(answer.api_key)

    async def adjust(
        self, account_id: str, bucket: Bucket, micros: int, reason: str, key: str, operator: str
    ) -> wallet_pb2.LedgerEntry:
        return await self.wallet_client.adjust(
            account_id, bucket, micros, reason, key, operator=operator
        )

    async def balances(self, account_id: str) -> list[wallet_pb2.BucketBalance]:
        return await self.wallet_client.balances(account_id, split_held=True)


async def health_status(address: str, timeout: float = 1.0) -> str:
    """The grpc.health.v1 status of a server ("SERVING", "NOT_SERVING", or "DOWN")."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            answer = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.aio.AioRpcError:
            return "DOWN"
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))

"""Operator actions that span contexts, shared by the CLI and `tokenforge dev`.

Opening an account opens its wallet buckets (wallet) and its default project
(routing); both calls are idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tokenforge.money import Bucket
from tokenforge.routing.v1 import routing_pb2, routing_pb2_grpc
from tokenforge.runtime.grpc_client import Peer
from tokenforge.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from tokenforge.wire import bucket_to_proto


@dataclass
class Operator:
    """Peers called with the operator's credential."""

    routing: Peer
    wallet: Peer

    @classmethod
    def connect(cls, services: dict[str, str], admin_token: str) -> Operator:
        return cls(
            routing=Peer("routing", services["routing"], admin_token),
            wallet=Peer("wallet", services["wallet"], admin_token),
        )

    async def close(self) -> None:
        await self.routing.close()
        await self.wallet.close()

    async def open_account(self, account_id: str, display_name: str = "") -> str:
        """Open the account in wallet and routing; answers its default project id."""
        await self.wallet.call(
            wallet_pb2_grpc.WalletServiceStub(self.wallet.channel).OpenAccount,
            wallet_pb2.OpenAccountRequest(account_id=account_id),
        )
        answer = await self.routing.call(
            routing_pb2_grpc.RoutingServiceStub(self.routing.channel).OpenAccount,
            routing_pb2.OpenAccountRequest(account_id=account_id, display_name=display_name),
        )
        return str(answer.project_id)

    async def create_key(
        self,
        account_id: str,
        project_id: str,
        name: str,
        settings: routing_pb2.KeySettings | None = None,
    ) -> str:
        answer = await self.routing.call(
            routing_pb2_grpc.RoutingServiceStub(self.routing.channel).CreateApiKey,
            routing_pb2.CreateApiKeyRequest(
                account_id=account_id, project_id=project_id, name=name, settings=settings
            ),
        )
        return str(answer.api_key)

    async def adjust(
        self, account_id: str, bucket: Bucket, micros: int, reason: str, key: str, operator: str
    ) -> wallet_pb2.LedgerEntry:
        answer = await self.wallet.call(
            wallet_pb2_grpc.WalletServiceStub(self.wallet.channel).Adjust,
            wallet_pb2.AdjustRequest(
                account_id=account_id,
                bucket=bucket_to_proto(bucket),
                amount_micros=micros,
                reason=reason,
                operator=operator,
                idempotency_key=key,
            ),
        )
        entry: wallet_pb2.LedgerEntry = answer.entry
        return entry

    async def balances(self, account_id: str) -> list[wallet_pb2.BucketBalance]:
        answer = await self.wallet.call(
            wallet_pb2_grpc.WalletServiceStub(self.wallet.channel).GetBalances,
            wallet_pb2.GetBalancesRequest(account_id=account_id, split_held=True),
        )
        return list(answer.balances)


async def health_status(address: str, timeout: float = 1.0) -> str:
    """The grpc.health.v1 status of a server ("SERVING", "NOT_SERVING", or "DOWN")."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            answer = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.aio.AioRpcError:
            return "DOWN"
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))

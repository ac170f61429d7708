"""The services the gateway calls, one reused gRPC channel each, reached only through
their typed clients (`services/<context>/client.py`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from services.payments.client import PaymentsClient
from services.routing.client import RoutingClient
from services.usage.client import UsageClient
from services.wallet.client import WalletClient
from tokenforge.config import Settings
from tokenforge.runtime.grpc_client import DEFAULT_DEADLINE_S, Peer

if TYPE_CHECKING:
    from services.gateway.budgets import Budgets
    from services.gateway.storage.finish_queue import FinishQueue


@dataclass
class Peers:
    routing: Peer
    wallet: Peer
    payments: Peer
    usage: Peer
    # How long an outcome report that changes nothing may wait for others (seconds).
    report_linger_s: float = 0.0
    # Where receipts wait when usage cannot be reached (None: no database).
    finish_queue: FinishQueue | None = None
    # Busy accounts' budgets (None: every request holds for itself).
    budgets: Budgets | None = None
    # Queued rows this replica's relay is delivering, by request id (a second round
    # that meets one waits for it).
    delivering: dict[str, asyncio.Future[bool]] = field(default_factory=dict)

    @cached_property
    def routing_client(self) -> RoutingClient:
        """Resolve (answers routing allows to reuse are reused for a moment) and the
        outcome reports (batched under load; those that change nothing routing decides
        linger `report_linger_s` to travel together)."""
        return RoutingClient(self.routing, report_linger_s=self.report_linger_s)

    @cached_property
    def wallet_client(self) -> WalletClient:
        """Hold, Settle, Release (batched under load) and the rest of the wallet."""
        return WalletClient(self.wallet)

    @cached_property
    def usage_client(self) -> UsageClient:
        """Receipts, batched under load (see tokenforge.runtime.batching), and runs."""
        return UsageClient(self.usage)

    @cached_property
    def payments_client(self) -> PaymentsClient:
        """Top-up orders and provider webhooks (opening a card order calls the
        provider: the longer deadline of a plain call)."""
        return PaymentsClient(self.payments, deadline=DEFAULT_DEADLINE_S)

    @classmethod
    def from_settings(cls, settings: Settings) -> Peers:
        token = settings.peer_token
        return cls(
            routing=Peer("routing", settings.routing_addr, token),
            wallet=Peer("wallet", settings.wallet_addr, token),
            payments=Peer("payments", settings.payments_addr, token),
            usage=Peer("usage", settings.usage_addr, token),
            report_linger_s=settings.report_linger_ms / 1000,
        )

    async def close(self) -> None:
        if "routing_client" in self.__dict__:
            await self.routing_client.drain()  # the last outcome reports go out
        for peer in (self.routing, self.wallet, self.payments, self.usage):
            await peer.close()

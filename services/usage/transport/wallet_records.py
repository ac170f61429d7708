"""The wallet's side of the receipt <-> ledger reconciliation, read through the
wallet's typed client with the credential of the operator who asked (listing every
account is for the wallet's operators only): holds and request-charge ledger rows as
the pure comparison's views (services/usage/domain/reconcile.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from services.usage.domain.reconcile import EntryView, HoldState, HoldView
from services.wallet.client import WalletClient
from tokenforge.generated.wallet.v1 import wallet_pb2
from tokenforge.wire import bucket_from_proto

PAGE = 500

HOLD_STATES = {
    wallet_pb2.HOLD_STATUS_OPEN: HoldState.OPEN,
    wallet_pb2.HOLD_STATUS_SETTLED: HoldState.SETTLED,
    wallet_pb2.HOLD_STATUS_RELEASED: HoldState.RELEASED,
    wallet_pb2.HOLD_STATUS_EXPIRED: HoldState.EXPIRED,
}


async def _pages(read: Callable[[str], Awaitable[Any]], field: str) -> list[Any]:
    items: list[Any] = []
    token = ""
    while True:
        answer = await read(token)
        items.extend(getattr(answer, field))
        token = answer.next_page_token
        if not token:
            return items


class WalletRecords:
    """`handlers.WalletRecords` over the wallet's ListHolds and ListLedger."""

    def __init__(self, wallet: WalletClient) -> None:
        self.wallet = wallet

    @classmethod
    def connect(cls, address: str, token: str) -> WalletRecords:
        return cls(WalletClient.connect(address, token))

    async def close(self) -> None:
        await self.wallet.close()

    async def holds(self, account_id: str, since: datetime | None) -> list[HoldView]:
        found = await _pages(
            lambda token: self.wallet.holds(
                account_id, from_time=since, page_size=PAGE, page_token=token
            ),
            "holds",
        )
        return [
            HoldView(
                h.hold_id,
                h.account_id,
                bucket_from_proto(h.bucket),
                h.amount_micros,
                h.captured_micros,
                HOLD_STATES.get(h.status, HoldState.OPEN),
                h.request_id,
                h.entry_id,
            )
            for h in found
        ]

    async def charge_entries(self, account_id: str, since: datetime | None) -> list[EntryView]:
        found = await _pages(
            lambda token: self.wallet.ledger(
                account_id,
                kind=wallet_pb2.ENTRY_KIND_REQUEST_CHARGE,
                from_time=since,
                page_size=PAGE,
                page_token=token,
            ),
            "entries",
        )
        return [
            EntryView(
                e.entry_id,
                e.account_id,
                bucket_from_proto(e.bucket),
                e.amount_micros,
                e.request_id,
                e.hold_id,
            )
            for e in found
        ]

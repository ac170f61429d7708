"""In-memory doubles of the payments repository, unit of work and card checkout, for
use-case tests that run without a database or a network."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from datetime import datetime

from services.payments.domain.checkout import CheckoutPage, CheckoutSession, ProviderEvent
from services.payments.domain.model import Order, OrderEvent, TopUpStatus
from services.payments.storage.repository import Cursor, OrderRepository
from services.payments.storage.unit_of_work import UnitOfWork


class FakeOrderRepository(OrderRepository):
    def __init__(self) -> None:
        self.rows: dict[str, Order] = {}
        self.outbox: list[OrderEvent] = []
        self.provider_events: dict[tuple[str, str], str] = {}

    def _copy(self, order: Order) -> Order:
        clone = copy.deepcopy(order)
        clone.events = []
        return clone

    async def add(self, order: Order) -> bool:
        if order.idempotency_key and any(
            o.account_id == order.account_id and o.idempotency_key == order.idempotency_key
            for o in self.rows.values()
        ):
            return False
        self.rows[order.order_id] = self._copy(order)
        return True

    async def get(self, order_id: str, *, for_update: bool = False) -> Order | None:
        found = self.rows.get(order_id)
        return self._copy(found) if found else None

    async def get_by_idempotency_key(self, account_id: str, key: str) -> Order | None:
        for o in self.rows.values():
            if o.account_id == account_id and o.idempotency_key == key:
                return self._copy(o)
        return None

    async def list_for_account(
        self,
        account_id: str,
        limit: int,
        after: Cursor | None = None,
        status: TopUpStatus | None = None,
    ) -> list[Order]:
        return await self.list_all(limit, after, status, account_id)

    async def list_all(
        self,
        limit: int,
        after: Cursor | None = None,
        status: TopUpStatus | None = None,
        account_id: str = "",
    ) -> list[Order]:
        mine = sorted(
            (
                o
                for o in self.rows.values()
                if (not account_id or o.account_id == account_id)
                and (status is None or o.status is status)
            ),
            key=lambda o: (o.created_at, o.order_id),
            reverse=True,
        )
        if after is not None:
            mine = [o for o in mine if (o.created_at, o.order_id) < after]
        return [self._copy(o) for o in mine[:limit]]

    async def lock_due(self, now: datetime, limit: int) -> list[Order]:
        due = [
            o for o in self.rows.values() if o.status is TopUpStatus.PENDING and o.expires_at <= now
        ]
        return [self._copy(o) for o in due[:limit]]

    async def get_by_transaction(self, provider: str, transaction_id: str) -> Order | None:
        for o in self.rows.values():
            if o.provider == provider and o.provider_transaction_id == transaction_id:
                return self._copy(o)
        return None

    async def provider_event_seen(self, provider: str, event_id: str) -> bool:
        return (provider, event_id) in self.provider_events

    async def record_provider_event(
        self,
        *,
        provider: str,
        event_id: str,
        event_type: str,
        order_id: str,
        outcome: str,
        note: str,
        at: datetime,
    ) -> bool:
        if (provider, event_id) in self.provider_events:
            return False
        self.provider_events[(provider, event_id)] = outcome
        return True

    async def save(self, order: Order) -> None:
        self.outbox.extend(order.events)
        order.events.clear()
        self.rows[order.order_id] = self._copy(order)


class FakeUnitOfWork(UnitOfWork):
    def __init__(self) -> None:
        super().__init__()
        self.orders = FakeOrderRepository()
        self.commits = 0

    async def commit(self) -> None:
        self.commits += 1

    async def rollback(self) -> None:
        pass


class FakeCheckout:
    """A card provider whose sessions the test sets; webhooks are JSON dicts of
    ProviderEvent fields, and any body starting with b"forged" is refused."""

    def __init__(self) -> None:
        self.sessions: dict[str, CheckoutSession] = {}
        self.opened: list[str] = []
        self.closed: list[str] = []

    async def open_page(self, order: Order) -> CheckoutPage:
        session_id = f"cs_{order.order_id}"
        self.opened.append(order.order_id)
        self.sessions[session_id] = CheckoutSession(
            session_id, order.order_id, "unpaid", order.paid_amount_minor, order.currency, ""
        )
        return CheckoutPage(session_id, f"https://pay.example/{session_id}")

    async def read_session(self, session_id: str) -> CheckoutSession:
        return self.sessions[session_id]

    async def close_page(self, session_id: str) -> None:
        self.closed.append(session_id)

    def verify_event(self, body: bytes, headers: Mapping[str, str], now: datetime) -> ProviderEvent:
        import json

        from tokenforge.errors import DomainError, Reason

        if body.startswith(b"forged"):
            raise DomainError(Reason.INVALID_ARGUMENT, "Stripe webhook refused: forged.")
        data = json.loads(body)
        return ProviderEvent(data["event_id"], data["type"], data["object_id"], data["order_id"])

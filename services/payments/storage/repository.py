"""Orders in and out of the `payments` schema, and their events into the outbox.

`save` writes an order's new status, its new transitions and its new events in the
caller's transaction: the order row and the outbox row commit together or not at all.
"""

from __future__ import annotations

import abc
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, literal, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.payments.domain.model import Order, TopUpStatus, Transition
from tokenforge.errors import DomainError, Reason
from tokenforge.money import Bucket
from tokenforge.runtime.nats import ORDER_TRACEPARENT_HEADER, topup_subject, trace_headers

from .event_payload import encode_event
from .tables import order_transitions, orders, outbox, provider_events

# Where a page of ListTopUps ends: (created_at, order_id) of its last order.
Cursor = tuple[datetime, str]


class OrderRepository(abc.ABC):
    @abc.abstractmethod
    async def add(self, order: Order) -> bool:
        """Insert a new order; False if its (account, idempotency key) is taken."""

    @abc.abstractmethod
    async def get(self, order_id: str, *, for_update: bool = False) -> Order | None:
        """The order with its transitions; `for_update` locks its row until commit."""

    @abc.abstractmethod
    async def get_by_idempotency_key(self, account_id: str, key: str) -> Order | None: ...

    @abc.abstractmethod
    async def list_for_account(
        self,
        account_id: str,
        limit: int,
        after: Cursor | None = None,
        status: TopUpStatus | None = None,
    ) -> list[Order]:
        """Newest first, starting after `after`, only in `status` if given."""

    @abc.abstractmethod
    async def list_all(
        self,
        limit: int,
        after: Cursor | None = None,
        status: TopUpStatus | None = None,
        account_id: str = "",
    ) -> list[Order]:
        """Across accounts (operators): newest first, filtered by status and account."""

    @abc.abstractmethod
    async def get_by_transaction(self, provider: str, transaction_id: str) -> Order | None:
        """The order a provider transaction (a PaymentIntent) already paid, if any."""

    @abc.abstractmethod
    async def provider_event_seen(self, provider: str, event_id: str) -> bool: ...

    @abc.abstractmethod
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
        """Mark a provider event processed; False if it was already (a duplicate)."""

    @abc.abstractmethod
    async def lock_due(self, now: datetime, limit: int) -> list[Order]:
        """Pending orders past their expiry, locked; rows locked by others are skipped."""

    @abc.abstractmethod
    async def save(self, order: Order) -> None:
        """Write the order's new status, transitions and events (outbox)."""


def _order_from_row(row: Row[Any], transitions: list[Transition]) -> Order:
    return Order(
        order_id=str(row.order_id),
        account_id=row.account_id,
        bucket=Bucket(row.bucket),
        provider=row.provider,
        paid_amount_minor=row.paid_amount_minor,
        currency=row.currency,
        received_micros=row.received_micros,
        rate_micros_per_minor=row.rate_micros_per_minor,
        status=TopUpStatus(row.status),
        created_at=row.created_at,
        expires_at=row.expires_at,
        idempotency_key=row.idempotency_key,
        provider_reference=row.provider_reference,
        checkout_url=row.checkout_url,
        provider_transaction_id=row.provider_transaction_id,
        transfer_reference=row.transfer_reference,
        version=row.version,
        transitions=transitions,
    )


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


class SqlAlchemyOrderRepository(OrderRepository):
    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.wrote_events = False
        # (state, provider) of every order written since the last commit (metrics).
        self.moves: list[tuple[str, str]] = []
        # The creation trace context of the orders read, by order id.
        self._origins: dict[str, dict[str, str]] = {}

    async def add(self, order: Order) -> bool:
        stmt = (
            insert(orders)
            .values(
                order_id=order.order_id,
                account_id=order.account_id,
                bucket=order.bucket.value,
                provider=order.provider,
                paid_amount_minor=order.paid_amount_minor,
                currency=order.currency,
                received_micros=order.received_micros,
                rate_micros_per_minor=order.rate_micros_per_minor,
                status=order.status.value,
                created_at=order.created_at,
                expires_at=order.expires_at,
                provider_reference=order.provider_reference,
                idempotency_key=order.idempotency_key,
                version=order.version,
                checkout_url=order.checkout_url,
                provider_transaction_id=order.provider_transaction_id,
                transfer_reference=order.transfer_reference,
                trace_context=trace_headers(),
            )
            .on_conflict_do_nothing(index_elements=["account_id", "idempotency_key"])
            .returning(orders.c.order_id)
        )
        inserted = (await self.session.execute(stmt)).first() is not None
        if inserted:
            self.moves.append((order.status.value, order.provider))
            await self._write_changes(order)
        return inserted

    async def get(self, order_id: str, *, for_update: bool = False) -> Order | None:
        if not _is_uuid(order_id):
            return None
        stmt = select(orders).where(orders.c.order_id == order_id)
        if for_update:
            stmt = stmt.with_for_update()
        row = (await self.session.execute(stmt)).first()
        if row is None:
            return None
        return (await self._with_transitions([row]))[0]

    async def get_by_idempotency_key(self, account_id: str, key: str) -> Order | None:
        stmt = select(orders).where(
            orders.c.account_id == account_id, orders.c.idempotency_key == key
        )
        row = (await self.session.execute(stmt)).first()
        return (await self._with_transitions([row]))[0] if row is not None else None

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
        stmt = select(orders)
        if account_id:
            stmt = stmt.where(orders.c.account_id == account_id)
        if status is not None:
            stmt = stmt.where(orders.c.status == status.value)
        if after is not None:
            created_at, order_id = after
            stmt = stmt.where(
                tuple_(orders.c.created_at, orders.c.order_id)
                < tuple_(
                    literal(created_at, orders.c.created_at.type),
                    literal(order_id, orders.c.order_id.type),
                )
            )
        stmt = stmt.order_by(orders.c.created_at.desc(), orders.c.order_id.desc()).limit(limit)
        rows = (await self.session.execute(stmt)).all()
        return await self._with_transitions(rows)

    async def get_by_transaction(self, provider: str, transaction_id: str) -> Order | None:
        stmt = select(orders).where(
            orders.c.provider == provider, orders.c.provider_transaction_id == transaction_id
        )
        row = (await self.session.execute(stmt)).first()
        return (await self._with_transitions([row]))[0] if row is not None else None

    async def provider_event_seen(self, provider: str, event_id: str) -> bool:
        stmt = select(provider_events.c.event_id).where(
            provider_events.c.provider == provider, provider_events.c.event_id == event_id
        )
        return (await self.session.execute(stmt)).first() is not None

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
        stmt = (
            insert(provider_events)
            .values(
                provider=provider,
                event_id=event_id,
                event_type=event_type,
                order_id=order_id,
                outcome=outcome,
                note=note,
                received_at=at,
            )
            .on_conflict_do_nothing(index_elements=["provider", "event_id"])
            .returning(provider_events.c.event_id)
        )
        return (await self.session.execute(stmt)).first() is not None

    async def lock_due(self, now: datetime, limit: int) -> list[Order]:
        stmt = (
            select(orders)
            .where(orders.c.status == TopUpStatus.PENDING.value, orders.c.expires_at <= now)
            .order_by(orders.c.expires_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        rows = (await self.session.execute(stmt)).all()
        return await self._with_transitions(rows)

    async def save(self, order: Order) -> None:
        if not order.events:
            return
        previous_version = order.version - len(order.events)
        result = await self.session.execute(
            update(orders)
            .where(orders.c.order_id == order.order_id, orders.c.version == previous_version)
            .values(
                status=order.status.value,
                version=order.version,
                provider_reference=order.provider_reference,
                checkout_url=order.checkout_url,
                provider_transaction_id=order.provider_transaction_id,
                transfer_reference=order.transfer_reference,
            )
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            # Only possible without the row lock; the caller's transaction rolls back.
            raise DomainError(
                Reason.SERVICE_UNAVAILABLE,
                f"Top-up {order.order_id} changed while it was being updated; try again.",
                {"order_id": order.order_id},
            )
        await self._write_changes(order)

    async def _write_changes(self, order: Order) -> None:
        """Insert the transitions and events raised since the order was loaded.

        Each `Order.move_to` raises one transition and one event, so the new
        transitions are the last `len(order.events)` of the trail.
        """
        if not order.events:
            return
        new_transitions = order.transitions[len(order.transitions) - len(order.events) :]
        await self.session.execute(
            insert(order_transitions),
            [
                {
                    "order_id": order.order_id,
                    "from_status": t.from_status.value,
                    "to_status": t.to_status.value,
                    "reason": t.reason,
                    "actor": t.actor,
                    "at": t.at,
                }
                for t in new_transitions
            ],
        )
        self.moves.extend((t.to_status.value, order.provider) for t in new_transitions)
        headers = trace_headers()
        origin = self._origins.get(order.order_id, {}).get("traceparent")
        if origin:
            headers[ORDER_TRACEPARENT_HEADER] = origin
        await self.session.execute(
            insert(outbox),
            [
                {
                    "event_id": e.event_id,
                    "order_id": e.order_id,
                    "subject": topup_subject(e.subject_event),
                    "payload": encode_event(e),
                    "headers": headers,
                    "created_at": e.occurred_at,
                }
                for e in order.events
            ],
        )
        order.events.clear()
        self.wrote_events = True

    async def _with_transitions(self, rows: Sequence[Row[Any]]) -> list[Order]:
        if not rows:
            return []
        ids = [str(r.order_id) for r in rows]
        trail = (
            await self.session.execute(
                select(order_transitions)
                .where(order_transitions.c.order_id.in_(ids))
                .order_by(order_transitions.c.transition_id)
            )
        ).all()
        by_order: dict[str, list[Transition]] = {i: [] for i in ids}
        for t in trail:
            by_order[str(t.order_id)].append(
                Transition(
                    from_status=TopUpStatus(t.from_status),
                    to_status=TopUpStatus(t.to_status),
                    reason=t.reason,
                    actor=t.actor,
                    at=t.at,
                )
            )
        for r in rows:
            self._origins[str(r.order_id)] = dict(getattr(r, "trace_context", None) or {})
        return [_order_from_row(r, by_order[str(r.order_id)]) for r in rows]

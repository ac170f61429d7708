"""Payments use cases: plain async functions of (command, unit of work).

Every change of an order happens under its row lock (`SELECT ... FOR UPDATE`), and
its transition and outbox event commit in the same transaction (P1, P3).
"""

from __future__ import annotations

import base64
import binascii
import enum
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from services.payments.domain.model import Order
from services.payments.domain.orders import DEFAULT_ORDER_TTL, open_order
from services.payments.domain.providers import PROVIDERS, provider_named
from services.payments.storage.repository import Cursor
from services.payments.storage.unit_of_work import UnitOfWork
from tokenforge.errors import DomainError, Reason
from tokenforge.money import Bucket

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
SWEEP_BATCH = 100

SANDBOX_ACTOR = "sandbox"
SWEEPER_ACTOR = "expiry-sweeper"


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class CreateTopUp:
    account_id: str
    bucket: Bucket
    provider: str
    paid_amount_minor: int
    currency: str = ""
    idempotency_key: str = ""


@dataclass(frozen=True)
class GetTopUp:
    account_id: str
    order_id: str


@dataclass(frozen=True)
class ListTopUps:
    account_id: str
    page_size: int = DEFAULT_PAGE_SIZE
    page_token: str = ""


@dataclass(frozen=True)
class TopUpPage:
    orders: list[Order]
    next_page_token: str


class SandboxOutcome(enum.StrEnum):
    PAY = "pay"
    FAIL = "fail"
    EXPIRE = "expire"


@dataclass(frozen=True)
class SimulateSandboxOutcome:
    account_id: str
    order_id: str
    outcome: SandboxOutcome


def _not_found(order_id: str) -> DomainError:
    return DomainError(
        Reason.NOT_FOUND,
        f"No top-up {order_id!r} on this account. List your top-ups to find its id.",
        {"order_id": order_id},
    )


async def create_top_up(
    cmd: CreateTopUp,
    uow: UnitOfWork,
    *,
    ttl: timedelta = DEFAULT_ORDER_TTL,
    now: datetime | None = None,
) -> Order:
    """Open a pending order; the same idempotency key returns the first order (W4)."""
    candidate = open_order(
        account_id=cmd.account_id,
        bucket=cmd.bucket,
        provider=cmd.provider,
        paid_amount_minor=cmd.paid_amount_minor,
        currency=cmd.currency,
        idempotency_key=cmd.idempotency_key,
        now=now or utcnow(),
        ttl=ttl,
    )
    async with uow:
        if cmd.idempotency_key:
            first = await uow.orders.get_by_idempotency_key(cmd.account_id, cmd.idempotency_key)
            if first is not None:
                return _same_or_conflict(first, candidate)
        if not await uow.orders.add(candidate):
            # Another call with this key committed between our read and our insert.
            first = await uow.orders.get_by_idempotency_key(cmd.account_id, cmd.idempotency_key)
            assert first is not None
            return _same_or_conflict(first, candidate)
        await uow.commit()
    log.info(
        "top-up %s opened: account %s, %s %s for %s",
        candidate.order_id,
        candidate.account_id,
        candidate.paid_amount_minor,
        candidate.currency,
        candidate.describe_received(),
    )
    return candidate


def _same_or_conflict(first: Order, candidate: Order) -> Order:
    if first.same_request(
        bucket=candidate.bucket,
        provider=candidate.provider,
        paid_amount_minor=candidate.paid_amount_minor,
        currency=candidate.currency,
    ):
        return first
    raise DomainError(
        Reason.IDEMPOTENCY_CONFLICT,
        f"Idempotency key {first.idempotency_key!r} already opened top-up {first.order_id} "
        f"({first.paid_amount_minor} {first.currency} for {first.bucket.label} via "
        f"{first.provider}); use a new key for a different top-up.",
        {"order_id": first.order_id, "idempotency_key": first.idempotency_key or ""},
    )


async def get_top_up(query: GetTopUp, uow: UnitOfWork) -> Order:
    async with uow:
        order = await uow.orders.get(query.order_id)
    if order is None or order.account_id != query.account_id:
        raise _not_found(query.order_id)
    return order


async def list_top_ups(query: ListTopUps, uow: UnitOfWork) -> TopUpPage:
    """Newest first; `next_page_token` is empty on the last page."""
    size = query.page_size if query.page_size > 0 else DEFAULT_PAGE_SIZE
    size = min(size, MAX_PAGE_SIZE)
    after = _decode_cursor(query.page_token) if query.page_token else None
    async with uow:
        page = await uow.orders.list_for_account(query.account_id, size + 1, after)
    more = len(page) > size
    page = page[:size]
    token = _encode_cursor((page[-1].created_at, page[-1].order_id)) if more else ""
    return TopUpPage(orders=page, next_page_token=token)


def _encode_cursor(cursor: Cursor) -> str:
    raw = f"{cursor[0].isoformat()}|{cursor[1]}".encode()
    return base64.urlsafe_b64encode(raw).decode()


def _decode_cursor(token: str) -> Cursor:
    try:
        created_at, order_id = base64.urlsafe_b64decode(token.encode()).decode().split("|")
        return datetime.fromisoformat(created_at), str(uuid.UUID(order_id))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            "page_token is not one this service gave out; start again without it.",
            {"param": "page_token"},
        ) from None


async def simulate_sandbox_outcome(
    cmd: SimulateSandboxOutcome, uow: UnitOfWork, *, now: datetime | None = None
) -> Order:
    """Pay, fail or expire a sandbox order. Replaying an outcome changes nothing."""
    async with uow:
        order = await uow.orders.get(cmd.order_id, for_update=True)
        if order is None or order.account_id != cmd.account_id:
            raise _not_found(cmd.order_id)
        # Read the clock under the lock: a move never predates the one it waited for.
        at = now or utcnow()
        provider = provider_named(order.provider)
        if not provider.simulated:
            simulated = ", ".join(sorted(n for n, p in PROVIDERS.items() if p.simulated))
            raise DomainError(
                Reason.PROVIDER_NOT_ALLOWED,
                f"Top-up {order.order_id} is paid through {provider.label}; only orders of "
                f"{simulated} can be simulated.",
                {"order_id": order.order_id, "provider": order.provider},
            )
        if cmd.outcome is SandboxOutcome.PAY:
            changed = order.confirm_payment(
                at=at,
                actor=SANDBOX_ACTOR,
                reason="sandbox payment",
                needs_review=provider.needs_review,
            )
        elif cmd.outcome is SandboxOutcome.FAIL:
            changed = order.fail(at=at, actor=SANDBOX_ACTOR, reason="sandbox payment failed")
        else:
            changed = order.expire(at=at, actor=SANDBOX_ACTOR, reason="sandbox expiry")
        if changed:
            await uow.orders.save(order)
            await uow.commit()
            log.info("top-up %s is now %s (%s)", order.order_id, order.status, cmd.outcome)
    return order


async def expire_due_orders(
    uow: UnitOfWork, *, now: datetime | None = None, limit: int = SWEEP_BATCH
) -> list[str]:
    """Expire pending orders past their expiry time; returns their ids.

    Rows another transaction holds (a payment in flight) are skipped, and the order
    is checked again under the lock, so a payment and the sweeper never both win (P3).
    """
    at = now or utcnow()
    async with uow:
        due = await uow.orders.lock_due(at, limit)
        for order in due:
            order.expire(at=at, actor=SWEEPER_ACTOR, reason="not paid before it expired")
            await uow.orders.save(order)
        await uow.commit()
    if due:
        log.info("expired %s unpaid top-up(s)", len(due))
    return [o.order_id for o in due]

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

from services.payments.domain.checkout import (
    SESSION_EXPIRED,
    SESSION_FAILED,
    SESSION_PAID,
    CardCheckout,
    CheckoutSession,
    ProviderEvent,
)
from services.payments.domain.commands import (
    DEFAULT_PAGE_SIZE,
    CancelTopUp,
    CreateTopUp,
    GetTopUp,
    HandleProviderEvent,
    ListAllTopUps,
    ListTopUps,
    ReviewDecision,
    ReviewTopUp,
    SandboxOutcome,
    SimulateSandboxOutcome,
    SubmitTransferProof,
)
from services.payments.domain.model import Order, TopUpStatus
from services.payments.domain.orders import OrderTtls, open_order
from services.payments.domain.providers import PROVIDERS, Provider, ProvidersOn, provider_named
from services.payments.storage.repository import Cursor
from services.payments.storage.unit_of_work import UnitOfWork
from tokenforge.errors import DomainError, Reason

log = logging.getLogger(__name__)

MAX_PAGE_SIZE = 100
SWEEP_BATCH = 100

SANDBOX_ACTOR = "sandbox"
SWEEPER_ACTOR = "expiry-sweeper"
USER_ACTOR = "user"


def utcnow() -> datetime:
    return datetime.now(UTC)


class EventOutcome(enum.StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"


@dataclass(frozen=True)
class ProviderEventResult:
    outcome: EventOutcome
    provider_event_id: str
    order_id: str = ""
    status: TopUpStatus | None = None


@dataclass(frozen=True)
class TopUpPage:
    orders: list[Order]
    next_page_token: str


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
    providers: ProvidersOn,
    ttl: timedelta | OrderTtls | None = None,
    checkout: CardCheckout | None = None,
    now: datetime | None = None,
) -> Order:
    """Open a pending order; the same idempotency key returns the first order (W4)."""
    order, _ = await open_top_up(cmd, uow, providers=providers, ttl=ttl, checkout=checkout, now=now)
    return order


async def open_top_up(
    cmd: CreateTopUp,
    uow: UnitOfWork,
    *,
    providers: ProvidersOn,
    ttl: timedelta | OrderTtls | None = None,
    checkout: CardCheckout | None = None,
    now: datetime | None = None,
) -> tuple[Order, bool]:
    """(the order, whether an earlier call with the same key opened it).

    Only a provider this deployment offers (`providers`) opens an order; an order
    that names none gets the default, if there is one (`ProvidersOn.choose`).
    A Stripe order gets its Checkout Session before it is stored: a Stripe outage
    opens no order, and the order's row names its session from the start.
    """
    chosen = providers.choose(cmd.provider)
    candidate = open_order(
        account_id=cmd.account_id,
        bucket=cmd.bucket,
        provider=chosen.name,
        paid_amount_minor=cmd.paid_amount_minor,
        currency=cmd.currency,
        idempotency_key=cmd.idempotency_key,
        now=now or utcnow(),
        ttl=ttl,
    )
    if cmd.idempotency_key:
        async with uow:
            first = await uow.orders.get_by_idempotency_key(cmd.account_id, cmd.idempotency_key)
        if first is not None:
            return _same_or_conflict(first, candidate), True
    if provider_named(candidate.provider).has_webhooks:
        page = await _checkout_for(candidate.provider, checkout).open_page(candidate)
        candidate.provider_reference = page.session_id
        candidate.checkout_url = page.url
    async with uow:
        if not await uow.orders.add(candidate):
            # Another call with this key committed between our read and our insert.
            first = await uow.orders.get_by_idempotency_key(cmd.account_id, cmd.idempotency_key)
            assert first is not None
            return _same_or_conflict(first, candidate), True
        await uow.commit()
    log.info(
        "top-up %s opened: account %s, %s %s for %s via %s",
        candidate.order_id,
        candidate.account_id,
        candidate.paid_amount_minor,
        candidate.currency,
        candidate.describe_received(),
        candidate.provider,
    )
    return candidate, False


def _checkout_for(provider: str, checkout: CardCheckout | None) -> CardCheckout:
    if checkout is None:
        raise DomainError(
            Reason.PROVIDER_NOT_ALLOWED,
            f"Card payments ({provider}) are not configured on this deployment; use another "
            "provider, or ask the operator to set TOKENFORGE_STRIPE_API_KEY.",
            {"provider": provider},
        )
    return checkout


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
        page = await uow.orders.list_for_account(query.account_id, size + 1, after, query.status)
    return _page(page, size)


async def list_all_top_ups(query: ListAllTopUps, uow: UnitOfWork) -> TopUpPage:
    """Operators: newest first across accounts, by status (the review queue)."""
    size = min(query.page_size if query.page_size > 0 else DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    after = _decode_cursor(query.page_token) if query.page_token else None
    async with uow:
        page = await uow.orders.list_all(size + 1, after, query.status, query.account_id)
    return _page(page, size)


async def inspect_top_up(order_id: str, uow: UnitOfWork) -> Order:
    """Operators: any order, with its trail."""
    async with uow:
        order = await uow.orders.get(order_id)
    if order is None:
        raise DomainError(
            Reason.NOT_FOUND,
            f"No top-up {order_id!r}. List orders by status to find its id.",
            {"order_id": order_id},
        )
    return order


def _page(page: list[Order], size: int) -> TopUpPage:
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
    cmd: SimulateSandboxOutcome,
    uow: UnitOfWork,
    *,
    providers: ProvidersOn,
    now: datetime | None = None,
) -> Order:
    """Pay, fail or expire a sandbox order. Replaying an outcome changes nothing.
    Where the sandbox provider is off, there is nothing to simulate (NOT_FOUND)."""
    providers.check_simulated()
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


async def submit_transfer_proof(
    cmd: SubmitTransferProof, uow: UnitOfWork, *, now: datetime | None = None
) -> Order:
    """The user sends their bank transfer's reference: the order waits for review."""
    async with uow:
        order = await uow.orders.get(cmd.order_id, for_update=True)
        if order is None or order.account_id != cmd.account_id:
            raise _not_found(cmd.order_id)
        provider = provider_named(order.provider)
        if not provider.takes_transfer_proof:
            takes = ", ".join(sorted(n for n, p in PROVIDERS.items() if p.takes_transfer_proof))
            raise DomainError(
                Reason.PROVIDER_NOT_ALLOWED,
                f"Top-up {order.order_id} is paid through {provider.label}; transfer "
                f"references are only for {takes} orders.",
                {"order_id": order.order_id, "provider": order.provider},
            )
        if order.submit_transfer_proof(
            cmd.transfer_reference, at=now or uow.now(), actor=USER_ACTOR
        ):
            await uow.orders.save(order)
            await uow.commit()
            log.info("top-up %s waits for review (transfer proof)", order.order_id)
    return order


async def cancel_top_up(
    cmd: CancelTopUp,
    uow: UnitOfWork,
    *,
    checkout: CardCheckout | None = None,
    now: datetime | None = None,
) -> Order:
    """The user cancels a pending order; canceling twice changes nothing. A card
    order's checkout page is then closed at the provider, so it takes no payment for
    an order that no longer waits for one (best effort: the cancel stands either way,
    and a payment that still got through is logged for an operator)."""
    async with uow:
        order = await uow.orders.get(cmd.order_id, for_update=True)
        if order is None or order.account_id != cmd.account_id:
            raise _not_found(cmd.order_id)
        canceled = order.cancel(at=now or uow.now(), actor=USER_ACTOR)
        if canceled:
            await uow.orders.save(order)
            await uow.commit()
            log.info("top-up %s canceled by its account", order.order_id)
    has_page = provider_named(order.provider).has_webhooks and order.provider_reference
    if canceled and checkout is not None and has_page:
        try:
            await checkout.close_page(order.provider_reference)
        except DomainError as error:
            log.warning(
                "top-up %s canceled, but its checkout page %s is still open: %s",
                order.order_id,
                order.provider_reference,
                error,
            )
    return order


async def review_top_up(cmd: ReviewTopUp, uow: UnitOfWork, *, now: datetime | None = None) -> Order:
    """An operator approves (the order succeeds and is credited) or rejects it."""
    operator = cmd.operator.strip() or "operator"
    async with uow:
        order = await uow.orders.get(cmd.order_id, for_update=True)
        if order is None:
            raise DomainError(
                Reason.NOT_FOUND,
                f"No top-up {cmd.order_id!r}. `tokenforge topups list --status "
                "awaiting_review` shows the orders waiting for review.",
                {"order_id": cmd.order_id},
            )
        at = now or uow.now()
        if cmd.decision is ReviewDecision.APPROVE:
            changed = order.approve(reason=cmd.reason, operator=operator, at=at)
        else:
            changed = order.reject(reason=cmd.reason, operator=operator, at=at)
        if changed:
            await uow.orders.save(order)
            await uow.commit()
            log.info("top-up %s %s by %s: %s", order.order_id, order.status, operator, cmd.reason)
    return order


async def handle_provider_event(
    cmd: HandleProviderEvent,
    uow: UnitOfWork,
    checkout: CardCheckout | None,
    *,
    now: datetime | None = None,
) -> ProviderEventResult:
    """Verify a webhook, process each provider event id once, move the order it names.

    A paid session is re-read from the provider before the order is marked paid;
    amounts that disagree with the order send it to review, never to a credit.
    """
    provider = PROVIDERS.get(cmd.provider)
    if provider is None or not provider.has_webhooks:
        with_hooks = ", ".join(sorted(n for n, p in PROVIDERS.items() if p.has_webhooks))
        raise DomainError(
            Reason.NOT_FOUND,
            f"No webhooks for payment provider {cmd.provider!r}; webhooks are taken for: "
            f"{with_hooks}.",
            {"provider": cmd.provider},
        )
    if checkout is None:
        raise DomainError(
            Reason.NOT_FOUND,
            f"{provider.label} is not configured on this deployment; its webhooks are not taken.",
            {"provider": provider.name},
        )
    event = checkout.verify_event(cmd.body, cmd.headers, now or utcnow())
    async with uow:
        seen = await uow.orders.provider_event_seen(provider.name, event.event_id)
    if seen:
        return ProviderEventResult(EventOutcome.DUPLICATE, event.event_id, event.order_id)
    session = await checkout.read_session(event.object_id) if event.type in SESSION_PAID else None
    async with uow:
        order = await uow.orders.get(event.order_id, for_update=True) if event.order_id else None
        at = now or uow.now()
        if order is None or order.provider != provider.name:
            outcome, note = EventOutcome.IGNORED, "names no order of this provider"
        else:
            outcome, note = await _apply_event(order, event, session, provider, uow, at)
        if not await uow.orders.record_provider_event(
            provider=provider.name,
            event_id=event.event_id,
            event_type=event.type,
            order_id=event.order_id,
            outcome=outcome.value,
            note=note,
            at=at,
        ):
            return ProviderEventResult(EventOutcome.DUPLICATE, event.event_id, event.order_id)
        if order is not None and outcome is EventOutcome.ACCEPTED:
            await uow.orders.save(order)
        await uow.commit()
    log.info(
        "%s event %s (%s) for top-up %s: %s%s",
        provider.name,
        event.event_id,
        event.type,
        event.order_id or "-",
        outcome.value,
        f" ({note})" if note else "",
    )
    return ProviderEventResult(
        outcome, event.event_id, event.order_id, order.status if order is not None else None
    )


async def _apply_event(
    order: Order,
    event: ProviderEvent,
    session: CheckoutSession | None,
    provider: Provider,
    uow: UnitOfWork,
    at: datetime,
) -> tuple[EventOutcome, str]:
    """Move the (locked) order as the event says; (outcome, note for the event log)."""
    actor = provider.name
    if event.type in SESSION_PAID:
        assert session is not None
        if not session.paid:
            return EventOutcome.IGNORED, f"session payment_status is {session.payment_status}"
        transaction = session.payment_intent or session.session_id
        other = await uow.orders.get_by_transaction(provider.name, transaction)
        if other is not None and other.order_id != order.order_id:
            log.warning(
                "%s transaction %s already paid top-up %s; not paying %s with it",
                provider.name,
                transaction,
                other.order_id,
                order.order_id,
            )
            return EventOutcome.IGNORED, f"transaction {transaction} paid {other.order_id}"
        problems = _mismatches(order, session)
        if order.status.is_terminal:
            log.warning(
                "%s payment %s arrived for top-up %s, which is %s: left for an operator",
                provider.name,
                transaction,
                order.order_id,
                order.status,
            )
            return EventOutcome.IGNORED, f"payment for a {order.status} order"
        if order.status is TopUpStatus.PENDING or order.status is TopUpStatus.EXPIRED:
            order.provider_transaction_id = transaction
        reason = f"card payment {transaction} confirmed by {provider.label}"
        if problems:
            reason += "; needs review: " + "; ".join(problems)
        changed = order.confirm_payment(
            at=at, actor=actor, reason=reason, needs_review=bool(problems) or provider.needs_review
        )
        return (
            (EventOutcome.ACCEPTED, "; ".join(problems))
            if changed
            else (
                EventOutcome.IGNORED,
                f"order already {order.status}",
            )
        )
    if event.type == SESSION_EXPIRED and order.status is TopUpStatus.PENDING:
        order.expire(at=at, actor=actor, reason="checkout session expired at the provider")
        return EventOutcome.ACCEPTED, ""
    if event.type == SESSION_FAILED and order.status is TopUpStatus.PENDING:
        order.fail(at=at, actor=actor, reason="the provider reports the payment failed")
        return EventOutcome.ACCEPTED, ""
    return EventOutcome.IGNORED, f"{event.type} does not move a {order.status} order"


def _mismatches(order: Order, session: CheckoutSession) -> list[str]:
    problems = []
    if session.session_id != order.provider_reference:
        problems.append(
            f"paid session {session.session_id} is not the order's {order.provider_reference}"
        )
    if session.order_id and session.order_id != order.order_id:
        problems.append(f"the session names order {session.order_id}")
    if session.amount_total != order.paid_amount_minor:
        problems.append(
            f"paid {session.amount_total} minor units, the order is for {order.paid_amount_minor}"
        )
    if session.currency != order.currency:
        problems.append(f"paid in {session.currency}, the order is in {order.currency}")
    return problems

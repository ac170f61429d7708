"""The gateway's relay: delivers what waits in its queue (services/gateway/storage/
finish_queue.py) and closes the budgets that are done.

For each queued row, in one round for up to `RELAY_BATCH` rows (the wallet and usage
clients put concurrent calls into one batch call each):

1. the wallet's side of the finish first (`finish_hold`): a budget draw's part
   captured from the budget's hold (CapturePart, idempotent per hold and request), a
   request's own hold settled (Settle, idempotent per hold) or released; the ledger
   entry id is the one the answer named (the wallet derives it, `tokenforge.holds`);
2. then its receipt is recorded (usage, idempotent per request id);
3. rows done are deleted. A row the wallet or usage refuses stays, with the reason, for
   an operator; a row that meets an unreachable service waits for the next round.

A budget closes once its last draw gave back and every queued part of it (any
replica's rows) is captured: only then is the rest of its hold released, so a part
never meets a released hold.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from opentelemetry import trace

from services.gateway import metrics
from services.gateway.adapters.peers import Peers
from services.gateway.domain.budgets import Budget
from services.gateway.storage.finish_queue import PART, RELEASE, SETTLE, Waiting
from tokenforge.errors import DomainError, Reason
from tokenforge.generated.usage.v1 import usage_pb2
from tokenforge.runtime.telemetry import context_of

log = logging.getLogger("tokenforge.gateway.relay")
_tracer = trace.get_tracer(__name__)

RELAY_BATCH = 256
# A queued finish waits this long for others to travel with it.
LINGER_S = 0.2
# Rounds run at least this often (other replicas' rows, budgets to close).
EVERY_S = 0.25
COUNT_EVERY_S = 5.0


class _Refused(Exception):
    def __init__(self, error: DomainError) -> None:
        super().__init__(str(error))
        self.error = error


# A part or settle the wallet refuses for these reasons was not taken and never will be.
NOT_COLLECTED = (Reason.HOLD_NOT_OPEN, Reason.HOLD_EXPIRED, Reason.SETTLE_ABOVE_HOLD)


async def finish_hold(peers: Peers, receipt: usage_pb2.Receipt, finish: str) -> None:
    """The wallet's side of a request's finish, as its receipt says: its part of a
    budget captured (PART), its own hold settled for the charge (SETTLE), or released
    (RELEASE). Each is idempotent, so a repeat answers the first. If the hold ended
    first (it expired through a wallet outage longer than its margin) or has less left
    than the charge (never expected), nothing was taken and the receipt says so."""
    wallet = peers.wallet_client
    try:
        if finish == RELEASE:
            reason = receipt.error_code or receipt.settlement_rule
            await wallet.release(receipt.hold_id, reason=reason, account_id=receipt.account_id)
            return
        if finish == PART and receipt.charge_micros > 0:
            answer: Any = await wallet.capture_part(
                receipt.hold_id,
                receipt.charge_micros,
                receipt.request_id,
                account_id=receipt.account_id,
                trace_id=receipt.trace_id,
            )
        elif finish == SETTLE:
            answer = await wallet.settle(
                receipt.hold_id,
                receipt.charge_micros,
                account_id=receipt.account_id,
                trace_id=receipt.trace_id,
            )
        else:
            return
    except DomainError as error:
        if error.reason not in NOT_COLLECTED:
            raise
        if receipt.charge_micros:
            metrics.CHARGES_NOT_COLLECTED.inc()
            log.error(
                "charge of %s (%d micro-units) not collected: hold %s %s",
                receipt.request_id,
                receipt.charge_micros,
                receipt.hold_id,
                error.reason.value,
            )
            receipt.error_code = "charge_not_collected"
        receipt.charge_micros = 0
        receipt.entry_id = ""
        return
    written = answer.entry.entry_id if answer.HasField("entry") else ""
    if written != receipt.entry_id:
        # Never expected: the wallet derives the id the answer named.
        log.error(
            "charge of %s written as entry %r, not %r",
            receipt.request_id,
            written,
            receipt.entry_id,
        )
        receipt.entry_id = written


async def _deliver_one(peers: Peers, row: Waiting) -> bool:
    """Deliver one row, in the trace of the request it finishes: its wallet and usage
    calls (or the batch calls that carry them, linked) join that trace."""
    receipt = usage_pb2.Receipt.FromString(row.receipt)
    with _tracer.start_as_current_span(
        "gateway.relay finish",
        context=context_of(row.traceparent),
        kind=trace.SpanKind.INTERNAL,
        attributes={"tokenforge.request_id": row.request_id, "tokenforge.hold_id": receipt.hold_id},
    ):
        try:
            await finish_hold(peers, receipt, row.finish)
            await peers.usage_client.record_receipt(receipt)
        except DomainError as error:
            if error.reason is Reason.SERVICE_UNAVAILABLE:
                return False
            raise _Refused(error) from error
        return True


async def deliver(peers: Peers, *, account_id: str = "", hold_id: str = "") -> tuple[int, int]:
    """One round: (rows delivered, rows seen). See `FinishQueue.waiting` for which."""
    queue = peers.finish_queue
    if queue is None:
        return 0, 0
    rows = await queue.waiting(RELAY_BATCH, account_id=account_id, hold_id=hold_id)
    if not rows:
        return 0, 0
    # A row this replica is delivering already (the relay's round and a read's) is
    # waited for, not delivered twice; the round that started a delivery deletes it.
    started: list[tuple[Waiting, asyncio.Future[bool]]] = []
    deliveries: list[asyncio.Future[bool]] = []
    for row in rows:
        delivery = peers.delivering.get(row.request_id)
        if delivery is None:
            delivery = asyncio.ensure_future(_deliver_checked(peers, row))
            peers.delivering[row.request_id] = delivery
            started.append((row, delivery))
        deliveries.append(delivery)
    try:
        outcomes = await asyncio.gather(*deliveries)
        mine = [row.request_id for row, delivery in started if delivery.result()]
        await queue.delivered(mine)
        metrics.RECEIPTS_RELAYED.labels("recorded").inc(len(mine))
    finally:
        for row, _ in started:  # only once its row is gone (or the round failed)
            peers.delivering.pop(row.request_id, None)
    return sum(outcomes), len(rows)


async def _deliver_checked(peers: Peers, row: Waiting) -> bool:
    """Deliver the row; a refusal keeps it in the queue with the reason, for an
    operator; any other failure leaves it for the next round."""
    queue = peers.finish_queue
    assert queue is not None
    try:
        return await _deliver_one(peers, row)
    except _Refused as refused:
        metrics.RECEIPTS_RELAYED.labels("refused").inc()
        log.error("queued receipt of %s refused: %s", row.request_id, refused.error)
        await queue.refused(row.request_id, f"{refused.error.reason.value}: {refused.error}")
    except Exception as error:  # noqa: BLE001 - the row waits for the next round
        log.error("queued receipt of %s not delivered: %r", row.request_id, error)
    return False


async def deliver_all(peers: Peers, *, account_id: str = "", hold_id: str = "") -> bool:
    """Rounds until nothing waits (True) or a row could not be delivered (False)."""
    while True:
        done, seen = await deliver(peers, account_id=account_id, hold_id=hold_id)
        if done < seen:
            return False
        if seen < RELAY_BATCH:
            return True


async def close_budget(peers: Peers, budget: Budget) -> bool:
    """Capture every queued part of the budget, then release the rest of its hold.
    False when that must wait (the wallet or usage unreachable)."""
    if not await deliver_all(peers, hold_id=budget.hold_id):
        return False
    try:
        await peers.wallet_client.release(
            budget.hold_id, reason="budget_closed", account_id=budget.account_id
        )
    except DomainError as error:
        if error.reason is Reason.SERVICE_UNAVAILABLE:
            return False
        if error.reason not in (Reason.HOLD_NOT_OPEN, Reason.HOLD_EXPIRED):
            raise
    metrics.BUDGETS.labels("closed").inc()
    return True


async def close_due(peers: Peers, account_id: str = "") -> None:
    """Close the budgets that are done (an account's idle ones, when given)."""
    budgets = peers.budgets
    if budgets is None:
        return
    due = budgets.due(account_id)
    for i, budget in enumerate(due):
        try:
            closed = await close_budget(peers, budget)
        except asyncio.CancelledError:
            # The relay stopping, or a read's caller gone: the rest are closed later
            # (a release is idempotent), not left to their hold's TTL.
            budgets.closing.extend(due[i:])
            raise
        except Exception:  # noqa: BLE001 - logged; the hold's TTL ends it at worst
            log.exception("closing budget %s failed", budget.hold_id)
            closed = False
        if not closed:
            budgets.closing.append(budget)


async def settle_account(peers: Peers, account_id: str) -> None:
    """Before a read of an account's money or receipts: its queued finishes delivered
    (every replica's) and this replica's idle budgets of it closed, so the read sees
    every answer it was given. Best effort: a read is not refused for it."""
    if peers.finish_queue is None:
        return
    try:
        await close_due(peers, account_id)
        await deliver_all(peers, account_id=account_id)
    except Exception:  # noqa: BLE001 - the read goes on; the relay delivers later
        log.exception("finishes of %s not delivered before a read", account_id)


async def run_relay(peers: Peers) -> None:
    """The relay's loop (a background task of the gateway)."""
    counted = 0.0
    while True:
        queue = peers.finish_queue
        if queue is None:
            return  # no database: nothing is ever queued
        try:
            await asyncio.wait_for(queue.queued.wait(), EVERY_S)
            await asyncio.sleep(LINGER_S)  # others join the round
        except TimeoutError:
            pass
        queue.queued.clear()
        try:
            await deliver_all(peers)
            await close_due(peers)
            if time.monotonic() - counted > COUNT_EVERY_S:
                counted = time.monotonic()
                metrics.RECEIPTS_WAITING.set(await queue.count())
        except Exception:  # noqa: BLE001 - logged; the next round tries again
            log.exception("relaying queued receipts failed; retrying")
            await asyncio.sleep(1.0)


async def drain(peers: Peers, timeout_s: float = 5.0) -> None:
    """On the way out: every budget retired, what waits delivered and the budgets whose
    draws ended closed (within `timeout_s`; the rest end by their TTL)."""
    budgets = peers.budgets
    if budgets is None:
        return
    budgets.retire_all()
    try:
        async with asyncio.timeout(timeout_s):
            await deliver_all(peers)
            await close_due(peers)
    except Exception:  # noqa: BLE001 - logged; the holds' TTL ends them
        log.warning("budgets not all closed on the way out", exc_info=True)

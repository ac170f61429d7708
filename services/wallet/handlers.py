"""The wallet's use cases: plain async functions of (command, unit of work).

Each runs in one transaction. The hot path (place, settle, release) is one
statement each, run in autocommit: its guards (`available >= amount`, `status =
'open'`) are re-checked by PostgreSQL on the newest row version, so the rules hold
under any concurrency (W2, W3); when it changes nothing, a fresh read says why. The
other writes lock the balance row (`SELECT ... FOR UPDATE`) before any money rule is
checked. The idempotency key is looked up after the lock (or in the statement), and
a unique index catches the rare race between two calls with one key (the use case
then runs once more and replays the winner's result).

The batch use cases (`place_holds`, `settle_holds`, `capture_parts`, `release_holds`,
behind HoldMany, SettleMany, CapturePartMany and ReleaseMany) run the hot-path use
case once per item, all in one transaction (one commit), or, when that transaction
cannot finish, concurrently, each in its own unit of work: either way an item is
answered as the same call alone.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from services.wallet import metrics
from services.wallet.domain import commands
from services.wallet.domain.attribution import Attribution, Movement, Slice, attribute
from services.wallet.domain.model import (
    Balance,
    EntryKind,
    Hold,
    HoldStatus,
    JournalEntry,
    account_not_found,
    adjustment,
    adjustment_key,
    already_reversed,
    check_charge,
    check_reversible,
    entry_not_found,
    hold_not_found,
    idempotency_conflict,
    part_key,
    require_positive,
    reversal,
    reversal_key,
    topup_credit,
    topup_key,
)
from services.wallet.domain.reconcile import (
    RULE_ATTRIBUTED,
    ReconcileReport,
    Violation,
    attribution_problems,
)
from services.wallet.storage.repository import (
    DuplicateKey,
    HoldQuery,
    LedgerQuery,
)
from services.wallet.storage.unit_of_work import UnitOfWork
from tokenforge.errors import DomainError, Reason
from tokenforge.holds import is_budget
from tokenforge.money import Bucket
from tokenforge.runtime.batch_items import check_batch_size, item_outcome

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500

T = TypeVar("T")


async def _replaying_duplicates(run: Callable[[], Awaitable[T]]) -> T:
    try:
        return await run()
    except DuplicateKey:
        log.info("idempotency key raced with another transaction; replaying")
        return await run()


def _require(value: str, name: str) -> None:
    if not value.strip():
        raise DomainError(Reason.INVALID_ARGUMENT, f"{name} is required.", {"field": name})


async def _locked_balance(uow: UnitOfWork, account_id: str, bucket: Bucket) -> Balance:
    balance = await uow.wallet.lock_balance(account_id, bucket)
    if balance is None:
        raise account_not_found(account_id)
    return balance


async def open_account(cmd: commands.OpenAccount, uow: UnitOfWork) -> list[Balance]:
    """Open the account's two buckets; opening an open account changes nothing."""
    _require(cmd.account_id, "account_id")
    async with uow:
        await uow.wallet.open_account(cmd.account_id)
        found = await uow.wallet.balances(cmd.account_id)
        await uow.commit()
    return found


async def get_balances(cmd: commands.GetBalances, uow: UnitOfWork) -> list[Balance]:
    async with uow:
        found = await uow.wallet.balances(cmd.account_id)
    if not found:
        raise account_not_found(cmd.account_id)
    return found


async def set_aside(account_id: str, uow: UnitOfWork) -> dict[Bucket, int]:
    """Per bucket, what the gateway's budgets still hold (tokenforge.holds: a budget's
    request id names it); the rest of `held` is held for requests and runs."""
    async with uow:
        open_holds = await uow.wallet.open_holds(account_id)
    found = dict.fromkeys(Bucket, 0)
    for hold in open_holds:
        if is_budget(hold.request_id):
            found[hold.bucket] += hold.remaining
    return found


async def place_hold(cmd: commands.PlaceHold, uow: UnitOfWork) -> Hold:
    """Reserve the worst case of a request (W2), once per (account, idempotency key)
    (W4); the key is the request id unless the caller names another (a request's
    second hold, on a fallback route's bucket).

    One statement checks the key, reserves from the bucket only if available covers
    the amount, and inserts the hold (`WalletRepository.place_hold`).
    """
    _require(cmd.request_id, "request_id")
    require_positive(cmd.amount, "A hold")
    key_name = "idempotency_key" if cmd.idempotency_key else "request_id"
    key = cmd.idempotency_key or cmd.request_id

    async def run() -> Hold:
        async with uow:
            await uow.single_statements()
            for _ in range(_ATTEMPTS):
                hold = Hold.new(
                    cmd.account_id,
                    cmd.bucket,
                    cmd.amount,
                    cmd.request_id,
                    cmd.ttl_seconds,
                    uow.now(),
                    cmd.trace_id,
                    key,
                )
                placement = await uow.wallet.place_hold(hold)
                if placement.existing is not None:
                    if placement.existing.same_request(cmd.bucket, cmd.amount, cmd.request_id):
                        return placement.existing
                    raise idempotency_conflict(key_name, key)
                if placement.balance is None:
                    raise account_not_found(cmd.account_id)
                if placement.hold is not None:
                    await uow.commit()
                    metrics.count_hold(hold.bucket, "placed")
                    return placement.hold
                seen = placement.balance
                if seen.available < cmd.amount:
                    raise seen.insufficient_for_hold(cmd.amount)
                # The bucket changed between the statement's snapshot and its guard:
                # look again with a fresh snapshot.
            raise seen.insufficient_for_hold(cmd.amount)

    return await _replaying_duplicates(run)


# A hot-path statement that changed nothing is explained by a fresh read; a state the
# read cannot explain (a concurrent change in between) is retried this many times.
_ATTEMPTS = 3


@dataclass(frozen=True)
class Settled:
    hold: Hold
    # The request_charge ledger row; None when the charge was zero.
    entry: JournalEntry | None


def _hold_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise hold_not_found(text) from None


async def _locked_hold(uow: UnitOfWork, hold_id: str, account_id: str) -> Hold:
    """The hold, locked; another account's hold is not found (never confirmed to exist)."""
    hold = await uow.wallet.lock_hold(_hold_id(hold_id))
    if hold is None or not hold.belongs_to(account_id):
        raise hold_not_found(hold_id)
    return hold


async def settle_hold(cmd: commands.SettleHold, uow: UnitOfWork) -> Settled:
    """Charge up to the held amount, give the rest back, end the hold (W3).

    One statement settles an open hold (`WalletRepository.settle_open_hold`); when it
    settles nothing, the hold is read to answer why: a replay of the same settle
    returns the first result, anything else is refused and changes nothing.
    """
    hold_id = _hold_id(cmd.hold_id)
    check_charge(cmd.amount)
    async with uow:
        await uow.single_statements()
        for _ in range(_ATTEMPTS):
            now = uow.now()
            done = await uow.wallet.settle_open_hold(
                hold_id, cmd.amount, cmd.account_id, now, cmd.trace_id
            )
            if done is not None:
                await uow.commit()
                hold, charge = done
                metrics.count_hold(hold.bucket, "settled")
                if charge is not None:
                    metrics.count_charge(hold.bucket, cmd.amount)
                return Settled(hold, charge)
            hold = await _current_hold(uow, hold_id, cmd.account_id)
            if hold.status is HoldStatus.SETTLED:
                # A replay settles the same amount as the settle's own row took (parts
                # captured before it are not part of the settle).
                entry = await uow.wallet.entry(hold.entry_id) if hold.entry_id else None
                if hold.is_replay_of_settle(cmd.amount, -entry.amount if entry else 0):
                    return Settled(hold, entry)
            hold.check_settle(cmd.amount, now)
    raise _unsettled(hold_id)


async def capture_part(cmd: commands.CapturePart, uow: UnitOfWork) -> Settled:
    """Take part of an open, unexpired hold into a request_charge row carrying the
    part's request id; the hold stays open and holds that much less (one request of a
    run). Once per (hold, request id): the same amount again answers the first part,
    another amount is refused. The parts never add up to more than the hold. A zero
    part writes no row (and so is not remembered)."""
    hold_id = _hold_id(cmd.hold_id)
    _require(cmd.request_id, "request_id")
    check_charge(cmd.amount)
    key = part_key(hold_id, cmd.request_id)

    async def run() -> Settled:
        async with uow:
            await uow.single_statements()
            for _ in range(_ATTEMPTS):
                now = uow.now()
                done = None
                if cmd.amount > 0:
                    done = await uow.wallet.capture_part(
                        hold_id, cmd.amount, cmd.request_id, cmd.account_id, now, cmd.trace_id
                    )
                if done is not None:
                    await uow.commit()
                    hold, charge = done
                    metrics.count_hold(hold.bucket, "part")
                    metrics.count_charge(hold.bucket, cmd.amount)
                    return Settled(hold, charge)
                hold = await _current_hold(uow, hold_id, cmd.account_id)
                first = await uow.wallet.entry_by_key(key)
                if first is not None:
                    if -first.amount != cmd.amount:
                        raise idempotency_conflict("request_id", cmd.request_id)
                    return Settled(hold, first)
                hold.check_settle(cmd.amount, now)
                if cmd.amount == 0:
                    return Settled(hold, None)
        raise _unsettled(hold_id)

    return await _replaying_duplicates(run)


async def _current_hold(uow: UnitOfWork, hold_id: uuid.UUID, account_id: str) -> Hold:
    """The hold as committed now; another account's hold is not found."""
    hold = await uow.wallet.lock_hold(hold_id)
    if hold is None or not hold.belongs_to(account_id):
        raise hold_not_found(str(hold_id))
    return hold


def _unsettled(hold_id: uuid.UUID) -> DomainError:
    return DomainError(
        Reason.SERVICE_UNAVAILABLE,
        f"Hold {hold_id} is changing under concurrent calls; retry the call.",
        {"hold_id": str(hold_id)},
    )


async def release_hold(cmd: commands.ReleaseHold, uow: UnitOfWork) -> Hold:
    """Give a hold back whole; releasing a released (or expired) hold changes nothing."""
    hold_id = _hold_id(cmd.hold_id)
    async with uow:
        await uow.single_statements()
        for _ in range(_ATTEMPTS):
            released = await uow.wallet.release_open_hold(hold_id, cmd.account_id, uow.now())
            if released is not None:
                await uow.commit()
                metrics.count_hold(released.bucket, "released")
                if cmd.reason:
                    log.info("hold %s released: %s", released.hold_id, cmd.reason)
                return released
            hold = await _current_hold(uow, hold_id, cmd.account_id)
            hold.check_release()
            if not hold.is_open:
                return hold  # released or expired already: the money is back (W3)
    raise _unsettled(hold_id)


Cmd = TypeVar("Cmd")


# A batch's transaction waits at most this long for a row lock held by another
# transaction before it gives up and runs its items one by one.
BATCH_LOCK_TIMEOUT_MS = 200


async def _each(
    use_case: Callable[[Cmd, UnitOfWork], Awaitable[T]],
    cmds: Sequence[Cmd],
    uow_factory: Callable[[], UnitOfWork],
    lock_order: Callable[[Cmd], tuple[str, str]],
) -> list[T | DomainError]:
    """Run `use_case` once per command and answer each outcome in order: the result,
    or the DomainError that item raised.

    Only for the hot-path use cases, each one autocommit statement (plus a read when
    it changed nothing). First, all items in one transaction, one after the other
    (`_in_one_transaction`): one commit for the batch. If that transaction fails for
    any reason, nothing of it stays, and the items run as if they had arrived one by
    one: concurrently over the pool, each in its own unit of work and commit.
    """
    check_batch_size(len(cmds))
    together = await _in_one_transaction(use_case, cmds, uow_factory, lock_order)
    if together is not None:
        metrics.BATCHES.labels("one_transaction").inc()
        return together
    if len(cmds) > 1:
        metrics.BATCHES.labels("item_by_item").inc()

    async def one(cmd: Cmd) -> T:
        return await use_case(cmd, uow_factory())

    return list(
        await asyncio.gather(
            *(item_outcome(one(cmd), f"Item {n} of the batch") for n, cmd in enumerate(cmds))
        )
    )


async def _in_one_transaction(
    use_case: Callable[[Cmd, UnitOfWork], Awaitable[T]],
    cmds: Sequence[Cmd],
    uow_factory: Callable[[], UnitOfWork],
    lock_order: Callable[[Cmd], tuple[str, str]],
) -> list[T | DomainError] | None:
    """The batch's items one after the other in one transaction, answered only once it
    committed; None when it did not (then nothing of it happened).

    Each item is its unary statement, so every guard holds as for concurrent calls
    (W2's `posted - held >= amount` sees the items before it in the batch; a key's
    second item replays the first). Items run in (account, bucket or hold) order, so
    that two batches lock balance rows in the same order; a lock wait beyond
    BATCH_LOCK_TIMEOUT_MS, a deadlock, a race on a key (unique index) or a lost
    connection abort the transaction, and the caller runs the items one by one. A
    refusal is an answer, not a failure: its statement changed nothing. Counts wait
    for the commit (a batch run again item by item counts once).
    """
    if len(cmds) < 2:
        return None
    outcomes: list[T | DomainError | None] = [None] * len(cmds)
    try:
        with metrics.counted_on_commit() as count:
            async with uow_factory().shared_transaction(BATCH_LOCK_TIMEOUT_MS) as shared:
                if shared is None:
                    return None
                for i in sorted(range(len(cmds)), key=lambda n: lock_order(cmds[n])):
                    try:
                        outcomes[i] = await use_case(cmds[i], shared())
                    except DomainError as error:
                        outcomes[i] = error
            count()
    except Exception as error:  # noqa: BLE001 - rolled back whole: run item by item
        log.info("a batch of %d runs item by item (%s)", len(cmds), type(error).__name__)
        return None
    answered = [o for o in outcomes if o is not None]
    assert len(answered) == len(cmds), "every item of a committed batch has its answer"
    return answered


async def place_holds(
    cmds: Sequence[commands.PlaceHold], uow_factory: Callable[[], UnitOfWork]
) -> list[Hold | DomainError]:
    """Each hold placed exactly as `place_hold` places it (HoldMany)."""
    return await _each(place_hold, cmds, uow_factory, lambda c: (c.account_id, c.bucket.value))


async def settle_holds(
    cmds: Sequence[commands.SettleHold], uow_factory: Callable[[], UnitOfWork]
) -> list[Settled | DomainError]:
    """Each hold settled exactly as `settle_hold` settles it (SettleMany)."""
    return await _each(settle_hold, cmds, uow_factory, lambda c: (c.account_id, c.hold_id))


async def capture_parts(
    cmds: Sequence[commands.CapturePart], uow_factory: Callable[[], UnitOfWork]
) -> list[Settled | DomainError]:
    """Each part captured exactly as `capture_part` captures it (CapturePartMany)."""
    return await _each(capture_part, cmds, uow_factory, lambda c: (c.account_id, c.hold_id))


async def release_holds(
    cmds: Sequence[commands.ReleaseHold], uow_factory: Callable[[], UnitOfWork]
) -> list[Hold | DomainError]:
    """Each hold released exactly as `release_hold` releases it (ReleaseMany)."""
    return await _each(release_hold, cmds, uow_factory, lambda c: (c.account_id, c.hold_id))


async def extend_hold(cmd: commands.ExtendHold, uow: UnitOfWork) -> Hold:
    """Give an open, unexpired hold a later expiry (long streams); bounded by the
    hold's maximum lifetime. Extending to an earlier time changes nothing."""
    async with uow:
        hold = await _locked_hold(uow, cmd.hold_id, cmd.account_id)
        if hold.extend(cmd.ttl_seconds, uow.now()):
            await uow.wallet.save_hold(hold)
            await uow.commit()
    return hold


async def expire_holds(cmd: commands.ExpireHolds, uow: UnitOfWork) -> int:
    """Expire open holds past their TTL, one transaction each; returns how many ended."""
    async with uow:
        due = await uow.wallet.expired_hold_ids(uow.now(), cmd.limit)
    expired = 0
    for hold_id in due:
        async with uow:
            hold = await uow.wallet.lock_hold(hold_id)
            now = uow.now()
            if hold is None or not hold.is_open or not hold.is_past_expiry(now):
                continue  # settled or released meanwhile: it already ended once (W3)
            balance = await _locked_balance(uow, hold.account_id, hold.bucket)
            hold.expire(balance, now)
            await uow.wallet.save_hold(hold)
            await uow.wallet.save_balance(balance)
            await uow.commit()
            metrics.count_hold(hold.bucket, "expired")
            expired += 1
    return expired


async def credit_topup(cmd: commands.CreditTopUp, uow: UnitOfWork) -> JournalEntry:
    """Credit a paid top-up to the bucket its order named, exactly once per order (P2).

    A top-up for an account whose wallet is not open yet opens it: paid money is
    never refused. When the credit comes from an event, the event id is recorded in
    the same transaction.
    """
    _require(cmd.order_id, "order_id")
    _require(cmd.account_id, "account_id")
    require_positive(cmd.amount, "A top-up credit")
    key = topup_key(cmd.order_id)

    async def run() -> JournalEntry:
        credited = False
        async with uow:
            await uow.wallet.open_account(cmd.account_id)
            balance = await _locked_balance(uow, cmd.account_id, cmd.bucket)
            entry = await uow.wallet.entry_by_key(key)
            if entry is not None:
                if (entry.account_id, entry.bucket, entry.amount) != (
                    cmd.account_id,
                    cmd.bucket,
                    cmd.amount,
                ):
                    raise idempotency_conflict("order_id", cmd.order_id)
            else:
                entry = topup_credit(balance, cmd.amount, cmd.order_id, uow.now(), cmd.trace_id)
                await uow.wallet.add_entry(entry)
                await uow.wallet.save_balance(balance)
                credited = True
            if cmd.event_id:
                await uow.wallet.record_event(cmd.event_id, entry.entry_id)
            await uow.commit()
            if credited:
                metrics.TOPUP_CREDITS.labels(cmd.bucket.value).inc(cmd.amount)
            return entry

    return await _replaying_duplicates(run)


async def adjust_balance(cmd: commands.AdjustBalance, uow: UnitOfWork) -> JournalEntry:
    """An operator's signed entry with a reason, once per idempotency key (W4, W5)."""
    _require(cmd.idempotency_key, "idempotency_key")
    _require(cmd.reason, "reason")
    key = adjustment_key(cmd.idempotency_key)

    async def run() -> JournalEntry:
        async with uow:
            balance = await _locked_balance(uow, cmd.account_id, cmd.bucket)
            first = await uow.wallet.entry_by_key(key)
            if first is not None:
                if (first.account_id, first.bucket, first.amount, first.reason) != (
                    cmd.account_id,
                    cmd.bucket,
                    cmd.amount,
                    cmd.reason.strip(),
                ):
                    raise idempotency_conflict("idempotency_key", cmd.idempotency_key)
                return first
            entry = adjustment(
                balance,
                cmd.amount,
                cmd.reason,
                cmd.operator,
                cmd.idempotency_key,
                uow.now(),
                cmd.trace_id,
            )
            await uow.wallet.add_entry(entry)
            await uow.wallet.save_balance(balance)
            await uow.commit()
            return entry

    return await _replaying_duplicates(run)


def _entry_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise entry_not_found(text) from None


async def reverse_entry(cmd: commands.ReverseEntry, uow: UnitOfWork) -> JournalEntry:
    """Write the opposite of one entry with a reason (W5), once per entry.

    The same reversal replayed (same reason) answers the first one; another reason
    is refused as a second reversal; a reversal is never reversed; taking money back
    never takes available below zero (W2).
    """
    _require(cmd.reason, "reason")
    entry_id = _entry_id(cmd.entry_id)

    async def run() -> JournalEntry:
        async with uow:
            original = await uow.wallet.entry(entry_id)
            if original is None:
                raise entry_not_found(cmd.entry_id)
            check_reversible(original, cmd.reason)
            balance = await _locked_balance(uow, original.account_id, original.bucket)
            first = await uow.wallet.entry_by_key(reversal_key(original.entry_id))
            if first is not None:
                if first.reason == cmd.reason.strip():
                    return first
                raise already_reversed(original, first)
            entry = reversal(original, balance, cmd.reason, cmd.operator, uow.now(), cmd.trace_id)
            await uow.wallet.add_entry(entry)
            await uow.wallet.save_balance(balance)
            await uow.commit()
            return entry

    return await _replaying_duplicates(run)


async def reconcile(cmd: commands.Reconcile, uow: UnitOfWork) -> ReconcileReport:
    """Recompute every balance from the journal and check every money rule, and the
    attribution of every bucket's charges to its credits (W8), from one snapshot."""
    async with uow:
        report = await uow.wallet.reconcile()
        # Bucket by bucket (one bucket's journal in memory at a time), same snapshot.
        for account_id, bucket in await uow.wallet.buckets_with_rows():
            rows = await uow.wallet.bucket_rows(account_id, bucket)
            problems = attribution_problems(attribute(_movement(e) for e in rows), rows)
            report.violations.extend(
                Violation(RULE_ATTRIBUTED, f"{account_id}/{bucket.value}", p) for p in problems
            )
    if report.violations:
        log.error("wallet reconciliation found %s violations", len(report.violations))
    return report


@dataclass(frozen=True)
class LedgerPage:
    entries: list[JournalEntry]
    next_page_token: str


def _encode_token(seq: int) -> str:
    return base64.urlsafe_b64encode(f"v1:{seq}".encode()).decode().rstrip("=")


def _bad_token() -> DomainError:
    return DomainError(
        Reason.INVALID_ARGUMENT,
        "page_token is not one this list gave out; pass next_page_token as returned.",
        {"field": "page_token"},
    )


def _decode_token(token: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        version, _, seq = raw.partition(":")
        if version != "v1":
            raise ValueError(version)
        return int(seq)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise _bad_token() from None


def _encode_hold_token(hold: Hold) -> str:
    raw = f"h1|{hold.created_at.isoformat()}|{hold.hold_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_hold_token(token: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        version, created_at, hold_id = raw.split("|")
        if version != "h1":
            raise ValueError(version)
        return datetime.fromisoformat(created_at), uuid.UUID(hold_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise _bad_token() from None


def _page_size(size: int) -> int:
    if size < 0:
        raise DomainError(
            Reason.INVALID_ARGUMENT, "page_size is never negative.", {"field": "page_size"}
        )
    return min(size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _check_window(from_time: datetime | None, to_time: datetime | None) -> None:
    if from_time is not None and to_time is not None and to_time <= from_time:
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            "to_time must be after from_time (from is inclusive, to is exclusive).",
            {"field": "to_time"},
        )


@dataclass(frozen=True)
class HoldPage:
    holds: list[Hold]
    next_page_token: str


async def list_holds(cmd: commands.ListHolds, uow: UnitOfWork) -> HoldPage:
    """The account's holds newest first, by status and time, one page at a time
    (what the usage service reconciles receipts against)."""
    size = _page_size(cmd.page_size)
    _check_window(cmd.from_time, cmd.to_time)
    query = HoldQuery(
        account_id=cmd.account_id,
        limit=size + 1,
        status=cmd.status,
        from_time=cmd.from_time,
        to_time=cmd.to_time,
        before=_decode_hold_token(cmd.page_token) if cmd.page_token else None,
    )
    async with uow:
        if cmd.account_id and not await uow.wallet.account_exists(cmd.account_id):
            raise account_not_found(cmd.account_id)
        rows = await uow.wallet.holds(query)
    page, more = rows[:size], len(rows) > size
    return HoldPage(page, _encode_hold_token(page[-1]) if more else "")


async def list_ledger(cmd: commands.ListLedger, uow: UnitOfWork) -> LedgerPage:
    """The account's ledger rows newest first, filtered, one page at a time (every
    account's when none is named: operators only, checked by the transport)."""
    size = _page_size(cmd.page_size)
    _check_window(cmd.from_time, cmd.to_time)
    before = _decode_token(cmd.page_token) if cmd.page_token else None
    query = LedgerQuery(
        account_id=cmd.account_id,
        limit=size + 1,
        bucket=cmd.bucket,
        kind=cmd.kind,
        request_id=cmd.request_id,
        order_id=cmd.order_id,
        before_seq=before,
        from_time=cmd.from_time,
        to_time=cmd.to_time,
    )
    async with uow:
        if cmd.account_id and not await uow.wallet.account_exists(cmd.account_id):
            raise account_not_found(cmd.account_id)
        rows = await uow.wallet.ledger(query)
    page, more = rows[:size], len(rows) > size
    return LedgerPage(page, _encode_token(page[-1].seq) if more else "")


def _movement(e: JournalEntry) -> Movement:
    return Movement(
        entry_id=str(e.entry_id),
        kind=e.kind.value,
        change=e.amount,
        request_id=e.request_id,
        order_id=e.order_id,
        reverses_entry_id=str(e.reverses_entry_id) if e.reverses_entry_id else "",
        created_at=e.created_at,
    )


async def _attribution(
    uow: UnitOfWork, account_id: str, bucket: Bucket, through_seq: int | None = None
) -> Attribution:
    rows = await uow.wallet.bucket_rows(account_id, bucket, through_seq)
    return attribute(_movement(e) for e in rows)


@dataclass(frozen=True)
class CreditUse:
    credit: JournalEntry
    received: int
    used: int
    left: int
    slices: list[Slice]
    slices_total: int
    next_page_token: str


def _credit_not_found(what: str) -> DomainError:
    return DomainError(
        Reason.NOT_FOUND,
        f"No credit {what} in this account: name a top-up's order id (credited) or a "
        "ledger row that added money (a top-up credit or a positive adjustment).",
        {"field": "order_id" if what.startswith("for order") else "entry_id"},
    )


async def credit_use(cmd: commands.GetCreditUse, uow: UnitOfWork) -> CreditUse:
    """What one credit paid for: first in, first out over its bucket's ledger
    (domain/attribution.py); its slices oldest first, one page at a time."""
    _require(cmd.account_id, "account_id")
    size = _page_size(cmd.page_size)
    start = _decode_offset(cmd.page_token) if cmd.page_token else 0
    async with uow:
        if cmd.order_id:
            found = await uow.wallet.ledger(
                LedgerQuery(
                    account_id=cmd.account_id,
                    limit=1,
                    kind=EntryKind.TOPUP_CREDIT,
                    order_id=cmd.order_id,
                )
            )
            entry = found[0] if found else None
            what = f"for order {cmd.order_id}"
        else:
            entry = await uow.wallet.entry(_entry_id(cmd.entry_id))
            what = f"with entry id {cmd.entry_id}"
        if entry is None or entry.account_id != cmd.account_id:
            raise _credit_not_found(what)
        result = await _attribution(uow, cmd.account_id, entry.bucket)
    credit = result.credit(str(entry.entry_id))
    if credit is None:
        raise _credit_not_found(what)
    page = credit.slices[start : start + size]
    more = start + size < len(credit.slices)
    return CreditUse(
        credit=entry,
        received=credit.received,
        used=credit.used,
        left=credit.left,
        slices=page,
        slices_total=len(credit.slices),
        next_page_token=_encode_offset(start + size) if more else "",
    )


async def paid_from(cmd: commands.GetPaidFrom, uow: UnitOfWork) -> list[Slice]:
    """The credits that paid a request's ledger rows (both buckets, when a fallback
    to another route paid from the other one)."""
    _require(cmd.account_id, "account_id")
    _require(cmd.request_id, "request_id")
    async with uow:
        rows = await uow.wallet.ledger(
            LedgerQuery(account_id=cmd.account_id, limit=MAX_PAGE_SIZE, request_id=cmd.request_id)
        )
        slices: list[Slice] = []
        for bucket in sorted({e.bucket for e in rows}):
            # A row's slices depend only on the rows before it (and its own reversal,
            # which carries the request id too): fold no further than its last row.
            last = max(e.seq for e in rows if e.bucket is bucket)
            found = await _attribution(uow, cmd.account_id, bucket, last)
            slices += found.paid_from(cmd.request_id)
    return slices


def _encode_offset(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o1:{offset}".encode()).decode().rstrip("=")


def _decode_offset(token: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        version, _, offset = raw.partition(":")
        if version != "o1" or int(offset) < 0:
            raise ValueError(version)
        return int(offset)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise _bad_token() from None

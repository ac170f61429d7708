"""Usage use cases: plain async functions of (command, unit of work)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Protocol

from services.usage import metrics
from services.usage.domain.commands import (
    AggregateReceipts,
    CloseRun,
    ExpireRuns,
    FinishRun,
    GetReceipt,
    GetRun,
    GetRunReceipt,
    ListReceipts,
    OpenRun,
    Reconcile,
    RecordReceipt,
    RecordReceipts,
    ReserveFromRun,
)
from services.usage.domain.receipts import (
    AggregateRow,
    Cursor,
    Receipt,
    ReceiptFilter,
    conflict,
    not_found,
    page_size,
    validate,
)
from services.usage.domain.reconcile import EntryView, HoldView, Report, reconcile
from services.usage.domain.runs import (
    Draw,
    Run,
    RunReceipt,
    RunStatus,
    check_new,
    run_not_found,
    run_receipt,
)
from services.usage.storage.unit_of_work import UnitOfWork
from tokenforge.errors import DomainError, Reason
from tokenforge.holds import RUN_PREFIX
from tokenforge.runtime.batch_items import check_batch_size, item_outcome

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReceiptPage:
    receipts: list[Receipt]
    next_page_token: str


async def record_receipt(command: RecordReceipt, uow: UnitOfWork) -> Receipt:
    """One receipt per request id: a replay answers the first, another receipt conflicts.

    A receipt of a run's request ends its draw in the same transaction: the slice goes
    back to the run and the charge (already taken from the run's hold as the request's
    own ledger row, `entry_id`) is added to what the run spent, so the run's spent is
    always the sum of its recorded lines.
    """
    receipt = command.receipt
    validate(receipt)
    async with uow:
        if not receipt.run_id:
            # Nothing but its own row: the insert commits itself (one round trip).
            await uow.single_statements()
        to_store = receipt
        if to_store.finished_at is None:
            to_store = replace(to_store, finished_at=uow.now())
        stored = await uow.receipts.add(to_store)
        if stored is not None:
            if receipt.run_id:
                await _end_draw(uow, receipt)
            await uow.commit()
            metrics.STORED[stored.status].inc()
            return stored
        existing = await uow.receipts.get(receipt.request_id)
    if existing is None or not receipt.same_as(existing):
        metrics.RECEIPT_CONFLICTS.inc()
        raise conflict(receipt.request_id)
    return existing


async def record_receipts(
    command: RecordReceipts, uow_factory: Callable[[], UnitOfWork]
) -> list[Receipt | DomainError]:
    """`record_receipt` for each receipt, answered in order: its receipt or its refusal.

    Receipts that touch nothing but their own row (no run, request id once in the
    batch) are stored by one multi-row insert; a request id already taken answers the
    stored receipt (a replay) or a conflict, as alone. Receipts of a run's requests,
    and a request id sent twice in the batch, go through `record_receipt` one by one,
    concurrently, as concurrent single calls would.
    """
    check_batch_size(len(command.receipts), "receipts")
    outcomes: list[Receipt | DomainError | None] = [None] * len(command.receipts)
    together: dict[str, int] = {}
    alone: list[int] = []
    for index, receipt in enumerate(command.receipts):
        if isinstance(receipt, DomainError):
            outcomes[index] = receipt
            continue
        try:
            validate(receipt)
        except DomainError as error:
            outcomes[index] = error
            continue
        if receipt.run_id or receipt.request_id in together:
            alone.append(index)
        else:
            together[receipt.request_id] = index

    async def one(index: int) -> None:
        receipt = command.receipts[index]
        assert isinstance(receipt, Receipt)

        async def record() -> Receipt:
            return await record_receipt(RecordReceipt(receipt), uow_factory())

        outcomes[index] = await item_outcome(record(), f"Receipt {receipt.request_id}")

    async def many() -> None:
        batch = [command.receipts[i] for i in together.values()]
        try:
            answers = await _record_together(
                [r for r in batch if isinstance(r, Receipt)], uow_factory()
            )
        except Exception:  # noqa: BLE001 - each goes alone: only a faulty one fails
            # One row the database refuses fails the whole statement; alone, only
            # that receipt fails, as it would have in its own call.
            log.warning("recording %s receipts together failed", len(batch), exc_info=True)
            await asyncio.gather(*(one(i) for i in together.values()))
            return
        for index, answer in zip(together.values(), answers, strict=True):
            outcomes[index] = answer

    await asyncio.gather(many(), *(one(i) for i in alone))
    return [_answered(outcome) for outcome in outcomes]


async def _record_together(batch: list[Receipt], uow: UnitOfWork) -> list[Receipt | DomainError]:
    """Valid receipts of distinct request ids and no run, in one transaction."""
    if not batch:
        return []
    async with uow:
        await uow.single_statements()  # one insert; then a read of what replays hit
        now = uow.now()
        stored = await uow.receipts.add_many(
            [r if r.finished_at is not None else replace(r, finished_at=now) for r in batch]
        )
        taken = [r.request_id for r in batch if r.request_id not in stored]
        existing = await uow.receipts.get_many(taken) if taken else {}
        await uow.commit()
    answers: list[Receipt | DomainError] = []
    for receipt in batch:
        found = stored.get(receipt.request_id)
        if found is not None:
            metrics.STORED[found.status].inc()
        else:
            first = existing.get(receipt.request_id)
            found = first if first is not None and receipt.same_as(first) else None
            if found is None:
                metrics.RECEIPT_CONFLICTS.inc()
        answers.append(found if found is not None else conflict(receipt.request_id))
    return answers


def _answered(outcome: Receipt | DomainError | None) -> Receipt | DomainError:
    assert outcome is not None, "every receipt of the batch is answered"
    return outcome


async def _end_draw(uow: UnitOfWork, receipt: Receipt) -> None:
    run = await uow.runs.get(receipt.run_id, lock=True)
    draw = await uow.runs.get_draw(receipt.request_id)
    if run is None or draw is None or draw.run_id != run.run_id:
        if receipt.charge_micros:
            raise DomainError(
                Reason.INVALID_ARGUMENT,
                f"Request {receipt.request_id} drew nothing from run {receipt.run_id}; "
                "a charged receipt of a run needs its draw.",
                {"request_id": receipt.request_id},
            )
        return
    if draw.state == "abandoned":
        if receipt.charge_micros and receipt.entry_id:
            # The wallet took this request's part before the run's hold ended; the
            # run finished before the receipt arrived. The money was taken: it counts.
            await uow.runs.save(run.add_late(receipt.charge_micros))
            await uow.runs.save_draw(
                replace(draw, charge_micros=receipt.charge_micros, state="committed")
            )
        elif receipt.charge_micros:
            raise DomainError(
                Reason.HOLD_NOT_OPEN,
                f"Run {run.run_id} was settled before request {receipt.request_id} ended; "
                "record the request with no charge.",
                {"run_id": run.run_id},
            )
        return
    if draw.state == "reserved":
        await uow.runs.save(run.commit(draw.reserved_micros, receipt.charge_micros))
        await uow.runs.save_draw(
            replace(draw, charge_micros=receipt.charge_micros, state="committed")
        )


async def get_receipt(command: GetReceipt, uow: UnitOfWork) -> Receipt:
    if not command.account_id or not command.request_id:
        raise DomainError(Reason.INVALID_ARGUMENT, "account_id and request_id are both required.")
    async with uow:
        receipt = await uow.receipts.get(command.request_id)
    # Another account's receipt reads exactly like a missing one.
    if receipt is None or receipt.account_id != command.account_id:
        raise not_found(command.request_id)
    return receipt


async def list_receipts(command: ListReceipts, uow: UnitOfWork) -> ReceiptPage:
    """Newest first. An empty account id lists every account: the servicer's access
    policy keeps that to the gateway (which always names the account) and operators."""
    command.filter.check()
    size = page_size(command.page_size)
    after = Cursor.decode(command.page_token) if command.page_token else None
    async with uow:
        found = await uow.receipts.list(command.filter, after, size + 1)
    page = found[:size]
    next_token = ""
    if len(found) > size:
        last = page[-1]
        assert last.finished_at is not None
        next_token = Cursor(last.finished_at, last.request_id).encode()
    return ReceiptPage(page, next_token)


async def aggregate_receipts(command: AggregateReceipts, uow: UnitOfWork) -> list[AggregateRow]:
    command.filter.check()
    async with uow:
        return await uow.receipts.aggregate(command.filter, command.by)


# Runs -------------------------------------------------------------------------------


async def open_run(command: OpenRun, uow: UnitOfWork) -> Run:
    """Store the run whose budget the gateway held; a replay answers the first."""
    check_new(command.run)
    async with uow:
        stored = await uow.runs.add(command.run)
        if stored is not None:
            await uow.commit()
            return stored
        existing = await uow.runs.get(command.run.run_id)
    if existing is None or (existing.account_id, existing.hold_id, existing.budget_micros) != (
        command.run.account_id,
        command.run.hold_id,
        command.run.budget_micros,
    ):
        raise DomainError(
            Reason.IDEMPOTENCY_CONFLICT,
            f"Run {command.run.run_id} exists with another budget or hold.",
            {"run_id": command.run.run_id},
        )
    return existing


def _mine(run: Run | None, account_id: str, run_id: str) -> Run:
    if run is None or (account_id and run.account_id != account_id):
        raise run_not_found(run_id)
    return run


async def get_run(command: GetRun, uow: UnitOfWork) -> Run:
    async with uow:
        return _mine(await uow.runs.get(command.run_id), command.account_id, command.run_id)


async def reserve_from_run(command: ReserveFromRun, uow: UnitOfWork) -> Run:
    """Under the run's row lock: the slice fits the rest of the budget, or is refused.
    The same request id again answers the run without a second slice."""
    if not command.request_id:
        raise DomainError(Reason.INVALID_ARGUMENT, "request_id is required to draw on a run.")
    async with uow:
        run = _mine(
            await uow.runs.get(command.run_id, lock=True), command.account_id, command.run_id
        )
        draw = await uow.runs.get_draw(command.request_id)
        if draw is not None:
            if draw.run_id != run.run_id or draw.reserved_micros != command.amount_micros:
                raise DomainError(
                    Reason.IDEMPOTENCY_CONFLICT,
                    f"Request {command.request_id} already drew another slice.",
                    {"request_id": command.request_id},
                )
            return run
        run = run.reserve(command.amount_micros, command.bucket, uow.now())
        await uow.runs.save(run)
        await uow.runs.save_draw(Draw(run.run_id, command.request_id, command.amount_micros))
        await uow.commit()
        return run


async def close_run(command: CloseRun, uow: UnitOfWork) -> Run:
    async with uow:
        run = _mine(
            await uow.runs.get(command.run_id, lock=True), command.account_id, command.run_id
        )
        closed = run.close(uow.now())
        if closed is not run:
            await uow.runs.save(closed)
            await uow.commit()
        return closed


async def finish_run(command: FinishRun, uow: UnitOfWork) -> RunReceipt:
    """Record the wallet's settle of the run's hold; draws still in flight are
    abandoned (their requests are not charged). Answers the aggregate receipt."""
    async with uow:
        run = _mine(await uow.runs.get(command.run_id, lock=True), "", command.run_id)
        if run.status is RunStatus.CLOSING:
            abandoned = await uow.runs.abandon_draws(run.run_id)
            run = run.finish(command.entry_id, command.captured_micros, abandoned, uow.now())
            await uow.runs.save(run)
            await uow.commit()
        elif run.status is RunStatus.OPEN:
            run.finish(command.entry_id, command.captured_micros, 0, uow.now())  # refuses
    return await get_run_receipt(GetRunReceipt("", command.run_id), uow)


async def expire_runs(command: ExpireRuns, uow: UnitOfWork) -> list[Run]:
    """Open runs past their expiry become closing (expiring); runs left closing past
    the grace period are answered again, for the gateway's sweeper to settle."""
    async with uow:
        now = uow.now()
        due = [r for r in await uow.runs.due(now, command.limit or 100) if r.due_for_sweep(now)]
        answer = []
        for run in due:
            closed = run.close(now, expiring=True)
            if closed is not run:
                await uow.runs.save(closed)
            answer.append(closed)
        await uow.commit()
        return answer


async def get_run_receipt(command: GetRunReceipt, uow: UnitOfWork) -> RunReceipt:
    async with uow:
        run = _mine(await uow.runs.get(command.run_id), command.account_id, command.run_id)
        lines: list[Receipt] = []
        after: Cursor | None = None
        while True:
            page = await uow.receipts.list(
                ReceiptFilter(account_id=run.account_id, run_id=run.run_id), after, 500
            )
            lines.extend(page)
            if len(page) < 500:
                break
            last = page[-1]
            assert last.finished_at is not None
            after = Cursor(last.finished_at, last.request_id)
    return run_receipt(run, lines)


# Reconciliation ------------------------------------------------------------------------

# Receipts are read from this much before `since`, so a hold placed just before the
# window still finds its receipt.
RECEIPT_MARGIN = timedelta(hours=1)
READ_PAGE = 500


class WalletRecords(Protocol):
    """The wallet's side of the comparison, read through the wallet's client
    (services/usage/transport/wallet_records.py). An empty account id reads every
    account (one scan across accounts: an account whose charges have no receipt at
    all is seen too)."""

    async def holds(self, account_id: str, since: datetime | None) -> list[HoldView]: ...

    async def charge_entries(self, account_id: str, since: datetime | None) -> list[EntryView]: ...


@dataclass(frozen=True)
class Reconciled:
    report: Report
    runs_checked: int


async def reconcile_with_wallet(
    command: Reconcile, new_uow: Callable[[], UnitOfWork], wallet: WalletRecords
) -> Reconciled:
    """Receipts (from an hour before `since`), then the wallet's holds and
    request-charge rows, then the runs they name; services.usage.domain.reconcile
    decides. Run it when the gateways' finish queues are empty: a finish still queued
    shows as a ledger row without its receipt for a moment."""
    wide_start = command.since - RECEIPT_MARGIN if command.since else None
    receipts: list[Receipt] = []
    holds: list[HoldView] = []
    entries: list[EntryView] = []
    for account_id in command.account_ids or ("",):
        where = ReceiptFilter(account_id=account_id, from_time=wide_start)
        token = ""
        while True:
            page = await list_receipts(ListReceipts(where, READ_PAGE, token), new_uow())
            receipts += page.receipts
            token = page.next_page_token
            if not token:
                break
        holds += await wallet.holds(account_id, command.since)
        entries += await wallet.charge_entries(account_id, command.since)
    in_scope = [
        r
        for r in receipts
        if command.since is None or (r.finished_at is not None and r.finished_at >= command.since)
    ]
    run_ids = {r.run_id for r in receipts if r.run_id} | {
        h.request_id for h in holds if h.request_id.startswith(RUN_PREFIX)
    }
    runs: list[Run] = []
    async with new_uow() as uow:
        for run_id in sorted(run_ids):
            run = await uow.runs.get(run_id)
            if run is None:
                raise run_not_found(run_id)
            runs.append(run)
    report = reconcile(holds, receipts, entries, runs, in_scope)
    metrics.RECONCILE_MISMATCHES.set(len(report.mismatches))
    return Reconciled(report, len(runs))

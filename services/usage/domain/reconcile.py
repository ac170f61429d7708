"""Receipt <-> ledger reconciliation: pure comparison of what the wallet and the usage
service each recorded. The Reconcile call (`handlers.reconcile_with_wallet`, asked by
`tokenforge usage reconcile`) fetches; this decides.

The rules:

- every settled or released hold has exactly one receipt that it paid for, and the
  receipt's charge equals what the hold captured; a hold released when the request
  fell back to another route is named by that request's receipt (its route attempts)
  and captured nothing, so one request id may have several holds, at most one of
  which took money; a fallback route's hold whose Hold the wallet never answered is
  released later, named by no hold id: the request's receipt lists a route attempt
  `hold_in_doubt` on the hold's bucket, and the hold captured nothing;
- a run's hold paid for the lines of its run: they sum to what the hold captured
  and to what the run recorded;
- a gateway budget's hold (its request id starts with `tokenforge.holds.BUDGET_PREFIX`)
  paid for the receipts drawn from it, each its own part: their charges sum to what
  the hold captured, also when it expired (the parts captured before stay taken);
- what a hold captured is exactly what its ledger rows took from its bucket (a
  request's hold: its settle row; a run's hold: one part row per charged line);
- every charged receipt has its own ledger row (a run's line too: its part of the
  run's hold), same bucket, same amount, same request id; no row is named twice;
- every request-charge ledger row has its receipt.

Open holds are requests (or runs) in flight and are skipped; an expired request hold
must not have a charged receipt (its money was never taken). Runs closed before
per-request parts existed have one aggregate row for the run: still accepted.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from services.usage.domain.receipts import Receipt
from services.usage.domain.runs import Run, RunStatus
from tokenforge.holds import is_budget
from tokenforge.money import Bucket


class HoldState(enum.StrEnum):
    OPEN = "open"
    SETTLED = "settled"
    RELEASED = "released"
    EXPIRED = "expired"


@dataclass(frozen=True)
class HoldView:
    """A wallet hold as ListHolds answers it."""

    hold_id: str
    account_id: str
    bucket: Bucket
    amount_micros: int
    captured_micros: int
    status: HoldState
    request_id: str = ""
    entry_id: str = ""


@dataclass(frozen=True)
class EntryView:
    """A wallet ledger row of kind request_charge; `amount_micros` is signed (< 0)."""

    entry_id: str
    account_id: str
    bucket: Bucket
    amount_micros: int
    request_id: str = ""
    hold_id: str = ""


class Problem(enum.StrEnum):
    HOLD_WITHOUT_RECEIPT = "hold_without_receipt"
    HOLD_WITH_SEVERAL_RECEIPTS = "hold_with_several_receipts"
    CHARGE_DIFFERS_FROM_HOLD = "charge_differs_from_hold"
    HOLD_WITHOUT_LEDGER_ENTRY = "hold_without_ledger_entry"
    LEDGER_AMOUNT_DIFFERS = "ledger_amount_differs"
    RECEIPT_WITHOUT_LEDGER_ENTRY = "receipt_without_ledger_entry"
    LEDGER_ENTRY_WITHOUT_RECEIPT = "ledger_entry_without_receipt"
    LEDGER_ENTRY_WITH_SEVERAL_RECEIPTS = "ledger_entry_with_several_receipts"
    CHARGED_ON_EXPIRED_HOLD = "charged_on_expired_hold"
    RUN_NOT_SETTLED = "run_not_settled"


@dataclass(frozen=True)
class Mismatch:
    problem: Problem
    # A hold id, a request id, an entry id or a run id.
    subject: str
    detail: str


@dataclass
class Report:
    holds_checked: int = 0
    receipts_checked: int = 0
    entries_checked: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches


ENDED = (HoldState.SETTLED, HoldState.RELEASED)


def reconcile(
    holds: Iterable[HoldView],
    receipts: Iterable[Receipt],
    entries: Iterable[EntryView],
    runs: Iterable[Run] = (),
    receipts_in_scope: Iterable[Receipt] | None = None,
) -> Report:
    """Compare. `receipts` is every receipt that may belong to the holds (a wider time
    window); `receipts_in_scope` (default: the same) are the ones whose ledger rows are
    checked."""
    all_receipts = list(receipts)
    scoped = all_receipts if receipts_in_scope is None else list(receipts_in_scope)
    report = Report()
    add = report.mismatches.append
    paid_by: dict[str, list[Receipt]] = defaultdict(list)
    released_for: dict[str, list[Receipt]] = defaultdict(list)
    named_by: dict[str, list[Receipt]] = defaultdict(list)
    in_doubt_for: dict[tuple[str, Bucket], list[Receipt]] = defaultdict(list)
    for receipt in all_receipts:
        if receipt.hold_id:
            paid_by[receipt.hold_id].append(receipt)
        for hold_id in receipt.released_hold_ids:
            released_for[hold_id].append(receipt)
        for bucket in receipt.buckets_in_doubt:
            in_doubt_for[(receipt.request_id, bucket)].append(receipt)
        if receipt.entry_id:
            named_by[receipt.entry_id].append(receipt)
    entry_list = list(entries)
    entries_by_id = {e.entry_id: e for e in entry_list}
    entries_by_hold: dict[str, list[EntryView]] = defaultdict(list)
    for e in entry_list:
        if e.hold_id:
            entries_by_hold[e.hold_id].append(e)
    run_list = list(runs)
    runs_by_hold = {r.hold_id: r for r in run_list}
    runs_by_id = {r.run_id: r for r in run_list}

    for hold in holds:
        if hold.status is HoldState.OPEN:
            continue
        report.holds_checked += 1
        released = released_for[hold.hold_id]
        if not paid_by[hold.hold_id] and not released:  # a fallback's Hold never answered?
            released = in_doubt_for[(hold.request_id, hold.bucket)]
        _check_hold(hold, paid_by[hold.hold_id], released, runs_by_hold.get(hold.hold_id), add)
        _check_hold_ledger(hold, entries_by_hold[hold.hold_id], entries_by_id, add)

    for receipt in scoped:
        report.receipts_checked += 1
        if receipt.charge_micros > 0:
            _check_receipt_ledger(receipt, entries_by_id, runs_by_id, add)

    explained = set(named_by) | {r.entry_id for r in run_list if r.entry_id}
    for entry in entry_list:
        report.entries_checked += 1
        if len(named_by.get(entry.entry_id, ())) > 1:
            add(
                Mismatch(
                    Problem.LEDGER_ENTRY_WITH_SEVERAL_RECEIPTS,
                    entry.entry_id,
                    "receipts " + ", ".join(sorted(r.request_id for r in named_by[entry.entry_id])),
                )
            )
        if entry.entry_id not in explained:
            add(
                Mismatch(
                    Problem.LEDGER_ENTRY_WITHOUT_RECEIPT,
                    entry.entry_id,
                    f"ledger row of request {entry.request_id or '-'} takes "
                    f"{-entry.amount_micros} from {entry.bucket.value}; no receipt names it",
                )
            )
    return report


def _check_hold(
    hold: HoldView,
    lines: list[Receipt],
    released_for: list[Receipt],
    run: Run | None,
    add: Callable[[Mismatch], None],
) -> None:
    """The receipts a hold paid for (or the run it reserved) against what it captured."""
    charged = sum(r.charge_micros for r in lines)
    if run is not None:
        if run.status not in (RunStatus.CLOSED, RunStatus.EXPIRED):
            add(Mismatch(Problem.RUN_NOT_SETTLED, run.run_id, f"run is {run.status.value}"))
        if charged != hold.captured_micros or run.captured_micros != hold.captured_micros:
            add(
                Mismatch(
                    Problem.CHARGE_DIFFERS_FROM_HOLD,
                    hold.hold_id,
                    f"run {run.run_id}: lines charge {charged}, run recorded "
                    f"{run.captured_micros}, hold captured {hold.captured_micros}",
                )
            )
        return
    if is_budget(hold.request_id):
        if charged != hold.captured_micros:
            add(
                Mismatch(
                    Problem.CHARGE_DIFFERS_FROM_HOLD,
                    hold.hold_id,
                    f"budget: {len(lines)} receipts charge {charged}, hold captured "
                    f"{hold.captured_micros}",
                )
            )
        return
    if hold.status is HoldState.EXPIRED:
        if charged:
            add(
                Mismatch(
                    Problem.CHARGED_ON_EXPIRED_HOLD,
                    hold.hold_id,
                    f"hold expired (nothing taken) but receipts charge {charged}",
                )
            )
        return
    if not lines and not released_for:
        add(
            Mismatch(
                Problem.HOLD_WITHOUT_RECEIPT,
                hold.hold_id,
                f"{hold.status.value} hold of request {hold.request_id} has no receipt",
            )
        )
    elif len(lines) + len(released_for) > 1:
        add(
            Mismatch(
                Problem.HOLD_WITH_SEVERAL_RECEIPTS,
                hold.hold_id,
                "receipts " + ", ".join(sorted(r.request_id for r in lines + released_for)),
            )
        )
    elif charged != hold.captured_micros:
        who = lines[0].request_id if lines else released_for[0].request_id
        add(
            Mismatch(
                Problem.CHARGE_DIFFERS_FROM_HOLD,
                hold.hold_id,
                f"receipt {who} charges {charged} with this hold"
                + ("" if lines else " (it lists the hold as released)")
                + f", hold captured {hold.captured_micros}",
            )
        )


def _check_hold_ledger(
    hold: HoldView,
    rows: list[EntryView],
    entries_by_id: dict[str, EntryView],
    add: Callable[[Mismatch], None],
) -> None:
    """What the hold captured is what its ledger rows took, from its bucket."""
    missing_settle_row = bool(hold.entry_id) and hold.entry_id not in entries_by_id
    if missing_settle_row or (hold.captured_micros and not rows):
        add(
            Mismatch(
                Problem.HOLD_WITHOUT_LEDGER_ENTRY,
                hold.hold_id,
                f"captured {hold.captured_micros} but no ledger row "
                f"{hold.entry_id!r} (rows of the hold: {len(rows)})",
            )
        )
        return
    taken = -sum(e.amount_micros for e in rows)
    if taken != hold.captured_micros or any(e.bucket is not hold.bucket for e in rows):
        add(
            Mismatch(
                Problem.LEDGER_AMOUNT_DIFFERS,
                rows[0].entry_id if len(rows) == 1 else hold.hold_id,
                f"{len(rows)} ledger rows take {taken} from "
                f"{', '.join(sorted({e.bucket.value for e in rows}))}, hold captured "
                f"{hold.captured_micros} from {hold.bucket.value}",
            )
        )


def _check_receipt_ledger(
    receipt: Receipt,
    entries_by_id: dict[str, EntryView],
    runs_by_id: dict[str, Run],
    add: Callable[[Mismatch], None],
) -> None:
    """A charged receipt has its own ledger row: same bucket, amount and request."""
    entry_id = receipt.entry_id
    if receipt.run_id and not entry_id:
        run = runs_by_id.get(receipt.run_id)
        if run is None or run.status not in (RunStatus.CLOSED, RunStatus.EXPIRED):
            entry_id = ""  # reported below: a charged line without its part
        elif run.entry_id:
            # A run closed before parts existed: its one aggregate row pays its lines
            # (the hold check compares the sums).
            entry = entries_by_id.get(run.entry_id)
            if entry is not None and entry.bucket is receipt.bucket:
                return
            entry_id = run.entry_id
    entry = entries_by_id.get(entry_id) if entry_id else None
    if entry is None:
        add(
            Mismatch(
                Problem.RECEIPT_WITHOUT_LEDGER_ENTRY,
                receipt.request_id,
                f"receipt charges {receipt.charge_micros} but ledger row {entry_id!r} is missing",
            )
        )
    elif entry.bucket is not receipt.bucket:
        add(
            Mismatch(
                Problem.LEDGER_AMOUNT_DIFFERS,
                entry.entry_id,
                f"receipt {receipt.request_id} paid from "
                f"{receipt.bucket.value if receipt.bucket else '-'}, ledger row from "
                f"{entry.bucket.value}",
            )
        )
    elif entry.amount_micros != -receipt.charge_micros:
        add(
            Mismatch(
                Problem.LEDGER_AMOUNT_DIFFERS,
                entry.entry_id,
                f"receipt {receipt.request_id} charges {receipt.charge_micros}, ledger "
                f"row takes {-entry.amount_micros}",
            )
        )
    elif entry.request_id and entry.request_id != receipt.request_id:
        add(
            Mismatch(
                Problem.LEDGER_AMOUNT_DIFFERS,
                entry.entry_id,
                f"receipt {receipt.request_id} names a ledger row of request {entry.request_id}",
            )
        )

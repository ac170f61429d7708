"""Receipt <-> ledger reconciliation: pure comparison of what the wallet and the usage
service each recorded. The CLI (`tokenforge usage reconcile`) fetches; this decides.

The rules:

- every settled or released hold has exactly one receipt (a run's hold: the lines of
  its run), and the receipt's charge equals what the hold captured;
- a hold that captured money has its ledger row, and that row takes exactly the
  captured amount from the hold's bucket;
- every charged receipt has its ledger row (its own, or its run's), same bucket,
  same amount;
- every request-charge ledger row has its receipt (or its run).

Open holds are requests in flight and are skipped; an expired hold must not have a
charged receipt (its money was never taken).
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from services.usage.domain.receipts import Receipt
from services.usage.domain.runs import Run, RunStatus
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
    by_hold: dict[str, list[Receipt]] = defaultdict(list)
    for receipt in all_receipts:
        if receipt.hold_id:
            by_hold[receipt.hold_id].append(receipt)
    entries_by_id = {e.entry_id: e for e in entries}
    runs_by_hold = {r.hold_id: r for r in runs}
    runs_by_id = {r.run_id: r for r in runs}
    holds_by_id: dict[str, HoldView] = {}
    add = report.mismatches.append

    for hold in holds:
        holds_by_id[hold.hold_id] = hold
        if hold.status is HoldState.OPEN:
            continue
        report.holds_checked += 1
        lines = by_hold.get(hold.hold_id, [])
        charged = sum(r.charge_micros for r in lines)
        if hold.status is HoldState.EXPIRED:
            if charged:
                add(
                    Mismatch(
                        Problem.CHARGED_ON_EXPIRED_HOLD,
                        hold.hold_id,
                        f"hold expired (nothing taken) but receipts charge {charged}",
                    )
                )
            continue
        run = runs_by_hold.get(hold.hold_id)
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
        elif not lines:
            add(
                Mismatch(
                    Problem.HOLD_WITHOUT_RECEIPT,
                    hold.hold_id,
                    f"{hold.status.value} hold of request {hold.request_id} has no receipt",
                )
            )
        elif len(lines) > 1:
            add(
                Mismatch(
                    Problem.HOLD_WITH_SEVERAL_RECEIPTS,
                    hold.hold_id,
                    "receipts " + ", ".join(sorted(r.request_id for r in lines)),
                )
            )
        elif lines[0].charge_micros != hold.captured_micros:
            add(
                Mismatch(
                    Problem.CHARGE_DIFFERS_FROM_HOLD,
                    hold.hold_id,
                    f"receipt {lines[0].request_id} charges {lines[0].charge_micros}, "
                    f"hold captured {hold.captured_micros}",
                )
            )
        if hold.captured_micros > 0:
            entry = entries_by_id.get(hold.entry_id)
            if entry is None:
                add(
                    Mismatch(
                        Problem.HOLD_WITHOUT_LEDGER_ENTRY,
                        hold.hold_id,
                        f"captured {hold.captured_micros} but no ledger row {hold.entry_id!r}",
                    )
                )
            elif entry.amount_micros != -hold.captured_micros or entry.bucket is not hold.bucket:
                add(
                    Mismatch(
                        Problem.LEDGER_AMOUNT_DIFFERS,
                        entry.entry_id,
                        f"ledger row takes {-entry.amount_micros} from {entry.bucket.value}, "
                        f"hold captured {hold.captured_micros} from {hold.bucket.value}",
                    )
                )

    explained_entries: set[str] = set()
    for receipt in all_receipts:
        if receipt.entry_id:
            explained_entries.add(receipt.entry_id)
    for run in runs:
        if run.entry_id:
            explained_entries.add(run.entry_id)

    for receipt in scoped:
        report.receipts_checked += 1
        if receipt.charge_micros <= 0:
            continue
        if receipt.run_id:
            run = runs_by_id.get(receipt.run_id)
            if run is None or run.status not in (RunStatus.CLOSED, RunStatus.EXPIRED):
                continue  # an open run's lines are settled when it closes
            entry_id = run.entry_id
        else:
            entry_id = receipt.entry_id
        entry = entries_by_id.get(entry_id) if entry_id else None
        if entry is None:
            add(
                Mismatch(
                    Problem.RECEIPT_WITHOUT_LEDGER_ENTRY,
                    receipt.request_id,
                    f"receipt charges {receipt.charge_micros} but ledger row "
                    f"{entry_id!r} is missing",
                )
            )
            continue
        if entry.bucket is not receipt.bucket:
            add(
                Mismatch(
                    Problem.LEDGER_AMOUNT_DIFFERS,
                    entry.entry_id,
                    f"receipt {receipt.request_id} paid from "
                    f"{receipt.bucket.value if receipt.bucket else '-'}, ledger row from "
                    f"{entry.bucket.value}",
                )
            )
        elif not receipt.run_id and entry.amount_micros != -receipt.charge_micros:
            add(
                Mismatch(
                    Problem.LEDGER_AMOUNT_DIFFERS,
                    entry.entry_id,
                    f"receipt {receipt.request_id} charges {receipt.charge_micros}, ledger "
                    f"row takes {-entry.amount_micros}",
                )
            )

    for entry in entries_by_id.values():
        report.entries_checked += 1
        if entry.entry_id in explained_entries:
            continue
        if entry.hold_id in runs_by_hold:
            continue
        add(
            Mismatch(
                Problem.LEDGER_ENTRY_WITHOUT_RECEIPT,
                entry.entry_id,
                f"ledger row of request {entry.request_id or '-'} takes "
                f"{-entry.amount_micros} from {entry.bucket.value}; no receipt names it",
            )
        )
    return report

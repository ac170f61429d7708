"""What each credit paid for: a bucket's charges attributed to its credits, first in,
first out. Derived from the ledger alone (nothing is stored); no I/O.

The rules (docs/GLOSSARY.md, "What a top-up paid for"), applied to one bucket's rows
in ledger order:

- A **credit** is a row that adds money: a top-up's credit, or a positive adjustment.
  Credits queue in ledger order; each has its received amount and what is left of it.
- A **debit** (a request's charge, a negative adjustment) is paid from the oldest
  credit with something left, then the next, and so on: one **slice** per credit.
- A **reversal of a credit** (negative) takes what is left of that credit first, then
  first in, first out from the others, like a debit.
- A **reversal of a debit** (positive) gives back exactly the slices of the debit it
  reverses, newest first, each as a negative slice on the same credit: the credit's
  `used` goes down by what the reversal returned. Anything beyond those slices is a new
  credit.
- A debit no credit can pay is `unpaid` (never, while W2 holds: the balance never goes
  below zero); reconciliation reports it.

So, for every bucket: the slices of a debit sum to its amount; no credit is used beyond
what it received; and what is left of all credits is the bucket's posted balance.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

CREDIT_KINDS = frozenset({"topup_credit", "adjustment", "reversal"})


@dataclass(frozen=True)
class Movement:
    """One ledger row of the bucket as attribution sees it."""

    entry_id: str
    kind: str  # EntryKind value
    change: int  # signed change of the bucket
    request_id: str = ""
    order_id: str = ""
    reverses_entry_id: str = ""
    created_at: datetime | None = None


@dataclass(frozen=True)
class Slice:
    """The part `used` of credit `credit` that paid row `debit` (negative: given back
    by a reversal of that row)."""

    credit: Movement
    debit: Movement
    used: int


@dataclass
class Credit:
    movement: Movement
    slices: list[Slice] = field(default_factory=list)

    @property
    def received(self) -> int:
        return self.movement.change

    @property
    def used(self) -> int:
        return sum(s.used for s in self.slices)

    @property
    def left(self) -> int:
        return self.received - self.used


@dataclass
class Attribution:
    """The attribution of one bucket: its credits in ledger order, each debit's slices,
    and what no credit could pay."""

    credits: list[Credit] = field(default_factory=list)
    slices_of: dict[str, list[Slice]] = field(default_factory=dict)
    unpaid: dict[str, int] = field(default_factory=dict)

    def credit(self, entry_id: str) -> Credit | None:
        return next((c for c in self.credits if c.movement.entry_id == entry_id), None)

    def credit_of_order(self, order_id: str) -> Credit | None:
        return next(
            (
                c
                for c in self.credits
                if c.movement.order_id == order_id and c.movement.kind == "topup_credit"
            ),
            None,
        )

    def paid_from(self, request_id: str) -> list[Slice]:
        """Every slice of every row of the request (a request may have two rows: a
        charge and, later, its reversal)."""
        return [
            s
            for slices in self.slices_of.values()
            for s in slices
            if s.debit.request_id == request_id
        ]

    @property
    def left(self) -> int:
        return sum(c.left for c in self.credits)


def attribute(rows: Iterable[Movement]) -> Attribution:
    """Attribute one bucket's rows, given oldest first."""
    result = Attribution()
    queue: deque[Credit] = deque()  # credits with something left, oldest first
    by_id: dict[str, Credit] = {}
    position: dict[str, int] = {}

    def take(debit: Movement, amount: int, first: Credit | None = None) -> None:
        order = ([first] if first is not None else []) + [c for c in queue if c is not first]
        for credit in order:
            if amount == 0:
                break
            part = min(credit.left, amount)
            if part > 0:
                piece = Slice(credit.movement, debit, part)
                credit.slices.append(piece)
                result.slices_of.setdefault(debit.entry_id, []).append(piece)
                amount -= part
        while queue and queue[0].left == 0:
            queue.popleft()
        if amount:
            result.unpaid[debit.entry_id] = amount

    def add_credit(movement: Movement, amount: int) -> None:
        credit = Credit(Movement(**{**movement.__dict__, "change": amount}))
        position[movement.entry_id] = len(result.credits)
        result.credits.append(credit)
        by_id[movement.entry_id] = credit
        queue.append(credit)

    for row in rows:
        if row.change < 0:
            reversed_credit = by_id.get(row.reverses_entry_id) if row.reverses_entry_id else None
            take(row, -row.change, reversed_credit)
        elif row.change > 0 and row.kind == "reversal" and row.reverses_entry_id:
            back = row.change
            for piece in reversed(result.slices_of.get(row.reverses_entry_id, [])):
                if back == 0:
                    break
                part = min(piece.used, back)
                returned = Slice(piece.credit, row, -part)
                credit = by_id[piece.credit.entry_id]
                credit.slices.append(returned)
                result.slices_of.setdefault(row.entry_id, []).append(returned)
                if credit not in queue:
                    queue.append(credit)
                back -= part
            if back:
                add_credit(row, back)
            # Credits given something back may sit behind newer ones: keep ledger order.
            ordered = sorted(queue, key=lambda c: position[c.movement.entry_id])
            queue.clear()
            queue.extend(ordered)
        elif row.change > 0:
            add_credit(row, row.change)
    return result

"""What a reconciliation answers: the money rules it checked and what broke them.

The checks themselves run where the data is (the repository's SQL, over the whole
journal); this module only names the rules and shapes the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.wallet.domain.attribution import Attribution
    from services.wallet.domain.model import JournalEntry

RULE_BALANCED = "W1"  # every entry's postings sum to zero
RULE_NOT_BELOW_ZERO = "W2"  # posted >= 0, held >= 0, available >= 0
RULE_HOLD_ENDS_ONCE = "W3"  # open, or ended exactly once (one charge at most)
RULE_DERIVABLE = "W7"  # posted = fold of the journal, held = sum of open holds
# every debit paid by credits first in, first out; what is left of the credits is the
# balance; no credit used beyond what it received (domain/attribution.py)
RULE_ATTRIBUTED = "W8"


@dataclass(frozen=True)
class Violation:
    rule: str
    # An entry id, "account/bucket" or a hold id.
    subject: str
    detail: str


@dataclass(frozen=True)
class ReconcileReport:
    accounts_checked: int
    entries_checked: int
    holds_checked: int
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


def attribution_problems(result: Attribution, rows: Sequence[JournalEntry]) -> list[str]:
    """What breaks W8 in one bucket's attribution (empty when all is well)."""
    problems = [
        f"row {entry_id} has {amount} micro-units no credit paid"
        for entry_id, amount in result.unpaid.items()
    ]
    for credit in result.credits:
        if not 0 <= credit.used <= credit.received:
            problems.append(
                f"credit {credit.movement.entry_id} used {credit.used} of {credit.received}"
            )
    folded = sum(e.amount for e in rows)
    if result.left != folded:
        problems.append(f"credits have {result.left} left but the journal folds to {folded}")
    return problems

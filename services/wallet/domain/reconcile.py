"""What a reconciliation answers: the money rules it checked and what broke them.

The checks themselves run where the data is (the repository's SQL, over the whole
journal); this module only names the rules and shapes the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field

RULE_BALANCED = "W1"  # every entry's postings sum to zero
RULE_NOT_BELOW_ZERO = "W2"  # posted >= 0, held >= 0, available >= 0
RULE_HOLD_ENDS_ONCE = "W3"  # open, or ended exactly once (one charge at most)
RULE_DERIVABLE = "W7"  # posted = fold of the journal, held = sum of open holds


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

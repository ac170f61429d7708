"""Budgets: credit control for busy accounts, the way telecom reserves quota.

A request is never sent upstream without a hold (DESIGN). For an account's bucket that
is busy (its previous request started a moment ago), the gateway replica places one
larger wallet hold, a **budget**, and takes each request's worst case from it in
memory: no wallet call on the request's path. Each request's charge is then its own
part of the budget's hold (wallet CapturePart, as a run's request), queued durably with
its receipt and captured by the relay; what the budget did not pay out is released
when it closes.

The rules this module keeps (plain Python, no I/O):

- the worst cases of the draws in flight plus the charges already taken never exceed
  the budget (the wallet's hold bounds the same sum again when the parts arrive);
- a budget takes no new draw once it is retired (idle, old, or the account's balance
  ran short); it closes only when its last draw has given back;
- a budget takes at most a quarter of what the bucket has available when it opens;
- an account whose balance is too small for a budget (or whose budget the wallet
  refused) is served hold by hold for a while: near the end of a balance each request
  gets the wallet's exact answer (a 402 names what is available).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from services.gateway.domain.settlement import FINISH_MARGIN_S
from tokenforge.money import Bucket

Key = tuple[str, Bucket]  # (account id, bucket)


@dataclass(frozen=True)
class BudgetPolicy:
    # A budget holds this many worst cases of the request that opens it (0: no budgets).
    requests: int = 64
    # An account's bucket is busy when its previous request started this recently.
    busy_within_s: float = 1.0
    # A budget no request drew from for this long is given back.
    idle_s: float = 1.0
    # A budget this old takes no new draw (budgets rotate; a hold's TTL stays short).
    max_age_s: float = 30.0
    # A draw needs the budget's hold to outlive the request (its own hold's TTL) by
    # this much more: time for its queued part to be captured, through a wallet outage.
    finish_margin_s: float = FINISH_MARGIN_S
    # After the wallet refused a budget, the account's bucket goes hold by hold this long.
    lean_s: float = 10.0
    # A budget takes at most 1/available_share of what the bucket has available when it
    # opens, so a busy account's held money stays a small part of its balance and other
    # replicas' budgets and requests find the rest; it is not opened at all when that
    # covers fewer than `min_requests` worst cases.
    available_share: int = 4
    min_requests: int = 2

    @property
    def enabled(self) -> bool:
        return self.requests > 0


@dataclass
class Budget:
    hold_id: str
    request_id: str  # the hold's (tokenforge.holds.BUDGET_PREFIX ...)
    account_id: str
    bucket: Bucket
    amount: int  # micro-units the wallet holds for it
    opened_at: float  # monotonic seconds
    last_used: float
    expires_at: float  # when the wallet expires the hold (monotonic, a little early)
    reserved: int = 0  # worst cases of the draws in flight
    spent: int = 0  # charges of the draws that ended (queued or captured)
    draws: int = 0  # draws in flight
    retired: bool = False

    @property
    def key(self) -> Key:
        return (self.account_id, self.bucket)

    @property
    def room(self) -> int:
        return self.amount - self.reserved - self.spent

    @property
    def closable(self) -> bool:
        return self.retired and self.draws == 0

    def take(self, worst: int, now: float) -> None:
        if self.retired or worst > self.room:
            raise ValueError(f"budget {self.hold_id} cannot take {worst} (room {self.room})")
        self.reserved += worst
        self.draws += 1
        self.last_used = now

    def give_back(self, worst: int, charge: int, now: float) -> None:
        """A draw ended: its worst case is no longer reserved and its charge (at most
        the worst case) is spent."""
        if not 0 <= charge <= worst or self.draws < 1 or worst > self.reserved:
            raise ValueError(f"budget {self.hold_id}: cannot give back {worst}/{charge}")
        self.reserved -= worst
        self.spent += charge
        self.draws -= 1
        self.last_used = now


@dataclass
class BudgetBook:
    """One replica's budgets, by account and bucket."""

    policy: BudgetPolicy
    budgets: dict[Key, list[Budget]] = field(default_factory=lambda: defaultdict(list))
    last_request: dict[Key, float] = field(default_factory=dict)
    lean_until: dict[Key, float] = field(default_factory=dict)

    def ttl_for(self, request_ttl_s: float) -> int:
        """The TTL of a budget's hold opened for requests that need `request_ttl_s`."""
        return int(self.policy.max_age_s + request_ttl_s + self.policy.finish_margin_s) + 1

    def draw(self, key: Key, worst: int, now: float, request_ttl_s: float = 0.0) -> Budget | None:
        """Take `worst` from an open budget of the key that has room and outlives the
        request (`request_ttl_s`) with the finish margin; None if none has."""
        needs = request_ttl_s + self.policy.finish_margin_s
        for budget in self.budgets.get(key, ()):
            too_old = now - budget.opened_at >= self.policy.max_age_s
            if not budget.retired and (too_old or budget.expires_at - now < needs):
                budget.retired = True
            if budget.retired:
                continue
            if budget.room >= worst:
                budget.take(worst, now)
                return budget
            budget.retired = True  # too little left for the account's requests
        return None

    def wants_budget(self, key: Key, now: float) -> bool:
        """Whether a request of this key (one is starting now) should open a budget:
        budgets are on, the key's previous request started within `busy_within_s`, and
        the wallet did not refuse the key a budget lately."""
        previous = self.last_request.get(key)
        self.last_request[key] = now
        if not self.policy.enabled or now < self.lean_until.get(key, 0.0):
            return False
        return previous is not None and now - previous <= self.policy.busy_within_s

    def nominal_size(self, worst: int) -> int:
        return worst * self.policy.requests

    def size_for(self, worst: int, available: int) -> int:
        """A new budget's amount: `requests` worst cases, at most a share of what is
        available; 0 when that would cover fewer than `min_requests` of them."""
        size = min(self.nominal_size(worst), available // self.policy.available_share)
        return size if size >= worst * self.policy.min_requests else 0

    def opened(
        self, key: Key, hold_id: str, request_id: str, amount: int, now: float, ttl_s: int
    ) -> Budget:
        budget = Budget(hold_id, request_id, key[0], key[1], amount, now, now, now + ttl_s)
        self.budgets[key].append(budget)
        return budget

    def refused(self, key: Key, now: float) -> None:
        """The balance could not cover a budget (or a request's own hold): hold by hold
        for a while, and the key's budgets take no new draw (given back as their draws
        end)."""
        self.lean_until[key] = now + self.policy.lean_s
        self.retire(key)

    def retire(self, key: Key) -> None:
        for budget in self.budgets.get(key, ()):
            budget.retired = True

    def room(self, key: Key) -> int:
        return sum(b.room for b in self.budgets.get(key, ()) if not b.retired)

    def due(self, now: float) -> list[Budget]:
        """Retire the budgets idle past `idle_s` or older than `max_age_s`, and hand over
        (and forget) those retired whose draws all ended: they are to be closed."""
        closing: list[Budget] = []
        for key in list(self.budgets):
            kept: list[Budget] = []
            for budget in self.budgets[key]:
                idle = budget.draws == 0 and now - budget.last_used >= self.policy.idle_s
                if idle or now - budget.opened_at >= self.policy.max_age_s:
                    budget.retired = True
                (closing if budget.closable else kept).append(budget)
            if kept:
                self.budgets[key] = kept
            else:
                del self.budgets[key]
        for key, at in list(self.last_request.items()):
            if now - at > max(self.policy.busy_within_s, self.policy.lean_s) * 2:
                del self.last_request[key]
                self.lean_until.pop(key, None)
        return closing

    def idle_of(self, account_id: str) -> list[Budget]:
        """Retire and hand over the account's budgets that no draw is using (a read of
        the account's money comes first)."""
        closing: list[Budget] = []
        for bucket in Bucket:
            key = (account_id, bucket)
            kept = []
            for budget in self.budgets.get(key, ()):
                if budget.draws == 0:
                    budget.retired = True
                    closing.append(budget)
                else:
                    kept.append(budget)
            if key in self.budgets:
                if kept:
                    self.budgets[key] = kept
                else:
                    del self.budgets[key]
        return closing

    def all(self) -> list[Budget]:
        return [b for budgets in self.budgets.values() for b in budgets]

"""The wallet's rules: balances, holds and double-entry journal entries. No I/O.

Money rules enforced here (see DESIGN.md):
- W1 every journal entry's postings sum to zero (`JournalEntry.__post_init__`);
- W2 a hold is placed only when available = posted - held covers it (`Balance.reserve`);
- W3 a hold ends exactly once: settled, released or expired (`Hold`); before it ends,
  parts of it may be captured (`Hold.capture_part`, a run's requests), never more in
  all than the hold;
- W6 an entry moves money within one bucket only.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from tokenforge.errors import DomainError, Reason, insufficient_balance
from tokenforge.holds import part_entry_id, settle_entry_id
from tokenforge.money import MAX_AMOUNT_MICROS, Bucket, format_amount

DEFAULT_HOLD_TTL_S = 300
MAX_HOLD_TTL_S = 3600
# ExtendHold keeps a long stream's hold alive, but never past this age: a hold is a
# reservation for one request, not a standing reserve.
MAX_HOLD_LIFETIME_S = 4 * 3600


class HoldStatus(enum.StrEnum):
    OPEN = "open"
    SETTLED = "settled"
    RELEASED = "released"
    EXPIRED = "expired"


class EntryKind(enum.StrEnum):
    TOPUP_CREDIT = "topup_credit"
    REQUEST_CHARGE = "request_charge"
    ADJUSTMENT = "adjustment"
    REVERSAL = "reversal"


# The other side of every user posting.
REVENUE = "revenue"
TOPUP_CLEARING = "topup_clearing"
ADJUSTMENTS = "adjustments"


def user_ledger_account(account_id: str, bucket: Bucket) -> str:
    return f"user:{account_id}:{bucket.value}"


def system_ledger_account(name: str, bucket: Bucket) -> str:
    return f"system:{name}:{bucket.value}"


def hold_ttl(ttl_seconds: int) -> timedelta:
    """0 means the default TTL; a hold never lives longer than MAX_HOLD_TTL_S."""
    if ttl_seconds < 0 or ttl_seconds > MAX_HOLD_TTL_S:
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            f"A hold lives between 1 and {MAX_HOLD_TTL_S} seconds (0 for the default "
            f"{DEFAULT_HOLD_TTL_S}); got {ttl_seconds}.",
            {"field": "ttl_seconds"},
        )
    return timedelta(seconds=ttl_seconds or DEFAULT_HOLD_TTL_S)


def require_positive(amount: int, what: str) -> None:
    if amount <= 0:
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            f"{what} must be a positive number of micro-units; got {amount}.",
            {"field": "amount_micros"},
        )
    require_bounded(amount, what)


def require_bounded(amount: int, what: str) -> None:
    """At most MAX_AMOUNT_MICROS either way: balances, the sums of many amounts, stay
    far inside int64 (the database's bigint)."""
    if abs(amount) > MAX_AMOUNT_MICROS:
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            f"{what} is at most {MAX_AMOUNT_MICROS} micro-units; got {amount}.",
            {"field": "amount_micros"},
        )


@dataclass
class Balance:
    """One bucket of one account: `posted` money, `held` for requests in progress."""

    account_id: str
    bucket: Bucket
    posted: int = 0
    held: int = 0

    @property
    def available(self) -> int:
        return self.posted - self.held

    def _refuse(self, requested: int, what: str) -> DomainError:
        return insufficient_balance(
            self.bucket,
            self.available,
            requested,
            what,
            f"Top up the {self.bucket.label} ({self.bucket.symbol}) to keep building.",
        )

    def reserve(self, amount: int) -> None:
        """W2: hold `amount` only if it is available."""
        require_positive(amount, "A hold")
        if self.available < amount:
            raise self.insufficient_for_hold(amount)
        self.held += amount

    def insufficient_for_hold(self, amount: int) -> DomainError:
        """The refusal of a hold of `amount` (W2), naming what is available."""
        return self._refuse(amount, "this request may cost up to")

    def unreserve(self, amount: int) -> None:
        self.held -= amount

    def capture(self, held: int, charge: int) -> int:
        """End a hold of `held`, taking `charge` from posted; returns the balance after."""
        self.held -= held
        self.posted -= charge
        return self.posted

    def post(self, amount: int) -> int:
        """Add a signed amount to posted; a debit may not take available below zero."""
        if amount < 0 and self.available < -amount:
            raise self._refuse(-amount, "this takes")
        self.posted += amount
        return self.posted


def check_charge(amount: int) -> None:
    if amount < 0:
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            f"A charge is never negative; got {amount}.",
            {"field": "amount_micros"},
        )


@dataclass
class Hold:
    """Money set aside for a request's worst case; it ends exactly once (W3)."""

    hold_id: uuid.UUID
    account_id: str
    bucket: Bucket
    amount: int
    request_id: str
    created_at: datetime
    expires_at: datetime
    status: HoldStatus = HoldStatus.OPEN
    captured: int = 0
    entry_id: uuid.UUID | None = None
    ended_at: datetime | None = None
    trace_id: str = ""
    # One hold per (account, key); the key is the request id unless the request needs
    # a second hold (a fallback to another route: another bucket).
    idempotency_key: str = ""

    def __post_init__(self) -> None:
        if not self.idempotency_key:
            self.idempotency_key = self.request_id

    @classmethod
    def place(
        cls,
        balance: Balance,
        amount: int,
        request_id: str,
        ttl_seconds: int,
        now: datetime,
        trace_id: str = "",
    ) -> Hold:
        hold = cls.new(
            balance.account_id, balance.bucket, amount, request_id, ttl_seconds, now, trace_id
        )
        balance.reserve(amount)
        return hold

    @classmethod
    def new(
        cls,
        account_id: str,
        bucket: Bucket,
        amount: int,
        request_id: str,
        ttl_seconds: int,
        now: datetime,
        trace_id: str = "",
        idempotency_key: str = "",
    ) -> Hold:
        """The hold a request asks for, before its bucket reserves it (`Balance.reserve`,
        or the storage's single statement that checks W2 and reserves in one step)."""
        require_positive(amount, "A hold")
        ttl = hold_ttl(ttl_seconds)
        return cls(
            hold_id=uuid.uuid4(),
            account_id=account_id,
            bucket=bucket,
            amount=amount,
            request_id=request_id,
            created_at=now,
            expires_at=now + ttl,
            trace_id=trace_id,
            idempotency_key=idempotency_key or request_id,
        )

    @property
    def remaining(self) -> int:
        """What the hold still reserves: its amount less the parts captured, while open."""
        return self.amount - self.captured if self.is_open else 0

    def can_settle(self, amount: int, now: datetime) -> bool:
        """Open, unexpired and still holding at least `amount` (`check_settle` says why
        not)."""
        return self.is_open and not self.is_past_expiry(now) and 0 <= amount <= self.remaining

    def same_request(self, bucket: Bucket, amount: int, request_id: str | None = None) -> bool:
        """A replay of the hold: same bucket and amount (and request id, when given)."""
        same_id = request_id is None or request_id == self.request_id
        return self.bucket is bucket and self.amount == amount and same_id

    @property
    def is_open(self) -> bool:
        return self.status is HoldStatus.OPEN

    def is_past_expiry(self, now: datetime) -> bool:
        return now >= self.expires_at

    def check_settle(self, amount: int, now: datetime) -> None:
        """Refuse a settle (or a part) that must change nothing (for an open hold)."""
        check_charge(amount)
        if self.status is HoldStatus.EXPIRED or (self.is_open and self.is_past_expiry(now)):
            raise self._expired()
        if not self.is_open:
            raise self._not_open()
        if amount > self.remaining:
            parts = (
                f" ({format_amount(self.captured, self.bucket)} already captured in parts)"
                if self.captured
                else ""
            )
            raise DomainError(
                Reason.SETTLE_ABOVE_HOLD,
                f"A settle never exceeds its hold: the hold is "
                f"{format_amount(self.amount, self.bucket)}{parts}, the charge "
                f"{format_amount(amount, self.bucket)}. Charge at most what is still held "
                f"({format_amount(self.remaining, self.bucket)}).",
                {
                    "hold_id": str(self.hold_id),
                    "held_micros": str(self.remaining),
                    "requested_micros": str(amount),
                },
            )

    def settle(self, amount: int, balance: Balance, now: datetime) -> int:
        """Capture `amount` of what is still held, give the rest back, end the hold;
        returns the posted balance after. Parts captured before stay captured."""
        self.check_settle(amount, now)
        remaining = self.remaining
        self.status = HoldStatus.SETTLED
        self.captured += amount
        self.ended_at = now
        return balance.capture(remaining, amount)

    def is_replay_of_settle(self, amount: int, settle_charge: int | None = None) -> bool:
        """Settled, and the settle itself took `amount`: `settle_charge` is what the
        settle's own ledger row took (0 without a row); by default all the hold
        captured (a hold without parts)."""
        taken = self.captured if settle_charge is None else settle_charge
        return self.status is HoldStatus.SETTLED and taken == amount

    def capture_part(self, amount: int, balance: Balance, now: datetime) -> int:
        """Capture `amount` (> 0) of what is still held and leave the hold open (one
        request of a run); returns the posted balance after."""
        require_positive(amount, "A part")
        self.check_settle(amount, now)
        self.captured += amount
        return balance.capture(amount, amount)

    def extend(self, ttl_seconds: int, now: datetime) -> bool:
        """Expire `ttl_seconds` from now (never earlier than already, never past the
        maximum lifetime); False when the expiry did not move."""
        if ttl_seconds <= 0:
            raise DomainError(
                Reason.INVALID_ARGUMENT,
                f"An extension lives between 1 and {MAX_HOLD_TTL_S} seconds; got {ttl_seconds}.",
                {"field": "ttl_seconds"},
            )
        ttl = hold_ttl(ttl_seconds)
        if self.status is HoldStatus.EXPIRED or (self.is_open and self.is_past_expiry(now)):
            raise self._expired()
        if not self.is_open:
            raise self._not_open()
        cap = self.created_at + timedelta(seconds=MAX_HOLD_LIFETIME_S)
        wanted = min(now + ttl, cap)
        if wanted <= self.expires_at:
            if self.expires_at >= cap and now + ttl > cap:
                raise DomainError(
                    Reason.INVALID_TRANSITION,
                    f"Hold {self.hold_id} reached its maximum lifetime of "
                    f"{MAX_HOLD_LIFETIME_S // 3600} hours (expires "
                    f"{self.expires_at.isoformat()}). Settle it and place a new hold.",
                    {"hold_id": str(self.hold_id), "expires_at": self.expires_at.isoformat()},
                )
            return False
        self.expires_at = wanted
        return True

    def belongs_to(self, account_id: str) -> bool:
        """An empty account id asks no question; another account's hold is hidden."""
        return not account_id or account_id == self.account_id

    def _expired(self) -> DomainError:
        return DomainError(
            Reason.HOLD_EXPIRED,
            f"Hold {self.hold_id} expired at {self.expires_at.isoformat()}; its money "
            "went back to the balance. Place a new hold for a new request.",
            {"hold_id": str(self.hold_id)},
        )

    def check_release(self) -> None:
        """A settled hold was charged: it can not be given back."""
        if self.status is HoldStatus.SETTLED:
            raise self._not_open()

    def release(self, balance: Balance, now: datetime) -> bool:
        """Give back what is still held (the whole hold, unless parts were captured:
        those stay charged); False when it had already ended without a settle."""
        self.check_release()
        if self.status in (HoldStatus.RELEASED, HoldStatus.EXPIRED):
            return False
        balance.unreserve(self.remaining)
        self.status = HoldStatus.RELEASED
        self.ended_at = now
        return True

    def expire(self, balance: Balance, now: datetime) -> bool:
        """End an open hold whose TTL has passed; False when there is nothing to do."""
        if not self.is_open or not self.is_past_expiry(now):
            return False
        balance.unreserve(self.remaining)
        self.status = HoldStatus.EXPIRED
        self.ended_at = now
        return True

    def _not_open(self) -> DomainError:
        return DomainError(
            Reason.HOLD_NOT_OPEN,
            f"Hold {self.hold_id} is already {self.status.value}; it cannot be settled or "
            "released again. Place a new hold for a new request.",
            {"hold_id": str(self.hold_id), "status": self.status.value},
        )


@dataclass(frozen=True)
class Posting:
    ledger_account: str
    bucket: Bucket
    amount: int
    # Set on the user's posting: the bucket's posted balance after this entry.
    balance_after: int | None = None


@dataclass(frozen=True)
class JournalEntry:
    """One immutable ledger entry; its postings sum to zero (W1) within one bucket (W6)."""

    entry_id: uuid.UUID
    kind: EntryKind
    account_id: str
    bucket: Bucket
    idempotency_key: str
    postings: tuple[Posting, ...]
    created_at: datetime
    request_id: str = ""
    order_id: str = ""
    hold_id: uuid.UUID | None = None
    reason: str = ""
    operator: str = ""
    trace_id: str = ""
    # On a reversal: the entry it reverses.
    reverses_entry_id: uuid.UUID | None = None
    seq: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        if len(self.postings) < 2:
            raise ValueError("a journal entry has at least two postings")
        if sum(p.amount for p in self.postings) != 0:
            raise ValueError(f"postings of entry {self.entry_id} do not sum to zero (W1)")
        if any(p.bucket is not self.bucket for p in self.postings):
            raise ValueError(f"entry {self.entry_id} mixes buckets (W6)")

    @property
    def user_posting(self) -> Posting:
        name = user_ledger_account(self.account_id, self.bucket)
        return next(p for p in self.postings if p.ledger_account == name)

    @property
    def amount(self) -> int:
        """The signed change of the user's bucket."""
        return self.user_posting.amount

    @property
    def balance_after(self) -> int:
        return self.user_posting.balance_after or 0


def _entry(
    kind: EntryKind,
    balance: Balance,
    user_amount: int,
    balance_after: int,
    counter_account: str,
    idempotency_key: str,
    now: datetime,
    entry_id: uuid.UUID | None = None,
    **details: object,
) -> JournalEntry:
    bucket = balance.bucket
    return JournalEntry(
        entry_id=entry_id or uuid.uuid4(),
        kind=kind,
        account_id=balance.account_id,
        bucket=bucket,
        idempotency_key=idempotency_key,
        postings=(
            Posting(
                user_ledger_account(balance.account_id, bucket), bucket, user_amount, balance_after
            ),
            Posting(system_ledger_account(counter_account, bucket), bucket, -user_amount),
        ),
        created_at=now,
        **details,  # type: ignore[arg-type]
    )


def settle_key(hold_id: uuid.UUID) -> str:
    return f"settle:{hold_id}"


def part_key(hold_id: uuid.UUID, request_id: str) -> str:
    """One part per request of a hold (W4)."""
    return f"part:{hold_id}:{request_id}"


def topup_key(order_id: str) -> str:
    return f"topup:{order_id}"


def adjustment_key(key: str) -> str:
    return f"adjust:{key}"


def request_charge(
    hold: Hold,
    balance: Balance,
    balance_after: int,
    now: datetime,
    trace_id: str,
    amount: int | None = None,
) -> JournalEntry:
    """The ledger row of a settled request: the user pays revenue. `amount` is the
    settle's own capture (default: all the hold captured). Its entry id is derived
    from the hold (`tokenforge.holds.settle_entry_id`), so a caller can name the row
    before the settle is made."""
    return _entry(
        EntryKind.REQUEST_CHARGE,
        balance,
        -(hold.captured if amount is None else amount),
        balance_after,
        REVENUE,
        settle_key(hold.hold_id),
        now,
        settle_entry_id(hold.hold_id),
        request_id=hold.request_id,
        hold_id=hold.hold_id,
        trace_id=trace_id or hold.trace_id,
    )


def part_charge(
    hold: Hold,
    balance: Balance,
    amount: int,
    balance_after: int,
    request_id: str,
    now: datetime,
    trace_id: str,
) -> JournalEntry:
    """The ledger row of one part of a hold: one request of a run, with its own
    request id (so its receipt and its row find each other). Its entry id is derived
    from the hold and the request (`tokenforge.holds.part_entry_id`), so a caller can
    name the row before the part is captured."""
    return _entry(
        EntryKind.REQUEST_CHARGE,
        balance,
        -amount,
        balance_after,
        REVENUE,
        part_key(hold.hold_id, request_id),
        now,
        part_entry_id(hold.hold_id, request_id),
        request_id=request_id,
        hold_id=hold.hold_id,
        trace_id=trace_id or hold.trace_id,
    )


def topup_credit(
    balance: Balance, amount: int, order_id: str, now: datetime, trace_id: str
) -> JournalEntry:
    """A paid top-up: the bucket the order named gets `amount` from top-up clearing."""
    require_positive(amount, "A top-up credit")
    balance_after = balance.post(amount)
    return _entry(
        EntryKind.TOPUP_CREDIT,
        balance,
        amount,
        balance_after,
        TOPUP_CLEARING,
        topup_key(order_id),
        now,
        order_id=order_id,
        trace_id=trace_id,
    )


def adjustment(
    balance: Balance,
    amount: int,
    reason: str,
    operator: str,
    idempotency_key: str,
    now: datetime,
    trace_id: str = "",
) -> JournalEntry:
    """An operator's signed entry, always with a reason; never an edit of the past."""
    if amount == 0:
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            "An adjustment moves money: give a positive or negative amount.",
            {"field": "amount_micros"},
        )
    require_bounded(amount, "An adjustment")
    if not reason.strip():
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            "An adjustment needs a reason: say why the balance changes.",
            {"field": "reason"},
        )
    if not idempotency_key.strip():
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            "An adjustment needs an idempotency key, so a retry never applies it twice.",
            {"field": "idempotency_key"},
        )
    balance_after = balance.post(amount)
    return _entry(
        EntryKind.ADJUSTMENT,
        balance,
        amount,
        balance_after,
        ADJUSTMENTS,
        adjustment_key(idempotency_key),
        now,
        reason=reason.strip(),
        operator=operator,
        trace_id=trace_id,
    )


def reversal_key(entry_id: uuid.UUID) -> str:
    """One reversal per entry: the key is the reversed entry's id."""
    return f"reverse:{entry_id}"


def check_reversible(original: JournalEntry, reason: str) -> None:
    if not reason.strip():
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            "A reversal needs a reason: say why the entry is corrected.",
            {"field": "reason"},
        )
    if original.kind is EntryKind.REVERSAL:
        raise DomainError(
            Reason.INVALID_TRANSITION,
            f"Entry {original.entry_id} is itself a reversal (of "
            f"{original.reverses_entry_id}); a reversal is not reversed. Write an "
            "adjustment instead.",
            {"entry_id": str(original.entry_id)},
        )


def already_reversed(original: JournalEntry, reversal_entry: JournalEntry) -> DomainError:
    return DomainError(
        Reason.INVALID_TRANSITION,
        f"Entry {original.entry_id} was already reversed by entry "
        f"{reversal_entry.entry_id} ({reversal_entry.reason!r}); an entry is reversed once. "
        "Write an adjustment for any further correction.",
        {"entry_id": str(original.entry_id), "reversal_entry_id": str(reversal_entry.entry_id)},
    )


def reversal(
    original: JournalEntry,
    balance: Balance,
    reason: str,
    operator: str,
    now: datetime,
    trace_id: str = "",
) -> JournalEntry:
    """The opposite postings of `original`, kind REVERSAL, referencing it (W5).

    Taking money back (reversing a credit) may not take available below zero (W2).
    """
    check_reversible(original, reason)
    balance_after = balance.post(-original.amount)
    user = user_ledger_account(original.account_id, original.bucket)
    return JournalEntry(
        entry_id=uuid.uuid4(),
        kind=EntryKind.REVERSAL,
        account_id=original.account_id,
        bucket=original.bucket,
        idempotency_key=reversal_key(original.entry_id),
        postings=tuple(
            Posting(
                p.ledger_account,
                p.bucket,
                -p.amount,
                balance_after if p.ledger_account == user else None,
            )
            for p in original.postings
        ),
        created_at=now,
        request_id=original.request_id,
        order_id=original.order_id,
        hold_id=original.hold_id,
        reason=reason.strip(),
        operator=operator,
        trace_id=trace_id,
        reverses_entry_id=original.entry_id,
    )


def entry_not_found(entry_id: str) -> DomainError:
    return DomainError(
        Reason.NOT_FOUND,
        f"No ledger entry {entry_id!r}. Check the entry id in `tokenforge wallet ledger`.",
        {"entry_id": entry_id},
    )


def idempotency_conflict(key_name: str, key: str) -> DomainError:
    return DomainError(
        Reason.IDEMPOTENCY_CONFLICT,
        f"{key_name} {key!r} was already used with other arguments; use a new "
        f"{key_name} for a new operation.",
        {key_name: key},
    )


def account_not_found(account_id: str) -> DomainError:
    return DomainError(
        Reason.ACCOUNT_NOT_FOUND,
        f"Account {account_id!r} has no wallet. Open the account first "
        "(`tokenforge accounts open`).",
        {"account_id": account_id},
    )


def hold_not_found(hold_id: str) -> DomainError:
    return DomainError(
        Reason.NOT_FOUND,
        f"No hold {hold_id!r}. Check the hold id returned by Hold.",
        {"hold_id": hold_id},
    )

"""Top-up orders and their state machine (rule P1).

```
pending ──► succeeded | failed | expired | canceled
pending ──► awaiting_review ──► succeeded | rejected
expired ──► awaiting_review          (a payment confirmed after the order expired)
```

`succeeded`, `failed`, `rejected` and `canceled` are terminal: nothing moves them.
`expired` is closed to everything except a late payment: money that arrives for an
expired order goes to review, so it is never lost and never credited without a person.
Every move writes a `Transition` (the audit trail) and one `OrderEvent` (the outbox).
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from tokenforge.errors import DomainError, Reason
from tokenforge.money import Bucket, format_amount


class TopUpStatus(enum.StrEnum):
    PENDING = "pending"
    AWAITING_REVIEW = "awaiting_review"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"
    REJECTED = "rejected"
    CANCELED = "canceled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL

    @property
    def plain_words(self) -> str:
        return PLAIN_WORDS[self]


TERMINAL: frozenset[TopUpStatus] = frozenset(
    {TopUpStatus.SUCCEEDED, TopUpStatus.FAILED, TopUpStatus.REJECTED, TopUpStatus.CANCELED}
)

ALLOWED: dict[TopUpStatus, frozenset[TopUpStatus]] = {
    TopUpStatus.PENDING: frozenset(
        {
            TopUpStatus.SUCCEEDED,
            TopUpStatus.FAILED,
            TopUpStatus.EXPIRED,
            TopUpStatus.CANCELED,
            TopUpStatus.AWAITING_REVIEW,
        }
    ),
    TopUpStatus.AWAITING_REVIEW: frozenset({TopUpStatus.SUCCEEDED, TopUpStatus.REJECTED}),
    TopUpStatus.EXPIRED: frozenset({TopUpStatus.AWAITING_REVIEW}),
    TopUpStatus.SUCCEEDED: frozenset(),
    TopUpStatus.FAILED: frozenset(),
    TopUpStatus.REJECTED: frozenset(),
    TopUpStatus.CANCELED: frozenset(),
}

# What a person reads (GLOSSARY.md, "Top-ups").
PLAIN_WORDS: dict[TopUpStatus, str] = {
    TopUpStatus.PENDING: "waiting for payment",
    TopUpStatus.AWAITING_REVIEW: "waiting for review",
    TopUpStatus.SUCCEEDED: "paid and credited",
    TopUpStatus.FAILED: "failed: no balance was added",
    TopUpStatus.EXPIRED: "expired before payment: nothing was charged, no balance added",
    TopUpStatus.REJECTED: "not approved: no balance was added",
    TopUpStatus.CANCELED: "canceled: no balance was added",
}

# What the caller can do next, by the order's current status.
NEXT_STEP: dict[TopUpStatus, str] = {
    TopUpStatus.PENDING: "Pay it before it expires, or create a new top-up.",
    TopUpStatus.AWAITING_REVIEW: "An operator will approve or reject it; nothing else can "
    "change it now.",
    TopUpStatus.SUCCEEDED: "Its balance is already added; create a new top-up to add more.",
    TopUpStatus.FAILED: "Create a new top-up to try again.",
    TopUpStatus.EXPIRED: "Create a new top-up to add balance.",
    TopUpStatus.REJECTED: "Create a new top-up, or contact support about the review.",
    TopUpStatus.CANCELED: "Create a new top-up to add balance.",
}


def can_move(from_status: TopUpStatus, to_status: TopUpStatus) -> bool:
    return to_status in ALLOWED[from_status]


@dataclass(frozen=True)
class Transition:
    """One line of an order's audit trail."""

    from_status: TopUpStatus
    to_status: TopUpStatus
    reason: str
    actor: str
    at: datetime


@dataclass(frozen=True)
class OrderEvent:
    """A lifecycle event for the outbox: published as a TopUpEvent on
    `tokenforge.payments.v1.topup.<status>` with Nats-Msg-Id = event_id."""

    event_id: str
    order_id: str
    account_id: str
    bucket: Bucket
    received_micros: int
    status: TopUpStatus
    occurred_at: datetime

    @property
    def subject_event(self) -> str:
        return self.status.value


@dataclass
class Order:
    """A top-up order. Its bucket, amounts and rate are fixed at creation."""

    order_id: str
    account_id: str
    bucket: Bucket
    provider: str
    paid_amount_minor: int
    currency: str
    received_micros: int
    rate_micros_per_minor: int
    status: TopUpStatus
    created_at: datetime
    expires_at: datetime
    idempotency_key: str | None = None
    provider_reference: str = ""
    checkout_url: str = ""
    provider_transaction_id: str | None = None
    transfer_reference: str = ""
    version: int = 0
    transitions: list[Transition] = field(default_factory=list)
    # Events raised since the order was loaded; the unit of work writes them to the outbox.
    events: list[OrderEvent] = field(default_factory=list, repr=False, compare=False)

    def is_due(self, now: datetime) -> bool:
        """Past its expiry time (whether or not the sweeper has moved it yet)."""
        return now >= self.expires_at

    def move_to(self, to_status: TopUpStatus, *, reason: str, actor: str, at: datetime) -> None:
        """Apply one allowed transition, or refuse in plain words."""
        if not can_move(self.status, to_status):
            raise DomainError(
                Reason.INVALID_TRANSITION,
                f"Top-up {self.order_id} is {self.status.plain_words}; it cannot become "
                f"{to_status.value}. {NEXT_STEP[self.status]}",
                {
                    "order_id": self.order_id,
                    "status": self.status.value,
                    "requested_status": to_status.value,
                },
            )
        self.transitions.append(Transition(self.status, to_status, reason, actor, at))
        self.status = to_status
        self.version += 1
        self.events.append(
            OrderEvent(
                event_id=str(uuid.uuid4()),
                order_id=self.order_id,
                account_id=self.account_id,
                bucket=self.bucket,
                received_micros=self.received_micros,
                status=to_status,
                occurred_at=at,
            )
        )

    def confirm_payment(
        self,
        *,
        at: datetime,
        actor: str,
        reason: str = "payment confirmed",
        needs_review: bool = False,
    ) -> bool:
        """The provider says the money arrived. Returns False if it changed nothing.

        A payment for an order already paid (or already waiting for review) is a replay.
        A payment for an expired order, or one past its expiry time, goes to review, as
        does any payment from a provider whose payments need review.
        """
        if self.status in (TopUpStatus.SUCCEEDED, TopUpStatus.AWAITING_REVIEW):
            return False
        if self.status is TopUpStatus.EXPIRED or (
            self.status is TopUpStatus.PENDING and self.is_due(at)
        ):
            self.move_to(
                TopUpStatus.AWAITING_REVIEW,
                reason=f"{reason} after the order expired at {self.expires_at.isoformat()}",
                actor=actor,
                at=at,
            )
            return True
        paid = TopUpStatus.AWAITING_REVIEW if needs_review else TopUpStatus.SUCCEEDED
        self.move_to(paid, reason=reason, actor=actor, at=at)
        return True

    def fail(self, *, at: datetime, actor: str, reason: str = "payment failed") -> bool:
        """The provider says the payment failed. Returns False on a replay."""
        if self.status is TopUpStatus.FAILED:
            return False
        self.move_to(TopUpStatus.FAILED, reason=reason, actor=actor, at=at)
        return True

    def expire(self, *, at: datetime, actor: str, reason: str = "not paid in time") -> bool:
        """Close an unpaid order. Returns False on a replay."""
        if self.status is TopUpStatus.EXPIRED:
            return False
        self.move_to(TopUpStatus.EXPIRED, reason=reason, actor=actor, at=at)
        return True

    def submit_transfer_proof(self, reference: str, *, at: datetime, actor: str) -> bool:
        """The user says they sent the bank transfer: an operator checks it.

        Returns False when the same reference was already submitted. A proof for an
        expired order still goes to review: the money may have been sent.
        """
        reference = reference.strip()
        if not reference:
            raise DomainError(
                Reason.INVALID_ARGUMENT,
                "Give the bank transfer's reference, as it reads on your bank statement.",
                {"param": "transfer_reference"},
            )
        if self.status is TopUpStatus.AWAITING_REVIEW and self.transfer_reference == reference:
            return False
        late = self.status is TopUpStatus.EXPIRED or (
            self.status is TopUpStatus.PENDING and self.is_due(at)
        )
        self.move_to(
            TopUpStatus.AWAITING_REVIEW,
            reason=f"transfer reference {reference!r} submitted"
            + (" after the order expired" if late else ""),
            actor=actor,
            at=at,
        )
        self.transfer_reference = reference
        return True

    def approve(self, *, reason: str, operator: str, at: datetime) -> bool:
        """An operator confirms the money arrived. Returns False on a replay."""
        if self.status is TopUpStatus.SUCCEEDED:
            return False
        self._require_review(reason, "approve")
        self.move_to(TopUpStatus.SUCCEEDED, reason=f"approved: {reason}", actor=operator, at=at)
        return True

    def reject(self, *, reason: str, operator: str, at: datetime) -> bool:
        """An operator refuses the order. Returns False on a replay."""
        if self.status is TopUpStatus.REJECTED:
            return False
        self._require_review(reason, "reject")
        self.move_to(TopUpStatus.REJECTED, reason=f"rejected: {reason}", actor=operator, at=at)
        return True

    def _require_review(self, reason: str, verb: str) -> None:
        if not reason.strip():
            raise DomainError(
                Reason.INVALID_ARGUMENT,
                f"Say why you {verb} top-up {self.order_id}: the reason stays on its trail.",
                {"param": "reason"},
            )
        if self.status is not TopUpStatus.AWAITING_REVIEW:
            raise DomainError(
                Reason.INVALID_TRANSITION,
                f"Top-up {self.order_id} is {self.status.plain_words}, not waiting for "
                f"review; there is nothing to {verb}. {NEXT_STEP[self.status]}",
                {"order_id": self.order_id, "status": self.status.value},
            )

    def cancel(self, *, at: datetime, actor: str) -> bool:
        """The user gives up on a pending order. Returns False on a replay."""
        if self.status is TopUpStatus.CANCELED:
            return False
        self.move_to(TopUpStatus.CANCELED, reason="canceled by the user", actor=actor, at=at)
        return True

    def same_request(
        self, *, bucket: Bucket, provider: str, paid_amount_minor: int, currency: str
    ) -> bool:
        """Whether a repeated CreateTopUp (same idempotency key) asks for the same order."""
        return (
            self.bucket is bucket
            and self.provider == provider
            and self.paid_amount_minor == paid_amount_minor
            and self.currency == currency
        )

    def describe_received(self) -> str:
        return format_amount(self.received_micros, self.bucket)

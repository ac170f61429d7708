"""What callers ask the payments service to do: one imperative dataclass per use case
(the use cases are in services/payments/handlers.py)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from services.payments.domain.model import TopUpStatus
from tokenforge.money import Bucket

# A listing's page when the caller names no size.
DEFAULT_PAGE_SIZE = 20


@dataclass(frozen=True)
class CreateTopUp:
    account_id: str
    bucket: Bucket
    provider: str
    paid_amount_minor: int
    currency: str = ""
    idempotency_key: str = ""


@dataclass(frozen=True)
class GetTopUp:
    account_id: str
    order_id: str


@dataclass(frozen=True)
class ListTopUps:
    account_id: str
    page_size: int = DEFAULT_PAGE_SIZE
    page_token: str = ""
    status: TopUpStatus | None = None


@dataclass(frozen=True)
class ListAllTopUps:
    """Operators: orders across accounts, by status."""

    status: TopUpStatus | None = None
    account_id: str = ""
    page_size: int = DEFAULT_PAGE_SIZE
    page_token: str = ""


@dataclass(frozen=True)
class SubmitTransferProof:
    account_id: str
    order_id: str
    transfer_reference: str


@dataclass(frozen=True)
class CancelTopUp:
    account_id: str
    order_id: str


class ReviewDecision(enum.StrEnum):
    APPROVE = "approve"
    REJECT = "reject"


@dataclass(frozen=True)
class ReviewTopUp:
    order_id: str
    decision: ReviewDecision
    reason: str
    operator: str


@dataclass(frozen=True)
class HandleProviderEvent:
    provider: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


class SandboxOutcome(enum.StrEnum):
    PAY = "pay"
    FAIL = "fail"
    EXPIRE = "expire"


@dataclass(frozen=True)
class SimulateSandboxOutcome:
    account_id: str
    order_id: str
    outcome: SandboxOutcome

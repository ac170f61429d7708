"""What callers ask the usage service to do: one imperative dataclass per use case
(the use cases are in services/usage/handlers.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from services.usage.domain.receipts import AggregateBy, Receipt, ReceiptFilter
from services.usage.domain.runs import Run
from tokenforge.errors import DomainError
from tokenforge.money import Bucket


@dataclass(frozen=True)
class RecordReceipt:
    receipt: Receipt


@dataclass(frozen=True)
class GetReceipt:
    account_id: str
    request_id: str


@dataclass(frozen=True)
class ListReceipts:
    filter: ReceiptFilter
    page_size: int = 0
    page_token: str = ""


@dataclass(frozen=True)
class RecordReceipts:
    # Each receipt as read from the wire, or why it could not be read (its answer).
    receipts: Sequence[Receipt | DomainError]


@dataclass(frozen=True)
class AggregateReceipts:
    filter: ReceiptFilter
    by: AggregateBy


@dataclass(frozen=True)
class OpenRun:
    run: Run


@dataclass(frozen=True)
class GetRun:
    account_id: str
    run_id: str


@dataclass(frozen=True)
class ReserveFromRun:
    account_id: str
    run_id: str
    request_id: str
    amount_micros: int
    bucket: Bucket | None = None


@dataclass(frozen=True)
class CloseRun:
    account_id: str
    run_id: str


@dataclass(frozen=True)
class FinishRun:
    run_id: str
    entry_id: str
    captured_micros: int


@dataclass(frozen=True)
class ExpireRuns:
    limit: int = 100


@dataclass(frozen=True)
class GetRunReceipt:
    account_id: str
    run_id: str


@dataclass(frozen=True)
class Reconcile:
    """Compare from `since` on (None: everything), for these accounts (empty: all)."""

    since: datetime | None = None
    account_ids: tuple[str, ...] = ()

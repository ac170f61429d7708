"""What callers ask the wallet to do: one imperative dataclass per use case."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from services.wallet.domain.model import EntryKind, HoldStatus
from tokenforge.money import Bucket


@dataclass(frozen=True)
class OpenAccount:
    account_id: str


@dataclass(frozen=True)
class GetBalances:
    account_id: str


@dataclass(frozen=True)
class PlaceHold:
    account_id: str
    bucket: Bucket
    amount: int
    request_id: str
    ttl_seconds: int = 0
    trace_id: str = ""
    # One hold per (account, key); empty: the request id.
    idempotency_key: str = ""


@dataclass(frozen=True)
class SettleHold:
    hold_id: str
    amount: int
    trace_id: str = ""
    # When set, a hold of another account is not found.
    account_id: str = ""


@dataclass(frozen=True)
class CapturePart:
    """Take `amount` of an open hold for one request (`request_id`), keep it open."""

    hold_id: str
    amount: int
    request_id: str
    trace_id: str = ""
    account_id: str = ""


@dataclass(frozen=True)
class ReleaseHold:
    hold_id: str
    reason: str = ""
    account_id: str = ""


@dataclass(frozen=True)
class ExtendHold:
    hold_id: str
    ttl_seconds: int
    account_id: str = ""


@dataclass(frozen=True)
class CreditTopUp:
    account_id: str
    bucket: Bucket
    amount: int
    order_id: str
    # Set when the credit comes from a NATS event: recorded in the same transaction.
    event_id: str = ""
    trace_id: str = ""


@dataclass(frozen=True)
class AdjustBalance:
    account_id: str
    bucket: Bucket
    amount: int
    reason: str
    operator: str
    idempotency_key: str
    trace_id: str = ""


@dataclass(frozen=True)
class ReverseEntry:
    entry_id: str
    reason: str
    operator: str
    trace_id: str = ""


@dataclass(frozen=True)
class ListLedger:
    account_id: str
    bucket: Bucket | None = None
    kind: EntryKind | None = None
    request_id: str = ""
    order_id: str = ""
    page_size: int = 0
    page_token: str = ""
    # Created at or after `from_time`, before `to_time`.
    from_time: datetime | None = None
    to_time: datetime | None = None


@dataclass(frozen=True)
class ListHolds:
    account_id: str
    status: HoldStatus | None = None
    from_time: datetime | None = None
    to_time: datetime | None = None
    page_size: int = 0
    page_token: str = ""


@dataclass(frozen=True)
class Reconcile:
    pass


@dataclass(frozen=True)
class ExpireHolds:
    limit: int = 500


@dataclass(frozen=True)
class GetCreditUse:
    """What one credit paid for (by its top-up's order id or its entry id)."""

    account_id: str
    order_id: str = ""
    entry_id: str = ""
    page_size: int = 0
    page_token: str = ""


@dataclass(frozen=True)
class GetPaidFrom:
    """The credits that paid one request's ledger rows."""

    account_id: str
    request_id: str

"""Usage use cases: plain async functions of (command, unit of work)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from services.usage.domain.receipts import (
    Cursor,
    Receipt,
    ReceiptFilter,
    conflict,
    not_found,
    page_size,
    validate,
)
from services.usage.storage.unit_of_work import UnitOfWork
from tokenforge.errors import DomainError, Reason


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
class ReceiptPage:
    receipts: list[Receipt]
    next_page_token: str


async def record_receipt(command: RecordReceipt, uow: UnitOfWork) -> Receipt:
    """One receipt per request id: a replay answers the first, another receipt conflicts."""
    receipt = command.receipt
    validate(receipt)
    async with uow:
        to_store = receipt
        if to_store.finished_at is None:
            to_store = replace(to_store, finished_at=uow.now())
        stored = await uow.receipts.add(to_store)
        if stored is not None:
            await uow.commit()
            return stored
        existing = await uow.receipts.get(receipt.request_id)
    if existing is None or not receipt.same_as(existing):
        raise conflict(receipt.request_id)
    return existing


async def get_receipt(command: GetReceipt, uow: UnitOfWork) -> Receipt:
    if not command.account_id or not command.request_id:
        raise DomainError(Reason.INVALID_ARGUMENT, "account_id and request_id are both required.")
    async with uow:
        receipt = await uow.receipts.get(command.request_id)
    # Another account's receipt reads exactly like a missing one.
    if receipt is None or receipt.account_id != command.account_id:
        raise not_found(command.request_id)
    return receipt


async def list_receipts(command: ListReceipts, uow: UnitOfWork) -> ReceiptPage:
    if not command.filter.account_id:
        raise DomainError(Reason.INVALID_ARGUMENT, "account_id is required to list receipts.")
    size = page_size(command.page_size)
    after = Cursor.decode(command.page_token) if command.page_token else None
    async with uow:
        found = await uow.receipts.list(command.filter, after, size + 1)
    page = found[:size]
    next_token = ""
    if len(found) > size:
        last = page[-1]
        assert last.finished_at is not None
        next_token = Cursor(last.finished_at, last.request_id).encode()
    return ReceiptPage(page, next_token)

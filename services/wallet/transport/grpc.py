"""WalletService over gRPC: translate the wire types, call the use case, answer.

DomainError raised by a use case is turned into a rich status by the server's
GuardInterceptor, so the servicer lets it raise. The batch methods (HoldMany,
SettleMany, CapturePartMany, ReleaseMany) translate and answer each item as its unary
method does; an item's DomainError becomes its ItemError, and only a batch above the
cap is refused whole.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
from google.protobuf import timestamp_pb2

from services.wallet import handlers
from services.wallet.domain import commands
from services.wallet.domain.attribution import Slice
from services.wallet.domain.model import Balance, EntryKind, Hold, HoldStatus, JournalEntry
from services.wallet.storage.unit_of_work import UnitOfWork
from tokenforge.errors import DomainError, Reason
from tokenforge.generated.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from tokenforge.money import Bucket
from tokenforge.runtime.batch_items import check_batch_size
from tokenforge.runtime.grpc_server import OPERATOR_NAME, Role, current_caller, nul_refusal
from tokenforge.runtime.telemetry import current_trace_id
from tokenforge.wire import bucket_from_proto, bucket_or_none, bucket_to_proto, item_error_to_proto

Cmd = TypeVar("Cmd")
Result = TypeVar("Result")

STATUS_FROM_PB: dict[int, HoldStatus] = {}

KIND_TO_PB: dict[EntryKind, wallet_pb2.EntryKind] = {
    EntryKind.TOPUP_CREDIT: wallet_pb2.ENTRY_KIND_TOPUP_CREDIT,
    EntryKind.REQUEST_CHARGE: wallet_pb2.ENTRY_KIND_REQUEST_CHARGE,
    EntryKind.ADJUSTMENT: wallet_pb2.ENTRY_KIND_ADJUSTMENT,
    EntryKind.REVERSAL: wallet_pb2.ENTRY_KIND_REVERSAL,
}
KIND_FROM_PB: dict[int, EntryKind] = {v: k for k, v in KIND_TO_PB.items()}

STATUS_TO_PB: dict[HoldStatus, wallet_pb2.HoldStatus] = {
    HoldStatus.OPEN: wallet_pb2.HOLD_STATUS_OPEN,
    HoldStatus.SETTLED: wallet_pb2.HOLD_STATUS_SETTLED,
    HoldStatus.RELEASED: wallet_pb2.HOLD_STATUS_RELEASED,
    HoldStatus.EXPIRED: wallet_pb2.HOLD_STATUS_EXPIRED,
}
STATUS_FROM_PB.update({v: k for k, v in STATUS_TO_PB.items()})


def bucket_from_pb(value: int, *, required: bool = True) -> Bucket | None:
    bucket = bucket_or_none(value)
    if bucket is None and required:
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            "bucket is required: BUCKET_CREDIT (Credit) or BUCKET_ROUTED (Routed balance).",
            {"field": "bucket"},
        )
    return bucket


def _required_bucket(value: int) -> Bucket:
    bucket = bucket_from_pb(value)
    assert bucket is not None
    return bucket


def _timestamp(when: datetime | None) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    if when is not None:
        stamp.FromDatetime(when)
    return stamp


def _time_or_none(request: Any, name: str) -> datetime | None:
    if not request.HasField(name):
        return None
    stamp: timestamp_pb2.Timestamp = getattr(request, name)
    when: datetime = stamp.ToDatetime(tzinfo=UTC)
    return when


def _every_account_for_operators(account_id: str) -> None:
    """A listing names its account; only an operator may list every account at once
    (reconciliation), never a service acting for a user."""
    if account_id:
        return
    caller = current_caller.get()
    if caller is None or caller.role is not Role.OPERATOR:
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            "account_id is required; listing every account is for operators "
            "(tokenforge usage reconcile).",
            {"param": "account_id"},
        )


def _operator(requested: str) -> str:
    """Who did it: the name the operator gave, and the credential's caller name."""
    caller = current_caller.get()
    name = caller.name if caller is not None else ""
    if requested and name and name != OPERATOR_NAME and requested != name:
        return f"{requested} ({name})"
    return requested or name or "operator"


def balance_pb(balance: Balance) -> Any:
    return wallet_pb2.BucketBalance(
        bucket=bucket_to_proto(balance.bucket),
        label=balance.bucket.label,
        symbol=balance.bucket.symbol,
        posted_micros=balance.posted,
        held_micros=balance.held,
        available_micros=balance.available,
    )


def hold_pb(hold: Hold) -> Any:
    return wallet_pb2.Hold(
        hold_id=str(hold.hold_id),
        account_id=hold.account_id,
        bucket=bucket_to_proto(hold.bucket),
        amount_micros=hold.amount,
        captured_micros=hold.captured,
        status=STATUS_TO_PB[hold.status],
        request_id=hold.request_id,
        expires_at=_timestamp(hold.expires_at),
        entry_id=str(hold.entry_id) if hold.entry_id else "",
        created_at=_timestamp(hold.created_at),
        ended_at=_timestamp(hold.ended_at) if hold.ended_at else None,
    )


def entry_pb(entry: JournalEntry) -> Any:
    return wallet_pb2.LedgerEntry(
        entry_id=str(entry.entry_id),
        account_id=entry.account_id,
        bucket=bucket_to_proto(entry.bucket),
        kind=KIND_TO_PB[entry.kind],
        amount_micros=entry.amount,
        balance_after_micros=entry.balance_after,
        request_id=entry.request_id,
        order_id=entry.order_id,
        hold_id=str(entry.hold_id) if entry.hold_id else "",
        reason=entry.reason,
        operator=entry.operator,
        trace_id=entry.trace_id,
        created_at=_timestamp(entry.created_at),
        reverses_entry_id=str(entry.reverses_entry_id) if entry.reverses_entry_id else "",
    )


def slice_pb(piece: Slice) -> Any:
    return wallet_pb2.CreditSlice(
        credit_entry_id=piece.credit.entry_id,
        credit_order_id=piece.credit.order_id,
        credit_kind=KIND_TO_PB[EntryKind(piece.credit.kind)],
        entry_id=piece.debit.entry_id,
        kind=KIND_TO_PB[EntryKind(piece.debit.kind)],
        request_id=piece.debit.request_id,
        used_micros=piece.used,
        created_at=_timestamp(piece.debit.created_at),
    )


def _balances_pb(found: list[Balance]) -> list[Any]:
    order = list(Bucket)
    return [balance_pb(b) for b in sorted(found, key=lambda b: order.index(b.bucket))]


def _hold_command(request: Any) -> commands.PlaceHold:
    return commands.PlaceHold(
        account_id=request.account_id,
        bucket=_required_bucket(request.bucket),
        amount=request.amount_micros,
        request_id=request.request_id,
        ttl_seconds=request.ttl_seconds,
        trace_id=request.trace_id or current_trace_id(),
        idempotency_key=request.idempotency_key,
    )


def _hold_answer(hold: Hold) -> Any:
    return wallet_pb2.HoldResponse(hold=hold_pb(hold))


def _settle_command(request: Any) -> commands.SettleHold:
    return commands.SettleHold(
        hold_id=request.hold_id,
        amount=request.amount_micros,
        trace_id=request.trace_id or current_trace_id(),
        account_id=request.account_id,
    )


def _settle_answer(settled: handlers.Settled) -> Any:
    response = wallet_pb2.SettleResponse(hold=hold_pb(settled.hold))
    if settled.entry is not None:
        response.entry.CopyFrom(entry_pb(settled.entry))
    return response


def _part_command(request: Any) -> commands.CapturePart:
    return commands.CapturePart(
        hold_id=request.hold_id,
        amount=request.amount_micros,
        request_id=request.request_id,
        trace_id=request.trace_id or current_trace_id(),
        account_id=request.account_id,
    )


def _part_answer(captured: handlers.Settled) -> Any:
    response = wallet_pb2.CapturePartResponse(hold=hold_pb(captured.hold))
    if captured.entry is not None:
        response.entry.CopyFrom(entry_pb(captured.entry))
    return response


def _release_command(request: Any) -> commands.ReleaseHold:
    return commands.ReleaseHold(
        hold_id=request.hold_id, reason=request.reason, account_id=request.account_id
    )


def _release_answer(hold: Hold) -> Any:
    return wallet_pb2.ReleaseResponse(hold=hold_pb(hold))


class WalletServicer(wallet_pb2_grpc.WalletServiceServicer):  # type: ignore[misc]
    """Each call gets a fresh unit of work from `uow_factory`."""

    def __init__(self, uow_factory: Callable[[], UnitOfWork]) -> None:
        self._uow = uow_factory

    async def OpenAccount(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        found = await handlers.open_account(commands.OpenAccount(request.account_id), self._uow())
        return wallet_pb2.OpenAccountResponse(balances=_balances_pb(found))

    async def GetBalances(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        found = await handlers.get_balances(commands.GetBalances(request.account_id), self._uow())
        answer = wallet_pb2.GetBalancesResponse(balances=_balances_pb(found))
        if request.split_held:
            aside = await handlers.set_aside(request.account_id, self._uow())
            for b in answer.balances:
                b.set_aside_micros = aside[bucket_from_proto(b.bucket)]
                b.held_for_requests_micros = b.held_micros - b.set_aside_micros
        return answer

    async def GetCreditUse(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        cmd = commands.GetCreditUse(
            account_id=request.account_id,
            order_id=request.order_id,
            entry_id=request.entry_id,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        use = await handlers.credit_use(cmd, self._uow())
        return wallet_pb2.GetCreditUseResponse(
            credit=entry_pb(use.credit),
            received_micros=use.received,
            used_micros=use.used,
            left_micros=use.left,
            slices=[slice_pb(s) for s in use.slices],
            next_page_token=use.next_page_token,
            slices_total=use.slices_total,
        )

    async def GetPaidFrom(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        cmd = commands.GetPaidFrom(account_id=request.account_id, request_id=request.request_id)
        slices = await handlers.paid_from(cmd, self._uow())
        return wallet_pb2.GetPaidFromResponse(slices=[slice_pb(s) for s in slices])

    async def Hold(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        hold = await handlers.place_hold(_hold_command(request), self._uow())
        return _hold_answer(hold)

    async def Settle(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        settled = await handlers.settle_hold(_settle_command(request), self._uow())
        return _settle_answer(settled)

    async def CapturePart(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        captured = await handlers.capture_part(_part_command(request), self._uow())
        return _part_answer(captured)

    async def Release(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        hold = await handlers.release_hold(_release_command(request), self._uow())
        return _release_answer(hold)

    # The batch forms: each item translated, run and answered as its unary call.

    async def HoldMany(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        outcomes = await self._each(
            request.holds, _hold_command, handlers.place_holds, _hold_answer
        )
        return wallet_pb2.HoldManyResponse(
            outcomes=[wallet_pb2.HoldOutcome(**outcome) for outcome in outcomes]
        )

    async def SettleMany(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        outcomes = await self._each(
            request.settles, _settle_command, handlers.settle_holds, _settle_answer
        )
        return wallet_pb2.SettleManyResponse(
            outcomes=[wallet_pb2.SettleOutcome(**outcome) for outcome in outcomes]
        )

    async def CapturePartMany(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        outcomes = await self._each(
            request.parts, _part_command, handlers.capture_parts, _part_answer
        )
        return wallet_pb2.CapturePartManyResponse(
            outcomes=[wallet_pb2.CapturePartOutcome(**outcome) for outcome in outcomes]
        )

    async def ReleaseMany(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        outcomes = await self._each(
            request.releases, _release_command, handlers.release_holds, _release_answer
        )
        return wallet_pb2.ReleaseManyResponse(
            outcomes=[wallet_pb2.ReleaseOutcome(**outcome) for outcome in outcomes]
        )

    async def _each(
        self,
        items: Sequence[Any],
        command: Callable[[Any], Cmd],
        use_case: Callable[
            [Sequence[Cmd], Callable[[], UnitOfWork]], Awaitable[list[Result | DomainError]]
        ],
        answer: Callable[[Result], Any],
    ) -> list[dict[str, Any]]:
        """Each item's outcome, in order: `{"answer": ...}` or `{"error": ItemError}`.
        An item the wire cannot translate (no bucket, a NUL in a text, ...) is refused
        alone."""
        check_batch_size(len(items))
        translated: list[Cmd | DomainError] = []
        for item in items:
            if refusal := nul_refusal(item):
                translated.append(refusal)
                continue
            try:
                translated.append(command(item))
            except DomainError as error:
                translated.append(error)
        ran = iter(
            await use_case([c for c in translated if not isinstance(c, DomainError)], self._uow)
        )
        outcomes: list[dict[str, Any]] = []
        for cmd in translated:
            result = cmd if isinstance(cmd, DomainError) else next(ran)
            if isinstance(result, DomainError):
                outcomes.append({"error": item_error_to_proto(result)})
            else:
                outcomes.append({"answer": answer(result)})
        return outcomes

    async def ExtendHold(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        cmd = commands.ExtendHold(
            hold_id=request.hold_id,
            ttl_seconds=request.ttl_seconds,
            account_id=request.account_id,
        )
        hold = await handlers.extend_hold(cmd, self._uow())
        return wallet_pb2.ExtendHoldResponse(hold=hold_pb(hold))

    async def Credit(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        cmd = commands.CreditTopUp(
            account_id=request.account_id,
            bucket=_required_bucket(request.bucket),
            amount=request.amount_micros,
            order_id=request.order_id,
            event_id=request.event_id,
            trace_id=request.trace_id or current_trace_id(),
        )
        entry = await handlers.credit_topup(cmd, self._uow())
        return wallet_pb2.CreditResponse(entry=entry_pb(entry))

    async def Adjust(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        cmd = commands.AdjustBalance(
            account_id=request.account_id,
            bucket=_required_bucket(request.bucket),
            amount=request.amount_micros,
            reason=request.reason,
            operator=_operator(request.operator),
            idempotency_key=request.idempotency_key,
            trace_id=current_trace_id(),
        )
        entry = await handlers.adjust_balance(cmd, self._uow())
        return wallet_pb2.AdjustResponse(entry=entry_pb(entry))

    async def ListLedger(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        _every_account_for_operators(request.account_id)
        cmd = commands.ListLedger(
            account_id=request.account_id,
            bucket=bucket_from_pb(request.bucket, required=False),
            kind=KIND_FROM_PB.get(request.kind),
            request_id=request.request_id,
            order_id=request.order_id,
            page_size=request.page_size,
            page_token=request.page_token,
            from_time=_time_or_none(request, "from_time"),
            to_time=_time_or_none(request, "to_time"),
        )
        page = await handlers.list_ledger(cmd, self._uow())
        return wallet_pb2.ListLedgerResponse(
            entries=[entry_pb(e) for e in page.entries], next_page_token=page.next_page_token
        )

    async def Reverse(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        cmd = commands.ReverseEntry(
            entry_id=request.entry_id,
            reason=request.reason,
            operator=_operator(request.operator),
            trace_id=current_trace_id(),
        )
        entry = await handlers.reverse_entry(cmd, self._uow())
        return wallet_pb2.ReverseResponse(entry=entry_pb(entry))

    async def ListHolds(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        _every_account_for_operators(request.account_id)
        cmd = commands.ListHolds(
            account_id=request.account_id,
            status=STATUS_FROM_PB.get(request.status),
            from_time=_time_or_none(request, "from_time"),
            to_time=_time_or_none(request, "to_time"),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        page = await handlers.list_holds(cmd, self._uow())
        return wallet_pb2.ListHoldsResponse(
            holds=[hold_pb(h) for h in page.holds], next_page_token=page.next_page_token
        )

    async def Reconcile(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        report = await handlers.reconcile(commands.Reconcile(), self._uow())
        return wallet_pb2.ReconcileResponse(
            ok=report.ok,
            accounts_checked=report.accounts_checked,
            entries_checked=report.entries_checked,
            holds_checked=report.holds_checked,
            violations=[
                wallet_pb2.Violation(rule=v.rule, subject=v.subject, detail=v.detail)
                for v in report.violations
            ],
        )

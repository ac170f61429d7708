"""A small typed async client of the wallet, for the services that call it.

Every call carries a deadline and this service's credential (`Peer`); a refusal
comes back as the same `DomainError` the wallet raised (reason, message, details).
Every wallet call is idempotent (a hold by its request id or idempotency key, a
settle or release by its hold, a part by its hold and request id, a credit by its
order, an adjustment by its key, a reversal by its entry), so a call that found the
wallet unavailable is retried with backoff; a refusal is never retried.

Hold, Settle, CapturePart and Release, the calls of every request the gateway runs,
go through a `Batcher` each (`batching=True`, the default): a call that finds nothing
in flight goes out alone on the unary method, so at low load nothing waits; calls
that arrive while calls are under way leave together in one HoldMany, SettleMany,
CapturePartMany or ReleaseMany, which the wallet runs item by item exactly as the
unary calls. Each caller still gets its own answer or its own refusal; a batch that
found the wallet unavailable is retried item by item, like any call (each item is
idempotent, so a retried batch is still correct). One client, shared by the callers
of a process, batches best.

    client = WalletClient.connect(settings.wallet_addr, settings.peer_token)
    hold = await client.hold(account_id, Bucket.CREDIT, 300_000, request_id)
    settled = await client.settle(hold.hold_id, 120_000, account_id=account_id)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from google.protobuf import timestamp_pb2

from tokenforge.errors import DomainError, Reason
from tokenforge.generated.common.v1 import common_pb2
from tokenforge.generated.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from tokenforge.money import Bucket
from tokenforge.runtime.batching import DEFAULT_MAX_SIZE, Batcher
from tokenforge.runtime.grpc_client import Peer
from tokenforge.runtime.service_client import (
    BACKOFF_S,
    DEFAULT_ATTEMPTS,
    DEFAULT_DEADLINE_S,
    ServiceClient,
)
from tokenforge.runtime.telemetry import current_trace_id
from tokenforge.wire import bucket_to_proto


def _stamp(when: datetime | None) -> timestamp_pb2.Timestamp | None:
    if when is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


# A Hold in doubt (`WalletClient.hold_in_doubt`) is asked again after this long,
# doubling up to the max.
DOUBT_RETRY_S = 0.5
DOUBT_RETRY_MAX_S = 8.0


class WalletClient(ServiceClient):
    """Calls WalletService; answers the proto messages (`wallet_pb2.Hold`, ...)."""

    service = "wallet"

    def __init__(
        self,
        peer: Peer,
        *,
        deadline: float = DEFAULT_DEADLINE_S,
        attempts: int = DEFAULT_ATTEMPTS,
        backoff: float = BACKOFF_S,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        batching: bool = True,
        max_batch: int = DEFAULT_MAX_SIZE,
    ) -> None:
        super().__init__(peer, deadline=deadline, attempts=attempts, backoff=backoff, sleep=sleep)
        self.stub = wallet_pb2_grpc.WalletServiceStub(peer.channel)
        # Without batching, every call goes alone on its unary RPC. A batch call is not
        # retried here: each item's caller retries its own call, which may then leave
        # in another batch. The ends of holds (settle, part, release) are mostly made
        # by the gateway relay's rounds, a task per finish started together: they
        # leave together at the end of the turn (Batcher `same_turn`), one call per
        # round; a Hold is on the request's path and goes at once.
        self.hold_batcher: Batcher[wallet_pb2.HoldRequest, wallet_pb2.HoldResponse] = self._batcher(
            "Hold",
            "HoldMany",
            lambda holds: wallet_pb2.HoldManyRequest(holds=holds),
            max_size=max_batch,
            batching=batching,
        )
        self.settle_batcher: Batcher[wallet_pb2.SettleRequest, wallet_pb2.SettleResponse] = (
            self._batcher(
                "Settle",
                "SettleMany",
                lambda settles: wallet_pb2.SettleManyRequest(settles=settles),
                max_size=max_batch,
                batching=batching,
                same_turn=True,
            )
        )
        self.part_batcher: Batcher[
            wallet_pb2.CapturePartRequest, wallet_pb2.CapturePartResponse
        ] = self._batcher(
            "CapturePart",
            "CapturePartMany",
            lambda parts: wallet_pb2.CapturePartManyRequest(parts=parts),
            max_size=max_batch,
            batching=batching,
            same_turn=True,
        )
        self.release_batcher: Batcher[wallet_pb2.ReleaseRequest, wallet_pb2.ReleaseResponse] = (
            self._batcher(
                "Release",
                "ReleaseMany",
                lambda releases: wallet_pb2.ReleaseManyRequest(releases=releases),
                max_size=max_batch,
                batching=batching,
                same_turn=True,
            )
        )

    # Accounts and balances.

    async def open_account(self, account_id: str) -> list[wallet_pb2.BucketBalance]:
        answer = await self._call(
            "OpenAccount", wallet_pb2.OpenAccountRequest(account_id=account_id)
        )
        return list(answer.balances)

    async def balances(
        self, account_id: str, *, split_held: bool = False, request_id: str = ""
    ) -> list[wallet_pb2.BucketBalance]:
        """Both buckets' balances; with `split_held`, `held` also split into held for
        requests and set aside for budgets (one more read)."""
        answer = await self._call(
            "GetBalances",
            wallet_pb2.GetBalancesRequest(account_id=account_id, split_held=split_held),
            request_id,
        )
        return list(answer.balances)

    async def balance(self, account_id: str, bucket: Bucket) -> wallet_pb2.BucketBalance:
        wanted = bucket_to_proto(bucket)
        return next(b for b in await self.balances(account_id) if b.bucket == wanted)

    # Holds.

    async def hold(
        self,
        account_id: str,
        bucket: Bucket,
        amount_micros: int,
        request_id: str,
        *,
        ttl_seconds: int = 0,
        trace_id: str = "",
        idempotency_key: str = "",
    ) -> wallet_pb2.Hold:
        """`idempotency_key` defaults to the request id (a request's second hold, on a
        fallback route's bucket, needs its own)."""
        request = wallet_pb2.HoldRequest(
            account_id=account_id,
            bucket=bucket_to_proto(bucket),
            amount_micros=amount_micros,
            ttl_seconds=ttl_seconds,
            request_id=request_id,
            # The caller's trace, named here: in a batch the call runs in another's.
            trace_id=trace_id or current_trace_id(),
            idempotency_key=idempotency_key,
        )
        answer = await self._retrying(lambda: self.hold_batcher.submit(request))
        return answer.hold

    async def hold_in_doubt(
        self,
        account_id: str,
        bucket: Bucket,
        amount_micros: int,
        request_id: str,
        *,
        ttl_seconds: int,
        trace_id: str = "",
        idempotency_key: str = "",
    ) -> wallet_pb2.Hold | None:
        """A Hold that went unanswered (the wallet down mid-call) may have been placed:
        ask the same Hold again (the same idempotency key: `idempotency_key`, or else
        the request id) until the wallet answers, backing off from 0.5 s to 8 s, for at
        most `ttl_seconds` (then the wallet has ended any such hold). The hold it names
        (placed then, or now), or None when the wallet refuses (it had placed none) or
        never answered."""
        loop = asyncio.get_running_loop()
        give_up_at, delay = loop.time() + ttl_seconds, DOUBT_RETRY_S
        while True:
            await asyncio.sleep(delay)
            try:
                return await self.hold(
                    account_id,
                    bucket,
                    amount_micros,
                    request_id,
                    ttl_seconds=ttl_seconds,
                    trace_id=trace_id,
                    idempotency_key=idempotency_key,
                )
            except DomainError as error:
                if error.reason is not Reason.SERVICE_UNAVAILABLE:
                    return None
            if loop.time() + delay > give_up_at:
                return None
            delay = min(DOUBT_RETRY_MAX_S, delay * 2)

    async def settle(
        self, hold_id: str, amount_micros: int, *, account_id: str = "", trace_id: str = ""
    ) -> wallet_pb2.SettleResponse:
        """The settled hold, and its ledger row (`entry`, when the charge was > 0)."""
        request = wallet_pb2.SettleRequest(
            hold_id=hold_id,
            amount_micros=amount_micros,
            account_id=account_id,
            trace_id=trace_id or current_trace_id(),
        )
        return await self._retrying(lambda: self.settle_batcher.submit(request))

    async def capture_part(
        self,
        hold_id: str,
        amount_micros: int,
        request_id: str,
        *,
        account_id: str = "",
        trace_id: str = "",
    ) -> wallet_pb2.CapturePartResponse:
        """The hold (still open) and the part's ledger row (`entry`, when > 0), whose
        entry id is `tokenforge.holds.part_entry_id(hold_id, request_id)`. Idempotent by
        (hold, request id), so it is retried like a settle."""
        request = wallet_pb2.CapturePartRequest(
            hold_id=hold_id,
            amount_micros=amount_micros,
            request_id=request_id,
            account_id=account_id,
            trace_id=trace_id or current_trace_id(),
        )
        return await self._retrying(lambda: self.part_batcher.submit(request))

    async def release(
        self, hold_id: str, *, reason: str = "", account_id: str = ""
    ) -> wallet_pb2.Hold:
        request = wallet_pb2.ReleaseRequest(hold_id=hold_id, reason=reason, account_id=account_id)
        answer = await self._retrying(lambda: self.release_batcher.submit(request))
        return answer.hold

    async def extend(
        self, hold_id: str, ttl_seconds: int, *, account_id: str = ""
    ) -> wallet_pb2.Hold:
        answer = await self._call(
            "ExtendHold",
            wallet_pb2.ExtendHoldRequest(
                hold_id=hold_id, ttl_seconds=ttl_seconds, account_id=account_id
            ),
        )
        hold: wallet_pb2.Hold = answer.hold
        return hold

    async def holds(
        self,
        account_id: str,
        *,
        status: Any = wallet_pb2.HOLD_STATUS_UNSPECIFIED,
        from_time: datetime | None = None,
        to_time: datetime | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> wallet_pb2.ListHoldsResponse:
        answer = await self._call(
            "ListHolds",
            wallet_pb2.ListHoldsRequest(
                account_id=account_id,
                status=status,
                from_time=_stamp(from_time),
                to_time=_stamp(to_time),
                page_size=page_size,
                page_token=page_token,
            ),
        )

        # Money in and corrections.
        found: wallet_pb2.ListHoldsResponse = answer
        return found

    async def credit(
        self,
        account_id: str,
        bucket: Bucket,
        amount_micros: int,
        order_id: str,
        *,
        event_id: str = "",
        trace_id: str = "",
    ) -> wallet_pb2.LedgerEntry:
        answer = await self._call(
            "Credit",
            wallet_pb2.CreditRequest(
                account_id=account_id,
                bucket=bucket_to_proto(bucket),
                amount_micros=amount_micros,
                order_id=order_id,
                event_id=event_id,
                trace_id=trace_id,
            ),
        )
        entry: wallet_pb2.LedgerEntry = answer.entry
        return entry

    async def adjust(
        self,
        account_id: str,
        bucket: Bucket,
        amount_micros: int,
        reason: str,
        idempotency_key: str,
        *,
        operator: str = "",
    ) -> wallet_pb2.LedgerEntry:
        answer = await self._call(
            "Adjust",
            wallet_pb2.AdjustRequest(
                account_id=account_id,
                bucket=bucket_to_proto(bucket),
                amount_micros=amount_micros,
                reason=reason,
                operator=operator,
                idempotency_key=idempotency_key,
            ),
        )
        entry: wallet_pb2.LedgerEntry = answer.entry
        return entry

    async def reverse(
        self, entry_id: str, reason: str, *, operator: str = ""
    ) -> wallet_pb2.LedgerEntry:
        answer = await self._call(
            "Reverse",
            wallet_pb2.ReverseRequest(entry_id=entry_id, reason=reason, operator=operator),
        )
        entry: wallet_pb2.LedgerEntry = answer.entry
        return entry

    # The ledger and its proof.

    async def ledger(
        self,
        account_id: str,
        *,
        bucket: Bucket | None = None,
        kind: Any = wallet_pb2.ENTRY_KIND_UNSPECIFIED,
        request_id: str = "",
        order_id: str = "",
        from_time: datetime | None = None,
        to_time: datetime | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> wallet_pb2.ListLedgerResponse:
        answer = await self._call(
            "ListLedger",
            wallet_pb2.ListLedgerRequest(
                account_id=account_id,
                bucket=bucket_to_proto(bucket)
                if bucket is not None
                else common_pb2.BUCKET_UNSPECIFIED,
                kind=kind,
                request_id=request_id,
                order_id=order_id,
                from_time=_stamp(from_time),
                to_time=_stamp(to_time),
                page_size=page_size,
                page_token=page_token,
            ),
        )
        found: wallet_pb2.ListLedgerResponse = answer
        return found

    async def credit_use(
        self,
        account_id: str,
        *,
        order_id: str = "",
        entry_id: str = "",
        page_size: int = 0,
        page_token: str = "",
        request_id: str = "",
    ) -> wallet_pb2.GetCreditUseResponse:
        """What one credit (a top-up's, by order id, or any by entry id) paid for, first
        in, first out, one page at a time."""
        answer = await self._call(
            "GetCreditUse",
            wallet_pb2.GetCreditUseRequest(
                account_id=account_id,
                order_id=order_id,
                entry_id=entry_id,
                page_size=page_size,
                page_token=page_token,
            ),
            request_id,
        )
        found: wallet_pb2.GetCreditUseResponse = answer
        return found

    async def paid_from(
        self, account_id: str, paid_request_id: str, *, request_id: str = ""
    ) -> list[wallet_pb2.CreditSlice]:
        """The credits (top-ups) that paid the ledger rows of request `paid_request_id`
        (`request_id`: the asking request's, for the call's logs)."""
        answer = await self._call(
            "GetPaidFrom",
            wallet_pb2.GetPaidFromRequest(account_id=account_id, request_id=paid_request_id),
            request_id,
        )
        return list(answer.slices)

    async def reconcile(self) -> wallet_pb2.ReconcileResponse:
        answer = await self._call("Reconcile", wallet_pb2.ReconcileRequest())
        found: wallet_pb2.ReconcileResponse = answer
        return found

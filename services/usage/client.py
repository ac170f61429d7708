"""A small typed async client of the usage service, for the gateway.

Every call carries a deadline and this service's credential (`Peer`); a refusal
comes back as the same `DomainError` the usage service raised (reason, message,
details). Recording a receipt is idempotent by its request id (the same receipt
again answers the first), so a call that found the service unavailable is retried
with backoff; a refusal is never retried.

Receipts go through a `Batcher` (`batching=True`, the default): one that finds
nothing in flight goes alone on `RecordReceipt`, so at low load nothing waits;
receipts that arrive while calls are under way leave together in one
`RecordReceipts`, each still answered (or refused) as if it went alone. One client,
shared by the callers of a process, batches best.

    client = UsageClient.connect(settings.usage_addr, settings.peer_token)
    answer = await client.record_receipt(receipt)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

from tokenforge.generated.usage.v1 import usage_pb2, usage_pb2_grpc
from tokenforge.money import Bucket
from tokenforge.runtime.batching import DEFAULT_MAX_SIZE, Batcher
from tokenforge.runtime.grpc_client import Peer
from tokenforge.runtime.service_client import (
    BACKOFF_S,
    DEFAULT_ATTEMPTS,
    DEFAULT_DEADLINE_S,
    ServiceClient,
)
from tokenforge.wire import bucket_to_proto, timestamp

# A reconciliation reads every receipt, hold and row in its window: far more than a
# call's usual deadline.
RECONCILE_DEADLINE_S = 120.0


class UsageClient(ServiceClient):
    """Calls UsageService; answers the proto messages (`usage_pb2.RecordReceiptResponse`)."""

    service = "usage"

    def __init__(
        self,
        peer: Peer,
        *,
        deadline: float = DEFAULT_DEADLINE_S,
        attempts: int = DEFAULT_ATTEMPTS,
        batching: bool = True,
        max_batch: int = DEFAULT_MAX_SIZE,
        backoff: float = BACKOFF_S,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        super().__init__(peer, deadline=deadline, attempts=attempts, backoff=backoff, sleep=sleep)
        self.stub = usage_pb2_grpc.UsageServiceStub(peer.channel)
        # Without batching, every receipt goes alone on RecordReceipt.
        self.receipts: Batcher[usage_pb2.Receipt, usage_pb2.RecordReceiptResponse] = self._batcher(
            "RecordReceipt",
            "RecordReceipts",
            lambda receipts: usage_pb2.RecordReceiptsRequest(
                receipts=[usage_pb2.RecordReceiptRequest(receipt=r) for r in receipts]
            ),
            alone=lambda receipt: usage_pb2.RecordReceiptRequest(receipt=receipt),
            max_size=max_batch,
            batching=batching,
            # Mostly the gateway relay's round (a task per receipt, started together):
            # one call per round (Batcher `same_turn`).
            same_turn=True,
        )

    async def record_receipt(self, receipt: usage_pb2.Receipt) -> usage_pb2.RecordReceiptResponse:
        """The stored receipt (the first one, for a replay); IDEMPOTENCY_CONFLICT when the
        request id already has another receipt."""
        # A batch that found the service unavailable is not retried whole: each caller
        # retries its own receipt, which may then leave in another batch.
        return await self._retrying(lambda: self.receipts.submit(receipt))

    # Receipts.

    async def get_receipt(self, account_id: str, receipt_of: str) -> usage_pb2.Receipt:
        """The receipt of request `receipt_of` (NOT_FOUND for another account's)."""
        answer = await self._call(
            "GetReceipt", usage_pb2.GetReceiptRequest(account_id=account_id, request_id=receipt_of)
        )
        receipt: usage_pb2.Receipt = answer.receipt
        return receipt

    async def list_receipts(
        self,
        where: usage_pb2.ReceiptFilter,
        *,
        page_size: int = 0,
        page_token: str = "",
        request_id: str = "",
    ) -> usage_pb2.ListReceiptsResponse:
        """Newest first; `next_page_token` is empty on the last page."""
        answer: usage_pb2.ListReceiptsResponse = await self._call(
            "ListReceipts",
            usage_pb2.ListReceiptsRequest(filter=where, page_size=page_size, page_token=page_token),
            request_id,
        )
        return answer

    async def aggregate_receipts(
        self, where: usage_pb2.ReceiptFilter, by: usage_pb2.AggregateBy | str
    ) -> list[usage_pb2.AggregateRow]:
        """Sums per group and bucket; `by` a value or its name (`AGGREGATE_BY_DAY`)."""
        answer = await self._call(
            "AggregateReceipts", usage_pb2.AggregateReceiptsRequest(filter=where, by=by)
        )
        return list(answer.rows)

    # Runs.

    async def open_run(self, run: usage_pb2.Run, *, request_id: str = "") -> usage_pb2.Run:
        """Store a run whose hold the gateway placed (sent once: a run id is taken once)."""
        answer = await self._once("OpenRun", usage_pb2.OpenRunRequest(run=run), request_id)
        stored: usage_pb2.Run = answer.run
        return stored

    async def get_run(
        self, run_id: str, *, account_id: str = "", request_id: str = ""
    ) -> usage_pb2.Run:
        """The run (of `account_id` when given: another account's is NOT_FOUND)."""
        answer = await self._call(
            "GetRun", usage_pb2.GetRunRequest(account_id=account_id, run_id=run_id), request_id
        )
        run: usage_pb2.Run = answer.run
        return run

    async def reserve_from_run(
        self,
        account_id: str,
        run_id: str,
        request_id: str,
        amount_micros: int,
        bucket: Bucket,
    ) -> usage_pb2.Run:
        """Set the request's worst case aside from the run's rest (idempotent by request
        id); INSUFFICIENT_BALANCE names what is left (`available_micros`)."""
        answer = await self._call(
            "ReserveFromRun",
            usage_pb2.ReserveFromRunRequest(
                account_id=account_id,
                run_id=run_id,
                request_id=request_id,
                amount_micros=amount_micros,
                bucket=bucket_to_proto(bucket),
            ),
            request_id,
        )
        run: usage_pb2.Run = answer.run
        return run

    async def close_run(
        self, account_id: str, run_id: str, *, request_id: str = ""
    ) -> usage_pb2.Run:
        answer = await self._once(
            "CloseRun", usage_pb2.CloseRunRequest(account_id=account_id, run_id=run_id), request_id
        )
        run: usage_pb2.Run = answer.run
        return run

    async def finish_run(
        self, run_id: str, captured_micros: int, *, request_id: str = ""
    ) -> usage_pb2.RunReceipt:
        answer = await self._once(
            "FinishRun",
            usage_pb2.FinishRunRequest(run_id=run_id, captured_micros=captured_micros),
            request_id,
        )
        receipt: usage_pb2.RunReceipt = answer.receipt
        return receipt

    async def expire_runs(self, limit: int = 100) -> list[usage_pb2.Run]:
        answer = await self._once("ExpireRuns", usage_pb2.ExpireRunsRequest(limit=limit))
        return list(answer.runs)

    async def get_run_receipt(
        self, account_id: str, run_id: str, *, request_id: str = ""
    ) -> usage_pb2.RunReceipt:
        answer = await self._call(
            "GetRunReceipt",
            usage_pb2.GetRunReceiptRequest(account_id=account_id, run_id=run_id),
            request_id,
        )
        receipt: usage_pb2.RunReceipt = answer.receipt
        return receipt

    # The receipt <-> ledger proof (operators).

    async def reconcile(
        self,
        since: datetime | None = None,
        account_ids: Sequence[str] = (),
        *,
        timeout: float = RECONCILE_DEADLINE_S,
    ) -> usage_pb2.ReconcileResponse:
        """Usage compares its receipts with the wallet's holds and request-charge rows
        (it reads the wallet itself); every mismatch is in the answer."""
        answer: usage_pb2.ReconcileResponse = await self._call(
            "Reconcile",
            usage_pb2.ReconcileRequest(since=timestamp(since), account_ids=list(account_ids)),
            timeout=timeout,
        )
        return answer

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
from collections.abc import Awaitable, Callable

from tokenforge.runtime.batching import DEFAULT_MAX_SIZE, Batcher
from tokenforge.runtime.grpc_client import Peer
from tokenforge.runtime.service_client import (
    BACKOFF_S,
    DEFAULT_ATTEMPTS,
    DEFAULT_DEADLINE_S,
    ServiceClient,
)
from tokenforge.usage.v1 import usage_pb2, usage_pb2_grpc


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
        )

    async def record_receipt(self, receipt: usage_pb2.Receipt) -> usage_pb2.RecordReceiptResponse:
        """The stored receipt (the first one, for a replay); IDEMPOTENCY_CONFLICT when the
        request id already has another receipt."""
        # A batch that found the service unavailable is not retried whole: each caller
        # retries its own receipt, which may then leave in another batch.
        return await self._retrying(lambda: self.receipts.submit(receipt))

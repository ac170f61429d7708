"""Where reservations end on the real services: the finish queue, the wallet, usage.

`PeerEnds` is the `Ends` port of services/gateway/flow/reservation.py over the gateway's
peers: a finish is one durable insert in the gateway's finish queue (shared by the
finishes that arrive together), in the request's trace for the relay to continue; when
the queue cannot take it, the wallet's side is done now (relay.finish_hold), then the
receipt is recorded (and queued alone if usage cannot be reached).
"""

from __future__ import annotations

import logging

from services.gateway import metrics
from services.gateway.adapters.peers import Peers
from services.gateway.relay import finish_hold
from tokenforge.errors import DomainError, Reason
from tokenforge.generated.usage.v1 import usage_pb2
from tokenforge.money import Bucket, format_amount
from tokenforge.runtime.telemetry import current_traceparent
from tokenforge.wire import bucket_from_proto

log = logging.getLogger("tokenforge.gateway.finish")


class PeerEnds:
    def __init__(self, peers: Peers) -> None:
        self.peers = peers

    async def enqueue(self, receipt: usage_pb2.Receipt, finish: str) -> None:
        queue = self.peers.finish_queue
        if queue is None:
            raise RuntimeError("the gateway has no database to queue finishes in")
        await queue.put(
            receipt.request_id,
            receipt.SerializeToString(),
            account_id=receipt.account_id,
            hold_id=receipt.hold_id,
            finish=finish,
            traceparent=current_traceparent(),
        )

    async def apply(self, receipt: usage_pb2.Receipt, finish: str) -> None:
        await finish_hold(self.peers, receipt, finish)
        await self.record(receipt)

    async def release(self, hold_id: str, reason: str, account_id: str) -> None:
        await self.peers.wallet_client.release(hold_id, reason=reason, account_id=account_id)

    async def capture_part(self, receipt: usage_pb2.Receipt, micros: int) -> str:
        captured = await self.peers.wallet_client.capture_part(
            receipt.hold_id,
            micros,
            receipt.request_id,
            account_id=receipt.account_id,
            trace_id=receipt.trace_id,
        )
        return str(captured.entry.entry_id)

    async def record(self, receipt: usage_pb2.Receipt) -> None:
        """Record the receipt of a request whose charge (or release) is already done. If
        the usage service cannot be reached (after the client's retries), the receipt
        waits in the gateway's queue and the request is answered: its charge is recorded
        and its receipt durably queued. Only if that fails too is the request refused,
        and then with the truth: the charge stands, so it must not be sent again."""
        try:
            await self.peers.usage_client.record_receipt(receipt)
            return
        except DomainError as error:
            if error.reason is not Reason.SERVICE_UNAVAILABLE:
                raise
            unreachable = error
        queue = self.peers.finish_queue
        try:
            if queue is None:
                raise unreachable
            await queue.put(
                receipt.request_id,
                receipt.SerializeToString(),
                account_id=receipt.account_id,
                hold_id=receipt.hold_id,
                traceparent=current_traceparent(),
            )
        except Exception as failure:
            raise receipt_not_recorded(receipt) from failure
        metrics.RECEIPTS_QUEUED.inc()
        log.warning("usage unreachable: receipt of %s queued for delivery", receipt.request_id)


def receipt_not_recorded(receipt: usage_pb2.Receipt) -> DomainError:
    """The request ran, its wallet side is done, and its receipt cannot be recorded nor
    queued: a charge taken is named (RECEIPT_PENDING: not to be sent again); a release
    says nothing was charged (SERVICE_UNAVAILABLE: it may be sent again)."""
    if receipt.charge_micros:
        bucket = bucket_from_proto(receipt.bucket)
        return receipt_pending(
            receipt.request_id,
            receipt.charge_micros,
            bucket,
            receipt.entry_id,
            f"{format_amount(receipt.charge_micros, bucket)} was taken from {bucket.label} "
            f"(ledger entry {receipt.entry_id}), but its receipt could not be recorded "
            "right now.",
        )
    return DomainError(
        Reason.SERVICE_UNAVAILABLE,
        f"Request {receipt.request_id} ran and nothing was charged, but its receipt could "
        "not be recorded right now. You may send it again.",
        {"request_id": receipt.request_id, "charge_micros": "0"},
    )


def receipt_pending(
    request_id: str, charge_micros: int, bucket: Bucket, entry_id: str, story: str
) -> DomainError:
    """A request that ran and whose charge is taken, or being taken, while its receipt
    is not recorded yet: the answer names the charge and its ledger entry, says where
    the receipt will be, and that the request must not be sent again."""
    return DomainError(
        Reason.RECEIPT_PENDING,
        f"Request {request_id} ran: {story} Do not send it again; its receipt will be at "
        f"/v1/usage/{request_id} and the ledger shows the charge.",
        {
            "request_id": request_id,
            "charge_micros": str(charge_micros),
            "bucket": bucket.value,
            "ledger_entry_id": entry_id,
        },
    )

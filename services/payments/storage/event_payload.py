"""The outbox payload: an order event as the `TopUpEvent` the wallet's consumer decodes
(protos/tokenforge/payments/v1), written in the same transaction as the order. The
relay publishes these bytes as they are; the gRPC answers map orders in
services/payments/transport/messages.py with the same status map."""

from __future__ import annotations

from services.payments.domain.model import OrderEvent, TopUpStatus
from tokenforge.errors import DomainError, Reason
from tokenforge.generated.payments.v1 import payments_pb2
from tokenforge.wire import bucket_to_proto, timestamp

_STATUS_TO_PROTO: dict[TopUpStatus, payments_pb2.TopUpStatus] = {
    TopUpStatus.PENDING: payments_pb2.TOP_UP_STATUS_PENDING,
    TopUpStatus.AWAITING_REVIEW: payments_pb2.TOP_UP_STATUS_AWAITING_REVIEW,
    TopUpStatus.SUCCEEDED: payments_pb2.TOP_UP_STATUS_SUCCEEDED,
    TopUpStatus.FAILED: payments_pb2.TOP_UP_STATUS_FAILED,
    TopUpStatus.EXPIRED: payments_pb2.TOP_UP_STATUS_EXPIRED,
    TopUpStatus.REJECTED: payments_pb2.TOP_UP_STATUS_REJECTED,
    TopUpStatus.CANCELED: payments_pb2.TOP_UP_STATUS_CANCELED,
}
_STATUS_FROM_PROTO = {v: k for k, v in _STATUS_TO_PROTO.items()}


def status_to_proto(status: TopUpStatus) -> payments_pb2.TopUpStatus:
    return _STATUS_TO_PROTO[status]


def status_from_proto(value: int) -> TopUpStatus:
    try:
        return _STATUS_FROM_PROTO[value]  # type: ignore[index]
    except KeyError:
        raise DomainError(
            Reason.INVALID_ARGUMENT, f"Unknown top-up status {value}.", {"param": "status"}
        ) from None


def event_to_proto(event: OrderEvent) -> payments_pb2.TopUpEvent:
    return payments_pb2.TopUpEvent(
        event_id=event.event_id,
        order_id=event.order_id,
        account_id=event.account_id,
        bucket=bucket_to_proto(event.bucket),
        received_micros=event.received_micros,
        status=status_to_proto(event.status),
        occurred_at=timestamp(event.occurred_at),
    )


def encode_event(event: OrderEvent) -> bytes:
    """The outbox payload: a serialized TopUpEvent."""
    data: bytes = event_to_proto(event).SerializeToString()
    return data

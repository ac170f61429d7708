"""Mapping between payments' protobuf messages and its domain types (the top-up
statuses and the outbox's event payload: services/payments/storage/event_payload.py)."""

from __future__ import annotations

from services.payments.domain.model import Order, Transition
from services.payments.storage.event_payload import status_from_proto, status_to_proto
from tokenforge.generated.payments.v1 import payments_pb2
from tokenforge.wire import bucket_to_proto, timestamp

__all__ = [
    "order_to_proto",
    "status_from_proto",
    "status_to_proto",
    "transition_to_proto",
]


def transition_to_proto(transition: Transition) -> payments_pb2.TopUpTransition:
    return payments_pb2.TopUpTransition(
        from_status=status_to_proto(transition.from_status),
        to_status=status_to_proto(transition.to_status),
        reason=transition.reason,
        actor=transition.actor,
        at=timestamp(transition.at),
    )


def order_to_proto(order: Order) -> payments_pb2.TopUp:
    return payments_pb2.TopUp(
        order_id=order.order_id,
        account_id=order.account_id,
        bucket=bucket_to_proto(order.bucket),
        provider=order.provider,
        paid_amount_minor=order.paid_amount_minor,
        currency=order.currency,
        received_micros=order.received_micros,
        status=status_to_proto(order.status),
        created_at=timestamp(order.created_at),
        expires_at=timestamp(order.expires_at),
        provider_reference=order.provider_reference,
        checkout_url=order.checkout_url,
        provider_transaction_id=order.provider_transaction_id or "",
        transfer_reference=order.transfer_reference,
        transitions=[transition_to_proto(t) for t in order.transitions],
    )

"""The payments service's Prometheus metrics: top-up orders by the state they enter,
and the outbox backlog (served with the shared ones, see tokenforge/runtime/metrics.py)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Gauge

ORDER_TRANSITIONS = Counter(
    "tokenforge_payments_orders_total",
    "Top-up orders entering a state (pending on creation, then each committed "
    "transition), by state and provider.",
    ["state", "provider"],
)
OUTBOX_BACKLOG = Gauge(
    "tokenforge_payments_outbox_backlog",
    "Order events committed to the outbox and not yet published to NATS (sampled by the relay).",
)
OUTBOX_PUBLISHED = Counter(
    "tokenforge_payments_outbox_published_total",
    "Order events the relay published to JetStream.",
)


def count_orders(moves: Iterable[tuple[str, str]]) -> None:
    """Count committed (state, provider) moves."""
    for state, provider in moves:
        ORDER_TRANSITIONS.labels(state, provider).inc()

"""The wallet's Prometheus metrics: holds by how they end, charges by bucket, and the
top-up consumer's lag (served with the shared ones, see tokenforge/runtime/metrics.py)."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from nats.js import JetStreamContext
from prometheus_client import Counter, Gauge

from tokenforge.money import Bucket

log = logging.getLogger(__name__)

LAG_SAMPLE_S = 5.0

HOLDS = Counter(
    "tokenforge_wallet_holds_total",
    "Holds by what happened to them (placed, settled, released, expired), by bucket.",
    ["bucket", "outcome"],
)
CHARGES = Counter(
    "tokenforge_wallet_charges_micros_total",
    "Micro-units the wallet charged on settles (request_charge entries), by bucket.",
    ["bucket"],
)
TOPUP_CREDITS = Counter(
    "tokenforge_wallet_topup_credits_micros_total",
    "Micro-units credited from paid top-ups, by bucket.",
    ["bucket"],
)
REFUSED_EVENTS = Counter(
    "tokenforge_wallet_topup_events_refused_total",
    "Top-up events the wallet credited nothing for and dead-lettered (stream DEADLETTER), "
    "by why: unconfirmed (payments does not confirm the order: forged or corrupted), "
    "poison (not a top-up event), conflict (another credit of the order differs).",
    ["reason"],
)
BATCHES = Counter(
    "tokenforge_wallet_batches_total",
    "Batch calls (HoldMany, SettleMany, CapturePartMany, ReleaseMany) by how they ran: "
    "in one transaction, or item by item after that transaction failed.",
    ["how"],
)
CONSUMER_PENDING = Gauge(
    "tokenforge_wallet_consumer_pending_messages",
    "Top-up events in the stream not yet delivered to the wallet's durable consumer "
    "(JetStream num_pending), sampled every few seconds.",
    ["consumer"],
)
CONSUMER_ACK_PENDING = Gauge(
    "tokenforge_wallet_consumer_ack_pending_messages",
    "Top-up events delivered but not acknowledged yet (JetStream num_ack_pending).",
    ["consumer"],
)


# Inside a batch that runs in one transaction: counts wait here until it commits (a
# batch rolled back and run again item by item must not count twice).
_pending: contextvars.ContextVar[list[Callable[[], None]] | None] = contextvars.ContextVar(
    "tokenforge_wallet_pending_counts", default=None
)


def _count(apply: Callable[[], None]) -> None:
    pending = _pending.get()
    if pending is None:
        apply()
    else:
        pending.append(apply)


def count_hold(bucket: Bucket, outcome: str) -> None:
    _count(HOLDS.labels(bucket.value, outcome).inc)


def count_charge(bucket: Bucket, micros: int) -> None:
    _count(lambda: CHARGES.labels(bucket.value).inc(micros))


@contextmanager
def counted_on_commit() -> Iterator[Callable[[], None]]:
    """Hold back the counts made inside the block; call the yielded function once the
    transaction committed to count them (never called: they are dropped)."""
    pending: list[Callable[[], None]] = []

    def count_them() -> None:
        for apply in pending:
            apply()

    token = _pending.set(pending)
    try:
        yield count_them
    finally:
        _pending.reset(token)


async def sample_consumer_lag(
    js: JetStreamContext, stream: str, durable: str, every_s: float = LAG_SAMPLE_S
) -> None:
    """Read the durable consumer's pending counts from JetStream every `every_s`
    seconds, forever (the wallet runs it next to its consumer)."""
    while True:
        try:
            info = await js.consumer_info(stream, durable)
            CONSUMER_PENDING.labels(durable).set(info.num_pending or 0)
            CONSUMER_ACK_PENDING.labels(durable).set(info.num_ack_pending or 0)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - NATS away: keep the last sample
            log.debug("consumer lag not sampled: %s", error)
        await asyncio.sleep(every_s)

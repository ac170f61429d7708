"""Credits paid top-ups from the PAYMENTS stream, exactly once per order (P2), and
only orders payments confirms (S1).

A durable pull consumer reads `tokenforge.payments.v1.topup.succeeded`. An event is
a claim, not a proof: before crediting, the wallet reads the order from payments
(GetTopUp, services/payments/client.py) and credits only an order that exists on
that account, succeeded, and credits the same bucket with the same amount. An event
payments does not confirm (forged, or corrupted) credits nothing: it is
dead-lettered with the reason, logged, and counted
(`tokenforge_wallet_topup_events_refused_total{reason="unconfirmed"}`). While payments
cannot answer, the event is nak'ed and comes back later (not credited, not lost).
NATS permissions are the first line (only payments may publish on the subject, see
docs/DEPLOY.md); this check is the second.

A confirmed event is credited in one transaction that also records its event id, and
acked only after that commit. A redelivery or a duplicate publish finds the event (or the order's
credit) already there and changes nothing. A message that can never succeed (not
a TopUpEvent, or conflicting with the order's first credit) is copied to the
dead-letter subject (stream DEADLETTER, header naming the reason) and then
terminated, never retried forever; anything else (database down) is retried later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

from google.protobuf.message import DecodeError
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from opentelemetry import trace

from services.wallet import handlers, metrics
from services.wallet.domain import commands
from services.wallet.domain.topups import ConfirmedOrder, refusal
from services.wallet.storage.unit_of_work import UnitOfWork
from tokenforge.errors import DomainError, Reason
from tokenforge.generated.payments.v1 import payments_pb2
from tokenforge.runtime.nats import (
    DEADLETTER_STREAM as NATS_DEADLETTER_STREAM,
)
from tokenforge.runtime.nats import (
    PAYMENTS_STREAM,
    WALLET_DEADLETTER_SUBJECT,
    WALLET_DURABLE,
    context_from_headers,
    ensure_payments_stream,
    ensure_stream,
    topup_subject,
    while_cluster_settles,
)
from tokenforge.runtime.telemetry import current_trace_id
from tokenforge.wire import bucket_or_none

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

DURABLE = WALLET_DURABLE
SUBJECT = topup_subject("succeeded")
# Seconds JetStream waits for an ack before redelivering (a crashed consumer's
# messages come back after this), and messages fetched (and credited concurrently)
# per pull.
ACK_WAIT_S = 30.0
BATCH = 16
# Reasons that no retry can fix: terminate the message (it stays in the stream).
PERMANENT = frozenset({Reason.IDEMPOTENCY_CONFLICT, Reason.INVALID_ARGUMENT})

# Messages no retry can fix, kept for an operator to read: their own stream, so the
# PAYMENTS stream ("tokenforge.payments.v1.topup.>") never captures them.
DEADLETTER_STREAM = NATS_DEADLETTER_STREAM
DEADLETTER_SUBJECT = WALLET_DEADLETTER_SUBJECT
REASON_HEADER = "Tokenforge-Deadletter-Reason"
ORIGIN_HEADER = "Tokenforge-Original-Subject"
SEQUENCE_HEADER = "Tokenforge-Original-Sequence"


async def ensure_deadletter_stream(js: JetStreamContext, replicas: int = 1) -> None:
    await ensure_stream(
        js,
        StreamConfig(
            name=DEADLETTER_STREAM,
            subjects=["tokenforge.payments.v1.deadletter.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            duplicate_window=24 * 3600.0,
            num_replicas=max(1, replicas),
        ),
    )


def _stream_sequence(msg: Msg) -> str:
    try:
        return str(msg.metadata.sequence.stream)
    except Exception:  # noqa: BLE001 - a message without JetStream metadata
        return ""


class OrderReader(Protocol):
    """What the consumer asks payments (services.payments.client.PaymentsClient)."""

    async def get_top_up(
        self, account_id: str, order_id: str, *, request_id: str = ""
    ) -> payments_pb2.TopUp: ...


def _status_name(status: int) -> str:
    try:
        return str(payments_pb2.TopUpStatus.Name(status)).removeprefix("TOP_UP_STATUS_").lower()
    except ValueError:
        return ""


# Seconds before an event comes back when payments could not confirm it yet.
UNCONFIRMED_RETRY_S = 2.0


class PoisonMessage(Exception):
    """A message that can never be credited."""


def decode(msg: Msg) -> commands.CreditTopUp:
    try:
        event = payments_pb2.TopUpEvent.FromString(msg.data)
    except DecodeError as error:
        raise PoisonMessage(f"not a TopUpEvent: {error}") from error
    bucket = bucket_or_none(event.bucket)
    event_id = event.event_id or (msg.headers or {}).get("Nats-Msg-Id", "")
    if (
        bucket is None
        or not event.order_id
        or not event.account_id
        or not event_id
        or event.received_micros <= 0
        or event.status
        not in (payments_pb2.TOP_UP_STATUS_UNSPECIFIED, payments_pb2.TOP_UP_STATUS_SUCCEEDED)
    ):
        raise PoisonMessage(f"not a creditable top-up event: {event!r}")
    return commands.CreditTopUp(
        account_id=event.account_id,
        bucket=bucket,
        amount=event.received_micros,
        order_id=event.order_id,
        event_id=event_id,
    )


class TopUpConsumer:
    """The durable pull consumer. `durable`, `subject` and `ack_wait` (seconds before
    JetStream redelivers an unacked message) are parameters so tests can run their
    own consumer on a subject of the PAYMENTS stream with a short redelivery delay.

    The messages of one fetched batch are credited concurrently: each is its own
    transaction, and two deliveries of one event serialize on the bucket's row."""

    def __init__(
        self,
        nc: Client,
        uow_factory: Callable[[], UnitOfWork],
        payments: OrderReader,
        *,
        durable: str = DURABLE,
        subject: str = SUBJECT,
        ack_wait: float = ACK_WAIT_S,
        batch: int = BATCH,
        replicas: int = 1,
    ) -> None:
        self._nc = nc
        self._uow = uow_factory
        self._payments = payments
        self._durable = durable
        self._subject = subject
        self._ack_wait = ack_wait
        self._batch = batch
        self._replicas = replicas
        self._task: asyncio.Task[None] | None = None
        self._js: JetStreamContext | None = None
        self._sub: JetStreamContext.PullSubscription | None = None

    @property
    def is_running(self) -> bool:
        """False once the fetch loop has ended (stopped, or died on a crash)."""
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        js = self._js = self._nc.jetstream()
        await ensure_payments_stream(js, self._replicas)
        await ensure_deadletter_stream(js, self._replicas)
        self._sub = await while_cluster_settles(
            lambda: js.pull_subscribe(
                self._subject,
                durable=self._durable,
                stream=PAYMENTS_STREAM,
                config=ConsumerConfig(
                    durable_name=self._durable,
                    filter_subject=self._subject,
                    ack_policy=AckPolicy.EXPLICIT,
                    deliver_policy=DeliverPolicy.ALL,
                    ack_wait=self._ack_wait,
                ),
            )
        )
        self._task = asyncio.create_task(self._run(), name=f"wallet-{self._durable}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def _run(self) -> None:
        assert self._sub is not None, "start() first"
        while True:
            try:
                msgs = await self._sub.fetch(batch=self._batch, timeout=1.0)
            except (TimeoutError, NatsTimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("fetching top-up events failed; retrying")
                await asyncio.sleep(1.0)
                continue
            # handle() settles a message itself (ack, nak or term). An error that still
            # escapes (NATS gone while acking) leaves its message unacked: JetStream
            # redelivers it after ack_wait. A BaseException is a crash: the batch's
            # other messages are cancelled unacked too, and the loop ends.
            try:
                async with asyncio.TaskGroup() as group:
                    for msg in msgs:
                        group.create_task(self.handle(msg))
            except* Exception:
                log.exception("crediting a batch failed; its unacked messages come back")

    async def handle(self, msg: Msg) -> None:
        """Credit one message and ack it after the commit (or term it, or nak it)."""
        try:
            cmd = decode(msg)
        except PoisonMessage as error:
            log.error("terminating poison message on %s: %s", msg.subject, error)
            metrics.REFUSED_EVENTS.labels("poison").inc()
            await self.dead_letter(msg, f"poison: {error}")
            return
        parent = context_from_headers(msg.headers)
        with tracer.start_as_current_span(
            "wallet credit top-up", context=parent, kind=trace.SpanKind.CONSUMER
        ) as span:
            span.set_attribute("tokenforge.order_id", cmd.order_id)
            span.set_attribute("tokenforge.event_id", cmd.event_id)
            try:
                refused = await self.confirm(cmd)
            except DomainError as error:
                log.warning(
                    "top-up event %s of order %s not credited yet: payments could not "
                    "confirm it (%s: %s); it comes back in %s s",
                    cmd.event_id,
                    cmd.order_id,
                    error.reason.value,
                    error.message,
                    UNCONFIRMED_RETRY_S,
                )
                await msg.nak(delay=UNCONFIRMED_RETRY_S)
                return
            if refused:
                log.error(
                    "refusing top-up event %s (account %s, %s %s): %s; nothing credited, "
                    "dead-lettered",
                    cmd.event_id,
                    cmd.account_id,
                    cmd.amount,
                    cmd.bucket.value,
                    refused,
                )
                span.set_attribute("tokenforge.refused", refused)
                metrics.REFUSED_EVENTS.labels("unconfirmed").inc()
                await self.dead_letter(msg, f"unconfirmed: {refused}")
                return
            try:
                entry = await handlers.credit_topup(
                    commands.CreditTopUp(
                        account_id=cmd.account_id,
                        bucket=cmd.bucket,
                        amount=cmd.amount,
                        order_id=cmd.order_id,
                        event_id=cmd.event_id,
                        trace_id=current_trace_id(),
                    ),
                    self._uow(),
                )
            except DomainError as error:
                if error.reason in PERMANENT:
                    log.error(
                        "terminating top-up event %s of order %s: %s",
                        cmd.event_id,
                        cmd.order_id,
                        error.message,
                    )
                    metrics.REFUSED_EVENTS.labels("conflict").inc()
                    await self.dead_letter(msg, f"{error.reason.value}: {error.message}")
                    return
                log.warning("top-up event %s not credited yet: %s", cmd.event_id, error)
                await msg.nak(delay=1.0)
                return
            except Exception:
                log.exception("top-up event %s not credited yet; will retry", cmd.event_id)
                await msg.nak(delay=1.0)
                return
        await self._checkpoint("committed", cmd)
        await msg.ack()
        await self._checkpoint("acked", cmd)
        log.info(
            "credited order %s (event %s) as entry %s",
            cmd.order_id,
            cmd.event_id,
            entry.entry_id,
        )

    async def confirm(self, cmd: commands.CreditTopUp) -> str:
        """Why payments does not confirm this credit ("" when it does). A DomainError
        other than NOT_FOUND (payments unreachable, this service not allowed) is
        raised: the event must wait, not be refused."""
        try:
            order = await self._payments.get_top_up(cmd.account_id, cmd.order_id)
        except DomainError as error:
            if error.reason is Reason.NOT_FOUND:
                return refusal(cmd, None)
            raise
        return refusal(
            cmd,
            ConfirmedOrder(
                order_id=order.order_id,
                account_id=order.account_id,
                bucket=bucket_or_none(order.bucket),
                received_micros=order.received_micros,
                status=_status_name(order.status),
            ),
        )

    async def _checkpoint(self, stage: str, cmd: commands.CreditTopUp) -> None:
        """A seam for fault-injection tests: "committed" (credit committed, not acked
        yet) and "acked". Does nothing in production."""

    async def dead_letter(self, msg: Msg, reason: str) -> None:
        """Copy the message to the dead-letter subject, then terminate it.

        If the copy fails the message is nak'ed instead: it comes back later rather
        than being lost. The copy's Nats-Msg-Id is the original stream sequence, so a
        redelivery after a crash does not copy it twice.
        """
        if self._js is not None:
            sequence = _stream_sequence(msg)
            headers = {
                REASON_HEADER: reason[:1000],
                ORIGIN_HEADER: msg.subject,
                SEQUENCE_HEADER: sequence,
            }
            if sequence:
                headers["Nats-Msg-Id"] = f"wallet-deadletter-{sequence}"
            try:
                await self._js.publish(DEADLETTER_SUBJECT, msg.data, headers=headers)
            except Exception:
                log.exception("could not dead-letter a message on %s; will retry", msg.subject)
                await msg.nak(delay=1.0)
                return
        await msg.term()

"""Coalesce concurrent calls to a service into batch calls ("smart batching").

A call that finds no batch in flight goes out at once, alone, on the plain unary
method: at low load nothing waits and nothing changes. Calls that arrive while
`max_in_flight` batches are already out wait for one of them to come back and then
leave together, up to `max_size` in one batch call. Under load a batch call carries
many requests: the per-call cost of gRPC (serialization, HTTP/2 framing, the
server's interceptors, a task per call) is paid once per batch instead of once
per request. No timer is involved, so no request waits for a batch to fill.

    batcher = Batcher(send_one=hold_one, send_many=hold_many, max_size=64)
    hold = await batcher.submit(request)

`max_in_flight` defaults to 1 (one call out at a time per batcher): measured on the
wallet (docs/PERFORMANCE.md), one call in flight makes batches of ~10 at 32
concurrent callers and the most pairs per second; two make batches of ~5.5 and
cost more CPU per item for no gain in latency.

`linger` (seconds, default 0) is for calls off every request's path (outcome
reports): an item then never goes alone at once; it waits until the oldest waiting
item has lingered that long, or `max_size` items wait, and they leave together.
Nobody waits for the answer of such a call, and one call carries the items of
many requests even at low load (measured: docs/PERFORMANCE.md).

`same_turn` is for calls made by many tasks started together (the gateway relay's
round: a task per queued finish): an item waits for the end of the event loop's
current turn instead of going alone at once, so the items submitted in that turn
leave in one call (without it the first goes alone and the rest in a second call,
twice the calls at low load). A lone item then goes on the unary call, one turn
later.

A service that does not offer the batch call yet (an older version during a rolling
upgrade answers UNIMPLEMENTED) costs nothing but speed: that batch's items go one by
one on `send_one`, and every item goes alone for the next minute before a batch is
tried again.

`send_many` answers one outcome per item, in order: the answer or the exception
that item alone raised (a refusal is one item's, not the batch's). When the batch
call itself fails (the service is down, the deadline passed), every item of it
gets that error.

Traces: a call that goes alone is the caller's own (its client span and the
server's spans are in the request's trace). A batch call is a span `<name> batch
call` in the first waiter's trace, linked to the span each waiter was in (its
request's), with the server's spans below it; each waiter's span gets an event
`tokenforge.batched` naming that call (`tokenforge.batch.trace_id`, `.span_id`,
`.items`), so from any request's trace an operator reaches the call that carried
it. An event, not a span per waiting item: those spans cost the gateway about a
tenth of its CPU under load.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from opentelemetry import trace
from opentelemetry.trace import Link, Span, Tracer

from tokenforge.errors import DomainError
from tokenforge.runtime import metrics

Item = TypeVar("Item")
Result = TypeVar("Result")

DEFAULT_MAX_SIZE = 64
DEFAULT_MAX_IN_FLIGHT = 1
# After a batch call the service did not know, items go alone this long (seconds).
UNSUPPORTED_PAUSE_S = 60.0

log = logging.getLogger(__name__)


def batch_call_unknown(error: BaseException) -> bool:
    """The service does not offer the call (gRPC UNIMPLEMENTED: an older version)."""
    return (
        isinstance(error, DomainError)
        and (error.metadata or {}).get("grpc_code") == "UNIMPLEMENTED"
    )


@dataclass
class _Waiting(Generic[Item, Result]):
    item: Item
    future: asyncio.Future[Result]
    context: contextvars.Context
    # The span the waiter was in (its request's), for the link and the event.
    span: Span
    # When it was queued (the loop's clock), for `linger`.
    since: float


class Batcher(Generic[Item, Result]):
    """Send items one by one while the service keeps up, in batches when it does not."""

    def __init__(
        self,
        send_one: Callable[[Item], Awaitable[Result]],
        send_many: Callable[[Sequence[Item]], Awaitable[Sequence[Result | BaseException]]],
        *,
        max_size: int = DEFAULT_MAX_SIZE,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        name: str = "",
        tracer: Tracer | None = None,
        batching: bool = True,
        linger: float = 0.0,
        same_turn: bool = False,
    ) -> None:
        if max_size < 1 or max_in_flight < 1:
            raise ValueError("max_size and max_in_flight must be at least 1")
        if linger < 0:
            raise ValueError("linger must not be negative")
        self._send_one = send_one
        self._send_many = send_many
        self.max_size = max_size
        self.max_in_flight = max_in_flight
        # False: every item goes alone on `send_one`, at once (for comparisons).
        self.batching = batching
        self.linger = linger
        self.same_turn = same_turn
        self._timer: asyncio.TimerHandle | None = None
        # `same_turn`: set while this turn's items gather (they leave when it runs).
        self._turn: asyncio.Handle | None = None
        # Until then (the loop's clock), items go alone: the batch call was unknown.
        self._alone_until = 0.0
        # Items per call, as a metric (`tokenforge_client_batch_items{call=name}`).
        self.name = name or "batch"
        self._sizes = metrics.BATCH_ITEMS.labels(self.name)
        self._tracer = tracer or trace.get_tracer(__name__)
        self._queue: deque[_Waiting[Item, Result]] = deque()
        self._in_flight = 0
        # Batch calls under way (a reference each, so the loop does not drop them).
        self._tasks: set[asyncio.Task[None]] = set()
        # Figures for tests, metrics and the benchmark.
        self.calls = 0
        self.batched_items = 0

    async def submit(self, item: Item) -> Result:
        """The item's answer (or its error), sent alone or in a batch."""
        if not self.batching or (
            self._alone_until and asyncio.get_running_loop().time() < self._alone_until
        ):
            self.calls += 1
            self._sizes.observe(1)
            return await self._send_one(item)
        at_once = not (self.linger or self.same_turn)
        if at_once and self._in_flight < self.max_in_flight and not self._queue:
            # Nothing waiting and room for a call: go now, in the caller's own task.
            return await self._alone(item)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        waiting = _Waiting(
            item, future, contextvars.copy_context(), trace.get_current_span(), loop.time()
        )
        self._queue.append(waiting)
        if self.same_turn and self._turn is None:
            self._turn = loop.call_soon(self._turn_ended)
        self._start_sender()
        return await future

    async def _alone(self, item: Item) -> Result:
        # Counted in flight, so that callers arriving meanwhile queue behind it.
        self._in_flight += 1
        self.calls += 1
        self._sizes.observe(1)
        try:
            return await self._send_one(item)
        finally:
            self._in_flight -= 1
            self._start_sender()

    def _due(self, now: float) -> bool:
        """May the waiting items leave now (always, unless they are to linger or to
        wait for the end of the turn)?"""
        if len(self._queue) >= self.max_size:
            return True
        if self._turn is not None:
            return False
        return not self.linger or self._queue[0].since + self.linger <= now

    def _lingered(self) -> None:
        self._timer = None
        self._start_sender()

    def _turn_ended(self) -> None:
        self._turn = None
        self._start_sender()

    def _start_sender(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue and self._in_flight < self.max_in_flight and self._due(loop.time()):
            batch = [self._queue.popleft() for _ in range(min(self.max_size, len(self._queue)))]
            batch = [w for w in batch if not w.future.cancelled()]
            if not batch:
                continue
            # The batch call runs in the first waiting caller's context (its trace).
            task = asyncio.get_running_loop().create_task(
                self._send(batch), context=batch[0].context.copy()
            )
            self._in_flight += 1
            self._tasks.add(task)
            task.add_done_callback(self._sent)
        # Not due yet: a timer for the oldest (with a call out, its end restarts this).
        room = self._in_flight < self.max_in_flight
        if self._queue and self.linger and room and self._timer is None:
            self._timer = loop.call_at(self._queue[0].since + self.linger, self._lingered)

    async def _send_batch(
        self, batch: list[_Waiting[Item, Result]]
    ) -> Sequence[Result | BaseException]:
        links = [Link(w.span.get_span_context()) for w in batch if w.span.is_recording()]
        with self._tracer.start_as_current_span(
            f"{self.name} batch call",
            links=links,
            attributes={"tokenforge.batch.items": len(batch)},
        ) as call:
            here = call.get_span_context()
            named: dict[str, str | int] = {
                "tokenforge.batch.trace_id": f"{here.trace_id:032x}",
                "tokenforge.batch.span_id": f"{here.span_id:016x}",
                "tokenforge.batch.items": len(batch),
            }
            for waiting in batch:
                if waiting.span.is_recording():  # a request already answered is left be
                    waiting.span.add_event("tokenforge.batched", named)
            return await self._send_many([w.item for w in batch])

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._in_flight -= 1
        self._tasks.discard(task)
        self._start_sender()

    async def _send(self, batch: list[_Waiting[Item, Result]]) -> None:
        self.calls += 1
        self._sizes.observe(len(batch))
        try:
            if len(batch) == 1:
                outcomes: Sequence[Result | BaseException] = [
                    await _outcome(self._send_one(batch[0].item))
                ]
            else:
                self.batched_items += len(batch)
                try:
                    outcomes = await self._send_batch(batch)
                except Exception as error:
                    if not batch_call_unknown(error):
                        raise
                    outcomes = await self._one_by_one(batch, error)
                if len(outcomes) != len(batch):
                    raise RuntimeError(
                        f"a batch of {len(batch)} was answered with {len(outcomes)} outcomes"
                    )
        except Exception as error:  # noqa: BLE001 - the batch call failed: every item did
            outcomes = [error] * len(batch)
        for waiting, outcome in zip(batch, outcomes, strict=True):
            if waiting.future.done():
                continue  # its caller went away (cancelled); the answer is dropped
            if isinstance(outcome, BaseException):
                waiting.future.set_exception(outcome)
            else:
                waiting.future.set_result(outcome)

    async def _one_by_one(
        self, batch: list[_Waiting[Item, Result]], error: BaseException
    ) -> list[Result | BaseException]:
        self._alone_until = asyncio.get_running_loop().time() + UNSUPPORTED_PAUSE_S
        log.warning(
            "%s: the service does not offer the batch call (%s); items go alone for %.0f s",
            self.name,
            error,
            UNSUPPORTED_PAUSE_S,
        )
        return list(await asyncio.gather(*(_outcome(self._send_one(w.item)) for w in batch)))


async def _outcome(call: Awaitable[Result]) -> Result | BaseException:
    try:
        return await call
    except Exception as error:  # noqa: BLE001 - handed to the item's caller
        return error

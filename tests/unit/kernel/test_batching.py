"""Smart batching: alone at low load, together under load, each caller its own answer."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Sequence

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from tokenforge.errors import DomainError, Reason
from tokenforge.runtime.batching import Batcher

who: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")


class Service:
    """A fake remote service: each call waits until the test opens the gate."""

    def __init__(self) -> None:
        self.ones: list[int] = []
        self.batches: list[list[int]] = []
        self.contexts: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.in_flight = 0
        self.most_in_flight = 0
        self.fail_batch: Exception | None = None
        self.short_answer = False

    async def _enter(self) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.contexts.append(who.get())
        await self.gate.wait()
        self.in_flight -= 1

    async def one(self, item: int) -> int:
        self.ones.append(item)
        await self._enter()
        if item < 0:
            raise DomainError(Reason.INVALID_ARGUMENT, f"{item} is negative")
        return item * 10

    async def many(self, items: Sequence[int]) -> Sequence[int | BaseException]:
        self.batches.append(list(items))
        await self._enter()
        if self.fail_batch is not None:
            raise self.fail_batch
        answers: list[int | BaseException] = [
            DomainError(Reason.INVALID_ARGUMENT, f"{i} is negative") if i < 0 else i * 10
            for i in items
        ]
        return answers[:-1] if self.short_answer else answers


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_call_alone_goes_out_at_once_on_the_unary_method_in_its_own_context() -> None:
    service = Service()
    batcher = Batcher(service.one, service.many)
    who.set("alice")
    assert await batcher.submit(4) == 40
    assert service.ones == [4] and service.batches == []
    assert service.contexts == ["alice"]
    assert batcher.calls == 1 and batcher.batched_items == 0


async def test_calls_arriving_while_the_service_is_busy_leave_together_each_with_its_answer() -> (
    None
):
    service = Service()
    service.gate.clear()
    batcher = Batcher(service.one, service.many, max_in_flight=1)
    first = asyncio.create_task(batcher.submit(1))
    await settle()
    rest = [asyncio.create_task(batcher.submit(i)) for i in range(2, 7)]
    await settle()
    assert service.batches == []  # they wait for the call in flight
    service.gate.set()
    assert await first == 10
    assert [await t for t in rest] == [20, 30, 40, 50, 60]
    assert service.ones == [1]
    assert service.batches == [[2, 3, 4, 5, 6]]
    assert batcher.calls == 2 and batcher.batched_items == 5


async def test_one_items_refusal_is_that_callers_alone() -> None:
    service = Service()
    service.gate.clear()
    batcher = Batcher(service.one, service.many, max_in_flight=1)
    first = asyncio.create_task(batcher.submit(1))
    await settle()
    good = asyncio.create_task(batcher.submit(2))
    bad = asyncio.create_task(batcher.submit(-3))
    await settle()
    service.gate.set()
    assert await first == 10
    assert await good == 20
    with pytest.raises(DomainError) as refused:
        await bad
    assert refused.value.reason is Reason.INVALID_ARGUMENT
    assert "-3" in refused.value.message


async def test_a_failed_batch_call_fails_every_item_in_it_and_the_next_batch_still_goes() -> None:
    service = Service()
    service.gate.clear()
    batcher = Batcher(service.one, service.many, max_in_flight=1)
    first = asyncio.create_task(batcher.submit(1))
    await settle()
    doomed = [asyncio.create_task(batcher.submit(i)) for i in (2, 3)]
    await settle()
    service.fail_batch = DomainError(Reason.SERVICE_UNAVAILABLE, "down")
    service.gate.set()
    await first
    for task in doomed:
        with pytest.raises(DomainError) as failed:
            await task
        assert failed.value.reason is Reason.SERVICE_UNAVAILABLE
    service.fail_batch = None
    assert await batcher.submit(7) == 70


async def test_an_answer_of_the_wrong_length_is_an_error_for_every_item_not_a_mix_up() -> None:
    service = Service()
    service.gate.clear()
    service.short_answer = True
    batcher = Batcher(service.one, service.many, max_in_flight=1)
    first = asyncio.create_task(batcher.submit(1))
    await settle()
    rest = [asyncio.create_task(batcher.submit(i)) for i in (2, 3, 4)]
    await settle()
    service.gate.set()
    await first
    for task in rest:
        with pytest.raises(RuntimeError, match="batch of 3 was answered with 2"):
            await task


async def test_batches_respect_the_size_cap_and_the_in_flight_cap() -> None:
    service = Service()
    service.gate.clear()
    batcher = Batcher(service.one, service.many, max_size=4, max_in_flight=2)
    tasks = [asyncio.create_task(batcher.submit(i)) for i in range(20)]
    await settle()
    assert service.in_flight == 2  # two alone; the other 18 wait
    service.gate.set()
    assert [await t for t in tasks] == [i * 10 for i in range(20)]
    assert service.most_in_flight == 2
    assert all(len(b) <= 4 for b in service.batches)
    sent = sorted(service.ones + [i for b in service.batches for i in b])
    assert sent == list(range(20))  # every item exactly once


async def test_a_batch_runs_in_the_context_of_its_first_caller() -> None:
    service = Service()
    service.gate.clear()
    batcher = Batcher(service.one, service.many, max_in_flight=1)

    async def as_(name: str, item: int) -> int:
        who.set(name)
        return await batcher.submit(item)

    first = asyncio.create_task(as_("first", 1))
    await settle()
    second = asyncio.create_task(as_("second", 2))
    third = asyncio.create_task(as_("third", 3))
    await settle()
    service.gate.set()
    assert (await first, await second, await third) == (10, 20, 30)
    assert service.contexts == ["first", "second"]


async def test_a_caller_that_goes_away_does_not_disturb_the_others() -> None:
    service = Service()
    service.gate.clear()
    batcher = Batcher(service.one, service.many, max_in_flight=1)
    first = asyncio.create_task(batcher.submit(1))
    await settle()
    gone = asyncio.create_task(batcher.submit(2))
    stays = asyncio.create_task(batcher.submit(3))
    await settle()
    gone.cancel()
    await settle()
    service.gate.set()
    assert await first == 10
    assert await stays == 30
    assert gone.cancelled()
    assert service.batches == [] and service.ones == [1, 3]  # the cancelled item never left


async def test_without_batching_every_item_goes_alone_at_once() -> None:
    service = Service()
    service.gate.clear()
    batcher = Batcher(service.one, service.many, max_in_flight=1, batching=False)
    tasks = [asyncio.create_task(batcher.submit(i)) for i in range(5)]
    await settle()
    assert service.in_flight == 5  # none waits for another
    service.gate.set()
    assert [await t for t in tasks] == [0, 10, 20, 30, 40]
    assert service.batches == [] and service.ones == [0, 1, 2, 3, 4]
    assert batcher.calls == 5 and batcher.batched_items == 0


def test_caps_below_one_are_refused() -> None:
    service = Service()
    with pytest.raises(ValueError, match="at least 1"):
        Batcher(service.one, service.many, max_size=0)


async def test_items_per_call_are_a_metric_of_the_call() -> None:
    def sample(suffix: str) -> float:
        found = REGISTRY.get_sample_value(
            f"tokenforge_client_batch_items_{suffix}", {"call": "test.items"}
        )
        return found or 0.0

    before = sample("count"), sample("sum")
    service = Service()
    service.gate.clear()
    batcher = Batcher(service.one, service.many, max_in_flight=1, name="test.items")
    first = asyncio.create_task(batcher.submit(1))
    await settle()
    rest = [asyncio.create_task(batcher.submit(i)) for i in (2, 3, 4)]
    await settle()
    service.gate.set()
    await first
    await asyncio.gather(*rest)
    assert (sample("count"), sample("sum")) == (before[0] + 2, before[1] + 4)


async def test_each_waiting_request_span_names_the_batch_call_that_carried_it() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    service = Service()
    service.gate.clear()
    batcher = Batcher(service.one, service.many, max_in_flight=1, name="test.traced", tracer=tracer)

    async def request(item: int) -> int:
        with tracer.start_as_current_span(f"request {item}"):
            return await batcher.submit(item)

    first = asyncio.create_task(request(1))
    await settle()
    rest = [asyncio.create_task(request(i)) for i in (2, 3)]
    await settle()
    service.gate.set()
    assert [await first, *[await t for t in rest]] == [10, 20, 30]

    spans = {s.name: s for s in exporter.get_finished_spans()}
    call = spans["test.traced batch call"]
    waiters = [spans["request 2"], spans["request 3"]]
    for span in waiters:
        [event] = [e for e in span.events if e.name == "tokenforge.batched"]
        attributes = dict(event.attributes or {})
        assert attributes["tokenforge.batch.span_id"] == f"{call.context.span_id:016x}"
        assert attributes["tokenforge.batch.trace_id"] == f"{call.context.trace_id:032x}"
        assert attributes["tokenforge.batch.items"] == 2
    assert not [e for e in spans["request 1"].events if e.name == "tokenforge.batched"]
    # The call is linked to both waiters' spans and runs in the first waiter's trace.
    assert {link.context.span_id for link in call.links} == {s.context.span_id for s in waiters}
    assert call.context.trace_id == spans["request 2"].context.trace_id
    assert call.parent is not None and call.parent.span_id == spans["request 2"].context.span_id


async def test_with_linger_an_item_waits_for_others_and_they_leave_together() -> None:
    service = Service()
    batcher = Batcher(service.one, service.many, max_size=64, linger=0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    first = asyncio.ensure_future(batcher.submit(1))
    await asyncio.sleep(0)
    assert service.ones == [] and service.batches == []  # nothing left at once
    later = [asyncio.ensure_future(batcher.submit(n)) for n in (2, 3)]
    assert await first == 10
    assert [await f for f in later] == [20, 30]
    assert service.batches == [[1, 2, 3]] and service.ones == []
    assert loop.time() - started >= 0.05  # the oldest item lingered its time
    assert batcher.calls == 1


async def test_with_linger_a_full_batch_leaves_without_waiting_out_the_linger() -> None:
    service = Service()
    batcher = Batcher(service.one, service.many, max_size=4, linger=60.0)
    answers = await asyncio.wait_for(
        asyncio.gather(*(batcher.submit(n) for n in range(8))), timeout=5
    )
    assert answers == [n * 10 for n in range(8)]
    assert service.batches == [[0, 1, 2, 3], [4, 5, 6, 7]]


async def test_with_linger_items_arriving_during_a_call_linger_after_it() -> None:
    service = Service()
    service.gate.clear()
    batcher = Batcher(service.one, service.many, max_size=64, linger=0.02)
    first = asyncio.ensure_future(batcher.submit(1))
    while not service.ones:  # the lone first item left after lingering
        await asyncio.sleep(0.005)
    second = [asyncio.ensure_future(batcher.submit(n)) for n in (2, 3)]
    await asyncio.sleep(0.05)  # past their linger, but a call is out (one in flight)
    assert service.batches == []
    service.gate.set()
    assert await first == 10 and [await f for f in second] == [20, 30]
    assert service.batches == [[2, 3]]


def test_a_negative_linger_is_refused() -> None:
    service = Service()
    with pytest.raises(ValueError, match="linger"):
        Batcher(service.one, service.many, linger=-1)


async def one_then_a_batch(
    batcher: Batcher[int, int], service: Service, first: int, others: list[int]
) -> list[int | BaseException]:
    """`first` goes alone and is held at the service; `others` queue behind it and
    leave as one batch when it comes back. Every answer, in order."""
    service.gate.clear()
    alone = asyncio.ensure_future(batcher.submit(first))
    await asyncio.sleep(0)
    queued = [asyncio.ensure_future(batcher.submit(n)) for n in others]
    await asyncio.sleep(0)
    service.gate.set()
    return list(await asyncio.gather(alone, *queued, return_exceptions=True))


async def test_a_batch_call_the_service_does_not_offer_falls_back_to_items_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A rolling upgrade: the service runs a version without the batch call. Nothing
    fails: the batch's items go one by one, then items go alone for a while, and then
    a batch is tried again."""
    from tokenforge.runtime import batching

    monkeypatch.setattr(batching, "UNSUPPORTED_PAUSE_S", 0.2)
    service = Service()
    service.fail_batch = DomainError(
        Reason.INTERNAL, "no such method", {"grpc_code": "UNIMPLEMENTED"}
    )
    batcher = Batcher(service.one, service.many, max_size=64)
    answers = await one_then_a_batch(batcher, service, 1, [2, 3, -4])
    assert answers[:3] == [10, 20, 30]
    assert isinstance(answers[3], DomainError) and "negative" in answers[3].message
    assert service.batches == [[2, 3, -4]] and sorted(service.ones) == [-4, 1, 2, 3]

    # Meanwhile, concurrent items go alone at once: no batch call is tried.
    assert await asyncio.gather(*(batcher.submit(n) for n in (5, 6))) == [50, 60]
    assert service.batches == [[2, 3, -4]]

    await asyncio.sleep(0.25)  # the pause is over: a batch is tried again
    service.fail_batch = None
    assert await one_then_a_batch(batcher, service, 7, [8, 9]) == [70, 80, 90]
    assert service.batches[-1] == [8, 9]


async def test_any_other_failure_of_a_batch_call_is_every_items_error() -> None:
    service = Service()
    service.fail_batch = DomainError(Reason.INTERNAL, "the wallet failed")
    batcher = Batcher(service.one, service.many, max_size=64)
    answers = await one_then_a_batch(batcher, service, 1, [2, 3])
    assert answers[0] == 10
    assert all(isinstance(a, DomainError) and a.message == "the wallet failed" for a in answers[1:])
    assert service.ones == [1]  # nothing retried alone


async def test_same_turn_items_submitted_together_leave_in_one_call() -> None:
    service = Service()
    batcher = Batcher(service.one, service.many, max_size=64, same_turn=True)
    # Tasks started together, as the relay's round starts one per queued finish.
    tasks = [asyncio.ensure_future(batcher.submit(n)) for n in range(1, 6)]
    assert await asyncio.gather(*tasks) == [10, 20, 30, 40, 50]
    assert service.batches == [[1, 2, 3, 4, 5]] and service.ones == []
    assert batcher.calls == 1


async def test_same_turn_a_lone_item_goes_on_the_unary_call_a_turn_later() -> None:
    service = Service()
    batcher = Batcher(service.one, service.many, max_size=64, same_turn=True)
    first = asyncio.ensure_future(batcher.submit(7))
    await asyncio.sleep(0)  # the submitting task's turn
    assert service.ones == [] and service.batches == []  # not at once
    assert await first == 70
    assert service.ones == [7] and service.batches == []


async def test_same_turn_items_of_a_later_turn_wait_for_the_call_out() -> None:
    service = Service()
    service.gate.clear()
    batcher = Batcher(service.one, service.many, max_size=64, same_turn=True)
    first = [asyncio.ensure_future(batcher.submit(n)) for n in (1, 2)]
    while not service.batches:
        await asyncio.sleep(0)
    later = [asyncio.ensure_future(batcher.submit(n)) for n in (3, 4, 5)]
    await asyncio.sleep(0.01)
    assert service.batches == [[1, 2]]  # one call in flight: the later turn waits
    service.gate.set()
    assert [await f for f in first + later] == [10, 20, 30, 40, 50]
    assert service.batches == [[1, 2], [3, 4, 5]] and service.ones == []


async def test_same_turn_a_full_batch_leaves_without_waiting_for_the_turn() -> None:
    service = Service()
    batcher = Batcher(service.one, service.many, max_size=3, same_turn=True)
    answers = await asyncio.gather(*(batcher.submit(n) for n in range(7)))
    assert answers == [n * 10 for n in range(7)]
    assert service.batches == [[0, 1, 2], [3, 4, 5]] and service.ones == [6]

"""While nothing exports spans, none is recorded, but every span keeps its ids: the
trace a receipt, an answer's `x-trace-id` and the calls between services name is the
same (tokenforge/runtime/telemetry.py `WhileExported`)."""

from __future__ import annotations

from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased

from tokenforge.runtime.telemetry import WhileExported, context_of, current_traceparent


def provider_with(sampler: WhileExported) -> tuple[TracerProvider, InMemorySpanExporter]:
    provider = TracerProvider(sampler=sampler, shutdown_on_exit=False)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def test_nothing_is_recorded_until_spans_are_exported_and_the_ids_are_kept() -> None:
    sampler = WhileExported(TracerProvider(shutdown_on_exit=False).sampler)
    provider, exporter = provider_with(sampler)
    tracer = provider.get_tracer("test")

    with tracer.start_as_current_span("request", attributes={"a": 1}) as request:
        assert not request.is_recording()
        ids = request.get_span_context()
        assert ids.is_valid and not ids.trace_flags.sampled
        with tracer.start_as_current_span("call") as call:
            assert call.get_span_context().trace_id == ids.trace_id
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            assert current_traceparent() == carrier["traceparent"]  # written alike
    # What the next service (or a queued finish) receives names the same trace.
    assert carrier["traceparent"].split("-")[1] == format(ids.trace_id, "032x")
    assert int(carrier["traceparent"].split("-")[3], 16) & 1 == 0  # not sampled
    later = tracer.start_span("relay", context=context_of(carrier["traceparent"]))
    assert later.get_span_context().trace_id == ids.trace_id
    later.end()
    assert exporter.get_finished_spans() == ()

    sampler.exporting = True
    with tracer.start_as_current_span("request") as request:
        assert request.is_recording() and request.get_span_context().trace_flags.sampled
    assert [s.name for s in exporter.get_finished_spans()] == ["request"]


def test_once_exported_the_configured_sampler_decides() -> None:
    sampler = WhileExported(ParentBased(ALWAYS_OFF))
    sampler.exporting = True
    provider, exporter = provider_with(sampler)
    with provider.get_tracer("test").start_as_current_span("request") as request:
        assert not request.is_recording() and request.get_span_context().is_valid
    assert exporter.get_finished_spans() == ()
    assert sampler.get_description().startswith("WhileExported{ParentBased{root:AlwaysOff")
    assert trace.get_current_span() is not request

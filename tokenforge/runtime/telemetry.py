"""OpenTelemetry set-up, configured only by the standard OTEL_* variables.

Spans are exported over OTLP/gRPC when OTEL_EXPORTER_OTLP_ENDPOINT (or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set, and nowhere otherwise: without it no
exporter is configured at all. OTEL_TRACES_EXPORTER picks another: `console` prints
spans as JSON on stdout (handy with `tokenforge dev`, whose logs are in the state dir),
`none` exports nothing; `otlp` (the default) needs the endpoint. Tests add an in-memory
exporter with `add_span_processor`.

While nothing exports, nothing is recorded (`WhileExported`): every span still gets its
trace and span ids, so receipts, `x-trace-id`, logs and the calls between services name
the request's trace as before, but no span object, attribute or event is built for
nobody to read (measured: docs/PERFORMANCE.md). Once an exporter or a processor is in
place, the sampler the OTEL_TRACES_SAMPLER variables configure decides (by default every
span, following its parent's decision).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

_provider: TracerProvider | None = None


class WhileExported(Sampler):
    """The configured sampler while spans go somewhere (`exporting`); until then every
    span is dropped: not recorded, its ids kept and passed on (unsampled)."""

    def __init__(self, configured: Sampler) -> None:
        self.configured = configured
        self.exporting = False

    def should_sample(
        self,
        parent_context: otel_context.Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if self.exporting:
            return self.configured.should_sample(
                parent_context, trace_id, name, kind, attributes, links, trace_state
            )
        parent = trace.get_current_span(parent_context).get_span_context()
        return SamplingResult(Decision.DROP, None, parent.trace_state if parent.is_valid else None)

    def get_description(self) -> str:
        return f"WhileExported{{{self.configured.get_description()}}}"


def span_exporter() -> SpanExporter | None:
    """The exporter the OTEL_* variables ask for, or None (export nothing)."""
    names = {n.strip().lower() for n in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")}
    if "console" in names:
        return ConsoleSpanExporter()
    if "otlp" in names and (
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    return None


def setup_telemetry(service_name: str) -> TracerProvider:
    """Install the tracer provider once per process (later calls return it)."""
    global _provider
    if _provider is not None:
        return _provider
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)})
    # The sampler the OTEL_TRACES_SAMPLER variables configure, as the SDK reads them.
    sampler = WhileExported(TracerProvider(shutdown_on_exit=False).sampler)
    provider = TracerProvider(resource=resource, sampler=sampler)
    exporter = span_exporter()
    sampler.exporting = exporter is not None
    if isinstance(exporter, ConsoleSpanExporter):
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _provider = provider
    return provider


def add_span_processor(processor: SpanProcessor) -> None:
    provider = setup_telemetry("tokenforge")
    provider.add_span_processor(processor)
    if isinstance(provider.sampler, WhileExported):
        provider.sampler.exporting = True


def exporting() -> bool:
    """Whether spans go anywhere: an exporter or a processor is in place, or the tracer
    provider is not ours (a test's, or none set up: then as the provider decides)."""
    sampler = _provider.sampler if _provider is not None else None
    return not isinstance(sampler, WhileExported) or sampler.exporting


def current_trace_id() -> str:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


def traceparent_of(ids: trace.SpanContext) -> str:
    """`ids` as a W3C `traceparent`, as the propagator writes it ("" when not valid)."""
    if not ids.is_valid:
        return ""
    return f"00-{ids.trace_id:032x}-{ids.span_id:016x}-{ids.trace_flags:02x}"


def current_traceparent() -> str:
    """The current span as a W3C `traceparent` ("" outside any span), to be stored
    with work done later on the request's behalf (a queued finish), or sent on."""
    return traceparent_of(trace.get_current_span().get_span_context())


def context_of(traceparent: str) -> otel_context.Context:
    """The context whose span is the one `traceparent` names (a fresh one for "")."""
    return propagate.extract({"traceparent": traceparent} if traceparent else {})

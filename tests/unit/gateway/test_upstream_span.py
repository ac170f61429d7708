"""The upstream call's CLIENT span: a child of the request's span, named upstream in
the `traceparent` header, ended when the call's block ends, and never the current
span (a connection opened during the call would keep it in memory for as long as the
connection lives: a whole stream)."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.gateway.adapters.upstream import answered, upstream_span
from tokenforge.runtime.telemetry import add_span_processor


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def test_the_client_span_is_named_upstream_and_never_current(
    spans: InMemorySpanExporter,
) -> None:
    tracer = trace.get_tracer(__name__)
    headers: dict[str, str] = {}
    with tracer.start_as_current_span("request") as request:
        with upstream_span("http://127.0.0.1:9/v1/chat/completions", headers) as client:
            assert trace.get_current_span() is request
            answered(client, 200)
        assert trace.get_current_span() is request
    [ended] = [s for s in spans.get_finished_spans() if s.context.span_id == client.context.span_id]
    assert ended.kind is trace.SpanKind.CLIENT
    assert ended.parent is not None and ended.parent.span_id == request.get_span_context().span_id
    assert ended.attributes is not None
    assert ended.attributes["server.port"] == 9
    assert ended.attributes["http.response.status_code"] == 200
    _, trace_id, parent_id, _ = headers["traceparent"].split("-")
    assert int(trace_id, 16) == request.get_span_context().trace_id
    assert int(parent_id, 16) == client.context.span_id


def test_a_failure_inside_the_call_ends_the_span_in_error(spans: InMemorySpanExporter) -> None:
    headers: dict[str, str] = {}
    with pytest.raises(RuntimeError), upstream_span("http://upstream/v1/x", headers) as client:
        raise RuntimeError("broken")
    [ended] = [s for s in spans.get_finished_spans() if s.context.span_id == client.context.span_id]
    assert ended.status.status_code is trace.StatusCode.ERROR
    assert ended.status.description == "RuntimeError: broken"


def test_while_nothing_exports_the_upstream_is_named_the_requests_own_span(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("services.gateway.adapters.upstream.exporting", lambda: False)
    before = len(spans.get_finished_spans())
    headers: dict[str, str] = {}
    with trace.get_tracer(__name__).start_as_current_span("request") as request:
        with upstream_span("http://127.0.0.1:9/v1/chat/completions", headers) as client:
            answered(client, 503)  # goes nowhere
            assert not client.is_recording()
    ids = request.get_span_context()
    flags = f"{ids.trace_flags:02x}"
    assert headers["traceparent"] == f"00-{ids.trace_id:032x}-{ids.span_id:016x}-{flags}"
    assert [s.name for s in spans.get_finished_spans()[before:]] == ["request"]
    outside: dict[str, str] = {}
    with upstream_span("http://127.0.0.1:9/v1/chat/completions", outside):
        pass
    assert outside == {}  # no span, no header

"""`tokenforge serve` exports its spans over OTLP/gRPC when OTEL_EXPORTER_OTLP_ENDPOINT
names a collector: here a tiny collector in the test (the TraceService servicer of
opentelemetry-proto) and a real `tokenforge serve routing` process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from apps.admin import health_status
from tests.databases import new_database
from tokenforge.generated.routing.v1 import routing_pb2, routing_pb2_grpc
from tokenforge.runtime.embedded import free_port
from tokenforge.runtime.grpc_client import Peer
from tokenforge.runtime.service import load

INTERNAL = "otlp-internal-token"


class Collector(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    async def Export(  # noqa: N802 - the generated servicer's name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: object
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[tuple[str, str, dict[str, str]]]:
        """(service.name, span name, string attributes) of every exported span."""
        found = []
        for request in self.requests:
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        attributes = {a.key: a.value.string_value for a in span.attributes}
                        found.append((resource.get("service.name", ""), span.name, attributes))
        return found


@pytest.fixture
async def collector() -> AsyncIterator[tuple[Collector, int]]:
    server = grpc.aio.server()
    servicer = Collector()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield servicer, port
    finally:
        await server.stop(0)


async def test_serve_exports_its_spans_to_the_otlp_endpoint_it_is_given(
    collector: tuple[Collector, int], database_url: str
) -> None:
    received, collector_port = collector
    # Its own database: a routing process applies its catalog, which the in-process
    # e2e system (same database) would otherwise pick up.
    database_url = await new_database(database_url, "otlp")
    await asyncio.to_thread(load("routing").migrate, database_url)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TOKENFORGE_"))} | {
        "TOKENFORGE_DATABASE_URL": database_url,
        "TOKENFORGE_INTERNAL_TOKEN": INTERNAL,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector_port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "apps.cli", "serve", "routing", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    address = f"127.0.0.1:{port}"
    try:
        for _ in range(150):
            if await health_status(address, timeout=0.5) == "SERVING":
                break
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            await asyncio.sleep(0.1)
        peer = Peer("routing", address, INTERNAL)
        try:
            stub = routing_pb2_grpc.RoutingServiceStub(peer.channel)
            await peer.call(stub.ListModels, routing_pb2.ListModelsRequest(), request_id="r-otlp")
        finally:
            await peer.close()
        for _ in range(100):
            if any(name.endswith("ListModels") for _, name, _ in received.spans()):
                break
            await asyncio.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)

    spans = received.spans()
    [(service, _, attributes)] = [s for s in spans if s[1].endswith("ListModels")]
    assert service == "tokenforge-routing"
    assert attributes["rpc.method"] == "ListModels"
    assert attributes["tokenforge.request_id"] == "r-otlp"
    assert any(a.get("db.system") == "postgresql" for _, _, a in spans), "database spans too"

"""A local OTLP/gRPC trace receiver for the benchmarks: accepts every export and keeps
nothing (it counts what arrived), so that a service configured with an exporter
(`OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:<port>`) pays the real cost of building,
batching, encoding and sending its spans, as it would to an OpenTelemetry Collector.

    python -m bench.otlp_sink --port 4317 --stats /tmp/sink.json

Runs until SIGTERM or SIGINT, then writes `{"exports": n, "spans": m}` to `--stats`.
Benchmark only: production sends spans to a Collector (docs/OPERATIONS.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from pathlib import Path

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Sink(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.exports = 0
        self.spans = 0

    async def Export(  # noqa: N802 - the generated service's method name
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: grpc.aio.ServicerContext[
            trace_service_pb2.ExportTraceServiceRequest,
            trace_service_pb2.ExportTraceServiceResponse,
        ],
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.exports += 1
        self.spans += sum(
            len(scope.spans)
            for resource in request.resource_spans
            for scope in resource.scope_spans
        )
        return trace_service_pb2.ExportTraceServiceResponse()


async def serve(port: int, stats: Path) -> None:
    sink = Sink()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)
    stats.write_text(json.dumps({"exports": sink.exports, "spans": sink.spans}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stats", required=True, help="where to write the counts at exit")
    args = parser.parse_args()
    asyncio.run(serve(args.port, Path(args.stats)))


if __name__ == "__main__":
    main()

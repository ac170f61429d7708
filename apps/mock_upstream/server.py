"""Run the mock upstream: in-process on the current event loop (tests, `tokenforge dev`,
benchmarks) with `start()`, or as a command with `main(port)`.

    mock = await start()              # port 0: a free port
    client = openai.AsyncOpenAI(base_url=mock.url + "/v1", api_key="x")
    ...
    await mock.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import uvicorn
from starlette.applications import Starlette

from apps.mock_upstream.app import (
    DEFAULT_MODELS,
    MockUpstreamState,
    create_app,
    quiet_cut_logs,
)
from tokenforge.runtime.logging import setup_logging

log = logging.getLogger(__name__)

STOP_TIMEOUT_SECONDS = 5.0


class _InProcessServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the process that hosts it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class MockUpstream:
    """A running in-process mock upstream."""

    app: Starlette
    host: str
    port: int
    _server: uvicorn.Server
    _task: asyncio.Task[None]

    @property
    def url(self) -> str:
        """`http://127.0.0.1:<port>`; add `/v1` for an OpenAI client's base URL."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def state(self) -> MockUpstreamState:
        """The requests received and the fail-first counters (what /mock/requests shows)."""
        state: MockUpstreamState = self.app.state.mock
        return state

    async def stop(self) -> None:
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), STOP_TIMEOUT_SECONDS)
        except TimeoutError:
            self._server.force_exit = True
            await self._task
        log.info("mock upstream on port %s stopped", self.port)


async def start(
    host: str = "127.0.0.1", port: int = 0, models: Sequence[str] = DEFAULT_MODELS
) -> MockUpstream:
    """Serve the mock upstream on the running loop; returns once it accepts connections."""
    quiet_cut_logs()
    app = create_app(models)
    config = _config(app, host, port)
    config.timeout_graceful_shutdown = 1
    # Bind here so a busy port raises OSError instead of uvicorn's sys.exit in a task.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    server = _InProcessServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="mock-upstream")
    while not server.started:
        if task.done():
            sock.close()
            task.result()
            raise RuntimeError("The mock upstream stopped before it started.")
        await asyncio.sleep(0.005)
    mock = MockUpstream(app, host, sock.getsockname()[1], server, task)
    log.info("mock upstream listening on %s", mock.url)
    return mock


def main(port: int, host: str = "127.0.0.1") -> None:
    """`tokenforge mock-upstream --port N`: serve until Ctrl-C or SIGTERM."""
    setup_logging("mock-upstream")
    quiet_cut_logs()
    uvicorn.Server(_config(create_app(), host, port, log_level="info")).run()


def _config(app: Starlette, host: str, port: int, log_level: str = "warning") -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="off",
        access_log=False,
        log_config=None,
        log_level=log_level,
        http="h11",
    )

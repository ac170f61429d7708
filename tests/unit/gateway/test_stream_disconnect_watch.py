"""A streamed answer is sent from the request's own task while one plain task waits
for the client's disconnect (flow/stream.py, ReservedStreamingResponse). A client that
leaves mid-stream cuts the sending short: the upstream answer is closed and the
request is finished once, for what was delivered (`client_disconnect`). A stream that
ends leaves no task behind, and a disconnect after its last byte changes nothing.
Exceptions of the body, and a cancellation that is not the client's, go on as before.
Through the app, the route hands the answer back to the request middleware, which
sends it once the route's own frames (the request object among them) have ended.

The stream is the real ChatStream (its events, its finish and abandon); the peers and
the finish queue are the unit fakes, the upstream answer a paced list of SSE lines."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI, Request
from starlette.types import Message

from services.gateway.adapters.upstream import Attempt
from services.gateway.flow.stream import ChatStream, ReservedStreamingResponse
from services.gateway.transport.http import create_app
from tests.unit.gateway.fakes import PacedUpstream, Queue, RecordingUsage, peers_with
from tests.unit.gateway.test_finish_waits import Routing, prepared
from tokenforge.generated.usage.v1 import usage_pb2

SCOPE: dict[str, Any] = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}}


class Client:
    """The server side of one HTTP exchange as uvicorn gives it to the app: `receive`
    waits until the client leaves (or answers `http.disconnect` at once once the
    response is complete); `send` keeps what was sent."""

    def __init__(
        self,
        leave_after_chunks: int | None = None,
        leave_at_end: bool = False,
        on_body: Callable[[], None] = lambda: None,
    ):
        self.on_body = on_body
        self.sent: list[Message] = []
        self.left = asyncio.Event()
        self.complete = False
        self.leave_after_chunks = leave_after_chunks
        self.leave_at_end = leave_at_end
        self.receives = 0
        # How many disconnect watchers ran at each message sent.
        self.watching: list[int] = []

    async def receive(self) -> Message:
        self.receives += 1
        if not self.complete:
            await self.left.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)
        self.watching.append(len(watchers()))
        if message["type"] == "http.response.body":
            self.on_body()
        bodies = [m for m in self.sent if m["type"] == "http.response.body" and m["body"]]
        if self.leave_after_chunks is not None and len(bodies) == self.leave_after_chunks:
            self.left.set()
        if message["type"] == "http.response.body" and not message.get("more_body"):
            if self.leave_at_end:
                # The client leaves while the last message is still being written.
                self.left.set()
                for _ in range(5):
                    await asyncio.sleep(0)
            self.complete = True

    def body(self) -> bytes:
        return b"".join(m["body"] for m in self.sent if m["type"] == "http.response.body")

    def finished(self) -> bool:
        last = self.sent[-1]
        return last["type"] == "http.response.body" and last["more_body"] is False


class CountingQueue(Queue):
    """The finish queue, counting every finish put into it."""

    def __init__(self) -> None:
        super().__init__()
        self.puts: list[str] = []

    async def put(self, request_id: str, receipt: bytes, **where: object) -> None:
        self.puts.append(request_id)
        await super().put(request_id, receipt, **where)


def a_stream(upstream: PacedUpstream) -> tuple[ChatStream, CountingQueue]:
    queue = CountingQueue()
    peers = peers_with(RecordingUsage(), queue)
    peers.__dict__["routing_client"] = Routing()
    attempts = [Attempt("ch-1", "ok", 3)]
    stream = ChatStream(peers, prepared(), upstream, attempts, {}, False)  # type: ignore[arg-type]
    return stream, queue


async def finished_receipt(stream: ChatStream, queue: Queue) -> usage_pb2.Receipt:
    """The request's finish (started by the stream or in the background), once landed."""
    finishing = stream.prepared.finishing
    assert finishing is not None, "the request was never finished"
    await asyncio.wait_for(asyncio.shield(finishing), 5)
    return usage_pb2.Receipt.FromString(queue.kept["req-1"])


def watchers() -> list[asyncio.Task[Any]]:
    """The disconnect watchers still running."""
    return [
        t
        for t in asyncio.all_tasks()
        if not t.done() and t.get_coro().__qualname__.endswith("watch_disconnect")  # type: ignore[union-attr]
    ]


async def test_a_client_that_leaves_mid_stream_cuts_it_short_and_is_charged_for_what_it_got() -> (
    None
):
    upstream = PacedUpstream(words=10, stall=3)
    stream, queue = a_stream(upstream)
    client = Client(leave_after_chunks=3)
    await asyncio.wait_for(
        ReservedStreamingResponse(stream)(SCOPE, client.receive, client.send), 5
    )  # the client's leaving ends the answer: no error
    assert upstream.cancelled_while_reading  # the sending was cut, not run to its end
    assert upstream.closed >= 1  # the upstream answer is closed
    assert client.body().count(b"data: ") == 3 and not client.finished()
    receipt = await finished_receipt(stream, queue)
    assert receipt.settlement_rule == "client_disconnect"
    assert receipt.error_code == "client_disconnected"
    assert receipt.completion_tokens > 0  # charged for the three chunks it got
    await asyncio.sleep(0.05)  # a second finish, had one been started, would be queued by now
    assert queue.puts == ["req-1"]  # finished once
    assert watchers() == [] and set(client.watching) == {1}  # one, then gone


async def test_a_stream_that_ends_leaves_no_task_behind() -> None:
    upstream = PacedUpstream(words=4)
    stream, queue = a_stream(upstream)
    client = Client()
    await ReservedStreamingResponse(stream)(SCOPE, client.receive, client.send)
    assert watchers() == [] and set(client.watching) == {1}  # cancelled and awaited
    assert client.receives == 1 and client.finished()
    assert client.sent[0]["type"] == "http.response.start"
    assert client.body().endswith(b"data: [DONE]\n\n")
    receipt = await finished_receipt(stream, queue)
    assert receipt.settlement_rule == "finished_without_usage" and receipt.error_code == ""
    assert upstream.closed >= 1


async def test_a_disconnect_while_the_last_byte_is_written_changes_nothing() -> None:
    upstream = PacedUpstream(words=4)
    stream, queue = a_stream(upstream)
    client = Client(leave_at_end=True)
    task = asyncio.current_task()
    assert task is not None
    await ReservedStreamingResponse(stream)(SCOPE, client.receive, client.send)
    assert client.finished() and client.body().endswith(b"data: [DONE]\n\n")
    assert task.cancelling() == 0  # nothing cancelled the request's task
    receipt = await finished_receipt(stream, queue)
    assert receipt.settlement_rule == "finished_without_usage" and receipt.error_code == ""
    await asyncio.sleep(0)  # a cancellation left pending would be raised here


async def test_an_error_of_the_body_goes_on_out_and_the_stream_is_abandoned() -> None:
    upstream = PacedUpstream(words=3, fail=RuntimeError("a bug in a translator"))
    stream, queue = a_stream(upstream)
    client = Client()
    with pytest.raises(RuntimeError, match="a bug in a translator"):
        await ReservedStreamingResponse(stream)(SCOPE, client.receive, client.send)
    assert watchers() == [] and upstream.closed >= 1
    receipt = await finished_receipt(stream, queue)
    assert receipt.settlement_rule == "client_disconnect"  # abandoned: what was generated


async def test_a_cancellation_that_is_not_the_clients_goes_on_out() -> None:
    """A server stopping cancels the request's task: the answer does not swallow it."""
    upstream = PacedUpstream(words=10, stall=2)
    stream, queue = a_stream(upstream)
    client = Client()
    answer = asyncio.create_task(
        ReservedStreamingResponse(stream)(SCOPE, client.receive, client.send)
    )
    while client.body().count(b"data: ") < 2:
        await asyncio.sleep(0)
    answer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await answer
    assert upstream.cancelled_while_reading and upstream.closed >= 1
    assert watchers() == []
    receipt = await finished_receipt(stream, queue)
    assert receipt.settlement_rule == "client_disconnect"


class Streamed:
    """The gateway's app with one more route that answers `stream`, keeping a weak
    reference to its request and noting, at each body message sent, whether the
    request object still lives."""

    def __init__(self, stream: ChatStream) -> None:
        self.app: FastAPI = create_app(None, None)  # type: ignore[arg-type]
        self.request: weakref.ref[Request] | None = None
        self.request_alive: list[bool] = []
        self.scope: dict[str, Any] = {}
        self.scope_keys: list[set[str]] = []

        async def streamed(request: Request) -> ReservedStreamingResponse:
            self.request = weakref.ref(request)
            return ReservedStreamingResponse(stream)

        self.app.add_api_route("/streamed", streamed, methods=["POST"])

    def note(self) -> None:
        if not self.request_alive:
            # Once, at the first body message: a full collection is slow in a process
            # that ran the whole suite, and a dead weak reference stays dead.
            gc.collect()
        self.request_alive.append(self.request is not None and self.request() is not None)
        self.scope_keys.append(set(self.scope))

    async def answer(self, client: Client) -> None:
        self.scope = scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/streamed",
            "raw_path": b"/streamed",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"application/json")],
            "client": ("127.0.0.1", 5000),
            "server": ("gateway", 80),
        }
        await asyncio.wait_for(self.app(scope, client.receive, client.send), 30)


async def test_through_the_app_the_stream_is_sent_after_the_route_returned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream = PacedUpstream(words=4)
    stream, queue = a_stream(upstream)
    streamed = Streamed(stream)
    client = Client(on_body=streamed.note)
    with caplog.at_level("INFO", logger="services.gateway.transport.http"):
        await streamed.answer(client)
    assert streamed.request_alive and not any(streamed.request_alive)  # gone while sending
    stacks = {"fastapi_middleware_astack", "fastapi_inner_astack", "fastapi_function_astack"}
    assert all("route" in keys and not keys & stacks for keys in streamed.scope_keys)
    start = client.sent[0]
    assert start["type"] == "http.response.start" and start["status"] == 200
    assert any(name == b"x-request-id" for name, _ in start["headers"])  # the middleware's
    assert client.finished() and client.body().endswith(b"data: [DONE]\n\n")
    assert watchers() == [] and set(client.watching) == {1}
    receipt = await finished_receipt(stream, queue)
    assert receipt.settlement_rule == "finished_without_usage"
    assert any("/streamed -> 200" in m for m in caplog.messages)


async def test_through_the_app_a_client_that_leaves_mid_stream_is_settled_for_what_it_got(
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream = PacedUpstream(words=10, stall=3)
    stream, queue = a_stream(upstream)
    streamed = Streamed(stream)
    client = Client(leave_after_chunks=3)
    with caplog.at_level("INFO"):
        await streamed.answer(client)
    assert upstream.cancelled_while_reading and upstream.closed >= 1
    assert client.body().count(b"data: ") == 3 and not client.finished()
    receipt = await finished_receipt(stream, queue)
    assert receipt.settlement_rule == "client_disconnect"
    assert receipt.error_code == "client_disconnected"
    assert "unexpected error" not in caplog.text and "Traceback" not in caplog.text
    assert watchers() == []


async def test_through_the_app_an_error_of_the_body_is_logged_and_cuts_the_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As before the answer was sent by the middleware: the error is logged with its
    request id and goes on out (the server closes the connection)."""
    upstream = PacedUpstream(words=3, fail=RuntimeError("a bug in a translator"))
    stream, queue = a_stream(upstream)
    client = Client()
    with caplog.at_level("INFO"), pytest.raises(RuntimeError, match="a bug in a translator"):
        await Streamed(stream).answer(client)
    assert "unexpected error (request " in caplog.text
    assert not client.finished() and upstream.closed >= 1
    receipt = await finished_receipt(stream, queue)
    assert receipt.settlement_rule == "client_disconnect"

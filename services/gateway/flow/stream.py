"""A streamed chat completion, as its stages: admit -> reserve -> call (until the first
byte: backups and other routes) -> pass the chunks through -> finish at the end.

Whatever ends it, its reservation ends once: at the upstream's end (the final chunk
then names the charge), or, when the client goes away at any moment (before the first
byte, mid-stream, after the finish chunk, while the finish is being queued), by
`abandon` in the background: charged for what was generated (`partial`). A finish
already started is never cut short by the client leaving (flow/finish.py), and
`ReservedStreamingResponse` ends the reservation even when the response never started
to iterate the stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi.responses import StreamingResponse
from opentelemetry import trace
from starlette.types import Receive, Scope, Send

from services.gateway import metrics
from services.gateway.adapters.peers import Peers
from services.gateway.adapters.upstream import Attempt, Upstream
from services.gateway.adapters.upstream_stream import STREAM_ERRORS, UpstreamStream
from services.gateway.domain.commands import ChatCommand
from services.gateway.domain.planning import Usage, counted_usage, usage_from_response
from services.gateway.domain.settlement import Rule
from services.gateway.flow.admit import CHAT, admit
from services.gateway.flow.call import call_stream, failure_rule, upstream_failed
from services.gateway.flow.finish import (
    abandon,
    annotate_span,
    end_in_doubt,
    ended_by,
    finish,
    new_receipt,
)
from services.gateway.flow.reserve import HoldInDoubt, Prepared, reserve
from services.gateway.presenting import cost_fields, receipt_headers, receipt_json
from tokenforge.errors import DomainError, openai_error_body

log = logging.getLogger("tokenforge.gateway.stream")

# The request scope's list in which the request middleware (transport/http/middleware.py)
# takes a streamed answer to send itself, after the route returned.
SEND_LATER = "tokenforge.send_later"


@dataclass
class ChatStream:
    """An open upstream stream, passed through chunk by chunk, finished at its end."""

    peers: Peers
    prepared: Prepared
    response: UpstreamStream
    attempts: list[Attempt]
    headers: dict[str, str]
    client_wants_usage: bool
    opened_at: float = field(default_factory=time.monotonic)
    # The HTTP request's span (current when the stream opens), annotated at the end.
    span: trace.Span = field(default_factory=trace.get_current_span)
    # What was generated so far (for a client that goes away).
    usage: Usage | None = None
    # The upstream's usage-only chunk, passed on (with the charge) at the end.
    usage_chunk: dict[str, Any] | None = None
    content_chunks: int = 0

    def abandon(self) -> None:
        """The client went away (or the response ended without the stream's end):
        finish for what was generated, unless a finish already started."""
        abandon(
            self.peers,
            self.prepared,
            self.attempts,
            Rule.CLIENT_DISCONNECT,
            self.usage,
            self.content_chunks,
            "client_disconnected",
        )

    def passed(self, data: str) -> bytes | None:
        """One upstream chunk (an SSE `data:` payload): counted, renamed to the model
        the client asked for, and the event that passes it on (None for a usage-only
        chunk, kept for the end)."""
        chunk = orjson.loads(data)
        if isinstance(chunk.get("usage"), dict):
            self.usage = usage_from_response(chunk)
            if not chunk.get("choices"):
                self.usage_chunk = chunk
                return None
        for choice in chunk.get("choices") or []:
            if (choice.get("delta") or {}).get("content"):
                if self.content_chunks == 0:
                    metrics.UPSTREAM_TTFT.labels(self.attempts[-1].channel_id).observe(
                        time.monotonic() - self.opened_at
                    )
                self.content_chunks += 1
        chunk["model"] = self.prepared.resolved.selected_model
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    async def events(self) -> AsyncIterator[bytes]:
        p = self.prepared
        done = False
        cut = False
        try:
            try:
                async for line in self.response.lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        done = True
                        break
                    event = self.passed(data)
                    # Nothing of this chunk is kept while the next is awaited (memory
                    # per open stream).
                    del line, data
                    if event is not None:
                        yield event
                        del event
            except (*STREAM_ERRORS, orjson.JSONDecodeError) as error:
                log.warning("upstream stream broke: %s", type(error).__name__)
                cut = True
            counted = counted_usage(p.cmd.body, self.content_chunks)
            if done and not cut:
                rule = Rule.FINISHED_WITH_USAGE if self.usage else Rule.FINISHED_WITHOUT_USAGE
            else:
                rule = Rule.ERROR_MID_STREAM
            try:
                receipt, charge = await finish(
                    self.peers,
                    p,
                    self.attempts,
                    rule,
                    self.usage,
                    counted,
                    "" if done and not cut else "upstream_cut",
                )
            except DomainError as pending:
                # Its finish is still being tried (a database restarting): the stream
                # ends with what it will be charged and where the receipt will be.
                yield b"data: " + orjson.dumps(openai_error_body(pending)) + b"\n\n"
                yield b"data: [DONE]\n\n"
                return
            annotate_span(self.span, receipt, "chat")
            if self.client_wants_usage:
                charged = receipt.prompt_tokens, receipt.completion_tokens
                final = self.usage_chunk or {
                    "id": f"chatcmpl-{p.cmd.request_id}",
                    "object": "chat.completion.chunk",
                    "choices": [],
                }
                final["model"] = receipt.selected_model
                final["usage"] = {
                    "prompt_tokens": charged[0],
                    "completion_tokens": charged[1],
                    "total_tokens": charged[0] + charged[1],
                    **(self.usage_chunk or {}).get("usage", {}),
                    **cost_fields(charge),
                }
                final["receipt"] = receipt_json(receipt)
                yield b"data: " + orjson.dumps(final) + b"\n\n"
            if cut:
                notice = {
                    "error": {
                        "message": "The upstream stream ended early; you were charged only "
                        "for what was generated.",
                        "type": "api_error",
                        "code": "upstream_cut",
                    }
                }
                yield b"data: " + orjson.dumps(notice) + b"\n\n"
            yield b"data: [DONE]\n\n"
        finally:
            self.abandon()  # nothing when the finish above started
            await self.response.close()


class ReservedStreamingResponse(StreamingResponse):
    """A streamed answer whose request's reservation ends however the response ends,
    even when the client left before the stream was first iterated.

    The body is sent from the request's own task while one plain task waits for the
    client's `http.disconnect` and, when the client leaves before the last byte was
    handed to the server, cancels the sending: the stream's `finally` then abandons it
    (charged for what was delivered). Starlette's own way (an anyio task group with a
    task for the body and one for the listener) does the same with more objects kept
    for every open stream; its other way (ASGI spec 2.4: no listener) is not safe
    with uvicorn, which drops what is sent to a gone client without a word, so a
    stream would run on to its end."""

    def __init__(
        self,
        stream: ChatStream,
        translate: Callable[[AsyncIterator[bytes]], AsyncIterator[bytes]] | None = None,
    ) -> None:
        # `translate`: a client format's events made of the chat stream's (flow/formats.py).
        events = stream.events() if translate is None else translate(stream.events())
        super().__init__(
            events,
            media_type="text/event-stream",
            headers={**stream.headers, "cache-control": "no-cache"},
        )
        self.stream = stream
        stream.headers = {}  # they are the answer's now: not kept twice for the stream's life
        # The last byte was handed to the server: a disconnect from then on changes nothing.
        self.sent_all = False
        # The client left while the body was being sent (its sending was cancelled).
        self.client_left = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        later = scope.get(SEND_LATER)
        if isinstance(later, list):
            # Sent by the request middleware once the route has returned, so that what
            # only the route needed (FastAPI's exit stacks and exception wrappers, the
            # request object and its body) is not kept for the stream's life.
            later.append(self)
            return
        await self.send_now(receive, send)

    async def send_now(self, receive: Receive, send: Send) -> None:
        """Send the answer from this task (one coroutine: each frame is kept for the
        stream's life) while `watch_disconnect` waits for the client to leave; however
        it ends, `drop`."""
        sending = asyncio.current_task()
        assert sending is not None  # an ASGI app runs in a task
        watcher = asyncio.create_task(self.watch_disconnect(receive, sending))
        try:
            try:
                headers, self.raw_headers = self.raw_headers, []  # sent: not kept
                await send(
                    {"type": "http.response.start", "status": self.status_code, "headers": headers}
                )
                del headers
                async for chunk in self.body_iterator:
                    if not isinstance(chunk, bytes | memoryview):
                        chunk = chunk.encode(self.charset)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    del chunk  # not kept while the next is awaited
                self.sent_all = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            except asyncio.CancelledError:
                # Ours (the client left) is taken back; any other cancellation goes on.
                if not self.client_left or sending.uncancel() > 0:
                    raise
            finally:
                self.sent_all = True
                watcher.cancel()
                await asyncio.wait((watcher,))
            failed = None if watcher.cancelled() else watcher.exception()
            if failed is not None:  # `receive` failed: the stream was cut short by it
                raise failed
            if self.background is not None:
                await self.background()
        finally:
            await self.drop()

    async def drop(self) -> None:
        """The answer ends (or is never sent): the request's reservation ends (nothing
        when its finish started) and the upstream answer is closed."""
        self.stream.abandon()
        if self.stream.response is not None:
            await self.stream.response.close()

    async def watch_disconnect(self, receive: Receive, sending: asyncio.Task[Any]) -> None:
        """Wait for the client's disconnect (or `receive` failing) and cut the sending
        short, unless everything was sent already."""
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
        finally:
            if not self.sent_all:
                self.client_left = True
                sending.cancel()


async def start_chat_stream(peers: Peers, upstream: Upstream, cmd: ChatCommand) -> ChatStream:
    """Admit, reserve, and open the upstream stream, moving to backup channels (and
    routes) on retryable failures while nothing has reached the client yet."""
    upstream.check_capacity()  # refused at once, before anything is reserved
    admitted = await admit(peers, cmd, CHAT)
    try:
        p = await reserve(peers, admitted)
    except HoldInDoubt as doubt:
        end_in_doubt(peers, doubt)  # made true in the background: nothing charged
        raise
    options = p.upstream_body.get("stream_options")
    client_wants_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    attempts: list[Attempt] = []
    try:
        response = await call_stream(peers, upstream, p, attempts)
        if response is None:
            code = attempts[-1].outcome if attempts else "no_channel"
            counted = counted_usage(cmd.body, 0)
            _, charged = await finish(
                peers, p, attempts, failure_rule(attempts), None, counted, code
            )
            raise upstream_failed(p, attempts, charged)
    except BaseException as failure:
        abandon(peers, p, attempts, Rule.NOT_ANSWERED, error_code=ended_by(failure))
        raise
    headers = receipt_headers(new_receipt(p, attempts), final=False)
    return ChatStream(peers, p, response, attempts, headers, client_wants_usage)

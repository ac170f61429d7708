"""The mock OpenAI-compatible upstream as a Starlette ASGI app, for dev, tests and benchmarks.

Routes, each also under a knob prefix `/knobs/<name>=<value>,.../` (see `knobs.py`):

- `POST /v1/chat/completions`: a deterministic reply (see `tokens.py`), streamed as SSE
  when `stream` is true; honours `n`, `max_tokens` / `max_completion_tokens`, `tools`,
  `stream_options.include_usage`.
- `POST /v1/messages`: Anthropic Messages (`max_tokens` required; `system`, content
  blocks, tools), streamed as Anthropic's events when `stream` is true.
- `POST /v1/responses`: OpenAI Responses (`input`, `instructions`,
  `max_output_tokens`, function tools, `text.format`), streamed as its typed events.
- Every answer honours `response_format` / `text.format` (valid JSON filling the
  schema's required fields) and calls a tool when the last user text asks to "call a
  tool"; the token-class knobs report cache reads/writes and reasoning tokens.
- `POST /v1/embeddings`: unit vectors of dimension 8 derived from SHA-256 of each input.
- `GET /v1/models`, `GET /v1/models/{model}`: the models listed (any model id is answered).

And for tests: `GET /mock/requests[?limit=N]` (the last requests received, oldest first,
with headers and JSON body), `POST /mock/reset` (forget them and the fail-first
counters), `GET /mock/health`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from apps.mock_upstream import protocols, replies
from apps.mock_upstream.knobs import KnobError, Knobs, header_knobs, parse_path_knobs

# The first three are the upstream models of the demo catalog (services/routing/catalog/demo.yaml).
DEFAULT_MODELS: tuple[str, ...] = (
    "mock-gpt-official",
    "mock-gpt-routed",
    "mock-embed",
    "mock-chat",
)
DEFAULT_HISTORY = 200
MODELS_CREATED = 1_700_000_000
KNOB_PREFIX = "/knobs/{knobs}"

Json = dict[str, Any]
Answer = Callable[[Request, object, Knobs], Awaitable[Response]]


class ConnectionCut(Exception):
    """Raised inside a response to drop the connection mid-body, as a failing upstream
    would; the in-process server hides it from the error log (see `quiet_cut_logs`)."""


class _CutFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], ConnectionCut))


_cut_filter = _CutFilter()


def quiet_cut_logs() -> None:
    """Keep uvicorn from logging a deliberate `ConnectionCut` as an application error."""
    logger = logging.getLogger("uvicorn.error")
    if _cut_filter not in logger.filters:
        logger.addFilter(_cut_filter)


class JsonResponse(Response):
    """orjson body; optionally waits `ttfb` seconds after the headers, or cuts the body."""

    media_type = "application/json"

    def __init__(
        self, content: object, status_code: int = 200, ttfb: float = 0.0, cut: bool = False
    ) -> None:
        self.ttfb = ttfb
        self.cut = cut
        super().__init__(content, status_code)

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        if self.ttfb:
            await asyncio.sleep(self.ttfb)
        if self.cut:
            raise ConnectionCut("x-mock-cut-after: connection closed before the body")
        await send({"type": "http.response.body", "body": self.body})


class EventStreamResponse(Response):
    """SSE frames with the `ttfb`/`chunk_gap` delays; stops quietly when the client leaves,
    and drops the connection after the last frame when `cut` is set."""

    media_type = "text/event-stream"

    def __init__(self, frames: Sequence[bytes], ttfb: float, chunk_gap: float, cut: bool) -> None:
        self.frames = frames if chunk_gap else [b"".join(frames)]
        self.ttfb = ttfb
        self.chunk_gap = chunk_gap
        self.cut = cut
        self.status_code = 200
        self.background = None
        self.init_headers({"cache-control": "no-cache", "x-accel-buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.Event()

        async def watch_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.create_task(watch_disconnect())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            if self.ttfb:
                await asyncio.sleep(self.ttfb)
            for position, frame in enumerate(self.frames):
                if position and self.chunk_gap:
                    await asyncio.sleep(self.chunk_gap)
                if gone.is_set():
                    return
                await send({"type": "http.response.body", "body": frame, "more_body": True})
            if self.cut:
                raise ConnectionCut("x-mock-cut-after: stream cut before its end")
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()


def error_response(status: int, body: Json, anthropic: bool = False) -> JsonResponse:
    """The error in OpenAI's shape, or in Anthropic's for /v1/messages."""
    return JsonResponse(protocols.anthropic_error(body) if anthropic else body, status)


class MockUpstreamState:
    """What the mock remembers: the last requests, and the fail-first counter per prefix."""

    def __init__(self, models: Sequence[str], history: int) -> None:
        self.models = tuple(models)
        self.requests: deque[Json] = deque(maxlen=history)
        self.fail_counts: dict[str, int] = {}

    def record(self, request: Request, prefix: str | None, body: object) -> None:
        self.requests.append(
            {
                "method": request.method,
                "path": request.url.path,
                "knobs": prefix,
                "headers": dict(request.headers),
                "body": body,
                "received_at": time.time(),
            }
        )

    def take_failure(self, prefix: str, fail_first: int) -> bool:
        """Count one request under `prefix`; true while it is among the first `fail_first`."""
        seen = self.fail_counts.get(prefix, 0) + 1
        self.fail_counts[prefix] = seen
        return seen <= fail_first

    def reset(self) -> None:
        self.requests.clear()
        self.fail_counts.clear()


class _Unreadable:
    """Marks a body that is not JSON, so the answer is a 400 after knobs are applied."""

    def __init__(self, text: str) -> None:
        self.text = text


class MockEndpoints:
    """The endpoints; `serve` applies the knobs before handing a request to its answer."""

    def __init__(self, state: MockUpstreamState) -> None:
        self.state = state

    async def serve(self, request: Request, answer: Answer) -> Response:
        body = await _read_body(request)
        anthropic = request.url.path.endswith("/v1/messages")
        prefix: str | None = request.path_params.get("knobs")
        self.state.record(request, prefix, body.text if isinstance(body, _Unreadable) else body)
        try:
            knobs = Knobs.from_values(
                {**parse_path_knobs(prefix or ""), **header_knobs(request.headers)}
            )
        except KnobError as exc:
            return error_response(
                400,
                replies.error_body(str(exc), "invalid_request_error", "invalid_mock_knob"),
                anthropic,
            )
        if knobs.latency_ms:
            await asyncio.sleep(knobs.latency_ms / 1000)
        if not knobs.accepts_key(
            request.headers.get("authorization"), request.headers.get("x-api-key")
        ):
            return error_response(
                401,
                replies.error_body(
                    "Missing or wrong API key: send `Authorization: Bearer <key>` "
                    "(or `x-api-key: <key>`).",
                    "authentication_error",
                    "invalid_api_key",
                ),
                anthropic,
            )
        if knobs.fail_first and self.state.take_failure(prefix or "", knobs.fail_first):
            return error_response(503, replies.status_error(503, "fail-first"), anthropic)
        if knobs.status is not None and knobs.status >= 400:
            return error_response(
                knobs.status, replies.status_error(knobs.status, "status knob"), anthropic
            )
        if isinstance(body, _Unreadable):
            return error_response(
                400,
                replies.error_body(
                    "The request body is not valid JSON.", "invalid_request_error", None
                ),
                anthropic,
            )
        try:
            return await answer(request, body, knobs)
        except replies.InvalidRequest as exc:
            return error_response(
                400,
                replies.error_body(str(exc), "invalid_request_error", None, exc.param),
                anthropic,
            )

    async def chat(self, request: Request, body: object, knobs: Knobs) -> Response:
        chat = replies.ChatRequest.parse(body)
        plan = replies.plan_chat(chat, knobs.reply_tokens, token_classes(knobs))
        completion_id = replies.new_completion_id()
        created = int(time.time())
        ttfb = knobs.ttfb_ms / 1000
        if not chat.stream:
            answer = replies.completion_object(plan, completion_id, created, not knobs.no_usage)
            return JsonResponse(answer, ttfb=ttfb, cut=knobs.cut_after is not None)
        frames = replies.stream_frames(
            plan, completion_id, created, chat.include_usage and not knobs.no_usage
        )
        if knobs.cut_after is not None:
            frames = replies.cut_frames(frames, knobs.cut_after)
        return EventStreamResponse(
            [frame.data for frame in frames],
            ttfb=ttfb,
            chunk_gap=knobs.chunk_gap_ms / 1000,
            cut=knobs.cut_after is not None,
        )

    async def messages(self, request: Request, body: object, knobs: Knobs) -> Response:
        """Anthropic Messages, natively (tokenforge/mock_upstream/protocols.py)."""
        asked = protocols.messages_request(body)
        plan = replies.plan_chat(asked, knobs.reply_tokens, token_classes(knobs))
        if not asked.stream:
            return self.whole(protocols.message_object(plan, not knobs.no_usage), knobs)
        return self.streamed(protocols.message_frames(plan, not knobs.no_usage), knobs)

    async def responses(self, request: Request, body: object, knobs: Knobs) -> Response:
        """OpenAI Responses, natively (tokenforge/mock_upstream/protocols.py)."""
        asked = protocols.responses_request(body)
        plan = replies.plan_chat(asked, knobs.reply_tokens, token_classes(knobs))
        if not asked.stream:
            return self.whole(protocols.response_object(plan, not knobs.no_usage), knobs)
        return self.streamed(protocols.response_frames(plan, not knobs.no_usage), knobs)

    @staticmethod
    def whole(answer: Json, knobs: Knobs) -> Response:
        return JsonResponse(answer, ttfb=knobs.ttfb_ms / 1000, cut=knobs.cut_after is not None)

    @staticmethod
    def streamed(frames: list[replies.Frame], knobs: Knobs) -> Response:
        if knobs.cut_after is not None:
            frames = replies.cut_frames(frames, knobs.cut_after)
        return EventStreamResponse(
            [frame.data for frame in frames],
            ttfb=knobs.ttfb_ms / 1000,
            chunk_gap=knobs.chunk_gap_ms / 1000,
            cut=knobs.cut_after is not None,
        )

    async def embeddings(self, request: Request, body: object, knobs: Knobs) -> Response:
        answer = replies.embeddings_object(body, usage=not knobs.no_usage)
        return JsonResponse(answer, ttfb=knobs.ttfb_ms / 1000, cut=knobs.cut_after is not None)

    async def models(self, request: Request, body: object, knobs: Knobs) -> Response:
        wanted = request.path_params.get("model")
        if wanted is not None:
            return JsonResponse(_model(wanted), ttfb=knobs.ttfb_ms / 1000)
        data = [_model(name) for name in self.state.models]
        return JsonResponse({"object": "list", "data": data}, ttfb=knobs.ttfb_ms / 1000)

    async def recorded_requests(self, request: Request) -> Response:
        entries = list(self.state.requests)
        limit = request.query_params.get("limit")
        if limit and limit.isdigit():
            entries = entries[-int(limit) :] if int(limit) else []
        return JsonResponse({"object": "list", "data": entries})

    async def reset(self, request: Request) -> Response:
        self.state.reset()
        return JsonResponse({"reset": True})

    async def health(self, request: Request) -> Response:
        return JsonResponse({"status": "ok"})

    def routes(self) -> list[Route]:
        def endpoint(answer: Answer) -> Callable[[Request], Awaitable[Response]]:
            async def handle(request: Request) -> Response:
                return await self.serve(request, answer)

            return handle

        v1 = [
            ("/v1/chat/completions", endpoint(self.chat), ["POST"]),
            ("/v1/embeddings", endpoint(self.embeddings), ["POST"]),
            ("/v1/messages", endpoint(self.messages), ["POST"]),
            ("/v1/responses", endpoint(self.responses), ["POST"]),
            ("/v1/models", endpoint(self.models), ["GET"]),
            ("/v1/models/{model:path}", endpoint(self.models), ["GET"]),
        ]
        routes = [Route(path, handle, methods=methods) for path, handle, methods in v1]
        routes += [
            Route(KNOB_PREFIX + path, handle, methods=methods) for path, handle, methods in v1
        ]
        routes += [
            Route("/mock/requests", self.recorded_requests, methods=["GET"]),
            Route("/mock/reset", self.reset, methods=["POST"]),
            Route("/mock/health", self.health, methods=["GET"]),
        ]
        return routes


def token_classes(knobs: Knobs) -> replies.TokenClasses:
    return replies.TokenClasses(
        knobs.cached_tokens, knobs.cache_write_tokens, knobs.reasoning_tokens
    )


def create_app(models: Sequence[str] = DEFAULT_MODELS, history: int = DEFAULT_HISTORY) -> Starlette:
    """The ASGI app; `app.state.mock` is its `MockUpstreamState`."""
    state = MockUpstreamState(models, history)
    app = Starlette(
        routes=MockEndpoints(state).routes(),
        exception_handlers={404: _http_error, 405: _http_error},
    )
    app.state.mock = state
    return app


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    message = f"{request.method} {request.url.path} is not an endpoint of the mock upstream."
    return error_response(status, replies.error_body(message, "invalid_request_error", None))


async def _read_body(request: Request) -> object:
    if request.method != "POST":
        return None
    raw = await request.body()
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _Unreadable(raw.decode("utf-8", errors="replace"))


def _model(name: str) -> Json:
    return {"id": name, "object": "model", "created": MODELS_CREATED, "owned_by": "tokenforge-mock"}

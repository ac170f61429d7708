"""Client formats: the APIs clients speak besides Chat Completions, each translated to a
chat completion request for the upstream channel and back. Plain Python, no I/O.

One module per format (`completions`, `responses`, `anthropic`); each has a
`ClientFormat` made per request from the client's body:

- `chat_body()`: the chat completion body the flow admits, prices, holds and sends
  upstream (a DomainError naming the parameter when the body cannot be carried
  faithfully: refused before anything is held);
- `answer(chat)`: the gateway's finished chat answer (with `usage.cost*` and `receipt`)
  written in the client's format;
- `translator()`: a `StreamTranslator` that turns the gateway's chat stream (chunks, the
  final usage chunk with the receipt, an error notice, `[DONE]`) into the format's events.

`stream.translate` drives a translator over the chat stream's SSE bytes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Protocol

import orjson

from tokenforge.errors import DomainError, Reason

Json = dict[str, Any]

# The gateway's money fields in a chat answer's `usage`, carried into every format.
COST_KEYS = ("cost", "cost_micros", "cost_currency", "cost_bucket")


class StreamTranslator(Protocol):
    """Chat stream pieces in, the client format's SSE frames out."""

    def start(self) -> list[bytes]:
        """Frames sent before the first chat chunk arrives."""

    def chunk(self, chunk: Json) -> list[bytes]:
        """A `chat.completion.chunk`; the last one (no choices) carries `usage` with the
        cost and the `receipt`."""

    def error(self, error: Json) -> list[bytes]:
        """The gateway's notice that the upstream stream broke (after the final chunk)."""

    def done(self) -> list[bytes]:
        """The chat stream's `[DONE]`."""


class ClientFormat(ABC):
    """One request in a client format: its body, and how it reads as a chat request."""

    name: ClassVar[str]
    # The GenAI semantic-convention operation of the request's span.
    operation: ClassVar[str] = "chat"

    def __init__(self, body: Json, request_id: str) -> None:
        self.body = body
        self.request_id = request_id

    @property
    def streamed(self) -> bool:
        return self.body.get("stream") is True

    @abstractmethod
    def chat_body(self) -> Json: ...

    @abstractmethod
    def answer(self, chat: Json) -> Json: ...

    @abstractmethod
    def translator(self) -> StreamTranslator: ...


def invalid(message: str, param: str) -> DomainError:
    return DomainError(Reason.INVALID_ARGUMENT, message, {"param": param})


def require_model(body: Json) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("`model` is required: a model id from GET /v1/models.", "model")
    return model


def copy_keys(source: Json, target: Json, keys: tuple[str, ...]) -> None:
    """Parameters that mean the same in both formats, carried when set."""
    for key in keys:
        if source.get(key) is not None:
            target[key] = source[key]


def cost_of(usage: Json) -> Json:
    return {key: usage[key] for key in COST_KEYS if key in usage}


def tokens_of(chat: Json) -> tuple[int, int, int]:
    """(prompt, completion, cached) of a finished chat answer: the upstream's usage,
    or the receipt's counts when the upstream reported none."""
    usage = chat.get("usage") or {}
    tokens = (chat.get("receipt") or {}).get("tokens") or {}
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    details = usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return (
        int(prompt if isinstance(prompt, int) else tokens.get("prompt", 0)),
        int(completion if isinstance(completion, int) else tokens.get("completion", 0)),
        int(cached if isinstance(cached, int) else tokens.get("cached", 0)),
    )


def cache_write_of(chat: Json) -> int:
    """The prompt tokens the upstream wrote to its cache (part of the prompt tokens)."""
    details = (chat.get("usage") or {}).get("prompt_tokens_details") or {}
    written = details.get("cache_write_tokens") if isinstance(details, dict) else None
    if isinstance(written, int):
        return written
    return int(((chat.get("receipt") or {}).get("tokens") or {}).get("cache_write", 0))


def first_choice(chat: Json) -> Json:
    choices = chat.get("choices") or []
    return choices[0] if choices and isinstance(choices[0], dict) else {}


def event(name: str, data: Json) -> bytes:
    """One server-sent event with its name (Responses, Anthropic Messages)."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def data_only(data: Json) -> bytes:
    """One server-sent event without a name (Chat and legacy Completions)."""
    return b"data: " + orjson.dumps(data) + b"\n\n"


def id_part(request_id: str) -> str:
    """The request id without its `req_` prefix: the format's ids carry it, so the
    receipt of an answer is at /v1/usage/req_<that part>."""
    return request_id.removeprefix("req_")


def text_of(content: Any, param: str) -> str:
    """The text of a content given as a string or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                raise invalid(f"`{param}` must be a string or a list of text parts.", param)
        return "\n".join(texts)
    raise invalid(f"`{param}` must be a string or a list of text parts.", param)

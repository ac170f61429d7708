"""The pieces every channel protocol shares (see the package's docstring)."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Protocol

import orjson

from tokenforge.errors import DomainError, Reason

Json = dict[str, Any]

OPENAI_CHAT = "openai_chat"
OPENAI_RESPONSES = "openai_responses"
ANTHROPIC_MESSAGES = "anthropic_messages"

# Parameters every protocol carries or may leave out without changing the answer.
NEUTRAL_KEYS = frozenset({"model", "messages", "stream", "stream_options", "store", "metadata"})
# Parameters whose default value changes nothing: carried by leaving them out.
DEFAULTS: dict[str, Any] = {
    "n": 1,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "logprobs": False,
    "parallel_tool_calls": True,
}
DONE_LINE = "data: [DONE]"


class StreamReader(Protocol):
    def line(self, line: str) -> list[str]:
        """One line of the channel's stream in, the chat stream's `data:` lines out
        (raises ValueError when the channel reports an error in the stream)."""


class ChannelCall(ABC):
    """One call to a channel of a protocol: the request, and its answer as chat."""

    name: ClassVar[str]
    path: ClassVar[str]
    # The parameters this protocol carries (beyond NEUTRAL_KEYS).
    carried: ClassVar[frozenset[str]]

    @abstractmethod
    def request(self, chat: Json) -> Json: ...

    @abstractmethod
    def answer(self, payload: Json) -> Json | None: ...

    @abstractmethod
    def reader(self) -> StreamReader: ...

    def refuse_uncarried(self, chat: Json) -> None:
        """Refuse a set parameter this protocol has no way to carry."""
        for key, value in chat.items():
            if key in NEUTRAL_KEYS or key in self.carried or value is None:
                continue
            if key in DEFAULTS and value == DEFAULTS[key]:
                continue
            raise cannot_carry(self.name, key)


class ChatCall(ChannelCall):
    """An OpenAI chat channel: nothing to translate."""

    name = OPENAI_CHAT
    path = "/chat/completions"
    carried = frozenset()

    def request(self, chat: Json) -> Json:
        return chat

    def answer(self, payload: Json) -> Json | None:
        return payload

    def reader(self) -> StreamReader:
        return PassThrough()


class PassThrough:
    def line(self, line: str) -> list[str]:
        return [line]


def cannot_carry(protocol: str, param: str, what: str = "") -> DomainError:
    detail = f" ({what})" if what else ""
    return DomainError(
        Reason.INVALID_ARGUMENT,
        f"`{param}`{detail} cannot be carried to this model's {protocol} channel; "
        "leave it out, or use a model whose channels speak OpenAI chat.",
        {"param": param, "channel_protocol": protocol},
    )


def output_cap(chat: Json) -> int:
    """The request's output cap (the flow sets one on every request it sends)."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = chat.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 4096


def text_parts(content: Any, param: str, protocol: str) -> list[Json]:
    """A chat message content as a list of parts ({type: text|image_url, ...})."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if isinstance(content, list):
        parts = []
        for index, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") not in ("text", "image_url"):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise cannot_carry(protocol, f"{param}[{index}]", f"a {kind} part")
            parts.append(part)
        return parts
    raise cannot_carry(protocol, param)


def joined_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def chat_usage(prompt: int, completion: int, cached: int, written: int, reasoning: int) -> Json:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written},
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }


def count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


class ChunkWriter:
    """Chat chunks of one streamed answer, as `data:` lines."""

    def __init__(self) -> None:
        self.id = "chatcmpl-upstream"
        self.model = ""
        self.created = int(time.time())

    def chunk(self, delta: Json, finish_reason: str | None = None) -> str:
        body = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
        return "data: " + orjson.dumps(body).decode()

    def end(self, finish_reason: str, usage: Json | None) -> list[str]:
        lines = [self.chunk({}, finish_reason)]
        if usage is not None:
            body = {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": usage,
            }
            lines.append("data: " + orjson.dumps(body).decode())
        lines.append(DONE_LINE)
        return lines


def sse_data(line: str) -> Json | None:
    """The JSON of a `data:` line (None for `event:` lines, comments and blanks)."""
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if not data or data == "[DONE]":
        return None
    parsed = orjson.loads(data)
    return parsed if isinstance(parsed, dict) else None


def chat_answer(
    answer_id: str, model: str, message: Json, finish_reason: str, usage: Json | None
) -> Json:
    answer: Json = {
        "id": answer_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
    }
    if usage is not None:
        answer["usage"] = usage
    return answer

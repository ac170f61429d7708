"""What the mock upstream answers, in the OpenAI wire format, as plain data (no I/O).

`ChatRequest.parse` reads and checks a chat request body; `plan_chat` decides the answer
(reply words, tool call, finish reason, usage); `completion_object` and `stream_frames`
write it as a `chat.completion` object or as the SSE frames of a stream.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import secrets
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import orjson

from apps.mock_upstream import tokens

EMBEDDING_DIMENSIONS = 8
MAX_CHOICES = 128
TOOL_TRIGGER = "call a tool"
SYSTEM_FINGERPRINT = "fp_tokenforge_mock"
DONE_FRAME = b"data: [DONE]\n\n"

Json = dict[str, Any]


class InvalidRequest(ValueError):
    """A request body the real API would refuse with 400."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: list[Mapping[str, object]]
    n: int
    max_tokens: int | None
    stream: bool
    include_usage: bool
    tools: list[Mapping[str, object]]
    tool_choice: object
    # `response_format`: the JSON schema the answer satisfies ({} for any JSON object).
    answer_schema: Mapping[str, object] | None = None

    @classmethod
    def parse(cls, body: object) -> ChatRequest:
        if not isinstance(body, dict):
            raise InvalidRequest("The request body must be a JSON object.")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("Set `model` to the model id to call.", "model")
        messages = body.get("messages")
        if (
            not isinstance(messages, list)
            or not messages
            or not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages)
        ):
            raise InvalidRequest(
                "Set `messages` to a non-empty list of {role, content} objects.", "messages"
            )
        n = _optional_int(body, "n", minimum=1, maximum=MAX_CHOICES)
        max_tokens = _optional_int(body, "max_completion_tokens", minimum=1)
        if max_tokens is None:
            max_tokens = _optional_int(body, "max_tokens", minimum=1)
        stream_options = body.get("stream_options")
        include_usage = (
            isinstance(stream_options, dict) and stream_options.get("include_usage") is True
        )
        tools = body.get("tools") or []
        if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
            raise InvalidRequest("Set `tools` to a list of tool objects.", "tools")
        return cls(
            model=model,
            messages=messages,
            n=1 if n is None else n,
            max_tokens=max_tokens,
            stream=body.get("stream") is True,
            include_usage=include_usage,
            tools=tools,
            tool_choice=body.get("tool_choice"),
            answer_schema=answer_schema(body.get("response_format"), "response_format"),
        )


def answer_schema(value: object, param: str) -> Mapping[str, object] | None:
    """The schema a JSON answer must satisfy, from `response_format` (chat) or
    `text.format` (Responses): {} for any JSON object, None for text."""
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type") not in (
        "text",
        "json_object",
        "json_schema",
    ):
        raise InvalidRequest(f"Set `{param}.type` to text, json_object or json_schema.", param)
    if value["type"] == "text":
        return None
    if value["type"] == "json_object":
        return {}
    # Chat nests it in `json_schema`; Responses' text.format holds it directly.
    holder = value.get("json_schema", value)
    schema = holder.get("schema") if isinstance(holder, dict) else None
    if not isinstance(schema, dict):
        raise InvalidRequest(f"Set `{param}` json_schema's `schema` to an object.", param)
    return schema


@dataclass(frozen=True)
class TokenClasses:
    """Prompt tokens reported as cache reads or writes, and reasoning tokens (knobs)."""

    cached: int = 0
    cache_write: int = 0
    reasoning: int = 0


@dataclass(frozen=True)
class ChatPlan:
    """The decided answer: the same reply (or tool call) in each of `n` choices."""

    model: str
    n: int
    words: list[str]
    tool_call: ToolCall | None
    finish_reason: str
    prompt_tokens: int
    # Output tokens of one choice: its reasoning tokens included.
    completion_tokens_per_choice: int
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    def usage(self) -> Json:
        completion = self.completion_tokens_per_choice * self.n
        usage: Json = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }
        # The details only when a token-class knob asked for them.
        if self.cached_tokens:
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        if self.reasoning_tokens:
            usage["completion_tokens_details"] = {
                "reasoning_tokens": self.reasoning_tokens * self.n
            }
        return usage


def plan_chat(
    request: ChatRequest, reply_tokens: int, classes: TokenClasses = TokenClasses()
) -> ChatPlan:
    # Reasoning comes first and counts within the output cap, as the real APIs count it.
    reasoning = classes.reasoning
    if request.max_tokens is not None:
        reasoning = min(reasoning, request.max_tokens - 1)
        request = replace(request, max_tokens=request.max_tokens - reasoning)
    plan = _plan_answer(request, reply_tokens)
    cached = min(classes.cached, plan.prompt_tokens)
    return replace(
        plan,
        completion_tokens_per_choice=plan.completion_tokens_per_choice + reasoning,
        cached_tokens=cached,
        cache_write_tokens=min(classes.cache_write, plan.prompt_tokens - cached),
        reasoning_tokens=reasoning,
    )


def _plan_answer(request: ChatRequest, reply_tokens: int) -> ChatPlan:
    prompt = tokens.prompt_tokens(request.messages)
    tool = _chosen_tool(request)
    if tool is not None:
        call = ToolCall(
            id=f"call_{secrets.token_hex(12)}", name=tool[0], arguments=_sample_arguments(tool[1])
        )
        return ChatPlan(
            model=request.model,
            n=request.n,
            words=[],
            tool_call=call,
            finish_reason="tool_calls",
            prompt_tokens=prompt,
            completion_tokens_per_choice=tokens.tool_call_tokens(call.name, call.arguments),
        )
    if request.answer_schema is not None:
        # Valid JSON satisfying the schema's required fields, one "word" per token.
        text = json.dumps(_sample_value(request.answer_schema) or {"answer": "mock"})
        words, capped = tokens.cap_reply(text.split(" "), request.max_tokens)
    else:
        words, capped = tokens.cap_reply(
            tokens.reply_words(request.messages, reply_tokens), request.max_tokens
        )
    return ChatPlan(
        model=request.model,
        n=request.n,
        words=words,
        tool_call=None,
        finish_reason="length" if capped else "stop",
        prompt_tokens=prompt,
        completion_tokens_per_choice=len(words),
    )


def new_completion_id() -> str:
    return f"chatcmpl-mock{secrets.token_hex(12)}"


def completion_object(plan: ChatPlan, completion_id: str, created: int, usage: bool) -> Json:
    message: Json = {"role": "assistant", "content": tokens.reply_text(plan.words)}
    if plan.tool_call is not None:
        message = {"role": "assistant", "content": None, "tool_calls": [_tool_call(plan.tool_call)]}
    message["refusal"] = None
    answer: Json = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": plan.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [
            {"index": i, "message": message, "logprobs": None, "finish_reason": plan.finish_reason}
            for i in range(plan.n)
        ],
    }
    if usage:
        answer["usage"] = plan.usage()
    return answer


FrameKind = Literal["head", "content", "tail"]


@dataclass(frozen=True)
class Frame:
    """One SSE frame: a `head` role chunk, a `content` chunk (generated text or a tool
    call), or a `tail` frame (finish chunk, usage chunk, `[DONE]`)."""

    data: bytes
    kind: FrameKind


def cut_frames(frames: Sequence[Frame], content_chunks: int) -> list[Frame]:
    """The frames a stream sends before the connection is cut after `content_chunks`."""
    head = [f for f in frames if f.kind == "head"]
    content = [f for f in frames if f.kind == "content"]
    return head + content[:content_chunks]


def stream_frames(
    plan: ChatPlan, completion_id: str, created: int, include_usage: bool
) -> list[Frame]:
    """Role chunk per choice, one chunk per word per choice, finish chunk per choice,
    then the usage chunk (when asked for) and `[DONE]`."""

    def chunk(choices: list[Json], usage: Json | None = None) -> bytes:
        body: Json = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": plan.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
        }
        if include_usage:
            body["usage"] = usage
        return b"data: " + orjson.dumps(body) + b"\n\n"

    def delta(index: int, content: Json, finish_reason: str | None = None) -> Json:
        return {"index": index, "delta": content, "logprobs": None, "finish_reason": finish_reason}

    choices = range(plan.n)
    frames = [
        Frame(chunk([delta(i, {"role": "assistant", "content": "", "refusal": None})]), "head")
        for i in choices
    ]
    if plan.tool_call is not None:
        call = plan.tool_call
        opening = {
            "index": 0,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        arguments = {"index": 0, "function": {"arguments": call.arguments}}
        for tool_delta in (opening, arguments):
            frames.extend(
                Frame(chunk([delta(i, {"tool_calls": [tool_delta]})]), "content") for i in choices
            )
    for position, word in enumerate(plan.words):
        text = word if position == 0 else f" {word}"
        frames.extend(Frame(chunk([delta(i, {"content": text})]), "content") for i in choices)
    frames.extend(Frame(chunk([delta(i, {}, plan.finish_reason)]), "tail") for i in choices)
    if include_usage:
        frames.append(Frame(chunk([], plan.usage()), "tail"))
    frames.append(Frame(DONE_FRAME, "tail"))
    return frames


def embeddings_object(body: object, usage: bool) -> Json:
    """The embedding list for a request body; raises InvalidRequest."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("Set `model` to the embedding model id to call.", "model")
    inputs = _embedding_inputs(body.get("input"))
    dimensions = _optional_int(body, "dimensions", minimum=1, maximum=4096)
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise InvalidRequest("Set `encoding_format` to `float` or `base64`.", "encoding_format")
    data = []
    for index, item in enumerate(inputs):
        vector = embedding_vector(_embedding_key(item), dimensions or EMBEDDING_DIMENSIONS)
        encoded: str | list[float] = (
            base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            if encoding == "base64"
            else vector
        )
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    prompt = sum(tokens.embedding_input_tokens(item) for item in inputs)
    answer: Json = {"object": "list", "data": data, "model": model}
    if usage:
        answer["usage"] = {"prompt_tokens": prompt, "total_tokens": prompt}
    return answer


def embedding_vector(text: str, dimensions: int = EMBEDDING_DIMENSIONS) -> list[float]:
    """A unit-length vector from SHA-256 of the text, exact in float32 (so the float and
    base64 encodings carry the same numbers)."""
    raw = b""
    counter = 0
    while len(raw) < 2 * dimensions:
        raw += hashlib.sha256(f"{counter}:{text}".encode()).digest()
        counter += 1
    values = [v / 32768 for v in struct.unpack(f"<{dimensions}h", raw[: 2 * dimensions])]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    packed = struct.pack(f"<{dimensions}f", *(v / norm for v in values))
    return list(struct.unpack(f"<{dimensions}f", packed))


def error_body(message: str, error_type: str, code: str | None, param: str | None = None) -> Json:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def status_error(status: int, reason: str) -> Json:
    """An OpenAI-style error object for an HTTP status the mock was asked to answer."""
    error_type, code = _STATUS_ERRORS.get(
        status, ("invalid_request_error", None) if status < 500 else ("server_error", None)
    )
    return error_body(f"Mock upstream answered {status}: {reason}.", error_type, code)


_STATUS_ERRORS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "model_not_found"),
    408: ("timeout_error", None),
    409: ("conflict_error", None),
    422: ("invalid_request_error", None),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    500: ("server_error", None),
    502: ("server_error", None),
    503: ("server_error", "overloaded"),
    504: ("timeout_error", None),
}


def _tool_call(call: ToolCall) -> Json:
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }


def _chosen_tool(request: ChatRequest) -> tuple[str, Mapping[str, object]] | None:
    """The tool to call: the named one of `tool_choice`, else the first, when the last user
    message asks to call a tool and `tool_choice` is not `none`, or when `tool_choice`
    forces a call (`required`, or a named tool)."""
    if not request.tools or request.tool_choice == "none":
        return None
    choice = request.tool_choice
    forced = choice == "required" or isinstance(choice, dict)
    if not forced and TOOL_TRIGGER not in tokens.last_user_text(request.messages).lower():
        return None
    functions = [t.get("function") for t in request.tools]
    named = [f for f in functions if isinstance(f, dict) and isinstance(f.get("name"), str)]
    if not named:
        return None
    chosen = named[0]
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        wanted = choice["function"].get("name")
        chosen = next((f for f in named if f["name"] == wanted), chosen)
    parameters = chosen.get("parameters")
    return chosen["name"], parameters if isinstance(parameters, dict) else {}


_SAMPLES: dict[str, object] = {
    "string": "mock",
    "integer": 1,
    "number": 1,
    "boolean": True,
    "array": [],
    "object": {},
}


def _sample_arguments(parameters: Mapping[str, object]) -> str:
    """Arguments JSON filling each required property with a sample of its type."""
    return json.dumps(_sample_value(parameters) or {})


def _sample_value(spec: object) -> object:
    """A sample of a JSON schema: an object fills each required property (nested
    objects too), an enum takes its first value, other types a sample of the type."""
    if not isinstance(spec, Mapping):
        return "mock"
    enum = spec.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    kind = spec.get("type")
    if kind == "object" or "properties" in spec:
        properties = spec.get("properties")
        required = spec.get("required")
        if not isinstance(properties, dict) or not isinstance(required, list):
            return {}
        return {str(name): _sample_value(properties.get(name)) for name in required}
    if kind == "array":
        return []
    return _SAMPLES.get(kind, "mock") if isinstance(kind, str) else "mock"


def _embedding_inputs(value: object) -> list[str | list[int]]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, int) for v in value):
            return [value]
        if all(isinstance(v, str) for v in value):
            return list(value)
        if all(isinstance(v, list) and all(isinstance(t, int) for t in v) for v in value):
            return list(value)
    raise InvalidRequest(
        "Set `input` to a string, a non-empty list of strings, or token-id arrays.", "input"
    )


def _embedding_key(item: str | Sequence[int]) -> str:
    return item if isinstance(item, str) else " ".join(str(t) for t in item)


def _optional_int(
    body: Mapping[str, object], name: str, minimum: int, maximum: int | None = None
) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InvalidRequest(f"Set `{name}` to a whole number of at least {minimum}.", name)
    if maximum is not None and value > maximum:
        raise InvalidRequest(f"Set `{name}` to at most {maximum}.", name)
    return value

"""Anthropic Messages (`POST /v1/messages`) as a chat request.

Request: `system` (a string or text blocks) -> a system message; `messages` with content
as a string or blocks: `text`, `image` (base64 or URL) -> chat parts, an assistant's
`tool_use` -> `tool_calls`, a user's `tool_result` -> a `tool` message (before the
user's other blocks; `is_error` results start with "Error: "; images in a result go to
the user message after the tool messages, a `tool` message holding text only), `thinking` blocks are
left out; `tools` (name, description, input_schema) -> function tools; `tool_choice`
(auto, any, tool, none) and `disable_parallel_tool_use`; `max_tokens` (required);
`stop_sequences` -> `stop`; `temperature`, `top_p`; `metadata.user_id` -> `user`.
Server tools and other block types are refused, naming them.

Answer: a `message` with content blocks (`text`, `tool_use`), `stop_reason` mapped from
the chat finish reason (stop -> end_turn, length -> max_tokens, tool_calls -> tool_use,
content_filter -> refusal; a chat channel does not say whether a stop sequence
matched, so `stop_sequence` stays null), `usage` {input_tokens (without cache reads),
cache_read_input_tokens, output_tokens} with the gateway's `cost*` fields, and the
`receipt`. The id is `msg_<id>` for request `req_<id>`.

Stream: message_start, then per block content_block_start (a `ping` after the first),
content_block_delta (text_delta / input_json_delta)..., content_block_stop; then
message_delta (stop_reason; usage with input and output tokens and the `cost*` fields;
the `receipt` beside `usage`) and message_stop, or an `error` event when the upstream
stream broke (after the message_delta that names the charge).
"""

from __future__ import annotations

from typing import Any

import orjson

from services.gateway.domain.formats import (
    ClientFormat,
    Json,
    StreamTranslator,
    cache_write_of,
    copy_keys,
    cost_of,
    event,
    first_choice,
    id_part,
    invalid,
    require_model,
    text_of,
    tokens_of,
)

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
SKIPPED_BLOCKS = ("thinking", "redacted_thinking")
# What an OpenAI chat channel takes.
MAX_STOP_SEQUENCES = 4


def _image(block: Json, param: str) -> Json:
    source = block.get("source")
    if not isinstance(source, dict):
        raise invalid(f"`{param}.source` must be a base64 or url image source.", param)
    if source.get("type") == "base64" and isinstance(source.get("data"), str):
        url = f"data:{source.get('media_type', 'image/png')};base64,{source['data']}"
    elif source.get("type") == "url" and isinstance(source.get("url"), str):
        url = source["url"]
    else:
        raise invalid(f"`{param}.source` must be a base64 or url image source.", param)
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_result(block: Json, param: str) -> tuple[Json, list[Json]]:
    """The `tool` message of a tool result, and the images it held: a chat `tool`
    message carries text only, so they go to the user message that follows."""
    if not isinstance(block.get("tool_use_id"), str):
        raise invalid(f"`{param}` (tool_result) needs `tool_use_id`.", param)
    content = block.get("content")
    images: list[Json] = []
    if isinstance(content, list):
        images = [
            _image(part, f"{param}.content[{k}]")
            for k, part in enumerate(content)
            if isinstance(part, dict) and part.get("type") == "image"
        ]
        content = [p for p in content if not (isinstance(p, dict) and p.get("type") == "image")]
    text = "" if content is None else text_of(content, f"{param}.content")
    if block.get("is_error"):
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": text}, images


def _refused(kind: Any, param: str) -> Exception:
    return invalid(
        f"`{param}` is a `{kind}` block, which a chat channel cannot carry; send text, "
        "image, tool_use and tool_result blocks.",
        param,
    )


def chat_messages(message: Any, param: str) -> list[Json]:
    """The chat messages of one Anthropic message (a user's tool results come first,
    each as its own `tool` message)."""
    if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
        raise invalid(f"`{param}.role` must be user or assistant.", param)
    role, content = message["role"], message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise invalid(f"`{param}.content` must be a string or a list of blocks.", param)
    tools: list[Json] = []
    parts: list[Json] = []
    calls: list[Json] = []
    for j, block in enumerate(content):
        where = f"{param}.content[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            parts.append({"type": "text", "text": block["text"]})
        elif kind == "image" and role == "user":
            parts.append(_image(block, where))
        elif kind == "tool_result" and role == "user":
            result, images = _tool_result(block, where)
            tools.append(result)
            parts.extend(images)
        elif kind == "tool_use" and role == "assistant":
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                raise invalid(f"`{where}` (tool_use) needs `id` and `name`.", where)
            arguments = orjson.dumps(block.get("input") or {}).decode()
            calls.append(
                {
                    "id": block["id"],
                    "type": "function",
                    "function": {"name": block["name"], "arguments": arguments},
                }
            )
        elif kind in SKIPPED_BLOCKS:
            continue
        else:
            raise _refused(kind, where)
    out = list(tools)
    if role == "assistant":
        text = "".join(str(p["text"]) for p in parts)
        reply: Json = {"role": "assistant", "content": text or None}
        if calls:
            reply["tool_calls"] = calls
        if text or calls:
            out.append(reply)
    elif parts:
        only_text = len(parts) == 1 and parts[0]["type"] == "text"
        out.append({"role": "user", "content": parts[0]["text"] if only_text else parts})
    return out


def chat_tools(tools: Any) -> list[Json]:
    if not isinstance(tools, list):
        raise invalid("`tools` must be a list of tools.", "tools")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") not in (None, "custom"):
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise invalid(
                f"`tools[{i}]` is a `{kind}` server tool; only custom tools (name, "
                "description, input_schema) can be carried to a chat channel.",
                f"tools[{i}]",
            )
        if not isinstance(tool.get("name"), str):
            raise invalid(f"`tools[{i}].name` is required.", f"tools[{i}]")
        function: Json = {
            "name": tool["name"],
            "parameters": tool.get("input_schema") or {"type": "object"},
        }
        copy_keys(tool, function, ("description",))
        out.append({"type": "function", "function": function})
    return out


def chat_tool_choice(choice: Any) -> Any:
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind in ("auto", "none"):
        return kind
    if kind == "any":
        return "required"
    if kind == "tool" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise invalid("`tool_choice.type` must be auto, any, tool (with name) or none.", "tool_choice")


def usage_of(chat: Json) -> Json:
    prompt, completion, cached = tokens_of(chat)
    written = cache_write_of(chat)
    return {
        "input_tokens": prompt - cached - written,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": cached,
        "output_tokens": completion,
        **cost_of(chat.get("usage") or {}),
    }


def tool_input(arguments: Any) -> Any:
    try:
        return orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return {}


class AnthropicFormat(ClientFormat):
    name = "anthropic_messages"

    def chat_body(self) -> Json:
        body = self.body
        model = require_model(body)
        cap = body.get("max_tokens")
        if cap is None:
            raise invalid("`max_tokens` is required: the most tokens to generate.", "max_tokens")
        if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
            raise invalid("`max_tokens` must be a positive integer.", "max_tokens")
        raw = body.get("messages")
        if not isinstance(raw, list) or not raw:
            raise invalid("`messages` must be a non-empty list of messages.", "messages")
        messages: list[Json] = []
        if body.get("system") is not None:
            messages.append({"role": "system", "content": text_of(body["system"], "system")})
        for i, message in enumerate(raw):
            messages.extend(chat_messages(message, f"messages[{i}]"))
        chat: Json = {"model": model, "messages": messages, "max_tokens": cap}
        copy_keys(body, chat, ("temperature", "top_p"))
        stops = body.get("stop_sequences")
        if stops:
            if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
                raise invalid("`stop_sequences` must be a list of strings.", "stop_sequences")
            if len(stops) > MAX_STOP_SEQUENCES:
                raise invalid(
                    f"`stop_sequences` holds {len(stops)}; a chat channel takes at most "
                    f"{MAX_STOP_SEQUENCES}.",
                    "stop_sequences",
                )
            chat["stop"] = stops
        metadata = body.get("metadata")
        if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
            chat["user"] = metadata["user_id"]
        if body.get("tools"):
            chat["tools"] = chat_tools(body["tools"])
        choice = body.get("tool_choice")
        if choice is not None:
            chat["tool_choice"] = chat_tool_choice(choice)
            if choice.get("disable_parallel_tool_use"):
                chat["parallel_tool_calls"] = False
        if self.streamed:
            chat["stream"] = True
            chat["stream_options"] = {"include_usage": True}
        return chat

    @property
    def message_id(self) -> str:
        return f"msg_{id_part(self.request_id)}"

    def answer(self, chat: Json) -> Json:
        choice = first_choice(chat)
        message = choice.get("message") or {}
        content: list[Json] = []
        if message.get("content"):
            content.append({"type": "text", "text": str(message["content"])})
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            content.append(
                {
                    "type": "tool_use",
                    "id": call.get("id"),
                    "name": function.get("name"),
                    "input": tool_input(function.get("arguments")),
                }
            )
        return {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": chat.get("model"),
            "content": content,
            "stop_reason": STOP_REASONS.get(str(choice.get("finish_reason")), "end_turn"),
            "stop_sequence": None,
            "usage": usage_of(chat),
            "receipt": chat.get("receipt"),
        }

    def translator(self) -> StreamTranslator:
        return AnthropicStream(self)


class AnthropicStream:
    """Chat chunks (choice 0) as Anthropic's message stream events."""

    def __init__(self, fmt: AnthropicFormat) -> None:
        self.fmt = fmt
        self.model: Any = fmt.body.get("model")
        self.blocks = 0  # content blocks started
        self.open: str | None = None  # "text" or "tool_use" while a block is open
        self.tool_blocks: dict[int, int] = {}  # chat tool call index -> block index
        self.finish_reason: Any = None
        self.final: Json | None = None
        self.broken: Json | None = None

    def start(self) -> list[bytes]:
        message = {
            "id": self.fmt.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            # The counts come with message_delta, once the upstream reported them.
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return [event("message_start", {"type": "message_start", "message": message})]

    def _start_block(self, kind: str, block: Json) -> list[bytes]:
        frames = self._stop_block()
        self.open = kind
        index = self.blocks
        self.blocks += 1
        frames.append(
            event(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": block},
            )
        )
        if index == 0:
            frames.append(event("ping", {"type": "ping"}))
        return frames

    def _stop_block(self) -> list[bytes]:
        if self.open is None:
            return []
        self.open = None
        index = self.blocks - 1
        return [event("content_block_stop", {"type": "content_block_stop", "index": index})]

    def _delta(self, delta: Json) -> bytes:
        data = {"type": "content_block_delta", "index": self.blocks - 1, "delta": delta}
        return event("content_block_delta", data)

    def chunk(self, chunk: Json) -> list[bytes]:
        if isinstance(chunk.get("usage"), dict) and "receipt" in chunk:
            self.final = chunk
            return []
        frames: list[bytes] = []
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("content"):
                if self.open != "text":
                    frames.extend(self._start_block("text", {"type": "text", "text": ""}))
                frames.append(self._delta({"type": "text_delta", "text": delta["content"]}))
            for call in delta.get("tool_calls") or []:
                frames.extend(self._tool_call(call))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return frames

    def _tool_call(self, call: Json) -> list[bytes]:
        frames: list[bytes] = []
        position = call.get("index", 0)
        function = call.get("function") or {}
        if position not in self.tool_blocks:
            block: Json = {
                "type": "tool_use",
                "id": call.get("id"),
                "name": function.get("name"),
                "input": {},
            }
            frames.extend(self._start_block("tool_use", block))
            self.tool_blocks[position] = self.blocks - 1
        arguments = function.get("arguments")
        if arguments and self.tool_blocks[position] == self.blocks - 1:
            frames.append(self._delta({"type": "input_json_delta", "partial_json": arguments}))
        return frames

    def error(self, error: Json) -> list[bytes]:
        self.broken = error
        return []

    def done(self) -> list[bytes]:
        frames = self._stop_block()
        delta: Json = {
            "type": "message_delta",
            "delta": {
                "stop_reason": None
                if self.broken
                else STOP_REASONS.get(str(self.finish_reason), "end_turn"),
                "stop_sequence": None,
            },
            "usage": usage_of(self.final) if self.final else {"output_tokens": 0},
        }
        if self.final is not None:
            delta["receipt"] = self.final.get("receipt")
        frames.append(event("message_delta", delta))
        if self.broken:
            error = {
                "type": "api_error",
                "message": str(self.broken.get("message") or "The upstream stream broke."),
            }
            frames.append(event("error", {"type": "error", "error": error}))
        else:
            frames.append(event("message_stop", {"type": "message_stop"}))
        return frames

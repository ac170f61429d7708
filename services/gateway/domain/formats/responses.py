"""OpenAI Responses (`POST /v1/responses`) as a chat request, stateless (`store: false`):
nothing is kept, so `previous_response_id` and `conversation` are refused (send the
conversation in `input`).

Request: `instructions` -> a system message; `input` (a string, or items: messages with
text or image parts, `function_call` and `function_call_output` items; `reasoning`
items carry nothing a chat channel reads and are left out) -> messages;
`max_output_tokens` -> `max_tokens`; function `tools` and `tool_choice`; `text.format`
-> `response_format`; `reasoning.effort` -> `reasoning_effort`. Hosted tools (web
search, file search, ...) and other item types are refused, naming the item.

Answer: a `response` object whose `output` holds a `message` item (the text) and one
`function_call` item per tool call; `usage` {input_tokens, output_tokens, total_tokens}
with the gateway's `cost*` fields, and the `receipt`. Ids carry the request id:
`resp_<id>`, `msg_<id>`, `fc_<id>_<n>` (the receipt is at /v1/usage/req_<id>).

Stream: response.created, response.in_progress, then per output item
output_item.added, (content_part.added, output_text.delta..., output_text.done,
content_part.done | function_call_arguments.delta..., function_call_arguments.done),
output_item.done, and response.completed (or response.incomplete when the output cap
cut the answer, response.failed when the upstream stream broke) carrying the usage and
the receipt; every event has a `sequence_number`.
"""

from __future__ import annotations

import time
from typing import Any

from services.gateway.domain.formats import (
    ClientFormat,
    Json,
    StreamTranslator,
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

ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
CARRIED = (
    "temperature",
    "top_p",
    "user",
    "parallel_tool_calls",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
)
TEXT_PARTS = ("input_text", "output_text", "text")


def _content(content: Any, param: str) -> str | list[Json]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid(f"`{param}.content` must be a string or a list of parts.", param)
    parts: list[Json] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in TEXT_PARTS and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            parts.append({"type": "text", "text": part["refusal"]})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            image: Json = {"url": part["image_url"]}
            if part.get("detail"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise invalid(
                f"`{param}.content[{j}]` is a `{kind}` part, which a chat channel cannot "
                "carry; send input_text, output_text or input_image (by URL) parts.",
                f"{param}.content[{j}]",
            )
    if len(parts) == 1 and parts[0]["type"] == "text":
        return str(parts[0]["text"])
    return parts


def input_messages(value: Any) -> list[Json]:
    """The chat messages of a Responses `input`."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise invalid("`input` must be a string or a non-empty list of items.", "input")
    messages: list[Json] = []
    for i, item in enumerate(value):
        param = f"input[{i}]"
        if not isinstance(item, dict):
            raise invalid(f"`{param}` must be an object.", param)
        kind = item.get("type") or "message"
        if kind == "message":
            role = ROLES.get(str(item.get("role")))
            if role is None:
                raise invalid(
                    f"`{param}.role` must be user, assistant, system or developer.", param
                )
            messages.append({"role": role, "content": _content(item.get("content"), param)})
        elif kind == "function_call":
            if not all(isinstance(item.get(k), str) for k in ("call_id", "name")) or not (
                isinstance(item.get("arguments"), str | None)
            ):
                raise invalid(
                    f"`{param}` (function_call) needs `call_id`, `name` and `arguments` "
                    "(a JSON string).",
                    param,
                )
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item.get("arguments") or "{}"},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise invalid(f"`{param}` (function_call_output) needs `call_id`.", param)
            output = item.get("output")
            text = output if isinstance(output, str) else text_of(output, f"{param}.output")
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": text})
        elif kind == "reasoning":
            continue  # the model's own reasoning: nothing a chat channel reads
        else:
            raise invalid(
                f"`{param}` is a `{kind}` item, which a chat channel cannot carry; send "
                "message, function_call and function_call_output items.",
                param,
            )
    return messages


def chat_tools(tools: Any) -> list[Json]:
    if not isinstance(tools, list):
        raise invalid("`tools` must be a list of function tools.", "tools")
    out = []
    for i, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function" or not isinstance(tool.get("name"), str):
            raise invalid(
                f"`tools[{i}]` is a `{kind}` tool; only function tools (type, name, "
                "parameters) can be carried to a chat channel.",
                f"tools[{i}]",
            )
        function: Json = {"name": tool["name"]}
        copy_keys(tool, function, ("description", "parameters", "strict"))
        out.append({"type": "function", "function": function})
    return out


def chat_tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and choice.get("name"):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise invalid(
        "`tool_choice` must be auto, none, required or {type: function, name}.", "tool_choice"
    )


def response_format(text: Any) -> Json | None:
    fmt = text.get("format") if isinstance(text, dict) else None
    if fmt is None or (isinstance(fmt, dict) and fmt.get("type") == "text"):
        return None
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        if not isinstance(fmt.get("name"), str) or not isinstance(fmt.get("schema"), dict):
            raise invalid("`text.format` (json_schema) needs `name` and `schema`.", "text.format")
        schema: Json = {"name": fmt["name"], "schema": fmt["schema"]}
        copy_keys(fmt, schema, ("strict", "description"))
        return {"type": "json_schema", "json_schema": schema}
    raise invalid("`text.format` must be text, json_object or json_schema.", "text.format")


def usage_of(chat: Json) -> Json:
    prompt, completion, cached = tokens_of(chat)
    usage = chat.get("usage") or {}
    details = usage.get("completion_tokens_details") or {}
    reasoning = details.get("reasoning_tokens") if isinstance(details, dict) else None
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning or 0},
        "total_tokens": prompt + completion,
        **cost_of(usage),
    }


def status_of(finish_reason: Any) -> tuple[str, Json | None]:
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish_reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


class ResponsesFormat(ClientFormat):
    name = "openai_responses"

    def chat_body(self) -> Json:
        body = self.body
        model = require_model(body)
        for param in ("previous_response_id", "conversation"):
            if body.get(param):
                raise invalid(
                    f"`{param}` cannot be used: responses are not stored (store: false); "
                    "send the conversation in `input`.",
                    param,
                )
        for param in ("text", "reasoning"):
            if body.get(param) is not None and not isinstance(body[param], dict):
                raise invalid(f"`{param}` must be an object.", param)
        if body.get("background"):
            raise invalid("`background` responses are not supported; omit it.", "background")
        messages: list[Json] = []
        if body.get("instructions") is not None:
            instructions = text_of(body["instructions"], "instructions")
            messages.append({"role": "system", "content": instructions})
        if body.get("input") is None:
            raise invalid("`input` is required: a string or a list of items.", "input")
        messages.extend(input_messages(body["input"]))
        chat: Json = {"model": model, "messages": messages}
        copy_keys(body, chat, CARRIED)
        if body.get("max_output_tokens") is not None:
            chat["max_tokens"] = body["max_output_tokens"]
        if body.get("tools"):
            chat["tools"] = chat_tools(body["tools"])
        if body.get("tool_choice") is not None:
            chat["tool_choice"] = chat_tool_choice(body["tool_choice"])
        reasoning = body.get("reasoning")
        if isinstance(reasoning, dict) and reasoning.get("effort"):
            chat["reasoning_effort"] = reasoning["effort"]
        if (fmt := response_format(body.get("text"))) is not None:
            chat["response_format"] = fmt
        text = body.get("text")
        if isinstance(text, dict) and text.get("verbosity"):
            chat["verbosity"] = text["verbosity"]
        if self.streamed:
            chat["stream"] = True
            chat["stream_options"] = {"include_usage": True}
        return chat

    @property
    def response_id(self) -> str:
        return f"resp_{id_part(self.request_id)}"

    def envelope(self, status: str, model: Any, created: int) -> Json:
        """The `response` object around the output, echoing the request's settings."""
        body = self.body
        text = body.get("text") if isinstance(body.get("text"), dict) else {}
        return {
            "id": self.response_id,
            "object": "response",
            "created_at": created,
            "status": status,
            "background": False,
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "model": model,
            "output": [],
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": None,
            "reasoning": {"effort": (body.get("reasoning") or {}).get("effort"), "summary": None},
            "store": False,
            "temperature": body.get("temperature", 1.0),
            "text": {"format": (text or {}).get("format") or {"type": "text"}},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [],
            "top_p": body.get("top_p", 1.0),
            "truncation": "disabled",
            "usage": None,
            "user": body.get("user"),
            "metadata": body.get("metadata") or {},
        }

    def answer(self, chat: Json) -> Json:
        choice = first_choice(chat)
        message = choice.get("message") or {}
        status, incomplete = status_of(choice.get("finish_reason"))
        response = self.envelope(status, chat.get("model"), chat.get("created") or _now())
        output: list[Json] = []
        content = message.get("content")
        if content:
            item_id = f"msg_{id_part(self.request_id)}"
            output.append(message_item(item_id, str(content), "completed"))
        for n, call in enumerate(message.get("tool_calls") or []):
            function = call.get("function") or {}
            output.append(
                function_call_item(
                    f"fc_{id_part(self.request_id)}_{n}",
                    str(call.get("id") or ""),
                    str(function.get("name") or ""),
                    str(function.get("arguments") or ""),
                    "completed",
                )
            )
        response["output"] = output
        response["incomplete_details"] = incomplete
        response["usage"] = usage_of(chat)
        response["receipt"] = chat.get("receipt")
        return response

    def translator(self) -> StreamTranslator:
        return ResponsesStream(self)


def _now() -> int:
    return int(time.time())


def message_item(item_id: str, text: str, status: str) -> Json:
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": [text_part(text)] if status != "in_progress" else [],
    }


def text_part(text: str) -> Json:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def function_call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> Json:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


class ResponsesStream:
    """Chat chunks (choice 0) as the Responses API's typed events."""

    def __init__(self, fmt: ResponsesFormat) -> None:
        self.fmt = fmt
        self.created = _now()
        self.sequence = 0
        self.model: Any = fmt.body.get("model")
        self.items: list[Json] = []  # output items, by output_index
        self.open: int | None = None  # the output_index of the item still being written
        self.tool_items: dict[int, int] = {}  # chat tool call index -> output_index
        self.finish_reason: Any = None
        self.final: Json | None = None
        self.broken: Json | None = None

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event(kind, data)

    def _response(self, status: str) -> Json:
        response = self.fmt.envelope(status, self.model, self.created)
        if status != "in_progress":
            response["output"] = self.items
        return response

    def start(self) -> list[bytes]:
        return [
            self._event("response.created", response=self._response("in_progress")),
            self._event("response.in_progress", response=self._response("in_progress")),
        ]

    def _open(self, item: Json) -> list[bytes]:
        frames = self._close("completed")
        self.items.append(item)
        self.open = len(self.items) - 1
        added = dict(item)
        if item["type"] == "message":
            added["content"] = []
        frames.append(self._event("response.output_item.added", output_index=self.open, item=added))
        if item["type"] == "message":
            frames.append(
                self._event(
                    "response.content_part.added",
                    item_id=item["id"],
                    output_index=self.open,
                    content_index=0,
                    part=text_part(""),
                )
            )
        return frames

    def _close(self, status: str) -> list[bytes]:
        if self.open is None:
            return []
        index, item = self.open, self.items[self.open]
        self.open = None
        item["status"] = status
        frames = []
        if item["type"] == "message":
            part = item["content"][0]
            common = {"item_id": item["id"], "output_index": index, "content_index": 0}
            frames.append(
                self._event("response.output_text.done", **common, text=part["text"], logprobs=[])
            )
            frames.append(self._event("response.content_part.done", **common, part=part))
        else:
            frames.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    name=item["name"],
                    arguments=item["arguments"],
                )
            )
        frames.append(self._event("response.output_item.done", output_index=index, item=item))
        return frames

    def chunk(self, chunk: Json) -> list[bytes]:
        if chunk.get("model"):
            self.model = chunk["model"]
        if isinstance(chunk.get("usage"), dict) and "receipt" in chunk:
            self.final = chunk
            return []
        frames: list[bytes] = []
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("content"):
                frames.extend(self._text(str(delta["content"])))
            for call in delta.get("tool_calls") or []:
                frames.extend(self._tool_call(call))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return frames

    def _text(self, text: str) -> list[bytes]:
        frames: list[bytes] = []
        if self.open is None or self.items[self.open]["type"] != "message":
            item_id = f"msg_{id_part(self.fmt.request_id)}"
            if any(i["type"] == "message" for i in self.items):
                item_id += f"_{len(self.items)}"
            item = message_item(item_id, "", "in_progress")
            item["content"] = [text_part("")]
            frames.extend(self._open(item))
        assert self.open is not None
        item = self.items[self.open]
        item["content"][0]["text"] += text
        frames.append(
            self._event(
                "response.output_text.delta",
                item_id=item["id"],
                output_index=self.open,
                content_index=0,
                delta=text,
                logprobs=[],
            )
        )
        return frames

    def _tool_call(self, call: Json) -> list[bytes]:
        frames: list[bytes] = []
        position = call.get("index", 0)
        function = call.get("function") or {}
        if position not in self.tool_items:
            item = function_call_item(
                f"fc_{id_part(self.fmt.request_id)}_{len(self.tool_items)}",
                str(call.get("id") or ""),
                str(function.get("name") or ""),
                "",
                "in_progress",
            )
            frames.extend(self._open(item))
            assert self.open is not None
            self.tool_items[position] = self.open
        index = self.tool_items[position]
        item = self.items[index]
        arguments = function.get("arguments")
        if arguments:
            item["arguments"] += arguments
            frames.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=index,
                    delta=arguments,
                )
            )
        return frames

    def error(self, error: Json) -> list[bytes]:
        self.broken = error
        return []

    def done(self) -> list[bytes]:
        frames = self._close("incomplete" if self.broken else "completed")
        if self.broken:
            status, incomplete = "failed", None
        else:
            status, incomplete = status_of(self.finish_reason)
        response = self._response(status)
        response["incomplete_details"] = incomplete
        if self.broken:
            response["error"] = {
                "code": "server_error",
                "message": str(self.broken.get("message") or "The upstream stream broke."),
            }
        if self.final is not None:
            response["usage"] = usage_of(self.final)
            response["receipt"] = self.final.get("receipt")
        name = {"completed": "response.completed", "incomplete": "response.incomplete"}
        frames.append(self._event(name.get(status, "response.failed"), response=response))
        return frames

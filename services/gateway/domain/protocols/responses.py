"""A chat request on an OpenAI Responses channel (`POST /responses`, `store: false`),
and its answer and stream back as chat.

Carried: every message as an input item (system and developer messages keep their
role; assistant tool calls become `function_call` items, tool messages
`function_call_output` items), user text and image parts, the output cap
(`max_output_tokens`, at least 16 as the API requires), `temperature`, `top_p`,
function tools, `tool_choice`, `parallel_tool_calls`, `response_format` (as
`text.format`), `reasoning_effort` (as `reasoning.effort`) and `user`. Refused when
set: `stop` (Responses has no stop sequences), `n` > 1, `logprobs`, penalties, `seed`.

Usage: `input_tokens` (its `cached_tokens` named) and `output_tokens` (its
`reasoning_tokens` named) are the chat answer's prompt and completion tokens.
"""

from __future__ import annotations

from typing import Any

from services.gateway.domain.protocols.base import (
    OPENAI_RESPONSES,
    ChannelCall,
    ChunkWriter,
    Json,
    cannot_carry,
    chat_answer,
    chat_usage,
    count,
    joined_text,
    output_cap,
    sse_data,
    text_parts,
)

MIN_OUTPUT_TOKENS = 16
INCOMPLETE = {"max_output_tokens": "length", "content_filter": "content_filter"}


def usage_of(usage: Any) -> Json | None:
    if not isinstance(usage, dict) or not isinstance(usage.get("input_tokens"), int):
        return None
    cached = count((usage.get("input_tokens_details") or {}).get("cached_tokens"))
    reasoning = count((usage.get("output_tokens_details") or {}).get("reasoning_tokens"))
    return chat_usage(
        count(usage.get("input_tokens")), count(usage.get("output_tokens")), cached, 0, reasoning
    )


def finish_of(response: Json, called: bool) -> str:
    if response.get("status") == "incomplete":
        reason = (response.get("incomplete_details") or {}).get("reason")
        return INCOMPLETE.get(str(reason), "length")
    return "tool_calls" if called else "stop"


class ResponsesCall(ChannelCall):
    name = OPENAI_RESPONSES
    path = "/responses"
    carried = frozenset(
        {
            "max_tokens",
            "max_completion_tokens",
            "temperature",
            "top_p",
            "tools",
            "tool_choice",
            "parallel_tool_calls",
            "response_format",
            "reasoning_effort",
            "user",
        }
    )

    def request(self, chat: Json) -> Json:
        self.refuse_uncarried(chat)
        cap = output_cap(chat)
        if cap < MIN_OUTPUT_TOKENS:
            raise cannot_carry(
                self.name, "max_tokens", f"Responses needs at least {MIN_OUTPUT_TOKENS}"
            )
        body: Json = {
            "model": chat.get("model"),
            "input": self.items(chat.get("messages") or []),
            "max_output_tokens": cap,
            "store": False,
        }
        for key in ("temperature", "top_p", "parallel_tool_calls", "user"):
            if chat.get(key) is not None:
                body[key] = chat[key]
        if chat.get("reasoning_effort") is not None:
            body["reasoning"] = {"effort": chat["reasoning_effort"]}
        tools = []
        for index, tool in enumerate(chat.get("tools") or []):
            function = tool.get("function") if isinstance(tool, dict) else None
            if tool.get("type") != "function" or not isinstance(function, dict):
                raise cannot_carry(self.name, f"tools[{index}]", "only function tools")
            tools.append({"type": "function", **function})
        if tools:
            body["tools"] = tools
        choice = chat.get("tool_choice")
        if isinstance(choice, dict):
            choice = {"type": "function", "name": (choice.get("function") or {}).get("name")}
        if choice is not None:
            body["tool_choice"] = choice
        text_format = self.text_format(chat.get("response_format"))
        if text_format is not None:
            body["text"] = {"format": text_format}
        if chat.get("stream") is True:
            body["stream"] = True
        return body

    def items(self, messages: list[Any]) -> list[Json]:
        items: list[Json] = []
        for index, message in enumerate(messages):
            param = f"messages[{index}]"
            role = message.get("role")
            content = message.get("content")
            if role in ("system", "developer"):
                items.append({"type": "message", "role": role, "content": joined_text(content)})
            elif role == "user":
                parts = [self.part(p) for p in text_parts(content, param, self.name)]
                items.append({"type": "message", "role": "user", "content": parts})
            elif role == "assistant":
                text = joined_text(content)
                if text:
                    items.append(
                        {
                            "type": "message",
                            "role": "assistant",
                            "content": [{"type": "output_text", "text": text}],
                        }
                    )
                for call in message.get("tool_calls") or []:
                    function = call.get("function") or {}
                    items.append(
                        {
                            "type": "function_call",
                            "call_id": call.get("id"),
                            "name": function.get("name"),
                            "arguments": function.get("arguments") or "{}",
                        }
                    )
            elif role == "tool":
                items.append(
                    {
                        "type": "function_call_output",
                        "call_id": message.get("tool_call_id"),
                        "output": joined_text(content),
                    }
                )
            else:
                raise cannot_carry(self.name, param, f"the {role} role")
        return items

    @staticmethod
    def part(part: Json) -> Json:
        if part["type"] == "text":
            return {"type": "input_text", "text": part.get("text", "")}
        image = part.get("image_url") or {}
        return {
            "type": "input_image",
            "image_url": image.get("url"),
            "detail": image.get("detail") or "auto",
        }

    def text_format(self, response_format: Any) -> Json | None:
        if not isinstance(response_format, dict) or response_format.get("type") in (None, "text"):
            return None
        if response_format.get("type") == "json_object":
            return {"type": "json_object"}
        schema = response_format.get("json_schema")
        if response_format.get("type") != "json_schema" or not isinstance(schema, dict):
            raise cannot_carry(self.name, "response_format")
        return {"type": "json_schema", **schema}

    def answer(self, payload: Json) -> Json | None:
        if payload.get("object") != "response" or not isinstance(payload.get("output"), list):
            return None
        texts: list[str] = []
        calls: list[Json] = []
        refusal = None
        for item in payload["output"]:
            if item.get("type") == "message":
                for part in item.get("content") or []:
                    if part.get("type") == "output_text":
                        texts.append(str(part.get("text", "")))
                    elif part.get("type") == "refusal":
                        refusal = part.get("refusal")
            elif item.get("type") == "function_call":
                calls.append(
                    {
                        "id": item.get("call_id"),
                        "type": "function",
                        "function": {"name": item.get("name"), "arguments": item.get("arguments")},
                    }
                )
        message: Json = {
            "role": "assistant",
            "content": "".join(texts) if texts or not calls else None,
            "refusal": refusal,
        }
        if calls:
            message["tool_calls"] = calls
        return chat_answer(
            "chatcmpl-" + str(payload.get("id", "")),
            str(payload.get("model", "")),
            message,
            finish_of(payload, bool(calls)),
            usage_of(payload.get("usage")),
        )

    def reader(self) -> ResponsesReader:
        return ResponsesReader()


class ResponsesReader:
    """The Responses stream's typed events as chat chunks."""

    def __init__(self) -> None:
        self.out = ChunkWriter()
        # Output index -> tool call index.
        self.calls: dict[int, int] = {}

    def line(self, line: str) -> list[str]:
        event = sse_data(line)
        if event is None:
            return []
        kind = event.get("type")
        if kind in ("error", "response.failed"):
            raise ValueError(f"the channel's stream failed: {kind}")
        if kind == "response.created":
            response = event.get("response") or {}
            self.out.id = "chatcmpl-" + str(response.get("id", ""))
            self.out.model = str(response.get("model", ""))
            return [self.out.chunk({"role": "assistant", "content": ""})]
        if kind == "response.output_text.delta":
            return [self.out.chunk({"content": event.get("delta", "")})]
        if kind == "response.refusal.delta":
            return [self.out.chunk({"refusal": event.get("delta", "")})]
        if kind == "response.output_item.added":
            item = event.get("item") or {}
            if item.get("type") != "function_call":
                return []
            position = len(self.calls)
            self.calls[event.get("output_index", 0)] = position
            call = {
                "index": position,
                "id": item.get("call_id"),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": ""},
            }
            return [self.out.chunk({"tool_calls": [call]})]
        if kind == "response.function_call_arguments.delta":
            position = self.calls.get(event.get("output_index", 0), 0)
            call = {"index": position, "function": {"arguments": event.get("delta", "")}}
            return [self.out.chunk({"tool_calls": [call]})]
        if kind in ("response.completed", "response.incomplete"):
            response = event.get("response") or {}
            finish = finish_of(response, bool(self.calls))
            return self.out.end(finish, usage_of(response.get("usage")))
        return []

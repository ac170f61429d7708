"""A chat request on an Anthropic Messages channel (`POST /messages`), and its answer
and stream back as chat.

Carried: system and developer messages (leading ones, as `system`), user text and
image parts, assistant text and tool calls (`tool_use`), tool results (`tool_result`
in the next user turn), the output cap (`max_tokens`, which Anthropic requires; the
flow sets one on every request), `temperature` (0 to 1), `top_p`, `stop`, function
tools, `tool_choice`, `parallel_tool_calls: false`, `user` (as `metadata.user_id`) and
`response_format` (a JSON schema, or any JSON object, as one forced tool whose input
is the answer: the tool call comes back as the message's text). Anything else that is
set is refused naming it (`n` > 1, `logprobs`, penalties, `seed`, ...).

Usage: `input_tokens` + `cache_read_input_tokens` + `cache_creation_input_tokens`
is the chat answer's `prompt_tokens` (its cached and cache-write parts named),
`output_tokens` its `completion_tokens`.
"""

from __future__ import annotations

from typing import Any

import orjson

from services.gateway.domain.protocols.base import (
    ANTHROPIC_MESSAGES,
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

ANTHROPIC_VERSION = "2023-06-01"
JSON_TOOL = "json_answer"
FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def usage_of(usage: Any) -> Json | None:
    if not isinstance(usage, dict) or not isinstance(usage.get("input_tokens"), int):
        return None
    read = count(usage.get("cache_read_input_tokens"))
    written = count(usage.get("cache_creation_input_tokens"))
    prompt = count(usage.get("input_tokens")) + read + written
    return chat_usage(prompt, count(usage.get("output_tokens")), read, written, 0)


class AnthropicCall(ChannelCall):
    name = ANTHROPIC_MESSAGES
    path = "/messages"
    carried = frozenset(
        {
            "max_tokens",
            "max_completion_tokens",
            "temperature",
            "top_p",
            "stop",
            "tools",
            "tool_choice",
            "parallel_tool_calls",
            "response_format",
            "user",
        }
    )

    def __init__(self) -> None:
        # The forced tool that carries `response_format` (its call is the answer's text).
        self.json_tool = ""

    def request(self, chat: Json) -> Json:
        self.refuse_uncarried(chat)
        body: Json = {"model": chat.get("model"), "max_tokens": output_cap(chat)}
        system, messages = self.messages(chat.get("messages") or [])
        if system:
            body["system"] = system
        body["messages"] = messages
        temperature = chat.get("temperature")
        if temperature is not None:
            if not isinstance(temperature, int | float) or not 0 <= temperature <= 1:
                raise cannot_carry(self.name, "temperature", "Anthropic takes 0 to 1")
            body["temperature"] = temperature
        if chat.get("top_p") is not None:
            body["top_p"] = chat["top_p"]
        stop = chat.get("stop")
        if stop:
            body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
        if chat.get("user"):
            body["metadata"] = {"user_id": str(chat["user"])}
        tools = self.tools(chat.get("tools"))
        choice = self.tool_choice(chat.get("tool_choice"))
        schema = self.answer_schema(chat.get("response_format"))
        if schema is not None:
            if tools:
                raise cannot_carry(self.name, "response_format", "together with tools")
            self.json_tool = JSON_TOOL
            tools = [{"name": JSON_TOOL, "description": "The answer.", "input_schema": schema}]
            choice = {"type": "tool", "name": JSON_TOOL}
        if tools:
            body["tools"] = tools
        if chat.get("parallel_tool_calls") is False:
            choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
        if choice is not None:
            body["tool_choice"] = choice
        if chat.get("stream") is True:
            body["stream"] = True
        return body

    def messages(self, chat_messages: list[Any]) -> tuple[str, list[Json]]:
        system: list[str] = []
        out: list[Json] = []
        for index, message in enumerate(chat_messages):
            param = f"messages[{index}]"
            role = message.get("role")
            if role in ("system", "developer"):
                if out:
                    raise cannot_carry(self.name, param, f"a {role} message after the first turn")
                system.append(joined_text(message.get("content")))
                continue
            if role == "user":
                blocks = [
                    self.block(p, param)
                    for p in text_parts(message.get("content"), param, self.name)
                ]
            elif role == "assistant":
                blocks = [
                    {"type": "text", "text": t} for t in [joined_text(message.get("content"))] if t
                ]
                for call_index, call in enumerate(message.get("tool_calls") or []):
                    function = call.get("function") or {}
                    try:
                        arguments = orjson.loads(function.get("arguments") or "{}")
                    except orjson.JSONDecodeError:
                        raise cannot_carry(
                            self.name, f"{param}.tool_calls[{call_index}]", "arguments not JSON"
                        ) from None
                    blocks.append(
                        {
                            "type": "tool_use",
                            "id": call.get("id"),
                            "name": function.get("name"),
                            "input": arguments,
                        }
                    )
            elif role == "tool":
                role = "user"
                blocks = [
                    {
                        "type": "tool_result",
                        "tool_use_id": message.get("tool_call_id"),
                        "content": joined_text(message.get("content")),
                    }
                ]
            else:
                raise cannot_carry(self.name, param, f"the {role} role")
            if out and out[-1]["role"] == role:
                out[-1]["content"].extend(blocks)
            else:
                out.append({"role": role, "content": blocks})
        return "\n\n".join(system), out

    def block(self, part: Json, param: str) -> Json:
        if part["type"] == "text":
            return {"type": "text", "text": part.get("text", "")}
        url = str((part.get("image_url") or {}).get("url", ""))
        if url.startswith("data:") and ";base64," in url:
            media, data = url[5:].split(";base64,", 1)
            return {
                "type": "image",
                "source": {"type": "base64", "media_type": media, "data": data},
            }
        return {"type": "image", "source": {"type": "url", "url": url}}

    def tools(self, tools: Any) -> list[Json]:
        out = []
        for index, tool in enumerate(tools or []):
            function = tool.get("function") if isinstance(tool, dict) else None
            if tool.get("type") != "function" or not isinstance(function, dict):
                raise cannot_carry(self.name, f"tools[{index}]", "only function tools")
            entry: Json = {
                "name": function.get("name"),
                "input_schema": function.get("parameters") or {"type": "object"},
            }
            if function.get("description"):
                entry["description"] = function["description"]
            out.append(entry)
        return out

    def tool_choice(self, choice: Any) -> Json | None:
        if choice is None:
            return None
        if isinstance(choice, str):
            words = {"auto": "auto", "none": "none", "required": "any"}
            if choice not in words:
                raise cannot_carry(self.name, "tool_choice", repr(choice))
            return {"type": words[choice]}
        name = (choice.get("function") or {}).get("name") if isinstance(choice, dict) else None
        if not name:
            raise cannot_carry(self.name, "tool_choice")
        return {"type": "tool", "name": name}

    def answer_schema(self, response_format: Any) -> Json | None:
        if not isinstance(response_format, dict) or response_format.get("type") in (None, "text"):
            return None
        if response_format.get("type") == "json_object":
            return {"type": "object"}
        schema = (response_format.get("json_schema") or {}).get("schema")
        if response_format.get("type") != "json_schema" or not isinstance(schema, dict):
            raise cannot_carry(self.name, "response_format")
        return schema

    def answer(self, payload: Json) -> Json | None:
        if payload.get("type") != "message" or not isinstance(payload.get("content"), list):
            return None
        texts: list[str] = []
        calls: list[Json] = []
        for block in payload["content"]:
            if block.get("type") == "text":
                texts.append(str(block.get("text", "")))
            elif block.get("type") == "tool_use" and block.get("name") == self.json_tool:
                texts.append(orjson.dumps(block.get("input", {})).decode())
            elif block.get("type") == "tool_use":
                calls.append(
                    {
                        "id": block.get("id"),
                        "type": "function",
                        "function": {
                            "name": block.get("name"),
                            "arguments": orjson.dumps(block.get("input", {})).decode(),
                        },
                    }
                )
        message: Json = {
            "role": "assistant",
            "content": "".join(texts) if texts or not calls else None,
        }
        if calls:
            message["tool_calls"] = calls
        finish = FINISH.get(str(payload.get("stop_reason")), "stop")
        if self.json_tool and finish == "tool_calls":
            finish = "stop"
        return chat_answer(
            "chatcmpl-" + str(payload.get("id", "")),
            str(payload.get("model", "")),
            message,
            finish,
            usage_of(payload.get("usage")),
        )

    def reader(self) -> AnthropicReader:
        return AnthropicReader(self.json_tool)


class AnthropicReader:
    """Anthropic's stream events (message_start ... message_stop) as chat chunks."""

    def __init__(self, json_tool: str) -> None:
        self.json_tool = json_tool
        self.out = ChunkWriter()
        self.usage: Json = {}
        self.finish = "stop"
        # Content block index -> tool call index (or -1: the JSON answer's tool).
        self.tools: dict[int, int] = {}

    def line(self, line: str) -> list[str]:
        event = sse_data(line)
        if event is None:
            return []
        kind = event.get("type")
        if kind == "error":
            error = event.get("error") or {}
            raise ValueError(f"the channel's stream failed: {error.get('type', 'error')}")
        if kind == "message_start":
            message = event.get("message") or {}
            self.out.id = "chatcmpl-" + str(message.get("id", ""))
            self.out.model = str(message.get("model", ""))
            self.usage.update(message.get("usage") or {})
            return [self.out.chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") != "tool_use":
                text = block.get("text")
                return [self.out.chunk({"content": text})] if text else []
            if block.get("name") == self.json_tool:
                self.tools[event.get("index", 0)] = -1
                return []
            position = len([t for t in self.tools.values() if t >= 0])
            self.tools[event.get("index", 0)] = position
            call = {
                "index": position,
                "id": block.get("id"),
                "type": "function",
                "function": {"name": block.get("name"), "arguments": ""},
            }
            return [self.out.chunk({"tool_calls": [call]})]
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta":
                return [self.out.chunk({"content": delta.get("text", "")})]
            if delta.get("type") == "input_json_delta":
                position = self.tools.get(event.get("index", 0), -1)
                partial = delta.get("partial_json", "")
                if position < 0:
                    return [self.out.chunk({"content": partial})]
                call = {"index": position, "function": {"arguments": partial}}
                return [self.out.chunk({"tool_calls": [call]})]
            return []
        if kind == "message_delta":
            reason = (event.get("delta") or {}).get("stop_reason")
            if reason:
                self.finish = FINISH.get(str(reason), "stop")
                if self.json_tool and self.finish == "tool_calls":
                    self.finish = "stop"
            # message_delta's usage is cumulative: its counts replace message_start's.
            self.usage.update(
                {k: v for k, v in (event.get("usage") or {}).items() if v is not None}
            )
            return []
        if kind == "message_stop":
            return self.out.end(self.finish, usage_of(self.usage))
        return []

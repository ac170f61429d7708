"""The mock upstream's other wire protocols, as plain data (no I/O): Anthropic Messages
(`POST /v1/messages`) and OpenAI Responses (`POST /v1/responses`), each with its
streaming events and its own usage fields.

Each request is read into the mock's `ChatRequest` (its messages' text is what the
mock counts, as for chat), answered by the same `plan_chat` and written in the
protocol's shape: so the same prompt costs the same tokens whatever the protocol.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from typing import Any

import orjson

from apps.mock_upstream import tokens
from apps.mock_upstream.replies import (
    ChatPlan,
    ChatRequest,
    Frame,
    InvalidRequest,
    _optional_int,
    answer_schema,
)

Json = dict[str, Any]

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def sse(event: str, data: Json) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _text(content: object) -> str:
    """The text of a content: a string, or the text of its blocks / parts (tool results'
    and function outputs' text included)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for block in content:
            if not isinstance(block, Mapping):
                continue
            if isinstance(block.get("text"), str):
                texts.append(block["text"])
            elif "content" in block:
                texts.append(_text(block["content"]))
        return " ".join(t for t in texts if t)
    return ""


def _require_body(body: object) -> Json:
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("Set `model` to the model id to call.", "model")
    return body


# --- Anthropic Messages ----------------------------------------------------------------

ANTHROPIC_ERROR_TYPES = {
    "server_error": "api_error",
    "rate_limit_error": "rate_limit_error",
    "authentication_error": "authentication_error",
    "permission_error": "permission_error",
    "timeout_error": "api_error",
}


def anthropic_error(body: Json) -> Json:
    """An OpenAI-style error body in Anthropic's shape."""
    error = body.get("error") or {}
    kind = ANTHROPIC_ERROR_TYPES.get(str(error.get("type")), "invalid_request_error")
    if error.get("code") == "overloaded":
        kind = "overloaded_error"
    return {"type": "error", "error": {"type": kind, "message": error.get("message", "")}}


def messages_request(value: object) -> ChatRequest:
    body = _require_body(value)
    max_tokens = _optional_int(body, "max_tokens", minimum=1)
    if max_tokens is None:
        raise InvalidRequest("max_tokens: Field required", "max_tokens")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw or not all(isinstance(m, dict) for m in raw):
        raise InvalidRequest("messages: at least one message is required", "messages")
    messages: list[Mapping[str, object]] = []
    if body.get("system"):
        messages.append({"role": "system", "content": _text(body["system"])})
    for message in raw:
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise InvalidRequest("messages: roles must be user or assistant", "messages")
        messages.append({"role": role, "content": _text(message.get("content"))})
    tools: list[Mapping[str, object]] = []
    for tool in body.get("tools") or []:
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise InvalidRequest("tools: each tool needs a name", "tools")
        tools.append(
            {
                "type": "function",
                "function": {"name": tool["name"], "parameters": tool.get("input_schema") or {}},
            }
        )
    choice = body.get("tool_choice")
    tool_choice: object = None
    if isinstance(choice, dict):
        if choice.get("type") == "none":
            tool_choice = "none"
        elif choice.get("type") == "any":
            tool_choice = "required"
        elif choice.get("type") == "tool":
            tool_choice = {"type": "function", "function": {"name": choice.get("name")}}
    return ChatRequest(
        model=str(body["model"]),
        messages=messages,
        n=1,
        max_tokens=max_tokens,
        stream=body.get("stream") is True,
        include_usage=True,
        tools=tools,
        tool_choice=tool_choice,
    )


def _message_usage(plan: ChatPlan) -> Json:
    return {
        "input_tokens": plan.prompt_tokens - plan.cached_tokens - plan.cache_write_tokens,
        "cache_creation_input_tokens": plan.cache_write_tokens,
        "cache_read_input_tokens": plan.cached_tokens,
        "output_tokens": plan.completion_tokens_per_choice,
    }


def _tool_input(plan: ChatPlan) -> Json:
    assert plan.tool_call is not None
    parsed = json.loads(plan.tool_call.arguments)
    return parsed if isinstance(parsed, dict) else {}


def message_object(plan: ChatPlan, usage: bool) -> Json:
    content: list[Json]
    if plan.tool_call is not None:
        call = plan.tool_call
        content = [
            {
                "type": "tool_use",
                "id": "toolu_" + call.id,
                "name": call.name,
                "input": _tool_input(plan),
            }
        ]
    else:
        content = [{"type": "text", "text": tokens.reply_text(plan.words)}]
    message: Json = {
        "id": "msg_mock" + secrets.token_hex(12),
        "type": "message",
        "role": "assistant",
        "model": plan.model,
        "content": content,
        "stop_reason": STOP_REASONS[plan.finish_reason],
        "stop_sequence": None,
    }
    if usage:
        message["usage"] = _message_usage(plan)
    return message


def message_frames(plan: ChatPlan, usage: bool) -> list[Frame]:
    """message_start, one content block (text deltas word by word, or a tool_use with
    its input JSON), message_delta (stop reason, output tokens), message_stop."""
    counts = _message_usage(plan)
    start_usage = {**counts, "output_tokens": 1} if usage else {}
    start: Json = {
        "id": "msg_mock" + secrets.token_hex(12),
        "type": "message",
        "role": "assistant",
        "model": plan.model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": start_usage,
    }
    frames = [Frame(sse("message_start", {"type": "message_start", "message": start}), "head")]
    if plan.tool_call is not None:
        call = plan.tool_call
        block = {"type": "tool_use", "id": "toolu_" + call.id, "name": call.name, "input": {}}
        deltas = [{"type": "input_json_delta", "partial_json": call.arguments}]
    else:
        block = {"type": "text", "text": ""}
        deltas = [
            {"type": "text_delta", "text": word if i == 0 else f" {word}"}
            for i, word in enumerate(plan.words)
        ]
    opening = {"type": "content_block_start", "index": 0, "content_block": block}
    frames.append(Frame(sse("content_block_start", opening), "head"))
    for delta in deltas:
        body = {"type": "content_block_delta", "index": 0, "delta": delta}
        frames.append(Frame(sse("content_block_delta", body), "content"))
    closing = {"type": "content_block_stop", "index": 0}
    frames.append(Frame(sse("content_block_stop", closing), "tail"))
    end = {
        "type": "message_delta",
        "delta": {"stop_reason": STOP_REASONS[plan.finish_reason], "stop_sequence": None},
        "usage": {"output_tokens": counts["output_tokens"]} if usage else {},
    }
    frames.append(Frame(sse("message_delta", end), "tail"))
    frames.append(Frame(sse("message_stop", {"type": "message_stop"}), "tail"))
    return frames


# --- OpenAI Responses ------------------------------------------------------------------


def responses_request(value: object) -> ChatRequest:
    body = _require_body(value)
    max_tokens = _optional_int(body, "max_output_tokens", minimum=16)
    messages: list[Mapping[str, object]] = []
    if body.get("instructions"):
        messages.append({"role": "system", "content": str(body["instructions"])})
    raw = body.get("input")
    if isinstance(raw, str):
        messages.append({"role": "user", "content": raw})
    elif isinstance(raw, list) and raw:
        for item in raw:
            if not isinstance(item, dict):
                raise InvalidRequest("input: each item must be an object", "input")
            kind = item.get("type", "message")
            if kind == "message":
                messages.append(
                    {"role": str(item.get("role")), "content": _text(item.get("content"))}
                )
            elif kind == "function_call_output":
                messages.append({"role": "tool", "content": _text(item.get("output"))})
            elif kind == "function_call":
                messages.append({"role": "assistant", "content": ""})
            else:
                raise InvalidRequest(f"input: items of type {kind} are not supported", "input")
    else:
        raise InvalidRequest("input: a string or a non-empty list of items", "input")
    tools: list[Mapping[str, object]] = []
    for tool in body.get("tools") or []:
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise InvalidRequest("tools: the mock serves function tools", "tools")
        tools.append(
            {
                "type": "function",
                "function": {"name": tool.get("name"), "parameters": tool.get("parameters") or {}},
            }
        )
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "function":
        choice = {"type": "function", "function": {"name": choice.get("name")}}
    text = body.get("text")
    schema = answer_schema(text.get("format"), "text.format") if isinstance(text, dict) else None
    return ChatRequest(
        model=str(body["model"]),
        messages=messages,
        n=1,
        max_tokens=max_tokens,
        stream=body.get("stream") is True,
        include_usage=True,
        tools=tools,
        tool_choice=choice,
        answer_schema=schema,
    )


def _response_usage(plan: ChatPlan) -> Json:
    output = plan.completion_tokens_per_choice
    return {
        "input_tokens": plan.prompt_tokens,
        "input_tokens_details": {"cached_tokens": plan.cached_tokens},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": plan.reasoning_tokens},
        "total_tokens": plan.prompt_tokens + output,
    }


def _output_item(plan: ChatPlan, item_id: str) -> Json:
    if plan.tool_call is not None:
        call = plan.tool_call
        return {
            "type": "function_call",
            "id": item_id,
            "call_id": call.id,
            "name": call.name,
            "arguments": call.arguments,
            "status": "completed",
        }
    return {
        "type": "message",
        "id": item_id,
        "role": "assistant",
        "status": "completed",
        "content": [
            {"type": "output_text", "text": tokens.reply_text(plan.words), "annotations": []}
        ],
    }


def response_object(plan: ChatPlan, usage: bool, response_id: str = "") -> Json:
    capped = plan.finish_reason == "length"
    return {
        "id": response_id or "resp_mock" + secrets.token_hex(12),
        "object": "response",
        "created_at": 0,
        "model": plan.model,
        "status": "incomplete" if capped else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if capped else None,
        "output": [_output_item(plan, "item_mock" + secrets.token_hex(8))],
        "usage": _response_usage(plan) if usage else None,
    }


def response_frames(plan: ChatPlan, usage: bool) -> list[Frame]:
    """response.created, the output item (text deltas word by word, or a function call
    with its arguments), then response.completed (or .incomplete) with the usage."""
    response_id = "resp_mock" + secrets.token_hex(12)
    item_id = "item_mock" + secrets.token_hex(8)
    final = response_object(plan, usage, response_id)
    started = {**final, "status": "in_progress", "output": [], "usage": None}
    frames = [
        Frame(sse("response.created", {"type": "response.created", "response": started}), "head")
    ]
    item = _output_item(plan, item_id)
    if plan.tool_call is not None:
        added = {**item, "arguments": "", "status": "in_progress"}
        deltas = [
            (
                "response.function_call_arguments.delta",
                {"item_id": item_id, "output_index": 0, "delta": plan.tool_call.arguments},
            )
        ]
    else:
        added = {**item, "content": [], "status": "in_progress"}
        deltas = [
            (
                "response.output_text.delta",
                {
                    "item_id": item_id,
                    "output_index": 0,
                    "content_index": 0,
                    "delta": word if i == 0 else f" {word}",
                },
            )
            for i, word in enumerate(plan.words)
        ]
    head = {"type": "response.output_item.added", "output_index": 0, "item": added}
    frames.append(Frame(sse("response.output_item.added", head), "head"))
    for name, data in deltas:
        frames.append(Frame(sse(name, {"type": name, **data}), "content"))
    done = {"type": "response.output_item.done", "output_index": 0, "item": item}
    frames.append(Frame(sse("response.output_item.done", done), "tail"))
    ending = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
    frames.append(Frame(sse(ending, {"type": ending, "response": final}), "tail"))
    return frames

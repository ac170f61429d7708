"""What the gateway refuses before anything runs: a body or a URL no honest client
sends, answered 400 naming the parameter, before a route is resolved, a hold placed
or an upstream called (so nothing is charged or held for it).

Two layers, both plain Python (no I/O):

- `check_json` runs on every JSON body the HTTP front reads: nesting at most
  MAX_JSON_DEPTH, no NUL character in any string or key (PostgreSQL text refuses
  them), every integer within int64 (protobuf and PostgreSQL bigint refuse more).
  Invalid Unicode (a lone surrogate) never gets this far: the JSON parser refuses it.
- `validate_chat` / `validate_embeddings` / `validate_run` check the fields the
  gateway and the upstream understand: types (`messages` items are objects with a
  string `role`, `stream` is a boolean, `input` is text or token arrays) and
  bounds (`max_tokens`, `n`, `temperature` ...), with OpenAI's ranges. Fields we do
  not know pass through to the upstream untouched.
"""

from __future__ import annotations

from typing import Any

from services.gateway.domain.runs import parse_budget, parse_estimate
from tokenforge.errors import DomainError, Reason

MAX_JSON_DEPTH = 64
# Ids and names (model, key and project ids, names, a path parameter, a query value).
MAX_ID_CHARS = 256
INT32_MAX = 2**31 - 1
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
MAX_CHOICES = 16
MAX_STOP_SEQUENCES = 4
MAX_EMBEDDING_INPUTS = 2048

# A body with none of these cannot break a rule `check_json` enforces, so it is not
# walked: no escaped NUL, too few brackets to nest MAX_JSON_DEPTH deep, no number of
# 19 digits or more (int64 has 19).
_ESCAPED_NUL = b"\\u0000"
TOO_DEEP = f"nests deeper than {MAX_JSON_DEPTH} levels; flatten it."
# Digits made all zeros: a run of 19 is then a plain substring search (a regex costs
# about 15 ns per byte, 0.4 ms for a 27 kB prompt).
_DIGITS_TO_ZERO = bytes.maketrans(b"0123456789", b"0" * 10)
_NINETEEN_DIGITS = b"0" * 19


def invalid(param: str, message: str) -> DomainError:
    return DomainError(Reason.INVALID_ARGUMENT, message, {"param": param})


def check_json(raw: bytes, body: Any) -> None:
    """Refuse a parsed JSON body (`raw` is its text) that nests too deep, carries a
    NUL character or an integer outside int64."""
    if (
        _ESCAPED_NUL not in raw
        and raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH
        and _NINETEEN_DIGITS not in raw.translate(_DIGITS_TO_ZERO)
    ):
        return
    if _clean(body):
        return
    problem = _walk(body, 0)
    if problem is not None:
        parts, message = problem
        # Too deep: the field it starts in says enough (its full path is 64 levels).
        path = _path(parts[-1:] if message == TOO_DEEP else reversed(parts))
        raise invalid(path or "body", f"`{path}` {message}" if path else f"The body {message}")


def _clean(body: Any) -> bool:
    """True when nothing in `body` breaks a rule: one quick pass (`_walk` then says
    where, when something does)."""
    stack: list[tuple[Any, int]] = [(body, 0)]
    while stack:
        value, depth = stack.pop()
        if depth >= MAX_JSON_DEPTH:
            return False
        items = value.items() if type(value) is dict else enumerate(value)
        for key, item in items:
            kind = type(item)
            if kind is str:
                if "\x00" in item:
                    return False
            elif kind is dict or kind is list:
                stack.append((item, depth + 1))
            elif kind is int and not INT64_MIN <= item <= INT64_MAX:
                return False
            if type(key) is str and "\x00" in key:
                return False
    return True


def _walk(value: Any, depth: int) -> tuple[list[str | int], str] | None:
    """(the path of the first bad value, innermost first; what is wrong), or None."""
    if isinstance(value, str):
        return None if "\x00" not in value else ([], "must not contain a NUL character.")
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return None
    if isinstance(value, int):
        if INT64_MIN <= value <= INT64_MAX:
            return None
        return [], f"is {value}, beyond the 64-bit integer range."
    if depth >= MAX_JSON_DEPTH:
        return [], TOO_DEEP
    items: Any = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        if isinstance(key, str) and "\x00" in key:
            return [], "has a key with a NUL character."
        found = _walk(item, depth + 1)
        if found is not None:
            found[0].append(key)
            return found
    return None


def _path(parts: Any) -> str:
    """`messages[0].content`: keys joined by dots, list indexes in brackets."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def check_url_value(param: str, value: str, limit: int = MAX_ID_CHARS) -> None:
    """A path parameter or query value: no NUL, no replacement character left by
    undecodable bytes, at most `limit` characters."""
    if "\x00" in value:
        raise invalid(param, f"`{param}` must not contain a NUL character.")
    if len(value) > limit:
        raise invalid(param, f"`{param}` is {len(value)} characters long; at most {limit}.")


# --- chat, embeddings, runs ---------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _name(body: dict[str, Any], param: str, required: bool = False) -> None:
    value = body.get(param)
    if value is None and not required:
        return
    if not isinstance(value, str) or not value:
        raise invalid(param, f"`{param}` is required: a model id from GET /v1/models.")
    if len(value) > MAX_ID_CHARS:
        raise invalid(param, f"`{param}` is at most {MAX_ID_CHARS} characters.")


def _optional_int(body: dict[str, Any], param: str, low: int, high: int) -> None:
    value = body.get(param)
    if value is None:
        return
    if not _is_int(value) or not low <= value <= high:
        raise invalid(param, f"`{param}` must be a whole number from {low} to {high}.")


def _optional_number(body: dict[str, Any], param: str, low: float, high: float) -> None:
    value = body.get(param)
    if value is None:
        return
    if not _is_number(value) or not low <= value <= high:
        raise invalid(param, f"`{param}` must be a number from {low:g} to {high:g}.")


def _optional_type(body: dict[str, Any], param: str, kind: type, words: str) -> None:
    value = body.get(param)
    if value is not None and not isinstance(value, kind):
        raise invalid(param, f"`{param}` must be {words}.")


def _user(body: dict[str, Any]) -> None:
    _optional_type(body, "user", str, "a string")
    if len(body.get("user") or "") > MAX_ID_CHARS:
        raise invalid("user", f"`user` is at most {MAX_ID_CHARS} characters.")


def _message(index: int, message: Any) -> None:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise invalid(
            where,
            f'`{where}` must be an object like {{"role": "user", "content": "Hello"}}.',
        )
    role = message.get("role")
    if not isinstance(role, str) or not role or len(role) > 64:
        raise invalid(
            f"{where}.role",
            f"`{where}.role` must be a string: system, developer, user, assistant or tool.",
        )
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        if not isinstance(content, list) or not all(
            isinstance(part, dict) and isinstance(part.get("type"), str) for part in content
        ):
            raise invalid(
                f"{where}.content",
                f"`{where}.content` must be a string, or a list of parts like "
                '{"type": "text", "text": "Hello"}.',
            )
    for name in ("name", "tool_call_id"):
        value = message.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > MAX_ID_CHARS):
            raise invalid(
                f"{where}.{name}",
                f"`{where}.{name}` must be a string of at most {MAX_ID_CHARS} characters.",
            )
    calls = message.get("tool_calls")
    if calls is not None and not (
        isinstance(calls, list) and all(isinstance(c, dict) for c in calls)
    ):
        raise invalid(f"{where}.tool_calls", f"`{where}.tool_calls` must be a list of objects.")


def validate_chat(body: dict[str, Any]) -> None:
    """A chat completion body, as OpenAI defines it; the first problem is refused."""
    _name(body, "model", required=True)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages", "`messages` must be a non-empty list of chat messages.")
    for index, message in enumerate(messages):
        # The common message, {"role": "user", "content": "..."}, at the cost of a glance.
        if (
            type(message) is dict
            and len(message) == 2
            and type(message.get("content")) is str
            and type(role := message.get("role")) is str
            and 0 < len(role) <= 64
        ):
            continue
        _message(index, message)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise invalid("stream", "`stream` must be true or false.")
    _optional_type(body, "stream_options", dict, 'an object, like {"include_usage": true}')
    _optional_int(body, "max_tokens", 1, INT32_MAX)
    _optional_int(body, "max_completion_tokens", 1, INT32_MAX)
    _optional_int(body, "n", 1, MAX_CHOICES)
    _optional_number(body, "temperature", 0, 2)
    _optional_number(body, "top_p", 0, 1)
    _optional_number(body, "presence_penalty", -2, 2)
    _optional_number(body, "frequency_penalty", -2, 2)
    _optional_int(body, "seed", INT64_MIN, INT64_MAX)
    _optional_int(body, "top_logprobs", 0, 20)
    for flag in ("logprobs", "parallel_tool_calls", "store"):
        _optional_type(body, flag, bool, "true or false")
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, str):
        if (
            not isinstance(stop, list)
            or len(stop) > MAX_STOP_SEQUENCES
            or not all(isinstance(s, str) for s in stop)
        ):
            raise invalid(
                "stop", f"`stop` must be a string or a list of up to {MAX_STOP_SEQUENCES}."
            )
    tools = body.get("tools")
    if tools is not None and not (
        isinstance(tools, list) and all(isinstance(t, dict) for t in tools)
    ):
        raise invalid("tools", "`tools` must be a list of tool objects.")
    choice = body.get("tool_choice")
    if choice is not None and not isinstance(choice, str | dict):
        raise invalid("tool_choice", "`tool_choice` must be a string or an object.")
    _optional_type(body, "response_format", dict, 'an object, like {"type": "json_object"}')
    bias = body.get("logit_bias")
    if bias is not None and not (
        isinstance(bias, dict) and all(_is_number(v) and -100 <= v <= 100 for v in bias.values())
    ):
        raise invalid("logit_bias", "`logit_bias` maps token ids to numbers from -100 to 100.")
    _user(body)


def validate_embeddings(body: dict[str, Any]) -> None:
    """An embeddings body: `input` is a string, a list of strings, a token array
    (whole numbers) or a list of token arrays."""
    _name(body, "model", required=True)
    inputs = body.get("input")
    if not _embedding_input(inputs):
        raise invalid(
            "input",
            "`input` must be a non-empty string, a list of strings, a list of token ids "
            f"or a list of token id lists (at most {MAX_EMBEDDING_INPUTS} items).",
        )
    encoding = body.get("encoding_format")
    if encoding is not None and encoding not in ("float", "base64"):
        raise invalid("encoding_format", "`encoding_format` is `float` or `base64`.")
    _optional_int(body, "dimensions", 1, INT32_MAX)
    _user(body)


def _tokens(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(_is_int(t) and 0 <= t <= INT32_MAX for t in value)
    )


def _embedding_input(inputs: Any) -> bool:
    if isinstance(inputs, str):
        return bool(inputs)
    if not isinstance(inputs, list) or not inputs or len(inputs) > MAX_EMBEDDING_INPUTS:
        return False
    first = inputs[0]
    if isinstance(first, str):
        return all(isinstance(item, str) and item for item in inputs)
    if _is_int(first):
        return _tokens(inputs)
    return all(_tokens(item) for item in inputs)


def validate_request(body: dict[str, Any]) -> None:
    """A body of POST /v1/routes/preview: embeddings when it has `input`, else chat."""
    if "input" in body:
        validate_embeddings(body)
    else:
        validate_chat(body)


def validate_run(body: dict[str, Any]) -> None:
    """POST /v1/runs: `model` or `bucket`, and a `budget` or an `estimate`, each within
    bounds, before a route is resolved or anything is held."""
    _name(body, "model")
    bucket = body.get("bucket")
    if bucket is not None and bucket not in ("credit", "routed"):
        raise invalid("bucket", "`bucket` is `credit` or `routed`.")
    if body.get("budget") is not None:
        parse_budget(body["budget"])
    elif body.get("estimate") is not None:
        parse_estimate(body["estimate"])

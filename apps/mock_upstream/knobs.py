"""Knobs: how a test or a catalog channel makes the mock upstream slow, failing or odd.

A knob comes from a request header `x-mock-<name>: <value>` or from a path prefix
`/knobs/<name>=<value>[,<name>=<value>...]/v1/...`, so a channel's `base_url` can carry
them (`http://127.0.0.1:9000/knobs/status=503,latency-ms=50/v1`). A header wins over the
same knob in the path. A bare name in the path (`/knobs/no-usage/v1`) means `1`.

- `latency-ms`: wait before answering anything (errors included).
- `ttfb-ms`: wait after the response headers, before the body or the first stream chunk.
- `chunk-gap-ms`: wait between stream chunks.
- `status`: answer this HTTP status (>= 400) with an OpenAI-style error body.
- `cut-after`: close the connection abruptly after N content chunks (no finish chunk, no
  usage, no `[DONE]`); without `stream`, close after the headers, before the body.
- `no-usage`: leave `usage` out (and send no usage chunk in a stream).
- `reply-tokens`: the reply length in words (default 16).
- `fail-first`: the first N requests under this path prefix (or without a prefix) answer
  503, the next ones succeed; `POST /mock/reset` restarts the counts.
- `require-key`: refuse with 401 unless a key is sent (`Authorization: Bearer <key>`, or
  `x-api-key: <key>` as Anthropic clients send it); a value other than `1`/`true` must
  equal the key.
- `cached-tokens`, `cache-write-tokens`: report that many of the prompt's tokens as read
  from / written to the prompt cache (at most the prompt; cache writes on
  `/v1/messages` only, as Anthropic reports them).
- `reasoning-tokens`: report that many reasoning tokens, generated before the answer
  (counted in the output tokens, named apart).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from apps.mock_upstream.tokens import DEFAULT_REPLY_TOKENS

HEADER_PREFIX = "x-mock-"
_INT_KNOBS = (
    "latency-ms",
    "ttfb-ms",
    "chunk-gap-ms",
    "status",
    "cut-after",
    "reply-tokens",
    "fail-first",
    "cached-tokens",
    "cache-write-tokens",
    "reasoning-tokens",
)
_FLAG_KNOBS = ("no-usage",)
_TEXT_KNOBS = ("require-key",)
KNOB_NAMES = frozenset((*_INT_KNOBS, *_FLAG_KNOBS, *_TEXT_KNOBS))
_TRUE = frozenset(("1", "true", "yes", "on"))
_FALSE = frozenset(("0", "false", "no", "off"))


class KnobError(ValueError):
    """A knob the mock does not know, or a value it cannot read."""


@dataclass(frozen=True)
class Knobs:
    latency_ms: int = 0
    ttfb_ms: int = 0
    chunk_gap_ms: int = 0
    status: int | None = None
    cut_after: int | None = None
    no_usage: bool = False
    reply_tokens: int = DEFAULT_REPLY_TOKENS
    fail_first: int = 0
    require_key: str | None = None
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    @classmethod
    def from_values(cls, values: Mapping[str, str]) -> Knobs:
        unknown = sorted(set(values) - KNOB_NAMES)
        if unknown:
            raise KnobError(
                f"Unknown mock knob(s) {', '.join(unknown)}; "
                f"known knobs are {', '.join(sorted(KNOB_NAMES))}."
            )
        ints = {name: _read_int(name, values[name]) for name in _INT_KNOBS if name in values}
        status = ints.get("status")
        if status is not None and not 100 <= status <= 599:
            raise KnobError(f"Mock knob status={status} is not an HTTP status (100-599).")
        return cls(
            latency_ms=ints.get("latency-ms", 0),
            ttfb_ms=ints.get("ttfb-ms", 0),
            chunk_gap_ms=ints.get("chunk-gap-ms", 0),
            status=status,
            cut_after=ints.get("cut-after"),
            no_usage=_read_flag("no-usage", values.get("no-usage")),
            reply_tokens=ints.get("reply-tokens", DEFAULT_REPLY_TOKENS),
            fail_first=ints.get("fail-first", 0),
            require_key=values.get("require-key") or None,
            cached_tokens=ints.get("cached-tokens", 0),
            cache_write_tokens=ints.get("cache-write-tokens", 0),
            reasoning_tokens=ints.get("reasoning-tokens", 0),
        )

    def accepts_key(self, authorization: str | None, api_key: str | None = None) -> bool:
        """`Authorization: Bearer <key>` or `x-api-key: <key>` (`api_key`)."""
        if self.require_key is None:
            return True
        key = api_key or (authorization or "").removeprefix("Bearer ")
        if not key:
            return False
        if self.require_key.lower() in _TRUE:
            return True
        return key == self.require_key


def parse_path_knobs(segment: str) -> dict[str, str]:
    """`status=503,latency-ms=50` -> {"status": "503", "latency-ms": "50"}."""
    values: dict[str, str] = {}
    for item in segment.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        values[name.strip().lower()] = value.strip() if sep else "1"
    return values


def header_knobs(headers: Mapping[str, str]) -> dict[str, str]:
    return {
        name.lower().removeprefix(HEADER_PREFIX): value
        for name, value in headers.items()
        if name.lower().startswith(HEADER_PREFIX)
    }


def _read_int(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise KnobError(f"Mock knob {name}={value!r} must be a whole number.") from None
    if number < 0:
        raise KnobError(f"Mock knob {name}={number} must not be negative.")
    return number


def _read_flag(name: str, value: str | None) -> bool:
    if value is None:
        return False
    lowered = value.strip().lower()
    if lowered in _TRUE or lowered == "":
        return True
    if lowered in _FALSE:
        return False
    raise KnobError(f"Mock knob {name}={value!r} must be 1/true or 0/false.")

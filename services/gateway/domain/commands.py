"""What callers ask the gateway to do: a chat or embeddings request (the request flow,
services/gateway/flow/, carries it out)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class ChatCommand:
    request_id: str
    api_key: str
    body: dict[str, Any]
    trace_id: str
    client_ip: str = ""
    # `x-tokenforge-run`: draw a slice of that run's budget instead of holding.
    run_id: str = ""
    # The API format the client spoke, for the receipt ("" for OpenAI chat and
    # embeddings; see flow/formats.py).
    client_format: str = ""

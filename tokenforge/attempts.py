"""What a channel attempt's outcome says, agreed by the gateway (which reports every
attempt), routing's breakers (services/routing/domain/health.py) and routing's client
(which drops the reused answers through a channel that failed).

An outcome is `ok`, `timeout`, `connect_error` or `http_<status>`. A failure is what
says the channel is unwell: a timeout, a connection error, an HTTP 5xx or 429 (or an
outcome that is none of these); a 4xx is the request's own fault.
"""

from __future__ import annotations


def is_channel_failure(outcome: str) -> bool:
    if outcome == "ok":
        return False
    if outcome in ("timeout", "connect_error"):
        return True
    status = outcome.removeprefix("http_")
    return status == "429" or status.startswith("5") or not status.isdigit()

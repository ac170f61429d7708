"""schemathesis hooks for tests/e2e/test_openapi_fuzz.py (loaded through
SCHEMATHESIS_HOOKS): the `no_internals` check, DESIGN S2's second half. No answer
carries SQL, a database driver, a schema-qualified name, a traceback or a 64-hex
digest, and every answer carries `x-request-id`."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import schemathesis

# SQL and drivers; a name in one of our schemas (`usage.cost` and `usage.csv` are
# words of the API, not tables); a traceback; a sha256 hex digest (a key's digest).
INTERNALS = re.compile(
    r"SELECT |INSERT |UPDATE |DELETE FROM|sqlalchemy|psycopg|asyncpg|\[SQL|Traceback|"
    r"\b(?:wallet|routing|usage|payments|gateway)\.(?!cost\b|csv\b)[a-z_]{2,}|"
    r"(?<![0-9a-fA-F])[0-9a-fA-F]{64}(?![0-9a-fA-F])"
)


def internals_in(text: str, sent: str = "") -> str | None:
    """The first internal in `text` that is not the client's own input echoed back
    (`sent`: the request's URL and body; an error naming the value it refuses is no
    leak)."""
    for found in INTERNALS.finditer(text):
        if found.group(0) not in sent:
            return found.group(0)
    return None


def request_text(response: Any) -> str:
    request = getattr(response, "request", None)
    if request is None:
        return ""
    body = request.body or b""
    body = body.decode(errors="replace") if isinstance(body, bytes) else str(body)
    return f"{request.url} {body}"


# The test names a file here; the check leaves a mark in it, so the test knows the
# hook was loaded and ran.
MARK_ENV = "TOKENFORGE_FUZZ_MARK"


@schemathesis.check
def no_internals(ctx: Any, response: Any, case: Any) -> bool | None:
    if mark := os.environ.get(MARK_ENV):
        Path(mark).touch()
    leaked = internals_in(response.text or "", request_text(response))
    if leaked is not None:
        raise AssertionError(f"The answer carries internals: {leaked!r}")
    if not response.headers.get("x-request-id"):
        raise AssertionError("The answer carries no x-request-id")
    return None

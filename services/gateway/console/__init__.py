"""The web console: one HTML page, one script and one stylesheet, served by the gateway
at /console (services/gateway/transport/http/console.py); and the operator console, a
page and script of its own at /console/operator over /v1/operator
(services/gateway/transport/http/operator.py), signed in with the operator credential.

No build step and nothing fetched from the network: the browser signs in with an API
key (kept in sessionStorage only) and calls the same user API as every other client, so
the console reads money in the API's words (labels, symbols, status texts; GLOSSARY.md).
"""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).parent / "static"

# The files the console serves, with their media types; nothing else is reachable.
MEDIA_TYPES = {
    "dom.js": "text/javascript; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "operator.js": "text/javascript; charset=utf-8",
}

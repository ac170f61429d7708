"""GET /console: the web console (services/gateway/console/), left out of the OpenAPI
schema. The page holds no data: its script calls the user API with the API key the
person signs in with."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

from services.gateway.console import ASSETS, MEDIA_TYPES
from services.gateway.transport.http.common import Deps
from tokenforge.errors import DomainError, Reason

# Same-origin only: no inline script, no third-party anything, no framing.
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


def router(deps: Deps) -> APIRouter:
    r = APIRouter(include_in_schema=False)

    @r.get("/console")
    async def console() -> Response:
        return Response(
            (ASSETS / "index.html").read_bytes(),
            media_type="text/html; charset=utf-8",
            headers=SECURITY_HEADERS,
        )

    @r.get("/console/")
    async def console_slash() -> Response:
        return RedirectResponse("/console", status_code=308)

    @r.get("/console/assets/{name}")
    async def asset(name: str) -> Response:
        media_type = MEDIA_TYPES.get(name)
        if media_type is None:
            raise DomainError(Reason.NOT_FOUND, f"No console asset {name!r}.")
        return Response(
            (ASSETS / name).read_bytes(), media_type=media_type, headers=SECURITY_HEADERS
        )

    return r

"""GET /console: the web console (services/gateway/console/), left out of the OpenAPI
schema. The page holds no data: its script calls the user API with the API key the
person signs in with."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from services.gateway.console import ASSETS, MEDIA_TYPES
from services.gateway.transport.http.common import Deps, json_response
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

    @r.get("/console/operator")
    async def operator_console() -> Response:
        return Response(
            (ASSETS / "operator.html").read_bytes(),
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

    @r.get("/console/vocabulary.json")
    async def vocabulary() -> Response:
        """The glossary's words (tokenforge.vocabulary): the console's one source of
        what amounts, balances and states are called."""
        from tokenforge.vocabulary import as_json

        return json_response(as_json())

    @r.get("/console/research/plan")
    async def research_plan(request: Request) -> Response:
        """The research assistant's plan for a topic (apps.research.plan), as
        data: the console writes the same sections with the same requests as
        `tokenforge research`. Pure (no account, no money); the browser runs it."""
        return json_response(research_plan_json(dict(request.query_params)))

    return r


def research_plan_json(query: dict[str, str]) -> dict[str, object]:
    from apps.research.plan import DEFAULT_MAX_TOKENS, plan_report

    def whole(name: str, default: int) -> int:
        raw = query.get(name, "").strip() or str(default)
        if not (raw.isascii() and raw.isdigit()):
            raise DomainError(
                Reason.INVALID_ARGUMENT,
                f"`{name}` is a whole number; got {raw!r}.",
                {"param": name},
            )
        return int(raw)

    try:
        plan = plan_report(
            query.get("topic", ""),
            query.get("model", "").strip() or "demo-chat",
            whole("sections", 4),
            whole("max_tokens", DEFAULT_MAX_TOKENS),
        )
    except ValueError as error:
        raise DomainError(Reason.INVALID_ARGUMENT, str(error)) from None
    return plan.as_json()

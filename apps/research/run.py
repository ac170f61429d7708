"""Write a report through the gateway's HTTP API on a run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from apps.research import render
from apps.research.plan import Plan

MICROS = 1_000_000


class ResearchError(Exception):
    """The gateway refused: the message is the gateway's (it says what to do next)."""


@dataclass
class Outcome:
    report: str
    run: dict[str, Any]
    receipt: dict[str, Any]
    texts: list[str]


def _json(answer: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = answer.json()
    if answer.status_code >= 400:
        error = body.get("error") or {}
        raise ResearchError(
            f"{answer.status_code} {error.get('code') or ''}: {error.get('message') or body}"
        )
    return body


async def write_report(
    http: httpx.AsyncClient,
    plan: Plan,
    show: Callable[[str], None],
    budget: str | None = None,
) -> Outcome:
    """Preview, open a run, write each section on it, close it; `show` gets the plan,
    progress per section and the aggregate receipt."""
    preview = _json(await http.post("/v1/routes/preview", json=plan.preview_request()))
    if budget is None:
        per_section = preview["worst_case_cost"]["micros"]
        total = per_section * len(plan.sections)
        budget = f"{total // MICROS}.{total % MICROS:06d}"
    run = _json(
        await http.post("/v1/runs", json={"model": plan.model, "budget": budget, "ttl": 900})
    )
    show(render.before(plan, preview, run))
    texts: list[str] = []
    try:
        for section in plan.sections:
            answer = _json(
                await http.post(
                    "/v1/chat/completions",
                    json=plan.request(section),
                    headers={"x-tokenforge-run": run["id"]},
                )
            )
            texts.append(str(answer["choices"][0]["message"]["content"] or ""))
            show(render.progress(section.index, len(plan.sections), section.title, answer))
    finally:
        receipt = _json(await http.post(f"/v1/runs/{run['id']}/close"))
    report = render.report(plan, texts)
    show(render.receipt(receipt))
    return Outcome(report, run, receipt, texts)

"""Text the research assistant shows: the plan before, progress, the report, the
aggregate receipt after. Pure functions of the gateway's JSON answers."""

from __future__ import annotations

from typing import Any

from apps.research.plan import DISCLAIMER, Plan
from tokenforge.money import decimal_text


def before(plan: Plan, preview: dict[str, Any], run: dict[str, Any] | None = None) -> str:
    """The sections, model and route, bucket, worst-case cost and balance."""
    per_request = preview["worst_case_cost"]["display"]
    lines = [
        f"Research report: {plan.topic}",
        f"Model: {preview['selected_model']} -> {preview['upstream_model']} "
        f"({preview['route']} route), paid from {preview['bucket_label']}",
        f"Prices: {preview['prices']['text']}",
        "Sections:",
        *(f"  {s.index}. {s.title}" for s in plan.sections),
        f"Worst case: {per_request} per section, "
        f"{run['budget']['display'] if run else '?'} for the whole report",
        f"Available: {(run or {}).get('available_before', preview['available'])['display']}",
    ]
    return "\n".join(lines)


def progress(index: int, total: int, title: str, answer: dict[str, Any]) -> str:
    usage = answer.get("usage") or {}
    cost = decimal_text(int(usage.get("cost_micros", 0)))
    return (
        f"[{index}/{total}] {title}: {usage.get('completion_tokens', 0)} tokens, "
        f"{cost} {usage.get('cost_currency', '')}".rstrip()
    )


def report(plan: Plan, texts: list[str]) -> str:
    parts = [f"# {plan.topic}", "", f"_{DISCLAIMER}_", ""]
    for section, text in zip(plan.sections, texts, strict=True):
        parts += [f"## {section.index}. {section.title}", "", text.strip(), ""]
    parts += ["---", DISCLAIMER]
    return "\n".join(parts)


def receipt(run_receipt: dict[str, Any]) -> str:
    totals = run_receipt["totals"]
    run = run_receipt["run"]
    lines = [
        f"Run {run['id']} ({run['status']}), {run['bucket_label']}",
        *(
            f"  {line['request_id']}  {line['model']:<18} {line['status']:<9} "
            f"{line['prompt_tokens']:>6} in {line['completion_tokens']:>6} out  "
            f"{line['charge']['display']}"
            for line in run_receipt["lines"]
        ),
        *(
            f"  total {m['model']}: {m['requests']} requests, {m['charge']['display']}"
            for m in run_receipt["models"]
        ),
        f"Total: {totals['requests']} requests, {totals['prompt_tokens']} in / "
        f"{totals['completion_tokens']} out tokens, {totals['charge']['display']} "
        f"in {totals['duration_ms'] / 1000:.1f} s (budget {run['budget']['display']}, "
        "the rest was returned)",
        "Ledger rows: " + _ledger_rows(run_receipt),
    ]
    return "\n".join(lines)


def _ledger_rows(run_receipt: dict[str, Any]) -> str:
    """One ledger row per charged request (older runs: one row for the run)."""
    if run_receipt.get("ledger_entry_id"):
        return str(run_receipt["ledger_entry_id"])
    rows = [line["ledger_entry_id"] for line in run_receipt["lines"] if line.get("ledger_entry_id")]
    if not rows:
        return "none (nothing charged)"
    return f"{len(rows)}, one per request: " + ", ".join(rows)

"""The research assistant's progress line reads the charge from the exact integer
`cost_micros`: `usage.cost` is a JSON number, whose text may be `1e-05`."""

from __future__ import annotations

from apps.research.render import progress


def test_progress_shows_the_exact_decimal_of_the_micros() -> None:
    answer = {
        "usage": {"completion_tokens": 3, "cost": 1e-05, "cost_micros": 10, "cost_currency": "CR"}
    }
    assert progress(1, 2, "Intro", answer) == "[1/2] Intro: 3 tokens, 0.00001 CR"


def test_progress_without_usage_shows_nothing_charged() -> None:
    assert progress(2, 2, "End", {}) == "[2/2] End: 0 tokens, 0"

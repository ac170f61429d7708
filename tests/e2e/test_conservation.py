"""Money rule G1, proven on the real system (issue 16): every answer that names a
charge is backed by exactly that receipt and that ledger row once its finish is
delivered, however the client behaves.

Seeded random clients (tests/e2e/conservation.py) mix official and routed chat, streams
read to the end and streams abandoned at every moment that matters (right after the
headers, mid-stream, right after the `finish_reason` chunk, while the finish is being
queued, right after the final usage chunk), non-stream requests cancelled client-side,
idempotent repeats sent at once, a route that falls back, a model that is down, and
embeddings, on four accounts (two spent down to 402s) through two gateway replicas with
budgets on. After the run, at rest, every named charge is checked against its receipt
and its ledger row, every bucket's balance against its grants and all its receipts,
`tokenforge_charges_not_collected_total` against its value before, and both reconcile
commands run.

The seed is printed and is in every failure; `TOKENFORGE_SOAK_SEED=<seed>` replays the
run's schedule. `TOKENFORGE_SOAK_REQUESTS` (default 150 a run), `TOKENFORGE_SOAK_CLIENTS`
(default 24) and `TOKENFORGE_SOAK_RUNS` (default 3 seeds) size it; `make soak` runs it
with 20,000 requests.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tests.e2e.conservation import Run, check, schedule
from tests.e2e.harness import System
from tokenforge.runtime.db import create_engine

REQUESTS = int(os.environ.get("TOKENFORGE_SOAK_REQUESTS", "150"))
CLIENTS = int(os.environ.get("TOKENFORGE_SOAK_CLIENTS", "24"))
RUNS = int(os.environ.get("TOKENFORGE_SOAK_RUNS", "3"))


def seeds() -> list[int]:
    given = os.environ.get("TOKENFORGE_SOAK_SEED", "").strip()
    if given:
        return [int(given)]
    return [random.SystemRandom().randrange(1, 2**31) for _ in range(RUNS)]


@pytest.mark.parametrize("seed", seeds(), ids=lambda s: f"seed={s}")
async def test_every_charge_an_answer_names_lands(
    system: System, database_url: str, tmp_path: Path, seed: int
) -> None:
    print(
        f"\nconservation run: TOKENFORGE_SOAK_SEED={seed} ({REQUESTS} requests, {CLIENTS} clients)"
    )
    replica = await system.another_gateway(database_url)
    engine = create_engine(database_url, pool_size=1)
    run = Run(
        system,
        seed,
        REQUESTS,
        CLIENTS,
        [system.gateway_url, f"http://127.0.0.1:{replica.http_port}"],
    )
    try:
        await run.open_accounts()
        await run.drive()
        print(run.figures())  # the run's figures, even if a check cannot finish
        report = await check(run, engine, tmp_path)
    finally:
        await run.close()
        await replica.stop(grace=0.5)
        await engine.dispose()
    figures = run.figures(report.charges_checked)
    print(figures)
    assert report.charges_checked > 0, f"seed {seed}: no answer named a charge; {figures}"
    assert not report.findings, report.text(figures)


def test_a_seed_replays_its_schedule() -> None:
    """What every client does comes from the seed alone (timings aside)."""
    first = schedule(20261202, 300, 16)
    assert first == schedule(20261202, 300, 16)
    assert first != schedule(20261203, 300, 16)
    assert sum(len(steps) for steps in first) == 300
    kinds = {step.kind for steps in first for step in steps}
    abandoned = {step.abandon_at for steps in first for step in steps if step.abandon_at}
    assert kinds == {
        "chat",
        "stream",
        "stream_abandoned",
        "cancelled",
        "idempotent",
        "route_fallback",
        "down",
        "embeddings",
    }
    assert abandoned == {"headers", "mid_stream", "finish_reason", "finish_queued", "after_usage"}

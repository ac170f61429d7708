"""After paid requests through the gateway, the wallet reconciles: the report is
clean, and `tokenforge wallet reconcile` (the operator's CLI) exits 0."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import openai

from services.wallet.client import WalletClient
from tests.e2e.harness import ADMIN, System


async def test_paid_requests_leave_a_wallet_that_reconciles(system: System, tmp_path: Path) -> None:
    account_id, key = await system.new_account()
    sdk = openai.AsyncOpenAI(base_url=system.gateway_url + "/v1", api_key=key, max_retries=0)
    for model in ("demo-chat", "demo-chat@routed", "demo-chat"):
        completion = await sdk.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "count the money"}]
        )
        assert completion.choices[0].message.content

    # The third request came a moment after the first on the same bucket: it was drawn
    # from a budget and its finish queued. A read of the account's money through the
    # gateway sees every answer given (the queued finish is delivered first).
    async with system.http(key) as http:
        rows = (await http.get("/v1/wallet/ledger")).json()["data"]
    assert len([r for r in rows if r.get("request_id")]) == 3

    wallet = WalletClient.connect(system.services["wallet"], ADMIN)
    try:
        ledger = await wallet.ledger(account_id)
        report = await wallet.reconcile()
    finally:
        await wallet.close()
    charges = [e for e in ledger.entries if e.request_id]
    assert len(charges) == 3
    assert report.ok, [f"{v.rule} {v.subject}: {v.detail}" for v in report.violations]
    assert report.entries_checked >= 5 and report.holds_checked >= 3

    state_dir = tmp_path / "no-dev-json"
    state_dir.mkdir()
    env = {
        **os.environ,
        "TOKENFORGE_WALLET_ADDR": system.services["wallet"],
        "TOKENFORGE_ADMIN_TOKEN": ADMIN,
    }
    cli = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "apps.cli",
            "wallet",
            "reconcile",
            "--state-dir",
            str(state_dir),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert "ok:" in cli.stdout and "accounts" in cli.stdout

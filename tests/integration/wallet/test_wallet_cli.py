"""The operator's wallet verbs against the running wallet: ledger, reverse, reconcile."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from apps.cli import main
from tests.integration.wallet.conftest import ADMIN, Wallet
from tokenforge.generated.common.v1 import common_pb2
from tokenforge.generated.wallet.v1 import wallet_pb2
from tokenforge.runtime.service import RunningService


@pytest.fixture
def cli_env(
    wallet_app: RunningService, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> list[str]:
    monkeypatch.setenv("TOKENFORGE_WALLET_ADDR", wallet_app.address)
    monkeypatch.setenv("TOKENFORGE_ADMIN_TOKEN", ADMIN)
    return ["--state-dir", str(tmp_path)]


async def run_cli(args: list[str]) -> int:
    return await asyncio.to_thread(main, args)


async def test_ledger_reverse_and_reconcile_verbs(
    wallet: Wallet, cli_env: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    account = await wallet.open_funded(credit=2_000_000)
    hold = (
        await wallet.call(
            "Hold",
            wallet_pb2.HoldRequest(
                account_id=account,
                bucket=common_pb2.BUCKET_CREDIT,
                amount_micros=500_000,
                request_id="req-cli",
            ),
        )
    ).hold
    charge = (
        await wallet.call(
            "Settle", wallet_pb2.SettleRequest(hold_id=hold.hold_id, amount_micros=250_000)
        )
    ).entry
    capsys.readouterr()

    assert await run_cli(["wallet", "ledger", account, "--kind", "request_charge", *cli_env]) == 0
    listed = capsys.readouterr().out
    assert charge.entry_id in listed and "-0.25 CR" in listed and "request=req-cli" in listed

    reason = f"refund {uuid.uuid4().hex[:6]}"
    assert await run_cli(["wallet", "reverse", charge.entry_id, "--reason", reason, *cli_env]) == 0
    assert "Credit now 2 CR" in capsys.readouterr().out
    assert await run_cli(["wallet", "reverse", charge.entry_id, "--reason", "again", *cli_env]) == 1
    assert "already reversed" in capsys.readouterr().err

    assert await run_cli(["wallet", "ledger", account, "--limit", "1", *cli_env]) == 0
    newest = capsys.readouterr().out
    assert "reversal" in newest and f"reverses={charge.entry_id}" in newest
    assert "more rows" in newest

    assert await run_cli(["wallet", "reconcile", *cli_env]) == 0
    assert "ok:" in capsys.readouterr().out


async def test_holds_and_release_verbs(
    wallet: Wallet, cli_env: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    account = await wallet.open_funded(credit=2_000_000)
    budget = (
        await wallet.call(
            "Hold",
            wallet_pb2.HoldRequest(
                account_id=account,
                bucket=common_pb2.BUCKET_CREDIT,
                amount_micros=600_000,
                request_id="budget-cli",
            ),
        )
    ).hold
    await wallet.call(
        "CapturePart",
        wallet_pb2.CapturePartRequest(
            hold_id=budget.hold_id, amount_micros=100_000, request_id="req-cli-part"
        ),
    )
    capsys.readouterr()

    assert await run_cli(["wallet", "holds", account, "--status", "open", *cli_env]) == 0
    listed = capsys.readouterr().out
    assert budget.hold_id in listed and "request=budget-cli" in listed
    assert "0.6 CR" in listed and "captured" in listed and "0.1 CR" in listed

    args = ["wallet", "release", budget.hold_id, "--reason", "replica gone", *cli_env]
    assert await run_cli(args) == 0
    assert "0.5 CR back to Credit" in capsys.readouterr().out
    assert await run_cli(args) == 0  # a repeat answers the first release: it ended once
    assert "0.5 CR back to Credit" in capsys.readouterr().out
    assert await run_cli(["wallet", "holds", account, "--status", "open", *cli_env]) == 0
    assert capsys.readouterr().out.strip() == "no holds"
    balance = await wallet.balance(account)
    assert (balance.posted_micros, balance.held_micros) == (1_900_000, 0)

"""The operator CLI as an operator runs it: `python -m apps.cli ...` subprocesses
against a running `tokenforge dev` (fixture `cli` in this folder's conftest), each
verb checked by its effect on the system, not only by its output."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from tests.integration.cli.conftest import Cli, secret_of, wait_until
from tokenforge.money import decimal_text


def balances(cli: Cli, account: str) -> dict[str, str]:
    """`wallet balances` as {label: line}."""
    lines = cli.ok("wallet", "balances", account).splitlines()
    return {line.split("  ")[0].strip(): line for line in lines}


def posted_micros(cli: Cli, key: str, bucket: str = "credit") -> int:
    with cli.http(key) as http:
        [b] = [b for b in http.get("/v1/wallet").json()["balances"] if b["bucket"] == bucket]
    return int(b["posted"]["micros"])


def test_health_names_every_service_serving(cli: Cli) -> None:
    text = cli.ok("health")
    rows = {line.split()[0]: line.split()[-1] for line in text.splitlines()}
    assert rows == dict.fromkeys(["routing", "wallet", "payments", "usage", "gateway"], "SERVING")


def test_a_key_created_by_the_cli_works_rotates_and_is_refused_once_revoked(cli: Cli) -> None:
    account, key = cli.new_account("inference", "wallet_read")
    with cli.http(key) as http:
        assert http.get("/v1/models").status_code == 200
    [row] = cli.ok("keys", "list", account).splitlines()
    key_id = row.split("\t")[0]
    assert "\tactive\tinference,wallet_read\t" in row and "cli test key" in row

    rotated = cli.ok("keys", "rotate", account, key_id, "--grace", "0")
    new_key = secret_of(rotated)
    new_id = re.search(r"new key id (\S+);", rotated)
    assert new_id and new_key != key
    with cli.http(new_key) as http:
        assert http.get("/v1/models").status_code == 200
    with cli.http(key) as http:
        assert wait_until(lambda: http.get("/v1/models").status_code == 401)

    assert f"key {new_id[1]} revoked" in cli.ok("keys", "revoke", account, new_id[1])
    with cli.http(new_key) as http:
        assert wait_until(lambda: http.get("/v1/models").status_code == 401)
    states = [line.split("\t")[2] for line in cli.ok("keys", "list", account).splitlines()]
    assert states == ["revoked", "revoked"]


def test_adjust_then_reverse_leaves_the_balance_as_before_and_the_wallet_reconciles(
    cli: Cli,
) -> None:
    account, key = cli.new_account()
    before = posted_micros(cli, key)
    adjusted = cli.ok("wallet", "adjust", account, "credit", "5.25", "--reason", "goodwill")
    entry = re.search(r"adjustment (\S+): 5\.25 CR, Credit now 5\.25 CR", adjusted)
    assert entry, adjusted
    assert posted_micros(cli, key) == before + 5_250_000
    assert "available          5.25 CR" in balances(cli, account)["Credit"]

    ledger = cli.ok("wallet", "ledger", account, "--kind", "adjustment")
    assert entry[1] in ledger and "reason=goodwill" in ledger

    reversed_ = cli.ok("wallet", "reverse", entry[1], "--reason", "entered twice")
    assert f"of {entry[1]}: -5.25 CR, Credit now 0 CR" in reversed_
    assert posted_micros(cli, key) == before
    assert "reverses=" + entry[1] in cli.ok("wallet", "ledger", account, "--kind", "reversal")

    twice = cli("wallet", "reverse", entry[1], "--reason", "again")
    assert twice.returncode == 1 and twice.stderr.startswith("refused (")
    below_zero = cli("wallet", "adjust", account, "credit", "-1", "--reason", "oops")
    assert below_zero.returncode == 1 and "refused (" in below_zero.stderr
    assert posted_micros(cli, key) == before

    done = cli("wallet", "reconcile")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.rstrip().splitlines()[-1].startswith("ok: every entry sums to zero")


def manual_transfer(cli: Cli, key: str, amount: str, reference: str) -> str:
    with cli.http(key) as http:
        created = http.post(
            "/v1/topups",
            json={"bucket": "routed", "provider": "manual_transfer", "amount": amount},
        )
        assert created.status_code in (200, 201), created.text
        order_id = str(created.json()["order_id"])
        sent = http.post(f"/v1/topups/{order_id}/proof", json={"transfer_reference": reference})
        assert sent.status_code < 300, sent.text
    return order_id


def test_an_approved_transfer_credits_its_bucket_and_a_rejected_one_adds_nothing(
    cli: Cli,
) -> None:
    account, key = cli.new_account("inference", "wallet_read", "topup")
    approved = manual_transfer(cli, key, "4.00", "REF-APPROVE")
    rejected = manual_transfer(cli, key, "6.00", "REF-REJECT")
    before = posted_micros(cli, key, "routed")

    queue = cli.ok("topups", "list", "--status", "awaiting_review", "--account", account)
    assert {line.split()[0] for line in queue.splitlines()} == {approved, rejected}
    assert "ref REF-APPROVE" in queue and "awaiting_review" in queue

    line = cli.ok("topups", "approve", approved, "--reason", "seen on the bank statement")
    assert line.split()[:2] == [approved, "succeeded"]
    assert wait_until(lambda: posted_micros(cli, key, "routed") == before + 4_000_000)
    with cli.http(key) as http:
        rows = http.get("/v1/wallet/ledger", params={"order_id": approved}).json()["data"]
    assert [r["amount"]["micros"] for r in rows] == [4_000_000]

    cli.ok("topups", "reject", rejected, "--reason", "no such transfer arrived")
    trail = cli.ok("topups", "show", rejected)
    assert trail.split()[:2] == [rejected, "rejected"]
    assert "awaiting_review -> rejected" in trail and "no such transfer arrived" in trail
    assert "pending -> awaiting_review" in trail
    time.sleep(0.3)
    assert posted_micros(cli, key, "routed") == before + 4_000_000

    again = cli("topups", "approve", rejected, "--reason", "changed my mind")
    assert again.returncode == 1 and again.stderr.startswith("refused (")
    assert cli.ok("topups", "list", "--status", "awaiting_review", "--account", account) == (
        "no top-ups awaiting_review\n"
    )


def test_catalog_apply_makes_a_new_version_that_resolve_names(cli: Cli, tmp_path: Path) -> None:
    shown = cli.ok("catalog", "show")
    header, _, text = shown.partition("\n")
    old_version = header.split()[2]
    assert "demo-chat" in text
    changed = tmp_path / "catalog.yaml"
    changed.write_text(
        text.replace("display_name: Demo embeddings", "display_name: Demo embeddings v2")
    )

    applied = cli.ok("catalog", "apply", str(changed), "--author", "cli-test")
    new_version = re.search(r"catalog (\S+) applied", applied)
    assert new_version and new_version[1] != old_version
    assert cli.ok("catalog", "versions").splitlines()[0].split("\t")[0] == new_version[1]
    assert "unchanged" in cli.ok("catalog", "apply", str(changed))

    _, key = cli.new_account()

    def resolved_version() -> bool:
        with cli.http(key) as http:
            preview = http.post(
                "/v1/routes/preview",
                json={"model": "demo-chat", "messages": [{"role": "user", "content": "hi"}]},
            ).json()
        return bool(preview.get("catalog_version") == new_version[1])

    assert wait_until(resolved_version)

    broken = tmp_path / "broken.yaml"
    broken.write_text(text.replace("upstream_model: mock-gpt-official", "upstream_model: 7\n  x"))
    refused = cli("catalog", "apply", str(broken))
    assert refused.returncode == 1 and refused.stderr.startswith("refused ("), refused.stderr
    assert cli.ok("catalog", "versions").splitlines()[0].split("\t")[0] == new_version[1]


def test_usage_aggregates_count_a_paid_request_and_reconcile_passes(cli: Cli) -> None:
    account, key = cli.new_account()
    cli.ok("wallet", "adjust", account, "credit", "1", "--reason", "test money")
    with cli.http(key) as http:
        answer = http.post(
            "/v1/chat/completions",
            json={"model": "demo-chat", "messages": [{"role": "user", "content": "hello"}]},
        )
        assert answer.status_code == 200, answer.text
        charge = decimal_text(answer.json()["usage"]["cost_micros"])
    text = wait_until(lambda: "1 req" in (t := cli.ok("usage", "aggregates", account)) and t)
    assert text and "Credit" in text
    by_model = cli.ok("usage", "aggregates", account, "--by", "model")
    [row] = by_model.splitlines()
    assert row.startswith("demo-chat") and row.endswith(f"{charge} CR")

    done = cli("usage", "reconcile", "--account", account)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "checked 1 ended holds, 1 receipts, 1 request-charge ledger rows" in done.stdout


def test_bad_commands_exit_non_zero_with_a_clear_message(cli: Cli, tmp_path: Path) -> None:
    account, _ = cli.new_account()
    cases = [
        (("wallet", "adjust", account, "gold", "5", "--reason", "x"), 2, "invalid choice: 'gold'"),
        (("wallet", "adjust", account, "credit", "five", "--reason", "x"), 2, "'five'"),
        (("wallet", "adjust", account, "credit", "5"), 2, "--reason"),
        (("topups", "show", "top_does_not_exist"), 1, "refused (NOT_FOUND)"),
        (("keys", "revoke", account, "key_does_not_exist"), 1, "refused ("),
        (("catalog", "apply", str(tmp_path / "missing.yaml")), 2, "missing.yaml"),
        (("keys", "create", account, "--daily-cap", "credit=lots"), 2, "'lots'"),
    ]
    for args, code, message in cases:
        done = cli(*args)
        assert (done.returncode, message in done.stderr) == (code, True), (args, done.stderr)
        assert "Traceback" not in done.stderr, (args, done.stderr)

    # No dev.json and no TOKENFORGE_* addresses: say how to connect.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENFORGE_")}
    lost = subprocess.run(
        [sys.executable, "-m", "apps.cli", "wallet", "balances", account]
        + ["--state-dir", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert lost.returncode == 2 and "tokenforge dev" in lost.stderr, lost.stderr


def test_a_key_made_without_scopes_may_call_models_and_read_but_not_top_up(cli: Cli) -> None:
    account = f"acct-cli-{os.urandom(6).hex()}"
    cli.ok("accounts", "open", account, "--name", "cli test")
    created = cli.ok("keys", "create", account, "--name", "app key")
    key = secret_of(created)
    with cli.http(key) as http:
        top_up = http.post(
            "/v1/topups", json={"bucket": "credit", "provider": "sandbox", "amount": "10.00"}
        )
        wallet = http.get("/v1/wallet")
    listed = cli.ok("keys", "list", account)

    assert "scopes: inference, wallet_read" in created
    assert top_up.status_code == 403, top_up.text
    assert "topup" in top_up.json()["error"]["message"].lower().replace("-", "")
    assert wallet.status_code == 200
    assert "\tinference,wallet_read\t" in listed

"""The operator console's API (/v1/operator) on a running dev system: only the operator
credential with a name gets in, an action needs a reason, and every action, done or
refused, leaves an audit row naming who, what and why."""

from __future__ import annotations

from typing import Any

import httpx

from tests.integration.cli.conftest import Cli


def operator(cli: Cli, name: str = "Grace", token: str | None = None) -> httpx.Client:
    headers = {"authorization": f"Bearer {token or cli.info['admin_token']}"}
    if name:
        headers["x-tokenforge-operator"] = name
    return httpx.Client(base_url=cli.info["gateway_url"], headers=headers, timeout=30)


def audit_rows(cli: Cli) -> list[dict[str, Any]]:
    with operator(cli) as http:
        rows: list[dict[str, Any]] = http.get("/v1/operator/audit").json()["data"]
        return rows


def test_only_the_operator_credential_with_a_name_gets_in(cli: Cli) -> None:
    _, key = cli.new_account("inference", "wallet_read")
    with operator(cli, token=key) as http:
        with_key = http.get("/v1/operator/reviews")
    with operator(cli, name="") as http:
        nameless = http.get("/v1/operator/reviews")
    with operator(cli) as http:
        allowed = http.get("/v1/operator/session")

    assert with_key.status_code == 401
    assert "operator credential" in with_key.json()["error"]["message"]
    assert nameless.status_code == 400
    assert nameless.json()["error"]["param"] == "x-tokenforge-operator"
    assert allowed.json() == {"operator": "Grace"}


def test_every_action_done_or_refused_leaves_an_audit_row_with_who_and_why(cli: Cli) -> None:
    account, _ = cli.new_account()
    with operator(cli) as http:
        no_reason = http.post(
            f"/v1/operator/accounts/{account}/adjust", json={"bucket": "credit", "amount": "3"}
        )
        adjusted = http.post(
            f"/v1/operator/accounts/{account}/adjust",
            json={"bucket": "credit", "amount": "3", "reason": "promised credit"},
        )
        entry_id = adjusted.json()["entry_id"]
        reversed_once = http.post(
            f"/v1/operator/ledger/{entry_id}/reverse", json={"reason": "wrong account"}
        )
        reversed_twice = http.post(
            f"/v1/operator/ledger/{entry_id}/reverse", json={"reason": "clicked twice"}
        )
        shown = http.get(f"/v1/operator/accounts/{account}").json()
    rows = [r for r in audit_rows(cli) if account in r["subject"] or entry_id in r["subject"]]

    assert no_reason.status_code == 400 and no_reason.json()["error"]["param"] == "reason"
    assert adjusted.status_code == 200 and reversed_once.status_code == 200
    assert reversed_twice.status_code == 409
    assert [b["posted"]["micros"] for b in shown["balances"] if b["bucket"] == "credit"] == [0]
    # Newest first: the refused reversal, the reversal, the adjustment (the request
    # without a reason was refused before it was an action).
    assert [(r["action"], r["reason"], r["outcome"].split(":")[0]) for r in rows] == [
        ("wallet.reverse", "clicked twice", "refused"),
        ("wallet.reverse", "wrong account", "done"),
        ("wallet.adjust", "promised credit", "done"),
    ]
    assert {r["operator"] for r in rows} == {"Grace"}
    # The wallet's own rows carry the operator's name too.
    assert {e["kind"] for e in shown["ledger"]} == {"adjustment", "reversal"}

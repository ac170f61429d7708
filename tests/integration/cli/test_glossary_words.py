"""One vocabulary for money everywhere (docs/GLOSSARY.md, tokenforge/vocabulary.py):
walk the API's JSON, the CLI's output and the console's text on a running dev system
and fail on a word outside the glossary for a money concept: an amount under a name
the glossary does not have, an amount in another shape, a state or entry kind it does
not know, or a retired word ("reserved", "request cost", ...)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx

from tests.integration.cli.conftest import Cli, wait_until
from tokenforge import vocabulary as v

# A money state, by the field that names it and the field that marks its object (a
# top-up has an order id, a ledger row an entry id, a receipt a request id).
STATE_FIELDS = {
    ("state", "order_id"): set(v.TOPUP_STATES),
    ("status", "order_id"): set(v.TOPUP_STATUSES),
    ("kind", "entry_id"): set(v.ENTRY_KINDS),
    ("status", "hold_id"): set(v.RECEIPT_STATES) | set(v.HOLD_STATES),
}


def walk(node: Any, path: str = "$") -> Iterator[tuple[str, str, Any]]:
    """Every (path, key, value) of a JSON document."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, value
            yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for n, value in enumerate(node):
            yield from walk(value, f"{path}[{n}]")


def money_word_problems(document: Any, where: str) -> list[str]:
    problems = []
    keys_at: dict[str, set[str]] = {}
    for path, key, _ in walk(document):
        keys_at.setdefault(path, set()).add(key)
    for path, key, value in walk(document):
        at = f"{where} {path}.{key}"
        if v.is_amount_json(value):
            if key not in v.AMOUNTS and key not in v.DEPRECATED:
                problems.append(f"{at}: amount named {key!r}, not a glossary word")
            elif key in v.DEPRECATED and v.DEPRECATED[key] not in keys_at[path]:
                problems.append(f"{at}: old name {key!r} without {v.DEPRECATED[key]!r}")
        elif isinstance(value, dict) and "micros" in value:
            problems.append(f"{at}: an amount not in the one shape: {value}")
        if key.endswith("_micros"):
            name = key.removesuffix("_micros")
            if name not in v.AMOUNTS and key not in v.CLIENT_NAMES and name not in v.DEPRECATED:
                problems.append(f"{at}: flat amount {key!r}, not a glossary word")
            if not isinstance(value, int) or isinstance(value, bool):
                if value is not None:
                    problems.append(f"{at}: {key} is {value!r}, not an integer")
        for (field, marker), known in STATE_FIELDS.items():
            if key == field and marker in keys_at[path] and value not in known:
                problems.append(f"{at}: {key} {value!r} is not a glossary word")
        if isinstance(value, str):
            problems += [f"{at}: retired word {w!r} in {value!r}" for w in v.retired_words(value)]
    return problems


def test_the_api_the_cli_and_the_console_speak_the_glossary(cli: Cli) -> None:
    account, key = cli.new_account("inference", "wallet_read", "topup")
    cli.ok("wallet", "adjust", account, "credit", "2", "--reason", "glossary test")
    documents: dict[str, Any] = {}
    with cli.http(key) as http:
        refused = http.post(
            "/v1/chat/completions",
            json={
                "model": "demo-chat@routed",
                "messages": [{"role": "user", "content": "nothing in the routed balance yet"}],
                "max_tokens": 64,
            },
        )
        order = http.post(
            "/v1/topups", json={"bucket": "routed", "provider": "sandbox", "amount": "1.00"}
        ).json()
        http.post(f"/v1/topups/{order['order_id']}/sandbox", json={"outcome": "pay"})
        expired = http.post(
            "/v1/topups", json={"bucket": "credit", "provider": "sandbox", "amount": "1.00"}
        ).json()
        http.post(f"/v1/topups/{expired['order_id']}/sandbox", json={"outcome": "expire"})
        answer = http.post(
            "/v1/chat/completions",
            json={"model": "demo-chat", "messages": [{"role": "user", "content": "hello"}]},
        )
        request_id = answer.headers["x-request-id"]
        wait_until(
            lambda: http.get(f"/v1/topups/{order['order_id']}").json()["state"] == "credited"
        )
        wait_until(lambda: http.get(f"/v1/usage/{request_id}").status_code == 200)
        paths = [
            "/v1/wallet",
            "/v1/wallet/ledger",
            "/v1/topups",
            f"/v1/topups/{order['order_id']}",
            f"/v1/topups/{order['order_id']}/uses",
            f"/v1/topups/{expired['order_id']}",
            "/v1/usage",
            f"/v1/usage/{request_id}",
            f"/v1/usage/{request_id}/paid-from",
            "/v1/models",
        ]
        for path in paths:
            got = http.get(path)
            assert got.status_code == 200, (path, got.text)
            documents[path] = got.json()
        documents["chat answer"] = answer.json()
        documents["402"] = refused.json()
        console_text = "\n".join(
            httpx.get(cli.info["gateway_url"] + p).text
            for p in (
                "/console",
                "/console/assets/console.js",
                "/console/operator",
                "/console/assets/operator.js",
            )
        )
        words = httpx.get(cli.info["gateway_url"] + "/console/vocabulary.json").json()
    operator_headers = {
        "authorization": f"Bearer {cli.info['admin_token']}",
        "x-tokenforge-operator": "glossary test",
    }
    with httpx.Client(
        base_url=cli.info["gateway_url"], headers=operator_headers, timeout=30
    ) as operator:
        for path in (f"/v1/operator/accounts/{account}", "/v1/operator/reviews"):
            got = operator.get(path)
            assert got.status_code == 200, (path, got.text)
            documents[f"operator {path}"] = got.json()
    cli_json = {
        "wallet balances": json.loads(cli.ok("wallet", "balances", account, "--json")),
        "wallet ledger": json.loads(cli.ok("wallet", "ledger", account, "--json")),
        "wallet holds": json.loads(cli.ok("wallet", "holds", account, "--json")),
        "topups list": json.loads(cli.ok("topups", "list", "--account", account, "--json")),
        "topups show": json.loads(cli.ok("topups", "show", order["order_id"], "--json")),
        "keys list": json.loads(cli.ok("keys", "list", account, "--json")),
        "usage aggregates": json.loads(cli.ok("usage", "aggregates", account, "--json")),
        "catalog versions": json.loads(cli.ok("catalog", "versions", "--json")),
        "health": json.loads(cli.ok("health", "--json")),
        "wallet paid-for": json.loads(
            cli.ok("wallet", "paid-for", account, "--order", order["order_id"], "--json")
        ),
    }
    cli_text = cli.ok("wallet", "balances", account) + cli.ok("wallet", "ledger", account)

    assert refused.status_code == 402, refused.text
    problems = []
    for where, document in {**documents, **cli_json}.items():
        problems += money_word_problems(document, where)
    problems += [f"CLI text: retired word {w!r}" for w in v.retired_words(cli_text)]
    # The console's own words: what a person reads, in its page and script.
    visible = re.sub(r"<[^>]+>", " ", console_text)
    problems += [f"console: retired word {w!r}" for w in v.retired_words(visible)]
    assert problems == []
    assert words == v.as_json()
    # The same amount has the same name in every place it shows.
    charge = documents[f"/v1/usage/{request_id}"]["charge"]
    [row] = [r for r in documents["/v1/wallet/ledger"]["data"] if r.get("request_id") == request_id]
    assert row["charge"] == charge and row["change"]["micros"] == -charge["micros"]
    assert documents["chat answer"]["usage"]["cost_micros"] == charge["micros"]
    topup = documents[f"/v1/topups/{order['order_id']}"]
    [credit] = [r for r in documents["/v1/wallet/ledger"]["data"] if r.get("order_id")]
    assert credit["received_balance"] == topup["received_balance"]
    paid_for = cli_json["wallet paid-for"]
    assert paid_for["received_balance_micros"] == topup["received_balance"]["micros"]
    assert paid_for["left_micros"] + paid_for["used_micros"] == paid_for["received_balance_micros"]
    details = documents["402"]["error"]["details"]
    assert isinstance(details["available_micros"], int)
    balances = documents["/v1/wallet"]["balances"]
    for b in balances:
        held = b["held_for_requests"]["micros"] + b["set_aside"]["micros"]
        assert held == b["held"]["micros"]
        assert b["available"]["micros"] == b["posted"]["micros"] - b["held"]["micros"]
    assert {b["label"] for b in cli_json["wallet balances"]["balances"]} == {
        b["label"] for b in balances
    }


def test_the_cli_pages_with_the_token_it_prints_and_says_its_version(cli: Cli) -> None:
    account, _ = cli.new_account()
    for n in range(5):
        cli.ok("wallet", "adjust", account, "credit", str(n + 1), "--reason", f"page {n}")
    first = json.loads(cli.ok("wallet", "ledger", account, "--limit", "2", "--json"))
    text = cli.ok("wallet", "ledger", account, "--limit", "2")
    seen = [r["entry_id"] for r in first["data"]]
    cursor = first["next_cursor"]
    while cursor:
        page = json.loads(
            cli.ok("wallet", "ledger", account, "--limit", "2", "--cursor", cursor, "--json")
        )
        seen += [r["entry_id"] for r in page["data"]]
        cursor = page["next_cursor"]
    every = json.loads(cli.ok("wallet", "ledger", account, "--limit", "50", "--json"))
    version = cli.ok("--version")

    assert f"--cursor {first['next_cursor']}" in text
    assert seen == [r["entry_id"] for r in every["data"]] and len(seen) == 5
    assert [r["change_micros"] for r in every["data"]] == [
        5_000_000,
        4_000_000,
        3_000_000,
        2_000_000,
        1_000_000,
    ]
    assert version.startswith("tokenforge ")

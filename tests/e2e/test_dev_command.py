"""`tokenforge dev` as a user runs it (what `make run` calls): real processes, real
servers, dev.json, the openai SDK, Ctrl-C, and a second start that keeps the data."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import nats
import openai
import psutil
import pytest

from tests.devsystem import start_dev, stop_dev, wait_for_dev_json
from tests.e2e.observability import check_dev_metrics, check_request_followed_in_logs
from tests.e2e.sockets import listening
from tokenforge.runtime.embedded import free_port


def health(address: str) -> str:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import asyncio,sys; from apps.admin import health_status; "
            "print(asyncio.run(health_status(sys.argv[1])))",
            address,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def port_open(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def check_services_hold_only_their_own_credentials(dev_pid: int, info: dict[str, Any]) -> None:
    """Issue 17's open doors, shut in `make run`: each service connects to PostgreSQL
    as its own role (never the owner), holds the admin token's digest (never the
    token), and serves its metrics on loopback only."""
    served = {}
    for child in psutil.Process(dev_pid).children():
        command = child.cmdline()
        if "serve" in command:
            served[command[command.index("serve") + 1]] = child.environ()
    assert set(served) == set(info["services"])
    digest = hashlib.sha256(info["admin_token"].encode()).hexdigest()
    for name, env in served.items():
        assert "TOKENFORGE_ADMIN_TOKEN" not in env, name
        assert info["admin_token"] not in "".join(env.values()), name
        assert env["TOKENFORGE_ADMIN_TOKEN_SHA256"] == digest, name
        user = urlsplit(env["TOKENFORGE_DATABASE_URL"]).username
        assert user == f"tokenforge_{name}", name
        assert not [
            k for k in env if k.endswith("_DATABASE_URL") and k != "TOKENFORGE_DATABASE_URL"
        ]
        metrics_port = urlsplit(info["metrics"][name]).port
        assert metrics_port is not None and listening(metrics_port) == {"127.0.0.1"}, name


def anonymous_nats_refusal(operator_url: str) -> str:
    """What NATS answers a client without credentials on the server of `operator_url`."""
    parts = urlsplit(operator_url)

    async def attempt() -> str:
        try:
            nc = await nats.connect(
                f"nats://{parts.hostname}:{parts.port}",
                allow_reconnect=False,
                max_reconnect_attempts=0,
                connect_timeout=2,
            )
        except Exception as error:  # noqa: BLE001 - the refusal is what we look for
            return str(error)
        await nc.close()
        return "connected"

    return asyncio.run(attempt())


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("devstate")


def test_dev_serves_a_paid_request_and_a_topup_then_stops_everything(state_dir: Path) -> None:
    port = free_port()
    proc = start_dev(state_dir, port)
    try:
        info = wait_for_dev_json(proc, state_dir)
        assert set(info) >= {
            "gateway_url",
            "api_key",
            "account_id",
            "admin_token",
            "mock_upstream_url",
            "services",
        }
        assert set(info["services"]) == {"routing", "wallet", "payments", "usage", "gateway"}
        for address in info["services"].values():
            assert health(address) == "SERVING"
        check_services_hold_only_their_own_credentials(proc.pid, info)

        sdk = openai.OpenAI(
            base_url=info["gateway_url"] + "/v1", api_key=info["api_key"], max_retries=0
        )
        raw = sdk.chat.completions.with_raw_response.create(
            model="demo-chat", messages=[{"role": "user", "content": "hello from dev"}]
        )
        request_id = raw.headers["x-request-id"]
        assert raw.parse().choices[0].message.content

        http = httpx.Client(
            base_url=info["gateway_url"], headers={"authorization": f"Bearer {info['api_key']}"}
        )
        receipt = http.get(f"/v1/usage/{request_id}").json()
        [row] = http.get("/v1/wallet/ledger", params={"request_id": request_id}).json()["data"]
        assert row["entry_id"] == receipt["ledger_entry_id"]
        assert row["amount"]["micros"] == -receipt["charge"]["micros"]
        wallet = {b["bucket"]: b for b in http.get("/v1/wallet").json()["balances"]}
        assert (
            wallet["credit"]["label"] == "Credit" and wallet["routed"]["label"] == "Routed balance"
        )
        assert wallet["credit"]["available"]["micros"] > 0
        assert wallet["routed"]["available"]["micros"] > 0

        order = http.post("/v1/topups", json={"bucket": "credit", "amount": "3.00"}).json()
        http.post(f"/v1/topups/{order['order_id']}/sandbox", json={"outcome": "pay"})
        for _ in range(100):
            credited = http.get("/v1/wallet/ledger", params={"order_id": order["order_id"]}).json()
            if credited["data"]:
                break
            time.sleep(0.1)
        assert credited["data"][0]["amount"]["micros"] == 3_000_000
        posted_before_stop = {
            b["bucket"]: b["posted"]["micros"] for b in http.get("/v1/wallet").json()["balances"]
        }
        check_dev_metrics(info, receipt["charge"]["micros"], 3_000_000)
        # NATS takes no anonymous client: top-up events come from payments' user only.
        assert "Authorization Violation" in anonymous_nats_refusal(info["nats_url"])
    finally:
        out = stop_dev(proc)
    assert proc.returncode == 0, out
    assert not port_open(port)
    logs = {p.name: p.read_text(errors="replace") for p in (state_dir / "logs").glob("*.log")}
    assert set(logs) >= {"gateway.log", "wallet.log", "routing.log", "payments.log", "usage.log"}
    nats_passwords = json.loads((state_dir / "nats" / "users.json").read_text())
    assert set(nats_passwords) == {"payments", "wallet", "operator"}
    assert info["nats_url"].startswith("nats://operator:")
    for name, text in logs.items():
        for user, password in nats_passwords.items():
            assert password not in text, f"the NATS password of {user} leaked into {name}"
        assert info["api_key"] not in text, f"the API key leaked into {name}"
        assert info["admin_token"] not in text, f"the admin token leaked into {name}"
        assert "hello from dev" not in text, f"a prompt leaked into {name}"
    structured = [line for line in logs["gateway.log"].splitlines() if line.startswith("{")]
    assert structured and all('"service":"gateway"' in line for line in structured)
    check_request_followed_in_logs(logs, request_id, raw.headers["x-trace-id"])
    for address in info["services"].values():
        assert not port_open(int(address.rsplit(":", 1)[1]))

    # A second start reuses the state dir: same account, same key, same balances.
    proc = start_dev(state_dir, port)
    try:
        again = wait_for_dev_json(proc, state_dir)
        assert again["api_key"] == info["api_key"]
        http = httpx.Client(
            base_url=again["gateway_url"], headers={"authorization": f"Bearer {again['api_key']}"}
        )
        posted = {
            b["bucket"]: b["posted"]["micros"] for b in http.get("/v1/wallet").json()["balances"]
        }
        assert posted == posted_before_stop
    finally:
        stop_dev(proc)

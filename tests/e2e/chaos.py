"""Fault injection on the real system (issue 21; tests/e2e/test_chaos.py, `make chaos`).

`tokenforge dev --gateways 2` runs every process for real (five services, a second
gateway replica, the mock upstream, NATS, PostgreSQL) and supervises them: a process
that dies is started again. The conservation load of tests/e2e/conservation.py (chat
and streams, official and routed, abandoned and cancelled, idempotent repeats, a route
that falls back, a model that is down, embeddings; four accounts, budgets on) runs on
both replicas, with a client paying top-ups through the sandbox beside it, while a
seeded schedule strikes one process at a time: SIGKILL to each service, to one gateway
replica, the mock upstream and NATS, and one restart of PostgreSQL (a fast shutdown).
Each fault strikes at its point of the run (a share of its duration) and never before
the last victim is back; the load runs in seeded rounds until a moment after the last.

After the load, at rest, the conservation checks run unchanged (every answer that named
a charge has that receipt and ledger row, each bucket's balance is its grants plus its
paid top-ups less its receipts' charges, nothing held or queued, both reconciles) and
every top-up is checked: each order paid is credited exactly once, none other is.
What the faults do to answers (dropped connections, cut streams, 503s saying nothing was
charged, or naming the charge whose receipt is pending) is counted, not a failure; a
money finding fails the run, and so does an answer that does not say whether it charged
(a 500). Open holds of
a killed gateway replica (its budgets and its in-flight requests) end by their TTL, as
documented (docs/OPERATIONS.md, "Stopping and restarting"; docs/ARCHITECTURE.md, "Faults
and scale"): they are listed with their amounts, cause and expiry, and with
TOKENFORGE_CHAOS_WAIT_TTL=1 the run waits them out and then requires nothing held. A
charge not collected would mean a finish met its hold already ended: no outage here
outlasts a hold's TTL, so none is allowed.

`chaos_schedule(seed)` is the whole schedule; it is printed first, and
TOKENFORGE_CHAOS_SEED=<seed> replays it (timings aside).
"""

from __future__ import annotations

import asyncio
import random
import signal
import socket
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from apps.admin import Operator, health_status
from tests.devsystem import start_dev, stop_dev, wait_for_dev_json
from tests.e2e.conservation import Finding, Report, Run, check, read
from tests.e2e.harness import System
from tokenforge.runtime.db import create_engine
from tokenforge.runtime.embedded import free_port

CATALOG = Path(__file__).parent / "catalog.yaml"
SERVICES = ("routing", "wallet", "payments", "usage")
REPLICAS = ("gateway", "gateway-2")  # `tokenforge dev --gateways 2`'s names
# What the faults may do to answers: counted in the report, never a failure.
WEATHER = frozenset(
    {"unexpected_status", "stream_error", "stream_cut", "connection_dropped", "no_request_id"}
)
TOPUP_AMOUNT = "2.00"
# Load after the last fault is back.
TAIL_S = 5.0


@dataclass(frozen=True)
class Fault:
    at: float  # when it strikes, as a share of the run's duration
    target: str  # a service, "gateway"/"gateway-2", "mock-upstream", "nats", "postgres"
    how: str  # "kill" (SIGKILL) or "restart" (PostgreSQL: SIGINT, a fast shutdown)


def chaos_schedule(seed: int) -> list[Fault]:
    """Every process struck once, one at a time, in an order and at points the seed
    decides: SIGKILL to each service, one gateway replica, the mock upstream and NATS;
    PostgreSQL restarted once."""
    rng = random.Random(f"chaos:{seed}")
    replica = rng.choice(REPLICAS)
    faults = [Fault(0.0, t, "kill") for t in (*SERVICES, replica, "mock-upstream", "nats")]
    faults.append(Fault(0.0, "postgres", "restart"))
    rng.shuffle(faults)
    step = 1 / (len(faults) + 1)
    return [
        replace(f, at=round(step * (i + 1) + rng.uniform(-0.3, 0.3) * step, 3))
        for i, f in enumerate(faults)
    ]


def schedule_text(seed: int, schedule: list[Fault]) -> str:
    steps = ", ".join(f"{f.how} {f.target} at {f.at:.0%}" for f in schedule)
    return f"chaos seed {seed} (replay: TOKENFORGE_CHAOS_SEED={seed}): {steps}"


@dataclass
class Struck:
    fault: Fault
    pid: int
    at_wall: float  # time.time() of the signal
    down_s: float  # until it served again
    under_load: bool
    answered: int  # requests answered when it struck


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class DevProcesses:
    """The processes of one `tokenforge dev`, found by what they run."""

    def __init__(self, dev_pid: int, info: dict[str, Any]) -> None:
        self.dev_pid = dev_pid
        self.info = info

    def http_port(self, replica: str) -> int:
        port = urlsplit(self.info["gateway_urls"][REPLICAS.index(replica)]).port
        assert port is not None
        return port

    def find(self, target: str) -> psutil.Process:
        for process in psutil.Process(self.dev_pid).children():
            try:
                command = process.cmdline()
                if self.is_target(process, command, target):
                    return process
            except psutil.NoSuchProcess:
                continue
        raise LookupError(f"no process of tokenforge dev runs {target}")

    def is_target(self, process: psutil.Process, command: list[str], target: str) -> bool:
        if target == "postgres" or target == "nats":
            name = "postgres" if target == "postgres" else "nats-server"
            return bool(command) and Path(command[0]).name == name
        if target == "mock-upstream":
            return "mock-upstream" in command
        if "serve" not in command:
            return False
        served = command[command.index("serve") + 1]
        if target in REPLICAS:
            port = str(self.http_port(target))
            return served == "gateway" and process.environ().get("TOKENFORGE_HTTP_PORT") == port
        return served == target

    async def ready(self, target: str) -> bool:
        if target in SERVICES:
            return await health_status(self.info["services"][target]) == "SERVING"
        if target in REPLICAS:
            return port_open(self.http_port(target))
        url = {
            "mock-upstream": self.info["mock_upstream_url"],
            "nats": self.info["nats_url"],
            "postgres": self.info["database_url"],
        }[target]
        return port_open(urlsplit(url).port or 0)

    async def back(self, target: str, old_pid: int, timeout_s: float = 120) -> float:
        """Seconds until `target` runs again (a new process) and serves."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            try:
                if self.find(target).pid != old_pid and await self.ready(target):
                    return time.monotonic() - started
            except LookupError:
                pass
            await asyncio.sleep(0.1)
        raise TimeoutError(f"{target} did not come back within {timeout_s:.0f} s")


@dataclass
class TopUps:
    """Orders the top-up client opened: order id -> (account index, bucket)."""

    orders: dict[str, tuple[int, str]] = field(default_factory=dict)
    pay_answered: int = 0
    gave_up: int = 0
    paid: int = 0
    credited: int = 0


async def persist(
    http: httpx.AsyncClient, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> httpx.Response | None:
    """POST until it answers below 500 (a dropped connection or a 5xx is a fault
    passing: the same Idempotency-Key makes a repeat safe); None after 30 s."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            answer = await http.post(path, json=body, headers=headers)
            if answer.status_code < 500:
                return answer
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.5)
    return None


async def topup_client(run: Run, topups: TopUps, stop: asyncio.Event) -> None:
    """Top-ups paid through the sandbox, one every ~0.3 s, on random accounts and
    replicas, until the faults are over."""
    rng = random.Random(f"chaos-topups:{run.seed}")
    n = 0
    while not stop.is_set():
        n += 1
        account = rng.randrange(len(run.accounts))
        http = run.http[(account, rng.randrange(len(run.gateway_urls)))]
        bucket = rng.choice(("credit", "routed"))
        key = f"chaos-{run.seed}-topup-{n}"
        created = await persist(
            http,
            "/v1/topups",
            {"bucket": bucket, "amount": TOPUP_AMOUNT},
            {"idempotency-key": key},
        )
        if created is None or created.status_code not in (200, 201):
            topups.gave_up += 1
            continue
        order_id = created.json()["order_id"]
        topups.orders[order_id] = (account, bucket)
        paid = await persist(http, f"/v1/topups/{order_id}/sandbox", {"outcome": "pay"})
        if paid is not None and paid.status_code == 200:
            topups.pay_answered += 1
        await asyncio.sleep(rng.uniform(0.1, 0.5))


async def check_topups(run: Run, topups: TopUps, timeout_s: float = 90) -> list[Finding]:
    """Every paid order credited exactly once with what it received, no other order
    credited; fills `run.topups` (what the balances must include)."""
    findings: list[Finding] = []
    deadline = time.monotonic() + timeout_s
    for order_id, (account, bucket) in topups.orders.items():
        http = run.http[(account, 0)]
        while True:
            order = (await read(http, f"/v1/topups/{order_id}")).json()
            rows = (await read(http, "/v1/wallet/ledger", {"order_id": order_id})).json()["data"]
            paid = order["status"] == "succeeded"
            if not paid or rows or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)  # a paid order's event may still be on its way
        subject = f"order {order_id} account {account} {bucket} ({order['status']})"
        if not paid:
            if rows:
                findings.append(Finding("unpaid_topup_credited", subject, f"rows {rows}"))
            continue
        topups.paid += 1
        received = order["received_balance"]["micros"]
        run.topups.setdefault(account, Counter())[bucket] += received
        if len(rows) != 1:
            findings.append(
                Finding(
                    "topup_not_credited_once",
                    subject,
                    f"paid, {len(rows)} ledger credits: {[r['entry_id'] for r in rows]}",
                )
            )
        elif rows[0]["amount"]["micros"] != received:
            findings.append(
                Finding(
                    "topup_credit_differs",
                    subject,
                    f"received {received}, credited {rows[0]['amount']['micros']}",
                )
            )
        else:
            topups.credited += 1
    return findings


@dataclass
class ChaosResult:
    seed: int
    schedule: list[Fault]
    struck: list[Struck]
    run: Run
    topups: TopUps
    report: Report
    left_micros: int
    left_expire_s: float  # the latest expiry of the holds left, seconds after the checks
    waited_ttl_s: float
    dev_output: str = ""
    # The holds found open at rest and let through as left to their TTL (before any wait).
    left: list[Any] = field(default_factory=list)

    @property
    def money_findings(self) -> list[Finding]:
        return [f for f in self.report.findings if f.kind not in WEATHER]

    @property
    def silent(self) -> list[str]:
        """Answers that did not say whether they charged: a 500 (every other failure
        says it, and is checked against its receipt)."""
        return [a.label() for a in self.run.answers if a.status == 500]

    def text(self) -> str:
        answered = len(self.run.answers)
        weather = Counter(f.kind for f in self.report.findings if f.kind in WEATHER)
        statuses = Counter(str(a.status) if a.status else "gone" for a in self.run.answers)
        restarts = self.dev_output.count(" restarted (restart ")
        ids = frozenset(a.request_id for a in self.run.answers if a.request_id)
        left_why = Counter(why_left(self.struck, h, ids) for h in self.left)
        # "HTTP 409 request_in_progress: ..." -> "409 request_in_progress"
        refusals = Counter(
            f.detail.split(":", 1)[0].removeprefix("HTTP ")
            for f in self.report.findings
            if f.kind == "unexpected_status"
        )
        lines = [
            f"## Seed {self.seed}",
            "",
            schedule_text(self.seed, self.schedule),
            "",
            "| fault | pid | at (answered) | down, s | under load |",
            "| --- | ---: | ---: | ---: | --- |",
        ]
        for s in self.struck:
            lines.append(
                f"| {s.fault.how} {s.fault.target} | {s.pid} | {s.answered} "
                f"| {s.down_s:.1f} | {'yes' if s.under_load else 'no'} |"
            )
        money = self.money_findings
        lines += [
            "",
            f"- load: {answered} requests by {self.run.clients} clients on 2 replicas in "
            f"{self.run.ran_s:.0f} s; statuses {dict(sorted(statuses.items()))}",
            f"- faults: {len(self.struck)} ({sum(s.fault.how == 'kill' for s in self.struck)} "
            f"SIGKILL, 1 PostgreSQL restart), restarts by the supervisor: {restarts}",
            f"- top-ups: {len(self.topups.orders)} orders, {self.topups.paid} paid, "
            f"{self.topups.credited} credited exactly once; {self.topups.gave_up} not opened "
            "(the client gave up during a fault)",
            f"- money checked: {self.report.charges_checked} named charges against receipt "
            f"and ledger row, {len(self.run.accounts) * 2} balances (grants + paid top-ups "
            "- receipts), both reconciles",
            f"- what the faults did to answers (allowed, counted): {dict(sorted(weather.items()))}"
            + (f"; the unexpected statuses: {dict(refusals.most_common())}" if refusals else ""),
            f"- holds left to their TTL: {len(self.left)} ({self.left_micros} micros; "
            + ", ".join(f"{n} by the {why}" for why, n in sorted(left_why.items()))
            + f"), the last expiring {self.left_expire_s:.0f} s after the checks"
            + (
                f"; waited out: {self.waited_ttl_s:.0f} s, then nothing held"
                if self.waited_ttl_s
                else ""
            ),
            "- charges not collected: "
            + str(
                sum(
                    f.kind == "receipt_charge_differs" and "charge_not_collected" in f.detail
                    for f in money
                )
            )
            + " (none allowed: no outage outlasted a hold's TTL)",
            f"- answers that did not say whether they charged (500): {len(self.silent)}"
            + (f" {self.silent[:5]}" if self.silent else ""),
            f"- money findings: {len(money)}" + (" (passed)" if not money else " (FAILED)"),
        ]
        if money:
            lines += [
                "",
                "```",
                self.report.text(self.run.figures(self.report.charges_checked)),
                "```",
            ]
        return "\n".join(lines)


# A budget takes draws for 30 s (BudgetPolicy.max_age_s); a request of this load ends
# well within 10 s: an open hold of the killed replica was placed this long before the kill.
KILLED_HOLDS_WITHIN_S = 40.0
# A Hold the killed replica had sent is placed by the wallet a moment after the kill (a
# wallet call takes milliseconds): such a hold, of a request no answer names, is the
# killed replica's too (seeds 1194354955 and 23021: placed 0 to 10 ms after the kill).
IN_FLIGHT_AFTER_KILL_S = 2.0


def why_left(struck: list[Struck], hold: Any, answered: frozenset[str] = frozenset()) -> str:
    """Why an open hold at rest is left to its TTL ("" when it should not be open): a
    killed gateway replica's (its budgets, its requests in flight, the Holds it had
    sent; docs/ARCHITECTURE.md, "Faults and scale"). `answered`: the request ids the
    clients were answered with. A Hold the killed wallet placed but never answered is
    no reason: the gateway releases it once the wallet is back (a hold in doubt)."""
    placed = hold.created_at.ToDatetime(tzinfo=UTC).timestamp()
    for s in struck:
        if s.fault.target not in REPLICAS:
            continue
        if s.at_wall - KILLED_HOLDS_WITHIN_S <= placed <= s.at_wall:
            return "killed gateway replica"
        in_flight = placed <= s.at_wall + IN_FLIGHT_AFTER_KILL_S
        if placed > s.at_wall and in_flight and hold.request_id not in answered:
            return "killed gateway replica (its Hold, placed as it died)"
    return ""


async def chaos_run(
    seed: int,
    duration_s: float,
    clients: int,
    state_dir: Path,
    tmp: Path,
    wait_ttl: bool = False,
    requests: int = 200,
) -> ChaosResult:
    """The run: faults over `duration_s` (then `TAIL_S` more of load), the load in
    rounds of `requests` steps by `clients` clients."""
    schedule = chaos_schedule(seed)
    print(schedule_text(seed, schedule), flush=True)
    env = {"TOKENFORGE_CATALOG_PATH": str(CATALOG)}
    proc = start_dev(state_dir, free_port(), args=["--gateways", "2"], env=env)
    output = ""
    try:
        info = await asyncio.to_thread(wait_for_dev_json, proc, state_dir)
        operator = Operator.connect(info["services"], info["admin_token"])
        system = System(
            gateway_url=info["gateway_url"],
            services=info["services"],
            operator=operator,
            spans=InMemorySpanExporter(),
            mock_url=info["mock_upstream_url"],
            admin_token=info["admin_token"],
        )
        run = Run(system, seed, requests, clients, list(info["gateway_urls"]))
        run.rest_timeout_s = 60
        procs = DevProcesses(proc.pid, info)
        topups = TopUps()
        stop = asyncio.Event()
        try:
            await run.open_accounts()
            load = asyncio.create_task(run.drive_until(stop))
            feeder = asyncio.create_task(topup_client(run, topups, stop))
            struck: list[Struck] = []
            started = time.monotonic()
            for fault in schedule:
                # At its point of the run, and never before the last victim is back.
                await asyncio.sleep(max(0.0, started + fault.at * duration_s - time.monotonic()))
                victim = procs.find(fault.target)
                at_wall, answered = time.time(), len(run.answers)
                victim.send_signal(signal.SIGKILL if fault.how == "kill" else signal.SIGINT)
                down_s = await procs.back(fault.target, victim.pid)
                struck.append(Struck(fault, victim.pid, at_wall, down_s, not load.done(), answered))
                print(
                    f"  {fault.how} {fault.target} (pid {victim.pid}): back in {down_s:.1f} s",
                    flush=True,
                )
            await asyncio.sleep(TAIL_S)  # the load goes on a moment after the last fault
            stop.set()
            await load
            await feeder
            print(run.figures(), flush=True)
            topup_findings = await check_topups(run, topups)
            answered_ids = frozenset(a.request_id for a in run.answers if a.request_id)
            run.left_to_ttl = lambda hold: bool(why_left(struck, hold, answered_ids))
            engine = create_engine(info["database_url"], pool_size=1)
            try:
                report = await check(run, engine, tmp)
                waited = 0.0
                now = time.time()
                expiries = [h.expires_at.ToDatetime(tzinfo=UTC).timestamp() for h in run.left_holds]
                left_expire_s = max(expiries, default=now) - now
                left_micros = sum(h.amount_micros - h.captured_micros for h in run.left_holds)
                left = list(run.left_holds)  # as found at rest, before any wait
                if wait_ttl and run.left_holds:
                    # Wait the holds out (the wallet's sweeper ends them), then nothing
                    # may be held: run the checks again without an allowance.
                    await asyncio.sleep(max(0.0, left_expire_s) + 15)
                    waited = time.time() - now
                    run.left_to_ttl = None
                    report = await check(run, engine, tmp)
            finally:
                await engine.dispose()
            report.findings += topup_findings
        finally:
            stop.set()
            await run.close()
            await operator.close()
    finally:
        output = stop_dev(proc)
    return ChaosResult(
        seed,
        schedule,
        struck,
        run,
        topups,
        report,
        left_micros,
        left_expire_s,
        waited,
        output,
        left,
    )

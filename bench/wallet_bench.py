"""Wallet benchmark: hold+settle pairs per second over gRPC, durable commits.

Starts an embedded PostgreSQL with durable settings (fsync on, synchronous_commit
on: EmbeddedPostgres(durable=True)) and the wallet service as its own process
(`tokenforge serve wallet`), then runs N concurrent clients, each looping
Hold -> Settle (a partial charge), in two scenarios:

- spread: every pair on one of 1,000 accounts picked at random;
- hot:    every pair on the same account (one balance row).

The clients share `WalletClient`s (`--channels`, default 1: one per gateway
process, and this 2-core machine runs one gateway process), which batch concurrent
holds and settles into HoldMany and SettleMany calls (`--no-batching`: every call is
its unary RPC, for comparison); the table shows how many items went per wallet call.

Prints a table and writes bench-results/wallet.json. Run it with `make bench`, or
`.venv/bin/python bench/wallet_bench.py --seconds 10 --clients 16 64`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from apps.admin import health_status
from services.wallet import app as wallet_app
from services.wallet.client import WalletClient
from tokenforge.money import Bucket
from tokenforge.runtime.embedded import EmbeddedPostgres, free_port

log = logging.getLogger("bench.wallet")

INTERNAL = "bench-internal"
ADMIN = "bench-admin"
ACCOUNTS = 1_000
HOLD_MICROS = 2_000
CHARGE_MICROS = 1_234


@dataclass
class Result:
    scenario: str
    clients: int
    seconds: float
    pairs: int
    pairs_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    # Hold and Settle calls the wallet received, and items per call (1.0: no batching).
    wallet_calls: int
    items_per_call: float
    # CPU per pair (user + system), milliseconds: the wallet process, PostgreSQL (all
    # its processes) and the load generator (the clients' side of gRPC).
    wallet_cpu_ms: float
    postgres_cpu_ms: float
    client_cpu_ms: float


async def fund(client: WalletClient, accounts: list[str], micros: int) -> None:
    async def one(account: str) -> None:
        await client.open_account(account)
        await client.credit(account, Bucket.CREDIT, micros, f"bench-order-{account}")

    for start in range(0, len(accounts), 100):
        await asyncio.gather(*(one(a) for a in accounts[start : start + 100]))


@dataclass(frozen=True)
class Processes:
    """Whose CPU a scenario measures."""

    wallet: int
    postgres: int

    def cpu(self) -> tuple[float, float, float]:
        me = psutil.Process().cpu_times()
        return cpu_seconds(self.wallet), cpu_seconds(self.postgres), me.user + me.system


def cpu_seconds(pid: int) -> float:
    """User + system seconds of a process and its children, so far."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        for process in [root, *root.children(recursive=True)]:
            times = process.cpu_times()
            total += times.user + times.system
    except psutil.NoSuchProcess:
        pass
    return total


def _calls(clients: list[WalletClient]) -> int:
    return sum(
        b.calls for c in set(clients) for b in (c.hold_batcher, c.settle_batcher) if b is not None
    )


async def run_scenario(
    clients: list[WalletClient],
    name: str,
    accounts: list[str],
    seconds: float,
    processes: Processes,
) -> Result:
    latencies: list[float] = []
    calls_before = _calls(clients)
    cpu_before = processes.cpu()
    errors = 0
    stop_at = time.monotonic() + seconds

    async def worker(client: WalletClient) -> None:
        nonlocal errors
        while time.monotonic() < stop_at:
            account = random.choice(accounts)  # noqa: S311 - load spread, not secrets
            started = time.perf_counter()
            try:
                hold = await client.hold(account, Bucket.CREDIT, HOLD_MICROS, uuid.uuid4().hex)
                await client.settle(hold.hold_id, CHARGE_MICROS, account_id=account)
            except Exception:  # noqa: BLE001 - count and keep measuring
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)

    begun = time.monotonic()
    await asyncio.gather(*(worker(c) for c in clients))
    elapsed = time.monotonic() - begun
    cpu = [after - before for after, before in zip(processes.cpu(), cpu_before, strict=True)]
    latencies.sort()
    per_pair = 1000 / max(1, len(latencies))
    items = 2 * len(latencies) + errors  # a hold and a settle per pair (about, on errors)
    calls = _calls(clients) - calls_before or items  # without batching: one call an item

    def pct(p: float) -> float:
        return (
            latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else 0
        )

    return Result(
        scenario=name,
        clients=len(clients),
        seconds=round(elapsed, 2),
        pairs=len(latencies),
        pairs_per_s=round(len(latencies) / elapsed, 1),
        p50_ms=round(pct(0.50), 2),
        p99_ms=round(pct(0.99), 2),
        errors=errors,
        wallet_calls=calls,
        items_per_call=round(items / calls, 2) if calls else 0.0,
        wallet_cpu_ms=round(cpu[0] * per_pair, 2),
        postgres_cpu_ms=round(cpu[1] * per_pair, 2),
        client_cpu_ms=round(cpu[2] * per_pair, 2),
    )


def start_wallet(database_url: str, port: int, logfile: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "TOKENFORGE_DATABASE_URL": database_url,
        "TOKENFORGE_INTERNAL_TOKEN": INTERNAL,
        "TOKENFORGE_ADMIN_TOKEN": ADMIN,
        "TOKENFORGE_LOG_LEVEL": "WARNING",
    }
    env.pop("TOKENFORGE_NATS_URL", None)
    return subprocess.Popen(
        [sys.executable, "-m", "apps.cli", "serve", "wallet", "--port", str(port)],
        env=env,
        stdout=logfile.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


async def wait_serving(address: str, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            raise RuntimeError(f"the wallet exited with code {proc.returncode}")
        if await health_status(address, timeout=0.5) == "SERVING":
            return
        await asyncio.sleep(0.1)
    raise TimeoutError("the wallet did not report SERVING")


async def bench(
    seconds: float, client_counts: list[int], channels: int, batching: bool
) -> list[Result]:
    workdir = Path(tempfile.mkdtemp(prefix="tokenforge-wallet-bench-"))
    pg = EmbeddedPostgres(workdir / "pg", durable=True)
    database_url = pg.start()
    proc: subprocess.Popen[bytes] | None = None
    try:
        await asyncio.to_thread(wallet_app.migrate, database_url)
        port = free_port()
        proc = start_wallet(database_url, port, workdir / "wallet.log")
        address = f"127.0.0.1:{port}"
        await wait_serving(address, proc)

        # One WalletClient (one HTTP/2 connection) per simulated gateway process.
        pool = [
            WalletClient.connect(address, INTERNAL, deadline=10.0, batching=batching)
            for _ in range(channels)
        ]
        try:
            spread = [f"bench-{i:04d}-{uuid.uuid4().hex[:6]}" for i in range(ACCOUNTS)]
            hot = [f"bench-hot-{uuid.uuid4().hex[:6]}"]
            await fund(pool[0], spread, 10**12)
            await fund(pool[0], hot, 10**15)
            # Warm up connections, caches and the JIT-less hot paths.
            assert pg.proc is not None
            processes = Processes(wallet=proc.pid, postgres=pg.proc.pid)
            await run_scenario(pool, "warm-up", spread, 2.0, processes)
            results = []
            for n in client_counts:
                workers = [pool[i % len(pool)] for i in range(n)]
                for name, accounts in (
                    ("spread (1,000 accounts)", spread),
                    ("hot (1 account)", hot),
                ):
                    result = await run_scenario(workers, name, accounts, seconds, processes)
                    log.warning("%s", result)
                    results.append(result)
            return results
        finally:
            for client in pool:
                await client.close()
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        pg.stop()


def table(results: list[Result]) -> str:
    head = (
        f"{'scenario':<24} {'clients':>7} {'pairs/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'errors':>6} {'items/call':>10}   CPU ms/pair: wallet  postgres  client"
    )
    rows = [
        f"{r.scenario:<24} {r.clients:>7} {r.pairs_per_s:>9.1f} {r.p50_ms:>8.2f} "
        f"{r.p99_ms:>8.2f} {r.errors:>6} {r.items_per_call:>10.2f} "
        f"{r.wallet_cpu_ms:>20.2f} {r.postgres_cpu_ms:>9.2f} {r.client_cpu_ms:>7.2f}"
        for r in results
    ]
    return "\n".join([head, "-" * len(head), *rows])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per scenario")
    parser.add_argument("--clients", type=int, nargs="+", default=[32], help="concurrency")
    parser.add_argument(
        "--channels",
        type=int,
        default=1,
        help="WalletClients sharing the load (one per gateway process)",
    )
    parser.add_argument(
        "--no-batching",
        dest="batching",
        action="store_false",
        help="every Hold and Settle its own unary call (no HoldMany/SettleMany)",
    )
    parser.add_argument("--out", default="bench-results/wallet.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    results = asyncio.run(bench(args.seconds, args.clients, args.channels, args.batching))
    sys.stdout.write(table(results) + "\n")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "benchmark": "wallet hold+settle pairs over gRPC, durable commits",
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "seconds_per_scenario": args.seconds,
                "batching": args.batching,
                "channels": args.channels,
                "results": [asdict(r) for r in results],
            },
            indent=2,
        )
        + "\n"
    )
    sys.stdout.write(f"wrote {out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

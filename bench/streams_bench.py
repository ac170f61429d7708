"""Streams at scale (issue 21): N streamed chats of about 30 s each held open together,
against the mock upstream directly, tokenforge (full billing) and LiteLLM's proxy, in
one run.

    python -m bench.streams_bench --streams 100,1000 [--arrival 10] [--no-litellm]

The system is `make bench`'s (bench/gateway_bench.py: `tokenforge dev`'s processes with
bench/catalog.yaml, WARNING logs); the model `bench-paced` has a channel whose mock
upstream paces its answer (60 chunks, 500 ms apart). For each N and each target in
turn, bench/loadgen.py (`--open N`, its own process) starts N streams arriving evenly
over `--arrival` seconds and reads each to its end. Measured: first token (p50, p99)
and what tokenforge and LiteLLM add to the direct figure, the gap between chunks (p99),
errors, and the RSS each open stream costs the gateway (its peak while they are open,
less its RSS just before, over N; LiteLLM's likewise, all its workers). After the run:
every tokenforge stream that ended well has its receipt, no hold is left open, both
reconcile commands pass. Writes bench-results/streams.json and the "Streams at scale"
section of docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import litellm_proxy
from bench.gateway_bench import (
    DOC,
    ROOT,
    BenchSystem,
    RssSampler,
    check_correctness,
    cpu_seconds,
    machine,
    percentile,
    replace_section,
    rss_bytes,
    run_and_report,
    start_bench_system,
)
from tokenforge.runtime.embedded import free_port

log = logging.getLogger("bench.streams")

MODEL = "bench-paced"
PACED_KNOBS = "/knobs/reply-tokens=60,chunk-gap-ms=500"
TITLE = "Streams at scale"
# The gateway's limit of upstream calls held open at once during the run
# (TOKENFORGE_UPSTREAM_MAX_CONNECTIONS; shipped default 4,096): above the largest N, so
# the knee found is the machine's, not the setting's (`--max-connections`).
MAX_CONNECTIONS = 10_000


def raise_open_files() -> None:
    """Soft limit of open files up to the hard one: 5,000 streams are 5,000 sockets in
    the load generator and 10,000 in the gateway (client and upstream sides). The
    processes this one starts (the system's, the load generator) inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as error:
            log.warning("open files stay at %d (%s): large N may fail to connect", soft, error)


async def open_streams(
    url: str, model: str, keys: list[str], streams: int, arrival: float
) -> dict[str, Any]:
    args = [sys.executable, "-m", "bench.loadgen", "--url", url, "--model", model]
    args += ["--open", str(streams), "--arrival", str(arrival)]
    for key in keys:
        args += ["--key", key]
    process = await asyncio.create_subprocess_exec(
        *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"loadgen failed ({process.returncode}): {stderr.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(stdout)
    # "loadgen CPU 1.234 s for ..." on stderr: the load generator's own CPU.
    words = stderr.decode().split()
    if "CPU" in words:
        result["loadgen_cpu_s"] = float(words[words.index("CPU") + 1])
    return result


async def phase(
    name: str,
    url: str,
    model: str,
    keys: list[str],
    streams: int,
    arrival: float,
    pid: int,
    mock_pid: int,
    others: dict[str, int],
) -> dict[str, Any]:
    """One target at N streams: the load's figures, the watched process's memory, and
    the CPU each process took (to tell which one saturates the machine; `others`: the
    rest of the target's processes, for tokenforge its other services and servers)."""
    load_before = os.getloadavg()[0]
    baseline = rss_bytes(pid)
    watched = {"target": pid, "mock": mock_pid, **others}
    cpu_before = {who: cpu_seconds(p) for who, p in watched.items()}
    started = time.monotonic()
    with RssSampler({name: pid}) as sampler:
        result = await open_streams(url, model, keys, streams, arrival)
    wall = time.monotonic() - started
    cpu = {who: cpu_seconds(p) - cpu_before[who] for who, p in watched.items()}
    cpu["loadgen"] = result.get("loadgen_cpu_s", 0.0)
    peak = sampler.peak[name]
    figures = {
        "target": name,
        "streams": streams,
        "ok": result["ok"],
        "errors": result["errors"],
        "error_count": sum(result["errors"].values()),
        "ttft_p50_ms": percentile(result["ttft_ms"], 50),
        "ttft_p99_ms": percentile(result["ttft_ms"], 99),
        "gap_p50_ms": percentile(result["gap_ms"], 50),
        "gap_p99_ms": percentile(result["gap_ms"], 99),
        "seconds": result["seconds"],
        "rss_before_mb": baseline / 2**20,
        "rss_peak_mb": peak / 2**20,
        "rss_per_stream_kb": max(0, peak - baseline) / streams / 1024,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        # CPU cores each process used on average over the phase (wall `seconds`).
        "wall_s": wall,
        "cores": {who: seconds / wall for who, seconds in cpu.items()},
        "others_cores": sum(cpu[who] for who in others) / wall if others else None,
    }
    log.info(
        "%-10s %5d streams: %d ok, %d errors, TTFT p50 %.1f ms p99 %.1f ms, gap p99 %.1f ms, "
        "%.1f KB/stream, load %.1f, cores %s",
        name,
        streams,
        figures["ok"],
        figures["error_count"],
        figures["ttft_p50_ms"] or 0,
        figures["ttft_p99_ms"] or 0,
        figures["gap_p99_ms"] or 0,
        figures["rss_per_stream_kb"],
        figures["load_after"],
        {who: round(c, 2) for who, c in figures["cores"].items()},
    )
    return figures


async def run(args: argparse.Namespace) -> dict[str, Any]:
    state = Path(args.state_dir or tempfile.mkdtemp(prefix="tokenforge-streams-"))
    system = BenchSystem(free_port(), state)
    proxy: litellm_proxy.LiteLLMProxy | None = None
    litellm_unavailable = ""
    raise_open_files()
    os.environ["TOKENFORGE_UPSTREAM_MAX_CONNECTIONS"] = str(args.max_connections)
    try:
        database_url, info, accounts, keys = await start_bench_system(system, args.accounts)
        groups = system.process_groups()
        mock_base = system.mock_url + PACED_KNOBS + "/v1"
        targets: list[tuple[str, str, str, list[str], int]] = [
            (
                "direct",
                mock_base + "/chat/completions",
                "mock-gpt-official",
                [],
                groups["mock-upstream"],
            ),
            (
                "tokenforge",
                info["gateway_url"] + "/v1/chat/completions",
                MODEL,
                keys,
                groups["gateway"],
            ),
        ]
        if args.no_litellm:
            litellm_unavailable = "skipped with --no-litellm"
        else:
            try:
                proxy = await asyncio.to_thread(
                    litellm_proxy.start, free_port(), {MODEL: mock_base}, system.state
                )
                targets.append(
                    (
                        "litellm",
                        proxy.url + "/v1/chat/completions",
                        MODEL,
                        [litellm_proxy.MASTER_KEY],
                        proxy.process.pid,
                    )
                )
            except litellm_proxy.Unavailable as error:
                litellm_unavailable = str(error)[:300]
                log.warning("LiteLLM unavailable: %s", litellm_unavailable)
        phases = []
        mock_pid = groups["mock-upstream"]
        # tokenforge's other processes (services, PostgreSQL, NATS): their CPU too.
        rest = {n: p for n, p in groups.items() if n not in ("gateway", "mock-upstream")}
        first = True
        for streams in args.streams:
            for name, url, model, target_keys, pid in targets:
                if name == "litellm" and args.litellm_max and streams > args.litellm_max:
                    log.info("litellm %d streams: skipped (--litellm-max)", streams)
                    continue
                if not first:
                    await asyncio.sleep(args.pause)  # the last phase's sockets close
                first = False
                phases.append(
                    await phase(
                        name,
                        url,
                        model,
                        target_keys,
                        streams,
                        args.arrival,
                        pid,
                        mock_pid,
                        rest if name == "tokenforge" else {},
                    )
                )
        ours_ok = sum(p["ok"] for p in phases if p["target"] == "tokenforge")
        correctness = await check_correctness(system, database_url, accounts, ours_ok)
        return {
            "finished_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": args.command_line,
            "arrival_s": args.arrival,
            "max_connections": args.max_connections,
            "pause_s": args.pause,
            "litellm_max": args.litellm_max,
            "machine": machine(),
            "litellm_version": litellm_proxy.LITELLM_VERSION if proxy else None,
            "litellm_unavailable": litellm_unavailable or None,
            "phases": phases,
            "correctness": correctness,
        }
    finally:
        if proxy is not None:
            await asyncio.to_thread(proxy.stop)
        await asyncio.to_thread(system.stop)
        if not args.state_dir:
            shutil.rmtree(state, ignore_errors=True)


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
    direct = {p["streams"]: p for p in result["phases"] if p["target"] == "direct"}
    lines = [
        "| streams | target | ok | errors | first token p50 / p99, ms (added over direct) "
        "| chunk gap p99, ms | RSS per open stream, KB | CPU cores: target / mock / load "
        "generator / tokenforge's other processes | load before / after |",
        "| ---: | --- | ---: | ---: | --- | ---: | ---: | --- | --- |",
    ]
    for p in result["phases"]:
        base = direct.get(p["streams"])
        ttft = f"{fmt(p['ttft_p50_ms'])} / {fmt(p['ttft_p99_ms'])}"
        if base is not None and p["target"] != "direct":
            add50 = (p["ttft_p50_ms"] or 0) - (base["ttft_p50_ms"] or 0)
            add99 = (p["ttft_p99_ms"] or 0) - (base["ttft_p99_ms"] or 0)
            ttft += f" ({add50:+.1f} / {add99:+.1f})"
        errors = f"{p['error_count']}" + (f" {p['errors']}" if p["errors"] else "")
        lines.append(
            f"| {p['streams']} | {p['target']} | {p['ok']} | {errors} | {ttft} "
            f"| {fmt(p['gap_p99_ms'])} | {fmt(p['rss_per_stream_kb'])} | {cores(p)} "
            f"| {p['load_before']:.1f} / {p['load_after']:.1f} |"
        )
    marginal = marginal_rss(result["phases"])
    if marginal:
        lines += [
            "",
            "RSS each further open stream costs (between the smallest and the largest N, "
            "so start-up and warm-up allocations cancel): "
            + ", ".join(f"{name} {kb:.1f} KB" for name, kb in marginal.items()),
        ]
    largest = max((p["streams"] for p in result["phases"]), default=0)
    if result.get("litellm_max") and largest > result["litellm_max"]:
        lines += [
            "",
            f"LiteLLM ran up to {result['litellm_max']} streams (`--litellm-max`); "
            "larger N were not asked of it.",
        ]
    if result.get("litellm_unavailable"):
        lines += ["", f"LiteLLM: unavailable ({result['litellm_unavailable']})."]
    correctness = result["correctness"]
    lines += [
        "",
        "After the run: " + ("**passed**" if correctness["ok"] else "**FAILED**"),
    ]
    for check, passed in correctness["checks"].items():
        lines.append(f"- {check.replace('_', ' ')}: {'yes' if passed else 'NO'}")
    lines.append(
        f"- {correctness['gateway_successful_responses']} streams ended well through "
        f"tokenforge, receipts {correctness['receipts_by_status']}"
    )
    return "\n".join(lines)


def cores(p: dict[str, Any]) -> str:
    """Cores each process used over the phase: the target (for direct, the mock
    itself), the mock upstream, the load generator, tokenforge's other processes."""
    used = p.get("cores")
    if not used:
        return "-"
    rest = p.get("others_cores")
    return f"{used['target']:.2f} / {used['mock']:.2f} / {used['loadgen']:.2f} / " + (
        "-" if rest is None else f"{rest:.2f}"
    )


def marginal_rss(phases: list[dict[str, Any]]) -> dict[str, float]:
    """Per target with two stream counts or more: (peak RSS at the largest N - at the
    smallest) / (largest - smallest N), in KB."""
    out: dict[str, float] = {}
    for name in dict.fromkeys(p["target"] for p in phases):
        mine = sorted((p for p in phases if p["target"] == name), key=lambda p: p["streams"])
        if len(mine) >= 2 and mine[-1]["streams"] > mine[0]["streams"]:
            grown = mine[-1]["rss_peak_mb"] - mine[0]["rss_peak_mb"]
            out[name] = grown * 1024 / (mine[-1]["streams"] - mine[0]["streams"])
    return out


def write_doc(result: dict[str, Any], table: str) -> None:
    text = DOC.read_text()
    body = (
        f"Latest run: {result['finished_at']}, command `{result['command']}`; machine: "
        f"{result['machine']}. Each target in turn holds N streamed chats open together "
        f"(arriving evenly over {result['arrival_s']:.0f} s; the mock upstream paces each "
        "answer: 60 chunks 500 ms apart, about 30 s); the direct row is the mock itself. "
        "RSS per open stream is the process's peak while the streams are open less its RSS "
        "just before, over N (the gateway for tokenforge; all of LiteLLM's workers). CPU "
        "cores: each process's CPU seconds over the phase's wall time (the direct row's "
        "target is the mock; tokenforge's other processes: routing, wallet, usage, payments, "
        f"PostgreSQL, NATS); {result.get('pause_s', 0):.0f} s of rest between phases. The "
        "gateway's limit of open upstream calls "
        f"(TOKENFORGE_UPSTREAM_MAX_CONNECTIONS) was {result.get('max_connections', 4096):,} "
        "for the run.\n\n" + table
    )
    DOC.write_text(replace_section(text, TITLE, body))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="100", help="comma-separated counts (100)")
    parser.add_argument("--arrival", type=float, default=10.0, help="seconds to arrive (10)")
    parser.add_argument("--accounts", type=int, default=8, help="bench accounts/keys (8)")
    parser.add_argument("--no-litellm", action="store_true")
    parser.add_argument(
        "--pause", type=float, default=10.0, help="seconds of rest between phases (10)"
    )
    parser.add_argument(
        "--litellm-max", type=int, default=0, help="ask LiteLLM only up to this N (0: all)"
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=MAX_CONNECTIONS,
        help=f"the gateway's TOKENFORGE_UPSTREAM_MAX_CONNECTIONS ({MAX_CONNECTIONS})",
    )
    parser.add_argument("--no-doc", action="store_true", help="leave docs/PERFORMANCE.md as it is")
    parser.add_argument("--state-dir", default="", help="keep the system's data here")
    args = parser.parse_args(argv)
    args.streams = [int(n) for n in str(args.streams).split(",") if n.strip()]
    args.command_line = " ".join(
        ["python -m bench.streams_bench", *(argv if argv is not None else sys.argv[1:])]
    )
    return args


def main(argv: list[str] | None = None) -> int:
    return run_and_report("streams", run, parse_args(argv), markdown, write_doc)


if __name__ == "__main__":
    raise SystemExit(main())

"""A fixed-rate (open-loop) load generator for the capacity bench: plain chat
completions sent at `--rate` requests per second whatever the answers' latency, spread
over several gateway URLs the way a load balancer would, each account's requests over
every URL.

    python -m bench.rateload --url http://127.0.0.1:8080/v1/chat/completions \
        [--url ...] --model bench-chat-shipped --key sk-... [--key ...] \
        --rate 150 --seconds 20 --warmup 3

Request i goes to key i mod K and URL (i div K) mod U. Prints `measuring` on a line of
its own when the warm-up ends (the caller reads its CPU counters then), and once every
measured request has its answer one JSON object: counts, errors by kind, the measured
span, the rate reached, `behind_ms` (how late the last request was sent against its
schedule), `shed` (requests not sent because `--max-in-flight` were open) and
`latency_ms` samples.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import aiohttp
import orjson

from bench.loadgen import Samples, one_plain, request_body


async def run(args: argparse.Namespace) -> dict[str, Any]:
    auth = [
        {"content-type": "application/json", "authorization": f"Bearer {key}"} for key in args.key
    ] or [{"content-type": "application/json"}]
    body = request_body(args.model, False, args.max_tokens)
    connector = aiohttp.TCPConnector(limit=args.max_in_flight, limit_per_host=args.max_in_flight)
    timeout = aiohttp.ClientTimeout(connect=60.0, sock_read=60.0)
    warm = Samples()
    measured = Samples()
    open_requests: set[asyncio.Task[None]] = set()
    shed = 0
    behind = 0.0
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        warm_count = round(args.rate * args.warmup)
        total = warm_count + round(args.rate * args.seconds)
        measured_from = started
        for i in range(total):
            if i == warm_count:
                # Let the warm-up's answers arrive, then say the measured span begins.
                await asyncio.gather(*open_requests)
                sys.stdout.write("measuring\n")
                sys.stdout.flush()
                measured_from = time.perf_counter()
            base = started if i < warm_count else measured_from
            index = i if i < warm_count else i - warm_count
            due = base + index / args.rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                behind = max(behind, -delay * 1000)
            if len(open_requests) >= args.max_in_flight:
                shed += i >= warm_count
                continue
            url = args.url[(i // len(auth)) % len(args.url)]
            into = warm if i < warm_count else measured
            task = asyncio.create_task(one_plain(session, url, body, auth[i % len(auth)], into))
            open_requests.add(task)
            task.add_done_callback(open_requests.discard)
        await asyncio.gather(*open_requests)
        finished = time.perf_counter()
    sent = measured.ok + sum(measured.errors.values())
    return {
        "urls": args.url,
        "rate": args.rate,
        "seconds": finished - measured_from,
        "requests": sent,
        "ok": measured.ok,
        "warmup_ok": warm.ok,
        "warmup_errors": sum(warm.errors.values()),
        "errors": dict(measured.errors),
        "rate_reached": sent / max(finished - measured_from, 1e-9),
        "behind_ms": round(behind, 3),
        "shed": shed,
        "latency_ms": [round(v, 3) for v in measured.latency_ms],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", action="append", required=True, help="repeat for more")
    parser.add_argument("--model", required=True)
    parser.add_argument("--key", action="append", default=[], help="repeat for more keys")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured span")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-in-flight", type=int, default=512)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")


if __name__ == "__main__":
    main()

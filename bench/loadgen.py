"""A closed-loop HTTP load generator for OpenAI-compatible chat completions (or, with
`--format`, OpenAI Responses or Anthropic Messages), run as its own process so the load
it makes does not share an event loop with what it measures.

    python -m bench.loadgen --url http://127.0.0.1:8080/v1/chat/completions \
        --model bench-chat --key sk-... --concurrency 32 --seconds 10 [--stream] \
        [--format chat|responses|messages]

N workers each send one request after the other until the time is up (after an
unmeasured warm-up), over one aiohttp session whose keep-alive pool holds one
connection per worker (aiohttp costs about a tenth of httpx's CPU per request, CPU the
systems under test need when they share the machine). Prints one JSON object on
stdout: counts, errors by kind, the measured span, and the raw samples in
milliseconds: `latency_ms` (whole request, the last byte of a stream included), and for
streams `ttft_ms` (first content chunk) and `gap_ms` (between consecutive content
chunks). The load generator's own CPU time goes to stderr.

`--open N --arrival S` is the open-streams mode (bench/streams_bench.py): N streams,
arriving evenly over S seconds, each read to its end, all held open together when they
are long; no warm-up, one connection each.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp.http_exceptions import HttpProcessingError

PROMPT = "Say something short about benchmarks."

# What one request can raise; anything else is a bug of the load generator and stops it.
FAILURES = (aiohttp.ClientError, HttpProcessingError, TimeoutError)


@dataclass
class Samples:
    # Warm-up answers are not measured but are counted: they were billed all the same.
    warmup_ok: int = 0
    warmup_errors: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latency_ms: list[float] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)
    gap_ms: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Format:
    """How one API format asks, answers and streams."""

    # A whole answer has this in its body.
    answered: bytes
    # The `type` of a stream event carrying generated text, and of the one that ends it
    # (chat: the `[DONE]` line and content deltas, no types).
    text_event: str = ""
    end_event: str = ""


FORMATS = {
    "chat": Format(b'"choices"'),
    "responses": Format(b'"output"', "response.output_text.delta", "response.completed"),
    "messages": Format(b'"content"', "content_block_delta", "message_stop"),
}
ERROR_EVENTS = frozenset({"error", "response.failed"})


def request_body(model: str, stream: bool, max_tokens: int, fmt: str = "chat") -> bytes:
    body: dict[str, Any] = {"model": model}
    if fmt == "responses":
        body.update(input=PROMPT, max_output_tokens=max_tokens)
    else:
        body.update(messages=[{"role": "user", "content": PROMPT}], max_tokens=max_tokens)
    if stream:
        body["stream"] = True
    return orjson.dumps(body)


def has_text(chunk: dict[str, Any], fmt: Format) -> bool:
    """Does this stream event carry generated text?"""
    if fmt.text_event:
        return chunk.get("type") == fmt.text_event
    choices = chunk.get("choices") or []
    return bool(choices and (choices[0].get("delta") or {}).get("content"))


def error_kind(error: BaseException) -> str:
    """The kind of a failed request, under the names the httpx load generator used
    (httpx's exception classes) where one maps, so results stay comparable."""
    if isinstance(error, aiohttp.ConnectionTimeoutError):  # pool wait or connect
        return "ConnectTimeout"
    if isinstance(error, aiohttp.SocketTimeoutError):
        return "ReadTimeout"
    if isinstance(error, TimeoutError):
        return "TimeoutException"
    if isinstance(error, aiohttp.ClientConnectorError):
        return "ConnectError"
    if isinstance(
        error,
        (
            aiohttp.ServerDisconnectedError,
            aiohttp.ClientPayloadError,
            aiohttp.ClientResponseError,
            HttpProcessingError,
        ),
    ):
        return "RemoteProtocolError"
    if isinstance(error, aiohttp.ClientOSError):
        return "ReadError"
    return type(error).__name__


Headers = dict[str, str]


async def one_plain(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: Headers,
    into: Samples | None,
    fmt: Format = FORMATS["chat"],
) -> None:
    started = time.perf_counter()
    try:
        async with session.post(url, data=body, headers=headers) as response:
            status = response.status
            content = await response.read()
    except FAILURES as error:
        if into is not None:
            into.errors[error_kind(error)] += 1
        return
    elapsed = (time.perf_counter() - started) * 1000
    if into is None:
        return
    if status == 200 and fmt.answered in content:
        into.ok += 1
        into.latency_ms.append(elapsed)
    else:
        into.errors[f"http_{status}"] += 1


async def one_stream(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: Headers,
    into: Samples | None,
    fmt: Format = FORMATS["chat"],
) -> None:
    started = time.perf_counter()
    first: float | None = None
    last: float | None = None
    gaps: list[float] = []
    done = False
    failed = ""

    def take(lines: list[bytes]) -> None:
        nonlocal first, last, done, failed
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                done = True
                return
            chunk = orjson.loads(data)
            if "error" in chunk or chunk.get("type") in ERROR_EVENTS:
                failed = "stream_error"
                continue
            if fmt.end_event and chunk.get("type") == fmt.end_event:
                done = True
                return
            if has_text(chunk, fmt):
                now = time.perf_counter()
                if first is None:
                    first = now
                else:
                    gaps.append((now - (last or now)) * 1000)
                last = now

    try:
        async with session.post(url, data=body, headers=headers) as response:
            if response.status != 200:
                await response.read()
                failed = f"http_{response.status}"
            else:
                # Lines are cut here rather than with aiohttp's readline, which has a
                # length limit; `parts` holds the pieces of a line not yet ended.
                parts: list[bytes] = []
                async for piece in response.content.iter_any():
                    if done:
                        continue  # read to the end: the last byte is in the latency
                    parts.append(piece)
                    if b"\n" in piece:
                        lines = b"".join(parts).split(b"\n")
                        parts = [lines.pop()]
                        take(lines)
                if not done:
                    take([b"".join(parts)])  # a last line without its newline
    except FAILURES as error:
        failed = error_kind(error)
    except orjson.JSONDecodeError as error:
        failed = type(error).__name__
    elapsed = (time.perf_counter() - started) * 1000
    if into is None:
        return
    if failed or not done:
        into.errors[failed or "no_done"] += 1
        return
    into.ok += 1
    into.latency_ms.append(elapsed)
    if first is not None:
        into.ttft_ms.append((first - started) * 1000)
    into.gap_ms.extend(gaps)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    # Worker i uses key i mod the number of keys (one per bench account).
    keys: list[str] = args.key
    auth: list[Headers] = [
        {"content-type": "application/json", "authorization": f"Bearer {key}"} for key in keys
    ] or [{"content-type": "application/json"}]
    body = request_body(args.model, args.stream, args.max_tokens, args.format)
    fmt = FORMATS[args.format]
    call = one_stream if args.stream else one_plain

    async def one(
        session: aiohttp.ClientSession, url: str, body: bytes, headers: Headers, into: Samples
    ) -> None:
        await call(session, url, body, headers, into, fmt)

    samples = Samples()
    # One keep-alive connection per worker; 60 s to get a connection, 60 s between reads.
    connector = aiohttp.TCPConnector(limit=args.concurrency, limit_per_host=args.concurrency)
    timeout = aiohttp.ClientTimeout(connect=60.0, sock_read=60.0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        warm_until = time.perf_counter() + args.warmup
        end = warm_until + args.seconds
        measured_from: list[float] = []

        async def worker(headers: Headers) -> None:
            while True:
                now = time.perf_counter()
                if now >= end:
                    return
                if now >= warm_until:
                    await one(session, args.url, body, headers, samples)
                    continue
                warm = Samples()
                await one(session, args.url, body, headers, warm)
                samples.warmup_ok += warm.ok
                samples.warmup_errors += sum(warm.errors.values())

        started = time.perf_counter()
        await asyncio.gather(*(worker(auth[i % len(auth)]) for i in range(args.concurrency)))
        finished = time.perf_counter()
        measured_from.append(max(warm_until, started))
    total = samples.ok + sum(samples.errors.values())
    return {
        "url": args.url,
        "model": args.model,
        "stream": args.stream,
        "concurrency": args.concurrency,
        "seconds": finished - measured_from[0],
        "requests": total,
        "ok": samples.ok,
        "warmup_ok": samples.warmup_ok,
        "warmup_errors": samples.warmup_errors,
        "errors": dict(samples.errors),
        "latency_ms": [round(v, 3) for v in samples.latency_ms],
        "ttft_ms": [round(v, 3) for v in samples.ttft_ms],
        "gap_ms": [round(v, 3) for v in samples.gap_ms],
    }


async def run_open(args: argparse.Namespace) -> dict[str, Any]:
    """`args.open` streams arriving evenly over `args.arrival` seconds, each read to
    its end on a connection of its own."""
    keys: list[str] = args.key
    auth: list[Headers] = [
        {"content-type": "application/json", "authorization": f"Bearer {key}"} for key in keys
    ] or [{"content-type": "application/json"}]
    body = request_body(args.model, True, args.max_tokens)
    samples = Samples()
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(connect=60.0, sock_read=60.0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()

        async def arriving(i: int) -> None:
            await asyncio.sleep(i * args.arrival / max(args.open, 1))
            await one_stream(session, args.url, body, auth[i % len(auth)], samples)

        await asyncio.gather(*(arriving(i) for i in range(args.open)))
        finished = time.perf_counter()
    return {
        "url": args.url,
        "model": args.model,
        "stream": True,
        "open": args.open,
        "arrival_s": args.arrival,
        "seconds": finished - started,
        "requests": samples.ok + sum(samples.errors.values()),
        "ok": samples.ok,
        "warmup_ok": 0,
        "warmup_errors": 0,
        "errors": dict(samples.errors),
        "latency_ms": [round(v, 3) for v in samples.latency_ms],
        "ttft_ms": [round(v, 3) for v in samples.ttft_ms],
        "gap_ms": [round(v, 3) for v in samples.gap_ms],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the chat completions URL")
    parser.add_argument("--model", required=True)
    parser.add_argument("--key", action="append", default=[], help="repeat for more keys")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--open", type=int, default=0, help="open-streams mode: N streams")
    parser.add_argument("--arrival", type=float, default=10.0, help="... arriving over S s")
    parser.add_argument("--format", choices=sorted(FORMATS), default="chat")
    cpu_started = time.process_time()
    args = parser.parse_args()
    # One socket per open stream: thousands of them need more than a default 1,024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    result = asyncio.run(run_open(args) if args.open else run(args))
    cpu = time.process_time() - cpu_started
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")
    sent = result["requests"] + result["warmup_ok"] + result["warmup_errors"]
    sys.stderr.write(
        f"loadgen CPU {cpu:.3f} s for {sent} requests (warm-up included): "
        f"{cpu / max(sent, 1) * 1000:.3f} ms per request\n"
    )


if __name__ == "__main__":
    main()

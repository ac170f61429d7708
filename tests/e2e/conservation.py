"""Money rule G1 under a crowd of clients that misbehave (tests/e2e/test_conservation.py,
`make soak`): what every answer named is what the receipts and the ledger hold.

A seed decides everything the clients do: `schedule(seed, ...)` gives each client its
own `random.Random` (derived from the seed and the client's index) and draws its steps
from it up front, so the same seed replays the same schedule (timings aside). The
clients then run the steps against the real system (two gateway replicas) and record
every answer that named a charge: the JSON answer's `usage.cost_micros`, its `receipt`
and `x-tokenforge-charge-micros`, a stream's final usage chunk, and `x-request-id`.

`check` then waits until the account is at rest (nothing queued, nothing held) and
lists every way the system disagrees with what was named, each a `Finding`; the test
fails with the seed and the first few findings of each kind.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.gateway import metrics
from services.wallet.client import WalletClient
from tests.e2e.harness import System
from tests.e2e.test_usage_reconcile import assert_reconciled
from tokenforge.generated.wallet.v1 import wallet_pb2
from tokenforge.money import Bucket
from tokenforge.wire import bucket_from_proto

# The models the clients use (tests/e2e/catalog.yaml). The two test-soak-* models have
# channels of their own, so the breakers this load opens change no other test's route.
OFFICIAL = "demo-chat"
ROUTED = "demo-chat@routed"
EMBED = "demo-embed"
ROUTE_FALLBACK = "test-soak-route-fallback"  # official route down, routed route up
DOWN = "test-soak-down"  # its only channel answers 503: the client gets a 502
# Official on an Anthropic Messages channel, routed on an OpenAI Responses channel
# (cache reads and writes, reasoning tokens): chat requests translated both ways.
PROTOCOLS = "test-soak-protocols"

# What a client does, with its weight in the mix.
KINDS: dict[str, int] = {
    "chat": 24,  # non-stream chat, official or routed
    "stream": 14,  # a stream read to its end
    "stream_abandoned": 22,  # a stream the client closes early (see ABANDON_AT)
    "cancelled": 10,  # a non-stream request the client gives up on
    "idempotent": 10,  # the same Idempotency-Key sent two or three times at once
    "route_fallback": 8,  # the official route fails, the key may fall back to routed
    "down": 4,  # every channel fails: nothing charged
    "embeddings": 8,
}

# Where a stream is abandoned: right after the headers (before the first byte of the
# body), after some chunks, right after the chunk with `finish_reason`, a moment later
# (while the gateway queues the finish), right after the final usage chunk.
ABANDON_AT = ("headers", "mid_stream", "finish_reason", "finish_queued", "after_usage")

# Expected statuses beyond 200: a small account may be refused for want of money; a
# model whose channels are all down answers 502 (503 once its breaker is open). Under
# this load (every service, the mock upstream and the clients on one event loop) any
# request may also meet a peer or the upstream not answering in time: such an answer
# says nothing was charged (503 service_unavailable, 502 upstream_failed, 504
# upstream_timeout); it is allowed, counted, and checked to be true against its receipt.
NEAR_EMPTY = {402}
FAILED_UPSTREAM = {502, 503}
# A failure after the request ran (its receipt not recorded yet, a database restarting):
# it names the charge taken or being taken (details.charge_micros, ledger_entry_id),
# which is checked like any answer's.
RECEIPT_PENDING = "receipt_pending"
NOTHING_CHARGED = {
    503: "service_unavailable",
    502: "upstream_failed",
    504: "upstream_timeout",
}


def named_charge(receipt: dict[str, Any]) -> int:
    """The charge an answer's `receipt` object names.

    This reads the ONE receipt shape (issue 16): the answer's receipt is the same JSON as
    GET /v1/usage/{id}, whose charge is `{"micros": ..., "display": ...}`. The receipt
    summary the gateway answers with before that change (a display string in `charge`
    and a separate `charge_micros`) is not read here on purpose; reading it fails and
    the run reports the answer as not in the one shape."""
    micros = receipt["charge"]["micros"]  # the NEW shape: charge is {micros, display}
    if not isinstance(micros, int):
        raise TypeError(f"receipt charge micros is {micros!r}, not an integer")
    return micros


@dataclass(frozen=True)
class AccountPlan:
    credit: int
    routed: int
    fallback_allowed: bool
    small: bool


def account_plans(requests: int) -> list[AccountPlan]:
    """Two accounts that never run short and two whose balances the run spends down
    (a demo-chat answer costs about 180 micro-CR, a routed one about 72 micro-RB), so
    402s come near the end of a balance, hold by hold and from budgets."""
    return [
        AccountPlan(10_000_000, 10_000_000, True, False),
        AccountPlan(10_000_000, 10_000_000, False, False),
        AccountPlan(max(5_000, 25 * requests), max(2_000, 10 * requests), True, True),
        AccountPlan(max(10_000, 60 * requests), max(4_000, 24 * requests), False, True),
    ]


@dataclass(frozen=True)
class Step:
    """One thing a client does, decided by the seed."""

    id: str  # "c<client>.<n>"
    kind: str
    account: int
    replica: int
    model: str
    stream: bool = False
    include_usage: bool = True
    max_tokens: int | None = None
    abandon_at: str = ""
    abandon_after_chunks: int = 0
    abandon_delay_s: float = 0.0
    cancel_how: str = ""  # "task" (asyncio cancel) or "timeout" (httpx timeout)
    cancel_after_s: float = 0.0
    copies: int = 1


def schedule(seed: int, requests: int, clients: int, replicas: int = 2) -> list[list[Step]]:
    """Each client's steps, drawn up front from its own Random(f"{seed}:{client}")."""
    plans = account_plans(requests)
    out: list[list[Step]] = []
    for c in range(clients):
        rng = random.Random(f"{seed}:{c}")
        count = requests // clients + (1 if c < requests % clients else 0)
        out.append([next_step(rng, f"c{c}.{n}", plans, replicas) for n in range(count)])
    return out


def next_step(rng: random.Random, step_id: str, plans: list[AccountPlan], replicas: int) -> Step:
    kind = rng.choices(list(KINDS), list(KINDS.values()))[0]
    step = Step(
        id=step_id,
        kind=kind,
        account=rng.randrange(len(plans)),
        replica=rng.randrange(replicas),
        model=rng.choice((OFFICIAL, ROUTED, PROTOCOLS, PROTOCOLS + "@routed")),
        # No max_tokens half the time: the gateway then holds the largest output the
        # balance pays for (hold by hold near the end of a balance).
        max_tokens=rng.choice((None, None, 20, 64, 256)),
    )
    if kind == "stream":
        return replace(step, stream=True, include_usage=rng.random() < 0.85)
    if kind == "stream_abandoned":
        return replace(
            step,
            stream=True,
            abandon_at=rng.choice(ABANDON_AT),
            abandon_after_chunks=rng.randint(1, 16),
            abandon_delay_s=rng.uniform(0, 0.004),
        )
    if kind == "cancelled":
        return replace(
            step,
            cancel_how=rng.choice(("task", "timeout")),
            cancel_after_s=rng.uniform(0.0005, 0.03),
        )
    if kind == "idempotent":
        return replace(step, copies=rng.randint(2, 3))
    if kind == "route_fallback":
        allowed = [i for i, a in enumerate(plans) if a.fallback_allowed]
        return replace(
            step,
            model=ROUTE_FALLBACK,
            account=rng.choice(allowed),
            stream=rng.random() < 0.4,
            max_tokens=None,
        )
    if kind == "down":
        return replace(step, model=DOWN, stream=rng.random() < 0.3, max_tokens=None)
    if kind == "embeddings":
        return replace(step, model=EMBED, max_tokens=None)
    return step  # "chat"


@dataclass
class Answer:
    """What one client saw of one HTTP request."""

    step: Step
    copy: int = 0
    status: int | None = None  # None: the client went away before a status line
    request_id: str = ""  # x-request-id
    replayed: bool = False
    error_code: str = ""
    error_message: str = ""
    # What the answer named, by where it said it.
    cost_micros: int | None = None  # usage.cost_micros
    header_micros: int | None = None  # x-tokenforge-charge-micros
    receipt_micros: int | None = None  # named_charge(receipt)
    # A 503 receipt_pending: the request ran; its charge taken or being taken is named
    # in the error's details (with its ledger entry), its receipt recorded later.
    pending_micros: int | None = None
    receipt_request_id: str = ""
    entry_id: str = ""  # receipt.ledger_entry_id
    bucket: str = ""  # usage.cost_bucket, else receipt.bucket
    # Read problems (the receipt's shape, an error event inside a stream...).
    problems: list[str] = field(default_factory=list)

    @property
    def names_a_charge(self) -> bool:
        return any(v is not None for v in self.named)

    @property
    def named(self) -> tuple[int | None, ...]:
        return (self.cost_micros, self.header_micros, self.receipt_micros, self.pending_micros)

    @property
    def charge(self) -> int:
        """The charge the answer named (usage.cost first, then the header, the receipt)."""
        for v in self.named:
            if v is not None:
                return v
        return 0

    def label(self) -> str:
        copy = f"#{self.copy}" if self.step.copies > 1 else ""
        how = self.step.abandon_at or self.step.cancel_how
        kind = f"{self.step.kind}({how})" if how else self.step.kind
        replay = " replay" if self.replayed else ""
        return (
            f"{self.step.id}{copy} {kind} {self.step.model} account {self.step.account} "
            f"replica {self.step.replica}{replay} {self.request_id or '-'}"
        )

    def read_receipt(self, receipt: Any) -> None:
        if not isinstance(receipt, dict):
            self.problems.append(
                f"receipt_shape: receipt is {type(receipt).__name__}, not an object"
            )
            return
        self.receipt_request_id = str(receipt.get("request_id") or "")
        self.entry_id = str(receipt.get("ledger_entry_id") or "")
        self.bucket = self.bucket or str(receipt.get("bucket") or "")
        try:
            self.receipt_micros = named_charge(receipt)
        except (KeyError, TypeError) as error:
            self.problems.append(
                "receipt_shape: the answer's receipt has charge "
                f"{receipt.get('charge')!r}, not {{micros, display}} as GET /v1/usage "
                f"({type(error).__name__}: {error})"
            )

    def read_usage(self, usage: Any) -> None:
        if isinstance(usage, dict) and "cost_micros" in usage:
            self.cost_micros = int(usage["cost_micros"])
            self.bucket = str(usage.get("cost_bucket") or self.bucket)


@dataclass
class Run:
    """One seeded run against the system: its accounts, clients and answers."""

    system: System
    seed: int
    requests: int
    clients: int
    gateway_urls: list[str]
    accounts: list[tuple[str, str, AccountPlan]] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)
    http: dict[tuple[int, int], httpx.AsyncClient] = field(default_factory=dict)
    started: float = 0.0
    ran_s: float = 0.0
    checked_s: float = 0.0
    not_collected_before: float = 0.0
    # Connections the server dropped under an idempotent copy, sent again with its key.
    resent: int = 0
    # The checks' reads at once.
    gate: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(32))
    # Paid top-ups credited to the run's accounts, account index -> bucket -> micros
    # (tests/e2e/chaos.py): balance = grants + these - charges.
    topups: dict[int, Counter[str]] = field(default_factory=dict)
    # Open holds allowed at rest (a killed gateway's, which end by their TTL; chaos.py):
    # a predicate on the wallet's Hold, and what it let through.
    left_to_ttl: Callable[[Any], bool] | None = None
    left_holds: list[Any] = field(default_factory=list)
    # How long the checks wait for the account to be at rest.
    rest_timeout_s: float = 30.0

    async def open_accounts(self) -> None:
        for plan in account_plans(self.requests):
            account, key = await self.system.new_account(
                credit=plan.credit, routed=plan.routed, fallback_allowed=plan.fallback_allowed
            )
            self.accounts.append((account, key, plan))
        # A connection idle for a second is not reused: uvicorn closes idle ones after
        # 5 s, and a request sent on a connection as it closes fails with no answer.
        limits = httpx.Limits(
            max_connections=self.clients * 4, max_keepalive_connections=64, keepalive_expiry=1.0
        )
        for a, (_, key, _) in enumerate(self.accounts):
            for g, url in enumerate(self.gateway_urls):
                self.http[(a, g)] = httpx.AsyncClient(
                    base_url=url,
                    headers={"authorization": f"Bearer {key}"},
                    timeout=60,
                    limits=limits,
                )

    async def close(self) -> None:
        for client in self.http.values():
            await client.aclose()

    async def drive(self) -> None:
        """Every client runs its steps in order; the clients run at once."""
        self.not_collected_before = not_collected()
        plan = schedule(self.seed, self.requests, self.clients, len(self.gateway_urls))
        self.started = time.monotonic()
        await asyncio.gather(*(self._client(i, steps) for i, steps in enumerate(plan)))
        self.ran_s = time.monotonic() - self.started

    async def drive_until(self, stop: asyncio.Event) -> None:
        """Rounds of `requests` steps until `stop` is set (tests/e2e/chaos.py: load for as
        long as the faults last); round r's steps come from the seed and r alone, their
        ids prefixed `r<r>.`, so idempotency keys never repeat across rounds."""
        self.not_collected_before = not_collected()
        self.started = time.monotonic()
        round_no = 0
        while not stop.is_set():
            plan = schedule(
                self.seed * 1000 + round_no, self.requests, self.clients, len(self.gateway_urls)
            )
            plan = [[replace(s, id=f"r{round_no}.{s.id}") for s in steps] for steps in plan]
            await asyncio.gather(*(self._client(i, steps) for i, steps in enumerate(plan)))
            round_no += 1
        self.ran_s = time.monotonic() - self.started

    async def _client(self, index: int, steps: list[Step]) -> None:
        await asyncio.sleep(index * 0.01)  # clients arrive over a moment, not all at once
        for step in steps:
            await self._step(step)

    async def _step(self, step: Step) -> None:
        http = self.http[(step.account, step.replica)]
        if step.kind == "cancelled":
            await self._cancelled(http, step)
        elif step.kind == "idempotent":
            key = f"soak-{self.seed}-{step.id}"
            await asyncio.gather(
                *(self._idempotent(http, step, key, i) for i in range(step.copies))
            )
        elif step.stream:
            await self._stream(http, step)
        else:
            await self._post(http, step)

    def _record(self, answer: Answer) -> Answer:
        self.answers.append(answer)
        return answer

    async def _post(
        self, http: httpx.AsyncClient, step: Step, headers: dict[str, str] | None = None
    ) -> Answer:
        path = "/v1/embeddings" if step.model == EMBED else "/v1/chat/completions"
        try:
            response = await http.post(path, json=body_of(step), headers=headers)
        except httpx.TransportError as error:
            return self._record(dropped(Answer(step), error))
        return self._record(read_json_answer(Answer(step), response))

    async def _cancelled(self, http: httpx.AsyncClient, step: Step) -> None:
        if step.cancel_how == "timeout":
            try:
                response = await http.post(
                    "/v1/chat/completions", json=body_of(step), timeout=step.cancel_after_s
                )
            except httpx.TimeoutException:
                self._record(Answer(step))  # gone before an answer: nothing named
                return
            except httpx.TransportError as error:
                self._record(dropped(Answer(step), error))
                return
            self._record(read_json_answer(Answer(step), response))
            return
        task = asyncio.ensure_future(http.post("/v1/chat/completions", json=body_of(step)))
        await asyncio.sleep(step.cancel_after_s)
        if not task.done():
            task.cancel()
        try:
            response = await task
        except asyncio.CancelledError:
            self._record(Answer(step))  # gone before an answer: nothing named
            return
        except httpx.TransportError as error:
            self._record(dropped(Answer(step), error))
            return
        self._record(read_json_answer(Answer(step), response))  # the answer came first

    async def _idempotent(self, http: httpx.AsyncClient, step: Step, key: str, copy: int) -> None:
        """A copy waits for the first while it runs (409 request_in_progress), as a
        client told to retry in a moment does, then gets the first answer."""
        deadline = time.monotonic() + 30
        while True:
            try:
                response = await http.post(
                    "/v1/chat/completions", json=body_of(step), headers={"idempotency-key": key}
                )
            except httpx.TransportError as error:
                if time.monotonic() > deadline:
                    self._record(dropped(Answer(step, copy=copy), error))
                    return
                self.resent += 1  # what the key is for: send it again, get one effect
                continue
            answer = read_json_answer(Answer(step, copy=copy), response)
            if answer.error_code != "request_in_progress" or time.monotonic() > deadline:
                self._record(answer)
                return
            await asyncio.sleep(0.05)

    async def _stream(self, http: httpx.AsyncClient, step: Step) -> None:
        answer = self._record(Answer(step))
        try:
            async with http.stream("POST", "/v1/chat/completions", json=body_of(step)) as s:
                answer.status = s.status_code
                answer.request_id = s.headers.get("x-request-id", "")
                if s.status_code != 200:
                    read_error(answer, await s.aread())
                    return
                if step.abandon_at == "headers":
                    return  # closed right after the headers, before the first byte
                if await read_stream(answer, s):
                    return
            answer.problems.append("stream_cut: the stream ended without [DONE] or an error")
        except httpx.TransportError as error:
            dropped(answer, error)

    def figures(self, checked: int | None = None) -> str:
        """The run's figures; with the number of named charges checked, once checked."""
        kinds = Counter(a.step.kind for a in self.answers)
        abandoned = Counter(a.step.abandon_at for a in self.answers if a.step.abandon_at)
        statuses = Counter(str(a.status) if a.status else "gone" for a in self.answers)
        rate = len(self.answers) / self.ran_s if self.ran_s else 0.0
        return (
            f"seed {self.seed}: {len(self.answers)} requests by {self.clients} clients in "
            f"{self.ran_s:.1f} s ({rate:.0f} requests/s); "
            f"kinds {dict(sorted(kinds.items()))}; abandoned at {dict(sorted(abandoned.items()))}; "
            f"statuses {dict(sorted(statuses.items()))}; idempotent copies resent {self.resent}"
            + ("" if checked is None else f"; {checked} charges checked in {self.checked_s:.1f} s")
        )


async def read_stream(answer: Answer, s: httpx.Response) -> bool:
    """Read the stream as the step says (abandoning it where it says); True when the
    client stopped or the stream said [DONE], False when it just ended."""
    step = answer.step
    chunks = 0
    async for line in s.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return True
        chunk = orjson.loads(data)
        chunks += 1
        if "error" in chunk:
            answer.problems.append(f"stream_error: {chunk['error']}")
        if "receipt" in chunk:
            answer.read_usage(chunk.get("usage"))
            answer.read_receipt(chunk["receipt"])
            if step.abandon_at == "after_usage":
                return True
        if step.abandon_at == "mid_stream" and chunks >= step.abandon_after_chunks:
            return True
        finished = any(c.get("finish_reason") for c in chunk.get("choices") or [])
        if finished and step.abandon_at == "finish_reason":
            return True
        if finished and step.abandon_at == "finish_queued":
            await asyncio.sleep(step.abandon_delay_s)
            return True
    return False


def dropped(answer: Answer, error: httpx.TransportError) -> Answer:
    """The server closed the connection before a whole answer (the client did not)."""
    answer.problems.append(f"connection_dropped: {type(error).__name__} {error}".strip())
    return answer


def body_of(step: Step) -> dict[str, Any]:
    if step.model == EMBED:
        return {"model": EMBED, "input": f"conservation {step.id}"}
    body: dict[str, Any] = {
        "model": step.model,
        "messages": [{"role": "user", "content": f"count the money ({step.id})"}],
    }
    if step.max_tokens is not None:
        body["max_tokens"] = step.max_tokens
    if step.stream:
        body["stream"] = True
        if step.include_usage:
            body["stream_options"] = {"include_usage": True}
    return body


def read_error(answer: Answer, content: bytes) -> None:
    try:
        error = orjson.loads(content).get("error") or {}
    except (orjson.JSONDecodeError, AttributeError):
        answer.error_code = "not_json"
        answer.error_message = content[:200].decode(errors="replace")
        return
    answer.error_code = str(error.get("code") or "")
    answer.error_message = str(error.get("message") or "")
    details = error.get("details") or {}
    if answer.error_code == RECEIPT_PENDING and isinstance(details, dict):
        answer.pending_micros = int(details.get("charge_micros", 0))
        answer.entry_id = str(details.get("ledger_entry_id") or "")
        answer.bucket = str(details.get("bucket") or "")


def read_json_answer(answer: Answer, response: httpx.Response) -> Answer:
    answer.status = response.status_code
    answer.request_id = response.headers.get("x-request-id", "")
    answer.replayed = response.headers.get("idempotent-replayed") == "true"
    if (micros := response.headers.get("x-tokenforge-charge-micros")) is not None:
        answer.header_micros = int(micros)
    if response.status_code != 200:
        read_error(answer, response.content)
        return answer
    body = response.json()
    answer.read_usage(body.get("usage"))
    if "receipt" in body:
        answer.read_receipt(body["receipt"])
    else:
        answer.problems.append("no_receipt: a 200 answer without a receipt object")
    return answer


def not_collected() -> float:
    value: float = metrics.CHARGES_NOT_COLLECTED._value.get()  # type: ignore[attr-defined]
    return value


# Findings are listed money first: what was named but not taken (or taken but not
# named), then what was left held or queued, then answers whose request id or receipt
# does not lead to the money, then statuses; any other kind after these.
FINDING_ORDER = (
    "receipt_charge_differs",
    "ledger_row_missing",
    "ledger_amount_differs",
    "ledger_bucket_differs",
    "receipt_entry_differs",
    "balance_differs",
    "balance_below_zero",
    "charges_not_collected",
    "reconcile_failed",
    "held_at_rest",
    "hold_open_at_rest",
    "finish_still_queued",
    "receipt_not_found",
    "receipt_names_another_request",
    "answer_names_two_charges",
    "refused_but_charged",
    "no_request_id",
    "unexpected_status",
    "stream_error",
    "stream_cut",
    "connection_dropped",
    "no_receipt",
    "receipt_shape",
)


@dataclass
class Finding:
    kind: str
    subject: str
    detail: str


@dataclass
class Report:
    seed: int
    findings: list[Finding] = field(default_factory=list)
    charges_checked: int = 0

    def add(self, kind: str, subject: str, detail: str) -> None:
        self.findings.append(Finding(kind, subject, detail))

    def text(self, figures: str, first: int = 6) -> str:
        by_kind: dict[str, list[Finding]] = {}
        for f in self.findings:
            by_kind.setdefault(f.kind, []).append(f)
        lines = [
            f"G1 broken, seed {self.seed} (replay: TOKENFORGE_SOAK_SEED={self.seed}): "
            f"{len(self.findings)} findings of {len(by_kind)} kinds",
            figures,
        ]
        order = {kind: i for i, kind in enumerate(FINDING_ORDER)}
        for kind, found in sorted(by_kind.items(), key=lambda kv: order.get(kv[0], 99)):
            lines.append(f"- {kind}: {len(found)}")
            lines += [f"    {f.subject}: {f.detail}" for f in found[:first]]
            if len(found) > first:
                lines.append(f"    ... and {len(found) - first} more")
        return "\n".join(lines)


def said_nothing_charged(answer: Answer) -> bool:
    """A failure that tells the client nothing was charged (see NOTHING_CHARGED)."""
    return answer.status is not None and NOTHING_CHARGED.get(answer.status) == answer.error_code


def expected_status(answer: Answer, plan: AccountPlan) -> bool:
    if answer.status is None or answer.status == 200 or said_nothing_charged(answer):
        return True
    if answer.error_code == RECEIPT_PENDING:  # names its charge: checked like an answer
        return True
    if answer.status in NEAR_EMPTY and plan.small:
        return answer.error_code == "insufficient_balance"
    if answer.step.kind == "down":
        return answer.status in FAILED_UPSTREAM
    if answer.step.kind == "route_fallback" and plan.small:
        # The routed bucket cannot pay: the fallback route is skipped and the request
        # ends on the official route, which is down.
        return answer.status in FAILED_UPSTREAM
    return False


async def until_at_rest(run: Run, engine: AsyncEngine) -> Report:
    """Nothing queued and nothing held for the run's accounts: reads through both
    replicas deliver an account's queued finishes and close that replica's idle
    budgets. Whatever is still queued or held after `run.rest_timeout_s` is a finding,
    but for holds `run.left_to_ttl` lets through (kept in `run.left_holds`)."""
    report = Report(run.seed)
    timeout_s = run.rest_timeout_s
    ids = [account for account, _, _ in run.accounts]
    wallet = WalletClient.connect(run.system.services["wallet"], run.system.admin_token)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            for (_, _g), http in run.http.items():
                await read(http, "/v1/wallet")
            queued = await queued_rows(engine, ids)
            held = [
                h
                for account in ids
                for h in (await wallet.holds(account, status=wallet_pb2.HOLD_STATUS_OPEN)).holds
            ]
            allowed = run.left_to_ttl
            run.left_holds = [h for h in held if allowed is not None and allowed(h)]
            held = [h for h in held if h not in run.left_holds]
            if not queued and not held:
                return report
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.25)
    finally:
        await wallet.close()
    for request_id, error in queued:
        report.add("finish_still_queued", request_id, f"after {timeout_s:.0f} s: {error}")
    # Which answer it was (the step, its kind, its status), to find out why.
    answered = {a.request_id: a for a in run.answers if a.request_id}
    for h in held:
        answer = answered.get(h.request_id)
        said = f"; {answer.label()} answered {answer.status}" if answer else ""
        report.add(
            "hold_open_at_rest",
            h.request_id,
            f"hold {h.hold_id} ({bucket_from_proto(h.bucket).value}) "
            f"still holds {h.amount_micros} micros after {timeout_s:.0f} s{said}",
        )
    return report


async def queued_rows(engine: AsyncEngine, accounts: list[str]) -> list[tuple[str, str]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT request_id, coalesce(last_error, 'waiting') FROM gateway.finish_queue "
                "WHERE account_id = ANY(:a)"
            ),
            {"a": accounts},
        )
        return [(str(r[0]), str(r[1])) for r in rows]


async def check(run: Run, engine: AsyncEngine, tmp: Path) -> Report:
    """Every answer that named a charge against its receipt and its ledger row; every
    bucket's balance against its grants and all its receipts; the counter of charges
    not collected; both reconcile commands."""
    started = time.monotonic()
    report = await until_at_rest(run, engine)
    by_account = {i: account for i, (account, _, _) in enumerate(run.accounts)}
    for answer in run.answers:
        plan = run.accounts[answer.step.account][2]
        if not expected_status(answer, plan):
            report.add(
                "unexpected_status",
                answer.label(),
                f"HTTP {answer.status} {answer.error_code}: {answer.error_message[:240]}",
            )
        if answer.status is not None and not answer.request_id:
            report.add(
                "no_request_id", answer.label(), f"HTTP {answer.status} without x-request-id"
            )
        for problem in answer.problems:
            kind, _, detail = problem.partition(": ")
            report.add(kind, answer.label(), detail)

    async def one(answer: Answer) -> None:
        async with run.gate:
            await check_answer(run, answer, report)

    named = [a for a in run.answers if a.names_a_charge]
    await asyncio.gather(*(one(a) for a in named))
    refused = [a for a in run.answers if said_nothing_charged(a) and not a.names_a_charge]
    await asyncio.gather(*(nothing_charged(run, a, report) for a in refused))
    report.charges_checked = len(named)

    for a, (account, _, plan) in enumerate(run.accounts):
        await check_balances(run, a, account, plan, report)

    grown = not_collected() - run.not_collected_before
    if grown:
        report.add(
            "charges_not_collected",
            "tokenforge_charges_not_collected_total",
            f"grew by {grown:.0f} during the run (no outage was staged)",
        )
    for attempt in range(4):
        try:
            await assert_reconciled(run.system, tmp, *by_account.values())
            break
        except AssertionError as failed:
            text = str(failed)
            # A service too busy to answer the CLI in time is no finding: ask again.
            if "SERVICE_UNAVAILABLE" in text and attempt < 3:
                await asyncio.sleep(2.0 * (attempt + 1))
                continue
            lines = [line for line in text.splitlines() if line.strip()]
            report.add(
                "reconcile_failed", "tokenforge usage/wallet reconcile", " | ".join(lines[:8])
            )
            break
    run.checked_s = time.monotonic() - started
    return report


async def check_answer(run: Run, answer: Answer, report: Report) -> None:
    """The receipt at GET /v1/usage/{x-request-id} has the named charge and entry id;
    a charge's ledger row has that id, that amount and that bucket."""
    subject = answer.label()
    named = answer.charge
    seen = {
        "usage.cost_micros": answer.cost_micros,
        "x-tokenforge-charge-micros": answer.header_micros,
        "receipt charge": answer.receipt_micros,
    }
    said = {k: v for k, v in seen.items() if v is not None}
    if len(set(said.values())) > 1:
        report.add("answer_names_two_charges", subject, str(said))
    if answer.receipt_request_id and answer.receipt_request_id != answer.request_id:
        report.add(
            "receipt_names_another_request",
            subject,
            f"x-request-id {answer.request_id}, receipt.request_id {answer.receipt_request_id}",
        )
    http = run.http[(answer.step.account, answer.step.replica)]
    found = await read(http, f"/v1/usage/{answer.request_id}")
    if found.status_code != 200:
        report.add(
            "receipt_not_found",
            subject,
            f"named {named} micros; GET /v1/usage/{answer.request_id} -> {found.status_code}",
        )
        return
    recorded = found.json()
    charge = recorded["charge"]["micros"]
    if charge != named:
        report.add(
            "receipt_charge_differs",
            subject,
            f"named {named} micros (entry {answer.entry_id or '-'}), receipt has {charge} "
            f"(status {recorded['status']}, error {recorded.get('error')}, "
            f"rule {recorded.get('settlement_rule')}, entry {recorded.get('ledger_entry_id')})",
        )
    if (recorded.get("ledger_entry_id") or "") != answer.entry_id:
        report.add(
            "receipt_entry_differs",
            subject,
            f"named entry {answer.entry_id or '-'}, receipt has "
            f"{recorded.get('ledger_entry_id') or '-'}",
        )
    if named <= 0:
        return
    ledger = await read(
        http,
        "/v1/wallet/ledger",
        {"request_id": answer.request_id, "limit": 100},
    )
    rows = ledger.json().get("data", []) if ledger.status_code == 200 else []
    row = next((r for r in rows if r["entry_id"] == answer.entry_id), None)
    if row is None:
        report.add(
            "ledger_row_missing",
            subject,
            f"named {named} micros as entry {answer.entry_id or '-'}; the ledger has "
            f"{[(r['entry_id'], r['amount']['micros']) for r in rows] or 'no row'} "
            "for this request",
        )
        return
    if row["amount"]["micros"] != -named:
        report.add(
            "ledger_amount_differs",
            subject,
            f"named {named} micros, entry {answer.entry_id} is {row['amount']['micros']}",
        )
    if answer.bucket and row["bucket"] != answer.bucket:
        report.add(
            "ledger_bucket_differs",
            subject,
            f"named bucket {answer.bucket}, entry {answer.entry_id} is in {row['bucket']}",
        )


async def nothing_charged(run: Run, answer: Answer, report: Report) -> None:
    """A failure that said nothing was charged: no receipt, or one that charged nothing."""
    http = run.http[(answer.step.account, answer.step.replica)]
    async with run.gate:
        found = await read(http, f"/v1/usage/{answer.request_id}")
    if found.status_code == 200 and found.json()["charge"]["micros"]:
        report.add(
            "refused_but_charged",
            answer.label(),
            f"HTTP {answer.status} said nothing was charged; the receipt charges "
            f"{found.json()['charge']['micros']} micros",
        )


async def read(
    http: httpx.AsyncClient, path: str, params: dict[str, Any] | None = None
) -> httpx.Response:
    """A GET of the checks, sent again if the connection failed under it, or if the
    gateway answered 503 (a service it asks was too busy: "try again in a moment"), so a
    finding is about the data, never about a read that could not be made."""
    for attempt in range(8):
        try:
            answer = await http.get(path, params=params)
        except httpx.TransportError:
            await asyncio.sleep(0.2 * (attempt + 1))
            continue
        if answer.status_code != 503:
            return answer
        await asyncio.sleep(0.5 * (attempt + 1))
    return await http.get(path, params=params)


async def all_receipts(http: httpx.AsyncClient) -> list[dict[str, Any]]:
    receipts: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 500}
        if cursor:
            params["cursor"] = cursor
        page = (await read(http, "/v1/usage", params)).json()
        receipts += page["data"]
        cursor = page.get("next_cursor")
        if not cursor:
            return receipts


async def check_balances(
    run: Run, index: int, account: str, plan: AccountPlan, report: Report
) -> None:
    """Posted == grants - every receipt's charge, exactly, per bucket; nothing held."""
    http = run.http[(index, 0)]
    receipts = await all_receipts(http)
    spent = {Bucket.CREDIT.value: 0, Bucket.ROUTED.value: 0}
    for r in receipts:
        spent[r["bucket"]] += r["charge"]["micros"]
    paid = run.topups.get(index, Counter())
    granted = {
        Bucket.CREDIT.value: plan.credit + paid[Bucket.CREDIT.value],
        Bucket.ROUTED.value: plan.routed + paid[Bucket.ROUTED.value],
    }
    # What holds left to their TTL still hold (a killed gateway's), per bucket.
    left = Counter(
        {
            bucket: sum(
                h.amount_micros - h.captured_micros
                for h in run.left_holds
                if h.account_id == account and bucket_from_proto(h.bucket).value == bucket
            )
            for bucket in granted
        }
    )
    wallet = (await read(http, "/v1/wallet")).json()
    for b in wallet["balances"]:
        bucket = b["bucket"]
        posted, held = b["posted"]["micros"], b["held"]["micros"]
        if posted != granted[bucket] - spent[bucket]:
            report.add(
                "balance_differs",
                f"{account} {bucket}",
                f"posted {posted}, but grants {granted[bucket]} - receipts {spent[bucket]} "
                f"= {granted[bucket] - spent[bucket]} ({len(receipts)} receipts)",
            )
        if held != left[bucket]:
            report.add(
                "held_at_rest",
                f"{account} {bucket}",
                f"{held} micros still held ({left[bucket]} by holds left to their TTL)",
            )
        if posted < 0:
            report.add("balance_below_zero", f"{account} {bucket}", f"posted {posted}")

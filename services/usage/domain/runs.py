"""Runs: a budget reserved up front (one wallet hold), drawn on by many requests,
closed with one aggregate receipt.

How the money stays exact:

- the gateway places ONE wallet hold for the whole budget (its request id is the run
  id); that hold is the reservation, so the wallet's no-overdraft rule holds as for
  any request;
- each request of the run reserves a slice of the run's remaining budget here, under
  a row lock on the run (`reserve`): never more than budget - reserved - spent, so
  however many requests race, the slices never exceed the hold;
- when the request ends, the gateway first takes its charge (never above its slice)
  from the run's hold as a part of its own (wallet CapturePart: one ledger row per
  request, carrying the request id), then records its receipt, which names the run,
  the run's hold and that row; recording it adds the charge to `spent` and gives the
  slice back (`commit`);
- closing (or expiring) stops new draws, then the gateway releases what the run's
  hold still holds (the parts stay charged) and records what the hold captured here
  (`finish`): the run has one ledger row per charged request and no aggregate row;
  the lines sum to what the hold captured.

Statuses: open -> closing -> closed | expired. Closing is the short state between
"no new draws" and "the wallet settled"; a run left closing (a gateway died) is
picked up again by the sweeper.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from services.usage.domain.receipts import Receipt, ReceiptStatus
from tokenforge.errors import DomainError, Reason
from tokenforge.money import Bucket, format_amount

MIN_RUN_TTL_S = 60
# The run's wallet hold lives a little longer than the run (the wallet's maximum TTL
# is 3600 s), so the sweeper settles it before the wallet would expire it.
MAX_RUN_TTL_S = 3000
DEFAULT_RUN_TTL_S = 900
HOLD_MARGIN_S = 300
# A run left closing this long is closed again by the sweeper.
CLOSING_GRACE = timedelta(seconds=60)


class RunStatus(enum.StrEnum):
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"
    EXPIRED = "expired"


@dataclass(frozen=True)
class Run:
    run_id: str
    account_id: str
    bucket: Bucket
    budget_micros: int
    hold_id: str
    created_at: datetime
    expires_at: datetime
    project_id: str = ""
    key_id: str = ""
    model: str = ""
    reserved_micros: int = 0
    spent_micros: int = 0
    requests: int = 0
    status: RunStatus = RunStatus.OPEN
    expiring: bool = False
    closing_at: datetime | None = None
    ended_at: datetime | None = None
    entry_id: str = ""
    captured_micros: int = 0
    trace_id: str = ""

    @property
    def remaining_micros(self) -> int:
        return self.budget_micros - self.reserved_micros - self.spent_micros

    def reserve(self, amount: int, bucket: Bucket | None, now: datetime) -> Run:
        """Set `amount` aside for one request, or refuse naming the run."""
        if amount < 0:
            raise DomainError(Reason.INVALID_ARGUMENT, "A run slice is never negative.")
        if bucket is not None and bucket is not self.bucket:
            raise DomainError(
                Reason.PERMISSION_DENIED,
                f"Run {self.run_id} pays from the {self.bucket.label}, but this request's "
                f"route is paid from the {bucket.label}. Use a model whose route uses the "
                f"{self.bucket.label}, or open another run.",
                {"run_id": self.run_id, "bucket": self.bucket.value},
            )
        if self.status is not RunStatus.OPEN or now >= self.expires_at:
            raise DomainError(
                Reason.HOLD_NOT_OPEN,
                f"Run {self.run_id} is {self.status_word(now)}: it takes no more requests. "
                "Open a new run (POST /v1/runs).",
                {"run_id": self.run_id},
            )
        if amount > self.remaining_micros:
            raise DomainError(
                Reason.INSUFFICIENT_BALANCE,
                f"Run {self.run_id} budget spent: "
                f"{format_amount(max(self.remaining_micros, 0), self.bucket)} of "
                f"{format_amount(self.budget_micros, self.bucket)} left, this request may cost "
                f"up to {format_amount(amount, self.bucket)}. Close the run and open one "
                "with a larger budget.",
                {
                    "run_id": self.run_id,
                    "bucket": self.bucket.value,
                    "available_micros": str(max(self.remaining_micros, 0)),
                    "requested_micros": str(amount),
                },
            )
        return replace(self, reserved_micros=self.reserved_micros + amount)

    def commit(self, slice_micros: int, charge_micros: int) -> Run:
        """One draw ended: its slice goes back, its charge is spent."""
        if charge_micros < 0 or charge_micros > slice_micros:
            raise DomainError(
                Reason.SETTLE_ABOVE_HOLD,
                f"A request of run {self.run_id} is charged at most its slice "
                f"({slice_micros} micros); got {charge_micros}.",
                {"run_id": self.run_id},
            )
        return replace(
            self,
            reserved_micros=self.reserved_micros - slice_micros,
            spent_micros=self.spent_micros + charge_micros,
            requests=self.requests + 1,
        )

    def add_late(self, charge_micros: int) -> Run:
        """A request whose part the wallet took before the run's hold ended, recorded
        after the run finished (its slice was already given back): the money was
        taken, so it counts."""
        return replace(
            self, spent_micros=self.spent_micros + charge_micros, requests=self.requests + 1
        )

    def close(self, now: datetime, expiring: bool = False) -> Run:
        """No more draws. A run already closing, closed or expired stays as it is."""
        if self.status is not RunStatus.OPEN:
            return self
        return replace(self, status=RunStatus.CLOSING, expiring=expiring, closing_at=now)

    def finish(
        self, entry_id: str, captured_micros: int, abandoned_micros: int, now: datetime
    ) -> Run:
        """The wallet ended the run's hold: closed (or expired, for the sweeper).
        `captured_micros` is what the hold captured in all (its parts); `entry_id`
        is empty unless the hold was settled with a row of its own (runs closed
        before parts existed)."""
        if self.status in (RunStatus.CLOSED, RunStatus.EXPIRED):
            return self
        if self.status is not RunStatus.CLOSING:
            raise DomainError(
                Reason.INVALID_TRANSITION,
                f"Run {self.run_id} is open: close it before recording its settle.",
                {"run_id": self.run_id},
            )
        return replace(
            self,
            status=RunStatus.EXPIRED if self.expiring else RunStatus.CLOSED,
            reserved_micros=self.reserved_micros - abandoned_micros,
            entry_id=entry_id,
            captured_micros=captured_micros,
            ended_at=now,
        )

    def status_word(self, now: datetime) -> str:
        if self.status is RunStatus.OPEN and now >= self.expires_at:
            return "expired"
        return self.status.value

    def due_for_sweep(self, now: datetime) -> bool:
        if self.status is RunStatus.OPEN:
            return now >= self.expires_at
        return (
            self.status is RunStatus.CLOSING
            and self.closing_at is not None
            and now - self.closing_at >= CLOSING_GRACE
        )


def run_ttl(ttl_seconds: int) -> timedelta:
    """0 means the default (15 min); a run lives between 1 and 50 minutes."""
    ttl = ttl_seconds or DEFAULT_RUN_TTL_S
    if not MIN_RUN_TTL_S <= ttl <= MAX_RUN_TTL_S:
        raise DomainError(
            Reason.INVALID_ARGUMENT,
            f"A run lives between {MIN_RUN_TTL_S} and {MAX_RUN_TTL_S} seconds; got {ttl}.",
            {"param": "ttl"},
        )
    return timedelta(seconds=ttl)


def check_new(run: Run) -> None:
    problems = []
    if not run.run_id:
        problems.append("run_id is required")
    if not run.account_id:
        problems.append("account_id is required")
    if not run.hold_id:
        problems.append("hold_id (the wallet hold of the budget) is required")
    if run.budget_micros <= 0:
        problems.append("the budget is above zero")
    if run.expires_at <= run.created_at:
        problems.append("expires_at is after created_at")
    if problems:
        raise DomainError(
            Reason.INVALID_ARGUMENT, "The run cannot be opened: " + "; ".join(problems) + "."
        )


def run_not_found(run_id: str) -> DomainError:
    return DomainError(
        Reason.NOT_FOUND,
        f"No run {run_id} in this account. Check the id (the `id` of POST /v1/runs).",
        {"run_id": run_id},
    )


@dataclass(frozen=True)
class Draw:
    """One request's slice of a run."""

    run_id: str
    request_id: str
    reserved_micros: int
    charge_micros: int = 0
    # reserved -> committed, or abandoned when the run finished before the request.
    state: str = "reserved"


@dataclass(frozen=True)
class ModelTotal:
    model: str
    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    charge_micros: int = 0

    def add(self, line: Receipt) -> ModelTotal:
        return replace(
            self,
            requests=self.requests + 1,
            prompt_tokens=self.prompt_tokens + line.prompt_tokens,
            cached_tokens=self.cached_tokens + line.cached_tokens,
            completion_tokens=self.completion_tokens + line.completion_tokens,
            charge_micros=self.charge_micros + line.charge_micros,
        )


@dataclass(frozen=True)
class RunReceipt:
    """The aggregate receipt: its totals are the sums of its lines, by construction."""

    run: Run
    lines: tuple[Receipt, ...]
    models: tuple[ModelTotal, ...]
    total: ModelTotal
    duration_ms: int


def run_receipt(run: Run, lines: list[Receipt]) -> RunReceipt:
    """Lines are the requests that drew on the run; refused ones (rejected, nothing
    charged) stay in the history but are not lines of the aggregate receipt."""
    drawn = [r for r in lines if r.status is not ReceiptStatus.REJECTED]
    ordered = sorted(drawn, key=lambda r: r.started_at or r.finished_at or run.created_at)
    per_model: dict[str, ModelTotal] = {}
    total = ModelTotal("")
    for line in ordered:
        model = line.selected_model
        per_model[model] = per_model.get(model, ModelTotal(model)).add(line)
        total = total.add(line)
    starts = [r.started_at or r.finished_at for r in ordered if r.started_at or r.finished_at]
    ends = [r.finished_at for r in ordered if r.finished_at]
    duration = 0
    if starts and ends:
        duration = int((max(ends) - min(s for s in starts if s)).total_seconds() * 1000)
    return RunReceipt(
        run, tuple(ordered), tuple(per_model[m] for m in sorted(per_model)), total, duration
    )

"""The operator console's API (/v1/operator/...): the daily work of the platform's
operators, signed in with the operator credential (the admin token) and their name.

The gateway holds no operator power of its own: it checks the credential against the
admin digest it is configured with, then calls the services with that same credential,
so each service authorizes the operator as it does the CLI. Every action (a review,
an adjustment, a reversal, a catalog change, a reconciliation) needs a reason and
leaves one row in the gateway's audit log (`operator_audit`) naming who, what, on
what, why and how it ended, whether it was done or refused. Left out of the OpenAPI
document: it is not the user API.
"""

from __future__ import annotations

import difflib
import hmac
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import Response

from services.gateway import metrics
from services.gateway.presenting import (
    TOPUP_STATUS,
    balance_json,
    ledger_entry_json,
    receipt_json,
    topup_json,
)
from services.gateway.transport.http.common import Deps, PageSize, api_key_of, json_body
from services.gateway.transport.http.common import json_response as answer_json
from services.gateway.transport.http.keys import key_json
from services.payments.client import PaymentsClient
from services.routing.client import RoutingClient
from services.usage.client import UsageClient
from services.wallet.client import WalletClient
from tokenforge.config import admin_token_sha256
from tokenforge.errors import DomainError, Reason
from tokenforge.generated.payments.v1 import payments_pb2
from tokenforge.generated.routing.v1 import routing_pb2
from tokenforge.generated.usage.v1 import usage_pb2
from tokenforge.generated.wallet.v1 import wallet_pb2
from tokenforge.holds import is_budget
from tokenforge.money import MoneyError, format_amount, parse_amount
from tokenforge.vocabulary import amount_json
from tokenforge.wire import (
    bucket_from_name,
    bucket_from_proto,
    iso,
    route_kind_from_proto,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

OPERATOR_HEADER = "x-tokenforge-operator"
MAX_NAME_CHARS = 64
MAX_REASON_CHARS = 500


@dataclass(frozen=True)
class Operator:
    """Who is acting: the name they signed in with, holding the operator credential."""

    name: str
    token: str


def _refused(error: DomainError) -> str:
    return f"refused: {error.reason.value}"


def router(deps: Deps) -> APIRouter:
    r = APIRouter(include_in_schema=False)
    peers = deps.peers

    def operator(request: Request) -> Operator:
        token = api_key_of(request)
        digest = deps.operator_digest
        if not digest or not hmac.compare_digest(admin_token_sha256(token), digest):
            raise DomainError(
                Reason.UNAUTHENTICATED,
                "The operator console takes the operator credential (TOKENFORGE_ADMIN_TOKEN), "
                "not an API key. Sign in to the operator section with it.",
            )
        name = request.headers.get(OPERATOR_HEADER, "").strip()
        if not name or len(name) > MAX_NAME_CHARS or not name.isprintable():
            raise DomainError(
                Reason.INVALID_ARGUMENT,
                f"Say who you are: send `{OPERATOR_HEADER}: <your name>` (1 to "
                f"{MAX_NAME_CHARS} characters); every action is recorded under it.",
                {"param": OPERATOR_HEADER},
            )
        return Operator(name, token)

    # The typed clients, calling with the operator's own credential: each service
    # authorizes the operator as it does the CLI.
    def wallet(who: Operator) -> WalletClient:
        return peers.wallet_client.as_caller(who.token)

    def payments(who: Operator) -> PaymentsClient:
        return peers.payments_client.as_caller(who.token)

    def routing(who: Operator) -> RoutingClient:
        return peers.routing_client.as_caller(who.token)

    def usage(who: Operator) -> UsageClient:
        return peers.usage_client.as_caller(who.token)

    def reason_of(body: dict[str, Any]) -> str:
        reason = body.get("reason")
        if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON_CHARS:
            raise DomainError(
                Reason.INVALID_ARGUMENT,
                f"Give a reason (1 to {MAX_REASON_CHARS} characters): it is kept with the "
                "action and in the audit log.",
                {"param": "reason"},
            )
        return reason.strip()

    async def act(
        request: Request,
        who: Operator,
        action: str,
        subject: str,
        reason: str,
        run: Callable[[], Awaitable[T]],
        detail: Callable[[T], dict[str, Any]] = lambda _: {},
    ) -> T:
        """Run an operator action and record it, done or refused, in the audit log."""
        if deps.audit is None:
            raise DomainError(
                Reason.SERVICE_UNAVAILABLE,
                "Operator actions are recorded in the gateway's database, which this "
                "gateway has none of (TOKENFORGE_DATABASE_URL); use the CLI meanwhile.",
            )
        try:
            result = await run()
        except DomainError as error:
            await deps.audit.record(
                operator=who.name,
                action=action,
                subject=subject,
                reason=reason,
                outcome=_refused(error),
                detail={"message": error.message},
                request_id=request.state.request_id,
            )
            raise
        await deps.audit.record(
            operator=who.name,
            action=action,
            subject=subject,
            reason=reason,
            outcome="done",
            detail=detail(result),
            request_id=request.state.request_id,
        )
        return result

    @r.get("/v1/operator/session")
    async def session(request: Request) -> Response:
        who = operator(request)
        return answer_json({"operator": who.name})

    # ---------- reviews ----------

    def order_json(t: payments_pb2.TopUp, entry_id: str | None = None) -> dict[str, Any]:
        return {**topup_json(t, entry_id), "account_id": t.account_id}

    @r.get("/v1/operator/reviews")
    async def reviews(
        request: Request, limit: PageSize = 50, cursor: str | None = None
    ) -> Response:
        """Orders waiting for a person, oldest decisions first in the queue's order."""
        who = operator(request)
        found = await payments(who).list_all_top_ups(
            status=payments_pb2.TOP_UP_STATUS_AWAITING_REVIEW,
            page_size=limit,
            page_token=cursor or "",
        )
        return answer_json(
            {
                "object": "list",
                "data": [order_json(t) for t in found.top_ups],
                "next_cursor": found.next_page_token or None,
            }
        )

    @r.post("/v1/operator/topups/{order_id}/review")
    async def review(order_id: str, request: Request) -> Response:
        """Approve or reject an order waiting for review, with a reason."""
        who = operator(request)
        body = await json_body(request)
        decisions = {
            "approve": payments_pb2.REVIEW_DECISION_APPROVE,
            "reject": payments_pb2.REVIEW_DECISION_REJECT,
        }
        decision = decisions.get(str(body.get("decision", "")))
        if decision is None:
            raise DomainError(
                Reason.INVALID_ARGUMENT, "decision is `approve` or `reject`.", {"param": "decision"}
            )
        reason = reason_of(body)

        async def run() -> payments_pb2.TopUp:
            return await payments(who).review_top_up(order_id, decision, reason, who.name)

        done = await act(
            request,
            who,
            f"review.{body['decision']}",
            f"topup {order_id}",
            reason,
            run,
            lambda t: {"status": TOPUP_STATUS.get(t.status, "unspecified")},
        )
        return answer_json(order_json(done))

    # ---------- accounts ----------

    @r.get("/v1/operator/accounts/{account_id}")
    async def account(
        account_id: str, request: Request, ledger_cursor: str | None = None
    ) -> Response:
        """One account: balances, open holds, ledger, top-ups, keys and receipts."""
        who = operator(request)
        balances = await wallet(who).balances(account_id, split_held=True)
        holds = await wallet(who).holds(
            account_id, status=wallet_pb2.HOLD_STATUS_OPEN, page_size=100
        )
        ledger = await wallet(who).ledger(account_id, page_size=50, page_token=ledger_cursor or "")
        topups = await payments(who).list_all_top_ups(account_id=account_id, page_size=50)
        credits = await wallet(who).ledger(
            account_id, kind=wallet_pb2.ENTRY_KIND_TOPUP_CREDIT, page_size=500
        )
        credited = {e.order_id: e.entry_id for e in credits.entries}
        keys = await routing(who).list_api_keys(account_id)
        receipts = await usage(who).list_receipts(
            usage_pb2.ReceiptFilter(account_id=account_id), page_size=20
        )
        return answer_json(
            {
                "account_id": account_id,
                "balances": [balance_json(b) for b in balances],
                "holds": [hold_json(h) for h in holds.holds],
                "ledger": [ledger_entry_json(e) for e in ledger.entries],
                "ledger_next_cursor": ledger.next_page_token or None,
                "topups": [order_json(t, credited.get(t.order_id)) for t in topups.top_ups],
                "keys": [key_json(k) for k in keys],
                "receipts": [receipt_json(x) for x in receipts.receipts],
            }
        )

    @r.post("/v1/operator/accounts/{account_id}/adjust")
    async def adjust(account_id: str, request: Request) -> Response:
        """An adjustment with a reason: a signed amount, e.g. "5" or "-1.25"."""
        who = operator(request)
        body = await json_body(request)
        try:
            bucket = bucket_from_name(str(body.get("bucket", "")))
        except (KeyError, ValueError):
            raise DomainError(
                Reason.INVALID_ARGUMENT, "bucket is `credit` or `routed`.", {"param": "bucket"}
            ) from None
        try:
            micros = parse_amount(str(body.get("amount", "")))
        except (MoneyError, ValueError):
            micros = 0
        if micros == 0:
            raise DomainError(
                Reason.INVALID_ARGUMENT,
                'amount is a signed decimal other than zero, like "5" or "-1.25".',
                {"param": "amount"},
            )
        reason = reason_of(body)
        key = str(body.get("idempotency_key") or uuid.uuid4())

        async def run() -> wallet_pb2.LedgerEntry:
            return await wallet(who).adjust(
                account_id, bucket, micros, reason, key, operator=who.name
            )

        done = await act(
            request,
            who,
            "wallet.adjust",
            f"account {account_id} {bucket.value}",
            reason,
            run,
            lambda e: {"entry_id": e.entry_id, "change": format_amount(e.amount_micros, bucket)},
        )
        return answer_json(ledger_entry_json(done))

    @r.post("/v1/operator/ledger/{entry_id}/reverse")
    async def reverse(entry_id: str, request: Request) -> Response:
        """Reverse one ledger row, with a reason (a new row; nothing is edited)."""
        who = operator(request)
        reason = reason_of(await json_body(request))

        async def run() -> wallet_pb2.LedgerEntry:
            return await wallet(who).reverse(entry_id, reason, operator=who.name)

        done = await act(
            request,
            who,
            "wallet.reverse",
            f"ledger row {entry_id}",
            reason,
            run,
            lambda e: {"entry_id": e.entry_id},
        )
        return answer_json(ledger_entry_json(done))

    # ---------- catalog ----------

    async def running_catalog(who: Operator) -> routing_pb2.GetCatalogResponse:
        return await routing(who).get_catalog()

    @r.get("/v1/operator/catalog")
    async def catalog(request: Request) -> Response:
        """The running catalog (its YAML) and its versions, newest first."""
        who = operator(request)
        running = await running_catalog(who)
        versions = await routing(who).catalog_versions(limit=50)
        return answer_json(
            {
                "version": version_json(running.version),
                "yaml": running.yaml,
                "versions": [version_json(v) for v in versions],
            }
        )

    @r.post("/v1/operator/catalog/diff")
    async def catalog_diff(request: Request) -> Response:
        """What applying `yaml` would change, as a unified diff against the running one."""
        who = operator(request)
        body = await json_body(request)
        text = body.get("yaml")
        if not isinstance(text, str):
            raise DomainError(
                Reason.INVALID_ARGUMENT, "yaml is the catalog's text.", {"param": "yaml"}
            )
        running = await running_catalog(who)
        diff = difflib.unified_diff(
            running.yaml.splitlines(keepends=True),
            text.splitlines(keepends=True),
            fromfile=f"running ({running.version.version})",
            tofile="proposed",
        )
        lines = "".join(diff)
        return answer_json({"version": version_json(running.version), "diff": lines})

    @r.post("/v1/operator/catalog/apply")
    async def catalog_apply(request: Request) -> Response:
        """Validate and apply a catalog (refused whole on any error), with a reason."""
        who = operator(request)
        body = await json_body(request)
        text = body.get("yaml")
        if not isinstance(text, str):
            raise DomainError(
                Reason.INVALID_ARGUMENT, "yaml is the catalog's text.", {"param": "yaml"}
            )
        reason = reason_of(body)

        async def run() -> routing_pb2.PutCatalogResponse:
            return await routing(who).put_catalog(text, who.name)

        done = await act(
            request,
            who,
            "catalog.apply",
            "catalog",
            reason,
            run,
            lambda a: {"version": a.version.version, "changed": a.changed},
        )
        return answer_json({"version": version_json(done.version), "changed": done.changed})

    # ---------- health, reconciliation, finishes ----------

    @r.get("/v1/operator/health")
    async def health(request: Request) -> Response:
        """Every route's channels: circuit state, error rate, latency, last failure."""
        who = operator(request)
        found = await routing(who).health()
        return answer_json(
            {
                "routes": [
                    {
                        "model": route.model,
                        "route": route_kind_from_proto(route.kind),
                        "channels": [channel_json(c) for c in route.channels],
                    }
                    for route in found.routes
                ],
                "channels": [channel_json(c) for c in found.channels],
            }
        )

    @r.post("/v1/operator/reconcile")
    async def reconcile(request: Request) -> Response:
        """Run both reconciliations and show their results: the wallet's (W1, W2, W3,
        W7, W8 over the whole journal) and usage's (every ended hold of the last
        `since_hours` has one receipt with its charge, every charged receipt its ledger
        row; the same code as `tokenforge usage reconcile`)."""
        who = operator(request)
        body = await json_body(request)
        reason = str(body.get("reason") or "daily check")[:MAX_REASON_CHARS]
        hours = body.get("since_hours", 24)
        if not isinstance(hours, int) or isinstance(hours, bool) or not 1 <= hours <= 24 * 90:
            raise DomainError(
                Reason.INVALID_ARGUMENT,
                "since_hours is a whole number of hours from 1 to 2160 (90 days).",
                {"param": "since_hours"},
            )

        async def run() -> tuple[wallet_pb2.ReconcileResponse, usage_pb2.ReconcileResponse]:
            wallet_report = await wallet(who).reconcile()
            since = datetime.now(UTC) - timedelta(hours=hours)
            usage_report = await usage(who).reconcile(since)
            return wallet_report, usage_report

        wallet_report, usage_report = await act(
            request,
            who,
            "reconcile",
            "wallet and usage",
            reason,
            run,
            lambda a: {
                "wallet_ok": a[0].ok,
                "wallet_violations": len(a[0].violations),
                "usage_ok": not a[1].mismatches,
                "usage_mismatches": len(a[1].mismatches),
            },
        )
        return answer_json(
            {
                "ok": wallet_report.ok and not usage_report.mismatches,
                "wallet": {
                    "ok": wallet_report.ok,
                    "accounts_checked": wallet_report.accounts_checked,
                    "entries_checked": wallet_report.entries_checked,
                    "holds_checked": wallet_report.holds_checked,
                    "violations": [
                        {"rule": v.rule, "subject": v.subject, "detail": v.detail}
                        for v in wallet_report.violations
                    ],
                },
                "usage": {
                    "ok": not usage_report.mismatches,
                    "since_hours": hours,
                    "holds_checked": usage_report.holds_checked,
                    "receipts_checked": usage_report.receipts_checked,
                    "entries_checked": usage_report.entries_checked,
                    "mismatches": [
                        {"problem": m.problem, "subject": m.subject, "detail": m.detail}
                        for m in usage_report.mismatches
                    ],
                },
            }
        )

    @r.get("/v1/operator/finishes")
    async def finishes(request: Request) -> Response:
        """Requests' finishes this gateway's queue still holds (the wallet's part or the
        receipt not delivered yet), and those whose charge could not be collected."""
        operator(request)
        # This replica's count since it started (tokenforge_charges_not_collected_total
        # sums every replica); each such receipt says `error: charge_not_collected`.
        not_collected = int(metrics.CHARGES_NOT_COLLECTED._value.get())
        queue = peers.finish_queue
        if queue is None:
            return answer_json({"waiting": 0, "data": [], "charges_not_collected": not_collected})
        return answer_json(
            {
                "waiting": await queue.count(),
                "data": await queue.overview(limit=100),
                "charges_not_collected": not_collected,
            }
        )

    @r.get("/v1/operator/audit")
    async def audit(request: Request, limit: PageSize = 50, cursor: int | None = None) -> Response:
        """The audit log, newest first: who did what, on what, why, how it ended."""
        operator(request)
        if deps.audit is None:
            return answer_json({"object": "list", "data": [], "next_cursor": None})
        rows = await deps.audit.rows(limit, cursor)
        return answer_json(
            {
                "object": "list",
                "data": [
                    {
                        "audit_id": row.audit_id,
                        "at": row.at.isoformat(),
                        "operator": row.operator,
                        "action": row.action,
                        "subject": row.subject,
                        "reason": row.reason,
                        "outcome": row.outcome,
                        "detail": row.detail,
                    }
                    for row in rows
                ],
                "next_cursor": rows[-1].audit_id if len(rows) == limit else None,
            }
        )

    return r


def hold_json(h: wallet_pb2.Hold) -> dict[str, Any]:
    bucket = bucket_from_proto(h.bucket)
    return {
        "hold_id": h.hold_id,
        "bucket": bucket.value,
        "held": amount_json(h.amount_micros - h.captured_micros, bucket),
        "charged": amount_json(h.captured_micros, bucket),
        "request_id": h.request_id,
        # A gateway budget (money set aside for fast serving), or one request's hold.
        "for": "set_aside" if is_budget(h.request_id) else "request",
        "created_at": iso(h.created_at),
        "expires_at": iso(h.expires_at),
    }


def version_json(v: routing_pb2.CatalogVersion) -> dict[str, Any]:
    return {
        "version": v.version,
        "created_by": v.created_by,
        "created_at": iso(v.created_at),
        "content_sha256": v.content_sha256,
    }


def channel_json(c: routing_pb2.ChannelHealth) -> dict[str, Any]:
    return {
        "channel": c.channel_id,
        "state": c.state,
        "error_rate": c.error_rate_ppm / 1_000_000,
        "latency_p50_ms": c.latency_p50_ms,
        "latency_p95_ms": c.latency_p95_ms,
        "last_failure": c.last_failure or None,
        "last_failure_at": iso(c.last_failure_at) if c.last_failure else None,
        "attempts_in_window": c.attempts_in_window,
    }

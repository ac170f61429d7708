"""A small typed async client of routing, for the gateway: Resolve before a request,
the outcome report after it.

Every call carries a deadline and this service's credential (`Peer`); a refusal
comes back as the same `DomainError` routing raised (reason, message, details).

Resolve answers carry `reuse_for_ms` (routing.proto): how long the same (api key,
model, endpoint, client ip) may be answered from that resolution. Routing sets it
only for a key that counts nothing per request, never for a preview, and never past
the 2 s bound it promises for a key's revocation, rotation or expiry. `resolve`
keeps such answers in a small bounded cache and answers from it meanwhile, with the
worst case recomputed for each request's tokens; refusals are never kept. A request
that reuses an answer past half its reuse time renews it in the background (the next
requests find a fresh answer instead of waiting for routing; a refusal or an answer
no longer reusable drops the kept one at once). When a kept answer lapses all the
same, one request asks routing again and those arriving meanwhile wait for that
answer (if routing refuses, each of them asks for itself). The
gateway calls `forget_key` when a key is revoked or rotated through it, so that key
is refused again at once; a failed attempt on a channel drops the answers that
route through it, so the next request asks routing, whose breakers may have moved.

Outcome reports are fire-and-forget (a background task: a finished request never
waits for its report, and a lost report is logged with the request id, not
raised). They go through a `Batcher`: one alone on ReportOutcome while routing keeps
up, several together on ReportOutcomes when reports pile up behind calls in flight,
each taken exactly as alone. A report that can change nothing routing decides
lingers up to `report_linger_s` (TOKENFORGE_REPORT_LINGER_MS, default 250 ms) so
that reports travel together even at low load: the request's answer was reusable
(routing saw every breaker closed and a key that counts nothing per request: no
lease to end, no cap its spend feeds) and no channel failed. Every other report
(a failure for the breakers, a lease, a spend a cap counts, a probe) goes at once.
`drain()` waits for the reports under way (tests, shutdown; `close()` drains first).

    routing = RoutingClient.connect(settings.routing_addr, settings.peer_token)
    resolved = await routing.resolve(routing_pb2.ResolveRequest(...), request_id=rid)
    routing.report_outcome(routing_pb2.ReportOutcomeRequest(request_id=rid, ...))
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from tokenforge.attempts import is_channel_failure
from tokenforge.errors import DomainError
from tokenforge.generated.routing.v1 import routing_pb2, routing_pb2_grpc
from tokenforge.runtime import metrics
from tokenforge.runtime.batching import DEFAULT_MAX_SIZE, Batcher
from tokenforge.runtime.grpc_client import DEFAULT_DEADLINE_S, Peer
from tokenforge.runtime.service_client import ServiceClient
from tokenforge.wire import bucket_from_proto, price_from_proto

# Outcome reports, each answered alone or in a ReportOutcomes batch.
Reports = Batcher[routing_pb2.ReportOutcomeRequest, routing_pb2.ReportOutcomeResponse]

log = logging.getLogger(__name__)

# Resolutions kept for reuse; the oldest goes first when full.
DEFAULT_MAX_REUSED = 4096

# (api key, model, endpoint, client ip): what a reusable resolution answers for.
_Slot = tuple[str, str, int, str]


@dataclass
class _Reusable:
    answer: routing_pb2.ResolveResponse
    # On the client's clock: the answer may be reused until then.
    until: float
    # Past this, a request that reuses the answer renews it in the background.
    renew_at: float


def worst_case_micros(
    answer: routing_pb2.ResolveResponse, request: routing_pb2.ResolveRequest
) -> int:
    """The chosen route's price of the request's worst-case tokens, by routing's rule
    (routing.proto, ResolveResponse.worst_case_micros)."""
    prompt = max(request.estimated_prompt_tokens, 0)
    if request.endpoint == routing_pb2.ENDPOINT_EMBEDDINGS:
        output = 0
    else:
        cap, most = request.output_tokens_cap, answer.max_output_tokens
        output = cap if 0 < cap <= most else most
    price = price_from_proto(bucket_from_proto(answer.route.bucket), answer.route.prices)
    return price.worst_case(prompt, output).micros


def _channels(answer: routing_pb2.ResolveResponse) -> Iterable[str]:
    for route in (answer.route, *answer.fallback_routes):
        for channel in route.channels:
            yield channel.channel_id


class RoutingClient(ServiceClient):
    """Calls RoutingService's request path; answers the proto messages. Resolve is not
    retried (a fresh request is cheaper than a stale answer); reports are not either."""

    service = "routing"

    def __init__(
        self,
        peer: Peer,
        *,
        deadline: float = DEFAULT_DEADLINE_S,
        batching: bool = True,
        max_batch: int = DEFAULT_MAX_SIZE,
        max_reused: int = DEFAULT_MAX_REUSED,
        report_linger_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(peer, deadline=deadline, attempts=1)
        self.stub = routing_pb2_grpc.RoutingServiceStub(peer.channel)
        self.max_reused = max(0, max_reused)
        self._clock = clock
        self._reusable: dict[_Slot, _Reusable] = {}
        # Lapsed answers being asked again: requests for the slot wait for that call.
        self._refreshing: dict[_Slot, asyncio.Future[None]] = {}
        # Bumped by forget_key: an answer that was on its way meanwhile is not kept.
        self._forgets = 0
        # Without batching, every report goes alone on ReportOutcome.
        self.reports: Reports = self._reports(max_size=max_batch, batching=batching)
        # Reports that change nothing routing decides: they wait for company.
        self.settled_reports = (
            self._reports(max_size=max_batch, linger=report_linger_s)
            if batching and report_linger_s > 0
            else self.reports
        )
        # Reports under way, referenced until done.
        self._sending: set[asyncio.Task[None]] = set()
        # Resolutions being renewed in the background (see `_renew`).
        self._renewals: set[asyncio.Task[None]] = set()
        # Figures for tests, metrics and the benchmark.
        self.resolve_calls = 0
        self.resolve_reused = 0

    async def close(self) -> None:
        await self.drain()
        for task in list(self._renewals):
            task.cancel()
        await asyncio.gather(*self._renewals, return_exceptions=True)
        await super().close()

    # Authenticate.

    async def authenticate(
        self, api_key: str, scope: int, client_ip: str, *, request_id: str = ""
    ) -> routing_pb2.Principal:
        """The key's principal for a route of the user API, after routing checked the
        whole key as Resolve does: active, `scope` (SCOPE_UNSPECIFIED: none), and
        `client_ip` against its IP allow-list. Never reused: a revocation or a
        refusal shows at once."""
        request = routing_pb2.AuthenticateRequest(
            api_key=api_key,
            scope=scope,  # type: ignore[arg-type]
            client_ip=client_ip,
        )
        answer: routing_pb2.AuthenticateResponse = await self._once(
            "Authenticate", request, request_id
        )
        return answer.principal

    # Resolve.

    async def resolve(
        self, request: routing_pb2.ResolveRequest, *, request_id: str = ""
    ) -> routing_pb2.ResolveResponse:
        """Routing's answer, or a reusable one it gave for the same key, model,
        endpoint and client ip less than its `reuse_for_ms` ago."""
        slot: _Slot = (request.api_key, request.model, request.endpoint, request.client_ip)
        if request.preview:
            return await self._ask(slot, request, request_id)
        if (reused := self._reuse(slot, request)) is not None:
            return reused
        refreshing = self._refreshing.get(slot)
        if refreshing is not None:
            return await self._after_refresh(refreshing, slot, request, request_id)
        if self._reusable.pop(slot, None) is not None:
            # It lapsed: one request asks routing again, the others arriving meanwhile
            # wait for that answer rather than all asking at once.
            return await self._refresh(slot, request, request_id)
        return await self._ask(slot, request, request_id)

    def _renew(self, slot: _Slot, request: routing_pb2.ResolveRequest) -> None:
        """Ask routing again in the background for an answer past half its reuse time,
        so that the slot's next request finds a fresh one instead of waiting for
        routing. Such keys count nothing per request: asking has no effect but the
        answer (a key's limits are fixed when it is made, so no lease or counter can
        come of it). A refusal (the key revoked, expired) or an answer routing no longer
        lets be reused drops the kept one at once: renewing only ever brings news
        sooner."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._refreshing[slot] = done

        async def renew() -> None:
            try:
                answer = await self._ask(slot, request, "")
                kept = self._reusable.get(slot)
                if kept is not None and kept.answer is not answer:
                    del self._reusable[slot]  # not kept again: nobody reuses the old one
            except DomainError:
                self._reusable.pop(slot, None)
            except Exception as error:  # noqa: BLE001 - the kept answer lapses on its own
                log.warning("renewing a resolution failed (%s): %s", type(error).__name__, error)
            finally:
                del self._refreshing[slot]
                done.set_result(None)

        task = asyncio.get_running_loop().create_task(renew())
        self._renewals.add(task)
        task.add_done_callback(self._renewals.discard)

    async def _refresh(
        self, slot: _Slot, request: routing_pb2.ResolveRequest, request_id: str
    ) -> routing_pb2.ResolveResponse:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._refreshing[slot] = done
        try:
            return await self._ask(slot, request, request_id)
        finally:
            del self._refreshing[slot]
            done.set_result(None)

    async def _after_refresh(
        self,
        refreshing: asyncio.Future[None],
        slot: _Slot,
        request: routing_pb2.ResolveRequest,
        request_id: str,
    ) -> routing_pb2.ResolveResponse:
        """Wait for the refresh under way; its answer serves if routing let it be
        reused, else (a refusal, a key that now counts) this request asks itself."""
        await asyncio.shield(refreshing)
        if (reused := self._reuse(slot, request)) is not None:
            return reused
        return await self._ask(slot, request, request_id)

    def _reuse(
        self, slot: _Slot, request: routing_pb2.ResolveRequest
    ) -> routing_pb2.ResolveResponse | None:
        """The kept answer for the slot, for this request, while it may be reused."""
        kept = self._reusable.get(slot)
        if kept is None:
            return None
        now = self._clock()
        if now >= kept.until:
            return None
        if now >= kept.renew_at and slot not in self._refreshing:
            self._renew(slot, request)
        self.resolve_reused += 1
        metrics.RESOLVES.labels("reused").inc()
        return self._reused(kept, request, now)

    async def _ask(
        self, slot: _Slot, request: routing_pb2.ResolveRequest, request_id: str
    ) -> routing_pb2.ResolveResponse:
        forgets, sent_at = self._forgets, self._clock()
        self.resolve_calls += 1
        metrics.RESOLVES.labels("routing").inc()
        answer: routing_pb2.ResolveResponse = await self._once("Resolve", request, request_id)
        if (
            answer.reuse_for_ms > 0
            and not request.preview
            and not answer.lease_id
            and forgets == self._forgets
        ):
            # Counted from before the call: routing's bound started after it.
            lasts = answer.reuse_for_ms / 1000
            self._keep(slot, _Reusable(answer, sent_at + lasts, sent_at + lasts / 2))
        return answer

    def _reused(
        self, kept: _Reusable, request: routing_pb2.ResolveRequest, now: float
    ) -> routing_pb2.ResolveResponse:
        answer = routing_pb2.ResolveResponse()
        answer.CopyFrom(kept.answer)
        answer.worst_case_micros = worst_case_micros(answer, request)
        answer.reuse_for_ms = int((kept.until - now) * 1000)
        return answer

    def _keep(self, slot: _Slot, kept: _Reusable) -> None:
        if self.max_reused == 0:
            return
        self._reusable.pop(slot, None)
        if len(self._reusable) >= self.max_reused:
            now = self._clock()
            for stale in [s for s, k in self._reusable.items() if k.until <= now]:
                del self._reusable[stale]
        while len(self._reusable) >= self.max_reused:
            del self._reusable[next(iter(self._reusable))]
        self._reusable[slot] = kept

    def forget_key(self, key_id: str) -> None:
        """Drop every kept answer of this key (revoked or rotated: ask routing again)."""
        self._forgets += 1
        self._drop(lambda answer: answer.principal.key_id == key_id)

    def _drop(self, matches: Callable[[routing_pb2.ResolveResponse], bool]) -> None:
        for slot in [s for s, k in self._reusable.items() if matches(k.answer)]:
            del self._reusable[slot]

    # Outcome reports.

    def report_outcome(
        self, request: routing_pb2.ReportOutcomeRequest, *, settled: bool = False
    ) -> None:
        """Send the report in the background; a failure is logged, never raised.
        `settled`: the request's Resolve answer was reusable (see the module)."""
        failed = {a.channel_id for a in request.attempts if is_channel_failure(a.outcome)}
        if failed:
            self._drop(lambda answer: not failed.isdisjoint(_channels(answer)))
        lingers = settled and not failed and not request.lease_id
        batcher = self.settled_reports if lingers else self.reports
        task = asyncio.get_running_loop().create_task(self._report(request, batcher))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def drain(self) -> None:
        """Wait for every report under way."""
        while self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)

    async def _report(
        self,
        request: routing_pb2.ReportOutcomeRequest,
        batcher: Reports,
    ) -> None:
        try:
            await batcher.submit(request)
        except Exception as error:  # noqa: BLE001 - logged, never raised into a finished request
            log.warning(
                "outcome report for %s not delivered (%s): %s",
                request.request_id,
                type(error).__name__,
                error,
            )

    def _reports(self, **options: Any) -> Reports:
        return self._batcher(
            "ReportOutcome",
            "ReportOutcomes",
            lambda reports: routing_pb2.ReportOutcomesRequest(reports=reports),
            **options,
        )

    # Models, accounts and keys (the user API's and operators' calls; never reused).

    async def list_models(self) -> routing_pb2.ListModelsResponse:
        """Every model with its routes (kind, the bucket that pays, prices), and the
        catalog version they are from."""
        answer: routing_pb2.ListModelsResponse = await self._call(
            "ListModels", routing_pb2.ListModelsRequest()
        )
        return answer

    async def open_account(self, account_id: str, display_name: str = "") -> str:
        """Open the account (idempotent); answers its default project id."""
        answer = await self._call(
            "OpenAccount",
            routing_pb2.OpenAccountRequest(account_id=account_id, display_name=display_name),
        )
        return str(answer.project_id)

    async def create_api_key(
        self, request: routing_pb2.CreateApiKeyRequest, *, request_id: str = ""
    ) -> routing_pb2.CreateApiKeyResponse:
        """A new key (`api_key` holds its secret, in this answer only)."""
        answer: routing_pb2.CreateApiKeyResponse = await self._call(
            "CreateApiKey", request, request_id
        )
        return answer

    async def list_api_keys(
        self, account_id: str, *, request_id: str = ""
    ) -> list[routing_pb2.ApiKeyInfo]:
        answer = await self._call(
            "ListApiKeys", routing_pb2.ListApiKeysRequest(account_id=account_id), request_id
        )
        return list(answer.keys)

    # The catalog and channel health (operator only).

    async def get_catalog(self) -> routing_pb2.GetCatalogResponse:
        """The running catalog: its version and YAML."""
        answer: routing_pb2.GetCatalogResponse = await self._call(
            "GetCatalog", routing_pb2.GetCatalogRequest()
        )
        return answer

    async def catalog_versions(self, limit: int = 50) -> list[routing_pb2.CatalogVersion]:
        """The catalog's versions, newest first."""
        answer = await self._call(
            "ListCatalogVersions", routing_pb2.ListCatalogVersionsRequest(limit=limit)
        )
        return list(answer.versions)

    async def put_catalog(self, yaml: str, author: str) -> routing_pb2.PutCatalogResponse:
        """Validate and apply a catalog, refused whole on any error."""
        answer: routing_pb2.PutCatalogResponse = await self._call(
            "PutCatalog", routing_pb2.PutCatalogRequest(yaml=yaml, author=author)
        )
        return answer

    async def health(self) -> routing_pb2.GetHealthResponse:
        """Every route's channels: circuit state, error rate, latency, last failure."""
        answer: routing_pb2.GetHealthResponse = await self._call(
            "GetHealth", routing_pb2.GetHealthRequest()
        )
        return answer

    async def revoke_api_key(
        self, account_id: str, key_id: str, *, acting_key_id: str = "", request_id: str = ""
    ) -> routing_pb2.ApiKeyInfo:
        """Revoke the key; no answer kept here outlives the revocation."""
        answer = await self._call(
            "RevokeApiKey",
            routing_pb2.RevokeApiKeyRequest(
                account_id=account_id, key_id=key_id, acting_key_id=acting_key_id
            ),
            request_id,
        )
        self.forget_key(key_id)
        key: routing_pb2.ApiKeyInfo = answer.key
        return key

    async def rotate_api_key(
        self,
        account_id: str,
        key_id: str,
        *,
        grace_seconds: int = 0,
        acting_key_id: str = "",
        request_id: str = "",
    ) -> routing_pb2.RotateApiKeyResponse:
        """A new secret with the same settings; the old one stops after `grace_seconds`
        (no answer kept here for it survives the rotation)."""
        answer: routing_pb2.RotateApiKeyResponse = await self._call(
            "RotateApiKey",
            routing_pb2.RotateApiKeyRequest(
                account_id=account_id,
                key_id=key_id,
                grace_seconds=grace_seconds,
                acting_key_id=acting_key_id,
            ),
            request_id,
        )
        self.forget_key(key_id)
        return answer

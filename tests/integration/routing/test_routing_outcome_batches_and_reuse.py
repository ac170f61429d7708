"""Outcome reports in batches, reusable resolutions and the RoutingClient, through
gRPC against the real database and the demo catalog."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.routing.client import RoutingClient
from services.routing.storage.tables import key_spend
from tests.integration.routing.conftest import INTERNAL, Routing
from tokenforge.errors import DomainError, Reason
from tokenforge.generated.common.v1 import common_pb2
from tokenforge.generated.routing.v1 import routing_pb2
from tokenforge.runtime.grpc_client import Peer
from tokenforge.runtime.service import RunningService

CHAT = routing_pb2.ENDPOINT_CHAT_COMPLETIONS
SERVICE = "/tokenforge.routing.v1.RoutingService/"
# The routing app of these tests runs with the default TOKENFORGE_RESOLVE_REUSE_MS.
REUSE_MS = 1000


def served(method: str, code: str = "OK") -> float:
    """How many calls of `method` routing (in this process) answered with `code` so far."""
    found = REGISTRY.get_sample_value(
        "tokenforge_grpc_server_handled_total", {"method": SERVICE + method, "code": code}
    )
    return found or 0.0


async def refusal(call: object) -> DomainError:
    with pytest.raises(DomainError) as caught:
        await call  # type: ignore[misc]
    return caught.value


async def new_key(
    routing: Routing, settings: routing_pb2.KeySettings | None = None
) -> tuple[str, str]:
    """(account id, API key) of a fresh account's new key."""
    account, _ = await routing.open_account()
    created = await routing.call(
        "CreateApiKey",
        routing_pb2.CreateApiKeyRequest(account_id=account, name="test", settings=settings),
    )
    return account, str(created.api_key)


def chat(api_key: str, **fields: object) -> routing_pb2.ResolveRequest:
    """A chat request of demo-chat from one client address, unless `fields` say else."""
    wanted: dict[str, object] = {
        "model": "demo-chat",
        "endpoint": CHAT,
        "client_ip": "198.51.100.7",
    }
    return routing_pb2.ResolveRequest(api_key=api_key, **(wanted | fields))  # type: ignore[arg-type]


def charged(request_id: str, key_id: str, micros: int) -> routing_pb2.ReportOutcomeRequest:
    return routing_pb2.ReportOutcomeRequest(
        request_id=request_id,
        key_id=key_id,
        bucket=common_pb2.BUCKET_CREDIT,
        charge_micros=micros,
    )


async def spent_in_total(engine: AsyncEngine, key_id: str) -> int:
    async with engine.connect() as conn:
        found = await conn.execute(
            select(key_spend.c.micros).where(
                key_spend.c.key_id == key_id,
                key_spend.c.bucket == "credit",
                key_spend.c.period == "total",
            )
        )
        return int(found.scalar_one_or_none() or 0)


def rid() -> str:
    return f"req-{uuid.uuid4().hex}"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def client_clock(
    routing_app: RunningService,
) -> AsyncIterator[tuple[RoutingClient, FakeClock]]:
    clock = FakeClock()
    client = RoutingClient(Peer("routing", routing_app.address, INTERNAL), clock=clock)
    yield client, clock
    await client.close()


# -- ReportOutcomes -----------------------------------------------------------


async def test_batches_count_spend_once_per_request_id_within_a_batch_across_batches_and_alone(
    routing: Routing, routing_engine: AsyncEngine
) -> None:
    cap = routing_pb2.SpendCap(bucket=common_pb2.BUCKET_CREDIT, daily_micros=1_000)
    _, key = await new_key(routing, routing_pb2.KeySettings(spend_caps=[cap]))
    key_id = (await routing.call("Resolve", chat(key, model="demo-chat@official"))).principal.key_id
    first, second, third = rid(), rid(), rid()

    answer = await routing.call(
        "ReportOutcomes",
        routing_pb2.ReportOutcomesRequest(
            reports=[
                charged(first, key_id, 600),
                charged(first, key_id, 600),
                charged(second, key_id, 100),
            ]
        ),
    )
    assert [o.WhichOneof("outcome") for o in answer.outcomes] == ["answer"] * 3
    assert await spent_in_total(routing_engine, key_id) == 700

    await routing.call(
        "ReportOutcomes",
        routing_pb2.ReportOutcomesRequest(
            reports=[charged(second, key_id, 100), charged(third, key_id, 200)]
        ),
    )
    await routing.call("ReportOutcome", charged(third, key_id, 200))
    assert await spent_in_total(routing_engine, key_id) == 900

    # Under the daily cap still; one more charge reaches it.
    await routing.call("Resolve", chat(key, model="demo-chat@official"))
    await routing.call(
        "ReportOutcomes", routing_pb2.ReportOutcomesRequest(reports=[charged(rid(), key_id, 100)])
    )
    error = await refusal(routing.call("Resolve", chat(key, model="demo-chat@official")))
    assert error.reason is Reason.SPEND_CAP_REACHED


async def test_a_batch_ends_every_lease_it_reports(routing: Routing) -> None:
    _, key = await new_key(routing, routing_pb2.KeySettings(max_in_flight=2))
    leases = [await routing.call("Resolve", chat(key)) for _ in range(2)]
    assert all(r.lease_id for r in leases)
    assert (await refusal(routing.call("Resolve", chat(key)))).reason is Reason.RATE_LIMITED

    await routing.call(
        "ReportOutcomes",
        routing_pb2.ReportOutcomesRequest(
            reports=[
                routing_pb2.ReportOutcomeRequest(
                    request_id=rid(), key_id=r.principal.key_id, lease_id=r.lease_id
                )
                for r in leases
            ]
        ),
    )

    again = [await routing.call("Resolve", chat(key)) for _ in range(2)]
    assert all(r.lease_id for r in again)


async def test_a_report_with_an_unknown_bucket_is_refused_alone_in_a_batch_as_in_its_own_call(
    routing: Routing, routing_engine: AsyncEngine
) -> None:
    _, key = await new_key(routing)
    key_id = (await routing.call("Resolve", chat(key))).principal.key_id
    unknown_bucket = charged(rid(), key_id, 50)
    unknown_bucket.bucket = 99  # type: ignore[assignment]

    alone = await refusal(routing.call("ReportOutcome", unknown_bucket))
    answer = await routing.call(
        "ReportOutcomes",
        routing_pb2.ReportOutcomesRequest(reports=[charged(rid(), key_id, 40), unknown_bucket]),
    )

    assert alone.reason is Reason.INVALID_ARGUMENT
    assert answer.outcomes[0].HasField("answer")
    assert answer.outcomes[1].error.reason == alone.reason.value
    assert answer.outcomes[1].error.message == alone.message
    assert await spent_in_total(routing_engine, key_id) == 40


async def test_a_batch_of_more_than_256_reports_is_refused_whole(
    routing: Routing, routing_engine: AsyncEngine
) -> None:
    reports = [charged(rid(), "key-of-a-too-big-batch", 1) for _ in range(257)]

    error = await refusal(
        routing.call("ReportOutcomes", routing_pb2.ReportOutcomesRequest(reports=reports))
    )

    assert error.reason is Reason.INVALID_ARGUMENT
    assert await spent_in_total(routing_engine, "key-of-a-too-big-batch") == 0


async def test_report_outcomes_is_closed_to_the_operator_credential(
    routing_operator: Routing,
) -> None:
    error = await refusal(
        routing_operator.call(
            "ReportOutcomes", routing_pb2.ReportOutcomesRequest(reports=[charged(rid(), "k", 1)])
        )
    )

    assert error.reason is Reason.PERMISSION_DENIED


async def test_health_learns_the_attempts_of_every_report_in_a_batch(routing: Routing) -> None:
    def attempts_of(health: routing_pb2.GetHealthResponse) -> int:
        found = [c.attempts_in_window for c in health.channels if c.channel_id == "mock-backup"]
        return int(found[0])

    before = attempts_of(await routing.call("GetHealth", routing_pb2.GetHealthRequest()))
    ok = routing_pb2.AttemptReport(channel_id="mock-backup", outcome="ok", latency_ms=12)

    await routing.call(
        "ReportOutcomes",
        routing_pb2.ReportOutcomesRequest(
            reports=[routing_pb2.ReportOutcomeRequest(request_id=rid(), attempts=[ok, ok])] * 3
        ),
    )

    after = attempts_of(await routing.call("GetHealth", routing_pb2.GetHealthRequest()))
    assert after - before == 6


# -- reuse_for_ms ---------------------------------------------------------------


async def test_a_key_that_counts_nothing_may_reuse_its_resolution_within_the_bound(
    routing: Routing,
) -> None:
    _, key = await new_key(routing)

    answer = await routing.call("Resolve", chat(key))
    preview = await routing.call("Resolve", chat(key, preview=True))

    # The setting, and routing's own key cache (2 s), bound it.
    assert 0 < answer.reuse_for_ms <= REUSE_MS
    assert answer.lease_id == ""
    assert preview.reuse_for_ms == 0


@pytest.mark.parametrize(
    "settings",
    [
        routing_pb2.KeySettings(requests_per_minute=1_000),
        routing_pb2.KeySettings(tokens_per_minute=1_000_000),
        routing_pb2.KeySettings(max_in_flight=100),
        routing_pb2.KeySettings(
            spend_caps=[routing_pb2.SpendCap(bucket=common_pb2.BUCKET_ROUTED, daily_micros=10**9)]
        ),
        routing_pb2.KeySettings(
            spend_caps=[routing_pb2.SpendCap(bucket=common_pb2.BUCKET_CREDIT, total_micros=10**9)]
        ),
    ],
    ids=["requests", "tokens", "in_flight", "daily_spend", "total_spend"],
)
async def test_a_key_with_any_counted_limit_or_cap_never_reuses_a_resolution(
    routing: Routing, settings: routing_pb2.KeySettings
) -> None:
    _, key = await new_key(routing, settings)

    answer = await routing.call("Resolve", chat(key))

    assert answer.reuse_for_ms == 0


# -- RoutingClient ----------------------------------------------------------------


async def test_the_client_answers_from_a_reusable_resolution_until_it_lapses(
    routing: Routing, client_clock: tuple[RoutingClient, FakeClock]
) -> None:
    client, clock = client_clock
    _, key = await new_key(routing)
    calls = served("Resolve")

    first = await client.resolve(chat(key), request_id=rid())
    assert served("Resolve") == calls + 1 and first.reuse_for_ms > 0

    clock.now += (first.reuse_for_ms // 2 - 1) / 1000  # within the first half: no renewal
    bigger = chat(key, estimated_prompt_tokens=1_000, output_tokens_cap=100)
    reused = await client.resolve(bigger)
    assert served("Resolve") == calls + 1
    assert reused.principal == first.principal and reused.route == first.route
    assert reused.lease_id == ""
    # The worst case is the new request's, as routing itself answers it.
    assert reused.worst_case_micros == (await routing.call("Resolve", bigger)).worst_case_micros
    assert reused.worst_case_micros != first.worst_case_micros

    calls = served("Resolve")
    clock.now += (first.reuse_for_ms - first.reuse_for_ms // 2 + 1) / 1000  # lapsed
    await client.resolve(chat(key))
    assert served("Resolve") == calls + 1


async def resolved_then_revoked(
    routing: Routing, operator: Routing, client: RoutingClient
) -> tuple[str, routing_pb2.ResolveResponse]:
    """A new key, resolved once by the client (a reusable answer kept), then revoked."""
    account, key = await new_key(routing)
    first = await client.resolve(chat(key))
    await operator.call(
        "RevokeApiKey",
        routing_pb2.RevokeApiKeyRequest(account_id=account, key_id=first.principal.key_id),
    )
    return key, first


async def renewals_done(client: RoutingClient) -> None:
    while client._renewals:  # noqa: SLF001 - the background renewals of this test
        await asyncio.gather(*client._renewals)  # noqa: SLF001


async def test_a_reuse_past_half_its_time_renews_the_answer_in_the_background(
    routing: Routing, client_clock: tuple[RoutingClient, FakeClock]
) -> None:
    client, clock = client_clock
    _, key = await new_key(routing)
    first = await client.resolve(chat(key))
    calls = served("Resolve")

    clock.now += (first.reuse_for_ms // 2 + 1) / 1000
    reused = await client.resolve(chat(key))  # answered at once from the kept answer
    assert reused.principal == first.principal
    again = await client.resolve(chat(key))  # a renewal under way is not asked twice
    assert again.principal == first.principal
    await renewals_done(client)
    assert served("Resolve") == calls + 1

    # The renewed answer lasts its own full time from the renewal: past the first
    # answer's end, no request waits for routing.
    clock.now += (first.reuse_for_ms // 2 + 1) / 1000
    assert (await client.resolve(chat(key))).principal == first.principal
    assert served("Resolve") == calls + 1


async def test_a_refused_renewal_drops_the_kept_answer_at_once(
    routing: Routing,
    routing_operator: Routing,
    client_clock: tuple[RoutingClient, FakeClock],
) -> None:
    client, clock = client_clock
    key, first = await resolved_then_revoked(routing, routing_operator, client)
    clock.now += (first.reuse_for_ms // 2 + 1) / 1000
    await client.resolve(chat(key))  # still within the bound: answered, and renews
    await renewals_done(client)

    # Before the kept answer would have lapsed, the revocation is already seen.
    error = await refusal(client.resolve(chat(key)))
    assert error.reason is Reason.UNKNOWN_API_KEY


async def test_when_a_reusable_answer_lapses_one_request_asks_routing_for_all_waiting(
    routing: Routing, client_clock: tuple[RoutingClient, FakeClock]
) -> None:
    client, clock = client_clock
    _, key = await new_key(routing)
    first = await client.resolve(chat(key))
    clock.now += first.reuse_for_ms / 1000  # lapsed
    calls = served("Resolve")

    answers = await asyncio.gather(*(client.resolve(chat(key)) for _ in range(10)))

    assert served("Resolve") == calls + 1
    assert {a.principal.key_id for a in answers} == {first.principal.key_id}
    assert all(a.route == first.route for a in answers)


async def test_a_refused_refresh_leaves_each_waiting_request_to_ask_for_itself(
    routing: Routing,
    routing_operator: Routing,
    client_clock: tuple[RoutingClient, FakeClock],
) -> None:
    client, clock = client_clock
    key, first = await resolved_then_revoked(routing, routing_operator, client)
    clock.now += first.reuse_for_ms / 1000  # lapsed
    refused = served("Resolve", "UNAUTHENTICATED")

    outcomes = await asyncio.gather(
        *(client.resolve(chat(key)) for _ in range(5)), return_exceptions=True
    )

    assert all(isinstance(o, DomainError) for o in outcomes)
    assert {o.reason for o in outcomes if isinstance(o, DomainError)} == {Reason.UNKNOWN_API_KEY}
    assert served("Resolve", "UNAUTHENTICATED") == refused + 5  # no refusal shared or kept


async def test_the_client_never_reuses_a_preview_a_counting_key_or_another_client_ip(
    routing: Routing, client_clock: tuple[RoutingClient, FakeClock]
) -> None:
    client, _ = client_clock
    _, plain = await new_key(routing)
    _, counting = await new_key(routing, routing_pb2.KeySettings(requests_per_minute=1_000))
    await client.resolve(chat(plain))
    calls = served("Resolve")

    await client.resolve(chat(plain, preview=True))
    await client.resolve(chat(plain, preview=True))
    await client.resolve(chat(plain, client_ip="198.51.100.8"))
    await client.resolve(chat(counting))
    await client.resolve(chat(counting))

    assert served("Resolve") == calls + 5


async def test_a_revoked_key_is_refused_again_once_the_client_forgets_it(
    routing: Routing,
    routing_operator: Routing,
    client_clock: tuple[RoutingClient, FakeClock],
) -> None:
    client, _ = client_clock
    account, key = await new_key(routing)
    key_id = (await client.resolve(chat(key))).principal.key_id

    await routing_operator.call(
        "RevokeApiKey", routing_pb2.RevokeApiKeyRequest(account_id=account, key_id=key_id)
    )
    # Within the bound, the reusable answer still stands...
    assert (await client.resolve(chat(key))).principal.key_id == key_id
    client.forget_key(key_id)

    # ...until the gateway that revoked the key tells its client; refusals are not kept.
    calls = served("Resolve")
    for _ in range(2):
        error = await refusal(client.resolve(chat(key)))
        assert error.reason is Reason.UNKNOWN_API_KEY
    assert served("Resolve") == calls


async def test_a_failed_attempt_drops_the_reusable_answers_through_its_channel(
    routing: Routing, client_clock: tuple[RoutingClient, FakeClock]
) -> None:
    client, _ = client_clock
    _, key = await new_key(routing)
    first = await client.resolve(chat(key))
    channel = first.route.channels[0].channel_id

    def report(outcome: str) -> routing_pb2.ReportOutcomeRequest:
        attempt = routing_pb2.AttemptReport(channel_id=channel, outcome=outcome, latency_ms=5)
        return routing_pb2.ReportOutcomeRequest(request_id=rid(), attempts=[attempt])

    client.report_outcome(report("ok"))
    await client.resolve(chat(key))
    calls = served("Resolve")
    client.report_outcome(report("http_503"))
    client.report_outcome(report("ok"))  # the channel is well again: its breaker stays closed
    await client.drain()

    await client.resolve(chat(key))
    assert served("Resolve") == calls + 1


async def test_client_reports_under_load_leave_in_batches_and_count_each_request_once(
    routing: Routing,
    routing_engine: AsyncEngine,
    client_clock: tuple[RoutingClient, FakeClock],
) -> None:
    client, _ = client_clock
    _, key = await new_key(routing)
    key_id = (await client.resolve(chat(key))).principal.key_id
    ids = [rid() for _ in range(40)]
    singles, batches = served("ReportOutcome"), served("ReportOutcomes")

    for request_id in [*ids, ids[0], ids[1]]:  # two reports sent twice
        client.report_outcome(charged(request_id, key_id, 3))
    await client.drain()

    assert await spent_in_total(routing_engine, key_id) == 40 * 3
    assert served("ReportOutcomes") > batches
    assert served("ReportOutcome") - singles + served("ReportOutcomes") - batches < 42
    assert client.reports.batched_items > 0


async def test_settled_reports_linger_to_travel_together_and_the_rest_go_at_once(
    routing: Routing, routing_engine: AsyncEngine, routing_app: RunningService
) -> None:
    """At low load too: reports on reusable answers wait for company (one call for
    several requests); a failure, a lease or an unsettled answer's report does not."""
    client = RoutingClient(Peer("routing", routing_app.address, INTERNAL), report_linger_s=1.0)
    try:
        _, key = await new_key(routing)
        answer = await client.resolve(chat(key))
        assert answer.reuse_for_ms > 0
        key_id = answer.principal.key_id
        ids = [rid() for _ in range(3)]
        singles, batches = served("ReportOutcome"), served("ReportOutcomes")

        for request_id in ids:
            client.report_outcome(charged(request_id, key_id, 5), settled=True)
            await asyncio.sleep(0.01)  # one after another, as at concurrency 1
        failure = routing_pb2.ReportOutcomeRequest(
            request_id=rid(),
            attempts=[routing_pb2.AttemptReport(channel_id="mock", outcome="http_503")],
        )
        client.report_outcome(failure, settled=True)
        client.report_outcome(charged(rid(), key_id, 7))  # not settled: at once
        await asyncio.sleep(0.05)  # far below the linger: a stalled loop still passes
        assert client.settled_reports.calls == 0  # still lingering
        await client.drain()

        assert client.reports.calls == 2  # the failure and the unsettled one, each alone
        assert client.settled_reports.calls == 1 and client.settled_reports.batched_items == 3
        assert served("ReportOutcomes") == batches + 1
        assert served("ReportOutcome") == singles + 2
        assert await spent_in_total(routing_engine, key_id) == 3 * 5 + 7
    finally:
        await client.close()

"""Stripe top-ups against a local fake of the Stripe API, on the real PostgreSQL and
NATS: Checkout Sessions opened through the `stripe` library, webhooks verified from
the raw body, each Stripe event processed once, paid sessions re-read from Stripe."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.payments import app, handlers
from services.payments.adapters.stripe_checkout import StripeSettings
from services.payments.storage.tables import outbox, provider_events
from services.payments.storage.unit_of_work import UnitOfWork
from tests.integration.payments.fake_stripe import FakeStripe, sign
from tokenforge.config import Settings
from tokenforge.errors import DomainError, Reason
from tokenforge.generated.payments.v1 import payments_pb2, payments_pb2_grpc
from tokenforge.runtime.grpc_client import Peer
from tokenforge.runtime.service import RunningService

NEW_SECRET = "whsec_new_" + uuid.uuid4().hex
OLD_SECRET = "whsec_old_" + uuid.uuid4().hex
MakeRequest = Callable[..., payments_pb2.CreateTopUpRequest]


@pytest.fixture(scope="module")
def fake_stripe() -> Iterator[FakeStripe]:
    fake = FakeStripe().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
async def stripe_service(
    payments_migrated: str, nats_urls: dict[str, str], fake_stripe: FakeStripe
) -> AsyncIterator[RunningService]:
    running = await app.start(
        Settings(
            database_url=payments_migrated,
            nats_url=nats_urls["payments"],
            internal_token="t-internal",
            admin_token="t-admin",
        ),
        port=0,
        stripe=StripeSettings(
            api_key="sk_test_fake",
            webhook_secrets=(NEW_SECRET, OLD_SECRET),
            api_base=fake_stripe.url,
        ),
    )
    yield running
    await running.stop()


@pytest.fixture(scope="module")
async def peer(stripe_service: RunningService) -> AsyncIterator[Peer]:
    p = Peer("payments", stripe_service.address, "t-internal")
    yield p
    await p.close()


@pytest.fixture(scope="module")
def stub(peer: Peer) -> payments_pb2_grpc.PaymentsServiceStub:
    return payments_pb2_grpc.PaymentsServiceStub(peer.channel)


class Stripe:
    """Open card orders and deliver signed webhooks to the service."""

    def __init__(
        self, peer: Peer, stub: payments_pb2_grpc.PaymentsServiceStub, fake: FakeStripe
    ) -> None:
        self.peer, self.stub, self.fake = peer, stub, fake

    async def open(self, request: payments_pb2.CreateTopUpRequest) -> payments_pb2.TopUp:
        answer = await self.peer.call(self.stub.CreateTopUp, request)
        return answer.top_up

    async def deliver(
        self, body: bytes, signature: str | None = None
    ) -> payments_pb2.HandleProviderEventResponse:
        headers = {
            "Stripe-Signature": signature if signature is not None else sign(body, NEW_SECRET)
        }
        return await self.peer.call(
            self.stub.HandleProviderEvent,
            payments_pb2.HandleProviderEventRequest(provider="stripe", body=body, headers=headers),
        )

    async def get(self, top_up: payments_pb2.TopUp) -> payments_pb2.TopUp:
        answer = await self.peer.call(
            self.stub.GetTopUp,
            payments_pb2.GetTopUpRequest(account_id=top_up.account_id, order_id=top_up.order_id),
        )
        return answer.top_up


@pytest.fixture
def stripe_api(
    peer: Peer, stub: payments_pb2_grpc.PaymentsServiceStub, fake_stripe: FakeStripe
) -> Stripe:
    return Stripe(peer, stub, fake_stripe)


async def outbox_count(engine: AsyncEngine, order_id: str) -> int:
    async with engine.connect() as conn:
        return int(
            (
                await conn.execute(
                    select(func.count()).select_from(outbox).where(outbox.c.order_id == order_id)
                )
            ).scalar_one()
        )


def stripe_request(
    create_request: MakeRequest, account_id: str, **overrides: object
) -> payments_pb2.CreateTopUpRequest:
    return create_request(account_id, provider="stripe", **overrides)


async def test_a_card_order_opens_a_checkout_session_with_the_order_in_its_metadata(
    stripe_api: Stripe, create_request: MakeRequest, account_id: str
) -> None:
    top_up = await stripe_api.open(stripe_request(create_request, account_id, currency="EUR"))

    session = stripe_api.fake.sessions[top_up.provider_reference]
    assert top_up.status == payments_pb2.TOP_UP_STATUS_PENDING
    assert top_up.checkout_url == session["url"]
    assert session["metadata"]["order_id"] == top_up.order_id
    assert (session["amount_total"], session["currency"]) == (2500, "eur")
    assert top_up.received_micros == 2500 * 10_800


async def test_a_retried_create_opens_one_session_and_one_order(
    stripe_api: Stripe, create_request: MakeRequest, account_id: str
) -> None:
    request = stripe_request(create_request, account_id)
    first = await stripe_api.open(request)
    again = await stripe_api.peer.call(stripe_api.stub.CreateTopUp, request)

    assert again.replayed and again.top_up.order_id == first.order_id
    assert again.top_up.provider_reference == first.provider_reference


async def test_a_paid_webhook_re_reads_the_session_and_marks_the_order_paid_once(
    stripe_api: Stripe, create_request: MakeRequest, account_id: str, payments_db: AsyncEngine
) -> None:
    top_up = await stripe_api.open(stripe_request(create_request, account_id))
    stripe_api.fake.pay(top_up.provider_reference, payment_intent="pi_" + uuid.uuid4().hex)
    body = stripe_api.fake.event(top_up.provider_reference)
    reads_before = stripe_api.fake.requests.count(
        ("GET", f"/v1/checkout/sessions/{top_up.provider_reference}")
    )

    first = await stripe_api.deliver(body)
    again = await stripe_api.deliver(body)

    paid = await stripe_api.get(top_up)
    assert first.outcome == payments_pb2.PROVIDER_EVENT_OUTCOME_ACCEPTED
    assert again.outcome == payments_pb2.PROVIDER_EVENT_OUTCOME_DUPLICATE
    assert paid.status == payments_pb2.TOP_UP_STATUS_SUCCEEDED
    assert paid.provider_transaction_id.startswith("pi_")
    assert (
        stripe_api.fake.requests.count(
            ("GET", f"/v1/checkout/sessions/{top_up.provider_reference}")
        )
        == reads_before + 1
    )
    assert await outbox_count(payments_db, top_up.order_id) == 1


async def test_a_completed_event_whose_session_stripe_says_is_unpaid_changes_nothing(
    stripe_api: Stripe, create_request: MakeRequest, account_id: str
) -> None:
    top_up = await stripe_api.open(stripe_request(create_request, account_id))
    # The webhook claims "paid", but Stripe, asked again, says the session is unpaid.
    claimed = {**stripe_api.fake.sessions[top_up.provider_reference], "payment_status": "paid"}
    body = stripe_api.fake.event(top_up.provider_reference, snapshot=claimed)

    answer = await stripe_api.deliver(body)

    assert answer.outcome == payments_pb2.PROVIDER_EVENT_OUTCOME_IGNORED
    assert (await stripe_api.get(top_up)).status == payments_pb2.TOP_UP_STATUS_PENDING


@pytest.mark.parametrize(
    ("amount", "currency"), [(2499, None), (2500, "eur")], ids=["amount", "currency"]
)
async def test_a_payment_that_disagrees_with_the_order_goes_to_review_not_to_a_credit(
    stripe_api: Stripe,
    create_request: MakeRequest,
    account_id: str,
    amount: int,
    currency: str | None,
) -> None:
    top_up = await stripe_api.open(stripe_request(create_request, account_id))
    stripe_api.fake.pay(top_up.provider_reference, amount_total=amount, currency=currency)

    await stripe_api.deliver(stripe_api.fake.event(top_up.provider_reference))

    reviewed = await stripe_api.get(top_up)
    assert reviewed.status == payments_pb2.TOP_UP_STATUS_AWAITING_REVIEW
    assert "needs review" in reviewed.transitions[-1].reason


async def test_one_payment_intent_pays_one_order_only(
    stripe_api: Stripe, create_request: MakeRequest, account_id: str
) -> None:
    first = await stripe_api.open(stripe_request(create_request, account_id))
    second = await stripe_api.open(stripe_request(create_request, account_id))
    intent = "pi_" + uuid.uuid4().hex
    stripe_api.fake.pay(first.provider_reference, payment_intent=intent)
    stripe_api.fake.pay(second.provider_reference, payment_intent=intent)

    await stripe_api.deliver(stripe_api.fake.event(first.provider_reference))
    answer = await stripe_api.deliver(stripe_api.fake.event(second.provider_reference))

    assert answer.outcome == payments_pb2.PROVIDER_EVENT_OUTCOME_IGNORED
    assert (await stripe_api.get(first)).status == payments_pb2.TOP_UP_STATUS_SUCCEEDED
    assert (await stripe_api.get(second)).status == payments_pb2.TOP_UP_STATUS_PENDING


async def test_an_event_signed_with_the_previous_secret_is_accepted_during_rotation(
    stripe_api: Stripe, create_request: MakeRequest, account_id: str
) -> None:
    top_up = await stripe_api.open(stripe_request(create_request, account_id))
    stripe_api.fake.pay(top_up.provider_reference)
    body = stripe_api.fake.event(top_up.provider_reference)

    answer = await stripe_api.deliver(body, sign(body, OLD_SECRET))

    assert answer.outcome == payments_pb2.PROVIDER_EVENT_OUTCOME_ACCEPTED


def _forged(body: bytes) -> str:
    return sign(body, "whsec_someone_else")


def _replayed(body: bytes) -> str:
    # A real signature of another body (an earlier event), sent with this body.
    return sign(
        body.replace(b"checkout.session.completed", b"checkout.session.expired"), NEW_SECRET
    )


def _stale(body: bytes) -> str:
    return sign(body, NEW_SECRET, int(time.time()) - 301)


def _future(body: bytes) -> str:
    return sign(body, NEW_SECRET, int(time.time()) + 301)


@pytest.mark.parametrize(
    ("signature", "words"),
    [
        (_forged, "matches none"),
        (_replayed, "matches none"),
        (_stale, "old"),
        (_future, "future"),
        (lambda body: "", "no Stripe-Signature"),
    ],
    ids=["forged", "replayed-signature", "stale", "future-dated", "unsigned"],
)
async def test_a_webhook_that_fails_verification_is_refused_and_changes_nothing(
    stripe_api: Stripe,
    create_request: MakeRequest,
    account_id: str,
    payments_db: AsyncEngine,
    signature: Callable[[bytes], str],
    words: str,
) -> None:
    top_up = await stripe_api.open(stripe_request(create_request, account_id))
    stripe_api.fake.pay(top_up.provider_reference)
    event_id = "evt_" + uuid.uuid4().hex
    body = stripe_api.fake.event(top_up.provider_reference, event_id=event_id)

    with pytest.raises(DomainError) as refused:
        await stripe_api.deliver(body, signature(body))

    assert refused.value.reason is Reason.INVALID_ARGUMENT
    assert words in refused.value.message
    assert (await stripe_api.get(top_up)).status == payments_pb2.TOP_UP_STATUS_PENDING
    assert await outbox_count(payments_db, top_up.order_id) == 0
    async with payments_db.connect() as conn:
        recorded = (
            await conn.execute(
                select(provider_events).where(provider_events.c.event_id == event_id)
            )
        ).all()
    assert recorded == []
    # The same event, properly signed, still goes through afterwards: nothing was burnt.
    assert (await stripe_api.deliver(body)).outcome == payments_pb2.PROVIDER_EVENT_OUTCOME_ACCEPTED


async def test_a_paid_webhook_after_the_order_expired_goes_to_review(
    stripe_api: Stripe,
    create_request: MakeRequest,
    account_id: str,
    payments_uow: Callable[[], UnitOfWork],
) -> None:
    top_up = await stripe_api.open(stripe_request(create_request, account_id))
    await handlers.expire_due_orders(payments_uow(), now=top_up.expires_at.ToDatetime(UTC))
    stripe_api.fake.pay(top_up.provider_reference)

    await stripe_api.deliver(stripe_api.fake.event(top_up.provider_reference))

    late = await stripe_api.get(top_up)
    assert [t.to_status for t in late.transitions] == [
        payments_pb2.TOP_UP_STATUS_EXPIRED,
        payments_pb2.TOP_UP_STATUS_AWAITING_REVIEW,
    ]


async def test_an_expired_session_event_expires_the_pending_order(
    stripe_api: Stripe, create_request: MakeRequest, account_id: str
) -> None:
    top_up = await stripe_api.open(stripe_request(create_request, account_id))

    await stripe_api.deliver(
        stripe_api.fake.event(top_up.provider_reference, "checkout.session.expired")
    )

    assert (await stripe_api.get(top_up)).status == payments_pb2.TOP_UP_STATUS_EXPIRED


async def test_webhooks_for_a_provider_without_webhooks_are_not_found(stripe_api: Stripe) -> None:
    with pytest.raises(DomainError) as refused:
        await stripe_api.peer.call(
            stripe_api.stub.HandleProviderEvent,
            payments_pb2.HandleProviderEventRequest(provider="paypal", body=b"{}"),
        )
    assert refused.value.reason is Reason.NOT_FOUND


async def test_canceling_a_card_order_closes_its_checkout_page_once(
    stripe_api: Stripe, create_request: MakeRequest, account_id: str
) -> None:
    """After a cancel, Stripe's page takes no payment for it (the session is expired);
    a second cancel changes nothing and asks Stripe nothing."""
    top_up = await stripe_api.open(stripe_request(create_request, account_id))
    expire = ("POST", f"/v1/checkout/sessions/{top_up.provider_reference}/expire")
    cancel = payments_pb2.CancelTopUpRequest(account_id=account_id, order_id=top_up.order_id)

    first = await stripe_api.peer.call(stripe_api.stub.CancelTopUp, cancel)
    again = await stripe_api.peer.call(stripe_api.stub.CancelTopUp, cancel)

    assert first.top_up.status == again.top_up.status == payments_pb2.TOP_UP_STATUS_CANCELED
    assert stripe_api.fake.sessions[top_up.provider_reference]["status"] == "expired"
    assert stripe_api.fake.requests.count(expire) == 1
    # Stripe then tells us the session expired: the canceled order stays canceled.
    await stripe_api.deliver(
        stripe_api.fake.event(top_up.provider_reference, "checkout.session.expired")
    )
    assert (await stripe_api.get(top_up)).status == payments_pb2.TOP_UP_STATUS_CANCELED


async def test_a_cancel_stands_when_stripe_cannot_close_the_page(
    stripe_api: Stripe, create_request: MakeRequest, account_id: str
) -> None:
    top_up = await stripe_api.open(stripe_request(create_request, account_id))
    del stripe_api.fake.sessions[top_up.provider_reference]  # Stripe answers 404
    cancel = payments_pb2.CancelTopUpRequest(account_id=account_id, order_id=top_up.order_id)

    answer = await stripe_api.peer.call(stripe_api.stub.CancelTopUp, cancel)

    assert answer.top_up.status == payments_pb2.TOP_UP_STATUS_CANCELED
    assert (await stripe_api.get(top_up)).status == payments_pb2.TOP_UP_STATUS_CANCELED

"""Which providers a deployment offers: test money (the sandbox) only where it is on."""

from __future__ import annotations

import pytest

from services.payments import handlers
from services.payments.domain import commands
from services.payments.domain.providers import ProvidersOn
from tests.unit.payments.fakes import FakeUnitOfWork
from tokenforge.errors import DomainError, Reason
from tokenforge.money import Bucket

DEFAULT = ProvidersOn.configured(sandbox=False, card=False)
DEV = ProvidersOn.configured(sandbox=True, card=False)
CARDS = ProvidersOn.configured(sandbox=False, card=True)


def test_by_default_only_bank_transfers_are_offered() -> None:
    assert DEFAULT.names == {"manual_transfer"}
    assert CARDS.names == {"manual_transfer", "stripe"}
    assert DEV.names == {"manual_transfer", "sandbox"}


def test_the_sandbox_where_it_is_off_is_refused_naming_the_providers_that_are_on() -> None:
    with pytest.raises(DomainError) as refused:
        CARDS.choose("sandbox")

    assert refused.value.reason is Reason.PROVIDER_NOT_ALLOWED
    assert "not offered on this deployment" in refused.value.message
    assert "`manual_transfer`, `stripe`" in refused.value.message
    assert refused.value.metadata == {"provider": "sandbox", "available": "manual_transfer,stripe"}


def test_an_order_naming_no_provider_gets_the_sandbox_only_where_it_is_on() -> None:
    assert DEV.choose("").name == "sandbox"
    with pytest.raises(DomainError) as refused:
        DEFAULT.choose("")

    assert refused.value.reason is Reason.INVALID_ARGUMENT
    assert refused.value.metadata["param"] == "provider"
    assert "`manual_transfer`" in refused.value.message


def test_an_unknown_provider_is_still_named_as_unknown() -> None:
    with pytest.raises(DomainError) as refused:
        DEV.choose("paypal")

    assert refused.value.reason is Reason.PROVIDER_NOT_ALLOWED
    assert "Unknown payment provider 'paypal'" in refused.value.message


async def test_where_the_sandbox_is_off_no_order_opens_and_none_is_paid() -> None:
    uow = FakeUnitOfWork()
    order = await handlers.create_top_up(
        commands.CreateTopUp("acct-1", Bucket.CREDIT, "sandbox", 500, "USD", "k1"),
        uow,
        providers=DEV,
    )

    with pytest.raises(DomainError) as opened:
        await handlers.create_top_up(
            commands.CreateTopUp("acct-1", Bucket.CREDIT, "sandbox", 500, "USD", "k2"),
            uow,
            providers=DEFAULT,
        )
    with pytest.raises(DomainError) as paid:
        await handlers.simulate_sandbox_outcome(
            commands.SimulateSandboxOutcome("acct-1", order.order_id, commands.SandboxOutcome.PAY),
            uow,
            providers=DEFAULT,
        )

    assert opened.value.reason is Reason.PROVIDER_NOT_ALLOWED
    assert paid.value.reason is Reason.NOT_FOUND
    assert "off on this deployment" in paid.value.message
    assert len(uow.orders.rows) == 1
    assert next(iter(uow.orders.rows.values())).status.value == "pending"

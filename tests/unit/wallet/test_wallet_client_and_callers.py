"""The wallet client's retries, per-caller credentials and the wallet's policy,
and the consumer's dead-lettering, without a network."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from services.wallet.app import POLICY
from services.wallet.client import WalletClient
from services.wallet.transport.nats_consumer import (
    DEADLETTER_SUBJECT,
    REASON_HEADER,
    TopUpConsumer,
)
from tokenforge.config import Settings, parse_caller_tokens
from tokenforge.errors import DomainError, Reason
from tokenforge.money import Bucket
from tokenforge.runtime.grpc_server import Caller, Credentials, Role


class FlakyPeer:
    """Answers SERVICE_UNAVAILABLE `failures` times, then `answer`."""

    def __init__(self, failures: int, answer: Any = None, error: DomainError | None = None):
        self.failures = failures
        self.answer = answer
        self.error = error
        self.calls = 0
        # A stub needs a channel; this one is never connected (calls go to `call`).
        self.channel = grpc.aio.insecure_channel("127.0.0.1:9")

    async def call(self, method: Any, request: Any, **kw: Any) -> Any:
        self.calls += 1
        if self.calls <= self.failures:
            raise DomainError(Reason.SERVICE_UNAVAILABLE, "down", {"service": "wallet"})
        if self.error is not None:
            raise self.error
        return self.answer


@dataclass
class Answer:
    hold: str = "the hold"


def client(peer: FlakyPeer, attempts: int = 3) -> tuple[WalletClient, list[float]]:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    return WalletClient(peer, attempts=attempts, sleep=sleep), slept  # type: ignore[arg-type]


async def test_the_client_retries_an_unavailable_wallet_with_backoff() -> None:
    peer = FlakyPeer(failures=2, answer=Answer())
    wallet, slept = client(peer)
    assert await wallet.hold("acct-1", Bucket.CREDIT, 10, "req-1") == "the hold"
    assert peer.calls == 3
    assert len(slept) == 2 and slept[1] > slept[0] * 1.0 - 1e-9


async def test_the_client_retries_a_part_on_an_unavailable_wallet() -> None:
    # Idempotent by (hold, request id): a part is retried like a settle.
    peer = FlakyPeer(failures=2, answer=Answer())
    wallet, slept = client(peer)
    answer = await wallet.capture_part("hold-1", 10, "req-1", account_id="acct-1")
    assert answer == Answer()
    assert peer.calls == 3 and len(slept) == 2


async def test_the_client_gives_up_after_its_attempts() -> None:
    peer = FlakyPeer(failures=5, answer=Answer())
    wallet, _ = client(peer, attempts=3)
    with pytest.raises(DomainError) as caught:
        await wallet.release("hold-1")
    assert caught.value.reason is Reason.SERVICE_UNAVAILABLE
    assert peer.calls == 3


async def test_the_client_never_retries_a_refusal() -> None:
    refusal = DomainError(Reason.INSUFFICIENT_BALANCE, "too low", {"bucket": "credit"})
    peer = FlakyPeer(failures=0, error=refusal)
    wallet, slept = client(peer)
    with pytest.raises(DomainError) as caught:
        await wallet.hold("acct-1", Bucket.CREDIT, 10, "req-1")
    assert caught.value is refusal
    assert (peer.calls, slept) == (1, [])


def test_credentials_name_each_caller_and_keep_the_shared_tokens() -> None:
    creds = Credentials("t-int", "t-adm", {"gateway": "t-gw", "payments": "t-pay"})
    assert creds.identify("t-gw") == Caller(Role.INTERNAL, "gateway")
    assert creds.identify("t-pay") == Caller(Role.INTERNAL, "payments")
    assert creds.identify("t-int") == Caller(Role.INTERNAL, "internal")
    assert creds.identify("t-adm") == Caller(Role.OPERATOR, "operator")
    assert creds.identify("nope") is None
    assert creds.role_of("t-gw") is Role.INTERNAL


def test_settings_read_caller_tokens_and_the_service_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TOKENFORGE_CALLER_TOKENS", "gateway=a, payments=b")
    monkeypatch.setenv("TOKENFORGE_INTERNAL_TOKEN", "shared")
    monkeypatch.delenv("TOKENFORGE_SERVICE_TOKEN", raising=False)
    settings = Settings.from_env()
    assert settings.caller_tokens == {"gateway": "a", "payments": "b"}
    assert settings.service_token == settings.peer_token == "shared"
    assert Settings(internal_token="i", service_token="s").peer_token == "s"
    assert Settings(internal_token="i").peer_token == "i"
    with pytest.raises(ValueError, match="name=token"):
        parse_caller_tokens("gateway")
    assert Credentials.from_settings(Settings()) is None


@pytest.mark.parametrize(
    ("method", "allowed"),
    [
        ("Hold", {"gateway", "internal", "operator"}),
        ("HoldMany", {"gateway", "internal", "operator"}),
        ("Settle", {"gateway", "internal", "operator"}),
        ("SettleMany", {"gateway", "internal", "operator"}),
        ("CapturePart", {"gateway", "internal", "operator"}),
        ("CapturePartMany", {"gateway", "internal", "operator"}),
        ("Release", {"gateway", "internal", "operator"}),
        ("ReleaseMany", {"gateway", "internal", "operator"}),
        ("ExtendHold", {"gateway", "internal", "operator"}),
        ("Credit", {"internal"}),
        ("Adjust", {"operator"}),
        ("Reverse", {"operator"}),
        ("Reconcile", {"operator"}),
        ("GetBalances", {"gateway", "payments", "usage", "internal", "operator"}),
        ("ListLedger", {"gateway", "payments", "usage", "internal", "operator"}),
        ("ListHolds", {"gateway", "payments", "usage", "internal", "operator"}),
    ],
)
def test_the_wallet_policy_names_who_may_call_what(method: str, allowed: set[str]) -> None:
    callers = [
        Caller(Role.INTERNAL, "gateway"),
        Caller(Role.INTERNAL, "payments"),
        Caller(Role.INTERNAL, "usage"),
        Caller(Role.INTERNAL, "internal"),
        Caller(Role.OPERATOR, "operator"),
    ]
    full = f"/tokenforge.wallet.v1.WalletService/{method}"
    assert {c.name for c in callers if POLICY.allows(full, c)} == allowed


@dataclass
class FakeJetStream:
    published: list[tuple[str, bytes, dict[str, str]]] = field(default_factory=list)
    fail: bool = False

    async def publish(self, subject: str, data: bytes, headers: dict[str, str]) -> None:
        if self.fail:
            raise ConnectionError("nats down")
        self.published.append((subject, data, headers))


@dataclass
class Msg:
    data: bytes = b"\x0a\x05ab"
    subject: str = "tokenforge.payments.v1.topup.succeeded"
    headers: dict[str, str] | None = None
    outcome: list[str] = field(default_factory=list)

    async def ack(self) -> None:
        self.outcome.append("ack")

    async def term(self) -> None:
        self.outcome.append("term")

    async def nak(self, delay: float | None = None) -> None:
        self.outcome.append("nak")


async def test_a_poison_message_is_copied_to_the_dead_letter_subject_then_terminated() -> None:
    consumer = TopUpConsumer(None, lambda: None, None)  # type: ignore[arg-type,return-value]
    consumer._js = js = FakeJetStream()  # type: ignore[assignment]
    msg = Msg()
    await consumer.handle(msg)  # type: ignore[arg-type]
    assert msg.outcome == ["term"]
    [(subject, data, headers)] = js.published
    assert (subject, data) == (DEADLETTER_SUBJECT, msg.data)
    assert headers[REASON_HEADER].startswith("poison: not a TopUpEvent")


async def test_a_message_that_can_not_be_dead_lettered_is_not_lost() -> None:
    consumer = TopUpConsumer(None, lambda: None, None)  # type: ignore[arg-type,return-value]
    consumer._js = FakeJetStream(fail=True)  # type: ignore[assignment]
    msg = Msg()
    await consumer.handle(msg)  # type: ignore[arg-type]
    assert msg.outcome == ["nak"]

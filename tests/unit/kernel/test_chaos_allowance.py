"""Which holds open at rest a chaos run leaves to their TTL (tests/e2e/chaos.py
`why_left`): the killed gateway replica's, placed before it died, and the Holds it had
sent that the wallet placed a moment after (of a request no answer names); never a
hold placed later, or one whose request was answered."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from tests.e2e.chaos import Fault, Struck, why_left
from tokenforge.generated.wallet.v1 import wallet_pb2

KILL = datetime(2026, 12, 3, 12, 22, 33, tzinfo=UTC).timestamp()
STRUCK = [Struck(Fault(0.68, "gateway", "kill"), 1, KILL, 3.4, True, 6400)]


def hold(placed_after_kill_s: float, request_id: str = "req_a") -> wallet_pb2.Hold:
    created = Timestamp()
    created.FromDatetime(datetime.fromtimestamp(KILL + placed_after_kill_s, UTC))
    return wallet_pb2.Hold(hold_id="h", request_id=request_id, created_at=created)


def test_the_killed_replicas_holds_are_left_to_their_ttl() -> None:
    assert why_left(STRUCK, hold(-10)) == "killed gateway replica"
    assert why_left(STRUCK, hold(0.01)).startswith("killed gateway replica (its Hold")


def test_a_hold_placed_later_or_of_an_answered_request_is_not() -> None:
    assert why_left(STRUCK, hold(0.01), frozenset({"req_a"})) == ""
    assert why_left(STRUCK, hold(5)) == ""
    assert why_left(STRUCK, hold(-60)) == ""
    wallet_kill = [Struck(Fault(0.2, "wallet", "kill"), 1, KILL, 3.0, True, 100)]
    assert why_left(wallet_kill, hold(-1)) == ""

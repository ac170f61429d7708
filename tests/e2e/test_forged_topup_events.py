"""Issue 17, "A forged NATS event mints money", tried again on the whole system: a
`topup.succeeded` event of 777 CR for an order that does not exist, and one for a
real paid order with another amount. With no credentials NATS refuses the client;
with the wallet's credentials NATS refuses the publish; with payments' credentials
the event reaches the wallet, which payments does not confirm: nothing is minted,
seen through the user's own `GET /v1/wallet`."""

from __future__ import annotations

import asyncio
import uuid
from urllib.parse import urlsplit

import nats
import pytest
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError

from services.wallet.transport.nats_consumer import DEADLETTER_STREAM, REASON_HEADER, SUBJECT
from tests.e2e.harness import System
from tokenforge.generated.common.v1 import common_pb2
from tokenforge.generated.payments.v1 import payments_pb2
from tokenforge.runtime import nats as tf_nats


def forged(account_id: str, order_id: str, micros: int) -> bytes:
    return payments_pb2.TopUpEvent(
        event_id=str(uuid.uuid4()),
        order_id=order_id,
        account_id=account_id,
        bucket=common_pb2.BUCKET_CREDIT,
        received_micros=micros,
        status=payments_pb2.TOP_UP_STATUS_SUCCEEDED,
    ).SerializeToString()


async def test_a_forged_topup_event_mints_nothing_whoever_publishes_it(
    system: System, nats_url: str, nats_urls: dict[str, str]
) -> None:
    account_id, key = await system.new_account(credit=0, routed=0)
    async with system.http(key) as http:
        opened = await http.post(
            "/v1/topups", json={"bucket": "credit", "provider": "sandbox", "amount": "1.00"}
        )
        paid = await http.post(
            f"/v1/topups/{opened.json()['order_id']}/sandbox", json={"outcome": "pay"}
        )
        assert paid.json()["status"] == "succeeded"

        async def credit_posted() -> int:
            wallet = (await http.get("/v1/wallet")).json()
            return next(b for b in wallet["balances"] if b["bucket"] == "credit")["posted"][
                "micros"
            ]

        for _ in range(100):  # the true event of the paid order lands: 1.00 CR
            if await credit_posted() == 1_000_000:
                break
            await asyncio.sleep(0.05)
        assert await credit_posted() == 1_000_000

        nowhere = forged(account_id, str(uuid.uuid4()), 777_000_000)
        too_much = forged(account_id, opened.json()["order_id"], 777_000_000)

        # 1. No credentials.
        parts = urlsplit(nats_url)
        with pytest.raises(NatsError, match="Authorization Violation"):
            await nats.connect(
                f"nats://{parts.hostname}:{parts.port}",
                allow_reconnect=False,
                max_reconnect_attempts=0,
                connect_timeout=2,
            )

        # 2. The wallet's credentials (the gateway, routing and usage have none at all).
        wallet_user = await tf_nats.connect(nats_urls["wallet"], "e2e-intruder")
        try:
            with pytest.raises(NatsTimeoutError):
                await wallet_user.jetstream().publish(SUBJECT, nowhere, timeout=1.0)
        finally:
            await wallet_user.close()

        # 3. Payments' credentials: the wallet asks payments, which confirms neither.
        operator = await tf_nats.connect(nats_url, "e2e-operator")
        payments_user = await tf_nats.connect(nats_urls["payments"], "e2e-forger")
        try:
            ops = operator.jetstream()
            first = (await ops.stream_info(DEADLETTER_STREAM)).state.last_seq + 1
            for payload in (nowhere, too_much):
                await payments_user.jetstream().publish(
                    SUBJECT, payload, headers={"Nats-Msg-Id": str(uuid.uuid4())}
                )
            reasons: dict[bytes, str] = {}
            for _ in range(200):
                last = (await ops.stream_info(DEADLETTER_STREAM)).state.last_seq
                for seq in range(first, last + 1):
                    copy = await ops.get_msg(DEADLETTER_STREAM, seq)
                    reasons[copy.data] = (copy.headers or {}).get(REASON_HEADER, "")
                if nowhere in reasons and too_much in reasons:
                    break
                await asyncio.sleep(0.05)
        finally:
            await payments_user.close()
            await operator.close()

        assert reasons[nowhere].startswith("unconfirmed: payments has no order")
        assert reasons[too_much].startswith("unconfirmed: payments does not confirm")
        assert await credit_posted() == 1_000_000  # the real 1.00 CR, nothing more

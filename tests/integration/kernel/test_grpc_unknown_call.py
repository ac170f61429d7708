"""A call the peer does not offer (it runs an older version) comes back as an error
that batching clients recognise, against a real gRPC server."""

from __future__ import annotations

import pytest

from tokenforge.errors import DomainError, Reason
from tokenforge.generated.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from tokenforge.runtime.batching import batch_call_unknown
from tokenforge.runtime.grpc_client import Peer
from tokenforge.runtime.grpc_server import create_server


async def test_a_method_the_server_does_not_offer_is_recognised_as_unknown() -> None:
    server = create_server([], port=0)  # health and reflection only: no wallet
    await server.server.start()
    peer = Peer("wallet", f"127.0.0.1:{server.port}", "")
    try:
        stub = wallet_pb2_grpc.WalletServiceStub(peer.channel)
        with pytest.raises(DomainError) as unknown:
            await peer.call(stub.HoldMany, wallet_pb2.HoldManyRequest())
        assert unknown.value.reason is Reason.INTERNAL
        assert batch_call_unknown(unknown.value)
        assert "older version" in unknown.value.message
    finally:
        await peer.close()
        await server.stop(grace=0.1)

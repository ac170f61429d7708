"""free_port() hands out ports that outgoing connections can not take meanwhile."""

from __future__ import annotations

import socket

from tokenforge.runtime.embedded import _ephemeral_low, free_port


def test_a_free_port_is_below_the_ephemeral_range_and_can_be_bound() -> None:
    for _ in range(20):
        port = free_port()
        assert 1024 <= port < _ephemeral_low()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_in_use_is_never_handed_out() -> None:
    held = []
    try:
        for _ in range(50):
            port = free_port()
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", port))
            sock.listen()
            held.append(sock)
        assert len({s.getsockname()[1] for s in held}) == 50
    finally:
        for sock in held:
            sock.close()

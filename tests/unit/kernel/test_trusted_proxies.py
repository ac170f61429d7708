"""TOKENFORGE_TRUSTED_PROXIES: the proxies whose X-Forwarded-For the gateway believes
(none by default); a malformed entry or `*` stops the start with the reason."""

from __future__ import annotations

import pytest

from tokenforge.config import Settings, parse_trusted_proxies


def test_no_proxy_is_trusted_unless_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOKENFORGE_TRUSTED_PROXIES", raising=False)
    assert Settings.from_env().trusted_proxies == ()

    monkeypatch.setenv("TOKENFORGE_TRUSTED_PROXIES", " 10.244.0.0/16, 192.0.2.7 ,, fd00::/8")
    assert Settings.from_env().trusted_proxies == ("10.244.0.0/16", "192.0.2.7", "fd00::/8")


@pytest.mark.parametrize("entry", ["*", "ingress.local", "10.0.0.0/33", "10.0.0.1:80"])
def test_anything_but_addresses_and_cidr_blocks_is_refused(entry: str) -> None:
    with pytest.raises(ValueError, match="TOKENFORGE_TRUSTED_PROXIES entry") as caught:
        parse_trusted_proxies(f"10.0.0.1,{entry}")
    assert repr(entry) in str(caught.value)

"""API key format: recognisable prefix, checksum that catches typos, digest-only storage."""

from __future__ import annotations

import hashlib
import re

from services.routing.domain import keys


def test_a_new_key_is_tf_then_32_base62_then_a_6_char_checksum() -> None:
    new = keys.generate_key()

    assert re.fullmatch(r"tf_[0-9A-Za-z]{38}", new.secret)
    assert new.secret[-6:] == keys.checksum(new.secret[3:35])
    assert keys.is_well_formed(new.secret)


def test_only_the_digest_and_an_8_char_prefix_are_kept() -> None:
    new = keys.generate_key()

    assert new.digest == hashlib.sha256(new.secret.encode()).hexdigest()
    assert new.prefix == new.secret[:8]
    assert new.secret not in (new.digest, new.prefix)
    assert keys.digest_matches(new.secret, new.digest)
    assert not keys.digest_matches(keys.generate_key().secret, new.digest)


def test_every_single_character_typo_fails_the_checksum() -> None:
    secret = keys.generate_key().secret
    for position in range(3, len(secret)):
        for replacement in "0aZ":
            if secret[position] != replacement:
                typo = secret[:position] + replacement + secret[position + 1 :]
                assert not keys.is_well_formed(typo), typo


def test_keys_of_another_shape_are_not_well_formed() -> None:
    secret = keys.generate_key().secret

    for other in (
        "",
        "tf_",
        secret[:-1],
        secret + "x",
        "sk" + secret[2:],
        secret.replace("tf_", "tf-"),
    ):
        assert not keys.is_well_formed(other)


def test_two_keys_are_never_the_same() -> None:
    assert len({keys.generate_key().secret for _ in range(200)}) == 200

"""API keys: how they look, how they are checked, and what is stored of them.

A key reads `tf_` + 32 random base62 characters + a 6-character checksum (base62 of
the CRC-32 of the random body). The `tf_` prefix makes a leaked key recognisable to
secret scanners; the checksum rejects a typo without a database lookup. Only the
SHA-256 digest of the whole key is stored; the key itself is shown once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
import zlib
from dataclasses import dataclass

KEY_PREFIX = "tf_"
BODY_LENGTH = 32
CHECKSUM_LENGTH = 6
KEY_LENGTH = len(KEY_PREFIX) + BODY_LENGTH + CHECKSUM_LENGTH
# What lists show of a key, enough to tell keys apart, useless to an attacker.
DISPLAY_PREFIX_LENGTH = 8

BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
_BASE62_SET = frozenset(BASE62)


@dataclass(frozen=True)
class NewKey:
    """A freshly made key: the secret (shown once), its digest and display prefix."""

    secret: str
    digest: str
    prefix: str


def _base62(number: int, width: int) -> str:
    chars: list[str] = []
    while number:
        number, rest = divmod(number, 62)
        chars.append(BASE62[rest])
    return "".join(reversed(chars)).rjust(width, BASE62[0])


def checksum(body: str) -> str:
    """Six base62 characters of the CRC-32 of the body (62**6 > 2**32, so it fits)."""
    return _base62(zlib.crc32(body.encode("ascii")), CHECKSUM_LENGTH)


def generate_key() -> NewKey:
    body = "".join(secrets.choice(BASE62) for _ in range(BODY_LENGTH))
    secret = f"{KEY_PREFIX}{body}{checksum(body)}"
    return NewKey(secret=secret, digest=digest_of(secret), prefix=display_prefix(secret))


def is_well_formed(key: str) -> bool:
    """True when the key has our shape and its checksum matches (no I/O)."""
    if len(key) != KEY_LENGTH or not key.startswith(KEY_PREFIX):
        return False
    rest = key[len(KEY_PREFIX) :]
    if not _BASE62_SET.issuperset(rest):
        return False
    body, check = rest[:BODY_LENGTH], rest[BODY_LENGTH:]
    return hmac.compare_digest(checksum(body), check)


def digest_of(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def display_prefix(key: str) -> str:
    return key[:DISPLAY_PREFIX_LENGTH]


def digest_matches(key: str, stored_digest: str) -> bool:
    """Constant-time comparison of a presented key against a stored digest."""
    return hmac.compare_digest(digest_of(key), stored_digest)

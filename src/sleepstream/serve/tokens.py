"""Access tokens: random, stored only as a hash, checked in constant time.

A token reads ``KEY.SECRET``: ``KEY`` names the stored record (it is not secret, and lets the
record be found without scanning), ``SECRET`` is 32 random bytes (:func:`secrets.token_urlsafe`).
The store keeps the SHA-256 of the secret, never the secret: tokens have 256 bits of entropy,
so a plain hash is enough (a slow password hash would only cost time on every request). The
comparison is :func:`hmac.compare_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from enum import StrEnum

KEY_BYTES = 9
SECRET_BYTES = 32
MAX_TOKEN_CHARS = 128
"""Longer ``Authorization`` values are refused before any work."""
_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


class Role(StrEnum):
    """What a token may do with its device, or its group."""

    DEVICE = "device"
    """Send batches, create viewer tokens, join and leave groups, read."""
    VIEWER = "viewer"
    """Read the device's state and subscribe to its events."""
    GROUP = "group"
    """Read the states of a group's members and subscribe to their events; nothing of any
    device on its own."""


@dataclass(frozen=True)
class Grant:
    """A stored token: who it is for and what it may do (the secret only as its hash).

    A device or viewer token names its device (``device_id``; ``group_id`` is empty); a group
    token (:attr:`Role.GROUP`) names its group (``group_id``; ``device_id`` is empty, so it
    is never any device's).
    """

    key: str
    secret_hash: bytes
    device_id: str
    role: Role
    created: float
    group_id: str = ""


@dataclass(frozen=True)
class NewToken:
    """A freshly made token: the text handed out once, and the record to store."""

    text: str
    grant: Grant


def secret_hash(secret: str) -> bytes:
    """SHA-256 of a token's secret part."""
    return hashlib.sha256(secret.encode("ascii")).digest()


def new_token(device_id: str, role: Role, now: float) -> NewToken:
    """A random token for ``device_id`` with ``role``.

    Examples
    --------
    >>> token = new_token("d1", Role.VIEWER, 0.0)
    >>> key, secret = split_token(token.text)
    >>> key == token.grant.key and matches(token.grant, secret)
    True
    """
    key, secret = _random_key_and_secret()
    return NewToken(f"{key}.{secret}", Grant(key, secret_hash(secret), device_id, role, now))


def new_group_token(group_id: str, now: float) -> NewToken:
    """A random token that reads the group ``group_id``.

    Examples
    --------
    >>> token = new_group_token("g1", 0.0)
    >>> token.grant.role, token.grant.group_id, token.grant.device_id
    (<Role.GROUP: 'group'>, 'g1', '')
    """
    key, secret = _random_key_and_secret()
    grant = Grant(key, secret_hash(secret), "", Role.GROUP, now, group_id)
    return NewToken(f"{key}.{secret}", grant)


def _random_key_and_secret() -> tuple[str, str]:
    return secrets.token_urlsafe(KEY_BYTES), secrets.token_urlsafe(SECRET_BYTES)


def split_token(text: str) -> tuple[str, str] | None:
    """``(key, secret)`` of a token's text, or ``None`` when it cannot be one of ours."""
    if len(text) > MAX_TOKEN_CHARS or text.count(".") != 1:
        return None
    key, secret = text.split(".")
    if not key or not secret or not set(key + secret) <= _ALPHABET:
        return None
    return key, secret


def matches(grant: Grant, secret: str) -> bool:
    """Whether ``secret`` is the one ``grant`` was made with (constant-time comparison)."""
    return hmac.compare_digest(grant.secret_hash, secret_hash(secret))

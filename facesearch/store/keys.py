"""API keys for ``facesearch serve``: created once, kept only as a hash, revocable.

A key is ``fsk_`` and 43 URL-safe characters (256 random bits from :mod:`secrets`). The store keeps its
SHA-256 (unsalted: the key is as random as a salt, so its hash cannot be reversed or guessed) and its
first characters (``prefix``, enough to tell keys apart in ``keys list``, not to use one). Scopes are
ordered: ``read`` (query, verify, list), ``write`` (also enroll, rename, remove) and ``admin`` (also keys).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import select, update

from facesearch.errors import FaceSearchError
from facesearch.store.schema import ApiKey, utcnow

#: the scopes, weakest first: a key may do what its scope and every weaker one allows
SCOPES = ("read", "write", "admin")
PREFIX = "fsk_"
#: characters of a key kept in clear (``fsk_`` and 8 of the random part)
SHOWN = len(PREFIX) + 8
MAX_NAME = 100


@dataclass(frozen=True)
class KeyInfo:
    """A key as ``keys list`` shows it (never the key itself)."""

    id: int
    prefix: str
    scope: str
    name: str | None
    created_at: dt.datetime
    revoked_at: dt.datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def to_dict(self) -> dict:
        return {"id": self.id, "prefix": self.prefix, "scope": self.scope, "name": self.name,
                "created_at": self.created_at.isoformat(), "active": self.active,
                "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None}


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def allows(scope: str, needed: str) -> bool:
    """Whether a key of ``scope`` may do what needs ``needed``."""
    return SCOPES.index(scope) >= SCOPES.index(needed)


def _info(row: ApiKey) -> KeyInfo:
    return KeyInfo(row.id, row.prefix, row.scope, row.name, row.created_at, row.revoked_at)


def create(store, scope: str, name: str | None = None) -> tuple[str, KeyInfo]:
    """A new key of ``scope``: ``(the key, its record)``. The key is not kept: show it once."""
    if scope not in SCOPES:
        raise FaceSearchError(f"unknown scope {scope!r} (one of {', '.join(SCOPES)})")
    if name is not None and (len(name) > MAX_NAME or not name.isprintable()):
        raise FaceSearchError(f"a key's name is printable text of at most {MAX_NAME} characters")
    key = PREFIX + secrets.token_urlsafe(32)
    with store.Session.begin() as s:
        row = ApiKey(prefix=key[:SHOWN], key_hash=digest(key), scope=scope, name=name, created_at=utcnow())
        s.add(row)
        s.flush()
        return key, _info(row)


def lookup(store, key: str) -> KeyInfo | None:
    """The active key ``key`` is, or None (unknown, malformed or revoked)."""
    if not key.startswith(PREFIX) or len(key) > 200:
        return None
    h = digest(key)
    with store.Session() as s:
        row = s.scalar(select(ApiKey).where(ApiKey.key_hash == h))
    if row is None or row.revoked_at is not None or not hmac.compare_digest(row.key_hash, h):
        return None
    return _info(row)


def list_keys(store) -> list[KeyInfo]:
    with store.Session() as s:
        return [_info(r) for r in s.scalars(select(ApiKey).order_by(ApiKey.id))]


def revoke(store, key_id: int) -> KeyInfo:
    """Revoke key ``key_id`` (from ``keys list``); revoking a revoked key changes nothing."""
    with store.Session.begin() as s:
        row = s.get(ApiKey, key_id)
        if row is None:
            raise FaceSearchError(f"no key with id {key_id} (`facesearch keys list` shows them)")
        if row.revoked_at is None:
            s.execute(update(ApiKey).where(ApiKey.id == key_id).values(revoked_at=utcnow()))
            s.flush()
            s.refresh(row)
        return _info(row)

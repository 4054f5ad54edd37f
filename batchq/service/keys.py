"""API keys: created with a secret shown once, stored as a digest, checked in constant time."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from batchq.config import Settings, get_settings
from batchq.errors import ConfigError, NotFound
from batchq.store import tenancy
from batchq.store.tenancy import Tenant

PREFIX = "bq"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_SECRET = re.compile(rf"^{PREFIX}_([0-9a-f]{{12}})_[A-Za-z0-9_-]{{32,}}$")


@dataclass(frozen=True)
class NewKey:
    tenant: Tenant
    secret: str  # shown once; only its digest is stored


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(name: str, *, max_active_batches: int | None = None,
               max_pending_lines: int | None = None, requests_per_minute: int | None = None,
               settings: Settings | None = None) -> NewKey:
    """A new key for the tenant `name`. Its files and batches are its own."""
    settings = settings or get_settings()
    if not _NAME.match(name):
        raise ConfigError(f"key name {name!r}: use letters, digits, '.', '_' or '-' (up to "
                          "100, starting with a letter or digit)")
    key_id = secrets.token_hex(6)
    secret = f"{PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    tenant = Tenant(key_id, name, _digest(secret), max_active_batches, max_pending_lines,
                    requests_per_minute)
    if not tenancy.add_key(settings, tenant):
        raise ConfigError(f"a key named {name!r} exists already (`batchq keys list`)")
    return NewKey(tenant, secret)


def list_keys(settings: Settings | None = None) -> list[Tenant]:
    return tenancy.all_keys(settings or get_settings())


def revoke_key(name: str, settings: Settings | None = None) -> None:
    if not tenancy.revoke_key(settings or get_settings(), name):
        raise NotFound(f"no active key named {name!r} (`batchq keys list`)")


def authenticate(secret: str, settings: Settings) -> Tenant | None:
    """The tenant a presented secret belongs to, or None. The digests are compared in
    constant time; the secret itself is never logged or stored."""
    match = _SECRET.match(secret)
    if match is None:
        return None
    tenant = tenancy.key_by_id(settings, match.group(1))
    if tenant is None or tenant.revoked_at is not None:
        return None
    return tenant if hmac.compare_digest(_digest(secret), tenant.secret_sha256) else None

"""All configuration, read once from BATCHQ_* environment variables.

With nothing set, batchq is embedded: SQLite files under BATCHQ_HOME hold both the
database and the Celery broker. Set BATCHQ_DATABASE_URL and BATCHQ_BROKER_URL to scale out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import platformdirs

from batchq.errors import ConfigError


def _int(env: dict[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} must be at least {minimum}")
    return value


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    broker_url: str
    chunk_size: int  # lines per queued chunk (one Celery message each)
    lease_seconds: int  # how long a claimed chunk stays owned without renewal
    max_attempts: int  # batches a line may die in (crash, kill, error) before it fails
    max_file_lines: int
    max_line_bytes: int
    max_file_bytes: int
    outage_seconds: int  # how long a worker waits out an unreachable database before giving up

    @property
    def embedded(self) -> bool:
        return self.database_url.startswith("sqlite")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        home = Path(env.get("BATCHQ_HOME") or platformdirs.user_data_dir("batchq")).expanduser()
        database_url = env.get("BATCHQ_DATABASE_URL") or f"sqlite:///{home / 'batchq.db'}"
        broker_url = env.get("BATCHQ_BROKER_URL") or f"sqla+sqlite:///{home / 'broker.db'}"
        return cls(
            home=home,
            database_url=database_url,
            broker_url=broker_url,
            chunk_size=_int(env, "BATCHQ_CHUNK_SIZE", 256),
            lease_seconds=_int(env, "BATCHQ_LEASE_SECONDS", 60),
            max_attempts=_int(env, "BATCHQ_MAX_ATTEMPTS", 3),
            max_file_lines=_int(env, "BATCHQ_MAX_FILE_LINES", 1_000_000),
            max_line_bytes=_int(env, "BATCHQ_MAX_LINE_BYTES", 1_000_000),
            max_file_bytes=_int(env, "BATCHQ_MAX_FILE_BYTES", 4 << 30),
            outage_seconds=_int(env, "BATCHQ_OUTAGE_SECONDS", 600),
        )


def redact(url: str) -> str:
    """A URL safe to print: the password, if any, becomes ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[-1]}"))


def get_settings() -> Settings:
    return Settings.from_env()

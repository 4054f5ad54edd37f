"""All configuration, read once from BATCHQ_* environment variables.

With nothing set, batchq is embedded: SQLite files under BATCHQ_HOME hold both the
database and the Celery broker. Set BATCHQ_DATABASE_URL and BATCHQ_BROKER_URL to scale out.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import platformdirs

from batchq.errors import ConfigError

_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


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


def _seconds(env: dict[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number of seconds") from None
    if not 0 <= value < float("inf"):
        raise ConfigError(f"{name}={raw!r} must be 0 or more seconds")
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
    files_dir: Path  # the HTTP API's uploaded files, each named by its id
    api_max_file_bytes: int  # an upload larger than this is refused while it arrives (413)
    api_max_file_lines: int
    # Other names for variants, e.g. (("gpt-4o-mini", "qwen2.5-7b-instruct:nf4"),)
    model_aliases: tuple[tuple[str, str], ...] = ()
    # A worker times a few batch shapes at start and plans with what it measured; off, it plans
    # with assumed costs: it starts a second sooner and cuts the same batches on every start.
    measure_costs: bool = True
    # A worker writes its results at least this often (seconds of its batches), or after
    # every batch that takes longer: what a crash can make it run again. 0: after every batch.
    write_seconds: float = 0.25

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
            files_dir=Path(env.get("BATCHQ_FILES_DIR") or home / "files").expanduser(),
            api_max_file_bytes=_int(env, "BATCHQ_API_MAX_FILE_BYTES", 200 << 20),
            api_max_file_lines=_int(env, "BATCHQ_API_MAX_FILE_LINES", 50_000),
            model_aliases=_aliases(env.get("BATCHQ_MODEL_ALIASES", "")),
            measure_costs=env.get("BATCHQ_MEASURE_COSTS", "1").strip().lower()
            not in ("0", "false", "no", "off"),
            write_seconds=_seconds(env, "BATCHQ_WRITE_SECONDS", 0.25),
        )


def _aliases(raw: str) -> tuple[tuple[str, str], ...]:
    """`name=model[:quant],name=...` (BATCHQ_MODEL_ALIASES) as pairs."""
    pairs = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, sep, target = (text.strip() for text in item.partition("="))
        if not sep or not name or not target:
            raise ConfigError(f"BATCHQ_MODEL_ALIASES: {item!r} is not NAME=MODEL "
                              "(e.g. gpt-4o-mini=qwen2.5-7b-instruct:nf4)")
        pairs.append((name, target))
    return tuple(pairs)


def redact(url: str) -> str:
    """A URL safe to print: the password, if any, becomes ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[-1]}"))


def is_local(address: str) -> bool:
    """True for an address only this machine can reach."""
    host = address.strip().strip("[]")
    if host.lower() in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name, 0.0.0.0 or :: all reach beyond this machine


def get_settings() -> Settings:
    return Settings.from_env()

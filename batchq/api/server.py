"""Running the API under uvicorn: `batchq serve`."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI

from batchq.api.app import create_app
from batchq.config import Settings, get_settings, is_local
from batchq.errors import ConfigError
from batchq.store.tenancy import any_active_key


def build() -> FastAPI:
    """uvicorn's factory: each API process builds its app from the environment."""
    return create_app(get_settings())


def serve(settings: Settings, host: str, port: int, workers: int,
          announce: Callable[[str], None]) -> None:
    import uvicorn

    create_app(settings)  # an unreachable or old database is one clear error, before binding
    if not is_local(host) and not any_active_key(settings):
        raise ConfigError(f"batchq serve: refusing to listen on {host}: no API key exists yet, "
                          "so nobody could use it and nothing would stop a mistake later. "
                          "Create one first (`batchq keys create NAME`), or listen on "
                          "127.0.0.1")
    announce(f"batchq serve: http://{host}:{port}/v1 ({workers} process(es)); OpenAI's Files "
             "and Batches API; every request needs an API key")
    uvicorn.run("batchq.api.server:build", factory=True, host=host, port=port,
                workers=workers, log_level="info", proxy_headers=True, server_header=False)

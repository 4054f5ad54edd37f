"""The HTTP API: OpenAI's Files and Batches API over batchq's service. It stores and queues;
it never generates (workers do)."""

from __future__ import annotations

from fastapi import FastAPI, Response

from batchq.api import batches, errors, files
from batchq.api.auth import RateLimiter
from batchq.api.metrics import ApiMetrics
from batchq.config import Settings
from batchq.store.sessions import session_factory


def create_app(settings: Settings) -> FastAPI:
    session_factory(settings)  # the schema is there (or this says what to do), before serving
    app = FastAPI(title="batchq", summary="OpenAI-compatible Files and Batches API for Qwen "
                  "batch inference", version="1", docs_url="/docs", redoc_url=None)
    app.state.settings = settings
    app.state.rate_limiter = RateLimiter(settings)
    app.state.metrics = metrics = ApiMetrics()
    errors.install(app)
    app.middleware("http")(metrics.middleware)
    app.include_router(files.router)
    app.include_router(batches.router)

    @app.get("/metrics", include_in_schema=False)
    def prometheus() -> Response:
        return metrics.exposition()

    @app.get("/healthz", include_in_schema=False)
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app

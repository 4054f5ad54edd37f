"""The API's own Prometheus metrics: requests and latencies by route and status, and the
requests refused for a key's rate limit, by key name. Each API process counts its own."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import Request, Response
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("batchq_api_requests", "HTTP requests by route, method and "
                                "status", ["route", "method", "status"], registry=self.registry)
        self.seconds = Histogram("batchq_api_request_seconds", "HTTP request latency by route "
                                 "and method", ["route", "method"], registry=self.registry)
        self.rate_limited = Counter("batchq_api_rate_limited", "Requests refused for a key's "
                                    "requests per minute, by key name", ["key"],
                                    registry=self.registry)

    def limited(self, key: str) -> None:
        self.rate_limited.labels(key).inc()

    async def middleware(self, request: Request,
                         call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")  # the template
        self.requests.labels(route, request.method, str(response.status_code)).inc()
        self.seconds.labels(route, request.method).observe(time.perf_counter() - started)
        return response

    def exposition(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE)

"""Who is asking: the bearer key names the tenant, and its requests-per-minute limit is
counted in the broker's Redis (by the `limits` library), so several API processes agree."""

from __future__ import annotations

import math
import time
from typing import Any

from fastapi import Request
from limits import RateLimitItemPerMinute, storage, strategies

from batchq.api.errors import Unauthorized
from batchq.config import Settings
from batchq.errors import OverQuota
from batchq.queue.app import broker_tls
from batchq.service.keys import authenticate
from batchq.store.tenancy import Tenant


class RateLimiter:
    """Requests per minute per key, in a moving window. On the embedded default (no Redis)
    the count is per process."""

    def __init__(self, settings: Settings):
        url, tls = broker_tls(settings.broker_url)
        options: dict[str, Any] = dict(tls or {})
        uri = url if url.startswith(("redis://", "rediss://")) else "memory://"
        self.limiter = strategies.MovingWindowRateLimiter(
            storage.storage_from_string(uri, **options))

    def hit(self, tenant: Tenant) -> None:
        if tenant.requests_per_minute is None:
            return
        item = RateLimitItemPerMinute(tenant.requests_per_minute)
        if not self.limiter.hit(item, "batchq-api", tenant.key_id):
            reset = self.limiter.get_window_stats(item, "batchq-api", tenant.key_id).reset_time
            raise OverQuota(f"more than {tenant.requests_per_minute} requests a minute with "
                            f"key {tenant.name!r}",
                            retry_after=max(1, math.ceil(reset - time.time())))


def tenant(request: Request) -> Tenant:
    """The FastAPI dependency every route takes: 401 without a valid key, 429 past its
    requests per minute."""
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthorized("no API key: send it as 'Authorization: Bearer KEY' "
                           "(`batchq keys create NAME` makes one)")
    found = authenticate(secret.strip(), request.app.state.settings)
    if found is None:
        raise Unauthorized("the API key is unknown or revoked")
    request.state.tenant = found.name  # for the metrics
    try:
        request.app.state.rate_limiter.hit(found)
    except OverQuota:
        request.app.state.metrics.limited(found.name)
        raise
    return found

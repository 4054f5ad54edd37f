"""Every error leaves the API in OpenAI's shape, {"error": {"message", "type", "param",
"code"}}, with the status a client expects; no traceback ever reaches a client."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from batchq.errors import (
    BatchqError,
    ConfigError,
    InputError,
    InvalidRequest,
    NotFound,
    NotNow,
    OverQuota,
    ServiceUnavailable,
    TooLarge,
)

log = logging.getLogger(__name__)


class Unauthorized(Exception):
    """No key, or one that is unknown or revoked."""


def error_response(status: int, message: str, kind: str = "invalid_request_error",
                   param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param,
                                   "code": code}}, status_code=status, headers=headers)


def _batchq_error(request: Request, exc: Exception) -> JSONResponse:
    message = str(exc)
    if isinstance(exc, NotFound):
        return error_response(404, message, code="not_found")
    if isinstance(exc, TooLarge):
        return error_response(413, message, code="file_too_large")
    if isinstance(exc, OverQuota):
        # The client waits retry-after seconds before trying again.
        return error_response(429, message, "rate_limit_error", code="rate_limit_exceeded",
                              headers={"retry-after": str(exc.retry_after)})
    if isinstance(exc, NotNow):
        # A conflict that retrying will not fix: tell the openai client not to retry (409s are
        # otherwise retried).
        return error_response(409, message, code="invalid_state",
                              headers={"x-should-retry": "false"})
    if isinstance(exc, InvalidRequest):
        return error_response(400, message, param=exc.param)
    if isinstance(exc, (ConfigError, InputError)):
        return error_response(400, message)
    if isinstance(exc, ServiceUnavailable):
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        return error_response(503, "batchq's database or broker is unreachable; try again",
                              "server_error")
    return _unexpected(request, exc)


def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal error (the server's log has the details)",
                          "server_error")


def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    where = [str(part) for part in first.get("loc", ()) if part not in ("body", "query")]
    param = ".".join(where) or None
    return error_response(400, f"{param or 'request'}: {first.get('msg', 'invalid')}",
                          param=param)


def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, str(exc.detail),
                          code="not_found" if exc.status_code == 404 else None)


def _unauthorized(request: Request, exc: Exception) -> JSONResponse:
    return error_response(401, str(exc), code="invalid_api_key")


def install(app: FastAPI) -> None:
    app.add_exception_handler(BatchqError, _batchq_error)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(Unauthorized, _unauthorized)
    app.add_exception_handler(Exception, _unexpected)

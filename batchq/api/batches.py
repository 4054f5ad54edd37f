"""/v1/batches: create (the input file validated, its job queued), list, retrieve, cancel;
beyond OpenAI's API, retry and the results so far (output and errors) while a batch runs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from batchq.api.auth import tenant
from batchq.api.objects import batch_object, page
from batchq.service import batches
from batchq.store.tenancy import Tenant

router = APIRouter(prefix="/v1")
Caller = Annotated[Tenant, Depends(tenant)]


class BatchCreate(BaseModel):
    input_file_id: str
    endpoint: str
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None


@router.post("/batches")
def create_batch(request: Request, caller: Caller, body: BatchCreate,
                 idempotency_key: Annotated[str | None, Header()] = None) -> dict[str, Any]:
    created = batches.create(request.app.state.settings, caller, body.input_file_id,
                             body.endpoint, body.completion_window, body.metadata,
                             idempotency_key)
    return batch_object(created)


@router.get("/batches")
def list_batches(request: Request, caller: Caller, after: str | None = None,
                 limit: Annotated[int, Query(ge=1, le=100)] = 20) -> dict[str, Any]:
    found, more = batches.list_batches(request.app.state.settings, caller, after, limit)
    return page([batch_object(batch) for batch in found], more)


@router.get("/batches/{batch_id}")
def retrieve_batch(request: Request, caller: Caller, batch_id: str) -> dict[str, Any]:
    return batch_object(batches.view(request.app.state.settings, caller, batch_id))


@router.post("/batches/{batch_id}/cancel")
def cancel_batch(request: Request, caller: Caller, batch_id: str) -> dict[str, Any]:
    return batch_object(batches.cancel(request.app.state.settings, caller, batch_id))


@router.post("/batches/{batch_id}/retry")
def retry_batch(request: Request, caller: Caller, batch_id: str) -> dict[str, Any]:
    """batchq's own: run a completed batch's failed lines again."""
    return batch_object(batches.retry(request.app.state.settings, caller, batch_id))


@router.get("/batches/{batch_id}/output")
def batch_output(request: Request, caller: Caller, batch_id: str) -> StreamingResponse:
    """batchq's own: the lines with an output so far, while the batch runs and after."""
    body = batches.results(request.app.state.settings, caller, batch_id, errors=False)
    return StreamingResponse(body, media_type="application/jsonl")


@router.get("/batches/{batch_id}/errors")
def batch_errors(request: Request, caller: Caller, batch_id: str) -> StreamingResponse:
    """batchq's own: the lines that ended without an output so far."""
    body = batches.results(request.app.state.settings, caller, batch_id, errors=True)
    return StreamingResponse(body, media_type="application/jsonl")

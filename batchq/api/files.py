"""/v1/files: upload (streamed to the file store, limits enforced as the bytes arrive), list,
retrieve, content (streamed), delete."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from batchq.api.auth import tenant
from batchq.api.objects import file_object, page
from batchq.api.upload import MultipartUpload
from batchq.errors import InvalidRequest, TooLarge
from batchq.service import files
from batchq.store.tenancy import Tenant

router = APIRouter(prefix="/v1")
Caller = Annotated[Tenant, Depends(tenant)]
# After an upload went over its limit, the rest of the body is read and dropped (so the
# client gets its 413 instead of a broken connection), up to this much.
DRAIN_BYTES = 256 << 20


@router.post("/files")
async def create_file(request: Request, caller: Caller) -> dict[str, Any]:
    settings = request.app.state.settings
    file_id = files.new_file_id()
    over: TooLarge | None = None
    dropped = 0
    with files.receiving(settings, file_id) as receiver:
        upload = MultipartUpload(request.headers.get("content-type"), receiver)
        async for chunk in request.stream():
            if over is None:
                try:
                    upload.feed(chunk)
                except TooLarge as exc:
                    over = exc
            else:
                dropped += len(chunk)
                if dropped > DRAIN_BYTES:
                    break
        if over is not None:
            raise over  # the partial file is removed on the way out
        upload.finish()
    purpose = upload.field("purpose")
    if purpose is None:
        files.delete_stored(settings, file_id)
        raise InvalidRequest("the upload has no 'purpose' field; use purpose=batch", "purpose")
    view = await run_in_threadpool(
        files.register_upload, settings, caller.name, file_id, upload.filename or "",
        purpose, receiver, request.headers.get("idempotency-key"))
    return file_object(view)


@router.get("/files")
def list_files(request: Request, caller: Caller, after: str | None = None,
               limit: Annotated[int, Query(ge=1, le=10000)] = 10000,
               purpose: str | None = None, order: str = "desc") -> dict[str, Any]:
    if order != "desc":
        raise InvalidRequest("order: only desc (newest first) is supported", "order")
    found, more = files.list_files(request.app.state.settings, caller.name, after, limit,
                                   purpose)
    return page([file_object(view) for view in found], more)


@router.get("/files/{file_id}")
def retrieve_file(request: Request, caller: Caller, file_id: str) -> dict[str, Any]:
    return file_object(files.get(request.app.state.settings, caller.name, file_id))


@router.get("/files/{file_id}/content")
def file_content(request: Request, caller: Caller, file_id: str) -> StreamingResponse:
    body = files.content(request.app.state.settings, caller.name, file_id)
    return StreamingResponse(body, media_type="application/octet-stream")


@router.delete("/files/{file_id}")
def delete_file(request: Request, caller: Caller, file_id: str) -> dict[str, Any]:
    files.delete(request.app.state.settings, caller.name, file_id)
    return {"id": file_id, "object": "file", "deleted": True}

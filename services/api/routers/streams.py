"""A job's streams as Server-Sent Events: `events` (leap and lifecycle events) and `stream` (metrics, rank-1, events
and samples together: the dashboard's feed). Every Redis read here is awaited (redis.asyncio), so a stream never holds
the event loop."""

from __future__ import annotations

import json
import re

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from sse_starlette.sse import EventSourceResponse

from services.api.deps import PlaneDep
from services.store import TERMINAL

router = APIRouter(tags=["streams"])
responses = {200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"}}


async def sse(request: Request, plane, job_id: str, streams: tuple[str, ...], start: str | None):
    """Server-Sent Events over the job's streams: id = the cursors joined by '|', event = the stream name;
    a `state` event when the job's state changes; `end` once the job is terminal and drained."""
    store = plane.store
    client = store.async_client()  # its own connection: XREAD blocks it
    header = request.headers.get("last-event-id")
    try:
        if not await client.exists(store.key(job_id)):
            raise HTTPException(404, f"no job {job_id!r}")
        if header is not None and not re.fullmatch(r"\d+-\d+(\|\d+-\d+)*", header):
            raise HTTPException(422, "Last-Event-ID must be an id this stream sent (stream ids like "
                                     "1700000000000-0, joined by '|'); drop the header to start from the beginning")
    except BaseException:
        await client.aclose()
        raise
    given = (header or start or "").split("|")
    cursors = {s: (given[i] if i < len(given) and given[i] else "0-0") for i, s in enumerate(streams)}

    async def state() -> str:
        """The job's state: this worker's cached job document has it (kept coherent with Redis), else Redis."""
        hit = plane.cached(job_id)
        return hit[1] if hit is not None else (await client.hget(store.key(job_id), "state") or b"").decode()

    async def generate():  # EventSourceResponse watches for the client leaving and cancels this
        last_state = None
        try:
            while True:
                keys = {store.key(job_id, s): c for s, c in cursors.items()}
                result = await client.xread(keys, count=200, block=1000)
                for key, entries in result or []:
                    stream = key.decode().rsplit(":", 1)[1]
                    for sid, fields in entries:
                        cursors[stream] = sid.decode()
                        yield {"id": "|".join(cursors[s] for s in streams), "event": stream,
                               "data": fields[b"data"].decode()}
                now = await state()
                if now != last_state:
                    last_state = now
                    yield {"event": "state", "data": json.dumps({"state": now})}
                if now in TERMINAL and not result:
                    yield {"event": "end", "data": json.dumps({"state": now})}
                    return
        finally:
            await client.aclose()

    return EventSourceResponse(generate(), ping=15)


@router.get("/v1/jobs/{job_id}/events", response_class=JSONResponse, responses=responses)
async def job_events(request: Request, job_id: str, plane: PlaneDep,
                     after: str | None = Query(None, pattern=r"^\d+-\d+$")):
    return await sse(request, plane, job_id, ("events",), after)


@router.get("/v1/jobs/{job_id}/stream", response_class=JSONResponse, responses=responses)
async def job_stream(request: Request, job_id: str, plane: PlaneDep,
                     after: str | None = Query(None, pattern=r"^\d+-\d+(\|\d+-\d+){3}$")):
    return await sse(request, plane, job_id, ("metrics", "rank1", "events", "samples"), after)

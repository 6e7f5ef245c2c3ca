"""FastAPI dependencies the routers declare (the plane, the bearer token, an existing job) and the body-size
middleware."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.api.plane import Plane
from services.store import JobNotFound


async def get_plane(request: Request) -> Plane:  # async: FastAPI would run a sync one in the threadpool
    return request.app.state.plane


PlaneDep = Annotated[Plane, Depends(get_plane)]
bearer = HTTPBearer(auto_error=False, description="LEAPFROG_API_TOKEN, when the server has one")


async def require_token(plane: PlaneDep,
                        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
    """Mutating endpoints: `Authorization: Bearer <LEAPFROG_API_TOKEN>` when a token is configured (constant-time
    comparison)."""
    token = plane.settings.token
    if not token:
        return
    given = credentials.credentials if credentials is not None else ""
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise HTTPException(401, "missing or wrong bearer token (Authorization: Bearer <LEAPFROG_API_TOKEN>)",
                            headers={"WWW-Authenticate": "Bearer"})


def existing_job(job_id: str, plane: PlaneDep) -> dict:
    """The job's store record, or 404. Blocking (Redis): declare it on `def` routes, which run in the threadpool
    together with their sync dependencies."""
    try:
        return plane.store.get(job_id)
    except JobNotFound:
        raise HTTPException(404, f"no job {job_id!r}") from None


JobDep = Annotated[dict, Depends(existing_job)]


class BodyLimit:
    """ASGI middleware: 413 for bodies over `limit` bytes (declared or streamed)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                return await JSONResponse({"detail": f"request body over {self.limit} bytes"}, 413)(
                    scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, f"request body over {self.limit} bytes")
            return message

        return await self.app(scope, limited, send)


class CachedJobReads:
    """ASGI middleware, outermost (services.api.ControlPlaneApp): `GET /v1/jobs/{id}` answered from this worker's
    documents cache (plane.JobDocuments) without entering the middleware stack and the router, whose per-request
    work (dependency solving above all) costs more than the whole read. The same bytes and headers as the router's
    `read_job`; misses go on to it. A body sent with such a GET is never read (nor is it by the router's route)."""

    prefix = "/v1/jobs/"

    def __init__(self, app, plane: Plane):
        self.app, self.plane = app, plane

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"].startswith(self.prefix):
            job_id = scope["path"][len(self.prefix):]
            hit = self.plane.cached(job_id) if "/" not in job_id else None
            if hit is not None:
                body, state, _, headers = hit
                self.plane.reconcile_later(job_id, state)
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

"""The FastAPI application of the review workspace: middleware, error pages, static files and
the routers of :mod:`rankscope.agent.web.routes`, over one :class:`Workspace`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from rankscope.agent.web.audit_jobs import Auditor
from rankscope.agent.web.rendering import STATIC
from rankscope.agent.web.routes import ROUTERS
from rankscope.agent.web.security import TokenGate, security_headers
from rankscope.agent.web.workspace import Workspace
from rankscope.experiments_db import Store
from rankscope.experiments_db.errors import NotFoundError


def create_app(
    store: Store, *, token: str | None = None, auditor: Auditor | None = None
) -> FastAPI:
    """The workspace over ``store``; with ``token``, every request must present it."""
    ws = Workspace(store, auditor)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        ws.audits.shutdown()

    app = FastAPI(
        title="RankScope review workspace",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )
    app.state.workspace = ws
    app.middleware("http")(security_headers)
    if token:
        app.middleware("http")(TokenGate(token))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(NotFoundError)
    async def not_found(request: Request, exc: NotFoundError) -> HTMLResponse:
        return ws.page("error.html", 404, title="Not found", message=str(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> HTMLResponse:
        return ws.page("error.html", exc.status_code, title="Error", message=str(exc.detail))

    for router in ROUTERS:
        app.include_router(router)
    return app

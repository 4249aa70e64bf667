"""The FastAPI application of the review workspace: middleware, error pages, static files and
the routers of :mod:`rankscope.agent.web.routes`, over one :class:`Workspace`.

Every error is a styled page: a record that does not exist (an unknown id, an id below 1 or past
the databases' integer range, unknown evidence) is a 404; a request that does not validate (an id
that is not a number, a review that breaks the review rules) a 400/422 saying what was wrong.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from rankscope.agent.web.audit_jobs import Auditor
from rankscope.agent.web.rendering import STATIC
from rankscope.agent.web.routes import ROUTERS
from rankscope.agent.web.security import TokenGate, security_headers
from rankscope.agent.web.workspace import Workspace
from rankscope.experiments_db import Store
from rankscope.experiments_db.errors import NotFoundError, ReviewError, UnknownEvidenceError

_WHAT = {"path": "in the address", "query": "parameter", "body": "form field"}


def validation_problems(exc: RequestValidationError) -> list[str]:
    """Each problem of a request that did not validate, in words: ``hypothesis_id in the
    address: 'abc' is not a whole number``."""
    problems = []
    for error in exc.errors():
        loc = [str(part) for part in error.get("loc", ())]
        where, name = (loc[0], loc[-1]) if loc else ("", "?")
        value = error.get("input")
        what = _WHAT.get(where, where)
        if error.get("type", "").startswith("int"):
            text = f"{value!r} is not a whole number"
        elif error.get("type") == "missing":
            text = "is missing"
        else:
            text = str(error.get("msg", "is not valid"))
        problems.append(f"{name} ({what}): {text}")
    return problems


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
        return ws.error(404, "Not found", str(exc))

    @app.exception_handler(UnknownEvidenceError)
    async def unknown_evidence(request: Request, exc: UnknownEvidenceError) -> HTMLResponse:
        return ws.error(404, "Not found", str(exc))

    @app.exception_handler(ReviewError)
    async def bad_review(request: Request, exc: ReviewError) -> HTMLResponse:
        return ws.error(400, "Review not stored", str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> HTMLResponse:
        return ws.error(
            422,
            "Invalid request",
            f"{request.method} {request.url.path} has a value that is not valid:",
            validation_problems(exc),
        )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> HTMLResponse:
        titles = {403: "Forbidden", 404: "Not found", 405: "Method not allowed", 409: "Conflict"}
        return ws.error(exc.status_code, titles.get(exc.status_code, "Error"), str(exc.detail))

    for router in ROUTERS:
        app.include_router(router)
    return app

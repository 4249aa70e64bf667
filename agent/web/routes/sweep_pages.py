"""The sweeps in the store and the cells of one sweep (rows built by :mod:`..sweeps`)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from fastapi.responses import HTMLResponse

from rankscope.agent.web import sweeps
from rankscope.agent.web.workspace import WorkspaceDep

router = APIRouter()


@router.get("/sweeps", response_class=HTMLResponse)
def sweep_list(ws: WorkspaceDep) -> HTMLResponse:
    return ws.page("sweeps.html", sweeps=sweeps.list_sweeps(ws.store))


@router.get("/sweeps/{sweep_id:path}", response_class=HTMLResponse)
def sweep(ws: WorkspaceDep, sweep_id: str) -> HTMLResponse:
    rows = sweeps.sweep_rows(ws.store, sweep_id)
    if rows is None:
        raise HTTPException(404, f"no sweep {sweep_id!r} in this store")
    return ws.page("sweep.html", sweep_id=sweep_id, rows=rows)

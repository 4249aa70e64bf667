"""Audits started from the investigation page, and the page that follows one job."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, HTTPException
from fastapi.responses import HTMLResponse, RedirectResponse

from rankscope.agent.web.workspace import WorkspaceDep, known_id

router = APIRouter()


@router.post("/investigations/{investigation_id}/audit")
def start_audit(
    ws: WorkspaceDep,
    investigation_id: int,
    csrf_token: Annotated[str, Form()] = "",
    rerun: Annotated[bool, Form()] = False,
) -> RedirectResponse:
    ws.check_csrf(csrf_token)
    ws.store.get_investigation(known_id("investigation", investigation_id))
    job = ws.audits.start(investigation_id, rerun=rerun)
    return RedirectResponse(f"/audits/{job.id}", status_code=303)


@router.get("/audits/{job_id}", response_class=HTMLResponse)
def audit(ws: WorkspaceDep, job_id: int) -> HTMLResponse:
    job = ws.audits.get(known_id("audit job", job_id))
    if job is None:
        raise HTTPException(404, f"audit job {job_id} does not exist")
    inv = ws.store.get_investigation(job.investigation_id)
    return ws.page("audit.html", inv=inv, job=job)

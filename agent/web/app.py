"""The FastAPI application of the review workspace."""

from __future__ import annotations

import io
import tempfile
import zipfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from rankscope.agent.web import sweeps, views
from rankscope.agent.web.audit_jobs import AuditJobs, Auditor
from rankscope.agent.web.export import export_static
from rankscope.agent.web.links import Links
from rankscope.agent.web.rendering import STATIC, environment, investigation_context
from rankscope.agent.web.security import TokenGate, new_secret, same, security_headers
from rankscope.experiments_db.errors import ArtifactError, NotFoundError
from rankscope.experiments_db.models import INVESTIGATION_STATUSES
from rankscope.experiments_db.records import InvestigationTree
from rankscope.experiments_db.repository import Store

LINKS = Links()


class Workspace:
    """The state behind the routes: the store, the templates, the CSRF secret, audit jobs."""

    def __init__(self, store: Store, auditor: Auditor | None = None) -> None:
        self.store = store
        self.env = environment()
        self.csrf = new_secret()
        self.audits = AuditJobs(store) if auditor is None else AuditJobs(store, auditor)

    def page(self, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        context = {"links": LINKS, "csrf": self.csrf, "live": True, **context}
        html = self.env.get_template(template).render(**context)
        return HTMLResponse(html, status_code=status_code)

    def check_csrf(self, token: str) -> None:
        if not same(token, self.csrf):
            raise HTTPException(403, "missing or wrong CSRF token: reload the page and retry")

    def tree(self, investigation_id: int) -> InvestigationTree:
        return self.store.investigation_tree(investigation_id)


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

    @app.get("/", response_class=HTMLResponse)
    def investigations(
        q: str = "", status: str = "", planner: str = "", model: str = "", review: str = ""
    ) -> HTMLResponse:
        rows = ws.store.list_investigations()
        overview = ws.store.verdict_overview([r.id for r in rows])
        wanted = views.ListFilter(q=q, status=status, planner=planner, model=model, review=review)
        shown = [r for r in rows if wanted.keeps(r, overview.get(r.id, {}))]
        return ws.page(
            "list.html",
            rows=shown,
            total=len(rows),
            overview=overview,
            filter=wanted,
            statuses=INVESTIGATION_STATUSES,
            planners=sorted({r.planner for r in rows}),
        )

    @app.get("/investigations/{investigation_id}", response_class=HTMLResponse)
    def investigation(investigation_id: int) -> HTMLResponse:
        tree = ws.tree(investigation_id)
        return ws.page(
            "investigation.html",
            **investigation_context(ws.store, tree, LINKS),
            audits=ws.audits.of(investigation_id),
            problems=[],
        )

    @app.get("/hypotheses/{hypothesis_id}", response_class=HTMLResponse)
    def hypothesis(hypothesis_id: int) -> HTMLResponse:
        tree = ws.tree(ws.store.get_hypothesis(hypothesis_id).investigation_id)
        node = next(h for h in tree.hypotheses if h.id == hypothesis_id)
        return ws.page("hypothesis.html", inv=tree.investigation, node=node)

    @app.get("/experiments/{experiment_id}", response_class=HTMLResponse)
    def experiment(experiment_id: int) -> HTMLResponse:
        tree = ws.tree(ws.store.get_experiment(experiment_id).investigation_id)
        exp = next(e for e in tree.experiments() if e.id == experiment_id)
        node = next((h for h in tree.hypotheses if h.id == exp.hypothesis_id), None)
        return ws.page("experiment.html", inv=tree.investigation, exp=exp, node=node)

    @app.get("/evidence/{evidence_id}", response_class=HTMLResponse)
    def evidence(evidence_id: int) -> HTMLResponse:
        ev = ws.store.get_evidence([evidence_id])[0]
        exp = ws.store.get_experiment(ev.experiment_id)
        node = ws.store.get_hypothesis(exp.hypothesis_id) if exp.hypothesis_id else None
        inv = ws.store.get_investigation(exp.investigation_id)
        return ws.page("evidence.html", inv=inv, exp=exp, ev=ev, node=node)

    @app.get("/artifacts/{artifact_id}")
    def artifact(artifact_id: int) -> Response:
        record = ws.store.get_artifact(artifact_id)
        try:
            data = ws.store.read_artifact(record)
        except ArtifactError as exc:
            raise HTTPException(
                409, f"artifact {artifact_id} failed its hash check: {exc}"
            ) from exc
        if views.is_inline_image(record):
            return Response(data, media_type=record.media_type)
        name = views.artifact_filename(record)
        return Response(
            data,
            media_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    @app.post("/hypotheses/{hypothesis_id}/review")
    def review(
        hypothesis_id: int,
        decision: Annotated[str, Form()],
        reviewer: Annotated[str, Form()],
        csrf_token: Annotated[str, Form()] = "",
        comment: Annotated[str, Form()] = "",
    ) -> RedirectResponse:
        ws.check_csrf(csrf_token)
        if decision not in ("accept", "dispute"):
            raise HTTPException(400, "decision must be accept or dispute")
        if not reviewer.strip():
            raise HTTPException(400, "a review needs the reviewer's name")
        if decision == "dispute" and not comment.strip():
            raise HTTPException(400, "a dispute needs a comment")
        ws.store.review_hypothesis(hypothesis_id, reviewer, decision, comment)
        inv_id = ws.store.get_hypothesis(hypothesis_id).investigation_id
        return RedirectResponse(f"{LINKS.investigation(inv_id)}#h{hypothesis_id}", status_code=303)

    @app.post("/investigations/{investigation_id}/audit")
    def start_audit(
        investigation_id: int,
        csrf_token: Annotated[str, Form()] = "",
        rerun: Annotated[bool, Form()] = False,
    ) -> RedirectResponse:
        ws.check_csrf(csrf_token)
        ws.store.get_investigation(investigation_id)
        job = ws.audits.start(investigation_id, rerun=rerun)
        return RedirectResponse(f"/audits/{job.id}", status_code=303)

    @app.get("/audits/{job_id}", response_class=HTMLResponse)
    def audit(job_id: int) -> HTMLResponse:
        job = ws.audits.get(job_id)
        if job is None:
            raise HTTPException(404, f"audit job {job_id} does not exist")
        inv = ws.store.get_investigation(job.investigation_id)
        return ws.page("audit.html", inv=inv, job=job)

    @app.get("/compare", response_class=HTMLResponse)
    def compare(a: int | None = None, b: int | None = None) -> HTMLResponse:
        choices = ws.store.list_investigations()
        if a is None or b is None:
            return ws.page("compare.html", choices=choices, left=None, right=None, rows=[])
        left, right = ws.tree(a), ws.tree(b)
        rows = views.align(left, right)
        return ws.page("compare.html", choices=choices, left=left, right=right, rows=rows)

    @app.get("/sweeps", response_class=HTMLResponse)
    def sweep_list() -> HTMLResponse:
        return ws.page("sweeps.html", sweeps=sweeps.list_sweeps(ws.store))

    @app.get("/sweeps/{sweep_id:path}", response_class=HTMLResponse)
    def sweep(sweep_id: str) -> HTMLResponse:
        rows = sweeps.sweep_rows(ws.store, sweep_id)
        if rows is None:
            raise HTTPException(404, f"no sweep {sweep_id!r} in this store")
        return ws.page("sweep.html", sweep_id=sweep_id, rows=rows)

    @app.get("/investigations/{investigation_id}/export.zip")
    def export_zip(investigation_id: int) -> Response:
        with tempfile.TemporaryDirectory() as tmp:
            folder = export_static(
                ws.store, investigation_id, Path(tmp) / f"investigation-{investigation_id}"
            )
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
                for path in sorted(folder.rglob("*")):
                    if path.is_file():
                        zf.write(path, path.relative_to(folder.parent).as_posix())
        name = f"rankscope-investigation-{investigation_id}.zip"
        return Response(
            buffer.getvalue(),
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    return app

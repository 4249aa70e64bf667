"""The pages of the stored records: the investigation list, an investigation with its Findings,
and one page each per hypothesis, experiment and evidence item."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from rankscope.agent.web import views
from rankscope.agent.web.rendering import investigation_context
from rankscope.agent.web.workspace import LINKS, WorkspaceDep
from rankscope.experiments_db.models import INVESTIGATION_STATUSES

router = APIRouter()


@router.get("/", response_class=HTMLResponse)
def investigations(
    ws: WorkspaceDep,
    q: str = "",
    status: str = "",
    planner: str = "",
    model: str = "",
    review: str = "",
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


@router.get("/investigations/{investigation_id}", response_class=HTMLResponse)
def investigation(ws: WorkspaceDep, investigation_id: int) -> HTMLResponse:
    tree = ws.tree(investigation_id)
    return ws.page(
        "investigation.html",
        **investigation_context(ws.store, tree, LINKS),
        audits=ws.audits.of(investigation_id),
        problems=[],
    )


@router.get("/hypotheses/{hypothesis_id}", response_class=HTMLResponse)
def hypothesis(ws: WorkspaceDep, hypothesis_id: int) -> HTMLResponse:
    tree = ws.tree(ws.store.get_hypothesis(hypothesis_id).investigation_id)
    node = next(h for h in tree.hypotheses if h.id == hypothesis_id)
    return ws.page("hypothesis.html", inv=tree.investigation, node=node)


@router.get("/experiments/{experiment_id}", response_class=HTMLResponse)
def experiment(ws: WorkspaceDep, experiment_id: int) -> HTMLResponse:
    tree = ws.tree(ws.store.get_experiment(experiment_id).investigation_id)
    exp = next(e for e in tree.experiments() if e.id == experiment_id)
    node = next((h for h in tree.hypotheses if h.id == exp.hypothesis_id), None)
    return ws.page("experiment.html", inv=tree.investigation, exp=exp, node=node)


@router.get("/evidence/{evidence_id}", response_class=HTMLResponse)
def evidence(ws: WorkspaceDep, evidence_id: int) -> HTMLResponse:
    ev = ws.store.get_evidence([evidence_id])[0]
    exp = ws.store.get_experiment(ev.experiment_id)
    node = ws.store.get_hypothesis(exp.hypothesis_id) if exp.hypothesis_id else None
    inv = ws.store.get_investigation(exp.investigation_id)
    return ws.page("evidence.html", inv=inv, exp=exp, ev=ev, node=node)

"""The pages of the stored records: the investigation list, an investigation with its answer,
forest plot and Findings, and one page each per hypothesis, experiment and evidence item."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from rankscope.agent.report_facts import unverified_counts
from rankscope.agent.web import views
from rankscope.agent.web.rendering import investigation_context, tree_context
from rankscope.agent.web.workspace import LINKS, WorkspaceDep, known_id
from rankscope.experiments_db.errors import NotFoundError
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
    for row in rows:
        # an unverified verdict is not counted as the verdict the bundle claims
        counts = overview.setdefault(row.id, {})
        for claimed, n in unverified_counts(row.config).items():
            counts[claimed] = max(0, counts.get(claimed, 0) - n)
            counts["unverified"] = counts.get("unverified", 0) + n
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
    tree = ws.tree(known_id("investigation", investigation_id))
    return ws.page(
        "investigation.html",
        **investigation_context(ws.store, tree, LINKS),
        audits=ws.audits.of(investigation_id),
        problems=[],
    )


@router.get("/hypotheses/{hypothesis_id}", response_class=HTMLResponse)
def hypothesis(ws: WorkspaceDep, hypothesis_id: int) -> HTMLResponse:
    return ws.hypothesis_page(known_id("hypothesis", hypothesis_id))


@router.get("/experiments/{experiment_id}", response_class=HTMLResponse)
def experiment(ws: WorkspaceDep, experiment_id: int) -> HTMLResponse:
    known_id("experiment", experiment_id)
    tree = ws.tree(ws.store.get_experiment(experiment_id).investigation_id)
    exp = next(e for e in tree.experiments() if e.id == experiment_id)
    node = next((h for h in tree.hypotheses if h.id == exp.hypothesis_id), None)
    return ws.page("experiment.html", **tree_context(tree), exp=exp, node=node)


@router.get("/evidence/{evidence_id}", response_class=HTMLResponse)
def evidence(ws: WorkspaceDep, evidence_id: int) -> HTMLResponse:
    known_id("evidence", evidence_id)
    records = ws.store.get_evidence([evidence_id])
    if not records:
        raise NotFoundError(f"evidence {evidence_id} does not exist")
    tree = ws.tree(ws.store.get_experiment(records[0].experiment_id).investigation_id)
    exp = next(e for e in tree.experiments() if e.id == records[0].experiment_id)
    ev = next(e for e in exp.evidence if e.id == evidence_id)
    node = next((h for h in tree.hypotheses if h.id == exp.hypothesis_id), None)
    return ws.page("evidence.html", **tree_context(tree), exp=exp, ev=ev, node=node)

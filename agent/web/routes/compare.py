"""Two investigations side by side, test by test (``/compare?a=ID&b=ID``; ``?a=ID`` alone
pre-selects A, as the investigation page's "Compare with…" does)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from rankscope.agent.web import views
from rankscope.agent.web.workspace import WorkspaceDep, known_id

router = APIRouter()


@router.get("/compare", response_class=HTMLResponse)
def compare(ws: WorkspaceDep, a: int | None = None, b: int | None = None) -> HTMLResponse:
    choices = ws.store.list_investigations()
    for value in (a, b):
        if value is not None:
            ws.store.get_investigation(known_id("investigation", value))
    context: dict[str, Any] = {
        "choices": choices,
        "a_id": a,
        "b_id": b,
        "left": None,
        "right": None,
    }
    if a is None or b is None:
        return ws.page("compare.html", **context, rows=[], summary=[], labels={}, unverified={})
    left, right = ws.tree(a), ws.tree(b)
    rows = views.align(left, right)
    facts = {t.investigation.id: views.Facts.of(t) for t in (left, right)}
    return ws.page(
        "compare.html",
        **{**context, "left": left, "right": right},
        rows=rows,
        summary=views.compare_summary(rows),
        labels={k: f.names for k, f in facts.items()},
        unverified={k: f.unverified for k, f in facts.items()},
    )

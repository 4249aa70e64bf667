"""Two investigations side by side, claim by claim (``/compare?a=ID&b=ID``)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from rankscope.agent.web import views
from rankscope.agent.web.workspace import WorkspaceDep

router = APIRouter()


@router.get("/compare", response_class=HTMLResponse)
def compare(ws: WorkspaceDep, a: int | None = None, b: int | None = None) -> HTMLResponse:
    choices = ws.store.list_investigations()
    if a is None or b is None:
        return ws.page("compare.html", choices=choices, left=None, right=None, rows=[])
    left, right = ws.tree(a), ws.tree(b)
    rows = views.align(left, right)
    return ws.page("compare.html", choices=choices, left=left, right=right, rows=rows)

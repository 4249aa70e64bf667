"""Reviews: a reviewer accepts or disputes a hypothesis's verdict (a dispute needs a comment)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, HTTPException
from fastapi.responses import RedirectResponse

from rankscope.agent.web.workspace import LINKS, WorkspaceDep

router = APIRouter()


@router.post("/hypotheses/{hypothesis_id}/review")
def review(
    ws: WorkspaceDep,
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

"""Reviews: a reviewer accepts or disputes a hypothesis's verdict (a dispute needs a comment).

The review rules are the store's (:func:`rankscope.experiments_db.store_reviews.check_review`):
a review that breaks them is answered with the hypothesis page (400), its form still holding
what was typed and the reason above it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form
from fastapi.responses import HTMLResponse, RedirectResponse

from rankscope.agent.web.workspace import LINKS, WorkspaceDep, known_id
from rankscope.experiments_db.errors import ReviewError

router = APIRouter()


@router.post("/hypotheses/{hypothesis_id}/review", response_model=None)
def review(
    ws: WorkspaceDep,
    hypothesis_id: int,
    decision: Annotated[str, Form()] = "",
    reviewer: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
    comment: Annotated[str, Form()] = "",
) -> RedirectResponse | HTMLResponse:
    ws.check_csrf(csrf_token)
    known_id("hypothesis", hypothesis_id)
    try:
        ws.store.review_hypothesis(hypothesis_id, reviewer, decision, comment)
    except ReviewError as exc:
        typed = {"reviewer": reviewer, "comment": comment}
        return ws.hypothesis_page(hypothesis_id, form=typed, error=str(exc), status_code=400)
    inv_id = ws.store.get_hypothesis(hypothesis_id).investigation_id
    return RedirectResponse(f"{LINKS.investigation(inv_id)}#h{hypothesis_id}", status_code=303)

"""The review state of a verdict, shared by ``rankscope show``, the reports and the web pages.

A verdict's state is the decision of its latest human review: ``accepted``, ``disputed``, or
``unreviewed`` when nobody has reviewed it yet.
"""

from __future__ import annotations

from typing import Literal

from rankscope.experiments_db.records import VerdictRecord

ReviewState = Literal["accepted", "disputed", "unreviewed"]

_STATES: dict[str, ReviewState] = {"accept": "accepted", "dispute": "disputed"}


def review_state(verdict: VerdictRecord) -> ReviewState:
    """The state given by the verdict's latest review."""
    if not verdict.reviews:
        return "unreviewed"
    return _STATES[verdict.reviews[-1].decision]


def verdict_label(verdict: VerdictRecord | None) -> str:
    """The verdict's status, marked ``DISPUTED`` when its latest review disputes it."""
    if verdict is None:
        return "no verdict"
    if review_state(verdict) == "disputed":
        return f"{verdict.status} (DISPUTED by {verdict.reviews[-1].reviewer})"
    return verdict.status

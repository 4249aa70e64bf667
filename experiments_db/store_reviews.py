"""Human reviews of verdicts: the review rules, the one writer of a review, and the reads that
show reviews and count verdicts by review state.

A review accepts or disputes the latest verdict on a hypothesis. The rules hold for every caller
(the ``review`` command, the review workspace, scripts): the decision is ``accept`` or
``dispute``, the reviewer is named, a dispute says why in its comment, and no text holds a NUL
character (PostgreSQL cannot store one).
"""

from collections import defaultdict
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlmodel import col

from rankscope.experiments_db.errors import NotFoundError, ReviewError
from rankscope.experiments_db.models import REVIEW_DECISIONS, Hypothesis, Review, Verdict
from rankscope.experiments_db.records import ReviewRecord
from rankscope.experiments_db.store_core import StoreCore, add_row, get_row, records


def check_review(reviewer: str, decision: str, comment: str) -> None:
    """Raise :class:`ReviewError` when a review breaks the review rules."""
    if decision not in REVIEW_DECISIONS:
        raise ReviewError(
            f"review decision must be one of {', '.join(REVIEW_DECISIONS)}; got {decision!r}"
        )
    for field, text in (("reviewer name", reviewer), ("comment", comment)):
        if "\x00" in text:
            # PostgreSQL cannot store a NUL in text, SQLite would store one silently: neither.
            raise ReviewError(
                f"the review's {field} contains a NUL character (\\x00), which cannot be stored; "
                "remove it and submit the review again"
            )
    if not reviewer.strip():
        raise ReviewError("a review needs a reviewer name")
    if decision == "dispute" and not comment.strip():
        raise ReviewError("a dispute needs a comment saying what is wrong with the verdict")


class ReviewStore(StoreCore):
    """Writes and reads of the ``review`` table."""

    def review_hypothesis(
        self,
        hypothesis_id: int,
        reviewer: str,
        decision: str,
        comment: str = "",
        *,
        investigation_id: int | None = None,
    ) -> int:
        """Review the latest verdict on a hypothesis (``accept`` or ``dispute``); return the
        review id. :class:`ReviewError` when the review breaks the rules of
        :func:`check_review`; :class:`NotFoundError` when the hypothesis (of
        ``investigation_id``, if given) does not exist or has no verdict."""
        check_review(reviewer, decision, comment)
        with self._write() as session:
            hyp = get_row(session, Hypothesis, hypothesis_id)
            if investigation_id is not None and hyp.investigation_id != investigation_id:
                raise NotFoundError(
                    f"hypothesis {hypothesis_id} is not part of investigation {investigation_id}"
                )
            verdict_id = session.execute(
                select(func.max(col(Verdict.id))).where(col(Verdict.hypothesis_id) == hypothesis_id)
            ).scalar()
            if verdict_id is None:
                raise NotFoundError(f"hypothesis {hypothesis_id} has no verdict to review")
            row = Review(
                verdict_id=verdict_id, reviewer=reviewer.strip(), decision=decision, comment=comment
            )
            return add_row(session, row)

    def list_reviews(
        self, *, investigation_id: int | None = None, hypothesis_id: int | None = None
    ) -> list[ReviewRecord]:
        """Reviews, oldest first, of one hypothesis's verdicts or one investigation's."""
        rev, ver, hyp = Review.__table__, Verdict.__table__, Hypothesis.__table__
        stmt = select(rev).join(ver, ver.c.id == rev.c.verdict_id)
        if hypothesis_id is not None:
            stmt = stmt.where(ver.c.hypothesis_id == hypothesis_id)
        if investigation_id is not None:
            stmt = stmt.join(hyp, hyp.c.id == ver.c.hypothesis_id).where(
                hyp.c.investigation_id == investigation_id
            )
        with self._read() as session:
            return records(session, stmt.order_by(rev.c.id), ReviewRecord)

    def verdict_overview(self, investigation_ids: Sequence[int]) -> dict[int, dict[str, int]]:
        """Per investigation: how many hypotheses' latest verdicts are ``supported``,
        ``refuted``, ``inconclusive``, and how many of those are ``accepted``, ``disputed`` or
        ``unreviewed`` (a verdict's state is its latest review's decision)."""
        ver, hyp, rev = Verdict.__table__, Hypothesis.__table__, Review.__table__
        ids = [int(i) for i in investigation_ids]
        out: dict[int, dict[str, int]] = {i: defaultdict(int) for i in ids}
        if not ids:
            return {}
        with self._read() as session:
            verdicts = session.execute(
                select(hyp.c.investigation_id, ver.c.hypothesis_id, ver.c.id, ver.c.status)
                .join(hyp, hyp.c.id == ver.c.hypothesis_id)
                .where(hyp.c.investigation_id.in_(ids))
                .order_by(ver.c.id)
            ).all()
            latest = {row.hypothesis_id: row for row in verdicts}
            decisions = dict(
                session.execute(
                    select(rev.c.verdict_id, rev.c.decision)
                    .where(rev.c.verdict_id.in_([row.id for row in latest.values()]))
                    .order_by(rev.c.id)
                ).all()
            )
        for row in latest.values():
            counts = out[row.investigation_id]
            counts[row.status] += 1
            decision = str(decisions.get(row.id, ""))
            counts[{"accept": "accepted", "dispute": "disputed"}.get(decision, "unreviewed")] += 1
        return {i: dict(c) for i, c in out.items()}

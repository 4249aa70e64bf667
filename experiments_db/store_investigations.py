"""The investigations of the store: creating one, its status, report path and config, the
digests of its report files, listing them with their counts, and checking one's record chain."""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlmodel import col

from rankscope.experiments_db.chain import (
    ChainCheck,
    ChainHead,
    ChainProblem,
    append_link,
    chain_head,
    check_chain,
    relink_investigation,
    verify_chain,
)
from rankscope.experiments_db.jsonutil import to_jsonable
from rankscope.experiments_db.models import (
    INVESTIGATION_STATUSES,
    Experiment,
    Hypothesis,
    Investigation,
    Verdict,
    utcnow,
)
from rankscope.experiments_db.records import InvestigationRecord, InvestigationSummary
from rankscope.experiments_db.store_core import StoreCore, add_row, choice, get_row


class InvestigationStore(StoreCore):
    """Writes and reads of the ``investigation`` table."""

    def create_investigation(
        self,
        question: str,
        model_id: str,
        data_spec: str,
        planner: str,
        *,
        llm_model: str | None = None,
        budget: Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> int:
        """Store a new investigation (status ``running``) and return its id."""
        with self._write() as session:
            row = Investigation(
                question=question,
                model_id=model_id,
                data_spec=data_spec,
                planner=planner,
                llm_model=llm_model,
                budget=to_jsonable(dict(budget or {})),
                config=to_jsonable(dict(config or {})),
                status="running",
            )
            investigation_id = add_row(session, row)
            append_link(session, investigation_id, "investigation", investigation_id)
            return investigation_id

    def set_investigation_status(
        self, investigation_id: int, status: str, *, report_path: str | Path | None = None
    ) -> None:
        """Set the status; leaving ``running`` stamps ``finished_at``."""
        choice(status, INVESTIGATION_STATUSES, "investigation status")
        with self._write() as session:
            row = get_row(session, Investigation, investigation_id, for_update=True)
            row.status = status
            row.finished_at = None if status == "running" else utcnow()
            if report_path is not None:
                row.report_path = str(report_path)

    def set_report_path(self, investigation_id: int, report_path: str | Path) -> None:
        with self._write() as session:
            row = get_row(session, Investigation, investigation_id, for_update=True)
            row.report_path = str(report_path)

    def update_investigation_config(self, investigation_id: int, config: Mapping[str, Any]) -> None:
        """Replace the investigation's ``config`` JSON (linked into the record chain when what
        it attests changed: everything but the lease)."""
        with self._write() as session:
            row = get_row(session, Investigation, investigation_id, for_update=True)
            row.config = to_jsonable(dict(config))
            session.flush()
            relink_investigation(session, investigation_id)

    def record_report_files(self, investigation_id: int, files: Mapping[str, str]) -> None:
        """Keep the sha256 of each report file just written (absolute path → digest) in the
        investigation's config under ``report_files`` (replacing those of an earlier report), in
        the record chain; the audit checks the files against them."""
        with self._write() as session:
            row = get_row(session, Investigation, investigation_id, for_update=True)
            row.config = {
                **(row.config or {}),
                "report_files": {str(k): v for k, v in files.items()},
            }
            session.flush()
            relink_investigation(session, investigation_id)

    def get_investigation(self, investigation_id: int) -> InvestigationRecord:
        with self._read() as session:
            return InvestigationRecord.model_validate(
                get_row(session, Investigation, investigation_id)
            )

    def list_investigations(
        self, *, status: str | None = None, limit: int | None = None
    ) -> list[InvestigationSummary]:
        """Investigations, newest first, with their hypothesis/experiment/verdict counts."""
        inv = Investigation.__table__
        stmt = select(inv).order_by(inv.c.id.desc())
        if status is not None:
            stmt = stmt.where(inv.c.status == choice(status, INVESTIGATION_STATUSES, "status"))
        if limit is not None:
            stmt = stmt.limit(limit)
        with self._read() as session:
            rows = [dict(r) for r in session.execute(stmt).mappings()]
            ids = [r["id"] for r in rows]
            counts: dict[str, dict[int, int]] = {}
            for key, column in (
                ("n_hypotheses", col(Hypothesis.investigation_id)),
                ("n_experiments", col(Experiment.investigation_id)),
            ):
                counts[key] = dict(
                    session.execute(
                        select(column, func.count()).where(column.in_(ids)).group_by(column)
                    ).all()
                )
            counts["n_verdicts"] = dict(
                session.execute(
                    select(col(Hypothesis.investigation_id), func.count(col(Verdict.id)))
                    .join(Verdict, col(Verdict.hypothesis_id) == col(Hypothesis.id))
                    .where(col(Hypothesis.investigation_id).in_(ids))
                    .group_by(col(Hypothesis.investigation_id))
                ).all()
            )
        return [
            InvestigationSummary.model_validate(
                {**r, **{k: counts[k].get(r["id"], 0) for k in counts}}
            )
            for r in rows
        ]

    def verify_records(self, investigation_id: int) -> tuple[int, list[ChainProblem]]:
        """Check the investigation's records against its record chain (:mod:`.chain`): the
        number of links and every record changed, deleted or added outside the store."""
        with self._read() as session:
            get_row(session, Investigation, investigation_id)
            return verify_chain(session, investigation_id)

    def check_records(
        self, investigation_id: int, *, expect: str | None = None, signed: bool = False
    ) -> ChainCheck:
        """:meth:`verify_records` with everything :func:`~.chain.check_chain` finds: the chain
        version, signatures (with ``signed``: every link must be signed by a trusted key), and
        with ``expect`` whether the chain still passes through that head (kept outside the
        database)."""
        with self._read() as session:
            get_row(session, Investigation, investigation_id)
            return check_chain(session, investigation_id, expect=expect, signed=signed)

    def chain_head(self, investigation_id: int) -> ChainHead | None:
        """The head of the investigation's record chain (None without links)."""
        with self._read() as session:
            get_row(session, Investigation, investigation_id)
            return chain_head(session, investigation_id)

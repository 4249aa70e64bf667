"""Audit jobs started from the review workspace: their state, progress and findings, kept in the
store so that a restart loses none."""

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, update
from sqlmodel import col

from rankscope.experiments_db.models import AUDIT_JOB_STATES, AuditJob, Investigation, utcnow
from rankscope.experiments_db.records import ACTIVE_AUDIT_JOB_STATES, AuditCheck, AuditJobRecord
from rankscope.experiments_db.store_core import StoreCore, add_row, choice, get_row, records


class AuditJobStore(StoreCore):
    """Writes and reads of the ``audit_job`` table."""

    def create_audit_job(self, investigation_id: int, *, rerun: bool, owner: str) -> int:
        """Store a queued audit of an investigation; ``owner`` names the process running it."""
        with self._write() as session:
            get_row(session, Investigation, investigation_id)
            row = AuditJob(investigation_id=investigation_id, rerun=rerun, owner=owner)
            return add_row(session, row)

    def update_audit_job(
        self,
        job_id: int,
        *,
        state: str | None = None,
        done: int | None = None,
        total: int | None = None,
        findings: Sequence[AuditCheck] | None = None,
        error: str | None = None,
    ) -> None:
        """Record an audit job's progress; a final state (done, failed, interrupted) stamps its
        end. A job that has already ended is left as it is."""
        values: dict[str, Any] = {}
        if state is not None:
            values["state"] = choice(state, AUDIT_JOB_STATES, "audit job state")
            if state not in ACTIVE_AUDIT_JOB_STATES:
                values["finished_at"] = utcnow()
        if done is not None:
            values["done"] = done
        if total is not None:
            values["total"] = total
        if findings is not None:
            values["findings"] = [f.model_dump() for f in findings]
        if error is not None:
            values["error"] = error
        with self._write() as session:
            get_row(session, AuditJob, job_id)
            session.execute(
                update(AuditJob)
                .where(col(AuditJob.id) == job_id)
                .where(col(AuditJob.state).in_(ACTIVE_AUDIT_JOB_STATES))
                .values(**values)
            )

    def get_audit_job(self, job_id: int) -> AuditJobRecord:
        with self._read() as session:
            return AuditJobRecord.model_validate(get_row(session, AuditJob, job_id))

    def list_audit_jobs(
        self, investigation_id: int | None = None, *, active: bool = False
    ) -> list[AuditJobRecord]:
        """Audit jobs, newest first: one investigation's, or all; only queued and running ones
        when ``active``."""
        stmt = select(AuditJob.__table__).order_by(col(AuditJob.id).desc())
        if investigation_id is not None:
            stmt = stmt.where(col(AuditJob.investigation_id) == investigation_id)
        if active:
            stmt = stmt.where(col(AuditJob.state).in_(ACTIVE_AUDIT_JOB_STATES))
        with self._read() as session:
            return records(session, stmt, AuditJobRecord)

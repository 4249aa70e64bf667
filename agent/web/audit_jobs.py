"""Audits started from the page: each runs ``audit_investigation`` in a background thread.

Jobs live in the server's memory (the schema has no audit-job table): a restart forgets them,
and the store is only read by them.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rankscope.agent.audit import AuditReport, audit_investigation
from rankscope.experiments_db.repository import Store

Auditor = Callable[..., AuditReport]


@dataclass
class AuditJob:
    id: int
    investigation_id: int
    rerun: bool
    state: str = "queued"
    """queued, running, done or failed."""
    started: float = field(default_factory=time.time)
    finished: float | None = None
    report: AuditReport | None = None
    error: str = ""

    @property
    def elapsed_s(self) -> float:
        return (self.finished or time.time()) - self.started

    @property
    def active(self) -> bool:
        return self.state in ("queued", "running")


class AuditJobs:
    """The audit jobs of one server; one thread per job."""

    def __init__(self, store: Store, auditor: Auditor = audit_investigation) -> None:
        self.store = store
        self.auditor = auditor
        self._jobs: dict[int, AuditJob] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def start(self, investigation_id: int, *, rerun: bool) -> AuditJob:
        with self._lock:
            job = AuditJob(next(self._ids), investigation_id, rerun)
            self._jobs[job.id] = job
        thread = threading.Thread(
            target=self._run, args=(job,), daemon=True, name=f"audit-{job.id}"
        )
        thread.start()
        return job

    def _run(self, job: AuditJob) -> None:
        job.state = "running"
        try:
            job.report = self.auditor(self.store, job.investigation_id, rerun=job.rerun)
            job.state = "done"
        except Exception as exc:
            job.error = f"{type(exc).__name__}: {exc}"
            job.state = "failed"
        finally:
            job.finished = time.time()

    def get(self, job_id: int) -> AuditJob | None:
        return self._jobs.get(job_id)

    def of(self, investigation_id: int) -> list[AuditJob]:
        """The investigation's jobs, newest first."""
        return sorted(
            (j for j in self._jobs.values() if j.investigation_id == investigation_id),
            key=lambda j: -j.id,
        )

    def wait(self, job_id: int, timeout: float = 60.0) -> AuditJob:
        """Block until the job ends (for tests and the CLI)."""
        deadline = time.time() + timeout
        job = self._jobs[job_id]
        while job.active and time.time() < deadline:
            time.sleep(0.02)
        return job

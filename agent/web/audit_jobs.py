"""Audits started from the page: each runs ``audit_investigation`` in a background thread and
keeps its state, progress and findings in the store's ``audit_job`` table.

A restarted server (or another one on the same store) shows every job. A job is owned by the
process running it (``host:pid``); when a server starts, the active jobs of dead processes on its
host are marked ``interrupted``, and a server that shuts down marks its own active jobs the same
way, so no job is left ``running`` forever. Pages show the store's
:class:`~rankscope.experiments_db.records.AuditJobRecord` directly.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable

from rankscope.agent.audit import AuditReport, audit_investigation
from rankscope.experiments_db.errors import NotFoundError
from rankscope.experiments_db.records import AuditJobRecord
from rankscope.experiments_db.repository import Store

Auditor = Callable[..., AuditReport]
INTERRUPTED_BY_EXIT = "the server running this audit stopped before it finished; start it again"
INTERRUPTED_ORPHAN = "the server process running this audit ({owner}) is gone; start it again"


def this_process() -> str:
    """The owner name of jobs run by this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_is_dead(owner: str) -> bool:
    """Whether ``owner`` (``host:pid``) names a process of this host that no longer runs; a
    process on another host is never judged dead from here."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class AuditJobs:
    """The audit jobs of one server, stored in its store; one thread per job started here."""

    def __init__(self, store: Store, auditor: Auditor = audit_investigation) -> None:
        self.store = store
        self.auditor = auditor
        self.owner = this_process()
        self._threads: dict[int, threading.Thread] = {}
        self.interrupt_orphans()

    def interrupt_orphans(self) -> list[int]:
        """Mark the active jobs of dead processes on this host ``interrupted``; their ids."""
        orphans = [
            job for job in self.store.list_audit_jobs(active=True) if owner_is_dead(job.owner)
        ]
        for job in orphans:
            self.store.update_audit_job(
                job.id, state="interrupted", error=INTERRUPTED_ORPHAN.format(owner=job.owner)
            )
        return [job.id for job in orphans]

    def start(self, investigation_id: int, *, rerun: bool) -> AuditJobRecord:
        job_id = self.store.create_audit_job(investigation_id, rerun=rerun, owner=self.owner)
        thread = threading.Thread(
            target=self._run, args=(job_id, investigation_id, rerun), daemon=True
        )
        self._threads[job_id] = thread
        thread.start()
        return self.store.get_audit_job(job_id)

    def _run(self, job_id: int, investigation_id: int, rerun: bool) -> None:
        self.store.update_audit_job(job_id, state="running")

        def progress(done: int, total: int) -> None:
            self.store.update_audit_job(job_id, done=done, total=total)

        try:
            report = self.auditor(self.store, investigation_id, rerun=rerun, progress=progress)
        except Exception as exc:
            self.store.update_audit_job(
                job_id, state="failed", error=f"{type(exc).__name__}: {exc}"
            )
        else:
            self.store.update_audit_job(job_id, state="done", findings=report.findings)

    def shutdown(self) -> None:
        """Mark the jobs this server is still running ``interrupted`` (the server is stopping)."""
        for job in self.store.list_audit_jobs(active=True):
            if job.id in self._threads:
                self.store.update_audit_job(job.id, state="interrupted", error=INTERRUPTED_BY_EXIT)

    def get(self, job_id: int) -> AuditJobRecord | None:
        try:
            return self.store.get_audit_job(job_id)
        except NotFoundError:
            return None

    def of(self, investigation_id: int) -> list[AuditJobRecord]:
        """The investigation's jobs, newest first."""
        return self.store.list_audit_jobs(investigation_id)

    def wait(self, job_id: int, timeout: float = 60.0) -> AuditJobRecord:
        """Block until the job ends (for tests and the CLI)."""
        thread = self._threads.get(job_id)
        if thread is not None:
            thread.join(timeout)
        view = self.get(job_id)
        if view is None:
            raise NotFoundError(f"audit job {job_id} does not exist")
        return view

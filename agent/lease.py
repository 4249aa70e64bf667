"""One process drives an investigation at a time: a lease in the investigation's settings.

The process that runs an investigation writes its :class:`~rankscope.agent.settings.Lease`
(host, pid, heartbeat), renews the heartbeat while it runs (:class:`Heartbeat`: at most once per
:data:`RENEW_EVERY_S`, checked after every graph node) and removes the lease when it stops.
Another process may take over only when the holder is gone: on the same host its pid is no longer
alive; on another host its heartbeat is older than :data:`STALE_AFTER_S`. A process killed with
``kill -9`` thus leaves a lease that the next ``resume`` on its host takes over at once, and that
``rankscope list`` shows as ``interrupted (stale lease)`` (:func:`shown_status`) until then.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from rankscope.agent.settings import Lease, save_settings, settings_of
from rankscope.experiments_db.records import InvestigationRecord
from rankscope.experiments_db.repository import Store

STALE_AFTER_S = 30 * 60.0
RENEW_EVERY_S = 60.0
"""How old this process's heartbeat may get before :meth:`Heartbeat.beat` renews it (far below
:data:`STALE_AFTER_S`, so a live process's lease never looks stale)."""


class LeaseHeldError(RuntimeError):
    """Another live process is driving the investigation."""


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs on this host: it exists and is not a zombie (killed, not yet reaped
    by its parent — a Ray worker killed with ``kill -9`` stays one until the raylet reaps it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """Whether ``pid`` is a zombie, from ``/proc/PID/stat`` (where there is no ``/proc``: no)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[-1].split()
    return bool(fields) and fields[0] == "Z"


def _now() -> datetime:
    return datetime.now(UTC)


def _holder(lease: Lease) -> str | None:
    """Who holds ``lease``, if it is someone else and still live; else None."""
    if lease.host == socket.gethostname():
        if lease.pid == os.getpid() or not _pid_alive(lease.pid):
            return None
        return f"process {lease.pid} on this host"
    try:
        age = (_now() - datetime.fromisoformat(lease.heartbeat)).total_seconds()
    except ValueError:
        return None
    if age > STALE_AFTER_S:
        return None
    return f"process {lease.pid} on host {lease.host} (last heartbeat {age:.0f} s ago)"


STALE_STATUS = "interrupted (stale lease)"
"""How ``rankscope list`` shows a ``running`` investigation that no live process drives."""


def lease_expired(lease: Lease | None) -> bool:
    """Whether no live process holds ``lease``, by the takeover rules: on this host its pid is
    gone; on another host its heartbeat is older than :data:`STALE_AFTER_S` (or unreadable).
    No lease at all counts as expired; this process's own lease does not."""
    if lease is None:
        return True
    if lease.host == socket.gethostname():
        return lease.pid != os.getpid() and not _pid_alive(lease.pid)
    try:
        age = (_now() - datetime.fromisoformat(lease.heartbeat)).total_seconds()
    except (ValueError, TypeError):
        return True
    return age > STALE_AFTER_S


def shown_status(investigation: InvestigationRecord) -> str:
    """The status to show: the stored one, except that a ``running`` investigation whose lease
    expired (its process was killed, e.g. with ``kill -9``) is :data:`STALE_STATUS` until
    ``rankscope resume`` takes it over."""
    if investigation.status != "running":
        return investigation.status
    raw = (investigation.config or {}).get("lease")
    try:
        lease = None if raw is None else Lease.model_validate(raw)
    except ValidationError:
        lease = None
    return STALE_STATUS if lease_expired(lease) else investigation.status


def own_lease() -> Lease:
    """This process's lease, with the current time as its heartbeat."""
    return Lease(host=socket.gethostname(), pid=os.getpid(), heartbeat=_now().isoformat())


def _write(store: Store, investigation_id: int, lease: Lease | None) -> None:
    settings = settings_of(store.get_investigation(investigation_id))
    settings.lease = lease
    save_settings(store, investigation_id, settings)


def claim(store: Store, investigation_id: int) -> None:
    """Take the lease, or raise :class:`LeaseHeldError` saying who holds it and what to do."""
    inv = store.get_investigation(investigation_id)
    lease = settings_of(inv).lease
    if inv.status == "running" and lease is not None:
        holder = _holder(lease)
        if holder is not None:
            raise LeaseHeldError(
                f"investigation {investigation_id} is being run by {holder}; nothing was changed. "
                f"Stop that process (SIGINT or SIGTERM marks it interrupted) and resume after, "
                f"or wait for it to finish"
            )
    renew(store, investigation_id)


def renew(store: Store, investigation_id: int) -> None:
    """Write (or refresh) this process's lease with the current time as its heartbeat."""
    _write(store, investigation_id, own_lease())


def release(store: Store, investigation_id: int) -> None:
    """Drop this process's lease (if it still holds it)."""
    lease = settings_of(store.get_investigation(investigation_id)).lease
    if lease is not None and lease.pid == os.getpid():
        _write(store, investigation_id, None)


@dataclass
class Heartbeat:
    """Keeps this process's lease of an investigation fresh: :meth:`beat` renews it when the
    last renewal (the claim, at the heartbeat's creation) is :data:`RENEW_EVERY_S` old."""

    store: Store
    investigation_id: int
    every_s: float = RENEW_EVERY_S
    clock: Callable[[], float] = time.monotonic
    _last: float = field(init=False)

    def __post_init__(self) -> None:
        self._last = self.clock()

    def beat(self) -> None:
        now = self.clock()
        if now - self._last >= self.every_s:
            renew(self.store, self.investigation_id)
            self._last = now

"""One process drives an investigation at a time: a lease in the investigation's ``config`` JSON.

The process that runs an investigation writes ``config["lease"]`` (host, pid, heartbeat), renews
the heartbeat after every graph node and removes the lease when it stops. Another process may
take over only when the holder is gone: on the same host its pid is no longer alive; on another
host its heartbeat is older than :data:`STALE_AFTER_S`. A process killed with ``kill -9`` thus
leaves a lease that the next ``resume`` on its host takes over at once.
"""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime
from typing import Any

from rankscope.experiments_db.repository import Store

LEASE_KEY = "lease"
STALE_AFTER_S = 30 * 60.0


class LeaseHeldError(RuntimeError):
    """Another live process is driving the investigation."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _now() -> datetime:
    return datetime.now(UTC)


def _holder(lease: dict[str, Any]) -> str | None:
    """Who holds ``lease``, if it is someone else and still live; else None."""
    host, pid = lease.get("host"), lease.get("pid")
    if not isinstance(pid, int):
        return None
    if host == socket.gethostname():
        if pid == os.getpid() or not _pid_alive(pid):
            return None
        return f"process {pid} on this host"
    try:
        age = (_now() - datetime.fromisoformat(str(lease.get("heartbeat")))).total_seconds()
    except ValueError:
        return None
    if age > STALE_AFTER_S:
        return None
    return f"process {pid} on host {host} (last heartbeat {age:.0f} s ago)"


def _write(store: Store, investigation_id: int, lease: dict[str, Any] | None) -> None:
    config = dict(store.get_investigation(investigation_id).config or {})
    if lease is None:
        config.pop(LEASE_KEY, None)
    else:
        config[LEASE_KEY] = lease
    store.update_investigation_config(investigation_id, config)


def claim(store: Store, investigation_id: int) -> None:
    """Take the lease, or raise :class:`LeaseHeldError` saying who holds it and what to do."""
    inv = store.get_investigation(investigation_id)
    lease = (inv.config or {}).get(LEASE_KEY)
    if inv.status == "running" and isinstance(lease, dict):
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
    _write(
        store,
        investigation_id,
        {"host": socket.gethostname(), "pid": os.getpid(), "heartbeat": _now().isoformat()},
    )


def release(store: Store, investigation_id: int) -> None:
    """Drop this process's lease (if it still holds it)."""
    lease = (store.get_investigation(investigation_id).config or {}).get(LEASE_KEY)
    if isinstance(lease, dict) and lease.get("pid") == os.getpid():
        _write(store, investigation_id, None)

"""The review workspace behind ``rankscope serve``: server-rendered pages over the store.

Pages read investigations through :class:`~rankscope.experiments_db.Store`; the only rows they
write are reviews and audit jobs (the ``review`` and ``audit_job`` tables).
"""

from rankscope.agent.web.app import create_app

__all__ = ["create_app"]

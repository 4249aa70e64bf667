"""The repository: how the agent writes and reads the evidence store.

:class:`Store` is the one object callers use. It combines the parts of the store, one module per
job, each a class over :class:`~rankscope.experiments_db.store_core.StoreCore` (the engine, the
artifact folder and short sessions):

- :mod:`.store_investigations`: investigations, their status and config, listing, record checks;
- :mod:`.store_recording`: hypotheses, experiments, evidence with artifacts, verdicts (writes);
- :mod:`.store_queries`: hypotheses, experiments, evidence, verdicts, the investigation tree and
  one hypothesis's subtree (reads);
- :mod:`.store_reviews`: human reviews of verdicts and the review rules;
- :mod:`.store_audit_jobs`: audit jobs started from the review workspace;
- :mod:`.store_llm_calls`: LLM calls and their token totals.

Bundles (export and import of one investigation) live in :mod:`.bundle`. Every method opens and
closes its own short transaction and returns plain data (ids or the pydantic records of
:mod:`rankscope.experiments_db.records`), so callers never hold a session.
"""

from rankscope.experiments_db.store_audit_jobs import AuditJobStore
from rankscope.experiments_db.store_investigations import InvestigationStore
from rankscope.experiments_db.store_llm_calls import LLMCallStore
from rankscope.experiments_db.store_queries import QueryStore
from rankscope.experiments_db.store_recording import RecordingStore
from rankscope.experiments_db.store_reviews import ReviewStore


class Store(
    InvestigationStore, RecordingStore, QueryStore, ReviewStore, AuditJobStore, LLMCallStore
):
    """The evidence store: a database engine plus the artifact folder its rows point into."""

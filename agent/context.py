"""What the graph's nodes use besides the state: :class:`GraphContext` (LangGraph's runtime
context, never checkpointed) and :class:`StoredInvestigation`, the investigation as stored.

The settings (and so the policy and the budget) are parsed once, when the run starts. The
investigation is read in full once per run; after that a node that writes re-reads only the
hypothesis it wrote (``Store.hypothesis_node``), so the store work of one step does not grow with
the number of hypotheses before it. Only the process holding the lease
(:mod:`rankscope.agent.lease`) writes to an investigation's hypotheses, so the copy stays exact.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rankscope.agent.execution import Lab
from rankscope.agent.lease import Heartbeat
from rankscope.agent.ledger import ledger_entry
from rankscope.agent.planners.base import LedgerEntry, Planner
from rankscope.agent.policy import StatsPolicy
from rankscope.agent.progress import ProgressPrinter
from rankscope.agent.settings import InvestigationSettings
from rankscope.agent.state import Budget
from rankscope.experiments_db.records import HypothesisNode, InvestigationTree
from rankscope.experiments_db.repository import Store


class StoredInvestigation:
    """The investigation's hypotheses with their experiments, evidence and verdicts, read in full
    on first use and kept current by :meth:`refresh` after each write; the ledger entry of each
    hypothesis is computed once per version of it."""

    def __init__(self, store: Store, investigation_id: int) -> None:
        self.store = store
        self.investigation_id = investigation_id
        self._tree: InvestigationTree | None = None
        self._nodes: dict[int, HypothesisNode] = {}
        self._entries: dict[int, LedgerEntry] = {}

    @property
    def tree(self) -> InvestigationTree:
        """The investigation's tree (without LLM calls), as the verdict rules read it."""
        if self._tree is None:
            self._tree = self.store.investigation_tree(
                self.investigation_id, include_llm_calls=False
            )
            self._nodes = {h.id: h for h in self._tree.hypotheses}
        return self._tree

    def node(self, hypothesis_id: int) -> HypothesisNode:
        """One hypothesis as last read."""
        return next(h for h in self.tree.hypotheses if h.id == hypothesis_id)

    def refresh(self, hypothesis_id: int) -> HypothesisNode:
        """Re-read one hypothesis after a write to it (a new one included)."""
        tree = self.tree
        node = self.store.hypothesis_node(hypothesis_id)
        self._nodes[hypothesis_id] = node
        self._entries.pop(hypothesis_id, None)
        self._tree = tree.model_copy(update={"hypotheses": list(self._nodes.values())})
        return node

    def entries(self) -> list[LedgerEntry]:
        """The ledger entries of every hypothesis, in id order."""
        out = []
        for node in self.tree.hypotheses:
            entry = self._entries.get(node.id)
            if entry is None:
                entry = self._entries[node.id] = ledger_entry(node)
            out.append(entry)
        return out


@dataclass
class GraphContext:
    """What the nodes use besides the state (LangGraph's runtime context; never checkpointed)."""

    store: Store
    lab: Lab
    planner: Planner
    settings: InvestigationSettings
    investigation: StoredInvestigation
    progress: ProgressPrinter
    report_dir: Path
    write_report: Callable[[Store, int, Path], Path] | None = None
    heartbeat: Heartbeat | None = None
    clock: Callable[[], float] = time.monotonic
    decided_by: str = "rules"

    @property
    def budget(self) -> Budget:
        return self.settings.budget

    @property
    def policy(self) -> StatsPolicy:
        return self.settings.policy

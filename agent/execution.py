"""Run one tool call of an investigation and record it.

The graph validates a planner's call (:mod:`rankscope.agent.calls`, the one gate) before it gets
here. ``Lab.run_experiment`` runs a validated call: it parses the validated JSON back into the
tool's argument model, builds the :class:`~rankscope.tools.contract.ToolContext` (one retriever
per investigation, loaded once), stores the experiment as ``running`` with its provenance (model
id, weights hash, dataset hash, tool name and version, arguments, seed, package and code
versions, device), runs the tool, and records the evidence and artifacts with the experiment's
status in one transaction (``Store.finish_experiment``). A tool that raises marks its experiment
``failed``; an interrupt (KeyboardInterrupt, a crash) leaves it ``running`` for
``mark_interrupted``. Whether a call already ran is the graph's question (``run_tool`` looks for a
finished experiment of the hypothesis), not the lab's: every call here runs.

Only registered tools run, with pydantic-validated arguments: no code written by a planner is
ever executed.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from rankscope.experiments_db.provenance import capture_provenance
from rankscope.experiments_db.repository import Store
from rankscope.tools.contract import ToolContext
from rankscope.tools.running import resolve_call, run_tool
from rankscope.tools.stats import per_query_rows

SHARDED_TOOLS = ("activation_patching",)
"""Tools whose patching grid can be split across Ray actors (their ``ctx.patch_engine``)."""

_RETRIEVERS: dict[tuple[str | None, str, int, tuple[tuple[str, Any], ...]], Any] = {}


def shared_retriever(
    model: str | None,
    device: str = "cpu",
    loader: Callable[..., Any] | None = None,
    options: dict[str, Any] | None = None,
) -> Any:
    """The process's retriever for ``model`` on ``device``: loaded once, then reused.

    ``options`` are extra keyword arguments of the loader (``allow_random_weights``, ``label``).
    """
    opts = dict(options or {})
    key = (model, device, id(loader) if loader is not None else 0, tuple(sorted(opts.items())))
    if key not in _RETRIEVERS:
        if loader is None:
            from rankscope.tools.retrievers import load_retriever

            loader = load_retriever
        _RETRIEVERS[key] = loader(model, device=device, **opts)
    return _RETRIEVERS[key]


class ExperimentOutcome(BaseModel):
    """What one tool call left in the store."""

    experiment_id: int
    status: str
    evidence_id: int | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    summary: str = ""
    approximate: bool = False
    error: str | None = None
    duration_s: float = 0.0


@dataclass
class Lab:
    """The bench of one investigation: its store, model and data, loaded once per process."""

    store: Store
    investigation_id: int
    model: str | None
    data_spec: str | None
    device: str = "cpu"
    progress: bool = False
    retriever_loader: Callable[..., Any] | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    shards: int | None = None
    """Ray actors for the grids of :data:`SHARDED_TOOLS` (None: in-process). The actors load the
    model with ``load_retriever`` and return scores; this process records them."""
    _retriever: Any = field(default=None, repr=False)
    _patcher: Any = field(default=None, repr=False)
    _data: Any = field(default=None, repr=False)
    timings: dict[str, float] = field(default_factory=dict)

    def retriever(self) -> Any:
        """The investigation's retriever, loaded on first use."""
        if self._retriever is None:
            started = time.perf_counter()
            self._retriever = shared_retriever(
                self.model, self.device, self.retriever_loader, self.model_options
            )
            self.timings["model_load_s"] = time.perf_counter() - started
        return self._retriever

    def patch_engine(self, tool_name: str) -> Callable[..., Any] | None:
        """The sharded patching engine for ``tool_name`` when the investigation runs with
        ``shards`` (its actors start on first use and serve every later call), else None."""
        if not self.shards or tool_name not in SHARDED_TOOLS:
            return None
        if self._patcher is None:
            from rankscope.tools.interventions.sharding import ShardedPatcher

            self._patcher = ShardedPatcher(
                self.model, self.shards, device=self.device, model_options=self.model_options
            )
        return self._patcher.patch_pairs

    def close(self) -> None:
        """End the sharded engine's actors (and a Ray it started), if any."""
        if self._patcher is not None:
            self._patcher.close()
            self._patcher = None

    def data(self) -> Any:
        """The investigation's data source, resolved on first use."""
        if self._data is None:
            from rankscope.tools.data.source import resolve_data

            started = time.perf_counter()
            self._data = resolve_data(self.data_spec)
            self.timings["data_load_s"] = time.perf_counter() - started
        return self._data

    def dataset_hash(self) -> str:
        return str(self.data().content_hash())

    def run_experiment(
        self, hypothesis_id: int | None, tool_name: str, args_json: dict[str, Any]
    ) -> ExperimentOutcome:
        """Run and record one tool call whose arguments the graph validated (see the module
        docstring)."""
        tool, args = resolve_call(tool_name, args_json)
        retriever = self.retriever()
        data = self.data()
        args_json = args.model_dump(mode="json")
        seed = getattr(args, "seed", None)
        provenance = capture_provenance(
            tool_name=tool.name,
            tool_version=tool.version,
            args=args_json,
            seed=seed,
            model_id=retriever.model_id,
            weights_hash=retriever.weights_hash,
            dataset_hash=str(data.content_hash()),
            device=self.device,
            timings=dict(self.timings),
            extra={
                "data_spec": self.data_spec,
                "data_name": getattr(data, "name", None),
                "model": retriever.describe(),
                "investigation_id": self.investigation_id,
                "hypothesis_id": hypothesis_id,
            },
        )
        experiment_id = self.store.start_experiment(
            self.investigation_id,
            tool.name,
            args_json,
            hypothesis_id=hypothesis_id,
            tool_version=tool.version,
            seed=seed,
            provenance=provenance,
        )
        with tempfile.TemporaryDirectory(prefix=f"rankscope-exp{experiment_id}-") as tmp:
            ctx = ToolContext(
                retriever_factory=lambda: retriever,
                data=data,
                artifact_dir=Path(tmp),
                progress=self.progress,
                device=self.device,
                patch_engine=self.patch_engine(tool.name),
            )
            started = time.perf_counter()
            try:
                run = run_tool(tool, args, ctx)
            except Exception as exc:
                message = f"{type(exc).__name__}: {exc}"
                self.store.fail_experiment(experiment_id, message)
                return ExperimentOutcome(
                    experiment_id=experiment_id,
                    status="failed",
                    error=message,
                    duration_s=time.perf_counter() - started,
                )
            result = run.result
            tables = dict(result.tables)
            if result.per_query:
                tables["per_query"] = per_query_rows(result.per_query)
            if result.run_facts:
                tables["rankscope_run_facts"] = [
                    {"fact": name, "value": value} for name, value in result.run_facts.items()
                ]
            tables["rankscope_timings"] = [
                {"phase": "tool_run", "seconds": run.seconds},
                *({"phase": k, "seconds": v} for k, v in self.timings.items()),
            ]
            evidence_id = self.store.finish_experiment(
                experiment_id,
                result.metrics,
                result.summary,
                tables,
                result.artifacts,
                result.approximate,
            )
        return ExperimentOutcome(
            experiment_id=experiment_id,
            status="finished",
            evidence_id=evidence_id,
            metrics=dict(result.metrics),
            summary=result.summary,
            approximate=result.approximate,
            duration_s=run.seconds,
        )

"""The tool contract: a tool is a pydantic ``Args`` model plus ``run(ctx, args) -> ToolResult``."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from rankscope.tools.metric_keys import MetricCatalogue, MetricSpec
from rankscope.tools.stats import QueryValue

if TYPE_CHECKING:
    from rankscope.tools.data.source import DataSource
    from rankscope.tools.retrievers.base import Retriever

SUMMARY_ROWS = 5


class ToolArgs(BaseModel):
    """Base of every tool's argument model: unknown fields are an error, never ignored."""

    model_config = ConfigDict(extra="forbid")

    seed: int = Field(0, description="Random seed; the tool is deterministic given it.")


class ArtifactFile(BaseModel):
    """A file a tool wrote (figure, tensor, table) that the caller may store."""

    path: Path
    media_type: str
    description: str = ""

    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


class ToolResult(BaseModel):
    """What a tool returns: numbers for the verdict rules, a short text for a planner, the rest."""

    metrics: dict[str, float | int | None] = Field(default_factory=dict)
    summary: str = ""
    tables: dict[str, list[dict[str, Any]]] = Field(default_factory=dict)
    artifacts: list[ArtifactFile] = Field(default_factory=list)
    approximate: bool = False
    per_query: dict[str, list[QueryValue]] = Field(default_factory=dict)
    """Per-query values of every declared estimate the run produced, by metric key (the query
    is the unit of analysis of the verdict rules; docs/evidence_contract.md §2)."""
    run_facts: dict[str, float | str] = Field(default_factory=dict)
    """Facts of the run that are not results (wall-clock seconds, device): never compared."""


@dataclass
class ToolContext:
    """Everything a tool may use: the model under study, the data, a folder for its files."""

    retriever_factory: Callable[[], Retriever]
    data: DataSource
    artifact_dir: Path
    progress: bool = True
    device: str = "cpu"
    patch_engine: Callable[..., Any] | None = None
    """Replaces the in-process ``patch_pairs`` of activation patching (same signature), e.g. a
    grid sharded across Ray actors (:mod:`rankscope.tools.interventions.sharding`)."""
    _retriever: Retriever | None = field(default=None, repr=False)

    @property
    def retriever(self) -> Retriever:
        if self._retriever is None:
            self._retriever = self.retriever_factory()
        return self._retriever

    def artifact_path(self, name: str) -> Path:
        self.artifact_dir.mkdir(parents=True, exist_ok=True)
        return self.artifact_dir / name


ArgsT = TypeVar("ArgsT", bound=ToolArgs)


class Tool(Generic[ArgsT]):
    """Base class of a registered tool, generic over its argument model: a subclass
    ``class XTool(Tool[XArgs])`` sets ``name``, ``description``, ``Args = XArgs``, ``metrics``
    and ``run(ctx, args: XArgs)``."""

    name: ClassVar[str]
    description: ClassVar[str]
    version: ClassVar[str] = "1"
    Args: type[ArgsT]
    metrics: ClassVar[MetricCatalogue | None] = None
    """The metrics the tool produces; None: undeclared (a criterion is then checked after the
    run, against the metrics it gave)."""

    def run(self, ctx: ToolContext, args: ArgsT) -> ToolResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def metrics_for(self, args: ArgsT) -> MetricCatalogue | None:
        """The metrics a run with ``args`` may produce (a tool narrows ``metrics`` by its
        arguments by overriding this)."""
        return self.metrics

    def produces(self, args: ArgsT, key: str) -> bool | None:
        """Whether a run with ``args`` may produce the metric ``key`` (None: undeclared)."""
        catalogue = self.metrics_for(args)
        return None if catalogue is None else catalogue.produces(key)

    def metric_spec(self, args: ArgsT, key: str) -> MetricSpec | None:
        """The spec that declares ``key`` for a run with ``args`` (None: undeclared)."""
        catalogue = self.metrics_for(args)
        return None if catalogue is None else catalogue.spec_for(key)

    def metric_names(self, args: ArgsT) -> list[str] | None:
        """The shapes of the keys a run with ``args`` may produce (None: undeclared)."""
        catalogue = self.metrics_for(args)
        return None if catalogue is None else catalogue.patterns()

    @classmethod
    def openai_schema(cls) -> dict[str, Any]:
        """The OpenAI Chat Completions tool spec for this tool."""
        return {
            "type": "function",
            "function": {
                "name": cls.name,
                "description": cls.description,
                "parameters": cls.Args.model_json_schema(),
            },
        }


def summarise_rows(
    rows: list[dict[str, Any]], columns: list[str], limit: int = SUMMARY_ROWS
) -> str:
    """A compact text table of the first ``limit`` rows, with a note when more rows exist."""
    lines = []
    for row in rows[:limit]:
        cells = []
        for col in columns:
            value = row.get(col)
            cells.append(f"{col}={value:.4g}" if isinstance(value, float) else f"{col}={value}")
        lines.append("  " + ", ".join(cells))
    if len(rows) > limit:
        lines.append(f"  … {len(rows) - limit} more rows in the full table")
    return "\n".join(lines)

"""The tool contract: a tool is a pydantic ``Args`` model plus ``run(ctx, args) -> ToolResult``."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from rankscope.tools.diagnostics.source import DataSource
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


@dataclass
class ToolContext:
    """Everything a tool may use: the model under study, the data, a folder for its files."""

    retriever_factory: Callable[[], Retriever]
    data: DataSource
    artifact_dir: Path
    progress: bool = True
    device: str = "cpu"
    _retriever: Retriever | None = field(default=None, repr=False)

    @property
    def retriever(self) -> Retriever:
        if self._retriever is None:
            self._retriever = self.retriever_factory()
        return self._retriever

    def artifact_path(self, name: str) -> Path:
        self.artifact_dir.mkdir(parents=True, exist_ok=True)
        return self.artifact_dir / name


class Tool:
    """Base class of a registered tool. Subclasses set ``name``, ``description``, ``Args``, ``run``."""

    name: ClassVar[str]
    description: ClassVar[str]
    version: ClassVar[str] = "1"
    Args: ClassVar[type[ToolArgs]]

    def run(self, ctx: ToolContext, args: ToolArgs) -> ToolResult:  # pragma: no cover - abstract
        raise NotImplementedError

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

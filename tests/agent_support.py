"""Helpers of the agent tests: tiny models, a scripted planner, a one-call investigation runner."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from rankscope.agent.planners.base import (
    Criterion,
    Ledger,
    LedgerEntry,
    Narrative,
    Planner,
    Proposal,
    Stop,
)
from rankscope.agent.policy import StatsPolicy
from rankscope.agent.runner import RunResult, investigate
from rankscope.agent.settings import InvestigationSettings
from rankscope.agent.state import Budget
from tests.tiny_models import save_tiny_model

QUESTION = "Does the tiny model reward repeated query terms (TFC1)?"


def null_bert(folder: Path) -> Path:
    """A randomly initialised tiny BERT (CLS pooling) whose attention value projections are zero.

    No position can read another, so the CLS embedding — the document's representation — is the
    same for every document: the score provably does not depend on the document, and every claim
    of an effect of a document perturbation is false.
    """
    from transformers import AutoModel

    save_tiny_model(folder, "bert", st_pooling="cls")
    model = AutoModel.from_pretrained(folder)
    with torch.no_grad():
        for layer in model.encoder.layer:
            layer.attention.self.value.weight.zero_()
            layer.attention.self.value.bias.zero_()
    model.save_pretrained(folder)
    return folder


def mean_bert(folder: Path) -> Path:
    """A randomly initialised tiny BERT with mean pooling (it does reward appended query terms:
    mean pooling of near-bag-of-token states moves the document towards the query)."""
    return save_tiny_model(folder, "bert", st_pooling="mean")


def behaviour(
    metric: str = "share_moved_predicted",
    threshold: float = 0.5,
    n_pairs: int = 12,
    **args: Any,
) -> Proposal:
    return Proposal(
        hypothesis=f"TFC1 append moves {metric} above {threshold}",
        tool="behavioural_test",
        args={"n_pairs": n_pairs, "n_bootstrap": 200, **args},
        criterion=Criterion(metric=metric, direction="greater", threshold=threshold),
    )


TINY_POLICY = StatsPolicy(
    sesoi={"score_delta": 1e-5, "behaviour_share": 0.05},
    multiplicity="bonferroni",
    max_hypotheses=1,
)
"""The policy of the graph-mechanics tests: SESOIs the tiny random models can reach (their score
changes are around 1e-3, a hundred times smaller than a real retriever's; the default SESOI is
0.01) and the full alpha per hypothesis. The gaming tests use the default policy."""


Step = Proposal | Stop | BaseException | Callable[[Ledger], Any] | dict[str, Any]


class ScriptedPlanner(Planner):
    """A real planner that returns a fixed script of proposals, recording every ledger it sees."""

    name = "scripted"

    def __init__(
        self,
        script: list[Step],
        narrate_with: Callable[[Ledger, LedgerEntry], Narrative] | None = None,
    ) -> None:
        self.script = list(script)
        self.ledgers: list[Ledger] = []
        self.narrate_with = narrate_with

    def propose(self, ledger: Ledger) -> Any:
        self.ledgers.append(ledger)
        if not self.script:
            return Stop(reason="script done")
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        if callable(step) and not isinstance(step, Proposal | Stop):
            return step(ledger)
        return step

    def narrate(self, ledger: Ledger, entry: LedgerEntry) -> Narrative:
        if self.narrate_with is not None:
            return self.narrate_with(ledger, entry)
        return super().narrate(ledger, entry)


def run(
    tmp: Path,
    model: Path,
    planner: Planner,
    budget: Budget | None = None,
    question: str = QUESTION,
    policy: StatsPolicy | None = None,
) -> RunResult:
    """One investigation on ``model`` with ``planner``, in ``tmp/t.db``, quietly, under
    ``policy`` (default: :data:`TINY_POLICY`)."""
    settings = InvestigationSettings(
        model_arg=str(model),
        budget=budget or Budget(max_steps=8, max_tool_calls=8),
        policy=policy or TINY_POLICY,
    )
    return investigate(
        question,
        settings,
        db=f"sqlite:///{tmp / 't.db'}",
        report_dir=tmp / "reports",
        console=Console(file=io.StringIO()),
        quiet=True,
        planner_factory=lambda: planner,
    )

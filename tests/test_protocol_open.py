"""An open question through the graph on a tiny model with a known property (issue 11): the
protocol screens, pre-registers a confirmatory hypothesis for the planted hit, replicates it,
localises and ends with Findings that list what was screened."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rankscope.agent.planners.protocol import ProtocolPlanner
from rankscope.agent.state import Budget
from rankscope.experiments_db.engine import open_store
from tests.agent_support import TINY_POLICY, run
from tests.tiny_models import save_tiny_model

torch.set_num_threads(1)
OPEN_QUESTION = "What does this model reward besides query terms?"


def tokenwise_mean_bert(folder: Path) -> Path:
    """A tiny mean-pooled BERT whose attention value projections are zero: each position's state
    depends on its own token (and position) only, so the document embedding is a mean of
    per-token vectors. Repeating a query term moves the mean towards the query's: the planted
    property is TFC1 (append), a large score increase for every query."""
    from transformers import AutoModel

    save_tiny_model(folder, "bert", st_pooling="mean")
    model = AutoModel.from_pretrained(folder)
    with torch.no_grad():
        for layer in model.encoder.layer:
            layer.attention.self.value.weight.zero_()
            layer.attention.self.value.bias.zero_()
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    return tokenwise_mean_bert(tmp_path_factory.mktemp("tokenwise"))


def test_open_question_screens_and_follows_up_the_planted_hit(tmp_path, planted):
    planner = ProtocolPlanner(
        policy=TINY_POLICY, n_pairs=24, localise_pairs=24, top_k=1, max_follow_ups=13
    )
    result = run(
        tmp_path,
        planted,
        planner,
        Budget(max_steps=30, max_tool_calls=60),
        question=OPEN_QUESTION,
        policy=TINY_POLICY,
    )
    with open_store(f"sqlite:///{tmp_path / 't.db'}") as store:
        tree = store.investigation_tree(1)
    texts = [h.text for h in tree.hypotheses]
    assert texts[0].startswith("Screen: axiom_screen")
    follow = [h for h in tree.hypotheses if h.text.startswith("Follow-up: axiom_screen hit")]
    planted_hit = [h for h in follow if h.tool_args.get("axiom") == "TFC1"]
    assert planted_hit, texts
    (h,) = [h for h in planted_hit if h.tool_args.get("variant") == "append"]
    assert h.tool == "behavioural_test" and h.criterion.metric == "mean_delta"
    assert h.criterion.direction == "greater" and "raises scores" in h.text
    splits = [e.args["split"] for e in h.experiments]
    assert splits[0] == "discovery"
    assert any(t.startswith("Rank:") for t in texts)  # the circuit localisation's first step
    report = Path(result.report_path).read_text()
    assert "intent: open screen" in report
    assert "## Findings" in report

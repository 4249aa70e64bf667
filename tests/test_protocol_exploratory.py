"""Exploratory steps (issue 21, the screen-as-claim defect): a screen or a ranking is recorded as
exploratory — its call runs once on discovery, its evidence is stored, it gets no verdict, no
p-value, no replication and spends no level — and no hypothesis of the protocol names a head
chosen for no reason."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import torch

from rankscope.agent.calls import CallRejected, check_proposal
from rankscope.agent.ledger import ledger_entry
from rankscope.agent.planners.base import Criterion, Ledger, LedgerEntry, Proposal
from rankscope.agent.planners.protocol import Behaviour, ProtocolPlanner
from rankscope.agent.policy import StatsPolicy
from rankscope.agent.state import Budget
from rankscope.agent.verdicts import decide_hypothesis, hypothesis_level
from rankscope.experiments_db.engine import open_store
from tests.agent_support import ScriptedPlanner, behaviour, mean_bert, run

torch.set_num_threads(1)

README = (
    "Does all-MiniLM-L6-v2 reward repeated query terms (TFC1), and which components compute it?"
)


@pytest.fixture(scope="module")
def mean_model(tmp_path_factory) -> Path:
    return mean_bert(tmp_path_factory.mktemp("mean"))


def screen(**update: object) -> Proposal:
    """An exploratory screen of every head (what the protocol's fallback locate step runs)."""
    base = Proposal(
        hypothesis="Locate: a screen of every attention head. Exploratory: it claims nothing",
        tool="activation_patching",
        args={"axiom": "TFC1", "variant": "append", "n_pairs": 24, "granularity": "heads"},
        criterion=Criterion(metric="top_effect", direction="two-sided", threshold=0.0),
        exploratory=True,
    )
    return base.model_copy(update=update)


def test_an_exploratory_step_is_recorded_without_verdict_p_value_replication_or_level(
    tmp_path, mean_model
):
    claim = behaviour(n_pairs=24)
    planner = ScriptedPlanner([screen(), claim])
    run(tmp_path, mean_model, planner, Budget(max_steps=4, max_tool_calls=6))
    with open_store(f"sqlite:///{tmp_path / 't.db'}") as store:
        tree = store.investigation_tree(1)
    first, second = tree.hypotheses
    assert first.exploratory and not second.exploratory
    # recorded: one experiment on discovery with its evidence; never replicated, never decided
    assert [e.args["split"] for e in first.experiments] == ["discovery"]
    assert first.experiments[0].evidence
    assert first.verdicts == []
    # its stored criterion names what it reports and claims nothing
    assert first.criterion.direction == "two-sided" and first.criterion.threshold == 0.0
    # the planner reads it as exploratory, with its discovery numbers to rank by
    entry = ledger_entry(first)
    assert entry.status == "exploratory" and entry.key_metrics and entry.replication is None
    assert planner.ledgers[1].entries[0].status == "exploratory"
    # it spends no level: the claim after it is the first confirmatory hypothesis
    policy = StatsPolicy()
    assert hypothesis_level(tree, second, policy)[1] == 1
    # the rules never decide it, whatever is stored: no p-value, never supported
    decision = decide_hypothesis(tree, first, policy)
    assert decision.status == "inconclusive" and decision.reason.startswith("exploratory")
    assert decision.discovery is None and decision.level is None
    # the flag is locked with the criterion once an experiment ran
    with sqlite3.connect(tmp_path / "t.db") as conn, pytest.raises(sqlite3.DatabaseError):
        conn.execute("UPDATE hypothesis SET exploratory = 0 WHERE id = ?", (first.id,))


def test_an_exploratory_call_cannot_be_confirmed_by_repeating_it(tmp_path, mean_model):
    """A claim registered on the screen's own call (seed aside) was registered after its results
    could be seen: exploratory, never supported."""
    claim = behaviour(n_pairs=24, seed=7)
    looked = screen(
        tool="behavioural_test",
        args={k: v for k, v in claim.args.items() if k != "seed"},
        criterion=Criterion(metric="share_moved_predicted", direction="two-sided", threshold=0.0),
    )
    planner = ScriptedPlanner([looked, claim])
    run(tmp_path, mean_model, planner, Budget(max_steps=4, max_tool_calls=6))
    with open_store(f"sqlite:///{tmp_path / 't.db'}") as store:
        tree = store.investigation_tree(1)
    _, confirmed = tree.hypotheses
    verdict = confirmed.latest_verdict
    assert verdict is not None and verdict.status != "supported"
    assert verdict.criterion_result["exploratory_of"] == tree.hypotheses[0].id


def test_exploratory_steps_run_on_discovery_only():
    held_out = screen(
        criterion=Criterion(
            metric="top_effect", direction="two-sided", threshold=0.0, split="holdout"
        )
    )
    with pytest.raises(CallRejected, match="discovery split only"):
        check_proposal(held_out, {}, StatsPolicy())
    accepted = check_proposal(
        screen(criterion=Criterion(metric="top_effect", direction="greater", threshold=0.3)),
        {},
        StatsPolicy(),
    )
    # whatever direction a planner writes, an exploratory step is stored as claiming nothing
    assert accepted["exploratory"] is True
    assert accepted["criterion"]["direction"] == "two-sided"
    assert accepted["criterion"]["threshold"] == 0.0


def _ledger(entries: list[LedgerEntry], tools_registered: bool = True) -> Ledger:
    return Ledger(
        investigation_id=1,
        question=README,
        model={"layers": 6, "heads": 12, "pooling": "mean", "kind": "bi-encoder"},
        data="builtin",
        tools=[],
        entries=entries,
        steps_left=10,
        tool_calls_left=20,
    )


def test_the_fallback_screen_names_no_head_and_is_exploratory(monkeypatch):
    """Without the circuit tool the protocol screens every head: the screen is exploratory and
    names no head (the old one pre-registered a claim about L5.H0, chosen for no reason)."""
    from rankscope.agent.planners.protocol import planner as planner_module
    from rankscope.tools.registry import all_tools

    without = {k: v for k, v in all_tools().items() if k != "circuit"}
    monkeypatch.setattr(planner_module, "all_tools", lambda: without)
    done = LedgerEntry(
        hypothesis_id=1,
        hypothesis="Behaviour: the model rewards TFC1 append",
        tool="behavioural_test",
        args={},
        criterion=Criterion(metric="share_moved_predicted", direction="greater", threshold=0.6),
        status="supported",
    )
    step = ProtocolPlanner().propose(_ledger([done]))
    assert isinstance(step, Proposal) and step.hypothesis.startswith("Locate:")
    assert step.exploratory and step.components == []
    assert "L5.H0" not in step.hypothesis and "L5.H0" not in step.criterion.metric
    accepted = check_proposal(step, {}, StatsPolicy())
    assert accepted["criterion"]["direction"] == "two-sided"


def test_single_component_criteria_are_fractions_in_the_behaviours_direction():
    planner = ProtocolPlanner()
    for predicted in ("increase", "decrease"):
        criterion = planner._effect_criterion("L1.H2", Behaviour("LNC1", "append", predicted))
        # a fraction of the behaviour: positive when the head carries it, either way
        assert criterion.direction == "greater"
        assert criterion.threshold == StatsPolicy().sesoi_for("patching_fraction") == 0.05

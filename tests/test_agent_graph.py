"""Graph guard rails, replication, budgets, crash and resume, with a scripted planner on tiny BERTs."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from rich.console import Console

from rankscope.agent.calls import fingerprint
from rankscope.agent.citations import cited_in_text
from rankscope.agent.llm_client import LLMUnavailableError
from rankscope.agent.planners.base import Narrative, Proposal, Stop
from rankscope.agent.runner import resume
from rankscope.agent.state import Budget
from rankscope.experiments_db.engine import open_store
from tests.agent_support import ScriptedPlanner, behaviour, mean_bert, null_bert, run

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def null_model(tmp_path_factory) -> Path:
    return null_bert(tmp_path_factory.mktemp("null"))


@pytest.fixture(scope="module")
def mean_model(tmp_path_factory) -> Path:
    return mean_bert(tmp_path_factory.mktemp("mean"))


def tree(tmp: Path, investigation_id: int = 1):
    with open_store(f"sqlite:///{tmp / 't.db'}") as store:
        return store.investigation_tree(investigation_id)


def feedback_of(planner: ScriptedPlanner) -> list[str]:
    return planner.ledgers[-1].feedback


def test_proposal_without_criterion_is_rejected(tmp_path, null_model):
    bare = Proposal.model_construct(
        hypothesis="no criterion",
        rationale="",
        tool="behavioural_test",
        args={"n_pairs": 8},
        criterion=None,
        components=[],
        parent_hypothesis_id=None,
    )
    planner = ScriptedPlanner([bare])
    run(tmp_path, null_model, planner)
    assert any("no pre-registered criterion" in f for f in feedback_of(planner))
    assert tree(tmp_path).hypotheses == []


def test_metric_the_tool_does_not_produce_is_rejected(tmp_path, null_model):
    planner = ScriptedPlanner([behaviour(metric="accuracy_of_nothing")])
    run(tmp_path, null_model, planner)
    assert any(
        "does not produce the metric 'accuracy_of_nothing'" in f for f in feedback_of(planner)
    )
    assert tree(tmp_path).experiments() == []


def test_unknown_tool_feedback_lists_the_tools(tmp_path, null_model):
    wrong = behaviour().model_copy(update={"tool": "telepathy"})
    planner = ScriptedPlanner([wrong])
    run(tmp_path, null_model, planner)
    message = next(f for f in feedback_of(planner) if "telepathy" in f)
    assert "available tools:" in message and "behavioural_test" in message


def test_invalid_arguments_give_the_validation_message_and_retries_are_bounded(
    tmp_path, null_model
):
    bad = behaviour(n_pairs=-3)
    planner = ScriptedPlanner([bad, bad, bad, behaviour()])
    result = run(tmp_path, null_model, planner, Budget(max_steps=8, max_invalid=3))
    messages = feedback_of(planner)
    assert any("n_pairs" in m and "greater than or equal to 1" in m for m in messages)
    assert "3 consecutive proposals were rejected" in (result.stop_reason or "")
    assert len(planner.ledgers) == 3
    assert tree(tmp_path).experiments() == []


def test_split_that_disagrees_with_the_criterion_is_rejected(tmp_path, null_model):
    planner = ScriptedPlanner([behaviour(split="holdout")])
    run(tmp_path, null_model, planner)
    assert any("disagrees with the criterion's split" in f for f in feedback_of(planner))


def test_repeated_proposals_are_detected_and_stop_the_run(tmp_path, null_model):
    same = behaviour(threshold=0.2)
    planner = ScriptedPlanner([same, behaviour(threshold=0.2, seed=0), same, same])
    result = run(tmp_path, null_model, planner, Budget(max_steps=8, max_repeats=2))
    assert sum("repeated proposal" in f for f in feedback_of(planner)) == 1
    assert "repeated already-tested proposals 2 times" in (result.stop_reason or "")
    t = tree(tmp_path)
    assert len(t.hypotheses) == 1 and len(t.experiments()) == 1
    args = t.hypotheses[0].tool_args
    assert fingerprint("behavioural_test", args, same.criterion)


def test_discovery_pass_is_replicated_on_holdout_and_supported(tmp_path, mean_model):
    planner = ScriptedPlanner([behaviour(metric="mean_delta", threshold=0.0, n_pairs=80)])
    result = run(tmp_path, mean_model, planner)
    t = tree(tmp_path)
    (h,) = t.hypotheses
    splits = [(e.args["split"], e.args["seed"], e.status) for e in h.experiments]
    assert splits == [("discovery", 0, "finished"), ("holdout", 1, "finished")]
    verdict = h.verdicts[-1]
    assert verdict.status == "supported"
    assert verdict.criterion_result["replication"]["outcome"] == "met"
    assert set(verdict.cited_evidence_ids) == {ev.id for e in h.experiments for ev in e.evidence}
    prov = h.experiments[0].provenance
    for key in ("weights_hash", "dataset_hash", "packages", "code_version", "device", "args"):
        assert prov[key]
    assert t.investigation.status == "finished"
    assert Path(result.report_path).exists()


def test_replication_skipped_when_the_tool_budget_is_spent(tmp_path, mean_model):
    planner = ScriptedPlanner([behaviour(metric="mean_delta", threshold=0.0, n_pairs=80)])
    run(tmp_path, mean_model, planner, Budget(max_steps=3, max_tool_calls=1))
    (h,) = tree(tmp_path).hypotheses
    verdict = h.verdicts[-1]
    assert len(h.experiments) == 1
    assert verdict.status == "inconclusive"
    assert "tool-call budget exhausted" in verdict.criterion_result["reason"]


def test_narrative_citing_foreign_evidence_is_replaced(tmp_path, null_model):
    def liar(ledger, entry):
        return Narrative(text="Proven beyond doubt by evidence #999.", cited_evidence_ids=[999])

    planner = ScriptedPlanner([behaviour()], narrate_with=liar)
    run(tmp_path, null_model, planner)
    (h,) = tree(tmp_path).hypotheses
    verdict = h.verdicts[-1]
    assert 999 not in verdict.cited_evidence_ids
    assert "Proven beyond doubt" not in verdict.narrative
    assert any("999" in n for n in verdict.criterion_result["notes"])
    assert cited_in_text("see E12 and evidence #7") == [7, 12]


def test_planner_crash_marks_interrupted_and_resume_continues(tmp_path, mean_model):
    planner = ScriptedPlanner(
        [
            behaviour(metric="mean_delta", threshold=0.0, n_pairs=80),
            RuntimeError("planner exploded"),
        ]
    )
    with pytest.raises(RuntimeError, match="planner exploded"):
        run(tmp_path, mean_model, planner)
    t = tree(tmp_path)
    assert t.investigation.status == "interrupted"
    before = [(e.id, e.status) for e in t.experiments()]
    assert len(before) == 2 and all(s == "finished" for _, s in before)

    follow = ScriptedPlanner([behaviour(metric="median_delta", threshold=0.0, n_pairs=80)])
    result = resume(
        1,
        db=f"sqlite:///{tmp_path / 't.db'}",
        report_dir=tmp_path / "reports",
        console=Console(file=io.StringIO()),
        quiet=True,
        planner_factory=lambda: follow,
    )
    assert result.status == "finished"
    t = tree(tmp_path)
    assert [(e.id, e.status) for e in t.experiments()][:2] == before
    assert len(t.hypotheses) == 2
    per_split = [(e.hypothesis_id, e.args["split"]) for e in t.experiments()]
    assert len(per_split) == len(set(per_split))
    # the resumed planner saw the first hypothesis in its ledger
    assert follow.ledgers[0].entries[0].status == "supported"


def test_llm_unavailable_stops_the_run_and_it_resumes(tmp_path, null_model):
    down = LLMUnavailableError(
        "the LLM endpoint http://127.0.0.1:9/v1 is unreachable",
        endpoint="http://127.0.0.1:9/v1",
        model="m",
        attempts=3,
        reason="connection refused",
    )
    planner = ScriptedPlanner([down])
    with pytest.raises(LLMUnavailableError):
        run(tmp_path, null_model, planner)
    assert tree(tmp_path).investigation.status == "interrupted"
    result = resume(
        1,
        db=f"sqlite:///{tmp_path / 't.db'}",
        report_dir=tmp_path / "reports",
        console=Console(file=io.StringIO()),
        quiet=True,
        planner_factory=lambda: ScriptedPlanner([Stop(reason="done")]),
    )
    assert result.status == "finished" and result.stop_reason == "planner: done"


def test_resume_of_a_finished_investigation_runs_nothing(tmp_path, null_model):
    run(tmp_path, null_model, ScriptedPlanner([behaviour()]))
    n = len(tree(tmp_path).experiments())
    again = ScriptedPlanner([behaviour(threshold=0.1)])
    resume(
        1,
        db=f"sqlite:///{tmp_path / 't.db'}",
        report_dir=tmp_path / "reports",
        quiet=True,
        console=Console(file=io.StringIO()),
        planner_factory=lambda: again,
    )
    assert again.ledgers == [] and len(tree(tmp_path).experiments()) == n


def test_step_budget_bounds_the_loop(tmp_path, null_model):
    planner = ScriptedPlanner([behaviour(threshold=t / 10) for t in range(10)])
    result = run(tmp_path, null_model, planner, Budget(max_steps=2, max_tool_calls=10))
    assert "step budget reached" in (result.stop_reason or "")
    assert len(tree(tmp_path).hypotheses) == 2


def test_a_step_reads_the_store_the_same_whatever_came_before(tmp_path, null_model, monkeypatch):
    from collections import Counter

    from rankscope.experiments_db.repository import Store

    calls: Counter[str] = Counter()
    reads = ("investigation_tree", "hypothesis_node", "get_evidence", "list_hypotheses")
    for name in (*reads, "list_experiments", "verdicts", "get_investigation"):
        original = getattr(Store, name)

        def spy(self, *args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(Store, name, spy)
    seen: list[Counter[str]] = []

    def step(n_pairs: int):
        def propose(ledger):
            seen.append(calls.copy())
            return behaviour(n_pairs=n_pairs)

        return propose

    run(tmp_path, null_model, ScriptedPlanner([step(12 + i) for i in range(4)]))
    per_step = [after - before for before, after in zip(seen, seen[1:], strict=False)]
    assert len(per_step) == 3 and per_step[0] == per_step[1] == per_step[2]
    assert per_step[0]["investigation_tree"] == 0 and per_step[0]["get_evidence"] == 0
    assert seen[0]["investigation_tree"] == 1


def test_the_lease_is_renewed_once_its_heartbeat_is_a_minute_old(monkeypatch):
    import rankscope.agent.lease as lease

    renewed: list[int] = []
    monkeypatch.setattr(lease, "renew", lambda store, investigation_id: renewed.append(7))
    now = [0.0]
    heartbeat = lease.Heartbeat(None, 7, clock=lambda: now[0])  # type: ignore[arg-type]
    for t in (1.0, 30.0, 59.0, 61.0, 62.0, 100.0, 122.0):
        now[0] = t
        heartbeat.beat()
    assert renewed == [7, 7] and lease.RENEW_EVERY_S < lease.STALE_AFTER_S / 10


def test_criterion_is_locked_once_the_experiment_ran(tmp_path, null_model):
    from rankscope.experiments_db.errors import CriterionLockedError

    run(tmp_path, null_model, ScriptedPlanner([behaviour()]))
    with (
        open_store(f"sqlite:///{tmp_path / 't.db'}") as store,
        pytest.raises(CriterionLockedError),
    ):
        store.update_criterion(1, threshold=0.0)


CATALOGUE_RUNS: dict[str, list[dict]] = {
    "behavioural_test": [{"n_pairs": 8, "n_bootstrap": 200}],
    "activation_patching": [{"n_pairs": 8, "components": ["L0.H1", "L1.H2"], "joint": True}],
    "circuit": [{"n_pairs": 8, "max_k": 3, "n_random_curve": 2, "n_stability": 5}],
    "attribution_patching": [{"n_pairs": 8}],
    "path_patching": [{"n_pairs": 8, "senders": ["L0.H1", "L0.H2"], "joint": True}],
    "ablation": [{"n_pairs": 8, "components": ["L0.H1", "L1.H2"]}],
    "attention_by_role": [{"n_pairs": 8, "heads": ["L0.H1", "L1.H2"]}],
    "attention_masking": [{"n_pairs": 8, "layers": [1]}],
    "linear_probe": [{"n_docs": 24, "layers": [1], "folds": 2}],
    "feature_inspection": [
        {"n_docs": 24, "n_units": 3, "top_k": 2},
        {"n_docs": 24, "n_units": 3, "top_k": 2, "property": None},
    ],
    "train_sae": [{"n_docs": 24, "epochs": 2, "layer": 1}],
    "steering": [
        {"n_docs": 16, "scales": [-1.0, 1.0]},
        {"target": "pairs", "n_pairs": 16, "scales": [-1.0, 1.0], "positions": "filler"},
    ],
    "embedding_svd": [{"n_components": 3}],
    "term_contributions": [{"n_pairs": 8, "n_bootstrap": 200}],
    "axiom_screen": [
        {"n_pairs": 6, "n_bootstrap": 200, "perturbations": ["TFC1/append", "LNC1/append"]}
    ],
    "token_screen": [{"n_docs": 8, "top_k": 3, "n_bootstrap": 200}],
    "property_regression": [{"n_docs": 16, "n_bootstrap": 100}],
    "input_attribution": [{"n_docs": 4, "steps": 4, "n_bootstrap": 100}],
}
"""Small calls of every registered tool, between them giving every metric the tool declares."""


def test_metric_catalogue_matches_what_the_tools_produce(tmp_path, mean_model):
    """Every tool declares its metrics, every metric a tool produces is declared (else the metric
    guard would reject valid criteria), and every declared metric is produced by some run (else
    the guard would let through criteria that can never be evaluated)."""
    from rankscope.tools.contract import ToolContext
    from rankscope.tools.data.source import resolve_data
    from rankscope.tools.metric_keys import parse_metric_key
    from rankscope.tools.registry import all_tools, get_tool, validate_args
    from rankscope.tools.retrievers import load_retriever
    from tests.tiny_models import save_tiny_model, save_tiny_splade

    bi_encoder = load_retriever(str(mean_model))
    other_kinds = {
        "attention_masking": save_tiny_model(tmp_path / "cross", "bert", "cross-encoder"),
        "term_contributions": save_tiny_splade(tmp_path / "splade"),
    }
    data = resolve_data(None)
    assert set(CATALOGUE_RUNS) == set(all_tools())
    for name, calls in CATALOGUE_RUNS.items():
        tool = get_tool(name)
        assert tool.metrics is not None, f"{name} declares no metrics"
        retriever = load_retriever(str(other_kinds[name])) if name in other_kinds else bi_encoder
        unmatched = set(tool.metrics.specs)
        for i, raw in enumerate(calls):
            args = validate_args(tool, raw)
            ctx = ToolContext(lambda r=retriever: r, data, tmp_path / f"{name}{i}", progress=False)
            metrics = tool.run(ctx, args).metrics
            undeclared = [k for k in metrics if not tool.produces(args, k)]
            assert not undeclared, f"{name} produces metrics it does not declare: {undeclared}"
            assert tool.produces(args, "accuracy_of_nothing") is False
            parsed = [parse_metric_key(k) for k in metrics]
            unmatched -= {spec for spec in unmatched if any(map(spec.matches, parsed))}
        assert not unmatched, f"{name} declares metrics no run produced: {unmatched}"


def test_cli_unreachable_llm_endpoint_stops_cleanly_and_is_resumable(tmp_path, null_model):
    from typer.testing import CliRunner

    from rankscope.agent.cli import app

    url = f"sqlite:///{tmp_path / 't.db'}"
    done = CliRunner().invoke(
        app,
        [
            "investigate",
            "Does the tiny model reward TFC1?",
            "--model",
            str(null_model),
            "--planner",
            "llm",
            "--llm-model",
            "nobody-serves-this",
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--db",
            url,
            "--report-dir",
            str(tmp_path / "reports"),
        ],
    )
    assert done.exit_code == 1, done.output
    assert "planner: llm (requested with --planner llm)" in done.output
    assert "stopped:" in done.output and "resume" in done.output
    t = tree(tmp_path)
    assert t.investigation.status == "interrupted"
    assert t.llm_calls and all(c.error for c in t.llm_calls)

"""The repository API on SQLite and PostgreSQL: round trips, the criterion lock, transactional
evidence, crash recovery, corrupted artifacts."""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select

from rankscope.experiments_db import (
    ArtifactIntegrityError,
    ArtifactMissingError,
    ArtifactSpec,
    CriterionLockedError,
    EvidenceWriteError,
    ExperimentStateError,
    NotFoundError,
    ReviewError,
    Store,
    UnknownEvidenceError,
    capture_provenance,
)
from rankscope.experiments_db.models import Artifact, Evidence
from tests.test_db_support import (
    TOOL_CALL,
    backend_params,
    criterion,
    fresh_database,
    open_test_store,
    populate,
)
from tests.test_db_workers import crashing_worker, metrics


@pytest.fixture(params=backend_params())
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def store(db_url: str, tmp_path: Path) -> Iterator[Store]:
    with open_test_store(db_url, tmp_path) as s:
        yield s


def _count(store: Store, model: Any) -> int:
    with store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(model)).scalar_one()


def test_round_trip(store: Store, tmp_path: Path) -> None:
    ids = populate(store, tmp_path)
    tree = store.investigation_tree(ids["investigation"])

    assert tree.investigation.budget == {"max_steps": 20, "max_tool_calls": 10}
    assert tree.investigation.created_at.tzinfo == UTC
    hyp, rep = tree.hypotheses
    assert hyp.id == ids["hypothesis"] and rep.parent_id == hyp.id
    assert hyp.locked and hyp.criterion == criterion()
    assert hyp.components == ["encoder.layer.1.attention.self.head.3"]
    (exp,) = hyp.experiments
    assert exp.status == "finished" and exp.seed == 1 and exp.duration_s is not None
    assert exp.args == {"component": "attn_head", "seed": 1}
    (ev,) = exp.evidence
    assert ev.metrics == metrics(0)
    assert ev.tables == {"per_head": [{"layer": 1, "head": 3, "effect": 0.31}]}
    assert [a.media_type for a in ev.artifacts] == ["image/png", "application/json"]
    assert ev.artifacts[0].path.endswith(".png") and ev.artifacts[0].description
    assert store.read_artifact(ev.artifacts[0]) == b"\x89PNG fake heatmap bytes"
    (verdict,) = hyp.verdicts
    assert verdict.status == "supported"
    assert verdict.cited_evidence_ids == [ids["evidence"], ids["evidence2"]]
    assert verdict.reviews[0].reviewer == "alice" and verdict.reviews[0].decision == "accept"
    assert [e.tool for e in tree.unlinked_experiments] == ["attention_by_role"]
    assert tree.llm_calls[0].response == {"choices": [{"message": {"content": "ok"}}]}
    assert set(tree.evidence()) == {ids["evidence"], ids["evidence2"], ids["evidence3"]}
    assert tree.model_dump(mode="json")["investigation"]["id"] == ids["investigation"]

    (summary,) = store.list_investigations()
    assert (summary.n_hypotheses, summary.n_experiments, summary.n_verdicts) == (2, 3, 1)
    assert store.llm_usage(ids["investigation"]).total_tokens == 150
    got = store.get_evidence([ids["evidence2"], ids["evidence"]])
    assert [e.id for e in got] == [ids["evidence2"], ids["evidence"]]
    assert store.evidence_exists([ids["evidence"], ids["evidence3"]])
    assert not store.evidence_exists([ids["evidence"], 999_999])
    assert store.missing_evidence([999_999, ids["evidence"]]) == [999_999]
    with pytest.raises(UnknownEvidenceError, match="999999"):
        store.get_evidence([999_999])

    store.set_investigation_status(ids["investigation"], "finished", report_path="r/report.md")
    inv = store.get_investigation(ids["investigation"])
    assert inv.status == "finished" and inv.finished_at is not None
    assert inv.report_path == "r/report.md"
    assert [i.id for i in store.list_investigations(status="running")] == []


def _queries(store: Store) -> list[str]:
    """A list that collects the queries (``SELECT`` statements) the store's engine runs from now
    on."""
    seen: list[str] = []

    def collect(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append(statement)

    event.listen(store.engine, "before_cursor_execute", collect)
    return seen


def test_hypothesis_node_matches_the_tree(store: Store, tmp_path: Path) -> None:
    ids = populate(store, tmp_path)
    tree = store.investigation_tree(ids["investigation"])
    for expected in tree.hypotheses:
        assert store.hypothesis_node(expected.id) == expected
    node = store.hypothesis_node(ids["hypothesis"])
    assert node.latest_verdict is not None and node.latest_verdict.id == ids["verdict"]
    assert node.latest_verdict.reviews[0].id == ids["review"]
    assert [a.media_type for a in node.experiments[0].evidence[0].artifacts] == [
        "image/png",
        "application/json",
    ]
    bare = store.preregister_hypothesis(ids["investigation"], "untested", criterion(), **TOOL_CALL)
    empty = store.hypothesis_node(bare)
    assert empty.experiments == [] and empty.verdicts == [] and empty.latest_verdict is None
    with pytest.raises(NotFoundError, match="hypothesis 999999"):
        store.hypothesis_node(999_999)


def test_hypothesis_node_reads_a_fixed_number_of_queries(store: Store, tmp_path: Path) -> None:
    ids = populate(store, tmp_path)
    seen = _queries(store)
    store.hypothesis_node(ids["hypothesis"])
    small = len(seen)
    for i in range(5):
        hyp = store.preregister_hypothesis(ids["investigation"], f"h{i}", criterion(), **TOOL_CALL)
        for seed in range(3):
            exp = store.start_experiment(
                ids["investigation"], "activation_patching", {"seed": seed}, hypothesis_id=hyp
            )
            ev = store.finish_experiment(exp, metrics(seed))
        store.record_verdict(
            hyp, "refuted", criterion_result={}, cited_evidence_ids=[ev], decided_by="rule"
        )
    seen.clear()
    node = store.hypothesis_node(hyp)
    assert len(node.experiments) == 3 and len(node.verdicts) == 1
    assert len(seen) == small <= 6


def test_provenance_and_json_values(store: Store) -> None:
    inv = store.create_investigation("q", "m", "d", "llm", llm_model="qwen")
    prov = capture_provenance(
        tool_name="activation_patching",
        tool_version="2",
        args={"seed": 5},
        model_id="m",
        weights_hash="ab" * 32,
        dataset_hash="cd" * 32,
        device="cpu",
        timings={"load_s": 1.5},
    )
    exp = store.start_experiment(
        inv, "activation_patching", {"seed": 5, "layers": (1, 2)}, provenance=prov
    )
    ev = store.finish_experiment(
        exp, {"effect": math.nan, "inf": math.inf, "n": 3, "ok": True}, approximate=True
    )
    record = store.get_experiment(exp)
    assert record.seed == 5 and record.args == {"seed": 5, "layers": [1, 2]}
    assert record.provenance["weights_hash"] == "ab" * 32
    assert record.provenance["packages"]["pydantic"]
    assert record.provenance["timings"] == {"load_s": 1.5}
    (evidence,) = store.get_evidence([ev])
    assert evidence.metrics == {"effect": None, "inf": None, "n": 3, "ok": True}
    assert evidence.approximate


def test_criterion_lock(store: Store) -> None:
    inv = store.create_investigation("q", "m", "d", "protocol")
    hyp = store.preregister_hypothesis(inv, "h", criterion(), **TOOL_CALL)
    assert store.update_criterion(hyp, threshold=0.25, alpha=0.01).threshold == 0.25
    assert not store.get_hypothesis(hyp).locked
    exp = store.start_experiment(inv, "activation_patching", {"seed": 0}, hypothesis_id=hyp)
    with pytest.raises(CriterionLockedError, match=f"experiment {exp} \\(running\\)"):
        store.update_criterion(hyp, threshold=0.9)
    store.fail_experiment(exp, "boom")
    with pytest.raises(CriterionLockedError, match="locked"):
        store.update_criterion(hyp, direction="less")
    locked = store.get_hypothesis(hyp)
    assert locked.locked
    assert (locked.criterion.threshold, locked.criterion.alpha) == (0.25, 0.01)
    assert locked.criterion.direction == "greater"


def test_preregister_validates(store: Store) -> None:
    inv = store.create_investigation("q", "m", "d", "protocol")
    with pytest.raises(ValueError, match="alpha"):
        store.preregister_hypothesis(
            inv, "h", {**criterion().model_dump(), "alpha": 1.5}, **TOOL_CALL
        )
    with pytest.raises(NotFoundError, match="investigation 424242 does not exist"):
        store.preregister_hypothesis(424242, "h", criterion(), **TOOL_CALL)
    other = store.create_investigation("q2", "m", "d", "protocol")
    hyp = store.preregister_hypothesis(other, "h", criterion(), **TOOL_CALL)
    with pytest.raises(ValueError, match="belongs to investigation"):
        store.preregister_hypothesis(inv, "h", criterion(), **TOOL_CALL, parent_id=hyp)


def test_finish_is_atomic_when_an_artifact_is_missing(store: Store, tmp_path: Path) -> None:
    inv = store.create_investigation("q", "m", "d", "protocol")
    exp = store.start_experiment(inv, "activation_patching", {"seed": 0})
    good = tmp_path / "good.png"
    good.write_bytes(b"good")
    with pytest.raises(EvidenceWriteError, match="nothing was recorded"):
        store.finish_experiment(
            exp,
            metrics(0),
            artifacts=[
                (good, "image/png"),
                ArtifactSpec(path=tmp_path / "gone.png", media_type="x"),
            ],
        )
    record = store.get_experiment(exp)
    assert record.status == "failed" and "gone.png" in (record.error or "")
    assert _count(store, Evidence) == 0 and _count(store, Artifact) == 0
    with pytest.raises(ExperimentStateError, match="failed"):
        store.finish_experiment(exp, metrics(0))


def test_finish_is_atomic_when_the_database_step_fails(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inv = store.create_investigation("q", "m", "d", "protocol")
    exp = store.start_experiment(inv, "activation_patching", {"seed": 0})
    fig = tmp_path / "fig.png"
    fig.write_bytes(b"figure")
    calls = 0
    original = Store._artifact_row

    def failing_row(*args: Any) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError("disk full while recording the artifact")
        return original(*args)

    monkeypatch.setattr(Store, "_artifact_row", staticmethod(failing_row))
    with pytest.raises(EvidenceWriteError, match="disk full"):
        store.finish_experiment(
            exp, metrics(0), artifacts=[(fig, "image/png"), (fig, "image/png", "again")]
        )
    assert store.get_experiment(exp).status == "failed"
    assert _count(store, Evidence) == 0 and _count(store, Artifact) == 0
    tree = store.investigation_tree(inv)
    assert tree.unlinked_experiments[0].evidence == []


def test_interrupt_during_finish_marks_interrupted(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    inv = store.create_investigation("q", "m", "d", "protocol")
    exp = store.start_experiment(inv, "activation_patching", {})

    def interrupt(*args: Any) -> dict[str, Any]:
        raise KeyboardInterrupt

    monkeypatch.setattr(Store, "_artifact_row", staticmethod(interrupt))
    with pytest.raises(KeyboardInterrupt):
        store.finish_experiment(exp, {}, artifacts=[(__file__, "text/x-python")])
    assert store.get_experiment(exp).status == "interrupted"
    assert _count(store, Evidence) == 0


def test_crash_mid_experiment_then_mark_interrupted(
    store: Store, db_url: str, tmp_path: Path
) -> None:
    inv = store.create_investigation("q", "m", "d", "protocol")
    done = store.start_experiment(inv, "axiom_test", {})
    store.finish_experiment(done, {"x": 1.0})
    proc = multiprocessing.get_context("spawn").Process(
        target=crashing_worker, args=(db_url, str(store.artifacts.root), inv)
    )
    proc.start()
    proc.join(60)
    assert proc.exitcode == 3
    (orphan,) = store.list_experiments(inv, status="running")
    assert store.mark_interrupted(inv) == [orphan.id]
    record = store.get_experiment(orphan.id)
    assert record.status == "interrupted" and record.finished_at is not None
    assert "stopped before it finished" in (record.error or "")
    assert store.get_experiment(done).status == "finished"
    assert store.mark_interrupted(inv) == []
    with pytest.raises(ExperimentStateError, match="interrupted"):
        store.finish_experiment(orphan.id, {"x": 1.0})


def test_verdict_citations_are_checked(store: Store, tmp_path: Path) -> None:
    ids = populate(store, tmp_path)
    other = store.create_investigation("q", "m", "d", "protocol")
    foreign_exp = store.start_experiment(other, "axiom_test", {})
    foreign_ev = store.finish_experiment(foreign_exp, {"x": 1})
    for bad in ([ids["evidence"], 999_999], [foreign_ev]):
        with pytest.raises(UnknownEvidenceError, match="not stored in investigation") as info:
            store.record_verdict(
                ids["hypothesis"],
                "refuted",
                criterion_result={},
                cited_evidence_ids=bad,
                decided_by="rule/1",
            )
        assert info.value.missing == [b for b in bad if b != ids["evidence"]]
    assert len(store.verdicts(ids["hypothesis"])) == 1
    with pytest.raises(ValueError, match="verdict status"):
        store.record_verdict(
            ids["hypothesis"], "proven", criterion_result={}, cited_evidence_ids=[], decided_by="x"
        )


def test_review_rules_are_the_store_s(store: Store, tmp_path: Path) -> None:
    ids = populate(store, tmp_path)
    hyp = ids["hypothesis"]
    for reviewer, decision, comment, message in (
        ("bob", "maybe", "", "review decision must be one of accept, dispute"),
        ("  ", "accept", "", "a review needs a reviewer name"),
        ("bob", "dispute", "", "a dispute needs a comment"),
        ("bob", "dispute", " \n ", "a dispute needs a comment"),
    ):
        with pytest.raises(ReviewError, match=message):
            store.review_hypothesis(hyp, reviewer, decision, comment)
    assert [r.id for r in store.list_reviews(hypothesis_id=hyp)] == [ids["review"]]
    disputed = store.review_hypothesis(hyp, " bob ", "dispute", "CI too wide")
    accepted = store.review_hypothesis(hyp, "carol", "accept")
    reviews = store.list_reviews(investigation_id=ids["investigation"])
    assert [(r.id, r.reviewer, r.decision, r.comment) for r in reviews[1:]] == [
        (disputed, "bob", "dispute", "CI too wide"),
        (accepted, "carol", "accept", ""),
    ]
    assert {r.verdict_id for r in reviews} == {ids["verdict"]}
    with pytest.raises(NotFoundError, match="not part of investigation"):
        store.review_hypothesis(hyp, "bob", "accept", investigation_id=ids["investigation"] + 1)
    with pytest.raises(NotFoundError, match="has no verdict"):
        store.review_hypothesis(ids["replication"], "bob", "accept")
    overview = store.verdict_overview([ids["investigation"]])[ids["investigation"]]
    assert overview == {"supported": 1, "accepted": 1}


def test_corrupted_artifact_is_a_clear_error(store: Store, tmp_path: Path) -> None:
    ids = populate(store, tmp_path)
    (ev,) = store.get_evidence([ids["evidence"]])
    artifact = ev.artifacts[0]
    path = store.artifacts.root / artifact.path
    path.write_bytes(b"tampered")
    with pytest.raises(ArtifactIntegrityError) as info:
        store.read_artifact(artifact)
    message = str(info.value)
    assert str(path) in message and artifact.sha256 in message
    assert info.value.actual in message
    with pytest.raises(ArtifactIntegrityError):
        store.artifact_file(artifact)
    path.unlink()
    with pytest.raises(ArtifactMissingError, match="missing from the artifact store"):
        store.read_artifact(artifact)

"""Issue 16, item 8: the record chain makes a criterion changed after the fact, an artifact
replaced consistently (file and hash together) and a deleted verdict visible to ``audit``, on
SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from rankscope.experiments_db.repository import Store
from tests.test_db_support import backend_params, fresh_database, open_test_store, populate


@pytest.fixture(params=backend_params())
def stored(request, tmp_path: Path) -> Iterator[tuple[Store, dict[str, int]]]:
    with fresh_database(request.param, tmp_path) as url:
        store = open_test_store(url, tmp_path)
        try:
            yield store, populate(store, tmp_path)
        finally:
            store.close()


def _sql(store: Store, *statements: str, **params: Any) -> None:
    with store.engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement), params)


def _drop_lock(store: Store) -> None:
    """What a tamperer does first: remove the trigger that guards locked criteria."""
    _sql(
        store,
        "DROP TRIGGER IF EXISTS hypothesis_criterion_lock"
        + (" ON hypothesis" if store.dialect == "postgresql" else ""),
    )


def _criterion_changed(store: Store, ids: dict[str, int]) -> str:
    _drop_lock(store)
    _sql(store, "UPDATE hypothesis SET threshold = 0.0 WHERE id = :h", h=ids["hypothesis"])
    return f"hypothesis {ids['hypothesis']}"


def _artifact_replaced(store: Store, ids: dict[str, int]) -> str:
    forged = store.artifacts.root.parent / "forged.png"
    forged.write_bytes(b"\x89PNG a different heatmap")
    put = store.artifacts.put(forged)
    tree = store.investigation_tree(ids["investigation"])
    art = tree.evidence()[ids["evidence"]].artifacts[0]
    _sql(
        store,
        "UPDATE artifact SET sha256 = :s, path = :p, size = :n WHERE id = :a",
        s=put.sha256,
        p=put.relpath,
        n=put.size,
        a=art.id,
    )
    replaced = store.investigation_tree(ids["investigation"]).evidence()[ids["evidence"]]
    assert store.read_artifact(replaced.artifacts[0]) == forged.read_bytes()  # file check passes
    return f"evidence {ids['evidence']}"


def _verdict_deleted(store: Store, ids: dict[str, int]) -> str:
    _sql(
        store,
        "DELETE FROM review WHERE verdict_id = :v",
        "DELETE FROM verdict WHERE id = :v",
        v=ids["verdict"],
    )
    return f"verdict {ids['verdict']}"


def test_untouched_records_verify(stored):
    store, ids = stored
    links, problems = store.verify_records(ids["investigation"])
    assert links >= 5 and problems == []


def test_a_criterion_change_through_the_store_is_recorded(stored):
    store, ids = stored
    hyp = store.preregister_hypothesis(
        ids["investigation"],
        "later",
        {"metric": "m", "direction": "greater", "threshold": 0.1},
        tool="behavioural_test",
    )
    store.update_criterion(hyp, threshold=0.3)
    assert store.verify_records(ids["investigation"])[1] == []


@pytest.mark.parametrize(
    ("tamper", "problem"),
    [
        (_criterion_changed, "changed after it was recorded"),
        (_artifact_replaced, "changed after it was recorded"),
        (_verdict_deleted, "recorded, then deleted"),
    ],
)
def test_tampering_is_detected(stored, tamper: Callable[..., str], problem: str):
    store, ids = stored
    subject = tamper(store, ids)
    _links, problems = store.verify_records(ids["investigation"])
    assert [(p.subject, p.problem) for p in problems] == [(subject, problem)]


def test_audit_reports_a_deleted_verdict_as_drift(stored):
    from rankscope.agent.audit import AuditReport, _check_record_chain

    store, ids = stored
    _verdict_deleted(store, ids)
    report = AuditReport(ids["investigation"])
    _check_record_chain(report, store, ids["investigation"])
    assert not report.ok
    assert any("deleted" in f.detail for f in report.drift)


def test_a_real_investigation_and_its_import_verify(tmp_path):
    import torch

    from rankscope.experiments_db import export_investigation, import_bundle, open_store
    from tests.agent_support import ScriptedPlanner, behaviour, null_bert, run

    torch.set_num_threads(1)
    run(tmp_path, null_bert(tmp_path / "null"), ScriptedPlanner([behaviour()]))
    with open_store(f"sqlite:///{tmp_path / 't.db'}") as store:
        links, problems = store.verify_records(1)
        assert links >= 3 and problems == []
        bundle = export_investigation(store, 1, tmp_path / "b.zip")
        new_id = import_bundle(store, bundle)
        new_id = new_id if isinstance(new_id, int) else new_id[0]
        assert store.verify_records(new_id)[1] == []
        from rankscope.agent.audit import audit_investigation

        steps: list[tuple[int, int]] = []
        report = audit_investigation(
            store, 1, rerun=False, progress=lambda done, total: steps.append((done, total))
        )
        n_experiments = len(store.investigation_tree(1).experiments())
        assert report.ok
        assert steps == [(i, n_experiments + 1) for i in range(1, n_experiments + 2)]

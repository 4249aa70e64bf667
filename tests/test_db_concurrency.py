"""Several processes opening one fresh database and writing experiments to it at once."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_db_support import backend_params, fresh_database, open_test_store
from tests.test_db_workers import concurrent_writer

WORKERS = 3
PER_WORKER = 12


@pytest.fixture(params=backend_params())
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_database(request.param, tmp_path) as url:
        yield url


def test_concurrent_writers_lose_nothing(db_url: str, tmp_path: Path) -> None:
    artifact_dir = str(tmp_path / "artifacts")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WORKERS)
    procs = [
        ctx.Process(target=concurrent_writer, args=(db_url, artifact_dir, barrier, w, PER_WORKER))
        for w in range(WORKERS)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * WORKERS

    with open_test_store(db_url, tmp_path) as store:
        investigations = store.list_investigations()
        assert sorted(i.question for i in investigations) == [f"worker {w}" for w in range(WORKERS)]
        shas: set[str] = set()
        for inv in investigations:
            tree = store.investigation_tree(inv.id)
            experiments = tree.unlinked_experiments
            assert [e.args["i"] for e in experiments] == list(range(PER_WORKER))
            assert {e.status for e in experiments} == {"finished"}
            assert all(len(e.evidence) == 1 for e in experiments)
            assert all(len(e.evidence[0].artifacts) == 2 for e in experiments)
            for artifact in tree.artifacts():
                store.artifact_file(artifact)  # every shared or own file is intact
                shas.add(artifact.sha256)
        assert len(shas) == 1 + WORKERS * PER_WORKER

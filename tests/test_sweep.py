"""Sweeps on a local Ray (``ray.init(num_cpus=2)``) against the PostgreSQL server: four tiny
investigations end to end, a worker killed mid-sweep and retried, SQLite refused; and the sharded
exact patching grid against the in-process run."""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from rankscope.agent.cli import app
from rankscope.agent.sweep import SweepError, SweepSpec, check_store, run_sweep, sweep_cells
from rankscope.experiments_db.engine import open_store
from tests.agent_support import mean_bert, null_bert
from tests.test_db_support import PG_ENV, PG_SKIP_REASON, fresh_database

ray = pytest.importorskip("ray")
needs_pg = [
    pytest.mark.postgres,
    pytest.mark.skipif(not os.environ.get(PG_ENV), reason=PG_SKIP_REASON),
]
QUESTION = "Does the tiny model reward repeated query terms (TFC1)?"


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return [
        str(mean_bert(tmp_path_factory.mktemp("mean"))),
        str(null_bert(tmp_path_factory.mktemp("null"))),
    ]


def spec_of(models: list[str], tmp_path: Path, name: str = "tiny") -> SweepSpec:
    """Two models × one question × two seeds × the protocol planner: four investigations."""
    return SweepSpec.model_validate(
        {
            "name": name,
            "models": models,
            "questions": [QUESTION],
            "seeds": [0, 1],
            "planners": ["protocol"],
            "protocol_pairs": 8,
            "budget": {"max_steps": 6, "max_tool_calls": 8},
            "retries": 2,
            "artifact_dir": str(tmp_path / "artifacts"),
            "report_dir": str(tmp_path / "reports"),
        }
    )


def check_complete(url: str, spec: SweepSpec) -> None:
    """One finished investigation per cell, each with a verdict, no experiment run twice."""
    with open_store(url) as store:
        cells = sweep_cells(store, spec.sweep_id())
        assert sorted(cells) == sorted(c.key for c in spec.cells())
        assert all(len(rows) == 1 for rows in cells.values()), cells
        assert len(store.list_investigations()) == len(spec.cells())
        for (inv,) in cells.values():
            assert inv.status == "finished"
            tree = store.investigation_tree(inv.id)
            assert tree.hypotheses and all(h.verdicts for h in tree.hypotheses)
            done = [
                (e.hypothesis_id, e.args.get("split"))
                for e in tree.experiments()
                if e.status == "finished"
            ]
            assert len(done) == len(set(done))


def test_sqlite_is_refused_for_a_multi_worker_sweep(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    with pytest.raises(SweepError, match="cannot use SQLite.*PostgreSQL"):
        check_store(url, workers=2, ray_address=None)
    with pytest.raises(SweepError, match="cannot use SQLite"):
        check_store(url, workers=1, ray_address="auto")
    check_store(url, workers=1, ray_address=None)
    spec = tmp_path / "spec.toml"
    spec.write_text(f'[sweep]\nmodels = ["m"]\nquestions = ["{QUESTION}"]\n')
    result = CliRunner().invoke(app, ["sweep", str(spec), "--db", url, "--workers", "2"])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "cannot use SQLite" in text and "postgresql+psycopg://" in text
    assert not (tmp_path / "x.db").exists()


@pytest.mark.slow
@pytest.mark.parametrize("_pg", [pytest.param(None, marks=needs_pg)])
def test_sweep_of_four_tiny_investigations(
    _pg: None, local_ray: None, tiny_models: list[str], tmp_path: Path
) -> None:
    spec = spec_of(tiny_models, tmp_path)
    with fresh_database("postgresql", tmp_path) as url:
        out = io.StringIO()
        result = run_sweep(spec, db=url, console=Console(file=out, width=200), refresh_s=0.5)
        assert result.ok, result.outcomes
        assert sorted(o.action for o in result.outcomes.values()) == ["ran"] * 4
        check_complete(url, spec)
        text = out.getvalue()
        assert "sweep tiny: findings" in text and "inconclusive" in text
        again = run_sweep(spec, db=url, quiet=True)
        assert [o.action for o in again.outcomes.values()] == ["skipped"] * 4
        check_complete(url, spec)


def _kill_first_running(url: str, sweep_id: str, killed: list[int], stop: threading.Event) -> None:
    """Kill (SIGKILL) the Ray worker that drives the sweep's first running investigation."""
    while not stop.is_set() and not killed:
        with open_store(url) as store:
            for rows in sweep_cells(store, sweep_id).values():
                lease = rows[0].config.get("lease")
                if rows[0].status == "running" and lease and lease["pid"] != os.getpid():
                    os.kill(lease["pid"], signal.SIGKILL)
                    killed.append(rows[0].id)
                    return
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize("_pg", [pytest.param(None, marks=needs_pg)])
def test_a_worker_killed_mid_sweep_is_retried(
    _pg: None, local_ray: None, tiny_models: list[str], tmp_path: Path
) -> None:
    spec = spec_of(tiny_models, tmp_path, name="killed")
    with fresh_database("postgresql", tmp_path) as url:
        killed: list[int] = []
        stop = threading.Event()
        with open_store(url):
            pass
        killer = threading.Thread(
            target=_kill_first_running, args=(url, spec.sweep_id(), killed, stop)
        )
        killer.start()
        try:
            result = run_sweep(spec, db=url, quiet=True, refresh_s=0.2)
        finally:
            stop.set()
            killer.join()
        assert killed, "no investigation was caught running"
        assert result.ok, (result.outcomes, result.summary)
        actions = {o.investigation_id: o.action for o in result.outcomes.values()}
        assert actions[killed[0]] == "resumed"
        assert sorted(actions.values()) == ["ran", "ran", "ran", "resumed"]
        check_complete(url, spec)


def test_sharded_grid_equals_the_in_process_run(local_ray: None, tmp_path: Path) -> None:
    from rankscope.tools.data.source import resolve_data
    from rankscope.tools.interventions.patching import heads_grid, patch_pairs
    from rankscope.tools.interventions.sharding import ShardedPatcher, deal
    from tests.interventions_support import tiny_retriever

    assert deal(5, 2) == [[0, 2, 4], [1, 3]] and deal(2, 3) == [[0], [1]]
    model = str(tmp_path / "tiny")
    options = {"kind": "bi-encoder", "pooling": "mean", "similarity": "dot"}
    retriever = tiny_retriever(Path(model), "bert")
    pairs = list(
        resolve_data(None).pairs(
            "TFC1", "append", tokenizer=retriever.tokenizer, split="all", n=12, seed=0
        )
    )
    grid = heads_grid(retriever.n_layers, retriever.n_heads)
    local = patch_pairs(retriever, pairs, grid, batch_size=4)
    with pytest.raises(ValueError, match="3 shards need 3 CPUs but the Ray cluster has 2"):
        ShardedPatcher(model, 3)
    with ShardedPatcher(model, 2, model_options=options) as patcher:
        sharded = patcher.patch_pairs(None, pairs, grid, batch_size=4)
    assert sharded.names == local.names
    for key in ("s_base", "s_pert", "s_patched"):
        assert abs(getattr(sharded, key) - getattr(local, key)).max() <= 1e-6
    assert (sharded.applicable == local.applicable).all()
    assert abs(local.s_patched - local.s_base[:, None]).max() > 1e-2

    args = '{"n_pairs": 12, "batch_size": 4, "split": "all"}'
    cli = CliRunner()
    common = ["--model", model, "--args", args, "--json"]
    one = cli.invoke(app, ["run", "activation_patching", *common, "--out", str(tmp_path / "a")])
    two = cli.invoke(
        app,
        ["run-sharded", "activation_patching", "--shards", "2", *common]
        + ["--out", str(tmp_path / "b")],
    )
    assert one.exit_code == 0 and two.exit_code == 0, two.output
    import json

    m1, m2 = json.loads(one.stdout)["metrics"], json.loads(two.stdout)["metrics"]
    assert m1.keys() == m2.keys()
    for key, value in m1.items():
        if isinstance(value, float):
            assert abs(value - m2[key]) <= 1e-6, key


def test_an_investigation_with_shards_runs_its_grids_on_ray(
    local_ray: None, tmp_path: Path
) -> None:
    """``--shards 2``: the Lab hands activation_patching the sharded engine; the driver records
    the same metrics as the in-process Lab (the actors write nothing)."""
    from rankscope.agent.execution import Lab
    from rankscope.agent.settings import InvestigationSettings, settings_of
    from tests.interventions_support import tiny_retriever

    model = str(tmp_path / "tiny")
    tiny_retriever(Path(model), "bert")
    options = {"kind": "bi-encoder", "pooling": "mean", "similarity": "dot"}
    args = {"n_pairs": 12, "batch_size": 4, "split": "all"}
    with open_store(f"sqlite:///{tmp_path / 'store.db'}") as store:
        config = InvestigationSettings(model_arg=model, model_options=options, shards=2)
        inv = store.create_investigation(
            "q", model, "builtin", "protocol", config=config.model_dump(mode="json")
        )
        assert settings_of(store.get_investigation(inv)).shards == 2
        outcomes = {}
        for shards in (None, 2):
            lab = Lab(store, inv, model, None, model_options=options, shards=shards)
            try:
                outcomes[shards] = lab.run_experiment(None, "activation_patching", args)
                assert (lab._patcher is not None) == (shards is not None)
                assert lab.patch_engine("behavioural_test") is None
            finally:
                lab.close()
            assert lab._patcher is None
        plain, sharded = outcomes[None], outcomes[2]
        assert plain.status == sharded.status == "finished", sharded.error
        assert plain.metrics.keys() == sharded.metrics.keys()
        for key, value in plain.metrics.items():
            if isinstance(value, float):
                assert abs(value - sharded.metrics[key]) <= 1e-6, key
        finished = [e for e in store.investigation_tree(inv).experiments() if e.evidence]
        assert len(finished) == 2

"""Issue 16 (hardening): hostile inputs and careless use must not run code, orphan runs or misread."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import ormsgpack
import pytest
import torch
from rich.console import Console

from rankscope.agent.checkpoints import UnsafeCheckpointError
from rankscope.agent.runner import resume
from rankscope.experiments_db.engine import open_store
from tests.agent_support import ScriptedPlanner, behaviour, null_bert, run

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def null_model(tmp_path_factory) -> Path:
    return null_bert(tmp_path_factory.mktemp("null"))


def _interrupted_investigation(tmp: Path, model: Path) -> str:
    """An investigation interrupted after one experiment; returns its database URL."""
    planner = ScriptedPlanner([behaviour(), RuntimeError("planner exploded")])
    with pytest.raises(RuntimeError):
        run(tmp, model, planner)
    return f"sqlite:///{tmp / 't.db'}"


def _tamper_latest_checkpoint(db_file: Path, command: str) -> None:
    """Rewrite the latest checkpoint row so that it asks msgpack to call ``os.system(command)``."""
    conn = sqlite3.connect(db_file)
    try:
        row = conn.execute(
            "SELECT checkpoint_id, type, checkpoint FROM checkpoints "
            "WHERE thread_id = '1' ORDER BY checkpoint_id DESC LIMIT 1"
        ).fetchone()
        assert row is not None and row[1] == "msgpack"
        data = ormsgpack.unpackb(row[2], option=ormsgpack.OPT_NON_STR_KEYS)
        evil = ormsgpack.Ext(0, ormsgpack.packb(["os", "system", command]))
        data["channel_values"]["question"] = evil
        conn.execute(
            "UPDATE checkpoints SET checkpoint = ? WHERE thread_id = '1' AND checkpoint_id = ?",
            (ormsgpack.packb(data), row[0]),
        )
        conn.commit()
    finally:
        conn.close()


def test_tampered_checkpoint_is_refused_and_runs_nothing(tmp_path, null_model):
    url = _interrupted_investigation(tmp_path, null_model)
    marker = tmp_path / "pwned"
    _tamper_latest_checkpoint(tmp_path / "t.db", f"touch {marker}")
    again = ScriptedPlanner([behaviour(threshold=0.1)])
    with pytest.raises(UnsafeCheckpointError, match="os.system"):
        resume(
            1,
            db=url,
            report_dir=tmp_path / "reports",
            console=Console(file=io.StringIO()),
            quiet=True,
            planner_factory=lambda: again,
        )
    assert not marker.exists()
    assert again.ledgers == []
    with open_store(url, create=False) as store:
        assert store.get_investigation(1).status == "interrupted"


def _copy_model(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_folder_with_custom_code_is_refused_without_running_it(tmp_path, null_model):
    import json

    from rankscope.tools.retrievers import RetrieverLoadError, load_retriever

    folder = _copy_model(null_model, tmp_path / "custom")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "evil.EvilModel", "AutoConfig": "evil.EvilConfig"}
    (folder / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "pwned"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    with pytest.raises(RetrieverLoadError, match="trust_remote_code=False"):
        load_retriever(str(folder))
    assert not marker.exists()


def _drop_weights(folder: Path, fragment: str) -> None:
    import safetensors.torch as st

    weights = st.load_file(folder / "model.safetensors")
    kept = {k: v for k, v in weights.items() if fragment not in k}
    assert len(kept) < len(weights)
    st.save_file(kept, folder / "model.safetensors", metadata={"format": "pt"})


def test_missing_weights_are_an_error_unless_allowed_and_then_reported(tmp_path, null_model):
    from rankscope.agent.execution import _RETRIEVERS
    from rankscope.tools.retrievers import RetrieverLoadError, load_retriever

    folder = _copy_model(null_model, tmp_path / "partial")
    _drop_weights(folder, "layer.0.attention.self.key")
    with pytest.raises(RetrieverLoadError, match="--allow-random-weights"):
        load_retriever(str(folder))
    allowed = load_retriever(str(folder), allow_random_weights=True)
    assert any("attention.self.key" in name for name in allowed.random_weights)
    assert load_retriever(str(null_model)).random_weights == ()

    _RETRIEVERS.clear()
    from rankscope.agent.runner import investigate
    from rankscope.agent.settings import InvestigationSettings
    from rankscope.agent.state import Budget

    settings = InvestigationSettings(
        model_arg=str(folder),
        budget=Budget(max_steps=2, max_tool_calls=2),
        model_options={"allow_random_weights": True},
    )
    result = investigate(
        "q",
        settings,
        db=f"sqlite:///{tmp_path / 't.db'}",
        report_dir=tmp_path / "reports",
        console=Console(file=io.StringIO()),
        quiet=True,
        planner_factory=lambda: ScriptedPlanner([]),
    )
    assert result.report_path is not None
    assert "randomly initialised" in Path(result.report_path).read_text()


def test_multi_label_head_needs_the_label_named(tmp_path):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from rankscope.tools.retrievers import RetrieverLoadError, load_retriever
    from tests.tiny_models import save_tiny_model

    folder = save_tiny_model(tmp_path / "cross", "bert", "cross-encoder")
    config = AutoConfig.from_pretrained(folder)
    config.num_labels = 2
    config.id2label = {0: "irrelevant", 1: "relevant"}
    config.label2id = {"irrelevant": 0, "relevant": 1}
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    with pytest.raises(RetrieverLoadError, match="--label"):
        load_retriever(str(folder))
    with pytest.raises(RetrieverLoadError, match="label 1"):
        load_retriever(str(folder), label="irrelevant")
    scored = load_retriever(str(folder), label="relevant")
    assert scored.kind == "cross-encoder"


_CHILD = """
import sys, time
from pathlib import Path
from tests.agent_support import ScriptedPlanner, behaviour, run

tmp, model = Path(sys.argv[1]), Path(sys.argv[2])


def wait(ledger):
    (tmp / "ready").write_text("x")
    time.sleep(120)


run(tmp, model, ScriptedPlanner([behaviour(), wait]))
"""


def test_sigterm_marks_interrupted_and_a_live_run_cannot_be_resumed(tmp_path, null_model):
    import os
    import signal
    import subprocess
    import sys
    import time

    from rankscope.agent.lease import LeaseHeldError

    repo = Path(__file__).resolve().parents[1]
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tmp_path), str(null_model)],
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 240
        while not (tmp_path / "ready").exists():
            assert child.poll() is None, child.stderr.read().decode() if child.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.2)
        url = f"sqlite:///{tmp_path / 't.db'}"
        with pytest.raises(LeaseHeldError, match=f"process {child.pid}"):
            resume(
                1,
                db=url,
                report_dir=tmp_path / "reports",
                console=Console(file=io.StringIO()),
                quiet=True,
                planner_factory=lambda: ScriptedPlanner([]),
            )
        with open_store(url, create=False) as store:
            assert store.get_investigation(1).status == "running"
            assert all(e.status == "finished" for e in store.investigation_tree(1).experiments())
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=60) != 0
    finally:
        if child.poll() is None:
            child.kill()
    with open_store(url, create=False) as store:
        inv = store.get_investigation(1)
        assert inv.status == "interrupted"
        assert "lease" not in (inv.config or {})


def _forge_verdicts(bundle: Path, out: Path) -> None:
    """Copy ``bundle`` with every verdict flipped to one its evidence does not give."""
    import json
    import zipfile

    with zipfile.ZipFile(bundle) as zin, zipfile.ZipFile(out, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name == "bundle.json":
                manifest = json.loads(data)
                for hyp in manifest["tree"]["hypotheses"]:
                    for verdict in hyp["verdicts"]:
                        verdict["status"] = (
                            "refuted" if verdict["status"] == "supported" else "supported"
                        )
                data = json.dumps(manifest).encode()
            zout.writestr(name, data)


def test_import_rederives_verdicts_and_bounds_unpacked_size(tmp_path, null_model):
    import json
    import zipfile

    from typer.testing import CliRunner

    from rankscope.agent.cli import app
    from rankscope.experiments_db import export_investigation, import_bundle
    from rankscope.experiments_db.errors import BundleError

    run(tmp_path, null_model, ScriptedPlanner([behaviour()]))
    with open_store(f"sqlite:///{tmp_path / 't.db'}") as store:
        assert store.investigation_tree(1).hypotheses[0].verdicts
        bundle = export_investigation(store, 1, tmp_path / "b.zip")
    forged = tmp_path / "forged.zip"
    _forge_verdicts(bundle, forged)
    target = f"sqlite:///{tmp_path / 'dst.db'}"
    cli = CliRunner()
    honest = cli.invoke(app, ["import", str(bundle), "--db", target])
    assert honest.exit_code == 0 and "UNVERIFIED" not in honest.output
    flagged = cli.invoke(app, ["import", str(forged), "--db", target])
    assert flagged.exit_code == 0 and "UNVERIFIED" in flagged.output
    shown = cli.invoke(app, ["show", "2", "--db", target])
    assert "UNVERIFIED" in shown.output
    assert "UNVERIFIED" not in cli.invoke(app, ["show", "1", "--db", target]).output
    from rankscope.agent.reports import write_reports

    with open_store(target) as store:
        md, _html = write_reports(store, 2, tmp_path / "imported-report")
    assert "UNVERIFIED" in Path(md).read_text()

    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bundle.json", json.dumps({"pad": " " * (8 << 20)}))
    assert bomb.stat().st_size < 100_000
    with open_store(target) as store, pytest.raises(BundleError, match="more than"):
        import_bundle(store, bomb, max_unpacked_bytes=1 << 20)


def test_in_memory_and_foreign_sqlite_databases_are_refused(tmp_path):
    from typer.testing import CliRunner

    from rankscope.agent.cli import app

    cli = CliRunner()
    memory = cli.invoke(app, ["list", "--db", "sqlite://"])
    assert memory.exit_code == 1 and "in-memory" in memory.output
    foreign = tmp_path / "other.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.commit()
    conn.close()
    for command in (["list"], ["show", "1"]):
        refused = cli.invoke(app, [*command, "--db", f"sqlite:///{foreign}"])
        assert refused.exit_code == 1 and "without RankScope's tables" in refused.output
    conn = sqlite3.connect(foreign)
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert tables == {"notes"}
    from rankscope.experiments_db.errors import DatabaseURLError

    with pytest.raises(DatabaseURLError, match="in-memory"):
        resume(1, db="sqlite://")


def test_bracketed_text_in_errors_prints_intact(tmp_path):
    from typer.testing import CliRunner

    from rankscope.agent.cli import app

    bad = tmp_path / "rankscope[irds]" / "[/b]model"
    result = CliRunner().invoke(
        app, ["investigate", "q", "--model", str(bad), "--db", f"sqlite:///{tmp_path / 't.db'}"]
    )
    assert result.exit_code == 1, result.output
    assert "rankscope[irds]/[/b]model" in result.output.replace("\n", "")

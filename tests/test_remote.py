"""Large models through nnsight remote execution, tested with nnsight's local remote backend.

A tiny BERT bi-encoder is registered under a Hub-style id (``rankscope-test/tiny-bert``) in a
temporary Hugging Face cache, offline; ``--remote local`` serialises every trace as for a server
(modules a server lacks hidden while it is deserialised) and runs it here. The Hugging Face
libraries read ``HF_HOME`` and ``HF_HUB_OFFLINE`` when imported, so the remote checks run in a
child process with those set.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rankscope.tools.retrievers.remote import RemoteExecutionError, parse_remote
from tests.agent_support import mean_bert

REPO_ID = "rankscope-test/tiny-bert"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
ARGS = {"n_pairs": 8, "batch_size": 4, "split": "all", "granularity": "heads"}


def hub_cache(home: Path, source: Path, repo_id: str = REPO_ID) -> None:
    """Lay ``source`` out in ``home`` as the Hub cache lays out a downloaded ``repo_id``."""
    repo = home / "hub" / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(source, repo / "snapshots" / COMMIT, ignore=shutil.ignore_patterns("_tok"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)


def child() -> None:
    """The checks that need the temporary cache (run with HF_HOME set, offline)."""
    import numpy as np

    from rankscope.agent.cli import app
    from rankscope.tools.contract import ToolContext
    from rankscope.tools.data.source import resolve_data
    from rankscope.tools.interventions.patching import heads_grid, patch_pairs
    from rankscope.tools.retrievers import load_retriever
    from rankscope.tools.running import resolve_call, run_tool

    local_path = os.environ["RANKSCOPE_TEST_LOCAL_MODEL"]
    remote = load_retriever(REPO_ID, remote="local", pooling="mean", similarity="dot")
    local = load_retriever(local_path, pooling="mean", similarity="dot")
    out: dict = {"describe": remote.describe()}
    queries = ["capital of france", "bread with yeast", "solar panels"]
    docs = ["paris is the capital of france", "flour water salt yeast", "sunlight to power"]
    out["score_diff"] = float(
        (remote.score(queries, docs) - local.score(queries, docs)).abs().max()
    )

    data = resolve_data(None)
    pairs = list(data.pairs("TFC1", "append", tokenizer=local.tokenizer, split="all", n=8, seed=0))
    grid = heads_grid(local.n_layers, local.n_heads)
    reference = patch_pairs(local, pairs, grid, batch_size=4, engine="cached")
    through = patch_pairs(remote, pairs, grid, batch_size=4, engine="nnsight")
    out["patch_diff"] = float(np.abs(through.s_patched - reference.s_patched).max())
    out["patch_moves"] = float(np.abs(reference.s_patched - reference.s_base[:, None]).max())
    try:
        patch_pairs(remote, pairs, grid[:1], engine="cached")
        out["cached_error"] = ""
    except Exception as err:
        out["cached_error"] = f"{type(err).__name__}: {err}"

    tool, args = resolve_call("activation_patching", ARGS)
    results = {}
    for name, retriever in (("remote", remote), ("local", local)):
        ctx = ToolContext(
            retriever_factory=lambda r=retriever: r,
            data=data,
            artifact_dir=Path(os.environ["RANKSCOPE_TEST_OUT"]) / name,
        )
        results[name] = run_tool(tool, args, ctx).result
    out["tool_summary"] = results["remote"].summary[:200]
    out["tool_diff"] = max(
        abs(value - results["local"].metrics[key]) / max(1.0, abs(value))
        for key, value in results["remote"].metrics.items()
        if isinstance(value, float) and value == value
    )

    from typer.testing import CliRunner

    cli = CliRunner()
    common = ["run", "activation_patching", "--args", json.dumps(ARGS), "--json"]
    run = cli.invoke(app, [*common, "--model", REPO_ID, "--remote", "local"])
    out["cli_exit"] = run.exit_code
    out["cli_model"] = json.loads(run.stdout)["tool"] if run.exit_code == 0 else run.output
    os.environ["NDIF_API_KEY"] = "test-key"
    offline = cli.invoke(app, [*common, "--model", REPO_ID, "--remote", "ndif"])
    out["offline_exit"] = offline.exit_code
    out["offline_output"] = offline.output
    print("RESULT " + json.dumps(out))


def test_parse_remote() -> None:
    assert parse_remote(None) is None and parse_remote("") is None
    assert parse_remote("ndif") is True and parse_remote("local") == "local"
    assert parse_remote("https://ndif.example.org") == "https://ndif.example.org"
    with pytest.raises(ValueError, match="'ndif'.*'local'.*URL"):
        parse_remote("gpu-box")


def test_a_local_folder_or_a_missing_key_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nnsight import CONFIG

    from rankscope.tools.retrievers import load_retriever

    folder = mean_bert(tmp_path / "tiny")
    with pytest.raises(RemoteExecutionError) as err:
        load_retriever(str(folder), remote="local")
    message = str(err.value)
    assert "needs a Hugging Face model id" in message and "local folder" in message
    assert "NDIF_API_KEY" in message
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    with pytest.raises(RemoteExecutionError, match=r"backend at https://.*No API key found"):
        load_retriever("org/some-model", remote=True)


def test_remote_execution_through_the_local_backend(tmp_path: Path) -> None:
    from tests.interventions_support import tiny_retriever

    source = tmp_path / "tiny"
    tiny_retriever(source, "bert")
    hub_cache(tmp_path / "hf", source)
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
        "RANKSCOPE_TEST_LOCAL_MODEL": str(source),
        "RANKSCOPE_TEST_OUT": str(tmp_path / "out"),
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    env.pop("NDIF_API_KEY", None)
    proc = subprocess.run(
        [sys.executable, "-c", "from tests.test_remote import child; child()"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[-1].removeprefix("RESULT "))
    assert out["describe"]["remote"].startswith("local")
    assert out["describe"]["weights_hash"] == f"hf:{REPO_ID}@{COMMIT}"
    assert out["score_diff"] <= 1e-5
    assert out["patch_moves"] > 1e-3
    assert out["patch_diff"] <= 1e-5
    assert (
        "RemoteExecutionError" in out["cached_error"]
        and "engine='nnsight'" in (out["cached_error"])
    )
    assert "nnsight engine" in out["tool_summary"]
    assert out["tool_diff"] <= 1e-4  # normalised effects divide by small score differences
    assert out["cli_exit"] == 0, out["cli_model"]
    assert out["offline_exit"] == 1
    offline = " ".join(out["offline_output"].split())
    assert "remote execution needs a Hugging Face model id and network access" in offline
    assert "NDIF_API_KEY" in offline

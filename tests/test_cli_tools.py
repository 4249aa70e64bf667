"""``rankscope tools`` and ``rankscope run`` through the real CLI."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from rankscope.agent.cli import app
from rankscope.tools.registry import all_tools

runner = CliRunner()


def test_tools_lists_every_registered_tool():
    result = runner.invoke(app, ["tools"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for name in all_tools():
        assert name in result.output


def test_tools_json_gives_openai_specs():
    result = runner.invoke(app, ["tools", "--json"])
    assert result.exit_code == 0
    specs = json.loads(result.stdout)
    names = {spec["function"]["name"] for spec in specs}
    assert "behavioural_test" in names
    behaviour = next(s for s in specs if s["function"]["name"] == "behavioural_test")
    assert behaviour["type"] == "function"
    assert "n_pairs" in behaviour["function"]["parameters"]["properties"]


def test_run_behavioural_test_on_defaults(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "run",
            "behavioural_test",
            "--args",
            '{"n_pairs": 16, "n_bootstrap": 200}',
            "--json",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["metrics"]["n_pairs"] == 16
    assert 0.0 <= payload["metrics"]["share_moved_predicted"] <= 1.0
    assert any(p.endswith(".png") for p in (a["path"] for a in payload["artifacts"]))
    assert list(out.glob("*.png"))


def test_run_reads_args_from_file(tmp_path):
    args_file = tmp_path / "args.json"
    args_file.write_text('{"n_pairs": 8, "n_bootstrap": 100}')
    result = runner.invoke(
        app, ["run", "behavioural_test", "--args", f"@{args_file}", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 0, result.output
    assert "TFC1 append on 8 pairs" in result.output


def test_run_unknown_tool_and_bad_args_fail_clearly():
    unknown = runner.invoke(app, ["run", "no_such_tool"])
    assert unknown.exit_code == 2
    assert "unknown tool 'no_such_tool'" in unknown.output
    bad = runner.invoke(app, ["run", "behavioural_test", "--args", '{"n_pairs": "many"}'])
    assert bad.exit_code == 2
    assert "n_pairs" in bad.output
    malformed = runner.invoke(app, ["run", "behavioural_test", "--args", "{n_pairs: 3"])
    assert malformed.exit_code != 0
    assert "not valid JSON" in malformed.output


def test_run_with_unknown_model_fails_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = runner.invoke(
        app, ["run", "behavioural_test", "--model", "nobody/nothing", "--args", '{"n_pairs": 4}']
    )
    assert result.exit_code == 1
    assert "could not load model 'nobody/nothing'" in result.output

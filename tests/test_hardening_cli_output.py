"""Issue 25, items 17 and 18 (what the command line prints).

* ``rankscope list`` shows a run whose process was killed (``kill -9``) as ``interrupted (stale
  lease)``, not ``running``, by the lease's takeover rules (this host: the pid is gone; another
  host: the heartbeat is older than ``STALE_AFTER_S``).
* ``rankscope list`` fits 80 columns: nothing past column 80, no word cut in two.
* Help texts keep their bracketed words (``[sesoi]``, ``rankscope[ray]``): rich took them for
  markup.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import typer
from typer.testing import CliRunner

from rankscope.agent.cli import app
from rankscope.agent.lease import STALE_AFTER_S
from rankscope.experiments_db import open_store
from tests.agent_support import null_bert
from tests.test_db_support import backend_params, fresh_database, open_test_store

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
LONG_QUESTION = (
    "Does the model reward repeating the query term in a passage, and is this effect carried by "
    "specific attention heads in the middle layers?"
)
CHILD = """
import io, sys, time
from pathlib import Path
from rich.console import Console
from rankscope.agent.runner import investigate
from rankscope.agent.settings import InvestigationSettings
from rankscope.agent.state import Budget
from tests.agent_support import TINY_POLICY, ScriptedPlanner, behaviour

url, model, ready = sys.argv[1], sys.argv[2], Path(sys.argv[3])


def wait(ledger):
    ready.write_text("x")
    time.sleep(300)


investigate(
    sys.argv[4],
    InvestigationSettings(
        model_arg=model, budget=Budget(max_steps=4, max_tool_calls=4), policy=TINY_POLICY
    ),
    db=url,
    report_dir=ready.parent / "reports",
    console=Console(file=io.StringIO()),
    quiet=True,
    planner_factory=lambda: ScriptedPlanner([behaviour(), wait]),
)
"""


def _list(url: str, columns: int) -> str:
    result = CliRunner().invoke(app, ["list", "--db", url], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    return result.output


# --- item 17: a killed run is not "running" ------------------------------------------------------


@pytest.mark.slow
def test_list_shows_a_killed_run_as_interrupted_stale_lease(tmp_path: Path) -> None:
    model = null_bert(tmp_path / "null")
    url = f"sqlite:///{tmp_path / 'k.db'}"
    ready = tmp_path / "ready"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, url, str(model), str(ready), LONG_QUESTION],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 240
        while not ready.exists():
            assert child.poll() is None, child.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the child was not ready in time"
            time.sleep(0.2)
        assert "running" in _list(url, 200)  # a live run is running
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    with open_store(url, create=False) as store:
        assert store.get_investigation(1).status == "running"  # as stored: nobody marked it
    wide = _list(url, 200)
    assert "interrupted (stale lease)" in wide and "running" not in wide
    narrow = _list(url, 80)
    assert "interrupted" in narrow and "(stale lease)" in narrow and "running" not in narrow


def _lease(host: str, pid: int, age_s: float) -> dict[str, Any]:
    beat = datetime.now(UTC) - timedelta(seconds=age_s)
    return {"host": host, "pid": pid, "heartbeat": beat.isoformat()}


@pytest.mark.parametrize("backend", backend_params())
def test_list_applies_the_lease_rules(backend: str, tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    # Killed and not reaped: a zombie until wait(), as a Ray worker killed with kill -9 is until
    # the raylet reaps it; os.kill(pid, 0) still succeeds on it.
    zombie = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    zombie.kill()
    while Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.01)
    here = socket.gethostname()
    cases = {
        "dead pid here": (_lease(here, gone.pid, 5), True),
        "zombie pid here": (_lease(here, zombie.pid, 5), True),
        "live pid here": (_lease(here, os.getpid(), 5000), False),
        "fresh elsewhere": (_lease("other-host.example", 4242, 120), False),
        "stale elsewhere": (_lease("other-host.example", 4242, STALE_AFTER_S + 60), True),
        "no lease": (None, True),
    }
    with fresh_database(backend, tmp_path) as url:
        with open_test_store(url, tmp_path) as store:
            ids = {
                name: store.create_investigation(
                    name, "m", "builtin", "protocol", budget={}, config={"lease": lease}
                )
                for name, (lease, _) in cases.items()
            }
        wide = _list(url, 200)
    for name, (_, stale) in cases.items():
        row = next(line for line in wide.splitlines() if name in line)
        assert f"│ {ids[name]:>2} │" in row or f" {ids[name]} " in row
        shown = "interrupted (stale lease)" if stale else "running"
        assert shown in row, (name, row)
    zombie.wait()


# --- item 18: 80 columns -----------------------------------------------------------------------


def test_list_fits_80_columns(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    url = f"sqlite:///{tmp_path / 'wide.db'}"
    with open_store(url) as store:
        store.create_investigation(
            LONG_QUESTION,
            str(tmp_path / "models" / "a-fine-tuned-cross-encoder-with-a-long-name"),
            "builtin",
            "llm",
            llm_model="qwen2.5-7b-instruct",
            budget={},
            config={"lease": _lease(socket.gethostname(), gone.pid, 5)},
        )
        store.create_investigation(
            "Short?", "sentence-transformers/all-MiniLM-L6-v2", "builtin", "protocol", budget={}
        )
    out = _list(url, 80)
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80, out
    rule = next(i for i, line in enumerate(lines) if re.search("[─━]{3}", line))
    body = "\n".join(lines[rule + 1 :])  # the rows (the title names the database's path)
    for text in ("interrupted", "(stale lease)", "0/0/0", "Short?", "all-MiniLM-L6-v2"):
        assert text in body, (text, out)
    assert "a-fine-tuned-cross-encoder" in out  # the folder's name, not its path
    assert str(tmp_path) not in body
    # the question's start is there with its words whole (never "mode\nl" as before)
    assert "Does the model reward" in out
    row_words = {w for line in lines for w in re.findall(r"[A-Za-z]+", line)}
    for word in ("Does", "the", "model", "reward"):
        assert word in row_words


# --- item 18: bracketed words in help ----------------------------------------------------------


def _commands(group: Any) -> list[tuple[list[str], Any]]:
    """Every (sub)command of a click group (typer's own click included), with its path."""
    found: list[tuple[list[str], Any]] = []
    for name, command in group.commands.items():
        found.append(([name], command))
        if hasattr(command, "commands"):
            found += [([name, *path], sub) for path, sub in _commands(command)]
    return found


def test_help_keeps_bracketed_words() -> None:
    root = typer.main.get_command(app)
    checked = 0
    for path, command in _commands(root):
        texts = [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]
        wanted = {m for text in texts for m in re.findall(r"\w*\[[\w ,.=-]+\]", text)}
        if not wanted:
            continue
        out = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "400"}).output
        flat = " ".join(out.replace("│", " ").split())
        for text in wanted:
            checked += 1
            assert text.replace("\\", "") in flat, (path, text)
    assert checked >= 2  # --policy's [sesoi], --shards' rankscope[ray]

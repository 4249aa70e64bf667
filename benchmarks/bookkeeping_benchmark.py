"""Bookkeeping benchmark: what the graph itself costs per step, without a model.

Run on demand (not part of the tests)::

    python benchmarks/bookkeeping_benchmark.py [--hypotheses 40] [--tree PATH]

A scripted planner proposes ``--hypotheses`` behavioural tests (each a new call: ``n_pairs``
differs) through the real runner and graph — plan, preregister, run_tool, record, assess,
replicate, the checkpoints and the final report — on a SQLite file. No model runs: the retriever
is a stub, and the tool call returns a result computed once per split before the clock starts
(a real ``behavioural_test`` result with its per-query values, tables and figure, scored by a
term-overlap stub), so what is timed is the store's reads and writes and the graph's own work.
Every hypothesis meets its criterion on discovery and is replicated on the held-out split, so each
step runs the whole cycle (two tool calls).

A step is what happens between two planner calls. For steps 1, 10, 20 and 40 (and the median of
all steps) it prints the SQL statements the store sent (SQLAlchemy ``before_cursor_execute``; the
LangGraph checkpointer writes through its own connection and is not counted), the rows SQLite
returned to the store, and the wall time. A per-step cost that stays flat as the investigation
grows means the whole run grows linearly; one that grows with the step number means the run
grows with the square of its size.

``--tree PATH`` runs the code of another checkout of the repository (for a before/after
comparison, e.g. ``git worktree add /tmp/wt-before HEAD``); by default the code is that of the
repository this file is in. Each run uses a fresh temporary folder.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import importlib.util
import inspect
import io
import sqlite3
import statistics
import sys
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SUBPACKAGES = ("agent", "tools", "experiments_db", "prompts")
REPORTED_STEPS = (1, 10, 20, 40)


class _TreeFinder(importlib.abc.MetaPathFinder):
    """Imports ``rankscope`` and its subpackages from the checkout at ``root`` (the folders are
    mapped as setuptools ``package-dir`` maps them), ahead of the installed editable finder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def find_spec(
        self, fullname: str, path: Any = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        parts = fullname.split(".")
        if parts[0] != "rankscope":
            return None
        if len(parts) == 1:
            folder = self.root / "rankscope"
        elif len(parts) == 2 and parts[1] in SUBPACKAGES:
            folder = self.root / parts[1]
        else:
            parent = sys.modules[".".join(parts[:-1])]
            return importlib.machinery.PathFinder.find_spec(fullname, list(parent.__path__))
        return importlib.util.spec_from_file_location(
            fullname, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )


def use_tree(root: Path) -> None:
    """Make ``import rankscope…`` load the code of the checkout at ``root``."""
    if any(name == "rankscope" or name.startswith("rankscope.") for name in sys.modules):
        raise RuntimeError("use_tree must run before rankscope is imported")
    sys.meta_path.insert(0, _TreeFinder(root))


class SqlCounter:
    """SQL statements sent and rows returned, on every SQLAlchemy engine of the process."""

    def __init__(self) -> None:
        self.statements = 0
        self.rows = 0

    def install(self) -> None:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        counter = self

        class CountingCursor(sqlite3.Cursor):
            def fetchone(self) -> Any:
                row = super().fetchone()
                counter.rows += row is not None
                return row

            def fetchmany(self, size: int | None = None) -> list[Any]:
                rows = super().fetchmany(self.arraysize if size is None else size)
                counter.rows += len(rows)
                return rows

            def fetchall(self) -> list[Any]:
                rows = super().fetchall()
                counter.rows += len(rows)
                return rows

        class CountingConnection(sqlite3.Connection):
            def cursor(self, factory: Any = CountingCursor) -> Any:  # type: ignore[override]
                return super().cursor(factory)

        def before_cursor_execute(*_args: Any) -> None:
            counter.statements += 1

        def do_connect(dialect: Any, _record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
            if dialect.name == "sqlite":
                cparams["factory"] = CountingConnection

        event.listen(Engine, "before_cursor_execute", before_cursor_execute)
        event.listen(Engine, "do_connect", do_connect)


class StubTokenizer:
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("the stub retriever has no tokenizer")


class StubRetriever:
    """Just enough of a retriever for the runner, the lab and ``behavioural_test``: the score
    is the number of query terms in the document plus a jitter drawn from its text."""

    kind = "bi-encoder"
    model_id = "stub/term-overlap"
    weights_hash = "0" * 64
    max_length = 256
    random_weights: tuple[str, ...] = ()
    tokenizer = StubTokenizer()

    def describe(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "kind": self.kind, "weights_hash": self.weights_hash}

    def score(self, queries: list[str], docs: list[str], *_args: Any, **_kwargs: Any) -> Any:
        import torch

        out = []
        for query, doc in zip(queries, docs, strict=True):
            terms = set(query.lower().split())
            words = doc.lower().split()
            jitter = zlib.crc32(doc.encode()) % 1000 / 1000
            out.append(sum(w in terms for w in words) + 0.3 * jitter)
        return torch.tensor(out, dtype=torch.float64)


def stub_loader(model: Any, device: str = "cpu", **_options: Any) -> StubRetriever:
    return StubRetriever()


def canned_results(artifact_dir: Path) -> dict[str, Any]:
    """A real ``behavioural_test`` result per split, computed once with the stub retriever."""
    from rankscope.tools.contract import ToolContext
    from rankscope.tools.data.source import resolve_data
    from rankscope.tools.running import run_tool

    data = resolve_data("builtin")
    out = {}
    for split in ("discovery", "holdout"):
        ctx = ToolContext(
            retriever_factory=StubRetriever,
            data=data,
            artifact_dir=artifact_dir / split,
            progress=False,
        )
        args = {"n_pairs": 24, "n_bootstrap": 200, "split": split}
        out[split] = run_tool("behavioural_test", args, ctx)
    return out


def install_canned_tool(results: dict[str, Any]) -> None:
    """Replace the lab's tool run by the canned result of the call's split."""
    import rankscope.agent.execution as execution
    from rankscope.tools.running import ToolRun, resolve_call

    def run_canned(tool: Any, args: Any, ctx: Any) -> Any:
        resolved, parsed = resolve_call(tool, args)
        canned = results[getattr(parsed, "split", "discovery")]
        return ToolRun(resolved, parsed, canned.result, 0.0)

    execution.run_tool = run_canned  # type: ignore[attr-defined]


def make_planner(n: int, counter: SqlCounter, marks: list[tuple[int, int, float]]) -> Any:
    from rankscope.agent.planners.base import Criterion, Planner, Proposal, Stop

    class ScriptedPlanner(Planner):
        name = "scripted"

        def __init__(self) -> None:
            self.proposed = 0

        def propose(self, ledger: Any) -> Any:
            marks.append((counter.statements, counter.rows, time.perf_counter()))
            if self.proposed >= n:
                return Stop(reason="script done")
            i = self.proposed
            self.proposed += 1
            threshold = 0.5
            return Proposal(
                hypothesis=f"H{i + 1}: TFC1 append moves share_moved_predicted above {threshold}",
                tool="behavioural_test",
                args={"n_pairs": 16 + i, "n_bootstrap": 200},
                criterion=Criterion(
                    metric="share_moved_predicted", direction="greater", threshold=threshold
                ),
            )

    return ScriptedPlanner()


def run(n: int, folder: Path) -> list[tuple[int, int, float]]:
    """Run the scripted investigation; the (statements, rows, time) at each planner call."""
    counter = SqlCounter()
    counter.install()
    install_canned_tool(canned_results(folder / "canned"))
    from rich.console import Console

    from rankscope.agent import runner
    from rankscope.agent.policy import StatsPolicy
    from rankscope.agent.state import Budget

    marks: list[tuple[int, int, float]] = []
    planner = make_planner(n, counter, marks)
    budget = Budget(max_steps=n + 1, max_tool_calls=2 * n + 1, max_minutes=600.0)
    policy = StatsPolicy(max_hypotheses=n)
    where = {
        "db": f"sqlite:///{folder / 'bookkeeping.db'}",
        "report_dir": folder / "reports",
        "console": Console(file=io.StringIO()),
        "quiet": True,
        "planner_factory": lambda: planner,
        "retriever_loader": stub_loader,
    }
    if "settings" in inspect.signature(runner.investigate).parameters:
        from rankscope.agent.settings import InvestigationSettings

        settings = InvestigationSettings(model_arg="stub", budget=budget, policy=policy)
        result = runner.investigate("Bookkeeping benchmark", settings, **where)
    else:
        result = runner.investigate(
            "Bookkeeping benchmark", model="stub", budget=budget, policy=policy, **where
        )
    if result.status != "finished":
        raise SystemExit(f"the investigation ended {result.status}: {result.stop_reason}")
    from rankscope.experiments_db.engine import open_store

    with open_store(str(where["db"])) as store:
        tree = store.investigation_tree(result.investigation_id, include_llm_calls=False)
    verdicts = Counter(h.latest_verdict.status for h in tree.hypotheses if h.latest_verdict)
    experiments = sum(len(h.experiments) for h in tree.hypotheses)
    print(
        f"{len(tree.hypotheses)} hypotheses, {experiments} experiments, verdicts {dict(verdicts)}"
    )
    return marks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hypotheses", type=int, default=40)
    parser.add_argument("--tree", type=Path, default=REPO, help="checkout whose code runs")
    opts = parser.parse_args()
    use_tree(opts.tree.resolve())
    with tempfile.TemporaryDirectory(prefix="rankscope-bookkeeping-") as tmp:
        started = time.perf_counter()
        marks = run(opts.hypotheses, Path(tmp))
        total = time.perf_counter() - started
    steps = [
        (s1 - s0, r1 - r0, t1 - t0)
        for (s0, r0, t0), (s1, r1, t1) in zip(marks, marks[1:], strict=False)
    ]
    print(f"code: {opts.tree.resolve()}")
    print(f"{len(steps)} steps (hypotheses), total {total:.1f} s including setup and report")
    print(f"{'step':>6} {'statements':>11} {'rows read':>10} {'ms':>8}")
    for k in REPORTED_STEPS:
        if k <= len(steps):
            statements, rows, seconds = steps[k - 1]
            print(f"{k:>6} {statements:>11} {rows:>10} {1000 * seconds:>8.1f}")
    print(
        f"{'median':>6} {statistics.median(s for s, _, _ in steps):>11.0f} "
        f"{statistics.median(r for _, r, _ in steps):>10.0f} "
        f"{1000 * statistics.median(t for _, _, t in steps):>8.1f}"
    )
    print(
        f"{'total':>6} {sum(s for s, _, _ in steps):>11} {sum(r for _, r, _ in steps):>10} "
        f"{1000 * sum(t for _, _, t in steps):>8.0f}"
    )


if __name__ == "__main__":
    main()

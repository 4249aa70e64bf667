"""The README's question end to end, as a new user runs it: wall time of each step (issue 21).

Runs ``rankscope investigate "Does all-MiniLM-L6-v2 reward repeated query terms (TFC1), and which
components compute it?"`` with the protocol planner and the default budget in an empty temporary
folder (``--keep DIR`` to keep it), then prints one row per experiment — hypothesis, tool, split,
seconds, the hypothesis's verdict (``exploratory`` for steps that claim nothing) — the planner's
notes (the competing mechanisms, the stop reason), the verdict table of ``rankscope show 1`` and
the total wall time and CPU time (issue 21 target: under 5 minutes on 2 cores; on a shared
machine the CPU time over the thread count bounds what idle cores would take).

    python benchmarks/circuit_investigation_benchmark.py [--threads 2] [--keep DIR]
        [--max-minutes M]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rankscope.agent.settings import settings_of
from rankscope.experiments_db.engine import open_store

QUESTION = (
    "Does all-MiniLM-L6-v2 reward repeated query terms (TFC1), and which components compute it?"
)


def status_of(node) -> str:  # type: ignore[no-untyped-def]
    if getattr(node, "exploratory", False):
        return "exploratory"
    verdict = node.latest_verdict
    return verdict.status if verdict else "no verdict"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", type=Path, default=None, help="run in this folder, keep it")
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="the investigation's wall-time budget (default: the CLI's, 30 minutes; a loaded "
        "machine may need more)",
    )
    options = parser.parse_args()
    folder = options.keep or Path(tempfile.mkdtemp(prefix="rankscope-circuit-"))
    folder.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(options.threads),
        "MKL_NUM_THREADS": str(options.threads),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    env.pop("RANKSCOPE_DB_URL", None)
    started = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "rankscope.agent.cli",
            "investigate",
            QUESTION,
            *(["--max-minutes", str(options.max_minutes)] if options.max_minutes else []),
        ],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime
    if done.returncode != 0:
        print(done.stdout[-4000:], done.stderr[-4000:], sep="\n")
        raise SystemExit(f"rankscope investigate failed with exit status {done.returncode}")
    with open_store(f"sqlite:///{folder / 'rankscope.db'}") as store:
        tree = store.investigation_tree(1)
    rows = []
    for node in tree.hypotheses:
        for exp in node.experiments:
            rows.append(
                (
                    f"H{node.id}",
                    node.text[:88],
                    exp.tool,
                    str(exp.args.get("split", "-")),
                    exp.duration_s or 0.0,
                    status_of(node),
                )
            )
    print(f"question: {QUESTION}\nfolder: {folder}\n")
    print(f"{'hyp':<4} {'tool':<20} {'split':<9} {'seconds':>8}  {'verdict':<12} hypothesis")
    for hid, text, tool, split, seconds, status in rows:
        print(f"{hid:<4} {tool:<20} {split:<9} {seconds:8.1f}  {status:<12} {text}")
    in_tools = sum(r[4] for r in rows)
    print(
        f"\n{len(rows)} experiments, {in_tools:.1f} s in tools; wall time of `rankscope "
        f"investigate` (model load, planning, recording and the report included): {wall:.1f} s "
        f"({'under' if wall < 300 else 'OVER'} the 5-minute target); CPU time {cpu:.1f} s "
        f"(on {options.threads} idle cores the wall time is at least {cpu / options.threads:.0f} "
        f"s); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print("\nnotes:")
    for note in settings_of(tree.investigation).notes:
        print(f"- {note}")
    shown = subprocess.run(
        [sys.executable, "-m", "rankscope.agent.cli", "show", "1"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    print("\n`rankscope show 1`:\n" + shown.stdout)


if __name__ == "__main__":
    main()

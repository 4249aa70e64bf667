"""Ground-truth benchmark (issue 12): build the organisms, run the protocol planner (or the LLM
planner) and the black-box baseline on their questions, score the stored claims.

    python benchmarks/groundtruth.py [--tiny] [--organisms trigger tfc1_removed ...]
        [--planner protocol|llm] [--db sqlite:///gt.db] [--out rankscope_reports/groundtruth]
        [--questions benchmarks/groundtruth_questions.toml]

Prints each organism's build time and checks, then the per organism × question table (phrasing
id / found / false claims / localisation P/R / faithfulness / time / tool calls); writes
groundtruth.json and groundtruth.png under --out. The questions are the phrasings of the
questions file kept beside this script (``groundtruth_questions.toml``, written before the planner
ran on the organisms). ``rankscope bench groundtruth`` runs the same.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from rankscope.agent.groundtruth import (
    QuestionSet,
    default_questions_file,
    run_bench,
    table_rows,
    write_outputs,
)
from rankscope.agent.state import Budget
from rankscope.tools.organisms import build_all, cache_root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--organisms", nargs="*", default=None)
    parser.add_argument("--planner", default="protocol")
    parser.add_argument("--llm-model", default=None)
    parser.add_argument("--db", default="sqlite:///groundtruth.db")
    parser.add_argument("--out", type=Path, default=Path("rankscope_reports/groundtruth"))
    parser.add_argument("--max-steps", type=int, default=12)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--build-only", action="store_true")
    parser.add_argument("--steps", type=int, default=None, help="Override the training steps.")
    parser.add_argument(
        "--questions",
        type=Path,
        default=default_questions_file(),
        help="Questions file (default: benchmarks/groundtruth_questions.toml).",
    )
    args = parser.parse_args()
    console = Console()
    started = time.perf_counter()
    records = build_all(args.organisms, tiny=args.tiny, log=console.print, steps=args.steps)
    build = Table("organism", "build s", "steps", "checks", "facts (held-out)")
    for name, r in records.items():
        checks = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.checks.items()
        )
        facts = ", ".join(f"{k}:{v}" for k, v in r.facts.items())
        build.add_row(name, f"{r.build_seconds:.1f}", str(r.steps), checks, facts)
    console.print(build)
    console.print(
        f"organisms ready in {time.perf_counter() - started:.1f} s (cache {cache_root()})"
    )
    if args.build_only:
        return
    base_path = str(cache_root() / "tiny-base") if args.tiny else None
    budget = Budget(max_steps=args.max_steps, max_tool_calls=args.max_steps + 4)
    scores = []
    planners = [args.planner] + ([] if args.no_baseline else ["blackbox"])
    for planner in planners:
        scores += run_bench(
            records,
            planner,
            args.db,
            base_path=base_path,
            report_dir=args.out / "reports",
            budget=budget,
            llm_model=args.llm_model,
            log=console.print,
            questions=QuestionSet.load(args.questions) if args.questions else None,
        )
    rows = table_rows(scores)
    table = Table(*rows[0])
    for row in rows[1:]:
        table.add_row(*row)
    console.print(table)
    data, figure = write_outputs(scores, args.out)
    console.print(f"scores: {data}\nfigure: {figure}")


if __name__ == "__main__":
    main()

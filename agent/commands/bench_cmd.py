"""``rankscope bench groundtruth``: the agent scored on organisms with planted rules."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()

bench_app = typer.Typer(help="Benchmarks of the agent itself.", no_args_is_help=True)


@bench_app.command("groundtruth")
def groundtruth_command(
    planner: Annotated[
        str,
        typer.Option(
            "--planner",
            help="protocol, llm (needs an endpoint and --llm-model) or blackbox (the baseline).",
        ),
    ] = "protocol",
    organisms: Annotated[
        list[str] | None,
        typer.Option("--organisms", help="Organisms to run (repeat; default: all)."),
    ] = None,
    tiny: Annotated[
        bool, typer.Option("--tiny", help="Tiny BERT organisms trained in seconds (CI).")
    ] = False,
    baseline: Annotated[
        bool, typer.Option("--baseline/--no-baseline", help="Also run the black-box baseline.")
    ] = True,
    db: Annotated[
        str | None,
        typer.Option("--db", help="Database URL (default: RANKSCOPE_DB_URL or ./rankscope.db)."),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", help="Folder of the table (JSON) and the figure.")
    ] = Path("rankscope_reports/groundtruth"),
    llm_model: Annotated[str | None, typer.Option("--llm-model")] = None,
    max_steps: Annotated[int, typer.Option("--max-steps", min=1)] = 12,
    faithfulness: Annotated[
        bool,
        typer.Option("--faithfulness/--no-faithfulness", help="Ablate the named components."),
    ] = True,
    questions: Annotated[
        Path | None,
        typer.Option(
            "--questions",
            help="Questions file (phrasings per rule; default: the checkout's "
            "benchmarks/groundtruth_questions.toml, else each record's own questions).",
        ),
    ] = None,
) -> None:
    """Build (or reuse) the organisms, run their questions, score the stored claims, print the
    table and write ``groundtruth.json`` and ``groundtruth.png`` under ``--out``."""
    from rankscope.agent.groundtruth import (
        QuestionSet,
        default_questions_file,
        run_bench,
        table_rows,
        write_outputs,
    )
    from rankscope.agent.state import Budget
    from rankscope.experiments_db.engine import database_url
    from rankscope.tools.organisms import build_all, cache_root

    records = build_all(organisms, tiny=tiny, log=lambda m: console.print(escape(m)))
    questions_file = questions or default_questions_file()
    asked = QuestionSet.load(questions_file) if questions_file else None
    if questions_file:
        console.print(f"questions: {escape(str(questions_file))}")
    base_path = str(cache_root() / "tiny-base") if tiny else None
    budget = Budget(max_steps=max_steps, max_tool_calls=max_steps + 4)
    scores = []
    for name in [planner] + (["blackbox"] if baseline and planner != "blackbox" else []):
        scores += run_bench(
            records,
            name,
            database_url(db),
            base_path=base_path,
            report_dir=out / "reports",
            budget=budget,
            llm_model=llm_model,
            faithfulness=faithfulness,
            log=lambda m: console.print(escape(m)),
            questions=asked,
        )
    rows = table_rows(scores)
    table = Table(*rows[0])
    for row in rows[1:]:
        table.add_row(*(escape(c) for c in row))
    console.print(table)
    data, figure = write_outputs(scores, out)
    console.print(f"scores: {data}\nfigure: {figure}")


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")

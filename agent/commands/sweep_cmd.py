"""``rankscope sweep SPEC.toml``: many investigations on Ray, every result in one store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

console = Console()
err_console = Console(stderr=True)


def register(app: typer.Typer) -> None:
    @app.command("sweep")
    def sweep_command(
        spec_path: Annotated[
            Path, typer.Argument(metavar="SPEC.toml", help="models, questions, seeds, planners")
        ],
        ray_address: Annotated[
            str | None,
            typer.Option(
                "--ray-address",
                metavar="ADDR",
                help="A Ray cluster (auto, HOST:PORT or ray://HOST:10001); default: a local Ray.",
            ),
        ] = None,
        db: Annotated[
            str | None,
            typer.Option(
                "--db",
                metavar="URL",
                help="The shared store: PostgreSQL (default: $RANKSCOPE_DB_URL).",
                show_default=False,
            ),
        ] = None,
        workers: Annotated[
            int, typer.Option("--workers", min=1, help="CPUs of the local Ray (tasks at once).")
        ] = 2,
        quiet: Annotated[bool, typer.Option("--quiet", help="No live table or summary.")] = False,
    ) -> None:
        """Run a sweep: each cell an investigation (a Ray task); finished cells are skipped and
        interrupted ones resumed when the same spec runs again."""
        from rankscope.agent.sweep import SweepError, load_spec, run_sweep
        from rankscope.experiments_db.errors import StoreError

        try:
            import ray  # noqa: F401
        except ImportError as err:
            err_console.print(
                "[red]error:[/red] sweeps run on Ray, which is not installed: "
                "pip install 'rankscope[ray]'"
            )
            raise typer.Exit(2) from err
        try:
            spec = load_spec(spec_path)
            result = run_sweep(
                spec, db=db, ray_address=ray_address, workers=workers, console=console, quiet=quiet
            )
        except (SweepError, StoreError) as err:
            err_console.print(f"[red]error:[/red] {escape(str(err))}")
            raise typer.Exit(2) from err
        for outcome in result.outcomes.values():
            if outcome.error:
                err_console.print(f"cell {outcome.key}: {escape(outcome.error)}")
        if result.duplicates:
            err_console.print(f"[red]duplicated cells:[/red] {result.duplicates}")
        console.print(
            f"sweep {escape(result.sweep_id)}: {sum(r.status == 'finished' for r in result.summary)}"
            f"/{len(result.summary)} finished in {result.seconds:.0f} s"
        )
        if not result.ok:
            console.print("Run the same command again to resume the unfinished cells.")
            raise typer.Exit(1)

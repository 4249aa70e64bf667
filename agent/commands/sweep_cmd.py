"""``rankscope sweep SPEC.toml``: many investigations on Ray, every result in one store; and
``rankscope run-sharded activation_patching --shards N``: one exact grid split across Ray actors."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

console = Console()
err_console = Console(stderr=True)


def register(app: typer.Typer) -> None:
    register_sweep(app)
    register_sharded(app)


def register_sweep(app: typer.Typer) -> None:
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
                "pip install 'rankscope\\[ray]'"
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


SHARDABLE = ("activation_patching",)


def run_sharded(
    tool_name: str,
    raw_args: str,
    model: str | None,
    data: str | None,
    out: Path | None,
    shards: int,
    ray_address: str | None,
    as_json: bool,
) -> None:
    """One tool call whose patching grid runs on ``shards`` Ray actors (each loads the model
    once); this process merges their scores and writes the artifacts."""
    from rankscope.agent.commands.tools_cmd import default_run_dir, parse_args_option
    from rankscope.tools.contract import ToolContext
    from rankscope.tools.data.source import resolve_data
    from rankscope.tools.interventions.sharding import ShardedPatcher
    from rankscope.tools.retrievers import load_retriever
    from rankscope.tools.running import resolve_call, run_tool

    tool, args = resolve_call(tool_name, parse_args_option(raw_args))
    if tool.name not in SHARDABLE:
        raise ValueError(f"{tool.name} has no sharded grid; shardable: {', '.join(SHARDABLE)}")
    run_dir = out or default_run_dir(tool.name)
    started = time.perf_counter()
    with ShardedPatcher(model, shards, ray_address=ray_address) as patcher:
        patcher.ready()
        loaded = time.perf_counter() - started
        ctx = ToolContext(
            retriever_factory=lambda: load_retriever(model),
            data=resolve_data(data),
            artifact_dir=run_dir,
            progress=False,
            patch_engine=patcher.patch_pairs,
        )
        run = run_tool(tool, args, ctx)
    result = run.result
    if as_json:
        payload: dict[str, Any] = {
            "tool": tool.name,
            "args": args.model_dump(mode="json"),
            "shards": shards,
            "metrics": result.metrics,
            "tables": result.tables,
            "artifacts": [a.model_dump(mode="json") for a in result.artifacts],
            "seconds": run.seconds,
            "actor_start_seconds": loaded,
        }
        print(json.dumps(payload, indent=2, default=str))
        return
    console.print(result.summary, markup=False, highlight=False)
    console.print(
        f"{shards} shards: actors ready in {loaded:.1f} s, tool {run.seconds:.1f} s; "
        f"artifacts in {escape(str(run_dir))}"
    )


def register_sharded(app: typer.Typer) -> None:
    @app.command("run-sharded")
    def run_sharded_command(
        tool: Annotated[str, typer.Argument(help="activation_patching")],
        shards: Annotated[int, typer.Option("--shards", min=1, help="Ray actors.")] = 2,
        args: Annotated[str, typer.Option("--args", help="JSON object or @FILE.")] = "{}",
        model: Annotated[
            str | None, typer.Option("--model", help="Hugging Face id or local path.")
        ] = None,
        data: Annotated[
            str | None, typer.Option("--data", help="Data spec (default: built-in collection).")
        ] = None,
        out: Annotated[Path | None, typer.Option("--out", help="Folder for artifacts.")] = None,
        ray_address: Annotated[
            str | None, typer.Option("--ray-address", metavar="ADDR", help="A Ray cluster.")
        ] = None,
        as_json: Annotated[
            bool, typer.Option("--json", help="Metrics and tables as JSON.")
        ] = False,
    ) -> None:
        """Run one exact patching grid split across Ray actors that each load the model once;
        the merged scores equal `rankscope run`'s within 1e-6."""
        from rankscope.tools.registry import ToolArgumentError, UnknownToolError
        from rankscope.tools.retrievers import RetrieverLoadError

        try:
            run_sharded(tool, args, model, data, out, shards, ray_address, as_json)
        except (UnknownToolError, ToolArgumentError, RetrieverLoadError, ValueError) as err:
            err_console.print(f"[red]error:[/red] {escape(str(err))}")
            raise typer.Exit(2) from err
        except RuntimeError as err:
            err_console.print(f"[red]error:[/red] {escape(str(err))}")
            raise typer.Exit(1) from err

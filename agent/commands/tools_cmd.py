"""``rankscope tools`` and ``rankscope run``: list the lab bench and run one tool by hand."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rankscope.agent.commands.options import RemoteOption
from rankscope.tools.contract import ToolContext
from rankscope.tools.registry import (
    ToolArgumentError,
    UnknownToolError,
    all_tools,
)
from rankscope.tools.running import resolve_call, run_tool

console = Console()
err_console = Console(stderr=True, soft_wrap=True, highlight=False)


def parse_args_option(raw: str) -> dict[str, Any]:
    """A JSON object given inline or as ``@FILE``."""
    text = raw
    if raw.startswith("@"):
        path = Path(raw[1:])
        if not path.exists():
            raise typer.BadParameter(f"arguments file {path} does not exist")
        text = path.read_text()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise typer.BadParameter(
            f"--args is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); "
            "pass a JSON object such as '{\"n_pairs\": 32}' or @args.json"
        ) from err
    if not isinstance(value, dict):
        raise typer.BadParameter("--args must be a JSON object, e.g. '{\"n_pairs\": 32}'")
    return value


def default_run_dir(tool: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return Path("rankscope_runs") / f"{tool}-{stamp}"


def list_tools(as_json: bool) -> None:
    tools = all_tools()
    if as_json:
        print(json.dumps([cls.openai_schema() for cls in tools.values()], indent=2))
        return
    table = Table(title=f"RankScope tools ({len(tools)})", show_lines=True)
    table.add_column("tool", style="bold cyan", no_wrap=True)
    table.add_column("description")
    table.add_column("arguments (default)")
    for name, cls in tools.items():
        fields = []
        for field_name, field in cls.Args.model_fields.items():
            default = "required" if field.is_required() else repr(field.default)
            fields.append(f"{field_name} ({default})")
        table.add_row(
            f"{escape(name)}\nv{cls.version}", escape(cls.description), escape("\n".join(fields))
        )
    console.print(table)
    console.print("Argument schemas as OpenAI tool specs: [bold]rankscope tools --json[/bold]")


def run_by_hand(
    tool_name: str,
    raw_args: str,
    model: str | None,
    data: str | None,
    out: Path | None,
    as_json: bool,
    progress: bool,
    remote: str | None = None,
) -> None:
    """``rankscope run``: one tool call outside any investigation, printed or as JSON;
    ``remote`` is the ``--remote`` option (:func:`rankscope.tools.retrievers.remote.parse_remote`)."""
    from rankscope.tools.data.source import resolve_data
    from rankscope.tools.retrievers import load_retriever
    from rankscope.tools.retrievers.remote import parse_remote

    backend = parse_remote(remote)

    try:
        tool, args = resolve_call(tool_name, parse_args_option(raw_args))
    except (UnknownToolError, ToolArgumentError) as err:
        err_console.print(f"[red]error:[/red] {escape(str(err))}")
        raise typer.Exit(2) from err
    run_dir = out or default_run_dir(tool.name)
    ctx = ToolContext(
        retriever_factory=lambda: load_retriever(model, remote=backend),
        data=resolve_data(data),
        artifact_dir=run_dir,
        progress=progress and not as_json,
    )
    run = run_tool(tool, args, ctx)
    result = run.result
    if as_json:
        payload = {
            "tool": tool.name,
            "version": tool.version,
            "args": args.model_dump(mode="json"),
            "metrics": result.metrics,
            "per_query": {
                key: [v.model_dump() for v in values] for key, values in result.per_query.items()
            },
            "run_facts": result.run_facts,
            "tables": result.tables,
            "approximate": result.approximate,
            "artifacts": [a.model_dump(mode="json") for a in result.artifacts],
            "seconds": run.seconds,
        }
        print(json.dumps(payload, indent=2, default=str))
        return
    console.rule(
        f"[bold]{escape(tool.name)}[/bold] on {escape(str(ctx.retriever.model_id))} · "
        f"{escape(str(ctx.data.name))}"
    )
    console.print(result.summary, markup=False)
    if result.approximate:
        console.print(
            "[yellow]approximate result (a first pass, not an exact measurement)[/yellow]"
        )
    console.print(f"took {run.seconds:.1f} s; artifacts in [bold]{escape(str(run_dir))}[/bold]")
    for artifact in result.artifacts:
        console.print(
            f"  {artifact.path}  ({artifact.media_type}) {artifact.description}",
            markup=False,
            highlight=False,
        )


def evaluate(model: str | None, data: str | None, as_json: bool, progress: bool) -> None:
    """``rankscope eval``: nDCG@10 of the model re-ranking a judged collection's candidates."""
    from rankscope.tools.data.source import resolve_data
    from rankscope.tools.retrievers import load_retriever
    from rankscope.tools.retrievers.evaluation import ndcg_at_10

    source = resolve_data(data)
    collection = source.collection()
    if collection is None:
        raise ValueError(
            f"{source.name!r} is a set of fixed pairs, not a judged collection: nDCG@10 needs "
            "queries, candidates and relevance labels (e.g. the built-in collection)"
        )
    retriever = load_retriever(model)
    result = ndcg_at_10(retriever, collection, progress=progress and not as_json)
    if as_json:
        print(
            json.dumps(
                {
                    "model": retriever.model_id,
                    "data": source.name,
                    "nDCG@10": result.ndcg_at_10,
                    "n_queries": result.n_queries,
                    "n_docs": result.n_docs,
                    "per_query": result.per_query,
                },
                indent=2,
            )
        )
        return
    console.print(
        f"nDCG@10 {result.ndcg_at_10:.4f}  ({escape(str(retriever.model_id))} re-ranking "
        f"{result.n_docs} candidates of {result.n_queries} judged queries of "
        f"{escape(source.name)}; ir_measures)",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_command(
        model: Annotated[
            str | None, typer.Option("--model", help="Hugging Face id or local path.")
        ] = None,
        data: Annotated[
            str | None,
            typer.Option("--data", help="A judged collection (default: built-in collection)."),
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Also per query, as JSON.")] = False,
        progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    ) -> None:
        """Print the model's nDCG@10 re-ranking a judged collection (ir_measures)."""
        from rankscope.tools.data.loaders import DataFormatError
        from rankscope.tools.retrievers import RetrieverLoadError

        try:
            evaluate(model, data, as_json, progress)
        except (
            RetrieverLoadError,
            DataFormatError,
            FileNotFoundError,
            ModuleNotFoundError,
            ValueError,
        ) as err:
            err_console.print(f"[red]error:[/red] {escape(str(err))}")
            raise typer.Exit(1) from err

    @app.command("tools")
    def tools_command(
        as_json: Annotated[
            bool, typer.Option("--json", help="Print the OpenAI tool schemas.")
        ] = False,
    ) -> None:
        """List the tools and their argument schemas."""
        list_tools(as_json)

    @app.command("run")
    def run_command(
        tool: Annotated[str, typer.Argument(help="Tool name (see `rankscope tools`).")],
        args: Annotated[str, typer.Option("--args", help="JSON object or @FILE.")] = "{}",
        model: Annotated[
            str | None, typer.Option("--model", help="Hugging Face id or local path.")
        ] = None,
        data: Annotated[
            str | None, typer.Option("--data", help="Data spec (default: built-in collection).")
        ] = None,
        out: Annotated[Path | None, typer.Option("--out", help="Folder for artifacts.")] = None,
        as_json: Annotated[
            bool, typer.Option("--json", help="Metrics and tables as JSON.")
        ] = False,
        progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
        remote: RemoteOption = None,
    ) -> None:
        """Run one tool by hand, outside any agent."""
        from rankscope.tools.data.loaders import DataFormatError
        from rankscope.tools.retrievers import RetrieverLoadError

        try:
            run_by_hand(tool, args, model, data, out, as_json, progress, remote)
        except (RetrieverLoadError, DataFormatError, FileNotFoundError, ValueError) as err:
            err_console.print(f"[red]error:[/red] {escape(str(err))}")
            raise typer.Exit(1) from err

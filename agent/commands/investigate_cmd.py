"""``rankscope investigate | resume | report | audit``: run, continue, write up and check investigations."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

console = Console()
err_console = Console(stderr=True, soft_wrap=True, highlight=False)

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        metavar="URL",
        help="Database URL (default: $RANKSCOPE_DB_URL, else sqlite:///rankscope.db).",
        show_default=False,
    ),
]
RemoteOption = Annotated[
    str | None,
    typer.Option(
        "--remote",
        metavar="ndif|local|URL",
        help="Run the model's traces on a remote nnsight backend: 'ndif' (the NDIF host in "
        "nnsight's config; API key from NDIF_API_KEY or `nnsight login`), a backend URL, or "
        "'local' (nnsight's local simulation). Needs a Hugging Face model id; bi-encoders; "
        "patching uses the nnsight engine.",
    ),
]
ReportDirOption = Annotated[
    Path,
    typer.Option("--report-dir", help="Folder for reports (one sub-folder per investigation)."),
]


def _stop_errors() -> tuple[type[BaseException], ...]:
    from rankscope.agent.llm_client import LLMError
    from rankscope.experiments_db.errors import StoreError
    from rankscope.tools.data.errors import DataError
    from rankscope.tools.retrievers import RetrieverLoadError

    return (LLMError, StoreError, DataError, RetrieverLoadError)


def _finish(result: object) -> None:
    report_path = getattr(result, "report_path", None)
    inv_id = getattr(result, "investigation_id", None)
    if report_path:
        console.print(f"[bold]Investigation {inv_id} finished.[/bold] Report:")
        console.print(str(report_path), markup=False, highlight=False)
    else:
        console.print(f"Investigation {inv_id}: {escape(str(getattr(result, 'status', '')))}")


def _stopped(err: BaseException, investigation_hint: str | None) -> None:
    """Say why the run stopped; suggest ``resume`` only when there is a started run to resume."""
    if investigation_hint is None:
        err_console.print(f"[bold red]error:[/bold red] {escape(str(err))}")
        err_console.print("Nothing was run; fix the problem above and start again.")
        return
    err_console.print(f"[bold red]stopped:[/bold red] {escape(str(err))}")
    err_console.print(
        f"Everything recorded so far stays in the database; continue with {investigation_hint}."
    )


def _resume_hint(started: list[int]) -> str | None:
    return f"`rankscope resume {started[0]}`" if started else None


def register(app: typer.Typer) -> None:
    @app.command("investigate")
    def investigate_command(
        question: Annotated[str, typer.Argument(help="The research question, in plain words.")],
        model: Annotated[
            str | None, typer.Option("--model", metavar="ID|PATH", help="Model (default MiniLM).")
        ] = None,
        data: Annotated[
            str | None,
            typer.Option(
                "--data", metavar="SPEC", help="Data spec (default: built-in collection)."
            ),
        ] = None,
        planner: Annotated[
            str | None,
            typer.Option(
                "--planner",
                help="llm or protocol (default: llm when an endpoint and --llm-model are set).",
            ),
        ] = None,
        llm_model: Annotated[
            str | None, typer.Option("--llm-model", metavar="NAME", help="Model of the endpoint.")
        ] = None,
        base_url: Annotated[
            str | None,
            typer.Option(
                "--base-url", help="OpenAI-compatible endpoint (default $OPENAI_BASE_URL)."
            ),
        ] = None,
        llm_timeout: Annotated[
            float | None,
            typer.Option(
                "--llm-timeout",
                min=1.0,
                metavar="SECONDS",
                help="Seconds one LLM request may take (default $RANKSCOPE_LLM_TIMEOUT, else 600 "
                "for a local endpoint, 60 for a hosted one). Stored: `resume` uses it.",
            ),
        ] = None,
        llm_retries: Annotated[
            int | None,
            typer.Option(
                "--llm-retries",
                min=0,
                help="Retries after a failed LLM request (default $RANKSCOPE_LLM_RETRIES, else 1 "
                "local, 3 hosted; a timed-out request is re-sent only to a hosted endpoint or "
                "with RANKSCOPE_LLM_RETRY_TIMEOUTS=1). Stored: `resume` uses it.",
            ),
        ] = None,
        llm_context: Annotated[
            int | None,
            typer.Option(
                "--llm-context",
                min=256,
                metavar="TOKENS",
                help="The LLM's context window (default: asked of the server — vLLM /v1/models, "
                "llama.cpp /props, Ollama /api/show — else unchecked). A request that would not "
                "fit is an error before it is sent. Stored: `resume` uses it.",
            ),
        ] = None,
        alpha: Annotated[
            float | None,
            typer.Option(
                "--alpha",
                min=0.0,
                max=0.49,
                help="The investigation's error level (default 0.05; stored; planners may only "
                "be stricter).",
            ),
        ] = None,
        min_queries: Annotated[
            int | None,
            typer.Option(
                "--min-queries", min=2, help="Queries a split needs to be decided (default 8)."
            ),
        ] = None,
        policy_file: Annotated[
            Path | None,
            typer.Option(
                "--policy",
                metavar="FILE.toml",
                exists=True,
                dir_okay=False,
                help="A statistical policy (alpha, min_queries, min_pairs, [sesoi], "
                "multiplicity, n_resamples); --alpha and --min-queries override it.",
            ),
        ] = None,
        budget: Annotated[int, typer.Option("--budget", help="Maximum planner steps.")] = 12,
        max_tool_calls: Annotated[int, typer.Option("--max-tool-calls")] = 24,
        max_tokens: Annotated[
            int, typer.Option("--max-tokens", help="LLM token budget.")
        ] = 200_000,
        max_minutes: Annotated[
            float, typer.Option("--max-minutes", help="Wall-time budget.")
        ] = 30.0,
        db: DbOption = None,
        report_dir: ReportDirOption = Path("rankscope_reports"),
        device: Annotated[str, typer.Option("--device")] = "cpu",
        protocol_pairs: Annotated[
            int | None,
            typer.Option(
                "--protocol-pairs",
                min=4,
                help="Protocol planner: pairs per experiment (localisation uses twice as many; "
                "default 48/96).",
            ),
        ] = None,
        allow_random_weights: Annotated[
            bool,
            typer.Option(
                "--allow-random-weights",
                help="Run even if weights the score depends on are missing from the checkpoint "
                "(they are random; every report says so).",
            ),
        ] = False,
        label: Annotated[
            str | None,
            typer.Option(
                "--label", metavar="NAME", help="Cross-encoder: the head's label to score."
            ),
        ] = None,
        remote: RemoteOption = None,
        shards: Annotated[
            int | None,
            typer.Option(
                "--shards",
                min=1,
                metavar="N",
                help="Split each activation_patching grid across N Ray actors (each loads the "
                "model once; needs rankscope[ray]). Stored: `resume` uses it.",
            ),
        ] = None,
    ) -> None:
        """Investigate a question: hypotheses, experiments, verdicts, a report."""
        from rankscope.agent.policy import make_policy
        from rankscope.agent.runner import investigate
        from rankscope.agent.state import Budget
        from rankscope.tools.retrievers.remote import parse_remote

        try:
            backend = parse_remote(remote)
            policy = make_policy(policy_file, alpha=alpha, min_queries=min_queries)
            limits = Budget(
                max_steps=budget,
                max_tool_calls=max_tool_calls,
                max_tokens=max_tokens,
                max_minutes=max_minutes,
            )
        except ValueError as err:
            raise typer.BadParameter(str(err)) from err
        started: list[int] = []
        try:
            result = investigate(
                question,
                model=model,
                data=data,
                planner=planner,
                llm_model=llm_model,
                base_url=base_url,
                budget=limits,
                db=db,
                report_dir=report_dir,
                device=device,
                console=console,
                protocol_pairs=protocol_pairs,
                llm_timeout_s=llm_timeout,
                llm_retries=llm_retries,
                llm_context=llm_context,
                policy=policy,
                model_options={
                    k: v
                    for k, v in {
                        "allow_random_weights": allow_random_weights,
                        "label": label,
                        "remote": backend,
                    }.items()
                    if v
                },
                on_started=started.append,
                shards=shards,
            )
        except _stop_errors() as err:
            _stopped(err, _resume_hint(started))
            raise typer.Exit(1) from err
        except ValueError as err:
            err_console.print(f"[red]error:[/red] {escape(str(err))}")
            raise typer.Exit(2) from err
        except KeyboardInterrupt:
            _stopped(KeyboardInterrupt("interrupted"), _resume_hint(started))
            raise typer.Exit(130) from None
        _finish(result)

    @app.command("resume")
    def resume_command(
        investigation_id: Annotated[int, typer.Argument(metavar="ID")],
        db: DbOption = None,
        report_dir: ReportDirOption = Path("rankscope_reports"),
    ) -> None:
        """Continue an interrupted investigation from its last checkpoint."""
        from rankscope.agent.checkpoints import UnsafeCheckpointError
        from rankscope.agent.lease import LeaseHeldError
        from rankscope.agent.runner import resume

        try:
            result = resume(investigation_id, db=db, report_dir=report_dir, console=console)
        except (UnsafeCheckpointError, LeaseHeldError) as err:
            err_console.print(f"[red]error:[/red] {escape(str(err))}")
            raise typer.Exit(1) from err
        except _stop_errors() as err:
            _stopped(err, f"`rankscope resume {investigation_id}`")
            raise typer.Exit(1) from err
        except KeyboardInterrupt:
            _stopped(KeyboardInterrupt("interrupted"), f"`rankscope resume {investigation_id}`")
            raise typer.Exit(130) from None
        _finish(result)

    @app.command("report")
    def report_command(
        investigation_id: Annotated[int, typer.Argument(metavar="ID")],
        html_out: Annotated[
            Path | None, typer.Option("--html", metavar="OUT", help="Where to write the HTML file.")
        ] = None,
        db: DbOption = None,
        report_dir: ReportDirOption = Path("rankscope_reports"),
    ) -> None:
        """Write the Markdown and the self-contained HTML report of an investigation."""
        from rankscope.agent.reports import write_reports
        from rankscope.experiments_db.engine import open_store
        from rankscope.experiments_db.errors import StoreError

        try:
            with open_store(db, create=False) as store:
                md, html_path = write_reports(
                    store,
                    investigation_id,
                    report_dir / f"investigation-{investigation_id}",
                    html_out,
                )
        except StoreError as err:
            err_console.print(f"[red]error:[/red] {escape(str(err))}")
            raise typer.Exit(1) from err
        console.print(f"Markdown: {md}\nHTML: {html_path}", highlight=False)

    @app.command("audit")
    def audit_command(
        investigation_id: Annotated[int, typer.Argument(metavar="ID")],
        db: DbOption = None,
        device: Annotated[str, typer.Option("--device")] = "cpu",
        experiment: Annotated[
            list[int] | None,
            typer.Option("--experiment", help="Re-run only these experiment ids (repeatable)."),
        ] = None,
        no_rerun: Annotated[
            bool, typer.Option("--no-rerun", help="Check artifacts, citations and rules only.")
        ] = False,
    ) -> None:
        """Re-run stored experiments, compare, check artifacts and citations; non-zero on drift."""
        from rankscope.agent.audit import audit_investigation, print_report
        from rankscope.agent.runner import check_device
        from rankscope.experiments_db.engine import open_store
        from rankscope.experiments_db.errors import StoreError

        if not no_rerun:
            check_device(device)
        try:
            with open_store(db, create=False) as store:
                report = audit_investigation(
                    store,
                    investigation_id,
                    device=device,
                    rerun=not no_rerun,
                    experiments=set(experiment) if experiment else None,
                )
        except StoreError as err:
            err_console.print(f"[red]error:[/red] {escape(str(err))}")
            raise typer.Exit(2) from err
        print_report(report, console)
        if not report.ok:
            raise typer.Exit(1)

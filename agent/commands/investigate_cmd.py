"""``rankscope investigate QUESTION``: start an investigation and run it to its report.

The command turns its options into one :class:`~rankscope.agent.settings.InvestigationSettings`
(a bad value is a usage error) and hands it to :func:`rankscope.agent.runner.investigate`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from rankscope.agent.commands.options import (
    DEFAULT_REPORT_DIR,
    DbOption,
    DeviceOption,
    RemoteOption,
    ReportDirOption,
)
from rankscope.agent.commands.output import (
    console,
    err_console,
    finished,
    resume_hint,
    stop_errors,
    stopped,
)

if TYPE_CHECKING:
    from rankscope.agent.settings import InvestigationSettings

QuestionArgument = Annotated[str, typer.Argument(help="The research question, in plain words.")]
ModelOption = Annotated[
    str | None, typer.Option("--model", metavar="ID|PATH", help="Model (default MiniLM).")
]
DataOption = Annotated[
    str | None,
    typer.Option("--data", metavar="SPEC", help="Data spec (default: built-in collection)."),
]
PlannerOption = Annotated[
    str | None,
    typer.Option(
        "--planner",
        help="llm or protocol (default: llm when an endpoint and --llm-model are set).",
    ),
]
LlmModelOption = Annotated[
    str | None, typer.Option("--llm-model", metavar="NAME", help="Model of the endpoint.")
]
BaseUrlOption = Annotated[
    str | None,
    typer.Option("--base-url", help="OpenAI-compatible endpoint (default $OPENAI_BASE_URL)."),
]
LlmTimeoutOption = Annotated[
    float | None,
    typer.Option(
        "--llm-timeout",
        min=1.0,
        metavar="SECONDS",
        help="Seconds one LLM request may take (default $RANKSCOPE_LLM_TIMEOUT, else 600 "
        "for a local endpoint, 60 for a hosted one). Stored: `resume` uses it.",
    ),
]
LlmRetriesOption = Annotated[
    int | None,
    typer.Option(
        "--llm-retries",
        min=0,
        help="Retries after a failed LLM request (default $RANKSCOPE_LLM_RETRIES, else 1 "
        "local, 3 hosted; a timed-out request is re-sent only to a hosted endpoint or "
        "with RANKSCOPE_LLM_RETRY_TIMEOUTS=1). Stored: `resume` uses it.",
    ),
]
LlmContextOption = Annotated[
    int | None,
    typer.Option(
        "--llm-context",
        min=256,
        metavar="TOKENS",
        help="The LLM's context window (default: asked of the server — vLLM /v1/models, "
        "llama.cpp /props, Ollama /api/show — else unchecked). A request that would not "
        "fit is an error before it is sent. Stored: `resume` uses it.",
    ),
]
AlphaOption = Annotated[
    float | None,
    typer.Option(
        "--alpha",
        min=0.0,
        max=0.49,
        help="The investigation's error level (default 0.05; stored; planners may only "
        "be stricter).",
    ),
]
MinQueriesOption = Annotated[
    int | None,
    typer.Option("--min-queries", min=2, help="Queries a split needs to be decided (default 8)."),
]
PolicyFileOption = Annotated[
    Path | None,
    typer.Option(
        "--policy",
        metavar="FILE.toml",
        exists=True,
        dir_okay=False,
        help="A statistical policy (alpha, min_queries, min_pairs, \\[sesoi], "
        "multiplicity, n_resamples); --alpha and --min-queries override it.",
    ),
]
BudgetOption = Annotated[int, typer.Option("--budget", help="Maximum planner steps.")]
MaxToolCallsOption = Annotated[int, typer.Option("--max-tool-calls")]
MaxTokensOption = Annotated[int, typer.Option("--max-tokens", help="LLM token budget.")]
MaxMinutesOption = Annotated[float, typer.Option("--max-minutes", help="Wall-time budget.")]
ProtocolPairsOption = Annotated[
    int | None,
    typer.Option(
        "--protocol-pairs",
        min=4,
        help="Protocol planner: pairs per experiment (localisation uses twice as many; "
        "default 48/96).",
    ),
]
AllowRandomWeightsOption = Annotated[
    bool,
    typer.Option(
        "--allow-random-weights",
        help="Run even if weights the score depends on are missing from the checkpoint "
        "(they are random; every report says so).",
    ),
]
LabelOption = Annotated[
    str | None,
    typer.Option("--label", metavar="NAME", help="Cross-encoder: the head's label to score."),
]
ShardsOption = Annotated[
    int | None,
    typer.Option(
        "--shards",
        min=1,
        metavar="N",
        help="Split each activation_patching grid across N Ray actors (each loads the "
        "model once; needs rankscope\\[ray]). Stored: `resume` uses it.",
    ),
]


def investigate_command(
    question: QuestionArgument,
    model: ModelOption = None,
    data: DataOption = None,
    planner: PlannerOption = None,
    llm_model: LlmModelOption = None,
    base_url: BaseUrlOption = None,
    llm_timeout: LlmTimeoutOption = None,
    llm_retries: LlmRetriesOption = None,
    llm_context: LlmContextOption = None,
    alpha: AlphaOption = None,
    min_queries: MinQueriesOption = None,
    policy_file: PolicyFileOption = None,
    budget: BudgetOption = 12,
    max_tool_calls: MaxToolCallsOption = 24,
    max_tokens: MaxTokensOption = 200_000,
    max_minutes: MaxMinutesOption = 30.0,
    db: DbOption = None,
    report_dir: ReportDirOption = DEFAULT_REPORT_DIR,
    device: DeviceOption = "cpu",
    protocol_pairs: ProtocolPairsOption = None,
    allow_random_weights: AllowRandomWeightsOption = False,
    label: LabelOption = None,
    remote: RemoteOption = None,
    shards: ShardsOption = None,
) -> None:
    """Investigate a question: hypotheses, experiments, verdicts, a report."""
    from rankscope.agent.policy import make_policy
    from rankscope.agent.settings import InvestigationSettings
    from rankscope.agent.state import Budget
    from rankscope.tools.retrievers.remote import parse_remote

    try:
        settings = InvestigationSettings(
            model_arg=model,
            data_arg=data,
            device=device,
            planner=planner,
            llm_model=llm_model,
            base_url=base_url,
            budget=Budget(
                max_steps=budget,
                max_tool_calls=max_tool_calls,
                max_tokens=max_tokens,
                max_minutes=max_minutes,
            ),
            protocol_pairs=protocol_pairs,
            llm_timeout_s=llm_timeout,
            llm_retries=llm_retries,
            llm_context=llm_context,
            shards=shards,
            policy=make_policy(policy_file, alpha=alpha, min_queries=min_queries),
            model_options=model_options(allow_random_weights, label, parse_remote(remote)),
        )
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    run_investigation(question, settings, db, report_dir)


def model_options(allow_random_weights: bool, label: str | None, remote: Any) -> dict[str, Any]:
    """The model loader's options the user set (unset ones left out)."""
    given = {"allow_random_weights": allow_random_weights, "label": label, "remote": remote}
    return {k: v for k, v in given.items() if v}


def run_investigation(
    question: str, settings: InvestigationSettings, db: str | None, report_dir: Path
) -> None:
    """Run the investigation and say how it ended; exit 1 when it stopped on an error (2 on a
    bad value, 130 on Ctrl-C), suggesting ``resume`` once the run had started."""
    from rankscope.agent.runner import investigate

    started: list[int] = []
    try:
        result = investigate(
            question,
            settings,
            db=db,
            report_dir=report_dir,
            console=console,
            on_started=started.append,
        )
    except stop_errors() as err:
        stopped(err, resume_hint(started[0]) if started else None)
        raise typer.Exit(1) from err
    except ValueError as err:
        err_console.print(f"[red]error:[/red] {escape(str(err))}")
        raise typer.Exit(2) from err
    except KeyboardInterrupt:
        stopped(KeyboardInterrupt("interrupted"), resume_hint(started[0]) if started else None)
        raise typer.Exit(130) from None
    finished(result)


def register(app: typer.Typer) -> None:
    """Add ``investigate`` to the ``rankscope`` app."""
    app.command("investigate")(investigate_command)

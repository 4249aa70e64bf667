"""The consoles of the investigation commands and what `investigate` and `resume` print when a
run ends or stops."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

console = Console()
err_console = Console(stderr=True, soft_wrap=True, highlight=False)


def stop_errors() -> tuple[type[BaseException], ...]:
    """The errors that stop a run with a message (everything recorded so far stays)."""
    from rankscope.agent.llm_client import LLMError
    from rankscope.experiments_db.errors import StoreError
    from rankscope.tools.data.errors import DataError
    from rankscope.tools.retrievers import RetrieverLoadError

    return (LLMError, StoreError, DataError, RetrieverLoadError)


def finished(result: object) -> None:
    """Say how the run ended and where its report is."""
    report_path = getattr(result, "report_path", None)
    inv_id = getattr(result, "investigation_id", None)
    if report_path:
        console.print(f"[bold]Investigation {inv_id} finished.[/bold] Report:")
        console.print(str(report_path), markup=False, highlight=False)
    else:
        console.print(f"Investigation {inv_id}: {escape(str(getattr(result, 'status', '')))}")


def stopped(err: BaseException, resume_hint: str | None) -> None:
    """Say why the run stopped; suggest ``resume`` only when there is a started run to resume."""
    if resume_hint is None:
        err_console.print(f"[bold red]error:[/bold red] {escape(str(err))}")
        err_console.print("Nothing was run; fix the problem above and start again.")
        return
    if resume_hint in str(err):  # the error says how to resume already: one line
        err_console.print(f"[bold red]error:[/bold red] {escape(str(err))}")
        return
    err_console.print(f"[bold red]stopped:[/bold red] {escape(str(err))}")
    err_console.print(
        f"Everything recorded so far stays in the database; continue with {resume_hint}."
    )


def resume_hint(investigation_id: int) -> str:
    return f"`rankscope resume {investigation_id}`"

"""``rankscope resume ID``: continue an interrupted investigation from its last checkpoint."""

from __future__ import annotations

import typer
from rich.markup import escape

from rankscope.agent.commands.options import (
    DEFAULT_REPORT_DIR,
    DbOption,
    InvestigationId,
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


def resume_command(
    investigation_id: InvestigationId,
    db: DbOption = None,
    report_dir: ReportDirOption = DEFAULT_REPORT_DIR,
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
    except stop_errors() as err:
        stopped(err, resume_hint(investigation_id))
        raise typer.Exit(1) from err
    except KeyboardInterrupt:
        stopped(KeyboardInterrupt("interrupted"), resume_hint(investigation_id))
        raise typer.Exit(130) from None
    finished(result)


def register(app: typer.Typer) -> None:
    """Add ``resume`` to the ``rankscope`` app."""
    app.command("resume")(resume_command)

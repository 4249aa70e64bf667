"""``rankscope audit ID``: re-run stored experiments and check an investigation's records."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from rankscope.agent.commands.options import DbOption, DeviceOption, InvestigationId
from rankscope.agent.commands.output import console, err_console


def audit_command(
    investigation_id: InvestigationId,
    db: DbOption = None,
    device: DeviceOption = "cpu",
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


def register(app: typer.Typer) -> None:
    """Add ``audit`` to the ``rankscope`` app."""
    app.command("audit")(audit_command)

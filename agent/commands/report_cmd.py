"""``rankscope report ID [--html OUT]``: write an investigation's Markdown and HTML reports."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from rankscope.agent.commands.options import (
    DEFAULT_REPORT_DIR,
    DbOption,
    InvestigationId,
    ReportDirOption,
)
from rankscope.agent.commands.output import console, err_console


def report_command(
    investigation_id: InvestigationId,
    html_out: Annotated[
        Path | None, typer.Option("--html", metavar="OUT", help="Where to write the HTML file.")
    ] = None,
    db: DbOption = None,
    report_dir: ReportDirOption = DEFAULT_REPORT_DIR,
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


def register(app: typer.Typer) -> None:
    """Add ``report`` to the ``rankscope`` app."""
    app.command("report")(report_command)

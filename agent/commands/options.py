"""Options that several ``rankscope`` commands share, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rankscope.experiments_db.engine import ENV_DB_URL

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        metavar="URL",
        help=f"Database URL (default: ${ENV_DB_URL}, else sqlite:///rankscope.db).",
        show_default=False,
    ),
]
ReportDirOption = Annotated[
    Path,
    typer.Option("--report-dir", help="Folder for reports (one sub-folder per investigation)."),
]
DeviceOption = Annotated[str, typer.Option("--device")]
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
InvestigationId = Annotated[int, typer.Argument(metavar="ID")]

DEFAULT_REPORT_DIR = Path("rankscope_reports")

"""``rankscope review ID HYPOTHESIS --accept|--dispute -m TEXT``: a human judges a verdict."""

from __future__ import annotations

import getpass
from typing import Annotated

import typer
from rich.markup import escape

from rankscope.agent.commands.options import DbOption
from rankscope.agent.commands.store_cmd import _console, _err, _store


def _default_reviewer() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "anonymous"


def review_command(
    investigation_id: Annotated[int, typer.Argument(metavar="ID", help="Investigation id.")],
    hypothesis_id: Annotated[
        int, typer.Argument(metavar="HYPOTHESIS", help="Hypothesis id (its latest verdict).")
    ],
    accept: Annotated[bool, typer.Option("--accept", help="Accept the verdict.")] = False,
    dispute: Annotated[bool, typer.Option("--dispute", help="Dispute the verdict.")] = False,
    message: Annotated[str, typer.Option("--message", "-m", help="Your comment.")] = "",
    reviewer: Annotated[
        str | None,
        typer.Option("--reviewer", help="Your name (default: the login name).", show_default=False),
    ] = None,
    db: DbOption = None,
) -> None:
    """Accept or dispute the latest verdict on a hypothesis; the review is stored beside it."""
    if accept == dispute:
        _err().print("[bold red]error:[/bold red] give exactly one of --accept and --dispute")
        raise typer.Exit(2)
    if dispute and not message.strip():
        _err().print("[bold red]error:[/bold red] a dispute needs a comment (-m TEXT)")
        raise typer.Exit(2)
    decision = "accept" if accept else "dispute"
    name = reviewer or _default_reviewer()
    with _store(db) as store:
        review_id = store.review_hypothesis(
            hypothesis_id, name, decision, message, investigation_id=investigation_id
        )
    _console().print(
        f"Review {review_id}: {escape(name)} {decision}s the verdict on hypothesis "
        f"{hypothesis_id} of investigation {investigation_id}",
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    """Add ``review`` to the ``rankscope`` app."""
    app.command("review")(review_command)

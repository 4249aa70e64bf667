"""The ``rankscope`` command line: each command family lives in ``agent/commands/``.

Every command runs under one error handler (:class:`_Commands`): an expected error — a problem with
the store, the data, the model or its weights, the device, the LLM endpoint, a locked or read-only
database — prints one escaped line on stderr that says what was wrong and what to do, and exits
with status 1. ``rankscope --debug COMMAND`` (or ``RANKSCOPE_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import errno
import os
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from typer import _click
from typer.core import TyperGroup

from rankscope.agent.commands import (
    audit_cmd,
    bench_cmd,
    investigate_cmd,
    report_cmd,
    resume_cmd,
    review_cmd,
    serve_cmd,
    store_cmd,
    sweep_cmd,
    tools_cmd,
)

DEBUG_ENV = "RANKSCOPE_DEBUG"
_DEBUG_KEY = "rankscope.debug"
_DEBUG_HINT = "rerun with `rankscope --debug …` for the traceback"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _database_problem(text: str) -> str | None:
    """What to do about a database driver error, from its message (``None``: not recognised)."""
    low = text.lower()
    if "database is locked" in low or "database table is locked" in low:
        return (
            f"the database is locked by another process ({text}); wait until that process "
            "finishes (or stop it), or pass --db with another database"
        )
    if "readonly" in low or "read-only" in low or "read only" in low:
        return (
            f"the database is read-only ({text}); make the database file and its folder writable, "
            "or pass --db with a writable location"
        )
    if "unable to open database file" in low:
        return (
            f"cannot open the database file ({text}); check the path given with --db and that its "
            "folder exists and is writable"
        )
    if "database or disk is full" in low or "no space left on device" in low:
        return (
            f"the disk holding the database is full ({text}); the write that failed was rolled "
            "back and the database is intact: free space on that disk (or pass --db with a "
            "database on a disk with room) and run the command again"
        )
    if "malformed" in low:
        return (
            f"the database file is damaged ({text}); restore it from a backup, or import the "
            "investigations' bundles into a new database"
        )
    if "disk i/o error" in low:
        return (
            f"the disk reported an I/O error while the database was used ({text}); check the "
            "disk, then run `sqlite3 FILE 'PRAGMA integrity_check'` on the database file before "
            "using it again"
        )
    if "could not connect" in low or "connection refused" in low or "server closed" in low:
        return (
            f"cannot reach the database server ({text}); check --db / $RANKSCOPE_DB_URL and that "
            "the server is running"
        )
    return None


def explain_error(exc: BaseException) -> str | None:
    """The one-line message for an expected error, or ``None`` for an unexpected one (a bug,
    whose traceback is worth seeing)."""
    from sqlalchemy.exc import DBAPIError

    from rankscope.agent.checkpoints import UnsafeCheckpointError
    from rankscope.agent.lease import LeaseHeldError
    from rankscope.agent.llm_client import LLMError
    from rankscope.agent.runner import DeviceError
    from rankscope.experiments_db.errors import StoreError
    from rankscope.tools.data.errors import DataError
    from rankscope.tools.retrievers import RetrieverLoadError

    if isinstance(
        exc,
        StoreError
        | DataError
        | RetrieverLoadError
        | LLMError
        | DeviceError
        | UnsafeCheckpointError
        | LeaseHeldError,
    ):
        return _one_line(str(exc))
    if isinstance(exc, DBAPIError):
        return _database_problem(_one_line(str(exc.orig or exc))) or _one_line(
            f"database error: {exc.orig or exc}; {_DEBUG_HINT}"
        )
    text = _one_line(f"{type(exc).__name__}: {exc}")
    if "safetensor" in type(exc).__module__.lower():
        return (
            f"the model's weights file cannot be read ({text}); it looks corrupt or truncated: "
            "download or save the model again"
        )
    import sqlite3

    if isinstance(exc, sqlite3.Error):
        return _database_problem(text)
    if isinstance(exc, PermissionError | FileNotFoundError | IsADirectoryError):
        return f"{text}; check the path and its permissions"
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return (
            f"the disk is full ({text}); the file being written was not kept and the database "
            "is intact: free space on that disk and run the command again"
        )
    return None


def _debug_requested(ctx: _click.Context) -> bool:
    flag = os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes")
    return flag or bool(ctx.meta.get(_DEBUG_KEY))


class _Commands(TyperGroup):
    """The command group: runs each command under the shared error handler."""

    def invoke(self, ctx: _click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except Exception as exc:
            message = None if _debug_requested(ctx) else explain_error(exc)
            if message is None:
                raise
            Console(stderr=True, highlight=False, soft_wrap=True).print(
                f"[bold red]error:[/bold red] {escape(message)}"
            )
            raise typer.Exit(1) from None


app = typer.Typer(
    name="rankscope",
    help="RankScope: an automated interpretability agent for neural retrieval models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_Commands,
)


@app.callback()
def _options(
    ctx: typer.Context,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug", help=f"Show the traceback of an error (also ${DEBUG_ENV}=1).", is_eager=True
        ),
    ] = False,
) -> None:
    """RankScope: an automated interpretability agent for neural retrieval models."""
    ctx.meta[_DEBUG_KEY] = debug


for _module in (
    tools_cmd,
    store_cmd,
    investigate_cmd,
    resume_cmd,
    report_cmd,
    audit_cmd,
    review_cmd,
    serve_cmd,
    sweep_cmd,
    bench_cmd,
):
    _module.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

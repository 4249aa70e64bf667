"""``rankscope serve``: the review workspace on loopback (or, with a token, elsewhere)."""

from __future__ import annotations

import os
from typing import Annotated

import typer
from rich.markup import escape

from rankscope.agent.commands.options import DbOption
from rankscope.agent.commands.store_cmd import _console, _err, _store
from rankscope.agent.web.security import ENV_TOKEN, allow_hosts, allowed_hosts, is_loopback


def serve_command(
    host: Annotated[str, typer.Option("--host", help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8765,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            help=f"Access token required on every request (default: ${ENV_TOKEN}); "
            "needed to bind a non-loopback address.",
            show_default=False,
        ),
    ] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host",
            metavar="NAME",
            help="Another host name the workspace answers to (repeatable), for example the "
            "machine's name when binding 0.0.0.0. Requests naming any other host in their Host "
            "header are refused (DNS rebinding).",
            show_default=False,
        ),
    ] = None,
    db: DbOption = None,
) -> None:
    """Serve the review workspace: browse, review, audit, compare and export investigations."""
    import uvicorn

    from rankscope.agent.web import create_app

    token = token or os.environ.get(ENV_TOKEN) or None
    if not is_loopback(host) and not token:
        _err().print(
            f"[bold red]error:[/bold red] refusing to serve on {escape(host)} without a token: "
            f"pass --token or set ${ENV_TOKEN}"
        )
        raise typer.Exit(2)
    try:
        hosts = allowed_hosts(host, allowed_host or ())
    except ValueError as err:
        _err().print(f"[bold red]error:[/bold red] --allowed-host: {escape(str(err))}")
        raise typer.Exit(2) from None
    with _store(db) as store:
        app = create_app(store, token=token)
        allow_hosts(app, host, allowed_host or ())
        shown = f"[{host}]" if ":" in host else host
        where = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
        _console().print(f"RankScope review workspace on {escape(where)} ({escape(store.url)})")
        names = ", ".join(sorted(f"[{h}]" if ":" in h else h for h in hosts))
        _console().print(f"answering to the hosts {escape(names)}", soft_wrap=True)
        uvicorn.run(app, host=host, port=port, log_level="warning")


def register(app: typer.Typer) -> None:
    """Add ``serve`` to the ``rankscope`` app."""
    app.command("serve")(serve_command)

"""The ``rankscope`` command line: each command family lives in ``agent/commands/``."""

from __future__ import annotations

import typer

from rankscope.agent.commands import (
    investigate_cmd,
    review_cmd,
    serve_cmd,
    store_cmd,
    sweep_cmd,
    tools_cmd,
)

app = typer.Typer(
    name="rankscope",
    help="RankScope: an automated interpretability agent for neural retrieval models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for _module in (tools_cmd, store_cmd, investigate_cmd, review_cmd, serve_cmd, sweep_cmd):
    _module.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

"""``rankscope list | show | export | import`` through typer's CliRunner on a SQLite database."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from rankscope.agent.commands import store_cmd
from rankscope.experiments_db import open_store
from tests.test_db_support import populate

WIDE = {"COLUMNS": "200"}


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False)
    store_cmd.register(app)
    return app


@pytest.fixture
def db(tmp_path: Path) -> tuple[str, dict[str, int]]:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    with open_store(url) as store:
        ids = populate(store, tmp_path)
    return url, ids


def test_list_and_show(app: typer.Typer, db: tuple[str, dict[str, int]]) -> None:
    url, ids = db
    runner = CliRunner()
    listed = runner.invoke(app, ["list", "--db", url], env=WIDE)
    assert listed.exit_code == 0, listed.output
    assert "Which heads make MiniLM reward repeated query terms?" in listed.output
    assert "protocol" in listed.output

    shown = runner.invoke(app, ["show", str(ids["investigation"]), "--db", url], env=WIDE)
    assert shown.exit_code == 0, shown.output
    out = shown.output
    for text in (
        f"hypothesis {ids['hypothesis']}",
        f"experiment {ids['experiment']} activation_patching",
        f"evidence {ids['evidence']}: normalised_effect=0.31",
        f"verdict {ids['verdict']} supported",
        "review by alice: accept",
        f"(follows {ids['hypothesis']}) [no verdict] Replication on held-out queries",
        "experiments without a hypothesis",
    ):
        assert text in out, text
    assert out.index("hypothesis") < out.index("experiment") < out.index("evidence")

    as_json = runner.invoke(app, ["show", str(ids["investigation"]), "--db", url, "--json"])
    assert as_json.exit_code == 0 and '"cited_evidence_ids"' in as_json.output


def test_export_and_import(
    app: typer.Typer, db: tuple[str, dict[str, int]], tmp_path: Path
) -> None:
    url, ids = db
    runner = CliRunner()
    bundle = tmp_path / "bundle.zip"
    exported = runner.invoke(
        app, ["export", str(ids["investigation"]), "--out", str(bundle), "--db", url]
    )
    assert exported.exit_code == 0, exported.output
    assert bundle.is_file()
    other = f"sqlite:///{tmp_path / 'other.db'}"
    imported = runner.invoke(app, ["import", str(bundle), "--db", other])
    assert imported.exit_code == 0, imported.output
    assert "as investigation 1" in imported.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["show", "999"], "investigation 999 does not exist"),
        (["export", "999"], "investigation 999 does not exist"),
        (["import", "no-such-bundle.zip"], "no bundle at no-such-bundle.zip"),
    ],
)
def test_user_errors_are_messages_not_tracebacks(
    app: typer.Typer, db: tuple[str, dict[str, int]], args: list[str], message: str
) -> None:
    url, _ = db
    result = CliRunner().invoke(app, [*args, "--db", url], env=WIDE)
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_bad_database_url(app: typer.Typer, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["list", "--db", "mysql://u:secret@h/x"], env=WIDE)
    assert result.exit_code == 1
    assert "unsupported database 'mysql'" in result.output and "secret" not in result.output
    missing = runner.invoke(app, ["list", "--db", str(tmp_path / "none.db")], env=WIDE)
    assert missing.exit_code == 1 and "no RankScope database at" in missing.output

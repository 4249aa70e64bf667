"""The distribution installs one import name, ``rankscope``, and nothing else.

The repository's top-level folders map to ``rankscope.*`` through setuptools ``package-dir``
(pyproject.toml). These tests keep that so: the explicit package list matches the folders, the
wheel holds only ``rankscope/`` and its dist-info (with the package data), and running the CLI or
importing the package never brings in a bare ``agent``, ``tools``, ``experiments_db`` or
``prompts`` module.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rankscope import SUBPACKAGES

REPO_ROOT = Path(__file__).resolve().parents[1]
BARE_NAMES = ("agent", "tools", "experiments_db", "prompts")
"""Top-level import names the distribution must never install or import."""


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def _package_dirs() -> dict[str, str]:
    """``rankscope.<name>`` → its folder in the repository (from ``package-dir``)."""
    return dict(_pyproject()["tool"]["setuptools"]["package-dir"])


def _packages_in_folders() -> set[str]:
    """``rankscope`` and every folder under the mapped folders that holds an ``__init__.py``."""
    found = {"rankscope"}
    for name, folder in _package_dirs().items():
        if name == "rankscope":
            continue
        root = REPO_ROOT / folder
        for init in root.rglob("__init__.py"):
            parts = init.parent.relative_to(root).parts
            found.add(".".join((name, *parts)))
    return found


def _clean_env() -> dict[str, str]:
    """The environment without ``PYTHONPATH``, offline, so only the installed package is seen."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


def _run_python(code: str, cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """``python -c code argv…`` in ``cwd`` (outside the checkout) with a clean environment."""
    assert REPO_ROOT not in cwd.resolve().parents, "run outside the checkout"
    return subprocess.run(
        [sys.executable, "-c", code, *argv],
        cwd=cwd,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_package_dir_maps_the_subpackages() -> None:
    expected = {"rankscope": "rankscope"} | {f"rankscope.{s}": s for s in SUBPACKAGES}
    assert _package_dirs() == expected


def test_package_list_matches_the_folders() -> None:
    listed = _pyproject()["tool"]["setuptools"]["packages"]
    assert len(listed) == len(set(listed)), "a package is listed twice"
    assert set(listed) == _packages_in_folders()


def _copy_sources(dest: Path) -> Path:
    """The files a build reads, copied (without caches) so that no build output lands in the
    checkout and none left there from an earlier build leaks into the wheel."""
    dest.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, dest / name)
    for folder in _package_dirs().values():
        shutil.copytree(REPO_ROOT / folder, dest / folder, ignore=ignore)
    return dest


def _build_wheel(tmp_path: Path) -> zipfile.ZipFile:
    src = _copy_sources(tmp_path / "src")
    out = tmp_path / "dist"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
        + ["-q", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = out.glob("rankscope-*.whl")
    return zipfile.ZipFile(wheel)


PACKAGE_DATA = (
    ("prompts", "*.md"),
    ("tools", "data/*.json"),
    ("experiments_db", "migrations/*.py"),
    ("experiments_db", "migrations/versions/*.py"),
    ("experiments_db", "migrations/script.py.mako"),
)
"""(folder, pattern) of the data files the wheel must carry: prompts, built-in collection,
alembic migrations and their template."""


def _module_files() -> set[str]:
    """The wheel path of every module of every listed package."""
    dirs = _package_dirs()
    files: set[str] = set()
    for package in _pyproject()["tool"]["setuptools"]["packages"]:
        top = ".".join(package.split(".")[:2])
        folder = REPO_ROOT / dirs[top] / Path(*package.split(".")[2:])
        files |= {f"{package.replace('.', '/')}/{p.name}" for p in folder.glob("*.py")}
    return files


def _data_files(folder: str, pattern: str) -> set[str]:
    """The wheel paths of the files of ``folder`` that match ``pattern``."""
    root = REPO_ROOT / folder
    return {f"rankscope/{folder}/{p.relative_to(root).as_posix()}" for p in root.glob(pattern)}


def test_wheel_holds_only_rankscope_and_its_data(tmp_path: Path) -> None:
    version = _pyproject()["project"]["version"]
    wheel = _build_wheel(tmp_path)
    names = set(wheel.namelist())
    dist_info = f"rankscope-{version}.dist-info/"
    assert sorted(n for n in names if not n.startswith(("rankscope/", dist_info))) == []
    assert sorted(_module_files() - names) == []
    for folder, pattern in PACKAGE_DATA:
        expected = _data_files(folder, pattern)
        assert expected, f"no {folder}/{pattern} in the checkout"
        assert sorted(expected - names) == []
    assert wheel.read(dist_info + "top_level.txt").decode().split() == ["rankscope"]
    assert (
        "rankscope = rankscope.agent.cli:app" in wheel.read(dist_info + "entry_points.txt").decode()
    )


RUN_CLI_THEN_LIST_BARE_MODULES = f"""
import sys
from rankscope.agent.cli import app

try:
    app(sys.argv[1:], prog_name="rankscope")
except SystemExit as stop:
    if stop.code:
        raise
bare = sorted(m for m in sys.modules if m.split(".")[0] in {BARE_NAMES!r})
print("BARE", bare)
"""


def test_cli_run_imports_no_bare_module(
    tmp_path: Path, tiny_model_dir: Callable[[str], Path]
) -> None:
    model = tiny_model_dir("bert")
    args = {"n_pairs": 8, "n_bootstrap": 100}
    argv = ["run", "behavioural_test", "--model", str(model), "--args", json.dumps(args)]
    argv += ["--out", str(tmp_path / "out"), "--json", "--no-progress"]
    work = tmp_path / "elsewhere"
    work.mkdir()
    done = _run_python(RUN_CLI_THEN_LIST_BARE_MODULES, work, *argv)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "BARE []" in done.stdout
    payload = json.loads(done.stdout[: done.stdout.rindex("BARE")])
    assert payload["metrics"]["n_pairs"] == 8
    assert list((tmp_path / "out").glob("*.png"))


def test_rankscope_imports_from_outside_the_checkout(tmp_path: Path) -> None:
    done = _run_python(
        "import rankscope.tools, rankscope.agent; print(rankscope.__version__)", tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == _pyproject()["project"]["version"]


@pytest.mark.parametrize("bare", BARE_NAMES)
def test_bare_names_are_not_importable(tmp_path: Path, bare: str) -> None:
    done = _run_python(f"import {bare}", tmp_path)
    assert done.returncode != 0
    assert f"ModuleNotFoundError: No module named '{bare}'" in done.stderr

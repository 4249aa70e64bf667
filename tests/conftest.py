"""Shared fixtures: the real MiniLM, the shared data folder, tiny random models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def shared_data_dir() -> Path:
    """``../shared/data`` beside the repository (override: RANKSCOPE_SHARED_DATA)."""
    override = os.environ.get("RANKSCOPE_SHARED_DATA")
    return Path(override) if override else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    folder = shared_data_dir()
    if not (folder / "dl1920_tfc1_pairs.tsv").exists():
        pytest.fail(f"the shared data folder {folder} is missing; set RANKSCOPE_SHARED_DATA")
    return folder


@pytest.fixture(scope="session")
def minilm():
    from rankscope.tools.retrievers import load_retriever

    return load_retriever()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A factory: ``tiny_model_dir(arch, kind, st_pooling=None)`` → a saved tiny model folder."""
    from tests.tiny_models import save_tiny_model

    cache: dict[tuple, Path] = {}

    def make(arch: str, kind: str = "bi-encoder", st_pooling: str | None = None) -> Path:
        key = (arch, kind, st_pooling)
        if key not in cache:
            folder = tmp_path_factory.mktemp(f"tiny-{arch}-{kind}-{st_pooling}")
            cache[key] = save_tiny_model(folder, arch, kind, st_pooling=st_pooling)
        return cache[key]

    return make

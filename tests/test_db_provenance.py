"""Provenance capture and hashing helpers.

The layering rule of ``experiments_db`` (no torch, tools or agent) is an import-linter contract
in pyproject.toml, checked by ``.ci/typecheck``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rankscope.experiments_db.hashing import file_sha256, json_sha256, weights_hash
from rankscope.experiments_db.provenance import Provenance, capture_provenance, code_version


def test_capture_provenance_adds_the_environment() -> None:
    prov = capture_provenance(
        tool_name="activation_patching",
        tool_version="3",
        args={"seed": 7, "layers": (0, 1)},
        model_id="sentence-transformers/all-MiniLM-L6-v2",
        weights_hash="w" * 64,
        dataset_hash="d" * 64,
        device="cpu",
        timings={"forward_s": 0.25},
        extra={"note": "test"},
    )
    assert prov.seed == 7 and prov.args == {"seed": 7, "layers": [0, 1]}
    assert prov.packages["pydantic"] and "torch" in prov.packages
    assert prov.python == sys.version.split()[0]
    assert prov.hostname and prov.platform
    assert prov.code_version == str(code_version())
    assert prov.captured_at.tzinfo is not None
    assert Provenance.model_validate_json(prov.model_dump_json()) == prov


def test_hash_helpers(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    (model / "config.json").write_text("{}")
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    for f in model.iterdir():
        (moved / f.name).write_bytes(f.read_bytes())
    assert weights_hash(model) == weights_hash(moved)
    assert weights_hash(model) != weights_hash(model / "model.safetensors")
    (moved / "model.safetensors").write_bytes(b"other weights")
    assert weights_hash(model) != weights_hash(moved)
    assert len(file_sha256(model / "config.json")) == 64
    assert json_sha256({"b": 1, "a": [1.0]}) == json_sha256({"a": [1.0], "b": 1})

"""The content-addressed artifact store."""

from __future__ import annotations

from pathlib import Path

import pytest

from rankscope.experiments_db import ArtifactError, ArtifactIntegrityError, ArtifactMissingError
from rankscope.experiments_db.artifacts import ArtifactStore
from rankscope.experiments_db.hashing import bytes_sha256


def test_put_names_files_by_hash_and_keeps_the_extension(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    source = tmp_path / "Heatmap.PNG"
    source.write_bytes(b"pixels")
    stored = store.put(source)
    sha = bytes_sha256(b"pixels")
    assert stored.sha256 == sha and stored.size == 6 and stored.created
    assert stored.relpath == f"{sha[:2]}/{sha}.png"
    assert (store.root / stored.relpath).read_bytes() == b"pixels"
    assert store.read_bytes(stored.relpath, sha) == b"pixels"
    assert store.contains(stored.relpath, sha)


def test_identical_content_is_stored_once_and_no_temp_files_remain(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    first = store.put_bytes(b"same", ".json")
    second = store.put_bytes(b"same", ".json")
    assert first.relpath == second.relpath and not second.created
    files = [p for p in store.root.rglob("*") if p.is_file()]
    assert files == [store.root / first.relpath]


def test_put_repairs_a_corrupted_copy(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    stored = store.put_bytes(b"original", ".bin")
    (store.root / stored.relpath).write_bytes(b"bit rot")
    assert not store.contains(stored.relpath, stored.sha256)
    again = store.put_bytes(b"original", ".bin")
    assert again.created and store.contains(stored.relpath, stored.sha256)


def test_corruption_and_absence_are_reported_clearly(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    stored = store.put_bytes(b"evidence", ".txt")
    path = store.root / stored.relpath
    path.write_bytes(b"edited")
    with pytest.raises(ArtifactIntegrityError) as info:
        store.verify(stored.relpath, stored.sha256)
    assert str(path) in str(info.value)
    assert f"expected sha256 {stored.sha256}, found {bytes_sha256(b'edited')}" in str(info.value)
    path.unlink()
    with pytest.raises(ArtifactMissingError, match=stored.sha256):
        store.read_bytes(stored.relpath, stored.sha256)
    with pytest.raises(ArtifactMissingError, match="does not exist"):
        store.put(tmp_path / "nothing.png")


@pytest.mark.parametrize("relpath", ["../etc/passwd", "ab/cd.png", "/abs/" + "a" * 64, ""])
def test_only_store_paths_are_accepted(tmp_path: Path, relpath: str) -> None:
    with pytest.raises(ArtifactError, match="not an artifact store path"):
        ArtifactStore(tmp_path).path(relpath)


def test_odd_extensions_are_dropped(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    assert "." not in store.put_bytes(b"x", ".we ird").relpath.split("/")[1]
    assert store.put_bytes(b"y", ".safetensors").relpath.endswith(".safetensors")

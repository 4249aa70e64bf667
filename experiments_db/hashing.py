"""sha256 helpers for files, model weights and data sets."""

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rankscope.experiments_db.jsonutil import canonical_json

CHUNK_SIZE = 1 << 20


def file_sha256(path: str | Path) -> str:
    """The hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def json_sha256(value: Any) -> str:
    """The sha256 of the canonical JSON form of ``value`` (for data sets and argument sets)."""
    return bytes_sha256(canonical_json(value).encode("utf-8"))


def weights_hash(paths: str | Path | Iterable[str | Path]) -> str:
    """One sha256 over model files: a file, a directory (all files below it), or several.

    Each file contributes ``name<NUL>sha256`` where ``name`` is its path relative to the directory
    given (or its base name for single files), so the hash does not depend on where the model lives.
    """
    items = [paths] if isinstance(paths, str | Path) else list(paths)
    entries: list[tuple[str, str]] = []
    for item in items:
        item = Path(item)
        if item.is_dir():
            for file in sorted(p for p in item.rglob("*") if p.is_file()):
                entries.append((file.relative_to(item).as_posix(), file_sha256(file)))
        elif item.is_file():
            entries.append((item.name, file_sha256(item)))
        else:
            raise FileNotFoundError(f"no model file or directory at {item}")
    digest = hashlib.sha256()
    for name, sha in sorted(entries):
        digest.update(f"{name}\0{sha}\n".encode())
    return digest.hexdigest()

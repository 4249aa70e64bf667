"""Content-addressed artifact files (``root/ab/abcdef….png``): atomic writes, checked reads."""

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from rankscope.experiments_db.errors import (
    ArtifactError,
    ArtifactIntegrityError,
    ArtifactMissingError,
)
from rankscope.experiments_db.hashing import CHUNK_SIZE, file_sha256

ENV_ARTIFACT_DIR = "RANKSCOPE_ARTIFACT_DIR"
DEFAULT_ARTIFACT_DIR = "rankscope_artifacts"

_SUFFIX = re.compile(r"\.[a-z0-9_]{1,20}")
_RELPATH = re.compile(r"([0-9a-f]{2})/([0-9a-f]{64})(\.[a-z0-9_]{1,20})?")


@dataclass(frozen=True)
class StoredFile:
    """Where a file landed in the store. ``created`` is False when identical content was there."""

    sha256: str
    relpath: str
    size: int
    created: bool


def default_artifact_root(db_url: str | None = None) -> Path:
    """The artifact folder for a database.

    ``RANKSCOPE_ARTIFACT_DIR`` when set; else, for a SQLite file ``dir/name.db``, the sibling folder
    ``dir/name_artifacts``; else ``./rankscope_artifacts``.
    """
    env = os.environ.get(ENV_ARTIFACT_DIR)
    if env:
        return Path(env).expanduser().resolve()
    if db_url:
        with contextlib.suppress(ArgumentError):
            url = make_url(db_url)
            if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
                db_path = Path(url.database).expanduser().resolve()
                return db_path.with_name(f"{db_path.stem}_artifacts")
    return Path(DEFAULT_ARTIFACT_DIR).resolve()


def _suffix_of(name: str | Path) -> str:
    suffix = Path(name).suffix.lower()
    return suffix if _SUFFIX.fullmatch(suffix) else ""


class ArtifactStore:
    """A folder of files named by the sha256 of their content (the extension is kept)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"ArtifactStore({str(self.root)!r})"

    @staticmethod
    def relpath_for(sha256: str, suffix: str = "") -> str:
        """The store-relative path of content with this hash (``ab/abcdef….png``)."""
        suffix = suffix.lower()
        if suffix and not _SUFFIX.fullmatch(suffix):
            suffix = ""
        return f"{sha256[:2]}/{sha256}{suffix}"

    def path(self, relpath: str) -> Path:
        """The absolute path of a stored file; rejects anything that is not a store path."""
        match = _RELPATH.fullmatch(relpath)
        if match is None or match.group(1) != match.group(2)[:2]:
            raise ArtifactError(f"not an artifact store path: {relpath!r}")
        return self.root / relpath

    def put(self, source: str | Path) -> StoredFile:
        """Copy a local file into the store (atomically; identical content is stored once)."""
        source = Path(source)
        if not source.is_file():
            raise ArtifactMissingError(f"artifact file to store does not exist: {source}")
        with open(source, "rb") as fh:
            return self._put_stream(fh.read, _suffix_of(source))

    def put_bytes(self, data: bytes, suffix: str = "") -> StoredFile:
        """Store bytes under their hash; ``suffix`` is the extension to keep (``.png``)."""
        view = memoryview(data)
        offset = 0

        def read(n: int) -> bytes:
            nonlocal offset
            chunk = bytes(view[offset : offset + n])
            offset += len(chunk)
            return chunk

        return self._put_stream(read, suffix.lower() if _SUFFIX.fullmatch(suffix.lower()) else "")

    def _put_stream(self, read: Callable[[int], bytes], suffix: str) -> StoredFile:
        self.root.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=suffix)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := read(CHUNK_SIZE):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            sha = digest.hexdigest()
            relpath = self.relpath_for(sha, suffix)
            target = self.root / relpath
            if target.is_file() and file_sha256(target) == sha:
                tmp.unlink()
                return StoredFile(sha, relpath, size, created=False)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)
            return StoredFile(sha, relpath, size, created=True)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def verify(self, relpath: str, sha256: str) -> Path:
        """The file's absolute path after checking its content hash."""
        path = self.path(relpath)
        if not path.is_file():
            raise ArtifactMissingError(
                f"artifact file {path} (sha256 {sha256}) is missing from the artifact store at "
                f"{self.root}; point the store at the right folder (RANKSCOPE_ARTIFACT_DIR) or "
                "restore the file from a bundle"
            )
        actual = file_sha256(path)
        if actual != sha256:
            raise ArtifactIntegrityError(str(path), sha256, actual)
        return path

    def read_bytes(self, relpath: str, sha256: str) -> bytes:
        """The file's bytes, checked against ``sha256``."""
        path = self.path(relpath)
        if not path.is_file():
            self.verify(relpath, sha256)
        data = path.read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise ArtifactIntegrityError(str(path), sha256, actual)
        return data

    def contains(self, relpath: str, sha256: str) -> bool:
        """Whether the file is present with the right content."""
        try:
            self.verify(relpath, sha256)
        except ArtifactError:
            return False
        return True

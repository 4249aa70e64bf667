"""Export an investigation (rows + artifact files) as a zip bundle, and import one under new ids:
:func:`import_bundle` checks the bundle and its files, :func:`import_tree` writes the rows."""

import json
import os
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from rankscope.experiments_db.chain import LinkKind, append_link
from rankscope.experiments_db.errors import ArtifactIntegrityError, BundleError
from rankscope.experiments_db.hashing import bytes_sha256
from rankscope.experiments_db.jsonutil import to_jsonable
from rankscope.experiments_db.migrate import head_revision
from rankscope.experiments_db.models import (
    Artifact,
    Evidence,
    Experiment,
    Hypothesis,
    Investigation,
    LLMCall,
    Review,
    Verdict,
    utcnow,
)
from rankscope.experiments_db.records import InvestigationTree
from rankscope.experiments_db.repository import Store
from rankscope.experiments_db.store_core import add_row

BUNDLE_FORMAT = "rankscope-investigation-bundle"
BUNDLE_VERSION = 1
MANIFEST = "bundle.json"
ARTIFACT_PREFIX = "artifacts/"
MAX_UNPACKED_BYTES = 4 * 1024**3
"""The most a bundle may unpack to (manifest and artifacts together); a zip bomb stops here."""
_CHUNK = 1 << 20
_HYPOTHESIS_NODE_FIELDS = {
    "id",
    "investigation_id",
    "parent_id",
    "criterion",
    "experiments",
    "verdicts",
}
"""The fields of a hypothesis node that its imported row does not copy."""


def default_bundle_path(investigation_id: int) -> Path:
    return Path(f"rankscope-investigation-{investigation_id}.zip")


def export_investigation(
    store: Store, investigation_id: int, out_path: str | Path | None = None
) -> Path:
    """Write ``bundle.json`` (the investigation tree) and its artifact files (checked) to a zip.

    Returns the bundle's path (default ``./rankscope-investigation-ID.zip``).
    """
    tree = store.investigation_tree(investigation_id)
    out = Path(out_path) if out_path is not None else default_bundle_path(investigation_id)
    if out.is_dir():
        out = out / default_bundle_path(investigation_id).name
    out.parent.mkdir(parents=True, exist_ok=True)
    artifacts = {a.path: a for a in tree.artifacts()}
    manifest: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "schema_revision": head_revision(),
        "exported_at": utcnow().isoformat(),
        "source": {"database": store.url, "investigation_id": investigation_id},
        "artifacts": [
            {"path": a.path, "sha256": a.sha256, "size": a.size} for a in artifacts.values()
        ],
        "tree": tree.model_dump(mode="json"),
    }
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=".tmp-", suffix=".zip")
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp_name, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False))
            for relpath, artifact in sorted(artifacts.items()):
                zf.writestr(ARTIFACT_PREFIX + relpath, store.read_artifact(artifact))
        os.replace(tmp_name, out)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return out


class _Bundle:
    """Read access to a bundle, zipped or unpacked into a folder."""

    def __init__(
        self, path: Path, zf: zipfile.ZipFile | None, max_bytes: int = MAX_UNPACKED_BYTES
    ) -> None:
        self.path = path
        self._zip = zf
        self._left = max_bytes
        self._max = max_bytes

    def read(self, name: str) -> bytes:
        """A member's bytes, read in chunks so that unpacking past the size bound stops early
        (whatever sizes the zip declares)."""
        parts: list[bytes] = []
        try:
            member: IO[bytes] = (
                self._zip.open(name) if self._zip is not None else (self.path / name).open("rb")
            )
            with member as fh:
                while chunk := fh.read(min(_CHUNK, self._left + 1)):
                    self._left -= len(chunk)
                    if self._left < 0:
                        raise BundleError(
                            f"bundle {self.path} unpacks to more than {self._max} bytes "
                            f"(at {name}); refusing it"
                        )
                    parts.append(chunk)
        except (KeyError, FileNotFoundError):
            raise BundleError(f"bundle {self.path} lacks {name}; it is incomplete") from None
        return b"".join(parts)


@contextmanager
def _open_bundle(path: Path, max_bytes: int = MAX_UNPACKED_BYTES) -> Iterator[_Bundle]:
    if path.is_dir():
        yield _Bundle(path, None, max_bytes)
        return
    if not path.is_file():
        raise BundleError(f"no bundle at {path}")
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise BundleError(f"{path} is not a RankScope bundle (not a zip file)") from None
    with zf:
        yield _Bundle(path, zf, max_bytes)


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The bundle's ``bundle.json``, checked for format and version."""
    with _open_bundle(Path(path)) as bundle:
        return _manifest(bundle)


def _manifest(bundle: _Bundle) -> dict[str, Any]:
    try:
        manifest = json.loads(bundle.read(MANIFEST))
    except json.JSONDecodeError as exc:
        raise BundleError(f"{bundle.path}: {MANIFEST} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{bundle.path} is not a RankScope investigation bundle")
    if manifest.get("version") != BUNDLE_VERSION:
        raise BundleError(
            f"{bundle.path} has bundle version {manifest.get('version')!r}; this RankScope reads "
            f"version {BUNDLE_VERSION}"
        )
    return manifest


def import_tree(store: Store, tree: InvestigationTree, *, config_note: Mapping[str, Any]) -> int:
    """Re-create an exported investigation under new ids in one transaction; return the new
    investigation id. Artifact files must already be in the store's artifact folder.

    Cited evidence ids in verdicts are remapped; ``config_note`` (with the id maps added) is
    stored in the investigation's config under ``"imported_from"``. The new hypotheses, evidence
    and verdicts are linked into the new investigation's record chain.
    """
    src = tree.investigation
    with store._write() as session:
        inv = Investigation(
            **src.model_dump(exclude={"id", "config"}),
            config={**src.config, "imported_from": {}},
        )
        inv_id = add_row(session, inv)
        hyp_ids = {
            h.id: add_row(
                session,
                Hypothesis(
                    investigation_id=inv_id,
                    **h.model_dump(exclude=_HYPOTHESIS_NODE_FIELDS),
                    **to_jsonable(h.criterion.model_dump()),
                ),
            )
            for h in tree.hypotheses
        }
        for h in tree.hypotheses:
            if h.parent_id is not None:
                session.get_one(Hypothesis, hyp_ids[h.id]).parent_id = hyp_ids[h.parent_id]
        exp_ids: dict[int, int] = {}
        ev_ids: dict[int, int] = {}
        for e in tree.experiments():
            exp_id = exp_ids[e.id] = add_row(
                session,
                Experiment(
                    investigation_id=inv_id,
                    hypothesis_id=None if e.hypothesis_id is None else hyp_ids[e.hypothesis_id],
                    **e.model_dump(exclude={"id", "investigation_id", "hypothesis_id", "evidence"}),
                ),
            )
            for ev in e.evidence:
                ev_id = ev_ids[ev.id] = add_row(
                    session,
                    Evidence(
                        experiment_id=exp_id,
                        **ev.model_dump(exclude={"id", "experiment_id", "artifacts"}),
                    ),
                )
                for a in ev.artifacts:
                    session.add(
                        Artifact(
                            experiment_id=exp_id,
                            evidence_id=ev_id,
                            **a.model_dump(exclude={"id", "experiment_id", "evidence_id"}),
                        )
                    )
        verdict_ids: list[int] = []
        for h in tree.hypotheses:
            for v in h.verdicts:
                verdict_id = add_row(
                    session,
                    Verdict(
                        hypothesis_id=hyp_ids[h.id],
                        cited_evidence_ids=[ev_ids[i] for i in v.cited_evidence_ids],
                        **v.model_dump(
                            exclude={"id", "hypothesis_id", "cited_evidence_ids", "reviews"}
                        ),
                    ),
                )
                verdict_ids.append(verdict_id)
                for r in v.reviews:
                    session.add(
                        Review(verdict_id=verdict_id, **r.model_dump(exclude={"id", "verdict_id"}))
                    )
        for c in tree.llm_calls:
            session.add(
                LLMCall(investigation_id=inv_id, **c.model_dump(exclude={"id", "investigation_id"}))
            )
        inv.config = {
            **src.config,
            "imported_from": {
                **to_jsonable(dict(config_note)),
                "investigation_id": src.id,
                "hypothesis_ids": {str(k): v for k, v in hyp_ids.items()},
                "experiment_ids": {str(k): v for k, v in exp_ids.items()},
                "evidence_ids": {str(k): v for k, v in ev_ids.items()},
            },
        }
        session.flush()
        links: list[tuple[LinkKind, Iterable[int]]] = [
            ("hypothesis", hyp_ids.values()),
            ("evidence", ev_ids.values()),
            ("verdict", verdict_ids),
        ]
        for kind, ids in links:
            for record_id in ids:
                append_link(session, inv_id, kind, record_id)
        return inv_id


def import_bundle(
    store: Store,
    path: str | Path,
    *,
    max_unpacked_bytes: int = MAX_UNPACKED_BYTES,
) -> int:
    """Re-create a bundled investigation under new ids; return the new investigation id.

    Every artifact is checked against its sha256 before anything is written
    (:class:`ArtifactIntegrityError` names the file and both hashes); the rows are then inserted
    in one transaction. A bundle that
    unpacks to more than ``max_unpacked_bytes`` is refused. The id maps are kept in the
    investigation's ``config["imported_from"]``.
    """
    path = Path(path)
    with _open_bundle(path, max_unpacked_bytes) as bundle:
        manifest = _manifest(bundle)
        try:
            tree = InvestigationTree.model_validate(manifest["tree"])
        except (KeyError, ValidationError) as exc:
            raise BundleError(
                f"{path}: the investigation in {MANIFEST} is malformed: {exc}"
            ) from None
        contents: dict[str, bytes] = {}
        for artifact in tree.artifacts():
            if artifact.path in contents:
                continue
            store.artifacts.path(artifact.path)
            data = bundle.read(ARTIFACT_PREFIX + artifact.path)
            actual = bytes_sha256(data)
            if actual != artifact.sha256:
                raise ArtifactIntegrityError(
                    f"{path}:{ARTIFACT_PREFIX}{artifact.path}", artifact.sha256, actual
                )
            contents[artifact.path] = data
    for relpath, data in contents.items():
        stored = store.artifacts.put_bytes(data, suffix=Path(relpath).suffix)
        if stored.relpath != relpath:
            raise BundleError(f"{path}: artifact {relpath} does not follow the store's naming")
    note = {
        "bundle": path.name,
        "exported_at": manifest.get("exported_at"),
        "source": manifest.get("source"),
    }
    return import_tree(store, tree, config_note=note)

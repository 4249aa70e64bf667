"""Export an investigation (rows + artifact files) as a zip bundle, and import one under new ids:
:func:`import_bundle` checks the whole bundle, then streams its files into the artifact store and
:func:`import_tree` writes the rows. The manifest carries the head of the source's record chain
(``record_chain``), to check the source with ``rankscope audit ID --expect HEAD``."""

import json
import os
import stat
import tempfile
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from rankscope.experiments_db.artifacts import ArtifactStore
from rankscope.experiments_db.chain import LinkKind, append_link, chain_head
from rankscope.experiments_db.errors import ArtifactError, ArtifactIntegrityError, BundleError
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
MAX_MANIFEST_BYTES = 64 * 1024**2
"""The most ``bundle.json`` may unpack to: it is parsed in memory (artifacts are streamed)."""
_SOURCE_ONLY_CONFIG = frozenset({"lease", "report_files"})
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
    with store._read() as session:
        head = chain_head(session, investigation_id)
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
        "record_chain": None
        if head is None
        else {"head": head.head, "links": head.links, "key_id": head.key_id},
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
    """Read access to a bundle, zipped or unpacked into a folder.

    Every byte read counts against one bound for the whole bundle (``max_bytes``), whatever
    sizes a zip declares; members are read in chunks, so a member is never held whole in memory
    unless the caller asks (:meth:`read`, with a bound of its own). In a folder, symbolic links
    are refused: a bundle holds files, not pointers to the importer's files."""

    def __init__(
        self, path: Path, zf: zipfile.ZipFile | None, max_bytes: int = MAX_UNPACKED_BYTES
    ) -> None:
        self.path = path
        self._zip = zf
        self._left = max_bytes
        self._max = max_bytes

    def _open(self, name: str) -> IO[bytes]:
        if self._zip is not None:
            try:
                info = self._zip.getinfo(name)
            except KeyError:
                raise BundleError(f"bundle {self.path} lacks {name}; it is incomplete") from None
            if stat.S_ISLNK(info.external_attr >> 16):
                raise BundleError(
                    f"bundle {self.path}: {name} is a symbolic link; a bundle holds files only"
                )
            return self._zip.open(info)
        target = self.path
        for part in Path(name).parts:
            target = target / part
            if target.is_symlink():
                raise BundleError(
                    f"bundle {self.path}: {target.relative_to(self.path)} is a symbolic link; "
                    "a bundle holds files only (copy the file in instead of linking it)"
                )
        try:
            fd = os.open(target, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            raise BundleError(f"bundle {self.path} lacks {name}; it is incomplete") from None
        except OSError as err:
            raise BundleError(f"bundle {self.path}: cannot read {name} ({err})") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise BundleError(f"bundle {self.path}: {name} is not a regular file")
        return os.fdopen(fd, "rb")

    def chunks(self, name: str, limit: int | None = None) -> Iterator[bytes]:
        """A member's bytes in chunks of at most 1 MiB; stops with a :class:`BundleError` as soon
        as the bundle passes its bound, or the member passes ``limit``."""
        read = 0
        with self._open(name) as fh:
            while True:
                want = min(_CHUNK, self._left + 1)
                if limit is not None:
                    want = min(want, limit - read + 1)
                chunk = fh.read(want)
                if not chunk:
                    return
                read += len(chunk)
                self._left -= len(chunk)
                if self._left < 0:
                    raise BundleError(
                        f"bundle {self.path} unpacks to more than {self._max} bytes "
                        f"(at {name}); refusing it"
                    )
                if limit is not None and read > limit:
                    raise BundleError(
                        f"bundle {self.path}: {name} is larger than {limit} bytes, the most this "
                        "RankScope reads for it; refusing it"
                    )
                yield chunk

    def read(self, name: str, limit: int) -> bytearray:
        """A member's bytes (at most ``limit`` of them, else a :class:`BundleError`), in one
        buffer that is never copied."""
        buffer = bytearray()
        for chunk in self.chunks(name, limit):
            buffer += chunk
        return buffer


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


def read_manifest(path: str | Path, max_bytes: int = MAX_MANIFEST_BYTES) -> dict[str, Any]:
    """The bundle's ``bundle.json``, checked for format and version."""
    with _open_bundle(Path(path)) as bundle:
        return _manifest(bundle, max_bytes)


def _manifest(bundle: _Bundle, max_bytes: int = MAX_MANIFEST_BYTES) -> dict[str, Any]:
    raw = bundle.read(MANIFEST, max_bytes)
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{bundle.path}: {MANIFEST} is not valid JSON ({exc})") from None
    del raw
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{bundle.path} is not a RankScope investigation bundle")
    if manifest.get("version") != BUNDLE_VERSION:
        raise BundleError(
            f"{bundle.path} has bundle version {manifest.get('version')!r}; this RankScope reads "
            f"version {BUNDLE_VERSION}"
        )
    return manifest


def _duplicates(kind: str, ids: Iterable[int]) -> list[str]:
    counts = Counter(ids)
    repeated = sorted(i for i, n in counts.items() if n > 1)
    return [f"{kind} id {i} appears {counts[i]} times" for i in repeated]


def tree_problems(tree: InvestigationTree, artifacts: ArtifactStore) -> list[str]:
    """What makes a bundled tree impossible to import faithfully: repeated ids, a parent, a
    hypothesis or cited evidence that the bundle does not hold, an artifact whose path is not the
    store's name for its hash. Empty when the tree is consistent."""
    problems: list[str] = []
    hyp_ids = [h.id for h in tree.hypotheses]
    experiments = tree.experiments()
    evidence = [ev for e in experiments for ev in e.evidence]
    verdicts = [(h, v) for h in tree.hypotheses for v in h.verdicts]
    problems += _duplicates("hypothesis", hyp_ids)
    problems += _duplicates("experiment", [e.id for e in experiments])
    problems += _duplicates("evidence", [ev.id for ev in evidence])
    problems += _duplicates("verdict", [v.id for _, v in verdicts])
    problems += _duplicates("review", [r.id for _, v in verdicts for r in v.reviews])
    problems += _duplicates("artifact", [a.id for ev in evidence for a in ev.artifacts])
    problems += _duplicates("LLM call", [c.id for c in tree.llm_calls])
    known_hyps, known_ev = set(hyp_ids), {ev.id for ev in evidence}
    for h in tree.hypotheses:
        if h.parent_id is not None and h.parent_id not in known_hyps:
            problems.append(
                f"hypothesis {h.id} follows hypothesis {h.parent_id}, which the bundle lacks"
            )
    for e in experiments:
        if e.hypothesis_id is not None and e.hypothesis_id not in known_hyps:
            problems.append(
                f"experiment {e.id} tests hypothesis {e.hypothesis_id}, which the bundle lacks"
            )
    for h, v in verdicts:
        missing = sorted(set(v.cited_evidence_ids) - known_ev)
        if missing:
            problems.append(
                f"verdict {v.id} on hypothesis {h.id} cites evidence "
                f"{', '.join(map(str, missing))} that the bundle does not hold"
            )
    for ev in evidence:
        for a in ev.artifacts:
            try:
                artifacts.path(a.path)
            except ArtifactError:
                problems.append(f"artifact {a.id} has the path {a.path!r}, not an artifact path")
                continue
            if a.path != artifacts.relpath_for(a.sha256, Path(a.path).suffix):
                problems.append(
                    f"artifact {a.id}: its path {a.path} is not the store's name for its sha256"
                )
    return problems


def unverified_note(hypothesis_id: int, claimed: str, rederived: str) -> str:
    """The note an imported verdict gets when the bundle's evidence does not give it."""
    return (
        f"UNVERIFIED verdict on hypothesis {hypothesis_id}: the bundle says {claimed!r}, its own "
        f"evidence gives {rederived!r} under the verdict rules"
    )


def import_tree(
    store: Store,
    tree: InvestigationTree,
    *,
    config_note: Mapping[str, Any],
    rederived: Mapping[int, str] | None = None,
) -> int:
    """Re-create an exported investigation under new ids in one transaction; return the new
    investigation id. Artifact files must already be in the store's artifact folder, and the tree
    must be consistent (:func:`tree_problems`).

    Cited evidence ids in verdicts are remapped; ``config_note`` (with the id maps added) is
    stored in the investigation's config under ``"imported_from"``. ``rederived`` maps a bundled
    hypothesis id to the verdict the rules give on the bundle's evidence: each latest verdict
    that differs gets an UNVERIFIED note (:func:`unverified_note`) in the same transaction. The
    investigation and its hypotheses, evidence and verdicts are linked into the new
    investigation's record chain. The source's lease and report digests are not copied (they
    describe the source machine).
    """
    src = tree.investigation
    config = {k: v for k, v in src.config.items() if k not in _SOURCE_ONLY_CONFIG}
    with store._write() as session:
        inv = Investigation(
            **src.model_dump(exclude={"id", "config", "report_path"}),
            config={**config, "imported_from": {}},
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
        notes = [str(n) for n in config.get("notes", []) or []]
        for h in tree.hypotheses:
            latest = h.latest_verdict
            again = (rederived or {}).get(h.id)
            if latest is not None and again is not None and again != latest.status:
                note = unverified_note(hyp_ids[h.id], latest.status, again)
                if note not in notes:
                    notes.append(note)
        inv.config = {
            **config,
            **({"notes": notes} if notes else {}),
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
            ("investigation", [inv_id]),
            ("hypothesis", hyp_ids.values()),
            ("evidence", ev_ids.values()),
            ("verdict", verdict_ids),
        ]
        for kind, ids in links:
            for record_id in ids:
                append_link(session, inv_id, kind, record_id)
        return inv_id


Validate = Callable[[InvestigationTree], list[str]]
"""A check of a bundled tree beyond its shape (the agent's: settings, policy, narrative
citations); returns the problems found."""
Rederive = Callable[[InvestigationTree], Mapping[int, str]]
"""The verdict the rules give for each bundled hypothesis with a verdict (the agent's)."""


def import_bundle(
    store: Store,
    path: str | Path,
    *,
    max_unpacked_bytes: int = MAX_UNPACKED_BYTES,
    max_manifest_bytes: int = MAX_MANIFEST_BYTES,
    validate: Validate | None = None,
    rederive: Rederive | None = None,
) -> int:
    """Re-create a bundled investigation under new ids; return the new investigation id.

    The whole bundle is checked before any row is written: its manifest (at most
    ``max_manifest_bytes``), the tree's shape (:func:`tree_problems`: repeated ids, missing
    parents or cited evidence), ``validate``'s problems (the settings and the policy) — all of
    them named in one :class:`BundleError` — and ``rederive`` (verdicts re-derived from the
    bundle's own evidence). Artifact files are then streamed into the artifact store, each checked
    against its sha256 as it is read (:class:`ArtifactIntegrityError` names the file and both
    hashes); the rows, with an UNVERIFIED note for each verdict the evidence does not give, are
    inserted in one transaction. A bundle that unpacks to more than ``max_unpacked_bytes`` is
    refused as soon as that many bytes were read. When anything fails, the artifact files this
    import added are removed and no row is written. The id maps are kept in the investigation's
    ``config["imported_from"]``.
    """
    path = Path(path)
    added: list[Path] = []
    try:
        with _open_bundle(path, max_unpacked_bytes) as bundle:
            manifest = _manifest(bundle, max_manifest_bytes)
            tree = _tree_of(path, manifest)
            problems = tree_problems(tree, store.artifacts)
            if validate is not None:
                problems += validate(tree)
            if problems:
                raise BundleError(
                    f"{path} is not a consistent investigation bundle; nothing was imported:\n"
                    + "\n".join(f"  - {p}" for p in problems)
                )
            again = dict(rederive(tree)) if rederive is not None else None
            seen: set[str] = set()
            for artifact in tree.artifacts():
                if artifact.path not in seen:
                    seen.add(artifact.path)
                    _import_artifact(store, bundle, path, artifact.path, artifact.sha256, added)
        note = {
            "bundle": path.name,
            "exported_at": manifest.get("exported_at"),
            "source": manifest.get("source"),
            "record_chain": manifest.get("record_chain"),
        }
        return import_tree(store, tree, config_note=note, rederived=again)
    except BaseException:
        for file in added:
            file.unlink(missing_ok=True)
        raise


def _tree_of(path: Path, manifest: Mapping[str, Any]) -> InvestigationTree:
    try:
        return InvestigationTree.model_validate(manifest["tree"])
    except (KeyError, ValidationError) as exc:
        raise BundleError(f"{path}: the investigation in {MANIFEST} is malformed: {exc}") from None


def _import_artifact(
    store: Store, bundle: _Bundle, path: Path, relpath: str, sha256: str, added: list[Path]
) -> None:
    """Stream one artifact member into the artifact store, checking its hash; a file this call
    created is recorded in ``added`` (removed again if it does not match)."""
    chunks = bundle.chunks(ARTIFACT_PREFIX + relpath)
    pending = b""

    def read(n: int) -> bytes:
        nonlocal pending
        while len(pending) < n:
            chunk = next(chunks, b"")
            if not chunk:
                break
            pending += chunk
        out, pending = pending[:n], pending[n:]
        return out

    stored = store.artifacts._put_stream(read, Path(relpath).suffix.lower())
    target = store.artifacts.path(stored.relpath)
    if stored.created:
        added.append(target)
    if stored.sha256 != sha256:
        if stored.created:
            target.unlink(missing_ok=True)
            added.remove(target)
        raise ArtifactIntegrityError(f"{path}:{ARTIFACT_PREFIX}{relpath}", sha256, stored.sha256)

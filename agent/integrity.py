"""The checks that need no re-run: the settings, the record chain (with its signatures and, when
given, the head kept outside the database) and the report files against the digests recorded when
they were written. ``rankscope audit`` runs them with everything else; ``rankscope show`` and the
review workspace run them on every view (:func:`fast_check`) and mark a failing investigation.

Also the agent's half of a bundle import (:func:`import_checked`): the settings and the policy
validated and the verdicts re-derived before the store writes anything, since the store cannot
know the verdict rules. The threat model is in ``docs/threat_model.md``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from pydantic import ValidationError

from rankscope.agent.citations import cited_in_text
from rankscope.agent.settings import settings_of
from rankscope.agent.verdicts import decide_hypothesis
from rankscope.experiments_db.bundle import import_bundle
from rankscope.experiments_db.errors import BundleError, StoreError
from rankscope.experiments_db.records import AuditCheck, InvestigationRecord, InvestigationTree
from rankscope.experiments_db.repository import Store

REPORT_FILES = "report_files"
"""The config key holding the digests of the report files last written."""
_HASH_CACHE: dict[tuple[str, int, int], str] = {}
_HASH_CACHE_SIZE = 512


def settings_problems(investigation: InvestigationRecord) -> list[str]:
    """Why the investigation's stored settings (the policy included) are not valid; empty when
    they are."""
    try:
        settings_of(investigation)
    except ValidationError as err:
        return [
            "the investigation's settings are not valid: "
            + "; ".join(
                f"{'.'.join(str(p) for p in e.get('loc', ())) or 'settings'}: {e.get('msg')}"
                for e in err.errors()
            )
        ]
    return []


# -- bundle import ----------------------------------------------------------------------------


def validate_bundle_tree(tree: InvestigationTree) -> list[str]:
    """What the store cannot check of a bundled tree: the settings and the policy validate, and
    each verdict's narrative cites only evidence the bundle holds."""
    problems = settings_problems(tree.investigation)
    evidence = set(tree.evidence())
    for node in tree.hypotheses:
        for verdict in node.verdicts:
            missing = sorted(set(cited_in_text(verdict.narrative)) - evidence)
            if missing:
                problems.append(
                    f"verdict {verdict.id} on hypothesis {node.id}: its narrative cites evidence "
                    f"{', '.join(map(str, missing))} that the bundle does not hold"
                )
    return problems


def rederive_verdicts(tree: InvestigationTree) -> dict[int, str]:
    """The verdict the rules give, under the bundle's own (validated) policy, for each
    hypothesis of the bundle that has a verdict."""
    policy = settings_of(tree.investigation).policy
    out: dict[int, str] = {}
    for node in tree.hypotheses:
        if node.latest_verdict is None:
            continue
        try:
            out[node.id] = decide_hypothesis(tree, node, policy).status
        except Exception as err:  # a malformed bundle must not surface as a traceback
            raise BundleError(
                f"the verdict on hypothesis {node.id} cannot be re-derived from the bundle's "
                f"evidence ({type(err).__name__}: {err}); nothing was imported"
            ) from None
    return out


def import_checked(store: Store, path: str | Path) -> tuple[int, list[str]]:
    """Import a bundle with the whole-bundle checks and the verdicts re-derived in the same
    transaction: the new id and the UNVERIFIED notes it got."""
    new_id = import_bundle(store, path, validate=validate_bundle_tree, rederive=rederive_verdicts)
    notes = settings_of(store.get_investigation(new_id)).notes
    return new_id, [str(n) for n in notes if str(n).startswith("UNVERIFIED")]


# -- report files -----------------------------------------------------------------------------


def file_digest(path: Path) -> str | None:
    """The sha256 of a file (cached by path, size and modification time), None if it is gone."""
    try:
        st = path.stat()
    except OSError:
        return None
    key = (str(path), st.st_size, st.st_mtime_ns)
    cached = _HASH_CACHE.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return None
    if len(_HASH_CACHE) >= _HASH_CACHE_SIZE:
        _HASH_CACHE.clear()
    _HASH_CACHE[key] = digest.hexdigest()
    return _HASH_CACHE[key]


def record_report(store: Store, investigation_id: int, files: Iterable[Path]) -> bool:
    """Record the sha256 of the report files just written (in the record chain, through the
    investigation's config), for the audit to check them against. A store that cannot be written
    (read-only) keeps the digests of the last report it recorded: False."""
    from sqlalchemy.exc import DBAPIError

    digests: dict[str, str] = {}
    for file in files:
        path = Path(file).resolve()
        digest = file_digest(path)
        if digest is not None:
            digests[str(path)] = digest
    try:
        store.record_report_files(investigation_id, digests)
    except (StoreError, DBAPIError):
        return False
    return True


def anchor_text(store: Store, investigation_id: int) -> str:
    """The line a report carries about the record chain as the report is written (to keep
    outside the database and give to ``rankscope audit ID --expect HEAD``)."""
    head = store.chain_head(investigation_id)
    if head is None:
        return "Record chain: none (recorded before RankScope kept one)."
    signed = f"signed by key {head.key_id}" if head.key_id else "not signed"
    return (
        f"Record chain head {head.head} ({head.links} links, {signed}): check that nothing "
        f"recorded up to this report was changed since with `rankscope audit {investigation_id} "
        f"--expect {head.head}`."
    )


def _report_checks(investigation: InvestigationRecord) -> list[AuditCheck]:
    files = investigation.config.get(REPORT_FILES)
    if not isinstance(files, dict) or not files:
        return []
    checks = []
    for name, recorded in sorted(files.items()):
        path = Path(name)
        actual = file_digest(path)
        subject = (
            f"report file {path.name}"
            if path.parent.name != "figures"
            else (f"report figure {path.name}")
        )
        if actual is None:
            checks.append(
                AuditCheck(
                    subject=subject,
                    check="report digest",
                    ok=False,
                    detail=f"{path} is gone (recorded sha256 {str(recorded)[:12]}…); write the "
                    "report again with `rankscope report ID`",
                )
            )
        elif actual != recorded:
            checks.append(
                AuditCheck(
                    subject=subject,
                    check="report digest",
                    ok=False,
                    detail=f"{path} changed after it was written: recorded sha256 "
                    f"{str(recorded)[:12]}…, now {actual[:12]}…",
                )
            )
        else:
            checks.append(
                AuditCheck(
                    subject=subject, check="report digest", ok=True, detail=actual[:12] + "…"
                )
            )
    return checks


# -- the checks -------------------------------------------------------------------------------


def integrity_checks(
    store: Store, investigation_id: int, *, expect: str | None = None, signed: bool = False
) -> list[AuditCheck]:
    """The checks that need no re-run (see the module docstring), each as an :class:`AuditCheck`;
    ``expect`` and ``signed`` as for :func:`chain_checks`."""
    investigation = store.get_investigation(investigation_id)
    checks = [
        AuditCheck(subject="settings", check="settings and policy", ok=False, detail=problem)
        for problem in settings_problems(investigation)
    ]
    checks += chain_checks(store, investigation_id, expect=expect, signed=signed)
    checks += _report_checks(investigation)
    return checks


def chain_checks(
    store: Store, investigation_id: int, *, expect: str | None = None, signed: bool = False
) -> list[AuditCheck]:
    """The record chain against the records (with ``expect``, also against that head kept
    outside the database; with ``signed``, every link must be signed by a trusted key)."""
    check = store.check_records(investigation_id, expect=expect, signed=signed)
    out = [
        AuditCheck(subject=p.subject, check="record chain", ok=False, detail=p.problem)
        for p in check.problems
    ]
    if check.links == 0:
        if check.version == 0 and not check.problems:
            out.append(
                AuditCheck(
                    subject="records",
                    check="record chain",
                    ok=True,
                    detail="no record chain (recorded before RankScope kept one): changes "
                    "cannot be detected",
                )
            )
        return out
    if not check.problems:
        out.append(
            AuditCheck(
                subject="records",
                check="record chain",
                ok=True,
                detail=f"{check.links} links, every record as recorded; head {check.head}",
            )
        )
    if check.anchor:
        out.append(
            AuditCheck(subject="records", check="expected head", ok=True, detail=check.anchor)
        )
    signers = ", ".join(
        f"key {k} ({n} links{', not trusted here: not checked' if k in check.unverifiable else ''})"
        for k, n in sorted(check.signed_by.items())
    )
    out.append(
        AuditCheck(
            subject="records",
            check="signatures",
            ok=True,
            detail=(f"signed by {signers}" if signers else "not signed")
            + (f"; {check.unsigned} links unsigned" if signers and check.unsigned else ""),
        )
    )
    return out


def fast_check(store: Store, investigation_id: int) -> list[str]:
    """The problems of the checks that need no re-run (empty: none found), one line each, for
    ``rankscope show`` and the review workspace to mark a failing investigation with."""
    return [
        f"{c.subject}: {c.detail}" for c in integrity_checks(store, investigation_id) if not c.ok
    ]


__all__ = [
    "anchor_text",
    "chain_checks",
    "fast_check",
    "file_digest",
    "import_checked",
    "integrity_checks",
    "record_report",
    "rederive_verdicts",
    "settings_problems",
    "validate_bundle_tree",
]

"""The record chain of an investigation: tamper evidence for what the store wrote.

Each time the store writes the investigation row (its question, model, data spec and settings
with the statistical policy: at creation and whenever they change, the lease excepted), a
hypothesis (or changes its criterion), an experiment's evidence (with the experiment's call and its
artifacts' hashes) or a verdict, it appends a ``record_link`` in the same transaction: the sha256
of the record's content as read back from the database, and
``chain = sha256(previous chain | kind | id | digest)``; with the user's signing key
(:mod:`.signing`) the link also carries an ed25519 signature of its chain value.

:func:`check_chain` reads the records again and reports every record whose content no longer
matches its latest link (a policy loosened or a criterion changed after the fact, an artifact
replaced together with its hash), every linked record that is gone (a deleted verdict), every
record of the investigation without a link, evidence or a verdict linked twice (each is written
once), any break in the chain itself, a chain that is missing although the investigation was
recorded with one (``investigation.chain_version``), signatures that do not verify and links left
unsigned after signed ones. The chain's head (:func:`chain_head`) is printed in the report, the
bundle and ``rankscope show``: kept outside the database it anchors the chain, and
``check_chain(..., expect=HEAD)`` reports a chain rewritten since. What this does and does not
detect is written down in ``docs/threat_model.md``.
"""

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import func, insert, select

from rankscope.experiments_db import signing
from rankscope.experiments_db.models import (
    CRITERION_COLUMNS,
    Artifact,
    Evidence,
    Experiment,
    Hypothesis,
    Investigation,
    RecordLink,
    Verdict,
)

LinkKind = Literal["investigation", "hypothesis", "evidence", "verdict"]
LINK_KINDS: tuple[LinkKind, ...] = ("investigation", "hypothesis", "evidence", "verdict")
_INVESTIGATION_FIELDS = (
    "question",
    "model_id",
    "data_spec",
    "planner",
    "llm_model",
    "budget",
    "config",
)
_UNATTESTED_CONFIG = frozenset({"lease"})
"""Config keys outside the chain: the lease's heartbeat changes every minute of a run."""
_WRITTEN_ONCE = frozenset({"evidence", "verdict"})
MIN_EXPECT = 16
"""The fewest hex digits of a head that ``--expect`` accepts."""
_HYPOTHESIS_FIELDS = ("investigation_id", "text", "parent_id", "components", *CRITERION_COLUMNS)
_VERDICT_FIELDS = (
    "hypothesis_id",
    "status",
    "criterion_result",
    "cited_evidence_ids",
    "narrative",
    "decided_by",
)


@dataclass(frozen=True)
class ChainProblem:
    """One thing :func:`verify_chain` found: ``subject`` (``verdict 3``) and what is wrong."""

    subject: str
    problem: str


def _digest(content: Any) -> str:
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _chained(previous: str, kind: str, record_id: int, digest: str) -> str:
    return hashlib.sha256(f"{previous}|{kind}|{record_id}|{digest}".encode()).hexdigest()


def record_content(conn: Any, kind: str, record_id: int) -> dict[str, Any] | None:
    """The content of a record that its link attests, read through ``conn`` (a connection or
    session); ``None`` when the record does not exist."""
    return record_contents(conn, kind, [record_id]).get(record_id)


_BATCH = 500
"""Ids per ``IN (...)`` of :func:`record_contents` (well below any driver's parameter limit)."""


def record_contents(conn: Any, kind: str, record_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """:func:`record_content` of many records of one kind, a few queries in all (the records
    that do not exist are absent)."""
    ids = sorted(set(record_ids))
    out: dict[int, dict[str, Any]] = {}
    for i in range(0, len(ids), _BATCH):
        out.update(_contents(conn, kind, ids[i : i + _BATCH]))
    return out


def _contents(conn: Any, kind: str, ids: list[int]) -> dict[int, dict[str, Any]]:
    if kind == "investigation":
        inv = Investigation.__table__
        rows = conn.execute(
            select(inv.c.id, *(inv.c[f] for f in _INVESTIGATION_FIELDS)).where(inv.c.id.in_(ids))
        ).all()
        out = {}
        for row in rows:
            content = dict(row._mapping)
            del content["id"]
            config = content["config"] if isinstance(content["config"], dict) else {}
            content["config"] = {k: v for k, v in config.items() if k not in _UNATTESTED_CONFIG}
            out[int(row.id)] = content
        return out
    if kind == "hypothesis":
        hyp = Hypothesis.__table__
        rows = conn.execute(
            select(hyp.c.id, *(hyp.c[f] for f in _HYPOTHESIS_FIELDS), hyp.c.exploratory).where(
                hyp.c.id.in_(ids)
            )
        ).all()
        out = {}
        for row in rows:
            content = dict(row._mapping)
            del content["id"]
            # attested only when set, so that the links of hypotheses recorded before migration
            # 0005 (all confirmatory) keep their digests
            if content.pop("exploratory"):
                content["exploratory"] = True
            out[int(row.id)] = content
        return out
    if kind == "evidence":
        ev, exp, art = Evidence.__table__, Experiment.__table__, Artifact.__table__
        rows = conn.execute(
            select(
                ev.c.id,
                ev.c.experiment_id,
                ev.c.metrics,
                ev.c.summary,
                ev.c.tables,
                ev.c.approximate,
                exp.c.investigation_id,
                exp.c.hypothesis_id,
                exp.c.tool,
                exp.c.tool_version,
                exp.c.args,
                exp.c.seed,
            )
            .join(exp, exp.c.id == ev.c.experiment_id)
            .where(ev.c.id.in_(ids))
        ).all()
        artifacts: dict[int, list[list[Any]]] = {}
        for a in conn.execute(
            select(art.c.evidence_id, art.c.sha256, art.c.path, art.c.size, art.c.media_type)
            .where(art.c.evidence_id.in_(ids))
            .order_by(art.c.id)
        ).all():
            artifacts.setdefault(int(a.evidence_id), []).append(list(a)[1:])
        out = {}
        for row in rows:
            content = dict(row._mapping)
            del content["id"]
            out[int(row.id)] = {**content, "artifacts": artifacts.get(int(row.id), [])}
        return out
    if kind == "verdict":
        ver = Verdict.__table__
        rows = conn.execute(
            select(ver.c.id, *(ver.c[f] for f in _VERDICT_FIELDS)).where(ver.c.id.in_(ids))
        ).all()
        out = {}
        for row in rows:
            content = dict(row._mapping)
            del content["id"]
            out[int(row.id)] = content
        return out
    raise ValueError(f"unknown record kind {kind!r}; known: {', '.join(LINK_KINDS)}")


def append_link(conn: Any, investigation_id: int, kind: LinkKind, record_id: int) -> None:
    """Append the link of a record just written, inside the writer's transaction (signed when
    the user has a signing key). On PostgreSQL the investigation row is locked first (``FOR NO
    KEY UPDATE``, which inserts of its hypotheses and experiments do not wait for), so that two
    writers never take the same position in the chain."""
    inv, link = Investigation.__table__, RecordLink.__table__
    conn.execute(
        select(inv.c.id).where(inv.c.id == investigation_id).with_for_update(key_share=True)
    )
    last = conn.execute(
        select(link.c.seq, link.c.chain)
        .where(link.c.investigation_id == investigation_id)
        .order_by(link.c.seq.desc())
        .limit(1)
    ).first()
    content = record_content(conn, kind, record_id)
    digest = _digest(content)
    previous = "" if last is None else str(last.chain)
    seq = 0 if last is None else int(last.seq) + 1
    chain = _chained(previous, kind, record_id, digest)
    signer = signing.current_signer()
    conn.execute(
        insert(link).values(
            investigation_id=investigation_id,
            seq=seq,
            kind=kind,
            record_id=record_id,
            digest=digest,
            chain=chain,
            key_id=None if signer is None else signer.key_id,
            signature=None if signer is None else signer.sign(investigation_id, seq, chain),
        )
    )


def relink_investigation(conn: Any, investigation_id: int) -> None:
    """After a write of the investigation row, link it again if what the chain attests of it
    changed (not for investigations recorded before the chain covered the row)."""
    inv, link = Investigation.__table__, RecordLink.__table__
    version = conn.execute(
        select(inv.c.chain_version).where(inv.c.id == investigation_id)
    ).scalar_one_or_none()
    if version is None or version < 2:
        return
    latest = conn.execute(
        select(link.c.digest)
        .where(link.c.investigation_id == investigation_id)
        .where(link.c.kind == "investigation")
        .order_by(link.c.seq.desc())
        .limit(1)
    ).scalar_one_or_none()
    if latest != _digest(record_content(conn, "investigation", investigation_id)):
        append_link(conn, investigation_id, "investigation", investigation_id)


@dataclass(frozen=True)
class ChainHead:
    """Where an investigation's record chain stands: its number of links, the last link's chain
    value (the head, to keep outside the database) and the key that signed it."""

    links: int
    head: str
    key_id: str | None

    def text(self) -> str:
        signed = f"signed by key {self.key_id}" if self.key_id else "not signed"
        return f"record chain head {self.head} ({self.links} links, {signed})"


def chain_head(conn: Any, investigation_id: int) -> ChainHead | None:
    """The head of the investigation's chain, or None when it has no links."""
    link = RecordLink.__table__
    last = conn.execute(
        select(link.c.seq, link.c.chain, link.c.key_id, link.c.signature)
        .where(link.c.investigation_id == investigation_id)
        .order_by(link.c.seq.desc())
        .limit(1)
    ).first()
    if last is None:
        return None
    count = conn.execute(
        select(func.count()).select_from(link).where(link.c.investigation_id == investigation_id)
    ).scalar_one()
    return ChainHead(int(count), str(last.chain), last.key_id if last.signature else None)


def _current_ids(conn: Any, investigation_id: int, version: int) -> dict[str, set[int]]:
    hyp, exp, ev, ver = (
        Hypothesis.__table__,
        Experiment.__table__,
        Evidence.__table__,
        Verdict.__table__,
    )
    hyps = set(
        conn.execute(select(hyp.c.id).where(hyp.c.investigation_id == investigation_id))
        .scalars()
        .all()
    )
    evidence = set(
        conn.execute(
            select(ev.c.id)
            .join(exp, exp.c.id == ev.c.experiment_id)
            .where(exp.c.investigation_id == investigation_id)
        )
        .scalars()
        .all()
    )
    verdicts = set(
        conn.execute(
            select(ver.c.id)
            .join(hyp, hyp.c.id == ver.c.hypothesis_id)
            .where(hyp.c.investigation_id == investigation_id)
        )
        .scalars()
        .all()
    )
    ids: dict[str, set[int]] = {"hypothesis": hyps, "evidence": evidence, "verdict": verdicts}
    if version >= 2:
        ids["investigation"] = {investigation_id}
    return ids


@dataclass
class ChainCheck:
    """What :func:`check_chain` found."""

    version: int
    """The chain the investigation was recorded with (``investigation.chain_version``)."""
    links: int
    head: str | None
    problems: list[ChainProblem] = field(default_factory=list)
    signed_by: dict[str, int] = field(default_factory=dict)
    """Links per signing key id."""
    unverifiable: set[str] = field(default_factory=set)
    """Key ids whose public key is not trusted here (their signatures were not checked)."""
    unsigned: int = 0
    anchor: str = ""
    """With ``expect``: where the expected head is in the chain (empty when it is not)."""


def check_chain(
    conn: Any, investigation_id: int, *, expect: str | None = None, signed: bool = False
) -> ChainCheck:
    """Check an investigation's records against its chain (see the module docstring); with
    ``expect`` (a head kept outside the database, at least :data:`MIN_EXPECT` hex digits), also
    that the chain still passes through it; with ``signed``, that every link is signed by a
    trusted key (someone who can write to the database could otherwise strip every signature
    and recompute the chain)."""
    inv, link = Investigation.__table__, RecordLink.__table__
    version = int(
        conn.execute(
            select(inv.c.chain_version).where(inv.c.id == investigation_id)
        ).scalar_one_or_none()
        or 0
    )
    links = conn.execute(
        select(
            link.c.seq,
            link.c.kind,
            link.c.record_id,
            link.c.digest,
            link.c.chain,
            link.c.key_id,
            link.c.signature,
        )
        .where(link.c.investigation_id == investigation_id)
        .order_by(link.c.seq)
    ).all()
    check = ChainCheck(version, len(links), str(links[-1].chain) if links else None)
    problems = check.problems
    if not links:
        if version >= 1:
            problems.append(
                ChainProblem(
                    "records",
                    f"the record chain is missing: investigation {investigation_id} was recorded "
                    "with one, and its links were deleted",
                )
            )
        if expect:
            problems.append(ChainProblem("records", f"the expected head {expect} is not in it"))
        return check
    keys = signing.trusted_keys()
    previous = ""
    latest: dict[tuple[str, int], str] = {}
    signed_before: int | None = None
    for expected_seq, row in enumerate(links):
        subject = f"{row.kind} {row.record_id}"
        if row.seq != expected_seq:
            problems.append(
                ChainProblem(f"link {expected_seq}", f"missing: the chain jumps to link {row.seq}")
            )
        if _chained(previous, row.kind, row.record_id, row.digest) != row.chain:
            problems.append(
                ChainProblem(subject, f"link {row.seq} does not follow from the links before it")
            )
        if (row.kind, row.record_id) in latest and row.kind in _WRITTEN_ONCE:
            problems.append(
                ChainProblem(subject, f"linked again at link {row.seq}: it is written only once")
            )
        _check_signature(check, investigation_id, row, keys, signed_before, signed)
        if row.signature:
            signed_before = int(row.seq)
        previous = row.chain
        latest[(row.kind, row.record_id)] = row.digest
    contents = {
        kind: record_contents(conn, kind, [i for k, i in latest if k == kind])
        for kind in {k for k, _ in latest}
    }
    for (kind, record_id), digest in latest.items():
        content = contents[kind].get(record_id)
        if content is None:
            problems.append(ChainProblem(f"{kind} {record_id}", "recorded, then deleted"))
        elif _digest(content) != digest:
            problems.append(ChainProblem(f"{kind} {record_id}", "changed after it was recorded"))
    for kind, ids in _current_ids(conn, investigation_id, version).items():
        for record_id in sorted(ids):
            if (kind, record_id) not in latest:
                problems.append(
                    ChainProblem(f"{kind} {record_id}", "not in the record chain (added outside)")
                )
    if expect:
        _check_anchor(check, links, expect)
    return check


def _check_signature(
    check: ChainCheck,
    investigation_id: int,
    row: Any,
    keys: dict[str, Any],
    signed_before: int | None,
    required: bool,
) -> None:
    subject = f"link {row.seq} ({row.kind} {row.record_id})"
    if not row.signature:
        check.unsigned += 1
        if required:
            check.problems.append(ChainProblem(subject, "not signed (a signed chain is required)"))
        elif signed_before is not None:
            check.problems.append(
                ChainProblem(
                    subject,
                    f"not signed, although link {signed_before} before it is: signatures were "
                    "removed or the chain was rewritten by someone without the key",
                )
            )
        return
    key_id = str(row.key_id or "")
    check.signed_by[key_id] = check.signed_by.get(key_id, 0) + 1
    public = keys.get(key_id)
    if public is None:
        check.unverifiable.add(key_id)
        if required:
            check.problems.append(
                ChainProblem(subject, f"signed by key {key_id}, which is not a trusted key here")
            )
    elif not signing.verifies(public, row.signature, investigation_id, int(row.seq), row.chain):
        check.problems.append(
            ChainProblem(
                subject,
                f"its signature by key {key_id} does not verify: the chain was changed after "
                "it was signed",
            )
        )


def _check_anchor(check: ChainCheck, links: list[Any], expect: str) -> None:
    wanted = expect.strip().lower()
    if len(wanted) < MIN_EXPECT or any(c not in "0123456789abcdef" for c in wanted):
        check.problems.append(
            ChainProblem(
                "records",
                f"the expected head {expect!r} is not a head: give at least {MIN_EXPECT} hex "
                "digits as printed by the report, the bundle or `rankscope show`",
            )
        )
        return
    at = next((i for i, row in enumerate(links) if str(row.chain).startswith(wanted)), None)
    if at is None:
        check.problems.append(
            ChainProblem(
                "records",
                f"the expected head {wanted[:16]}… is not in the record chain: the records were "
                "rewritten after it was taken (or it belongs to another investigation)",
            )
        )
        return
    before = {(r.kind, r.record_id) for r in links[: at + 1]}
    again = sorted(
        {f"{r.kind} {r.record_id}" for r in links[at + 1 :] if (r.kind, r.record_id) in before}
    )
    after = len(links) - at - 1
    check.anchor = f"the expected head is link {at} of {len(links)}" + (
        f"; {after} link(s) recorded after it" + (f" (again: {', '.join(again)})" if again else "")
        if after
        else ""
    )


def verify_chain(conn: Any, investigation_id: int) -> tuple[int, list[ChainProblem]]:
    """Check an investigation's records against its chain: (number of links, problems)."""
    check = check_chain(conn, investigation_id)
    return check.links, check.problems

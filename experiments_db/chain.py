"""The record chain of an investigation: tamper evidence for what the store wrote.

Each time the store writes a hypothesis (or changes its criterion), an experiment's evidence (with
the experiment's call and its artifacts' hashes) or a verdict, it appends a ``record_link`` in the
same transaction: the sha256 of the record's content as read back from the database, and
``chain = sha256(previous chain | kind | id | digest)``. :func:`verify_chain` reads the records
again and reports every record whose content no longer matches its latest link (a criterion
changed after the fact, an artifact replaced together with its hash), every linked record that is
gone (a deleted verdict), every record of the investigation without a link, and any break in the
chain itself. Investigations recorded before the chain existed have no links; that is reported,
not treated as tampering.
"""

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import insert, select

from rankscope.experiments_db.models import (
    CRITERION_COLUMNS,
    Artifact,
    Evidence,
    Experiment,
    Hypothesis,
    RecordLink,
    Verdict,
)

LinkKind = Literal["hypothesis", "evidence", "verdict"]
LINK_KINDS: tuple[LinkKind, ...] = ("hypothesis", "evidence", "verdict")
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
    if kind == "hypothesis":
        hyp = Hypothesis.__table__
        row = conn.execute(
            select(*(hyp.c[f] for f in _HYPOTHESIS_FIELDS), hyp.c.exploratory).where(
                hyp.c.id == record_id
            )
        ).first()
        if row is None:
            return None
        content = dict(row._mapping)
        # attested only when set, so that the links of hypotheses recorded before migration 0005
        # (all confirmatory) keep their digests
        if not content.pop("exploratory"):
            return content
        return {**content, "exploratory": True}
    if kind == "evidence":
        ev, exp, art = Evidence.__table__, Experiment.__table__, Artifact.__table__
        row = conn.execute(
            select(
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
            .where(ev.c.id == record_id)
        ).first()
        if row is None:
            return None
        artifacts = conn.execute(
            select(art.c.sha256, art.c.path, art.c.size, art.c.media_type)
            .where(art.c.evidence_id == record_id)
            .order_by(art.c.id)
        ).all()
        return {**dict(row._mapping), "artifacts": [list(a) for a in artifacts]}
    if kind == "verdict":
        ver = Verdict.__table__
        row = conn.execute(
            select(*(ver.c[f] for f in _VERDICT_FIELDS)).where(ver.c.id == record_id)
        ).first()
        return None if row is None else dict(row._mapping)
    raise ValueError(f"unknown record kind {kind!r}; known: {', '.join(LINK_KINDS)}")


def append_link(conn: Any, investigation_id: int, kind: LinkKind, record_id: int) -> None:
    """Append the link of a record just written, inside the writer's transaction."""
    link = RecordLink.__table__
    last = conn.execute(
        select(link.c.seq, link.c.chain)
        .where(link.c.investigation_id == investigation_id)
        .order_by(link.c.seq.desc())
        .limit(1)
    ).first()
    content = record_content(conn, kind, record_id)
    digest = _digest(content)
    previous = "" if last is None else str(last.chain)
    conn.execute(
        insert(link).values(
            investigation_id=investigation_id,
            seq=0 if last is None else int(last.seq) + 1,
            kind=kind,
            record_id=record_id,
            digest=digest,
            chain=_chained(previous, kind, record_id, digest),
        )
    )


def _current_ids(conn: Any, investigation_id: int) -> dict[str, set[int]]:
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
    return {"hypothesis": hyps, "evidence": evidence, "verdict": verdicts}


def verify_chain(conn: Any, investigation_id: int) -> tuple[int, list[ChainProblem]]:
    """Check an investigation's records against its chain: (number of links, problems)."""
    link = RecordLink.__table__
    links = conn.execute(
        select(link.c.seq, link.c.kind, link.c.record_id, link.c.digest, link.c.chain)
        .where(link.c.investigation_id == investigation_id)
        .order_by(link.c.seq)
    ).all()
    problems: list[ChainProblem] = []
    if not links:
        return 0, problems
    previous = ""
    latest: dict[tuple[str, int], str] = {}
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
        previous = row.chain
        latest[(row.kind, row.record_id)] = row.digest
    for (kind, record_id), digest in latest.items():
        content = record_content(conn, kind, record_id)
        if content is None:
            problems.append(ChainProblem(f"{kind} {record_id}", "recorded, then deleted"))
        elif _digest(content) != digest:
            problems.append(ChainProblem(f"{kind} {record_id}", "changed after it was recorded"))
    for kind, ids in _current_ids(conn, investigation_id).items():
        for record_id in sorted(ids):
            if (kind, record_id) not in latest:
                problems.append(
                    ChainProblem(f"{kind} {record_id}", "not in the record chain (added outside)")
                )
    return len(links), problems

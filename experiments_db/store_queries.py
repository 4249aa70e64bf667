"""Reads of what an investigation recorded: hypotheses, experiments, evidence with its artifacts,
verdicts with their reviews, the tree of one investigation and the subtree of one hypothesis.

The functions that take a session are the queries; :class:`QueryStore` runs them in short read
sessions. Each read loads its rows in a fixed number of queries, one per table, whatever the
number of records.
"""

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, select
from sqlalchemy.engine import RowMapping
from sqlmodel import Session, col

from rankscope.experiments_db.errors import UnknownEvidenceError
from rankscope.experiments_db.models import (
    EXPERIMENT_STATUSES,
    Artifact,
    Evidence,
    Experiment,
    Hypothesis,
    Investigation,
    LLMCall,
    Review,
    Verdict,
)
from rankscope.experiments_db.records import (
    ArtifactRecord,
    Criterion,
    EvidenceRecord,
    ExperimentNode,
    ExperimentRecord,
    HypothesisNode,
    HypothesisRecord,
    InvestigationRecord,
    InvestigationTree,
    LLMCallRecord,
    ReviewRecord,
    VerdictRecord,
)
from rankscope.experiments_db.store_core import StoreCore, choice, get_row, records


def hypothesis_record(row: Mapping[str, Any] | RowMapping) -> HypothesisRecord:
    """A ``hypothesis`` row as a record, its criterion columns gathered into a :class:`Criterion`."""
    data = dict(row)
    data["criterion"] = Criterion(**{c: data.pop(c) for c in Criterion.model_fields})
    return HypothesisRecord.model_validate(data)


def evidence_records(session: Session, where: ColumnElement[bool]) -> list[EvidenceRecord]:
    """The evidence rows matching ``where``, in id order, each with its artifacts."""
    ev, art = Evidence.__table__, Artifact.__table__
    evidence = [dict(r) for r in session.execute(select(ev).where(where)).mappings()]
    by_evidence: dict[int, list[ArtifactRecord]] = defaultdict(list)
    if evidence:
        arts = session.execute(
            select(art)
            .where(art.c.evidence_id.in_(select(ev.c.id).where(where)))
            .order_by(art.c.id)
        ).mappings()
        for a in arts:
            by_evidence[a["evidence_id"]].append(ArtifactRecord.model_validate(dict(a)))
    return [
        EvidenceRecord.model_validate({**e, "artifacts": by_evidence.get(e["id"], [])})
        for e in sorted(evidence, key=lambda e: e["id"])
    ]


def verdict_records(session: Session, where: ColumnElement[bool]) -> list[VerdictRecord]:
    """The verdict rows matching ``where``, in id order, each with its reviews."""
    ver, rev = Verdict.__table__, Review.__table__
    verdicts = [dict(r) for r in session.execute(select(ver).where(where)).mappings()]
    reviews: dict[int, list[ReviewRecord]] = defaultdict(list)
    if verdicts:
        stmt = select(rev).where(rev.c.verdict_id.in_(select(ver.c.id).where(where)))
        for r in session.execute(stmt.order_by(rev.c.id)).mappings():
            reviews[r["verdict_id"]].append(ReviewRecord.model_validate(dict(r)))
    return [
        VerdictRecord.model_validate({**v, "reviews": reviews.get(v["id"], [])})
        for v in sorted(verdicts, key=lambda v: v["id"])
    ]


def missing_evidence_ids(
    session: Session, ids: Sequence[int], investigation_id: int | None
) -> list[int]:
    """The ids among ``ids`` that are not stored evidence (of that investigation, if given)."""
    if not ids:
        return []
    stmt = select(col(Evidence.id)).where(col(Evidence.id).in_(set(ids)))
    if investigation_id is not None:
        stmt = stmt.join(Experiment, col(Experiment.id) == col(Evidence.experiment_id)).where(
            col(Experiment.investigation_id) == investigation_id
        )
    found = set(session.execute(stmt).scalars())
    return sorted(set(ids) - found)


def _experiment_nodes(
    experiments: Iterable[Mapping[str, Any]], evidence: Iterable[EvidenceRecord]
) -> list[ExperimentNode]:
    """Experiment rows as nodes, each holding its evidence."""
    by_experiment: dict[int, list[EvidenceRecord]] = defaultdict(list)
    for ev in evidence:
        by_experiment[ev.experiment_id].append(ev)
    return [
        ExperimentNode.model_validate({**e, "evidence": by_experiment.get(e["id"], [])})
        for e in experiments
    ]


def _hypothesis_node(
    row: Mapping[str, Any] | RowMapping,
    experiments: list[ExperimentNode],
    verdicts: list[VerdictRecord],
) -> HypothesisNode:
    record = hypothesis_record(row)
    return HypothesisNode.model_validate(
        {
            **record.model_dump(),
            "criterion": record.criterion,
            "experiments": experiments,
            "verdicts": verdicts,
        }
    )


class QueryStore(StoreCore):
    """Reads of hypotheses, experiments, evidence, verdicts and artifacts."""

    def get_hypothesis(self, hypothesis_id: int) -> HypothesisRecord:
        with self._read() as session:
            row = get_row(session, Hypothesis, hypothesis_id)
            return hypothesis_record(row.model_dump())

    def list_hypotheses(self, investigation_id: int) -> list[HypothesisRecord]:
        table = Hypothesis.__table__
        with self._read() as session:
            rows = session.execute(
                select(table)
                .where(table.c.investigation_id == investigation_id)
                .order_by(table.c.id)
            ).mappings()
            return [hypothesis_record(r) for r in rows]

    def get_experiment(self, experiment_id: int) -> ExperimentRecord:
        with self._read() as session:
            return ExperimentRecord.model_validate(get_row(session, Experiment, experiment_id))

    def list_experiments(
        self,
        investigation_id: int,
        *,
        status: str | None = None,
        hypothesis_id: int | None = None,
    ) -> list[ExperimentRecord]:
        table = Experiment.__table__
        stmt = select(table).where(table.c.investigation_id == investigation_id)
        if status is not None:
            stmt = stmt.where(table.c.status == choice(status, EXPERIMENT_STATUSES, "status"))
        if hypothesis_id is not None:
            stmt = stmt.where(table.c.hypothesis_id == hypothesis_id)
        with self._read() as session:
            return records(session, stmt.order_by(table.c.id), ExperimentRecord)

    def get_evidence(self, evidence_ids: Iterable[int]) -> list[EvidenceRecord]:
        """Evidence with its artifacts, in the order asked; :class:`UnknownEvidenceError` if any
        id is not stored."""
        ids = [int(i) for i in evidence_ids]
        with self._read() as session:
            found = {e.id: e for e in evidence_records(session, col(Evidence.id).in_(ids))}
        missing = sorted(set(ids) - found.keys())
        if missing:
            raise UnknownEvidenceError(
                f"no stored evidence with id {', '.join(map(str, missing))}", missing
            )
        return [found[i] for i in ids]

    def missing_evidence(
        self, evidence_ids: Iterable[int], *, investigation_id: int | None = None
    ) -> list[int]:
        """The ids among ``evidence_ids`` that are not stored (in that investigation, if given)."""
        with self._read() as session:
            return missing_evidence_ids(session, [int(i) for i in evidence_ids], investigation_id)

    def evidence_exists(
        self, evidence_ids: Iterable[int], *, investigation_id: int | None = None
    ) -> bool:
        """Whether every id is stored evidence (of that investigation, if given)."""
        return not self.missing_evidence(evidence_ids, investigation_id=investigation_id)

    def verdicts(self, hypothesis_id: int) -> list[VerdictRecord]:
        """The verdicts on a hypothesis, oldest first, with their reviews."""
        with self._read() as session:
            return verdict_records(session, col(Verdict.hypothesis_id) == hypothesis_id)

    def investigation_tree(
        self, investigation_id: int, *, include_llm_calls: bool = True
    ) -> InvestigationTree:
        """Everything about one investigation: hypotheses → experiments → evidence + artifacts,
        hypotheses → verdicts → reviews, and (optionally) the LLM calls."""
        exp_t, hyp_t, llm_t = Experiment.__table__, Hypothesis.__table__, LLMCall.__table__
        with self._read() as session:
            investigation = InvestigationRecord.model_validate(
                get_row(session, Investigation, investigation_id)
            )
            hypotheses = [
                dict(r)
                for r in session.execute(
                    select(hyp_t)
                    .where(hyp_t.c.investigation_id == investigation_id)
                    .order_by(hyp_t.c.id)
                ).mappings()
            ]
            experiments = [
                dict(r)
                for r in session.execute(
                    select(exp_t)
                    .where(exp_t.c.investigation_id == investigation_id)
                    .order_by(exp_t.c.id)
                ).mappings()
            ]
            evidence = evidence_records(
                session,
                col(Evidence.experiment_id).in_(
                    select(col(Experiment.id)).where(
                        col(Experiment.investigation_id) == investigation_id
                    )
                ),
            )
            verdicts = verdict_records(
                session,
                col(Verdict.hypothesis_id).in_(
                    select(col(Hypothesis.id)).where(
                        col(Hypothesis.investigation_id) == investigation_id
                    )
                ),
            )
            llm_calls = (
                records(
                    session,
                    select(llm_t)
                    .where(llm_t.c.investigation_id == investigation_id)
                    .order_by(llm_t.c.id),
                    LLMCallRecord,
                )
                if include_llm_calls
                else []
            )
        verdicts_by_hyp: dict[int, list[VerdictRecord]] = defaultdict(list)
        for v in verdicts:
            verdicts_by_hyp[v.hypothesis_id].append(v)
        exps_by_hyp: dict[int | None, list[ExperimentNode]] = defaultdict(list)
        for node in _experiment_nodes(experiments, evidence):
            exps_by_hyp[node.hypothesis_id].append(node)
        return InvestigationTree(
            investigation=investigation,
            hypotheses=[
                _hypothesis_node(h, exps_by_hyp.get(h["id"], []), verdicts_by_hyp.get(h["id"], []))
                for h in hypotheses
            ],
            unlinked_experiments=exps_by_hyp.get(None, []),
            llm_calls=llm_calls,
        )

    def hypothesis_node(self, hypothesis_id: int) -> HypothesisNode:
        """One hypothesis with its experiments (their evidence and artifacts) and its verdicts
        (their reviews): the subtree of :meth:`investigation_tree` for that hypothesis, read in
        at most six queries whatever the investigation's size. :class:`NotFoundError` when the
        hypothesis does not exist."""
        exp_t = Experiment.__table__
        with self._read() as session:
            row = get_row(session, Hypothesis, hypothesis_id).model_dump()
            experiments = [
                dict(r)
                for r in session.execute(
                    select(exp_t).where(exp_t.c.hypothesis_id == hypothesis_id).order_by(exp_t.c.id)
                ).mappings()
            ]
            evidence = (
                evidence_records(
                    session,
                    col(Evidence.experiment_id).in_(
                        select(col(Experiment.id)).where(
                            col(Experiment.hypothesis_id) == hypothesis_id
                        )
                    ),
                )
                if experiments
                else []
            )
            verdicts = verdict_records(session, col(Verdict.hypothesis_id) == hypothesis_id)
        return _hypothesis_node(row, _experiment_nodes(experiments, evidence), verdicts)

    def get_artifact(self, artifact_id: int) -> ArtifactRecord:
        """One artifact row (:class:`NotFoundError` if absent)."""
        with self._read() as session:
            return ArtifactRecord.model_validate(get_row(session, Artifact, artifact_id))

    def artifact_file(self, artifact: ArtifactRecord) -> Path:
        """The artifact's file on disk, after checking its hash."""
        return self.artifacts.verify(artifact.path, artifact.sha256)

    def read_artifact(self, artifact: ArtifactRecord) -> bytes:
        """The artifact's bytes, checked against its hash."""
        return self.artifacts.read_bytes(artifact.path, artifact.sha256)

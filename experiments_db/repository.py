"""The repository: how the agent writes and reads the evidence store.

Every method opens and closes its own short transaction and returns plain data (ids or the
pydantic records of :mod:`rankscope.experiments_db.records`), so callers never hold a session.
"""

import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel
from sqlalchemy import ColumnElement, Select, func, insert, select, update
from sqlalchemy.engine import CursorResult, Engine, RowMapping
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, col

from rankscope.experiments_db.artifacts import ArtifactStore, StoredFile
from rankscope.experiments_db.chain import ChainProblem, append_link, verify_chain
from rankscope.experiments_db.errors import (
    CriterionLockedError,
    EvidenceWriteError,
    ExperimentStateError,
    NotFoundError,
    UnknownEvidenceError,
)
from rankscope.experiments_db.jsonutil import to_jsonable
from rankscope.experiments_db.migrate import writer
from rankscope.experiments_db.models import (
    AUDIT_JOB_STATES,
    CRITERION_COLUMNS,
    EXPERIMENT_STATUSES,
    INVESTIGATION_STATUSES,
    REVIEW_DECISIONS,
    VERDICT_STATUSES,
    Artifact,
    AuditJob,
    Evidence,
    Experiment,
    Hypothesis,
    Investigation,
    LLMCall,
    Review,
    StoreBase,
    Verdict,
    utcnow,
)
from rankscope.experiments_db.records import (
    ACTIVE_AUDIT_JOB_STATES,
    ArtifactRecord,
    ArtifactSpec,
    AuditCheck,
    AuditJobRecord,
    Criterion,
    EvidenceRecord,
    ExperimentNode,
    ExperimentRecord,
    HypothesisNode,
    HypothesisRecord,
    InvestigationRecord,
    InvestigationSummary,
    InvestigationTree,
    LLMCallRecord,
    LLMUsage,
    ReviewRecord,
    VerdictRecord,
)

log = logging.getLogger(__name__)

RowT = TypeVar("RowT", bound=StoreBase)
RecordT = TypeVar("RecordT", bound=BaseModel)

ArtifactInput = ArtifactSpec | tuple[Any, ...] | Mapping[str, Any] | Any
"""An artifact to store: an :class:`ArtifactSpec`, a ``(path, media_type[, description])`` tuple,
a mapping with those keys, or any object with ``path``/``media_type``/``description`` attributes
(such as a tool's ``ArtifactFile``)."""


def _choice(value: str, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise ValueError(f"{what} must be one of {', '.join(choices)}; got {value!r}")
    return value


def _artifact_spec(item: ArtifactInput) -> ArtifactSpec:
    if isinstance(item, ArtifactSpec):
        return item
    if isinstance(item, tuple | list):
        if len(item) not in (2, 3):
            raise ValueError(
                f"an artifact tuple is (path, media_type[, description]); got {item!r}"
            )
        return ArtifactSpec(
            path=item[0], media_type=item[1], description=item[2] if item[2:] else ""
        )
    if isinstance(item, Mapping):
        return ArtifactSpec.model_validate(dict(item))
    if hasattr(item, "path") and hasattr(item, "media_type"):
        return ArtifactSpec(
            path=item.path, media_type=item.media_type, description=getattr(item, "description", "")
        )
    raise TypeError(f"cannot store {item!r} as an artifact")


def _inserted_id(result: CursorResult[Any]) -> int:
    """The primary key of the row a single-row ``INSERT`` wrote."""
    key = result.inserted_primary_key
    if key is None:
        raise RuntimeError("the INSERT returned no primary key")
    return int(key[0])


def _hypothesis_record(row: Mapping[str, Any] | RowMapping) -> HypothesisRecord:
    data = dict(row)
    data["criterion"] = Criterion(**{c: data.pop(c) for c in Criterion.model_fields})
    return HypothesisRecord.model_validate(data)


def _duration(started: datetime | None, finished: datetime) -> float | None:
    return None if started is None else max((finished - started).total_seconds(), 0.0)


class Store:
    """The evidence store: a database engine plus the artifact folder its rows point into."""

    def __init__(self, engine: Engine, artifacts: ArtifactStore) -> None:
        self.engine = engine
        self.artifacts = artifacts
        self._writer = writer(engine)

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.url!r}, artifacts={str(self.artifacts.root)!r})"

    @property
    def url(self) -> str:
        """The database URL with the password masked."""
        return self.engine.url.render_as_string(hide_password=True)

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self.engine.dialect.name

    def close(self) -> None:
        """Close the pooled connections (the store can be reopened with ``open_store``)."""
        self.engine.dispose()

    # -- sessions and helpers -------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[Session]:
        with Session(self._writer, expire_on_commit=False) as session, session.begin():
            yield session

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    @staticmethod
    def _get(session: Session, model: type[RowT], row_id: int, *, for_update: bool = False) -> RowT:
        row = session.get(model, row_id, with_for_update=for_update or None)
        if row is None:
            raise NotFoundError(f"{model.__table__.name.replace('_', ' ')} {row_id} does not exist")
        return row

    @staticmethod
    def _records(session: Session, stmt: Select[Any], record: type[RecordT]) -> list[RecordT]:
        return [record.model_validate(dict(r)) for r in session.execute(stmt).mappings()]

    # -- investigations -------------------------------------------------------------------------

    def create_investigation(
        self,
        question: str,
        model_id: str,
        data_spec: str,
        planner: str,
        *,
        llm_model: str | None = None,
        budget: Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> int:
        """Store a new investigation (status ``running``) and return its id."""
        with self._write() as session:
            row = Investigation(
                question=question,
                model_id=model_id,
                data_spec=data_spec,
                planner=planner,
                llm_model=llm_model,
                budget=to_jsonable(dict(budget or {})),
                config=to_jsonable(dict(config or {})),
                status="running",
            )
            session.add(row)
            session.flush()
            assert row.id is not None
            return row.id

    def set_investigation_status(
        self, investigation_id: int, status: str, *, report_path: str | Path | None = None
    ) -> None:
        """Set the status; leaving ``running`` stamps ``finished_at``."""
        _choice(status, INVESTIGATION_STATUSES, "investigation status")
        with self._write() as session:
            row = self._get(session, Investigation, investigation_id, for_update=True)
            row.status = status
            row.finished_at = None if status == "running" else utcnow()
            if report_path is not None:
                row.report_path = str(report_path)

    def set_report_path(self, investigation_id: int, report_path: str | Path) -> None:
        with self._write() as session:
            row = self._get(session, Investigation, investigation_id, for_update=True)
            row.report_path = str(report_path)

    def update_investigation_config(self, investigation_id: int, config: Mapping[str, Any]) -> None:
        """Replace the investigation's ``config`` JSON."""
        with self._write() as session:
            row = self._get(session, Investigation, investigation_id, for_update=True)
            row.config = to_jsonable(dict(config))

    # -- hypotheses -----------------------------------------------------------------------------

    def preregister_hypothesis(
        self,
        investigation_id: int,
        text: str,
        criterion: Criterion | Mapping[str, Any],
        *,
        tool: str,
        tool_args: Mapping[str, Any] | None = None,
        rationale: str = "",
        parent_id: int | None = None,
        components: Sequence[str] = (),
    ) -> int:
        """Store a hypothesis with its pre-registered criterion and the tool call that tests it
        (``tool``, ``tool_args``); return its id.

        ``parent_id`` links a replication or follow-up to the hypothesis it came from.
        """
        crit = (
            criterion if isinstance(criterion, Criterion) else Criterion.model_validate(criterion)
        )
        with self._write() as session:
            self._get(session, Investigation, investigation_id)
            if parent_id is not None:
                parent = self._get(session, Hypothesis, parent_id)
                if parent.investigation_id != investigation_id:
                    raise ValueError(
                        f"parent hypothesis {parent_id} belongs to investigation "
                        f"{parent.investigation_id}, not {investigation_id}"
                    )
            row = Hypothesis(
                investigation_id=investigation_id,
                text=text,
                rationale=rationale,
                parent_id=parent_id,
                components=[str(c) for c in components],
                tool=tool,
                tool_args=to_jsonable(dict(tool_args or {})),
                **to_jsonable(crit.model_dump()),
            )
            session.add(row)
            session.flush()
            assert row.id is not None
            append_link(session, investigation_id, "hypothesis", row.id)
            return row.id

    def update_criterion(self, hypothesis_id: int, **changes: Any) -> Criterion:
        """Change criterion fields (or ``tool``/``tool_args``) of a hypothesis that no experiment
        has started on yet.

        Raises :class:`CriterionLockedError` once an experiment testing it has started (the
        database refuses it too, with a trigger).
        """
        try:
            with self._write() as session:
                row = self._get(session, Hypothesis, hypothesis_id, for_update=True)
                started = session.execute(
                    select(col(Experiment.id), col(Experiment.status))
                    .where(col(Experiment.hypothesis_id) == hypothesis_id)
                    .where(col(Experiment.status) != "pending")
                    .order_by(col(Experiment.id))
                    .limit(1)
                ).first()
                if row.locked or started is not None:
                    raise self._locked_error(hypothesis_id, started)
                unknown = set(changes) - set(CRITERION_COLUMNS)
                if unknown:
                    raise ValueError(f"not criterion fields: {sorted(unknown)}")
                current = {c: getattr(row, c) for c in Criterion.model_fields}
                call = {k: changes.pop(k) for k in ("tool", "tool_args") if k in changes}
                new = Criterion.model_validate({**current, **changes})
                for column, value in to_jsonable({**new.model_dump(), **call}).items():
                    setattr(row, column, value)
                session.flush()
                append_link(session, row.investigation_id, "hypothesis", hypothesis_id)
                return new
        except DBAPIError as exc:
            if "criterion of hypothesis" in str(exc.orig):
                raise self._locked_error(hypothesis_id, None) from None
            raise

    @staticmethod
    def _locked_error(hypothesis_id: int, started: Any) -> CriterionLockedError:
        which = f"experiment {started[0]} ({started[1]})" if started else "an experiment"
        return CriterionLockedError(
            f"the criterion of hypothesis {hypothesis_id} is locked: {which} testing it has "
            f"started. Pre-register a new hypothesis (parent_id={hypothesis_id}) instead."
        )

    # -- experiments ----------------------------------------------------------------------------

    def start_experiment(
        self,
        investigation_id: int,
        tool: str,
        args: Mapping[str, Any],
        *,
        hypothesis_id: int | None = None,
        tool_version: str = "1",
        seed: int | None = None,
        provenance: BaseModel | Mapping[str, Any] | None = None,
    ) -> int:
        """Store an experiment as ``running`` and return its id; locks its hypothesis's criterion.

        ``seed`` defaults to ``args["seed"]`` when present.
        """
        args_json = to_jsonable(dict(args))
        if seed is None and isinstance(args_json.get("seed"), int):
            seed = args_json["seed"]
        hyp_t, inv_t = Hypothesis.__table__, Investigation.__table__
        with self._writer.begin() as conn:
            if hypothesis_id is None:
                found = conn.execute(select(inv_t.c.id).where(inv_t.c.id == investigation_id))
                if found.first() is None:
                    raise NotFoundError(f"investigation {investigation_id} does not exist")
            else:
                hyp = conn.execute(
                    select(hyp_t.c.investigation_id, hyp_t.c.locked)
                    .where(hyp_t.c.id == hypothesis_id)
                    .with_for_update()
                ).first()
                if hyp is None:
                    raise NotFoundError(f"hypothesis {hypothesis_id} does not exist")
                if hyp.investigation_id != investigation_id:
                    raise ValueError(
                        f"hypothesis {hypothesis_id} belongs to investigation "
                        f"{hyp.investigation_id}, not {investigation_id}"
                    )
                if not hyp.locked:
                    conn.execute(
                        update(hyp_t).where(hyp_t.c.id == hypothesis_id).values(locked=True)
                    )
            result = conn.execute(
                insert(Experiment.__table__).values(
                    investigation_id=investigation_id,
                    hypothesis_id=hypothesis_id,
                    tool=tool,
                    tool_version=str(tool_version),
                    args=args_json,
                    seed=seed,
                    status="running",
                    started_at=utcnow(),
                    provenance=to_jsonable(provenance) if provenance is not None else {},
                )
            )
            return _inserted_id(result)

    def finish_experiment(
        self,
        experiment_id: int,
        metrics: Mapping[str, Any],
        summary: str = "",
        tables: Mapping[str, Any] | None = None,
        artifacts: Iterable[ArtifactInput] = (),
        approximate: bool = False,
    ) -> int:
        """Record a running experiment's evidence and artifacts and mark it ``finished``.

        The status change, the evidence row and the artifact rows commit in one transaction. If
        anything fails, none of them is written, the experiment is marked ``failed`` (or
        ``interrupted`` on KeyboardInterrupt) and :class:`EvidenceWriteError` is raised. Artifact
        files are copied into the content-addressed store first; a failed call may leave
        unreferenced files there, which are harmless. Non-finite floats are stored as ``None``.
        Raises :class:`ExperimentStateError` (and changes nothing) when the experiment is not
        running. Returns the evidence id.
        """
        exp_t = Experiment.__table__
        try:
            metrics_json = to_jsonable(dict(metrics))
            tables_json = to_jsonable(dict(tables or {}))
            specs = [_artifact_spec(a) for a in artifacts]
            stored = [self.artifacts.put(spec.path) for spec in specs]
            with self._writer.begin() as conn:
                exp = conn.execute(
                    select(exp_t.c.status, exp_t.c.started_at, exp_t.c.investigation_id)
                    .where(exp_t.c.id == experiment_id)
                    .with_for_update()
                ).first()
                if exp is None:
                    raise NotFoundError(f"experiment {experiment_id} does not exist")
                if exp.status != "running":
                    raise ExperimentStateError(
                        f"experiment {experiment_id} is {exp.status}; cannot finish it"
                    )
                now = utcnow()
                evidence_id = _inserted_id(
                    conn.execute(
                        insert(Evidence.__table__).values(
                            experiment_id=experiment_id,
                            metrics=metrics_json,
                            summary=summary,
                            tables=tables_json,
                            approximate=bool(approximate),
                            created_at=now,
                        )
                    )
                )
                rows = [
                    self._artifact_row(experiment_id, evidence_id, spec, file)
                    for spec, file in zip(specs, stored, strict=True)
                ]
                if rows:
                    conn.execute(insert(Artifact.__table__), rows)
                append_link(conn, exp.investigation_id, "evidence", evidence_id)
                conn.execute(
                    update(exp_t)
                    .where(exp_t.c.id == experiment_id)
                    .values(
                        status="finished",
                        finished_at=now,
                        duration_s=_duration(exp.started_at, now),
                    )
                )
                return evidence_id
        except (ExperimentStateError, NotFoundError):
            raise
        except KeyboardInterrupt:
            self._close_experiment(experiment_id, "interrupted", "interrupted while recording")
            raise
        except Exception as exc:
            message = f"recording the evidence failed: {type(exc).__name__}: {exc}"
            self._close_experiment(experiment_id, "failed", message)
            raise EvidenceWriteError(
                f"experiment {experiment_id}: {message}; nothing was recorded and the experiment "
                "is marked failed"
            ) from exc

    @staticmethod
    def _artifact_row(
        experiment_id: int, evidence_id: int, spec: ArtifactSpec, file: StoredFile
    ) -> dict[str, Any]:
        return {
            "experiment_id": experiment_id,
            "evidence_id": evidence_id,
            "sha256": file.sha256,
            "path": file.relpath,
            "media_type": spec.media_type,
            "size": file.size,
            "description": spec.description,
        }

    def _close_experiment(self, experiment_id: int, status: str, error: str) -> None:
        try:
            with self._write() as session:
                exp = self._get(session, Experiment, experiment_id, for_update=True)
                if exp.status in ("pending", "running"):
                    now = utcnow()
                    exp.status = status
                    exp.error = error
                    exp.finished_at = now
                    exp.duration_s = _duration(exp.started_at, now)
        except Exception:
            log.exception(
                "could not mark experiment %s %s; mark_interrupted() will close it on resume",
                experiment_id,
                status,
            )

    def fail_experiment(self, experiment_id: int, error: str) -> None:
        """Mark a pending or running experiment ``failed`` with an error message."""
        with self._write() as session:
            exp = self._get(session, Experiment, experiment_id, for_update=True)
            if exp.status not in ("pending", "running"):
                raise ExperimentStateError(
                    f"experiment {experiment_id} is {exp.status}; cannot fail it"
                )
            now = utcnow()
            exp.status = "failed"
            exp.error = error
            exp.finished_at = now
            exp.duration_s = _duration(exp.started_at, now)

    def mark_interrupted(
        self,
        investigation_id: int,
        reason: str = "the process running it stopped before it finished",
    ) -> list[int]:
        """Turn the investigation's ``running`` experiments into ``interrupted`` (on crash or
        resume); return their ids."""
        with self._write() as session:
            self._get(session, Investigation, investigation_id)
            rows = session.execute(
                select(col(Experiment.id), col(Experiment.started_at))
                .where(col(Experiment.investigation_id) == investigation_id)
                .where(col(Experiment.status) == "running")
                .with_for_update()
            ).all()
            now = utcnow()
            for exp_id, started in rows:
                session.execute(
                    update(Experiment)
                    .where(col(Experiment.id) == exp_id)
                    .values(
                        status="interrupted",
                        error=reason,
                        finished_at=now,
                        duration_s=_duration(started, now),
                    )
                )
            return [exp_id for exp_id, _ in rows]

    # -- verdicts, reviews, LLM calls -----------------------------------------------------------

    def record_verdict(
        self,
        hypothesis_id: int,
        status: str,
        *,
        criterion_result: Mapping[str, Any],
        cited_evidence_ids: Sequence[int],
        decided_by: str,
        narrative: str = "",
    ) -> int:
        """Store a verdict; every cited evidence id must be stored evidence of the same
        investigation (else :class:`UnknownEvidenceError`). Returns the verdict id."""
        _choice(status, VERDICT_STATUSES, "verdict status")
        cited = [int(i) for i in cited_evidence_ids]
        with self._write() as session:
            hyp = self._get(session, Hypothesis, hypothesis_id)
            missing = self._missing_evidence(session, cited, hyp.investigation_id)
            if missing:
                raise UnknownEvidenceError(
                    f"verdict on hypothesis {hypothesis_id} cites evidence "
                    f"{', '.join(map(str, missing))} that is not stored in investigation "
                    f"{hyp.investigation_id}",
                    missing,
                )
            row = Verdict(
                hypothesis_id=hypothesis_id,
                status=status,
                criterion_result=to_jsonable(dict(criterion_result)),
                cited_evidence_ids=cited,
                narrative=narrative,
                decided_by=decided_by,
            )
            session.add(row)
            session.flush()
            assert row.id is not None
            append_link(session, hyp.investigation_id, "verdict", row.id)
            return row.id

    def record_review(
        self, verdict_id: int, reviewer: str, decision: str, comment: str = ""
    ) -> int:
        """Store a human review of a verdict (``accept`` or ``dispute``)."""
        _choice(decision, REVIEW_DECISIONS, "review decision")
        with self._write() as session:
            self._get(session, Verdict, verdict_id)
            row = Review(
                verdict_id=verdict_id, reviewer=reviewer, decision=decision, comment=comment
            )
            session.add(row)
            session.flush()
            assert row.id is not None
            return row.id

    # -- audit jobs (started from the review workspace) -----------------------------------------

    def create_audit_job(self, investigation_id: int, *, rerun: bool, owner: str) -> int:
        """Store a queued audit of an investigation; ``owner`` names the process running it."""
        with self._write() as session:
            self._get(session, Investigation, investigation_id)
            row = AuditJob(investigation_id=investigation_id, rerun=rerun, owner=owner)
            session.add(row)
            session.flush()
            assert row.id is not None
            return row.id

    def update_audit_job(
        self,
        job_id: int,
        *,
        state: str | None = None,
        done: int | None = None,
        total: int | None = None,
        findings: Sequence[AuditCheck] | None = None,
        error: str | None = None,
    ) -> None:
        """Record an audit job's progress; a final state (done, failed, interrupted) stamps its
        end. A job that has already ended is left as it is."""
        values: dict[str, Any] = {}
        if state is not None:
            values["state"] = _choice(state, AUDIT_JOB_STATES, "audit job state")
            if state not in ACTIVE_AUDIT_JOB_STATES:
                values["finished_at"] = utcnow()
        if done is not None:
            values["done"] = done
        if total is not None:
            values["total"] = total
        if findings is not None:
            values["findings"] = [f.model_dump() for f in findings]
        if error is not None:
            values["error"] = error
        with self._write() as session:
            self._get(session, AuditJob, job_id)
            session.execute(
                update(AuditJob)
                .where(col(AuditJob.id) == job_id)
                .where(col(AuditJob.state).in_(ACTIVE_AUDIT_JOB_STATES))
                .values(**values)
            )

    def get_audit_job(self, job_id: int) -> AuditJobRecord:
        with self._read() as session:
            return AuditJobRecord.model_validate(self._get(session, AuditJob, job_id))

    def list_audit_jobs(
        self, investigation_id: int | None = None, *, active: bool = False
    ) -> list[AuditJobRecord]:
        """Audit jobs, newest first: one investigation's, or all; only queued and running ones
        when ``active``."""
        stmt = select(AuditJob.__table__).order_by(col(AuditJob.id).desc())
        if investigation_id is not None:
            stmt = stmt.where(col(AuditJob.investigation_id) == investigation_id)
        if active:
            stmt = stmt.where(col(AuditJob.state).in_(ACTIVE_AUDIT_JOB_STATES))
        with self._read() as session:
            return self._records(session, stmt, AuditJobRecord)

    def record_llm_call(
        self,
        investigation_id: int | None,
        model: str,
        messages: Sequence[Any],
        response: Any = None,
        *,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        latency_s: float | None = None,
        error: str | None = None,
    ) -> int:
        """Store one LLM request and its response (or error)."""
        with self._write() as session:
            if investigation_id is not None:
                self._get(session, Investigation, investigation_id)
            row = LLMCall(
                investigation_id=investigation_id,
                model=model,
                messages=to_jsonable(list(messages)),
                response=to_jsonable(response),
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                latency_s=latency_s,
                error=error,
            )
            session.add(row)
            session.flush()
            assert row.id is not None
            return row.id

    # -- queries --------------------------------------------------------------------------------

    def list_investigations(
        self, *, status: str | None = None, limit: int | None = None
    ) -> list[InvestigationSummary]:
        """Investigations, newest first, with their hypothesis/experiment/verdict counts."""
        inv = Investigation.__table__
        stmt = select(inv).order_by(inv.c.id.desc())
        if status is not None:
            stmt = stmt.where(inv.c.status == _choice(status, INVESTIGATION_STATUSES, "status"))
        if limit is not None:
            stmt = stmt.limit(limit)
        with self._read() as session:
            rows = [dict(r) for r in session.execute(stmt).mappings()]
            ids = [r["id"] for r in rows]
            counts: dict[str, dict[int, int]] = {}
            for key, column in (
                ("n_hypotheses", col(Hypothesis.investigation_id)),
                ("n_experiments", col(Experiment.investigation_id)),
            ):
                counts[key] = dict(
                    session.execute(
                        select(column, func.count()).where(column.in_(ids)).group_by(column)
                    ).all()
                )
            counts["n_verdicts"] = dict(
                session.execute(
                    select(col(Hypothesis.investigation_id), func.count(col(Verdict.id)))
                    .join(Verdict, col(Verdict.hypothesis_id) == col(Hypothesis.id))
                    .where(col(Hypothesis.investigation_id).in_(ids))
                    .group_by(col(Hypothesis.investigation_id))
                ).all()
            )
        return [
            InvestigationSummary.model_validate(
                {**r, **{k: counts[k].get(r["id"], 0) for k in counts}}
            )
            for r in rows
        ]

    def get_investigation(self, investigation_id: int) -> InvestigationRecord:
        with self._read() as session:
            return InvestigationRecord.model_validate(
                self._get(session, Investigation, investigation_id)
            )

    def get_hypothesis(self, hypothesis_id: int) -> HypothesisRecord:
        with self._read() as session:
            row = self._get(session, Hypothesis, hypothesis_id)
            return _hypothesis_record(row.model_dump())

    def list_hypotheses(self, investigation_id: int) -> list[HypothesisRecord]:
        table = Hypothesis.__table__
        with self._read() as session:
            rows = session.execute(
                select(table)
                .where(table.c.investigation_id == investigation_id)
                .order_by(table.c.id)
            ).mappings()
            return [_hypothesis_record(r) for r in rows]

    def get_experiment(self, experiment_id: int) -> ExperimentRecord:
        with self._read() as session:
            return ExperimentRecord.model_validate(self._get(session, Experiment, experiment_id))

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
            stmt = stmt.where(table.c.status == _choice(status, EXPERIMENT_STATUSES, "status"))
        if hypothesis_id is not None:
            stmt = stmt.where(table.c.hypothesis_id == hypothesis_id)
        with self._read() as session:
            return self._records(session, stmt.order_by(table.c.id), ExperimentRecord)

    def _evidence_records(
        self, session: Session, where: ColumnElement[bool]
    ) -> list[EvidenceRecord]:
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

    def get_evidence(self, evidence_ids: Iterable[int]) -> list[EvidenceRecord]:
        """Evidence with its artifacts, in the order asked; :class:`UnknownEvidenceError` if any
        id is not stored."""
        ids = [int(i) for i in evidence_ids]
        with self._read() as session:
            found = {e.id: e for e in self._evidence_records(session, col(Evidence.id).in_(ids))}
        missing = sorted(set(ids) - found.keys())
        if missing:
            raise UnknownEvidenceError(
                f"no stored evidence with id {', '.join(map(str, missing))}", missing
            )
        return [found[i] for i in ids]

    @staticmethod
    def _missing_evidence(
        session: Session, ids: Sequence[int], investigation_id: int | None
    ) -> list[int]:
        if not ids:
            return []
        stmt = select(col(Evidence.id)).where(col(Evidence.id).in_(set(ids)))
        if investigation_id is not None:
            stmt = stmt.join(Experiment, col(Experiment.id) == col(Evidence.experiment_id)).where(
                col(Experiment.investigation_id) == investigation_id
            )
        found = set(session.execute(stmt).scalars())
        return sorted(set(ids) - found)

    def missing_evidence(
        self, evidence_ids: Iterable[int], *, investigation_id: int | None = None
    ) -> list[int]:
        """The ids among ``evidence_ids`` that are not stored (in that investigation, if given)."""
        with self._read() as session:
            return self._missing_evidence(session, [int(i) for i in evidence_ids], investigation_id)

    def evidence_exists(
        self, evidence_ids: Iterable[int], *, investigation_id: int | None = None
    ) -> bool:
        """Whether every id is stored evidence (of that investigation, if given)."""
        return not self.missing_evidence(evidence_ids, investigation_id=investigation_id)

    def verdicts(self, hypothesis_id: int) -> list[VerdictRecord]:
        """The verdicts on a hypothesis, oldest first, with their reviews."""
        with self._read() as session:
            return self._verdict_records(session, col(Verdict.hypothesis_id) == hypothesis_id)

    def _verdict_records(self, session: Session, where: ColumnElement[bool]) -> list[VerdictRecord]:
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

    def llm_usage(self, investigation_id: int) -> LLMUsage:
        """The number of LLM calls of an investigation and their token totals."""
        with self._read() as session:
            calls, prompt, completion = session.execute(
                select(
                    func.count(col(LLMCall.id)),
                    func.coalesce(func.sum(col(LLMCall.prompt_tokens)), 0),
                    func.coalesce(func.sum(col(LLMCall.completion_tokens)), 0),
                ).where(col(LLMCall.investigation_id) == investigation_id)
            ).one()
        return LLMUsage(calls=calls, prompt_tokens=prompt, completion_tokens=completion)

    def investigation_tree(
        self, investigation_id: int, *, include_llm_calls: bool = True
    ) -> InvestigationTree:
        """Everything about one investigation: hypotheses → experiments → evidence + artifacts,
        hypotheses → verdicts → reviews, and (optionally) the LLM calls."""
        exp_t, hyp_t, llm_t = Experiment.__table__, Hypothesis.__table__, LLMCall.__table__
        with self._read() as session:
            investigation = InvestigationRecord.model_validate(
                self._get(session, Investigation, investigation_id)
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
            evidence = self._evidence_records(
                session,
                col(Evidence.experiment_id).in_(
                    select(col(Experiment.id)).where(
                        col(Experiment.investigation_id) == investigation_id
                    )
                ),
            )
            verdicts = self._verdict_records(
                session,
                col(Verdict.hypothesis_id).in_(
                    select(col(Hypothesis.id)).where(
                        col(Hypothesis.investigation_id) == investigation_id
                    )
                ),
            )
            llm_calls = (
                self._records(
                    session,
                    select(llm_t)
                    .where(llm_t.c.investigation_id == investigation_id)
                    .order_by(llm_t.c.id),
                    LLMCallRecord,
                )
                if include_llm_calls
                else []
            )
        evidence_by_exp: dict[int, list[EvidenceRecord]] = defaultdict(list)
        for ev in evidence:
            evidence_by_exp[ev.experiment_id].append(ev)
        verdicts_by_hyp: dict[int, list[VerdictRecord]] = defaultdict(list)
        for v in verdicts:
            verdicts_by_hyp[v.hypothesis_id].append(v)
        exps_by_hyp: dict[int | None, list[ExperimentNode]] = defaultdict(list)
        for e in experiments:
            node = ExperimentNode.model_validate(
                {**e, "evidence": evidence_by_exp.get(e["id"], [])}
            )
            exps_by_hyp[e["hypothesis_id"]].append(node)
        nodes = []
        for h in hypotheses:
            record = _hypothesis_record(h)
            nodes.append(
                HypothesisNode.model_validate(
                    {
                        **record.model_dump(),
                        "criterion": record.criterion,
                        "experiments": exps_by_hyp.get(h["id"], []),
                        "verdicts": verdicts_by_hyp.get(h["id"], []),
                    }
                )
            )
        return InvestigationTree(
            investigation=investigation,
            hypotheses=nodes,
            unlinked_experiments=exps_by_hyp.get(None, []),
            llm_calls=llm_calls,
        )

    # -- artifacts ------------------------------------------------------------------------------

    def artifact_file(self, artifact: ArtifactRecord) -> Path:
        """The artifact's file on disk, after checking its hash."""
        return self.artifacts.verify(artifact.path, artifact.sha256)

    def read_artifact(self, artifact: ArtifactRecord) -> bytes:
        """The artifact's bytes, checked against its hash."""
        return self.artifacts.read_bytes(artifact.path, artifact.sha256)

    # -- bulk import (bundles) ------------------------------------------------------------------

    def import_tree(self, tree: InvestigationTree, *, config_note: Mapping[str, Any]) -> int:
        """Re-create an exported investigation under new ids in one transaction; return the new
        investigation id. Artifact files must already be in this store's artifact folder.

        Cited evidence ids in verdicts are remapped; ``config_note`` (with the id maps added) is
        stored in the investigation's config under ``"imported_from"``.
        """
        src = tree.investigation
        with self._write() as session:
            inv = Investigation(
                **src.model_dump(exclude={"id", "config"}),
                config={**src.config, "imported_from": {}},
            )
            session.add(inv)
            session.flush()
            assert inv.id is not None
            hyp_ids: dict[int, int] = {}
            for h in tree.hypotheses:
                fields = h.model_dump(
                    exclude={
                        "id",
                        "investigation_id",
                        "parent_id",
                        "criterion",
                        "experiments",
                        "verdicts",
                    }
                )
                row = Hypothesis(
                    investigation_id=inv.id, **fields, **to_jsonable(h.criterion.model_dump())
                )
                session.add(row)
                session.flush()
                assert row.id is not None
                hyp_ids[h.id] = row.id
            for h in tree.hypotheses:
                if h.parent_id is not None:
                    session.get_one(Hypothesis, hyp_ids[h.id]).parent_id = hyp_ids[h.parent_id]
            exp_ids: dict[int, int] = {}
            ev_ids: dict[int, int] = {}
            verdict_ids: list[int] = []
            for e in tree.experiments():
                row_e = Experiment(
                    investigation_id=inv.id,
                    hypothesis_id=hyp_ids[e.hypothesis_id] if e.hypothesis_id is not None else None,
                    **e.model_dump(exclude={"id", "investigation_id", "hypothesis_id", "evidence"}),
                )
                session.add(row_e)
                session.flush()
                assert row_e.id is not None
                exp_ids[e.id] = row_e.id
                for ev in e.evidence:
                    row_ev = Evidence(
                        experiment_id=row_e.id,
                        **ev.model_dump(exclude={"id", "experiment_id", "artifacts"}),
                    )
                    session.add(row_ev)
                    session.flush()
                    assert row_ev.id is not None
                    ev_ids[ev.id] = row_ev.id
                    for a in ev.artifacts:
                        session.add(
                            Artifact(
                                experiment_id=row_e.id,
                                evidence_id=row_ev.id,
                                **a.model_dump(exclude={"id", "experiment_id", "evidence_id"}),
                            )
                        )
            for h in tree.hypotheses:
                for v in h.verdicts:
                    row_v = Verdict(
                        hypothesis_id=hyp_ids[h.id],
                        cited_evidence_ids=[ev_ids[i] for i in v.cited_evidence_ids],
                        **v.model_dump(
                            exclude={"id", "hypothesis_id", "cited_evidence_ids", "reviews"}
                        ),
                    )
                    session.add(row_v)
                    session.flush()
                    assert row_v.id is not None
                    verdict_ids.append(row_v.id)
                    for r in v.reviews:
                        session.add(
                            Review(
                                verdict_id=row_v.id, **r.model_dump(exclude={"id", "verdict_id"})
                            )
                        )
            for c in tree.llm_calls:
                session.add(
                    LLMCall(
                        investigation_id=inv.id, **c.model_dump(exclude={"id", "investigation_id"})
                    )
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
            for kind, ids in (
                ("hypothesis", hyp_ids.values()),
                ("evidence", ev_ids.values()),
                ("verdict", verdict_ids),
            ):
                for record_id in ids:
                    append_link(session, inv.id, kind, record_id)  # type: ignore[arg-type]
            return inv.id

    def verify_records(self, investigation_id: int) -> tuple[int, list[ChainProblem]]:
        """Check the investigation's records against its record chain (:mod:`.chain`): the
        number of links and every record changed, deleted or added outside the store."""
        with self._read() as session:
            self._get(session, Investigation, investigation_id)
            return verify_chain(session, investigation_id)

    # -- human reviews --------------------------------------------------------------------------

    def review_hypothesis(
        self,
        hypothesis_id: int,
        reviewer: str,
        decision: str,
        comment: str = "",
        *,
        investigation_id: int | None = None,
    ) -> int:
        """Review the latest verdict on a hypothesis (``accept`` or ``dispute``); return the
        review id. :class:`NotFoundError` when the hypothesis (of ``investigation_id``, if
        given) does not exist or has no verdict."""
        _choice(decision, REVIEW_DECISIONS, "review decision")
        if not reviewer.strip():
            raise ValueError("a review needs a reviewer name")
        with self._write() as session:
            hyp = self._get(session, Hypothesis, hypothesis_id)
            if investigation_id is not None and hyp.investigation_id != investigation_id:
                raise NotFoundError(
                    f"hypothesis {hypothesis_id} is not part of investigation {investigation_id}"
                )
            verdict_id = session.execute(
                select(func.max(col(Verdict.id))).where(col(Verdict.hypothesis_id) == hypothesis_id)
            ).scalar()
            if verdict_id is None:
                raise NotFoundError(f"hypothesis {hypothesis_id} has no verdict to review")
            row = Review(
                verdict_id=verdict_id, reviewer=reviewer.strip(), decision=decision, comment=comment
            )
            session.add(row)
            session.flush()
            assert row.id is not None
            return row.id

    def list_reviews(
        self, *, investigation_id: int | None = None, hypothesis_id: int | None = None
    ) -> list[ReviewRecord]:
        """Reviews, oldest first, of one hypothesis's verdicts or one investigation's."""
        rev, ver, hyp = Review.__table__, Verdict.__table__, Hypothesis.__table__
        stmt = select(rev).join(ver, ver.c.id == rev.c.verdict_id)
        if hypothesis_id is not None:
            stmt = stmt.where(ver.c.hypothesis_id == hypothesis_id)
        if investigation_id is not None:
            stmt = stmt.join(hyp, hyp.c.id == ver.c.hypothesis_id).where(
                hyp.c.investigation_id == investigation_id
            )
        with self._read() as session:
            return self._records(session, stmt.order_by(rev.c.id), ReviewRecord)

    def verdict_overview(self, investigation_ids: Sequence[int]) -> dict[int, dict[str, int]]:
        """Per investigation: how many hypotheses' latest verdicts are ``supported``,
        ``refuted``, ``inconclusive``, and how many of those are ``accepted``, ``disputed`` or
        ``unreviewed`` (a verdict's state is its latest review's decision)."""
        ver, hyp, rev = Verdict.__table__, Hypothesis.__table__, Review.__table__
        ids = [int(i) for i in investigation_ids]
        out: dict[int, dict[str, int]] = {i: defaultdict(int) for i in ids}
        if not ids:
            return {}
        with self._read() as session:
            verdicts = session.execute(
                select(hyp.c.investigation_id, ver.c.hypothesis_id, ver.c.id, ver.c.status)
                .join(hyp, hyp.c.id == ver.c.hypothesis_id)
                .where(hyp.c.investigation_id.in_(ids))
                .order_by(ver.c.id)
            ).all()
            latest = {row.hypothesis_id: row for row in verdicts}
            decisions = dict(
                session.execute(
                    select(rev.c.verdict_id, rev.c.decision)
                    .where(rev.c.verdict_id.in_([row.id for row in latest.values()]))
                    .order_by(rev.c.id)
                ).all()
            )
        for row in latest.values():
            counts = out[row.investigation_id]
            counts[row.status] += 1
            decision = str(decisions.get(row.id, ""))
            counts[{"accept": "accepted", "dispute": "disputed"}.get(decision, "unreviewed")] += 1
        return {i: dict(c) for i, c in out.items()}

    def get_artifact(self, artifact_id: int) -> ArtifactRecord:
        """One artifact row (:class:`NotFoundError` if absent)."""
        with self._read() as session:
            return ArtifactRecord.model_validate(self._get(session, Artifact, artifact_id))

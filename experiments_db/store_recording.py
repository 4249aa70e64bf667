"""The records an investigation writes as it runs: hypotheses with their pre-registered
criteria, experiments from start to finish (evidence and artifacts in one transaction), and
verdicts. Each write of a hypothesis, evidence or verdict appends a link to the record chain
(:mod:`.chain`) in the same transaction."""

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel
from sqlalchemy import insert, select, update
from sqlalchemy.exc import DBAPIError
from sqlmodel import col

from rankscope.experiments_db.artifacts import StoredFile
from rankscope.experiments_db.chain import append_link
from rankscope.experiments_db.errors import (
    CriterionLockedError,
    EvidenceWriteError,
    ExperimentStateError,
    NotFoundError,
    UnknownEvidenceError,
)
from rankscope.experiments_db.jsonutil import to_jsonable
from rankscope.experiments_db.models import (
    CRITERION_COLUMNS,
    VERDICT_STATUSES,
    Artifact,
    Evidence,
    Experiment,
    Hypothesis,
    Investigation,
    Verdict,
    utcnow,
)
from rankscope.experiments_db.records import ArtifactSpec, Criterion
from rankscope.experiments_db.store_core import (
    StoreCore,
    add_row,
    choice,
    duration,
    get_row,
    inserted_id,
)
from rankscope.experiments_db.store_queries import missing_evidence_ids

log = logging.getLogger(__name__)

ArtifactInput = ArtifactSpec | tuple[Any, ...] | Mapping[str, Any] | Any
"""An artifact to store: an :class:`ArtifactSpec`, a ``(path, media_type[, description])`` tuple,
a mapping with those keys, or any object with ``path``/``media_type``/``description`` attributes
(such as a tool's ``ArtifactFile``)."""


def artifact_spec(item: ArtifactInput) -> ArtifactSpec:
    """``item`` as an :class:`ArtifactSpec` (see :data:`ArtifactInput`)."""
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


class RecordingStore(StoreCore):
    """Writes of hypotheses, experiments, evidence with its artifacts, and verdicts."""

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
        exploratory: bool = False,
    ) -> int:
        """Store a hypothesis with its pre-registered criterion and the tool call that tests it
        (``tool``, ``tool_args``); return its id.

        ``parent_id`` links a replication or follow-up to the hypothesis it came from;
        ``exploratory`` marks a screen or ranking that claims nothing (no verdict, no level).
        """
        crit = (
            criterion if isinstance(criterion, Criterion) else Criterion.model_validate(criterion)
        )
        with self._write() as session:
            get_row(session, Investigation, investigation_id)
            if parent_id is not None:
                parent = get_row(session, Hypothesis, parent_id)
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
                exploratory=exploratory,
                **to_jsonable(crit.model_dump()),
            )
            hypothesis_id = add_row(session, row)
            append_link(session, investigation_id, "hypothesis", hypothesis_id)
            return hypothesis_id

    def update_criterion(self, hypothesis_id: int, **changes: Any) -> Criterion:
        """Change criterion fields (or ``tool``/``tool_args``) of a hypothesis that no experiment
        has started on yet.

        Raises :class:`CriterionLockedError` once an experiment testing it has started (the
        database refuses it too, with a trigger).
        """
        try:
            with self._write() as session:
                row = get_row(session, Hypothesis, hypothesis_id, for_update=True)
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
            return inserted_id(result)

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
            specs = [artifact_spec(a) for a in artifacts]
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
                evidence_id = inserted_id(
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
                        duration_s=duration(exp.started_at, now),
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
                exp = get_row(session, Experiment, experiment_id, for_update=True)
                if exp.status in ("pending", "running"):
                    now = utcnow()
                    exp.status = status
                    exp.error = error
                    exp.finished_at = now
                    exp.duration_s = duration(exp.started_at, now)
        except Exception:
            log.exception(
                "could not mark experiment %s %s; mark_interrupted() will close it on resume",
                experiment_id,
                status,
            )

    def fail_experiment(self, experiment_id: int, error: str) -> None:
        """Mark a pending or running experiment ``failed`` with an error message."""
        with self._write() as session:
            exp = get_row(session, Experiment, experiment_id, for_update=True)
            if exp.status not in ("pending", "running"):
                raise ExperimentStateError(
                    f"experiment {experiment_id} is {exp.status}; cannot fail it"
                )
            now = utcnow()
            exp.status = "failed"
            exp.error = error
            exp.finished_at = now
            exp.duration_s = duration(exp.started_at, now)

    def mark_interrupted(
        self,
        investigation_id: int,
        reason: str = "the process running it stopped before it finished",
    ) -> list[int]:
        """Turn the investigation's ``running`` experiments into ``interrupted`` (on crash or
        resume); return their ids."""
        with self._write() as session:
            get_row(session, Investigation, investigation_id)
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
                        duration_s=duration(started, now),
                    )
                )
            return [exp_id for exp_id, _ in rows]

    # -- verdicts -------------------------------------------------------------------------------

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
        choice(status, VERDICT_STATUSES, "verdict status")
        cited = [int(i) for i in cited_evidence_ids]
        with self._write() as session:
            hyp = get_row(session, Hypothesis, hypothesis_id)
            missing = missing_evidence_ids(session, cited, hyp.investigation_id)
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
            verdict_id = add_row(session, row)
            append_link(session, hyp.investigation_id, "verdict", verdict_id)
            return verdict_id

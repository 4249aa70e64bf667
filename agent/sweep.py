"""Sweeps: many investigations — models × questions × seeds × planners — as Ray tasks, one store.

``rankscope sweep SPEC.toml`` (``agent/commands/sweep_cmd.py``) is a thin layer over
:func:`run_sweep`. Each cell of the grid is one investigation, run by :func:`run_cell` as a Ray
task on a local Ray (default) or a cluster (``--ray-address``).

How the writes stay safe
------------------------
- **Each investigation writes its own rows.** A worker runs the ordinary
  :func:`~rankscope.agent.runner.investigate` / :func:`~rankscope.agent.runner.resume` against the
  shared store, so an investigation's hypotheses, experiments, evidence, verdicts and checkpoints
  are written by the one process driving it, in the store's own transactions; different cells never
  write the same rows. PostgreSQL serialises the concurrent transactions (row locks, sequences);
  SQLite allows one writer at a time and its file is not shared across machines, so a sweep with
  more than one worker refuses it (:func:`check_store`).
- **The driver prepares the schema once**: it migrates the store and creates the checkpointer's
  tables before any task starts (two processes creating them at once on a fresh PostgreSQL
  database fail), and then only reads (the live table, the summary).
- **A cell is recorded from its creation on**: the investigation's row is created with
  ``config.sweep = {id, cell, model, question, seed, planner}`` in the same insert (a ``sweep``
  key of the settings given to ``investigate``), so a worker killed at any moment leaves either no row or a
  tagged one — never an orphan that a retry would duplicate. No migration is needed.
- **One process per cell**: a worker holds a PostgreSQL advisory lock on (sweep, cell) while it
  looks the cell up and runs it, so two drivers of the same sweep, or a retry racing a slow
  death, cannot run a cell twice. The server drops the lock when the holder's connection dies.
- **Retries and resumption**: Ray re-runs a task whose worker died (``retries`` in the spec); the
  new attempt finds the cell's investigation and resumes it from its last checkpoint (experiments
  left running are marked interrupted and re-run). Running the same spec again skips finished
  cells and resumes the others.
- **Artifacts** are content-addressed files written atomically; concurrent writers of the same
  file write the same bytes. On a cluster ``artifact_dir`` must be a folder every node shares.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from sqlalchemy.engine import make_url

from rankscope.agent.state import Budget
from rankscope.experiments_db.artifacts import ENV_ARTIFACT_DIR, default_artifact_root
from rankscope.experiments_db.engine import database_url, open_store, refuse_in_memory
from rankscope.experiments_db.records import InvestigationSummary
from rankscope.experiments_db.repository import Store

SweepPlanner = Literal["protocol", "llm"]
CellAction = Literal["ran", "resumed", "skipped", "busy", "error"]

SQLITE_REFUSED = (
    "a sweep with more than one worker cannot use SQLite ({url}): its workers are separate "
    "processes (on a cluster, separate machines) that each write their investigation's rows at "
    "the same time, and SQLite allows one writer at a time in a file that only one machine can "
    "see. Use PostgreSQL: --db postgresql+psycopg://USER@HOST:5432/DB (or set RANKSCOPE_DB_URL); "
    "or run the sweep locally with --workers 1."
)
LOCK_WAIT_S = 30
"""How long a worker waits for a cell's lock (a dead holder's lock is dropped by the server)."""


class SweepError(ValueError):
    """The sweep cannot start: a bad spec or an unusable store; the message says what to do."""


class Cell(BaseModel):
    """One investigation of a sweep."""

    model_config = ConfigDict(frozen=True)

    model: str
    question: str
    seed: int
    planner: SweepPlanner

    @property
    def key(self) -> str:
        """A stable name of the cell (the same spec gives the same keys, in any order)."""
        raw = json.dumps([self.model, self.question, self.seed, self.planner])
        return hashlib.sha256(raw.encode()).hexdigest()[:12]


def _protocol_only() -> list[SweepPlanner]:
    return ["protocol"]


class SweepSpec(BaseModel):
    """A sweep as written in ``SPEC.toml`` (top-level keys, or a ``[sweep]`` table)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(
        None, description="The sweep's id in the store (default: a hash of the grid)."
    )
    models: list[str] = Field(min_length=1, description="Hugging Face ids or local paths.")
    questions: list[str] = Field(min_length=1)
    seeds: list[int] = Field(
        default_factory=lambda: [0],
        description="The protocol planner's tool seed; for the LLM planner a repeat index.",
    )
    planners: list[SweepPlanner] = Field(default_factory=_protocol_only, min_length=1)
    data: str | None = Field(None, description="Data spec (default: the built-in collection).")
    llm_model: str | None = Field(None, description="The model the LLM endpoint serves.")
    base_url: str | None = Field(None, description="The LLM endpoint (default: OPENAI_BASE_URL).")
    protocol_pairs: int | None = Field(None, ge=2, description="Pairs per protocol experiment.")
    device: str = "cpu"
    budget: Budget = Field(default_factory=Budget)
    model_options: dict[str, Any] = Field(default_factory=dict)
    retries: int = Field(2, ge=0, description="Re-runs of a cell whose worker process died.")
    cpus_per_investigation: float = Field(1.0, gt=0, description="Ray CPUs each task reserves.")
    artifact_dir: str | None = Field(
        None, description="Artifact folder (on a cluster: one every node shares)."
    )
    report_dir: str = "rankscope_reports"

    @model_validator(mode="after")
    def _check(self) -> SweepSpec:
        if "llm" in self.planners and not self.llm_model:
            raise ValueError("planner 'llm' needs llm_model (the model the endpoint serves)")
        return self

    def cells(self) -> list[Cell]:
        """The grid, models outermost."""
        return [
            Cell(model=m, question=q, seed=s, planner=p)
            for m in self.models
            for q in self.questions
            for s in self.seeds
            for p in self.planners
        ]

    def sweep_id(self) -> str:
        if self.name:
            return self.name
        keys = sorted(c.key for c in self.cells())
        return "sweep-" + hashlib.sha256(json.dumps(keys).encode()).hexdigest()[:10]


def load_spec(path: Path) -> SweepSpec:
    """Read and validate a sweep spec; :class:`SweepError` says what is wrong."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError as err:
        raise SweepError(f"no sweep spec at {path}") from err
    except tomllib.TOMLDecodeError as err:
        raise SweepError(f"{path} is not valid TOML: {err}") from err
    table = raw["sweep"] if isinstance(raw.get("sweep"), dict) else raw
    try:
        return SweepSpec.model_validate(table)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'spec'}: {e['msg']}" for e in err.errors()
        )
        raise SweepError(f"{path}: {problems}") from err


def check_store(url: str, workers: int, ray_address: str | None) -> None:
    """Refuse SQLite for a sweep with several workers or on a cluster (see the module doc)."""
    if make_url(url).get_backend_name() == "sqlite" and (workers > 1 or ray_address):
        raise SweepError(SQLITE_REFUSED.format(url=url))


def sweep_cells(store: Store, sweep_id: str) -> dict[str, list[InvestigationSummary]]:
    """The investigations of a sweep by cell key (more than one per key would be a duplicate)."""
    out: dict[str, list[InvestigationSummary]] = {}
    for inv in store.list_investigations():
        tag = inv.config.get("sweep")
        if isinstance(tag, dict) and tag.get("id") == sweep_id:
            out.setdefault(str(tag.get("cell")), []).append(inv)
    for rows in out.values():
        rows.sort(key=lambda r: r.id)
    return out


def _lock_key(sweep_id: str, cell: str) -> int:
    digest = hashlib.sha256(f"rankscope-sweep:{sweep_id}:{cell}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def cell_lock(url: str, sweep_id: str, cell: str) -> Iterator[bool]:
    """Hold the cell's advisory lock (PostgreSQL) while the block runs; yields whether it was
    obtained within :data:`LOCK_WAIT_S`. SQLite (one worker) needs no lock: yields True."""
    if make_url(url).get_backend_name() != "postgresql":
        yield True
        return
    import psycopg

    from rankscope.agent.checkpoints import postgres_conninfo

    with psycopg.connect(postgres_conninfo(url), autocommit=True) as conn:
        conn.execute(f"SET lock_timeout = '{LOCK_WAIT_S}s'")
        try:
            conn.execute("SELECT pg_advisory_lock(%s)", (_lock_key(sweep_id, cell),))
        except psycopg.errors.LockNotAvailable:
            yield False
            return
        yield True


def _protocol_factory(pairs: int | None, seed: int) -> Callable[[], Any]:
    def factory() -> Any:
        from rankscope.agent.planners.protocol import ProtocolPlanner

        if pairs:
            return ProtocolPlanner(n_pairs=pairs, localise_pairs=2 * pairs, seed=seed)
        return ProtocolPlanner(seed=seed)

    return factory


def _free_foreign_lease(store: Store, investigation_id: int) -> None:
    """Drop a lease left by a process on another host: the cell lock proves that no live sweep
    worker drives the investigation (a lease on this host is checked by pid in ``claim``)."""
    from rankscope.agent.settings import save_settings, settings_of

    settings = settings_of(store.get_investigation(investigation_id))
    if settings.lease is not None and settings.lease.host != socket.gethostname():
        settings.lease = None
        save_settings(store, investigation_id, settings)


def run_cell(
    spec_json: dict[str, Any],
    cell_json: dict[str, Any],
    sweep_id: str,
    url: str,
    report_dir: str,
    artifact_dir: str,
) -> dict[str, Any]:
    """Run, resume or skip one cell (the body of a Ray task); returns a :class:`CellOutcome` as
    a dict. An exception of the investigation is caught and returned as ``error`` (the run is
    marked interrupted, so the next sweep resumes it); a dead worker is Ray's to retry."""
    from rankscope.agent.runner import investigate, resume
    from rankscope.agent.settings import InvestigationSettings

    spec = SweepSpec.model_validate(spec_json)
    cell = Cell.model_validate(cell_json)
    os.environ[ENV_ARTIFACT_DIR] = artifact_dir
    import torch

    torch.set_num_threads(max(1, int(spec.cpus_per_investigation)))
    started = time.perf_counter()
    quiet: dict[str, Any] = {
        "db": url,
        "report_dir": Path(report_dir),
        "console": Console(file=io.StringIO()),
        "quiet": True,
    }
    factory = (
        _protocol_factory(spec.protocol_pairs, cell.seed) if cell.planner == "protocol" else None
    )
    outcome = CellOutcome(key=cell.key, action="error")
    try:
        with cell_lock(url, sweep_id, cell.key) as locked:
            if not locked:
                outcome.action = "busy"
                outcome.error = f"another process holds cell {cell.key} (waited {LOCK_WAIT_S} s)"
                return outcome.as_dict()
            with open_store(url) as store:
                found = sweep_cells(store, sweep_id).get(cell.key, [])
                if found:
                    _free_foreign_lease(store, found[0].id)
            if found and found[0].status == "finished":
                outcome.action, outcome.investigation_id = "skipped", found[0].id
                outcome.status = "finished"
                return outcome.as_dict()
            if found:
                result = resume(found[0].id, planner_factory=factory, **quiet)
                outcome.action = "resumed"
            else:
                tag = {"id": sweep_id, "cell": cell.key, **cell.model_dump()}
                settings = InvestigationSettings.model_validate(
                    {
                        "model_arg": cell.model,
                        "data_arg": spec.data,
                        "planner": cell.planner,
                        "llm_model": spec.llm_model if cell.planner == "llm" else None,
                        "base_url": spec.base_url,
                        "budget": spec.budget,
                        "device": spec.device,
                        "protocol_pairs": spec.protocol_pairs,
                        "model_options": spec.model_options or {},
                        "sweep": tag,
                    }
                )
                result = investigate(cell.question, settings, planner_factory=factory, **quiet)
                outcome.action = "ran"
            outcome.investigation_id = result.investigation_id
            outcome.status, outcome.stop_reason = result.status, result.stop_reason
    except Exception as err:
        outcome.action, outcome.error = "error", f"{type(err).__name__}: {err}"[:500]
    outcome.seconds = time.perf_counter() - started
    return outcome.as_dict()


@dataclass
class CellOutcome:
    """What a task did with its cell."""

    key: str
    action: CellAction
    investigation_id: int | None = None
    status: str | None = None
    stop_reason: str | None = None
    error: str | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class SummaryRow:
    """One investigation of a sweep, summarised by its verdicts."""

    cell: Cell
    investigation_id: int | None
    status: str
    verdicts: dict[str, int] = field(default_factory=dict)
    top_finding: str = ""


@dataclass
class SweepResult:
    sweep_id: str
    outcomes: dict[str, CellOutcome]
    summary: list[SummaryRow]
    duplicates: dict[str, list[int]]
    """Cells with more than one investigation (there should be none)."""
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.duplicates and all(r.status == "finished" for r in self.summary)


VERDICT_KINDS = ("supported", "refuted", "inconclusive", "no verdict")


def summarise(store: Store, spec: SweepSpec, sweep_id: str) -> list[SummaryRow]:
    """Each cell's status, verdict counts and its strongest finding (supported first)."""
    from rankscope.agent.web.views import findings

    found = sweep_cells(store, sweep_id)
    rows = []
    for cell in spec.cells():
        invs = found.get(cell.key, [])
        if not invs:
            rows.append(SummaryRow(cell, None, "not started"))
            continue
        inv = invs[0]
        listed = findings(store.investigation_tree(inv.id, include_llm_calls=False))
        counts = {kind: sum(f.status == kind for f in listed) for kind in VERDICT_KINDS}
        top = next((f for f in listed if f.status == "supported"), listed[0] if listed else None)
        text = f"{top.status}: {top.node.text} ({top.effect})" if top else ""
        rows.append(SummaryRow(cell, inv.id, inv.status, counts, text))
    return rows


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _model_label(model: str) -> str:
    return Path(model).name or model


def progress_table(
    spec: SweepSpec,
    sweep_id: str,
    found: dict[str, list[InvestigationSummary]],
    outcomes: dict[str, CellOutcome],
    elapsed: float,
) -> Table:
    """The live table: one row per cell, its state read from the store."""
    done = sum(o.action != "error" and o.status == "finished" for o in outcomes.values())
    table = Table(
        title=f"sweep {escape(sweep_id)}: {done}/{len(spec.cells())} finished, {elapsed:.0f} s"
    )
    for column in ("cell", "model", "seed", "planner", "inv", "state", "hyp", "exp"):
        table.add_column(column, no_wrap=True)
    table.add_column("question")
    for cell in spec.cells():
        invs = found.get(cell.key, [])
        inv = invs[0] if invs else None
        outcome = outcomes.get(cell.key)
        if outcome is not None:
            state = outcome.action if outcome.action in ("error", "busy") else str(outcome.status)
        else:
            state = inv.status if inv is not None else "queued"
        table.add_row(
            cell.key[:8],
            escape(_model_label(cell.model)),
            str(cell.seed),
            cell.planner,
            str(inv.id) if inv else "",
            state,
            str(inv.n_hypotheses) if inv else "",
            str(inv.n_experiments) if inv else "",
            escape(_short(cell.question, 60)),
        )
    return table


def summary_table(result: SweepResult) -> Table:
    """Findings across the sweep: verdict counts (supported/refuted/inconclusive/none) and the
    strongest finding of each cell."""
    table = Table(title=f"sweep {escape(result.sweep_id)}: findings")
    table.add_column("inv", justify="right")
    table.add_column("model · seed · planner", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("S/R/I/-", no_wrap=True)
    table.add_column("question", ratio=1)
    table.add_column("strongest finding", ratio=2)
    totals = dict.fromkeys(VERDICT_KINDS, 0)
    for row in result.summary:
        for kind in VERDICT_KINDS:
            totals[kind] += row.verdicts.get(kind, 0)
        table.add_row(
            str(row.investigation_id or ""),
            escape(f"{_model_label(row.cell.model)} · {row.cell.seed} · {row.cell.planner}"),
            row.status,
            "/".join(str(row.verdicts.get(kind, 0)) for kind in VERDICT_KINDS),
            escape(row.cell.question),
            escape(_short(row.top_finding, 160)),
        )
    table.add_row("", "all", "", "/".join(str(totals[k]) for k in VERDICT_KINDS), "", "")
    return table


def _prepare_store(url: str) -> None:
    """Migrate the store and create the checkpointer's tables, once, before any worker starts."""
    from rankscope.agent.checkpoints import open_checkpointer

    with open_store(url):
        pass
    with open_checkpointer(url):
        pass


def run_sweep(
    spec: SweepSpec,
    *,
    db: str | None = None,
    ray_address: str | None = None,
    workers: int = 2,
    console: Console | None = None,
    quiet: bool = False,
    refresh_s: float = 1.0,
) -> SweepResult:
    """Run every cell of ``spec`` not yet finished as a Ray task; returns outcomes and summary.

    Uses the running Ray if one is initialised (tests), else starts a local Ray with ``workers``
    CPUs, or connects to ``ray_address``; a Ray started here is shut down at the end."""
    import ray

    console = console or Console()
    url = database_url(db)
    refuse_in_memory(url)
    check_store(url, workers, ray_address)
    _prepare_store(url)
    sweep_id = spec.sweep_id()
    report_dir = str(Path(spec.report_dir).resolve())
    artifact_dir = str(
        Path(spec.artifact_dir).resolve() if spec.artifact_dir else default_artifact_root(url)
    )
    started_here = not ray.is_initialized()
    if started_here:
        if ray_address:
            ray.init(address=ray_address, log_to_driver=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    started = time.perf_counter()
    outcomes: dict[str, CellOutcome] = {}
    try:
        task = ray.remote(
            num_cpus=spec.cpus_per_investigation, max_retries=spec.retries, retry_exceptions=False
        )(run_cell)
        with open_store(url) as store:
            found = sweep_cells(store, sweep_id)
        pending: dict[Any, str] = {}
        for cell in spec.cells():
            invs = found.get(cell.key, [])
            if invs and invs[0].status == "finished":
                outcomes[cell.key] = CellOutcome(cell.key, "skipped", invs[0].id, "finished")
                continue
            ref = task.remote(
                spec.model_dump(mode="json"),
                cell.model_dump(),
                sweep_id,
                url,
                report_dir,
                artifact_dir,
            )
            pending[ref] = cell.key
        with Live(console=console, auto_refresh=False) if not quiet else nullcontext() as live:
            while True:
                if live is not None:
                    with open_store(url) as store:
                        found = sweep_cells(store, sweep_id)
                    elapsed = time.perf_counter() - started
                    table = progress_table(spec, sweep_id, found, outcomes, elapsed)
                    live.update(table, refresh=True)
                if not pending:
                    break
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=refresh_s)
                for ref in ready:
                    key = pending.pop(ref)
                    try:
                        outcomes[key] = CellOutcome(**ray.get(ref))
                    except ray.exceptions.RayError as err:
                        outcomes[key] = CellOutcome(
                            key, "error", error=f"{type(err).__name__}: {err}"[:500]
                        )
    finally:
        if started_here:
            ray.shutdown()
    with open_store(url) as store:
        summary = summarise(store, spec, sweep_id)
        duplicates = {
            key: [r.id for r in rows]
            for key, rows in sweep_cells(store, sweep_id).items()
            if len(rows) > 1
        }
    result = SweepResult(sweep_id, outcomes, summary, duplicates, time.perf_counter() - started)
    if not quiet:
        console.print(summary_table(result))
    return result

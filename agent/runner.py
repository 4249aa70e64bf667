"""Start and resume investigations: the store, the lab, the planner and the graph, wired together.

The command line (``agent/commands/investigate_cmd.py``) builds an
:class:`~rankscope.agent.settings.InvestigationSettings` and calls :func:`investigate`;
``resume`` reads the stored settings back. Tests call both directly.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rich.console import Console

from rankscope.agent.checkpoints import (
    connection_lost,
    connection_lost_error,
    verify_checkpoint,
)
from rankscope.agent.context import GraphContext, StoredInvestigation
from rankscope.agent.execution import Lab
from rankscope.agent.graph import invoke
from rankscope.agent.lease import Heartbeat, claim, own_lease, release
from rankscope.agent.planners.base import Planner
from rankscope.agent.progress import ProgressPrinter
from rankscope.agent.settings import InvestigationSettings, settings_of
from rankscope.experiments_db.engine import database_url, open_store, refuse_in_memory
from rankscope.experiments_db.repository import Store

PlannerName = Literal["llm", "protocol"]
DEFAULT_REPORT_DIR = Path("rankscope_reports")


@dataclass
class PlannerChoice:
    name: PlannerName
    why: str


def choose_planner(requested: str | None, llm_model: str | None) -> PlannerChoice:
    """Which planner runs, and why (the CLI prints both)."""
    endpoint = bool(os.environ.get("OPENAI_BASE_URL") or os.environ.get("OPENAI_API_KEY"))
    if requested == "llm":
        if not llm_model:
            raise ValueError("--planner llm needs --llm-model NAME (the model the endpoint serves)")
        return PlannerChoice("llm", "requested with --planner llm")
    if requested == "protocol":
        return PlannerChoice("protocol", "requested with --planner protocol")
    if requested is not None:
        raise ValueError(f"unknown planner {requested!r}; use 'llm' or 'protocol'")
    if endpoint and llm_model:
        return PlannerChoice(
            "llm",
            "an LLM endpoint is configured (OPENAI_BASE_URL/OPENAI_API_KEY) and --llm-model given",
        )
    missing = []
    if not endpoint:
        missing.append("no OPENAI_BASE_URL or OPENAI_API_KEY is set")
    if not llm_model:
        missing.append("no --llm-model was given")
    return PlannerChoice("protocol", "the offline default: " + " and ".join(missing))


def make_planner(
    store: Store,
    investigation_id: int,
    settings: InvestigationSettings,
    planner_factory: Callable[[], Planner] | None = None,
    *,
    tokens_used: int = 0,
) -> Planner:
    """The planner named in ``settings`` (``planner_factory``'s when given); LLM calls are stored
    with the investigation. The LLM planner's token budget is what the investigation's budget
    leaves after ``tokens_used``; its request timeout, retries and context window are the
    settings' (``None``: environment or defaults)."""
    if planner_factory is not None:
        return planner_factory()
    if settings.planner == "protocol":
        from rankscope.agent.planners.protocol import ProtocolPlanner

        if settings.protocol_pairs:
            return ProtocolPlanner(
                n_pairs=settings.protocol_pairs,
                localise_pairs=2 * settings.protocol_pairs,
                policy=settings.policy,
            )
        return ProtocolPlanner(policy=settings.policy)
    from rankscope.agent.planners.llm import LLMPlanner

    llm_model = settings.llm_model

    def recorder(call: Any) -> None:
        def get(key: str) -> Any:
            return call.get(key) if isinstance(call, dict) else getattr(call, key, None)

        store.record_llm_call(
            investigation_id,
            str(get("model") or llm_model),
            get("messages") or [],
            get("response"),
            prompt_tokens=get("prompt_tokens"),
            completion_tokens=get("completion_tokens"),
            latency_s=get("latency_s"),
            error=get("error"),
        )

    max_tokens = settings.budget.max_tokens
    return LLMPlanner(
        model=str(llm_model),
        base_url=settings.base_url or os.environ.get("OPENAI_BASE_URL"),
        api_key=os.environ.get("OPENAI_API_KEY"),
        recorder=recorder,
        max_tokens_budget=None if max_tokens is None else max(1, max_tokens - tokens_used),
        timeout_s=settings.llm_timeout_s,
        max_retries=settings.llm_retries,
        context_tokens=settings.llm_context,
    )


@dataclass
class RunResult:
    investigation_id: int
    status: str
    report_path: str | None
    stop_reason: str | None


@dataclass(frozen=True)
class _Process:
    """How this process runs an investigation (nothing of it is stored)."""

    url: str
    report_dir: Path
    progress: ProgressPrinter
    retriever_loader: Callable[..., Any] | None
    show_tool_progress: bool


def _write_report(store: Store, investigation_id: int, out_dir: Path) -> Path:
    from rankscope.agent.reports import write_reports

    md, _html = write_reports(store, investigation_id, out_dir)
    return md


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While running, SIGTERM raises ``KeyboardInterrupt`` as SIGINT does, so the run is marked
    interrupted rather than left ``running`` (main thread only; elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(
    store: Store,
    investigation_id: int,
    settings: InvestigationSettings,
    planner: Planner,
    process: _Process,
    *,
    resume: bool,
) -> RunResult:
    lab = Lab(
        store=store,
        investigation_id=investigation_id,
        model=settings.model_arg,
        data_spec=settings.data_arg,
        device=settings.device,
        progress=process.show_tool_progress,
        retriever_loader=process.retriever_loader,
        model_options=settings.model_options,
        shards=settings.shards,
    )
    context = GraphContext(
        store=store,
        lab=lab,
        planner=planner,
        settings=settings,
        investigation=StoredInvestigation(store, investigation_id),
        progress=process.progress,
        report_dir=process.report_dir / f"investigation-{investigation_id}",
        write_report=_write_report,
        heartbeat=Heartbeat(store, investigation_id),
    )
    try:
        try:
            with _sigterm_as_interrupt():
                final = invoke(context, process.url, investigation_id, resume=resume)
        finally:
            lab.close()
            release(store, investigation_id)
        inv = store.get_investigation(investigation_id)
    except Exception as err:
        # A connection the pool could not replace: one line that says to resume (the run is
        # marked interrupted when the database could still be written; a lease left behind by
        # this process is taken over by the resume).
        reason = connection_lost(err)
        if reason is None:
            raise
        raise connection_lost_error(investigation_id, reason) from err
    return RunResult(
        investigation_id=investigation_id,
        status=inv.status,
        report_path=inv.report_path,
        stop_reason=final.get("stop_reason"),
    )


def _as_started(
    settings: InvestigationSettings,
    choice: PlannerChoice,
    planner_name: str,
    described: dict[str, Any],
) -> InvestigationSettings:
    """The settings stored as a new investigation starts: the planner that runs and why, the
    loaded model, and this process's lease."""
    llm = choice.name == "llm"
    notes = list(settings.notes)
    if described.get("random_weights"):
        notes.append(
            f"{len(described['random_weights'])} weights the score depends on were randomly "
            "initialised (--allow-random-weights): findings describe a partly random model"
        )
    return settings.model_copy(
        update={
            "planner": planner_name,
            "llm_model": settings.llm_model if llm else None,
            "base_url": settings.base_url if llm else None,
            "planner_why": choice.why,
            "model": described,
            "notes": notes,
            "lease": own_lease(),
        }
    )


def investigate(
    question: str,
    settings: InvestigationSettings | None = None,
    *,
    db: str | None = None,
    report_dir: Path = DEFAULT_REPORT_DIR,
    console: Console | None = None,
    quiet: bool = False,
    planner_factory: Callable[[], Planner] | None = None,
    retriever_loader: Callable[..., Any] | None = None,
    show_tool_progress: bool = False,
    on_started: Callable[[int], None] | None = None,
) -> RunResult:
    """Start an investigation with ``settings`` (default :class:`InvestigationSettings`) and run
    it to its end (or to an exception, which propagates).

    The settings are stored with the investigation as its row is created, with the planner that
    runs (``settings.planner``, or ``planner_factory``'s planner), the loaded model's description
    and this process's lease; ``resume`` reads them back. The other arguments say how this process
    runs it: the database (``db``), where reports go, the console, the retriever loader (tests).

    The device and the model are checked before the investigation's row is created, so a bad one
    leaves nothing behind; a failure after the row exists but before the graph runs marks it
    ``failed``. ``on_started`` gets the id once the run has started (from then on
    ``rankscope resume ID`` can continue it)."""
    settings = settings or InvestigationSettings()
    progress = ProgressPrinter(console, quiet=quiet)
    choice = (
        PlannerChoice("protocol", "a planner object was given")
        if planner_factory is not None
        else choose_planner(settings.planner, settings.llm_model)
    )
    given = planner_factory() if planner_factory is not None else None
    url = database_url(db)
    refuse_in_memory(url)
    described = load_model(
        settings.model_arg, settings.device, retriever_loader, settings.model_options
    )
    settings = _as_started(settings, choice, getattr(given, "name", None) or choice.name, described)
    with open_store(url) as store:
        investigation_id = store.create_investigation(
            question,
            settings.model_arg or "all-MiniLM-L6-v2",
            settings.data_arg or "builtin",
            str(settings.planner),
            llm_model=settings.llm_model,
            budget=settings.budget.model_dump(),
            config=settings.config(),
        )
        try:
            progress.investigation(investigation_id, question)
            progress.line(f"planner: {choice.name} ({choice.why})")
            active = given or make_planner(store, investigation_id, settings)
        except BaseException:
            _fail_before_start(store, investigation_id)
            raise
        if on_started is not None:
            on_started(investigation_id)
        process = _Process(url, report_dir, progress, retriever_loader, show_tool_progress)
        return _run(store, investigation_id, settings, active, process, resume=False)


class DeviceError(ValueError):
    """A ``--device`` that torch does not know or that this machine does not have."""


def check_device(device: str) -> None:
    """Refuse a device torch cannot parse or this machine lacks, saying what to use instead."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise DeviceError(
            f"--device {device!r} is not a device name torch knows; use cpu, cuda, cuda:N or mps"
        ) from err
    if parsed.type == "cpu":
        return
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(
                f"--device {device!r}: no CUDA GPU is usable on this machine; use --device cpu"
            )
        if parsed.index is not None and parsed.index >= count:
            raise DeviceError(
                f"--device {device!r}: this machine has {count} CUDA GPU(s) "
                f"(cuda:0 … cuda:{count - 1}); pick one of them or use --device cpu"
            )
        return
    if parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError(f"--device {device!r}: MPS is not available here; use --device cpu")
        return
    raise DeviceError(f"--device {device!r} is not supported; use cpu, cuda, cuda:N or mps")


def load_model(
    model: str | None,
    device: str,
    loader: Callable[..., Any] | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Check the device, load the model (once per process) and describe it.

    A failure is a :class:`DeviceError` or a ``RetrieverLoadError`` whose message says what was
    wrong and what to do (a corrupt weights file included, never a raw library error).
    """
    from rankscope.tools.retrievers import RetrieverLoadError

    check_device(device)
    try:
        return _describe_model(model, device, loader, options)
    except RetrieverLoadError:
        raise
    except Exception as err:
        name = model or "all-MiniLM-L6-v2"
        text = f"{type(err).__module__} {err}".lower()
        hint = (
            "its weights file looks corrupt or truncated: download or save the model again"
            if any(word in text for word in ("safetensor", "deserializ", "pickle", "header"))
            else f"check the model's files and that it runs on --device {device}"
        )
        raise RetrieverLoadError(
            f"could not load the model {name!r} on {device}: {type(err).__name__}: {err}; {hint}"
        ) from err


def _fail_before_start(store: Store, investigation_id: int) -> None:
    """Mark an investigation whose run never started ``failed`` and drop its lease."""
    try:
        release(store, investigation_id)
    finally:
        store.set_investigation_status(investigation_id, "failed")


def _describe_model(
    model: str | None,
    device: str,
    loader: Callable[..., Any] | None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    from rankscope.agent.execution import shared_retriever

    retriever = shared_retriever(model, device, loader, options)
    described = dict(retriever.describe())
    if getattr(retriever, "random_weights", ()):
        described["random_weights"] = list(retriever.random_weights)
    return described


def resume(
    investigation_id: int,
    *,
    db: str | None = None,
    report_dir: Path = DEFAULT_REPORT_DIR,
    console: Console | None = None,
    quiet: bool = False,
    planner_factory: Callable[[], Planner] | None = None,
    retriever_loader: Callable[..., Any] | None = None,
    show_tool_progress: bool = False,
) -> RunResult:
    """Continue an investigation from its last checkpoint, with its stored settings; finished
    steps are not re-run."""
    progress = ProgressPrinter(console, quiet=quiet)
    url = database_url(db)
    refuse_in_memory(url)
    with open_store(url, create=False) as store:
        inv = store.get_investigation(investigation_id)
        try:
            verify_checkpoint(url, investigation_id)
        except Exception as err:
            reason = connection_lost(err)
            if reason is None:
                raise
            raise connection_lost_error(investigation_id, reason) from err
        claim(store, investigation_id)
        progress.investigation(investigation_id, inv.question, resumed=True)
        interrupted = store.mark_interrupted(
            investigation_id, "the process running it stopped before it finished"
        )
        if interrupted:
            progress.line(f"marked interrupted: experiments {interrupted} (they will be re-run)")
        if inv.status != "finished":
            store.set_investigation_status(investigation_id, "running")
        settings = settings_of(inv)
        progress.line(f"planner: {inv.planner} (as stored with the investigation)")
        planner = make_planner(
            store,
            investigation_id,
            settings,
            planner_factory,
            tokens_used=store.llm_usage(investigation_id).total_tokens,
        )
        process = _Process(url, report_dir, progress, retriever_loader, show_tool_progress)
        return _run(store, investigation_id, settings, planner, process, resume=True)

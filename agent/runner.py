"""Start and resume investigations: the store, the lab, the planner and the graph, wired together.

The command line (``agent/commands/investigate_cmd.py``) is a thin layer over :func:`investigate`
and :func:`resume`; tests call them directly.
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

from rankscope.agent.checkpoints import verify_checkpoint
from rankscope.agent.execution import Lab
from rankscope.agent.graph import invoke
from rankscope.agent.lease import claim, release
from rankscope.agent.nodes import GraphContext
from rankscope.agent.planners.base import Planner
from rankscope.agent.policy import StatsPolicy
from rankscope.agent.progress import ProgressPrinter
from rankscope.agent.settings import InvestigationSettings, save_settings, settings_of
from rankscope.agent.state import Budget
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
    name: str,
    llm_model: str | None,
    base_url: str | None,
    planner_factory: Callable[[], Planner] | None = None,
    protocol_pairs: int | None = None,
    max_tokens: int | None = None,
    llm_timeout_s: float | None = None,
    llm_retries: int | None = None,
    llm_context: int | None = None,
) -> Planner:
    """The planner of an investigation; LLM calls are stored with the investigation.

    ``max_tokens`` is the LLM token budget left to the investigation; ``llm_timeout_s`` and
    ``llm_retries`` (``None``: environment or defaults) bound each LLM request; ``llm_context``
    is the LLM's context window in tokens (``None``: asked of the server)."""
    if planner_factory is not None:
        return planner_factory()
    if name == "protocol":
        from rankscope.agent.planners.protocol import ProtocolPlanner

        policy = settings_of(store.get_investigation(investigation_id)).policy
        if protocol_pairs:
            return ProtocolPlanner(
                n_pairs=protocol_pairs, localise_pairs=2 * protocol_pairs, policy=policy
            )
        return ProtocolPlanner(policy=policy)
    from rankscope.agent.planners.llm import LLMPlanner

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

    return LLMPlanner(
        model=str(llm_model),
        base_url=base_url or os.environ.get("OPENAI_BASE_URL"),
        api_key=os.environ.get("OPENAI_API_KEY"),
        recorder=recorder,
        max_tokens_budget=max_tokens,
        timeout_s=llm_timeout_s,
        max_retries=llm_retries,
        context_tokens=llm_context,
    )


@dataclass
class RunResult:
    investigation_id: int
    status: str
    report_path: str | None
    stop_reason: str | None


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
    db_url: str,
    investigation_id: int,
    planner: Planner,
    budget: Budget,
    progress: ProgressPrinter,
    report_dir: Path,
    resume: bool,
    retriever_loader: Callable[..., Any] | None,
    show_tool_progress: bool,
) -> RunResult:
    settings = settings_of(store.get_investigation(investigation_id))
    lab = Lab(
        store=store,
        investigation_id=investigation_id,
        model=settings.model_arg,
        data_spec=settings.data_arg,
        device=settings.device,
        progress=show_tool_progress,
        retriever_loader=retriever_loader,
        model_options=settings.model_options,
        shards=settings.shards,
    )
    context = GraphContext(
        store=store,
        lab=lab,
        planner=planner,
        budget=budget,
        progress=progress,
        report_dir=report_dir / f"investigation-{investigation_id}",
        write_report=_write_report,
    )
    try:
        with _sigterm_as_interrupt():
            final = invoke(context, db_url, investigation_id, resume=resume)
    finally:
        lab.close()
        release(store, investigation_id)
    inv = store.get_investigation(investigation_id)
    return RunResult(
        investigation_id=investigation_id,
        status=inv.status,
        report_path=inv.report_path,
        stop_reason=final.get("stop_reason"),
    )


def investigate(
    question: str,
    *,
    model: str | None = None,
    data: str | None = None,
    planner: str | None = None,
    llm_model: str | None = None,
    base_url: str | None = None,
    budget: Budget | None = None,
    db: str | None = None,
    report_dir: Path = DEFAULT_REPORT_DIR,
    device: str = "cpu",
    console: Console | None = None,
    quiet: bool = False,
    planner_factory: Callable[[], Planner] | None = None,
    retriever_loader: Callable[..., Any] | None = None,
    show_tool_progress: bool = False,
    protocol_pairs: int | None = None,
    model_options: dict[str, Any] | None = None,
    llm_timeout_s: float | None = None,
    llm_retries: int | None = None,
    llm_context: int | None = None,
    policy: StatsPolicy | None = None,
    config_extra: dict[str, Any] | None = None,
    on_started: Callable[[int], None] | None = None,
    shards: int | None = None,
) -> RunResult:
    """Start an investigation and run it to its end (or to an exception, which propagates).

    ``model_options`` go to the model loader (``allow_random_weights``, ``label``);
    ``llm_timeout_s``, ``llm_retries`` and ``llm_context`` are stored with the investigation, so
    ``resume`` uses them too; ``policy`` is the statistical policy the verdict rules apply (default
    :class:`StatsPolicy`), stored with the investigation; ``config_extra`` adds keys to the
    config stored as the row is created (a sweep's id and cell, :mod:`rankscope.agent.sweep`);
    ``shards`` splits each activation_patching grid across that many Ray actors (stored).

    The device and the model are checked before the investigation's row is created, so a bad one
    leaves nothing behind; a failure after the row exists but before the graph runs marks it
    ``failed``. ``on_started`` gets the id once the run has started (from then on
    ``rankscope resume ID`` can continue it)."""
    progress = ProgressPrinter(console, quiet=quiet)
    budget = budget or Budget()
    choice = (
        PlannerChoice("protocol", "a planner object was given")
        if planner_factory is not None
        else choose_planner(planner, llm_model)
    )
    given = planner_factory() if planner_factory is not None else None
    url = database_url(db)
    refuse_in_memory(url)
    described = load_model(model, device, retriever_loader, model_options)
    with open_store(url) as store:
        planner_name = getattr(given, "name", None) or choice.name
        investigation_id = store.create_investigation(
            question,
            model or "all-MiniLM-L6-v2",
            data or "builtin",
            planner_name,
            llm_model=llm_model if choice.name == "llm" else None,
            budget=budget.model_dump(),
            config=InvestigationSettings(
                model_arg=model,
                data_arg=data,
                device=device,
                base_url=base_url if choice.name == "llm" else None,
                planner_why=choice.why,
                protocol_pairs=protocol_pairs,
                model_options=dict(model_options or {}),
                shards=shards,
                llm_timeout_s=llm_timeout_s,
                llm_retries=llm_retries,
                llm_context=llm_context,
                policy=policy or StatsPolicy(),
            ).model_dump(mode="json")
            | dict(config_extra or {}),
        )
        try:
            claim(store, investigation_id)
            progress.investigation(investigation_id, question)
            progress.line(f"planner: {choice.name} ({choice.why})")
            settings = settings_of(store.get_investigation(investigation_id))
            settings.model = described
            if settings.model.get("random_weights"):
                settings.notes.append(
                    f"{len(settings.model['random_weights'])} weights the score depends on were "
                    "randomly initialised (--allow-random-weights): findings describe a partly "
                    "random model"
                )
            save_settings(store, investigation_id, settings)
            active = given or make_planner(
                store,
                investigation_id,
                choice.name,
                llm_model,
                base_url,
                protocol_pairs=protocol_pairs,
                max_tokens=budget.max_tokens,
                llm_timeout_s=llm_timeout_s,
                llm_retries=llm_retries,
                llm_context=llm_context,
            )
        except BaseException:
            _fail_before_start(store, investigation_id)
            raise
        if on_started is not None:
            on_started(investigation_id)
        return _run(
            store,
            url,
            investigation_id,
            active,
            budget,
            progress,
            report_dir,
            False,
            retriever_loader,
            show_tool_progress,
        )


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
    wrong and what to do (a corrupt weights file no longer escapes as a raw library error).
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
    """Continue an investigation from its last checkpoint; finished steps are not re-run."""
    progress = ProgressPrinter(console, quiet=quiet)
    url = database_url(db)
    refuse_in_memory(url)
    with open_store(url, create=False) as store:
        inv = store.get_investigation(investigation_id)
        verify_checkpoint(url, investigation_id)
        claim(store, investigation_id)
        progress.investigation(investigation_id, inv.question, resumed=True)
        interrupted = store.mark_interrupted(
            investigation_id, "the process running it stopped before it finished"
        )
        if interrupted:
            progress.line(f"marked interrupted: experiments {interrupted} (they will be re-run)")
        if inv.status != "finished":
            store.set_investigation_status(investigation_id, "running")
        budget = Budget.model_validate(inv.budget)
        progress.line(f"planner: {inv.planner} (as stored with the investigation)")
        planner = make_planner(
            store,
            investigation_id,
            inv.planner,
            inv.llm_model,
            settings_of(inv).base_url,
            planner_factory,
            protocol_pairs=settings_of(inv).protocol_pairs,
            max_tokens=None
            if budget.max_tokens is None
            else max(1, budget.max_tokens - store.llm_usage(investigation_id).total_tokens),
            llm_timeout_s=settings_of(inv).llm_timeout_s,
            llm_retries=settings_of(inv).llm_retries,
            llm_context=settings_of(inv).llm_context,
        )
        return _run(
            store,
            url,
            investigation_id,
            planner,
            budget,
            progress,
            report_dir,
            True,
            retriever_loader,
            show_tool_progress,
        )

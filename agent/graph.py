"""The investigation graph: plan → preregister → run_tool → record → assess → (replicate) → … → report.

A LangGraph ``StateGraph`` whose checkpoints live in the investigation's own database
(``SqliteSaver`` for SQLite URLs, in the same file; ``PostgresSaver`` for PostgreSQL), with the
investigation id as ``thread_id``. Every invocation sets ``recursion_limit`` (from the budget) and
``durability="sync"``, so a killed process resumes from the last finished node. Nodes that write
to the store are idempotent: on resume they find what the killed run already recorded (a
hypothesis, a finished experiment, a verdict) instead of doing it again.

Nodes
    plan        checks the budgets, builds the ledger, asks the planner; applies the guard rails
                (no criterion, unknown tool, invalid arguments, a metric the tool does not produce,
                a split that disagrees with the criterion, a repeated (tool, args, criterion)) and
                turns each rejection into feedback for the planner's next call.
    preregister stores the hypothesis with its criterion before anything runs.
    run_tool    runs the validated call through ``rankscope.agent.execution`` (one transaction per result).
    record      reads the stored evidence back and compares it with the criterion on this split.
    assess      decides: replicate (discovery met with exact evidence) or apply the verdict rules,
                store the verdict and a narrative whose citations are checked.
    replicate   the same call on the held-out split with another seed, as a second experiment of
                the same hypothesis.
    report      writes the Markdown and HTML report and closes the investigation.

Tool output (summaries, tables, documents) is data for the planner and the report; the graph never
reads it as instructions.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy.engine import make_url

from rankscope.agent.calls import CallRejected, available_tools, check_call
from rankscope.agent.execution import Lab
from rankscope.agent.llm_client import LLMBudgetExceeded, LLMError
from rankscope.agent.planners.base import (
    Criterion,
    Ledger,
    LedgerEntry,
    Narrative,
    Planner,
    Proposal,
    Stop,
)
from rankscope.agent.progress import ProgressPrinter
from rankscope.agent.verdicts import Decision, SplitResult, decide, evaluate_split
from rankscope.experiments_db.jsonutil import canonical_json
from rankscope.experiments_db.records import Criterion as StoredCriterion
from rankscope.experiments_db.records import HypothesisNode, InvestigationTree
from rankscope.experiments_db.repository import Store
from rankscope.tools.registry import get_tool

NODES_PER_STEP = 10
SUMMARY_CHARS = 1500
KEY_METRICS = 40
TOP_PER_FAMILY = 8


class Budget(BaseModel):
    """Explicit limits of one investigation."""

    max_steps: int = Field(12, ge=1, description="Planner proposals (accepted or rejected).")
    max_tool_calls: int = Field(24, ge=1, description="Experiments run, replications included.")
    max_tokens: int | None = Field(200_000, ge=1, description="LLM tokens (prompt + completion).")
    max_minutes: float = Field(30.0, gt=0, description="Wall time of the graph, across resumes.")
    max_repeats: int = Field(3, ge=1, description="Repeated proposals tolerated before stopping.")
    max_invalid: int = Field(3, ge=1, description="Consecutive rejected proposals before stopping.")

    def recursion_limit(self) -> int:
        """The LangGraph recursion limit: every step may visit each node of one cycle."""
        return self.max_steps * NODES_PER_STEP + 10


class State(TypedDict, total=False):
    """The checkpointed graph state (plain JSON data)."""

    investigation_id: int
    steps: int
    tool_calls: int
    elapsed_s: float
    feedback: list[str]
    fingerprints: dict[str, int]
    repeats: int
    invalid_streak: int
    proposal: dict[str, Any] | None
    current: dict[str, Any] | None
    stop_reason: str | None
    report_path: str | None


def initial_state(investigation_id: int) -> State:
    return State(
        investigation_id=investigation_id,
        steps=0,
        tool_calls=0,
        elapsed_s=0.0,
        feedback=[],
        fingerprints={},
        repeats=0,
        invalid_streak=0,
        proposal=None,
        current=None,
        stop_reason=None,
        report_path=None,
    )


def fingerprint(tool: str, args: dict[str, Any], criterion: Criterion) -> str:
    """Identity of a proposal for repeat detection: tool, validated arguments and criterion."""
    payload = {"tool": tool, "args": args, "criterion": criterion.model_dump(mode="json")}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def has_field(tool_name: str, name: str) -> bool:
    return name in get_tool(tool_name).Args.model_fields


# -- ledger -------------------------------------------------------------------------------------


def _family(key: str) -> str | None:
    """``effect`` for ``effect[L1.H6]``; ``effect|rel`` for ``effect[L1.H6|rel=2]``."""
    match = re.match(r"^([^\[\]]+)\[([^\[\]]+)\]$", key)
    if not match:
        return None
    inner = match.group(2)
    return match.group(1) + ("|" + inner.split("|", 1)[1].split("=")[0] if "|" in inner else "")


def key_metrics(metrics: dict[str, Any], metric: str | None = None) -> dict[str, Any]:
    """A compact view of a tool's metrics: the criterion's metric with its CI and p-value first,
    the largest entries of each per-component family, then the scalar metrics."""
    out: dict[str, Any] = {}
    if metric:
        from rankscope.agent.verdicts import ci_keys, p_keys

        low, high = ci_keys(metric)
        for key in [metric, *low, *high, *p_keys(metric)]:
            if key in metrics:
                out[key] = metrics[key]
    families: dict[str, list[tuple[str, Any]]] = {}
    for key, value in metrics.items():
        fam = _family(key)
        if fam is None:
            if len(out) < KEY_METRICS:
                out.setdefault(key, value)
        else:
            families.setdefault(fam, []).append((key, value))
    for items in families.values():
        ranked = sorted(
            items,
            key=lambda kv: -abs(kv[1]) if isinstance(kv[1], int | float) else 0.0,
        )
        for key, value in ranked[:TOP_PER_FAMILY]:
            if len(out) >= KEY_METRICS:
                break
            out.setdefault(key, value)
    return {k: (v if isinstance(v, int | float) or v is None else None) for k, v in out.items()}


def planner_criterion(node: HypothesisNode) -> Criterion:
    c = node.criterion
    return Criterion(
        metric=c.metric,
        direction=c.direction,
        threshold=c.threshold,
        alpha=c.alpha,
        split=c.split,
        correction=c.correction,
        n_tests=c.n_tests,
    )


def split_of(args: dict[str, Any]) -> str:
    return str(args.get("split", "discovery"))


def ledger_entry(node: HypothesisNode) -> LedgerEntry:
    finished = [e for e in node.experiments if e.status == "finished" and e.evidence]
    discovery = next((e for e in finished if split_of(e.args) != "holdout"), None)
    holdout = next((e for e in finished if split_of(e.args) == "holdout"), None)
    if node.verdicts:
        status = node.verdicts[-1].status
    elif node.experiments and all(e.status == "failed" for e in node.experiments):
        status = "failed"
    else:
        status = "pending"
    metric = node.criterion.metric
    evidence_ids = [ev.id for e in finished for ev in e.evidence]
    return LedgerEntry(
        hypothesis_id=node.id,
        hypothesis=node.text,
        tool=node.criterion.tool,
        args=node.criterion.tool_args,
        criterion=planner_criterion(node),
        components=list(node.components),
        status=status,
        key_metrics=key_metrics(discovery.evidence[0].metrics, metric) if discovery else {},
        summary=(discovery.evidence[0].summary[:SUMMARY_CHARS] if discovery else "")
        + ("" if discovery else "; ".join(e.error or "" for e in node.experiments)),
        evidence_ids=evidence_ids,
        replication=key_metrics(holdout.evidence[0].metrics, metric) if holdout else None,
    )


def build_ledger(
    tree: InvestigationTree, feedback: list[str], budget: Budget, state: State
) -> Ledger:
    inv = tree.investigation
    return Ledger(
        investigation_id=inv.id,
        question=inv.question,
        model=dict(inv.config.get("model") or {"model_id": inv.model_id}),
        data=inv.data_spec,
        tools=available_tools(),
        entries=[ledger_entry(h) for h in tree.hypotheses],
        feedback=list(feedback),
        steps_left=max(0, budget.max_steps - state.get("steps", 0)),
        tool_calls_left=max(0, budget.max_tool_calls - state.get("tool_calls", 0)),
    )


# -- narrative citations ------------------------------------------------------------------------

_CITE = re.compile(r"(?:\bE|evidence\s+(?:id\s+)?#?)(\d+)\b", re.IGNORECASE)


def cited_in_text(text: str) -> list[int]:
    """Evidence ids a narrative cites in its text (``E12``, ``evidence 12``, ``evidence #12``)."""
    return sorted({int(m) for m in _CITE.findall(text)})


def rule_narrative(text: str, decision: Decision, evidence_ids: list[int]) -> Narrative:
    cites = ", ".join(f"E{i}" for i in evidence_ids) or "none"
    return Narrative(
        text=f"{text} — {decision.status}: {decision.reason}. Evidence: {cites}.",
        cited_evidence_ids=list(evidence_ids),
    )


# -- dependencies -------------------------------------------------------------------------------


@dataclass
class Deps:
    """What the nodes use besides the state."""

    store: Store
    lab: Lab
    planner: Planner
    budget: Budget
    progress: ProgressPrinter
    report_dir: Path
    write_report: Callable[[Store, int, Path], Path] | None = None
    clock: Callable[[], float] = time.monotonic
    decided_by: str = field(default="rules")


def _add_note(store: Store, investigation_id: int, note: str) -> None:
    config = dict(store.get_investigation(investigation_id).config)
    notes = list(config.get("notes", []))
    if note not in notes:
        notes.append(note)
    config["notes"] = notes
    store.update_investigation_config(investigation_id, config)


def _planner_notes(deps: Deps) -> list[str]:
    drain = getattr(deps.planner, "drain_notes", None)
    return list(drain()) if callable(drain) else []


def build_graph(deps: Deps) -> StateGraph:
    """The uncompiled investigation graph (compile it with a checkpointer)."""
    store, budget, progress = deps.store, deps.budget, deps.progress

    def timed(fn: Callable[[State], dict[str, Any]]) -> Callable[[State], dict[str, Any]]:
        def node(state: State) -> dict[str, Any]:
            started = deps.clock()
            update = fn(state)
            update["elapsed_s"] = state.get("elapsed_s", 0.0) + (deps.clock() - started)
            return update

        node.__name__ = fn.__name__
        return node

    def reject(state: State, message: str, *, repeat: bool = False) -> dict[str, Any]:
        progress.feedback(message)
        feedback = [*state.get("feedback", []), message]
        update: dict[str, Any] = {"feedback": feedback, "proposal": None}
        if repeat:
            repeats = state.get("repeats", 0) + 1
            update["repeats"] = repeats
            if repeats >= budget.max_repeats:
                update["stop_reason"] = (
                    f"the planner repeated already-tested proposals {repeats} times "
                    f"(limit {budget.max_repeats})"
                )
        else:
            streak = state.get("invalid_streak", 0) + 1
            update["invalid_streak"] = streak
            if streak >= budget.max_invalid:
                update["stop_reason"] = (
                    f"{streak} consecutive proposals were rejected (limit {budget.max_invalid})"
                )
        return update

    def budget_exhausted(state: State) -> str | None:
        if state.get("steps", 0) >= budget.max_steps:
            return f"step budget reached ({budget.max_steps} planner steps)"
        if state.get("tool_calls", 0) >= budget.max_tool_calls:
            return f"tool-call budget reached ({budget.max_tool_calls} experiments)"
        if budget.max_tokens is not None:
            used = store.llm_usage(state["investigation_id"]).total_tokens
            if used >= budget.max_tokens:
                return f"LLM token budget reached ({used} of {budget.max_tokens} tokens)"
        if state.get("elapsed_s", 0.0) >= budget.max_minutes * 60:
            return f"wall-time budget reached ({budget.max_minutes:g} minutes)"
        return None

    def plan(state: State) -> dict[str, Any]:
        inv_id = state["investigation_id"]
        exhausted = budget_exhausted(state)
        if exhausted:
            progress.stop(exhausted)
            return {"stop_reason": exhausted}
        tree = store.investigation_tree(inv_id, include_llm_calls=False)
        ledger = build_ledger(tree, state.get("feedback", []), budget, state)
        try:
            raw = deps.planner.propose(ledger)
        except LLMBudgetExceeded as err:
            progress.stop(str(err))
            return {"stop_reason": f"LLM token budget: {err}"}
        update: dict[str, Any] = {"steps": state.get("steps", 0) + 1}
        notes = _planner_notes(deps)
        for note in notes:
            progress.feedback(note)
            _add_note(store, inv_id, note)
        state_fb = [*state.get("feedback", []), *notes]
        if isinstance(raw, Stop):
            progress.stop(f"the planner stopped: {raw.reason}")
            return {**update, "feedback": state_fb, "stop_reason": f"planner: {raw.reason}"}
        state = {**state, "feedback": state_fb}
        if isinstance(raw, dict):
            try:
                raw = Proposal.model_validate(raw)
            except ValidationError as err:
                return {**update, **reject(state, f"rejected proposal: {err}")}
        if not isinstance(raw, Proposal):
            return {
                **update,
                **reject(state, f"rejected: the planner returned {type(raw).__name__}"),
            }
        criterion = getattr(raw, "criterion", None)
        if isinstance(criterion, dict):
            try:
                criterion = Criterion.model_validate(criterion)
            except ValidationError as err:
                return {**update, **reject(state, f"rejected: invalid criterion: {err}")}
        if not isinstance(criterion, Criterion):
            return {
                **update,
                **reject(
                    state,
                    f"rejected {raw.tool!r} proposal: it has no pre-registered criterion; every "
                    "hypothesis needs metric, direction, threshold and alpha before it runs",
                ),
            }
        raw_args = dict(raw.args) if isinstance(raw.args, dict) else raw.args
        try:
            check_call(raw.tool, raw_args if isinstance(raw_args, dict) else {})
            if isinstance(raw_args, dict) and has_field(raw.tool, "split"):
                given = raw_args.get("split")
                if given is not None and given != criterion.split:
                    raise CallRejected(
                        f"args.split={given!r} disagrees with the criterion's split "
                        f"{criterion.split!r}; the tool runs on the pre-registered split"
                    )
                raw_args["split"] = criterion.split
            args = check_call(raw.tool, raw_args, criterion.metric)
        except CallRejected as err:
            return {**update, **reject(state, f"rejected call: {err}")}
        args_json = args.model_dump(mode="json")
        fp = fingerprint(raw.tool, args_json, criterion)
        seen = state.get("fingerprints", {})
        if fp in seen:
            return {
                **update,
                **reject(
                    state,
                    f"repeated proposal: {raw.tool} with the same arguments and criterion was "
                    f"already tested as hypothesis H{seen[fp]}; propose something new",
                    repeat=True,
                ),
            }
        proposal = {
            "hypothesis": raw.hypothesis,
            "rationale": raw.rationale,
            "tool": raw.tool,
            "args": args_json,
            "criterion": criterion.model_dump(mode="json"),
            "components": list(raw.components),
            "parent_hypothesis_id": raw.parent_hypothesis_id,
            "fingerprint": fp,
        }
        return {**update, "feedback": state_fb, "proposal": proposal, "invalid_streak": 0}

    def preregister(state: State) -> dict[str, Any]:
        inv_id = state["investigation_id"]
        prop = state["proposal"] or {}
        stored = StoredCriterion(tool=prop["tool"], tool_args=prop["args"], **prop["criterion"])
        known = set(state.get("fingerprints", {}).values())
        existing = next(
            (
                h.id
                for h in store.list_hypotheses(inv_id)
                if h.id not in known and h.text == prop["hypothesis"] and h.criterion == stored
            ),
            None,
        )
        parent = prop.get("parent_hypothesis_id")
        if parent is not None and parent not in known:
            parent = None
        hid = existing or store.preregister_hypothesis(
            inv_id,
            prop["hypothesis"],
            stored,
            rationale=prop.get("rationale", ""),
            parent_id=parent,
            components=prop.get("components", []),
        )
        progress.hypothesis(hid, prop["hypothesis"], prop["criterion"])
        current = {
            "hypothesis_id": hid,
            "phase": "discovery",
            "tool": prop["tool"],
            "args": prop["args"],
            "criterion": prop["criterion"],
            "components": prop.get("components", []),
            "text": prop["hypothesis"],
            "results": {},
            "experiments": {},
        }
        return {
            "proposal": None,
            "current": current,
            "fingerprints": {**state.get("fingerprints", {}), prop["fingerprint"]: hid},
        }

    def run_tool(state: State) -> dict[str, Any]:
        inv_id = state["investigation_id"]
        cur = dict(state["current"] or {})
        phase, args, hid = cur["phase"], cur["args"], cur["hypothesis_id"]
        done = next(
            (
                e
                for e in store.list_experiments(inv_id, hypothesis_id=hid, status="finished")
                if e.args == args and e.tool == cur["tool"]
            ),
            None,
        )
        tool_calls = state.get("tool_calls", 0)
        progress.tool_call(hid, cur["tool"], split_of(args), args)
        if done is not None:
            evidence = store.investigation_tree(inv_id, include_llm_calls=False).evidence()
            ev = next(e for e in evidence.values() if e.experiment_id == done.id)
            cur["experiments"] = {**cur["experiments"], phase: done.id}
            cur["evidence"] = {**cur.get("evidence", {}), phase: ev.id}
            numbers = key_metrics(ev.metrics, cur["criterion"]["metric"])
            progress.tool_result(
                done.id, "finished", 0.0, dict(list(numbers.items())[:6]), reused=True
            )
            return {"current": cur, "tool_calls": tool_calls + 1}
        if tool_calls >= budget.max_tool_calls:
            cur["skipped"] = {**cur.get("skipped", {}), phase: "tool-call budget exhausted"}
            return {"current": cur}
        outcome = deps.lab.run_experiment(hid, cur["tool"], args)
        cur["experiments"] = {**cur["experiments"], phase: outcome.experiment_id}
        if outcome.status == "finished":
            cur["evidence"] = {**cur.get("evidence", {}), phase: outcome.evidence_id}
        else:
            cur["errors"] = {**cur.get("errors", {}), phase: outcome.error}
        numbers = key_metrics(outcome.metrics, cur["criterion"]["metric"])
        progress.tool_result(
            outcome.experiment_id,
            outcome.status,
            outcome.duration_s,
            dict(list(numbers.items())[:6]),
            outcome.error,
            reused=outcome.reused,
        )
        return {"current": cur, "tool_calls": tool_calls + 1}

    def record(state: State) -> dict[str, Any]:
        cur = dict(state["current"] or {})
        phase = cur["phase"]
        evidence_id = cur.get("evidence", {}).get(phase)
        update: dict[str, Any] = {"current": cur}
        if evidence_id is None:
            return update
        ev = store.get_evidence([evidence_id])[0]
        criterion = Criterion.model_validate(cur["criterion"])
        result = evaluate_split(
            criterion,
            ev.metrics,
            split=split_of(cur["args"]),
            approximate=ev.approximate,
            components=cur.get("components", []),
            evidence_id=ev.id,
            experiment_id=ev.experiment_id,
        )
        cur["results"] = {**cur.get("results", {}), phase: result.model_dump(mode="json")}
        progress.split_result(result.split, result.outcome, result.reason)
        if criterion.metric not in ev.metrics:
            produced = ", ".join(sorted(ev.metrics)[:30])
            message = (
                f"H{cur['hypothesis_id']}: tool {cur['tool']!r} did not produce the metric "
                f"{criterion.metric!r}; it produced: {produced}"
            )
            progress.feedback(message)
            update["feedback"] = [*state.get("feedback", []), message]
        return update

    def needs_replication(cur: dict[str, Any]) -> bool:
        result = cur.get("results", {}).get("discovery")
        return (
            cur.get("phase") == "discovery"
            and result is not None
            and result["outcome"] == "met"
            and not result["approximate"]
        )

    def assess(state: State) -> dict[str, Any]:
        inv_id = state["investigation_id"]
        cur = dict(state["current"] or {})
        if needs_replication(cur):
            return {"current": cur}
        hid = cur["hypothesis_id"]
        results = cur.get("results", {})
        discovery = (
            SplitResult.model_validate(results["discovery"]) if "discovery" in results else None
        )
        holdout = SplitResult.model_validate(results["holdout"]) if "holdout" in results else None
        note = None
        if discovery is not None and discovery.outcome == "met" and holdout is None:
            note = (
                cur.get("skipped", {}).get("holdout")
                or cur.get("errors", {}).get("holdout")
                or None
            )
        if discovery is None:
            note = cur.get("skipped", {}).get("discovery") or cur.get("errors", {}).get("discovery")
        decision = decide(discovery, holdout, replication_note=note)
        if cur.get("seed_only_replication"):
            decision.notes.append(
                f"tool {cur['tool']!r} has no held-out split: replicated with another seed only"
            )
        existing = store.verdicts(hid)
        if existing:
            verdict = existing[-1]
            progress.verdict(hid, verdict.status, str(verdict.criterion_result.get("reason", "")))
            return {"current": None}
        evidence_ids = sorted(cur.get("evidence", {}).values())
        tree = store.investigation_tree(inv_id, include_llm_calls=False)
        node = next(h for h in tree.hypotheses if h.id == hid)
        entry = ledger_entry(node).model_copy(update={"status": decision.status})
        ledger = build_ledger(tree, state.get("feedback", []), budget, state)
        try:
            narrative = deps.planner.narrate(ledger, entry)
        except LLMError as err:
            decision.notes.append(f"the planner could not write the narrative ({err})")
            narrative = rule_narrative(cur["text"], decision, evidence_ids)
        cited = sorted(set(narrative.cited_evidence_ids) | set(cited_in_text(narrative.text)))
        missing = store.missing_evidence(cited, investigation_id=inv_id)
        if missing:
            message = (
                f"H{hid}: the narrative cited evidence {missing} that is not stored in this "
                "investigation; it was replaced by the rule-written narrative"
            )
            decision.notes.append(message)
            progress.feedback(message)
            narrative = rule_narrative(cur["text"], decision, evidence_ids)
            cited = narrative.cited_evidence_ids
        store.record_verdict(
            hid,
            decision.status,
            criterion_result=decision.criterion_result(),
            cited_evidence_ids=cited,
            decided_by=f"{deps.decided_by}; narrative: {getattr(deps.planner, 'name', 'planner')}",
            narrative=narrative.text,
        )
        progress.verdict(hid, decision.status, decision.reason)
        return {"current": None}

    def replicate(state: State) -> dict[str, Any]:
        cur = dict(state["current"] or {})
        args = dict(cur["args"])
        if has_field(cur["tool"], "split"):
            args["split"] = "holdout"
        else:
            cur["seed_only_replication"] = True
        args["seed"] = int(args.get("seed", 0)) + 1
        args = check_call(cur["tool"], args).model_dump(mode="json")
        cur.update(phase="holdout", args=args)
        return {"current": cur}

    def report(state: State) -> dict[str, Any]:
        inv_id = state["investigation_id"]
        reason = state.get("stop_reason") or "done"
        _add_note(store, inv_id, f"stopped: {reason}")
        store.set_investigation_status(inv_id, "finished")
        path = None
        if deps.write_report is not None:
            path = deps.write_report(store, inv_id, deps.report_dir)
            store.set_report_path(inv_id, path)
        return {"report_path": str(path) if path else None}

    def after_plan(state: State) -> str:
        if state.get("stop_reason"):
            return "report"
        return "preregister" if state.get("proposal") else "plan"

    def after_assess(state: State) -> str:
        return "replicate" if state.get("current") else "plan"

    graph = StateGraph(State)
    for fn in (plan, preregister, run_tool, record, assess, replicate, report):
        graph.add_node(fn.__name__, timed(fn))
    graph.add_edge(START, "plan")
    graph.add_conditional_edges("plan", after_plan, ["report", "preregister", "plan"])
    graph.add_edge("preregister", "run_tool")
    graph.add_edge("run_tool", "record")
    graph.add_edge("record", "assess")
    graph.add_conditional_edges("assess", after_assess, ["replicate", "plan"])
    graph.add_edge("replicate", "run_tool")
    graph.add_edge("report", END)
    return graph


# -- checkpointer -------------------------------------------------------------------------------


def postgres_conninfo(url: str) -> str:
    """A libpq connection string for a SQLAlchemy PostgreSQL URL."""
    parsed = make_url(url).set(drivername="postgresql")
    return parsed.render_as_string(hide_password=False)


@contextmanager
def open_checkpointer(db_url: str) -> Iterator[BaseCheckpointSaver]:
    """The checkpointer in the investigation's database (tables beside the store's)."""
    parsed = make_url(db_url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        from langgraph.checkpoint.sqlite import SqliteSaver

        database = parsed.database or ":memory:"
        conn = sqlite3.connect(database, check_same_thread=False, timeout=30.0)
        try:
            saver = SqliteSaver(conn)
            saver.setup()
            yield saver
        finally:
            conn.close()
    elif backend == "postgresql":
        from langgraph.checkpoint.postgres import PostgresSaver

        with PostgresSaver.from_conn_string(postgres_conninfo(db_url)) as saver:
            saver.setup()
            yield saver
    else:
        raise ValueError(f"no checkpointer for database backend {backend!r}")


def run_config(investigation_id: int, budget: Budget) -> dict[str, Any]:
    return {
        "configurable": {"thread_id": str(investigation_id)},
        "recursion_limit": budget.recursion_limit(),
    }


def invoke(deps: Deps, db_url: str, investigation_id: int, *, resume: bool) -> State:
    """Run (or resume) the graph to its end; returns the final state.

    On any exception (KeyboardInterrupt included) the investigation's running experiments are
    marked interrupted, the investigation too, and the exception propagates; the checkpoint and
    everything recorded stay, so ``resume`` continues from the last finished node.
    """
    with open_checkpointer(db_url) as saver:
        graph = build_graph(deps).compile(checkpointer=saver)
        config = run_config(investigation_id, deps.budget)
        snapshot = graph.get_state(config)
        if resume and snapshot.values and not snapshot.next:
            return State(**snapshot.values)
        payload = None if (resume and snapshot.values) else initial_state(investigation_id)
        try:
            final = graph.invoke(payload, config, durability="sync")
        except BaseException as exc:
            deps.store.mark_interrupted(
                investigation_id, f"interrupted: {type(exc).__name__}: {exc}"[:500]
            )
            deps.store.set_investigation_status(investigation_id, "interrupted")
            raise
        return State(**final)

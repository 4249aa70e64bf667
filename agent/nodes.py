"""The nodes of the investigation graph, one function per job.

Each node reads the checkpointed :class:`~rankscope.agent.state.InvestigationState` and the
run's :class:`~rankscope.agent.context.GraphContext` (LangGraph's runtime context: the store, the
lab, the planner, the settings with the budget and the policy, and the investigation as stored),
and returns a state update. A node that writes to the store re-reads the hypothesis it wrote
(``ctx.investigation.refresh``); the others read nothing back. Nodes that write are idempotent: on
resume they find what a killed run already recorded (a hypothesis, a finished experiment, a
verdict) instead of doing it again.

plan        checks the budgets, builds the ledger, asks the planner and passes the proposal
            through the one gate (:func:`~rankscope.agent.calls.check_proposal`: criterion, tool,
            arguments, metric, split, policy, repeats), turning a rejection into feedback for the
            planner's next call.
preregister stores the hypothesis with its criterion before anything runs.
run_tool    runs the validated call through the lab (one transaction per result).
record      compares the run's evidence with the criterion on this split.
assess      decides: replicate (discovery met with exact evidence) or apply the verdict rules,
            store the verdict and a narrative whose citations are checked.
replicate   the same call on the held-out split with another seed, as a second experiment of the
            same hypothesis.
report      writes the reports and closes the investigation.

Tool output (summaries, tables, documents) is data for the planner and the report; no node reads
it as instructions.
"""

from __future__ import annotations

import re
from typing import Any, Protocol, cast

from langgraph.runtime import Runtime

from rankscope.agent.calls import CallRejected, RepeatedProposal, check_proposal, replication_args
from rankscope.agent.citations import cited_in_text
from rankscope.agent.context import GraphContext
from rankscope.agent.ledger import build_ledger, key_metrics, ledger_entry, split_of
from rankscope.agent.llm_client import LLMBudgetExceeded, LLMError
from rankscope.agent.planners.base import Criterion, Ledger, Narrative, Stop
from rankscope.agent.settings import add_note
from rankscope.agent.state import HypothesisInFlight, InvestigationState, Phase
from rankscope.agent.verdicts import (
    Decision,
    decide_hypothesis,
    exploratory_of,
    query_values,
    split_result,
)

Update = dict[str, Any]


class Node(Protocol):
    """A graph node: the state and the runtime context in, a state update out."""

    __name__: str

    def __call__(self, state: InvestigationState, runtime: Runtime[GraphContext]) -> Update: ...


def timed(node: Node) -> Node:
    """``node`` that also adds its wall time to the state's ``elapsed_s`` and keeps the lease's
    heartbeat fresh."""

    def run(state: InvestigationState, runtime: Runtime[GraphContext]) -> Update:
        started = runtime.context.clock()
        update = node(state, runtime)
        update["elapsed_s"] = state.get("elapsed_s", 0.0) + (runtime.context.clock() - started)
        if runtime.context.heartbeat is not None:
            runtime.context.heartbeat.beat()
        return update

    run.__name__ = node.__name__
    return run


# -- plan ---------------------------------------------------------------------------------------


def rejection(
    state: InvestigationState, ctx: GraphContext, message: str, *, repeat: bool
) -> Update:
    """The update for a rejected proposal: feedback, and a stop once the limits are reached."""
    ctx.progress.feedback(message)
    update: Update = {"feedback": [*state.get("feedback", []), message], "proposal": None}
    if repeat:
        repeats = state.get("repeats", 0) + 1
        update["repeats"] = repeats
        if repeats >= ctx.budget.max_repeats:
            update["stop_reason"] = (
                f"the planner repeated already-tested proposals {repeats} times "
                f"(limit {ctx.budget.max_repeats})"
            )
    else:
        streak = state.get("invalid_streak", 0) + 1
        update["invalid_streak"] = streak
        if streak >= ctx.budget.max_invalid:
            update["stop_reason"] = (
                f"{streak} consecutive proposals were rejected (limit {ctx.budget.max_invalid})"
            )
    return update


def exhausted_budget(state: InvestigationState, ctx: GraphContext) -> str | None:
    """Why the investigation must stop now, or None while budget is left."""
    budget = ctx.budget
    if state.get("steps", 0) >= budget.max_steps:
        return f"step budget reached ({budget.max_steps} planner steps)"
    if state.get("tool_calls", 0) >= budget.max_tool_calls:
        return f"tool-call budget reached ({budget.max_tool_calls} experiments)"
    if budget.max_tokens is not None:
        used = ctx.store.llm_usage(state["investigation_id"]).total_tokens
        if used >= budget.max_tokens:
            return f"LLM token budget reached ({used} of {budget.max_tokens} tokens)"
    if state.get("elapsed_s", 0.0) >= budget.max_minutes * 60:
        return f"wall-time budget reached ({budget.max_minutes:g} minutes)"
    return None


def state_ledger(state: InvestigationState, ctx: GraphContext) -> Ledger:
    """The ledger the planner reads at this point of the run."""
    return build_ledger(
        ctx.investigation.tree.investigation,
        ctx.settings.model,
        ctx.investigation.entries(),
        state.get("feedback", []),
        ctx.budget,
        state.get("steps", 0),
        state.get("tool_calls", 0),
    )


def planner_notes(ctx: GraphContext, investigation_id: int) -> list[str]:
    """Notes the planner left since the last step (shown, and stored with the investigation)."""
    drain = getattr(ctx.planner, "drain_notes", None)
    notes = list(drain()) if callable(drain) else []
    for note in notes:
        ctx.progress.feedback(note)
        add_note(ctx.store, investigation_id, note)
    return notes


def plan(state: InvestigationState, runtime: Runtime[GraphContext]) -> Update:
    ctx = runtime.context
    inv_id = state["investigation_id"]
    exhausted = exhausted_budget(state, ctx)
    if exhausted:
        ctx.progress.stop(exhausted)
        return {"stop_reason": exhausted}
    try:
        raw = ctx.planner.propose(state_ledger(state, ctx))
    except LLMBudgetExceeded as err:
        ctx.progress.stop(str(err))
        return {"stop_reason": f"LLM token budget: {err}"}
    feedback = [*state.get("feedback", []), *planner_notes(ctx, inv_id)]
    update: Update = {"steps": state.get("steps", 0) + 1, "feedback": feedback}
    if isinstance(raw, Stop):
        ctx.progress.stop(f"the planner stopped: {raw.reason}")
        return {**update, "stop_reason": f"planner: {raw.reason}"}
    state = cast(InvestigationState, {**state, "feedback": feedback})
    try:
        proposal = check_proposal(raw, state.get("fingerprints", {}), ctx.policy)
    except RepeatedProposal as err:
        return {**update, **rejection(state, ctx, str(err), repeat=True)}
    except CallRejected as err:
        return {**update, **rejection(state, ctx, str(err), repeat=False)}
    return {**update, "proposal": proposal, "invalid_streak": 0}


# -- preregister, run, record -------------------------------------------------------------------


def preregister(state: InvestigationState, runtime: Runtime[GraphContext]) -> Update:
    ctx = runtime.context
    inv_id = state["investigation_id"]
    prop = state.get("proposal")
    assert prop is not None, "preregister runs only after plan accepted a proposal"
    criterion = Criterion.model_validate(prop["criterion"])
    known = set(state.get("fingerprints", {}).values())
    existing = next(
        (
            h.id
            for h in ctx.investigation.tree.hypotheses
            if h.id not in known
            and h.text == prop["hypothesis"]
            and (h.tool, h.tool_args, h.criterion) == (prop["tool"], prop["args"], criterion)
        ),
        None,
    )
    parent = prop.get("parent_hypothesis_id")
    if parent is not None and parent not in known:
        parent = None
    hid = existing or ctx.store.preregister_hypothesis(
        inv_id,
        prop["hypothesis"],
        criterion,
        tool=prop["tool"],
        tool_args=prop["args"],
        rationale=prop.get("rationale", ""),
        parent_id=parent,
        components=prop.get("components", []),
        exploratory=bool(prop.get("exploratory", False)),
    )
    ctx.investigation.refresh(hid)
    ctx.progress.hypothesis(hid, prop["hypothesis"], criterion)
    current = HypothesisInFlight(
        hypothesis_id=hid,
        phase="discovery",
        tool=prop["tool"],
        args=prop["args"],
        criterion=prop["criterion"],
        components=prop.get("components", []),
        text=prop["hypothesis"],
        results={},
        experiments={},
    )
    return {
        "proposal": None,
        "current": current,
        "fingerprints": {**state.get("fingerprints", {}), prop["fingerprint"]: hid},
    }


def in_flight(state: InvestigationState) -> HypothesisInFlight:
    """A copy of the hypothesis under test (the nodes after preregister always have one)."""
    current = state.get("current")
    assert current is not None, "no hypothesis is under test"
    return HypothesisInFlight(**current)


def run_tool(state: InvestigationState, runtime: Runtime[GraphContext]) -> Update:
    """Run the phase's call, unless this hypothesis already has a finished experiment of it (a
    killed run recorded it after its last checkpoint): then that result is used, not re-run."""
    ctx = runtime.context
    cur = in_flight(state)
    phase, args, hid = cur["phase"], cur["args"], cur["hypothesis_id"]
    done = next(
        (
            e
            for e in ctx.investigation.node(hid).experiments
            if e.status == "finished" and e.evidence and e.args == args and e.tool == cur["tool"]
        ),
        None,
    )
    tool_calls = state.get("tool_calls", 0)
    ctx.progress.tool_call(hid, cur["tool"], split_of(args), args)
    metric = cur["criterion"]["metric"]
    if done is not None:
        ev = done.evidence[0]
        cur["experiments"] = {**cur["experiments"], phase: done.id}
        cur["evidence"] = {**cur.get("evidence", {}), phase: ev.id}
        numbers = key_metrics(ev.metrics, metric)
        ctx.progress.tool_result(
            done.id, "finished", 0.0, dict(list(numbers.items())[:6]), reused=True
        )
        return {"current": cur, "tool_calls": tool_calls + 1}
    if tool_calls >= ctx.budget.max_tool_calls:
        cur["skipped"] = {**cur.get("skipped", {}), phase: "tool-call budget exhausted"}
        return {"current": cur}
    outcome = ctx.lab.run_experiment(hid, cur["tool"], args)
    ctx.investigation.refresh(hid)
    cur["experiments"] = {**cur["experiments"], phase: outcome.experiment_id}
    if outcome.status == "finished" and outcome.evidence_id is not None:
        cur["evidence"] = {**cur.get("evidence", {}), phase: outcome.evidence_id}
    else:
        cur["errors"] = {**cur.get("errors", {}), phase: outcome.error or outcome.status}
    numbers = key_metrics(outcome.metrics, metric)
    ctx.progress.tool_result(
        outcome.experiment_id,
        outcome.status,
        outcome.duration_s,
        dict(list(numbers.items())[:6]),
        outcome.error,
    )
    return {"current": cur, "tool_calls": tool_calls + 1}


def record(state: InvestigationState, runtime: Runtime[GraphContext]) -> Update:
    """Compare the phase's evidence with the criterion, from the hypothesis as ``run_tool`` left
    it (nothing is read from the store)."""
    ctx = runtime.context
    cur = in_flight(state)
    phase = cur["phase"]
    evidence_id = cur.get("evidence", {}).get(phase)
    update: Update = {"current": cur}
    if evidence_id is None:
        return update
    tree = ctx.investigation.tree
    node = ctx.investigation.node(cur["hypothesis_id"])
    if node.exploratory:  # recorded, never compared with a criterion: it claims nothing
        return update
    result = split_result(tree, node, ctx.policy, phase)
    if result is None:
        return update
    cur["results"] = {**cur.get("results", {}), phase: result.model_dump(mode="json")}
    if phase == "discovery":
        earlier = exploratory_of(tree, node)
        cur["exploratory_of"] = earlier
        if earlier is not None:
            message = (
                f"H{node.id} is exploratory: its call was already run for H{earlier}, so it "
                "cannot be supported"
            )
            ctx.progress.feedback(message)
            update["feedback"] = [*state.get("feedback", []), message]
    ctx.progress.split_result(result.split, result.outcome, result.reason)
    feedback = update.get("feedback", state.get("feedback", []))
    ev = next(ev for e in node.experiments for ev in e.evidence if ev.id == evidence_id)
    metric = cur["criterion"]["metric"]
    per_query = query_values(ev)
    if metric not in per_query and phase == "discovery":
        produced = ", ".join(sorted(per_query)[:30]) or "none"
        message = (
            f"H{cur['hypothesis_id']}: tool {cur['tool']!r} did not produce per-query values of "
            f"the metric {metric!r}; it produced per-query values of: {produced}"
        )
        ctx.progress.feedback(message)
        update["feedback"] = [*feedback, message]
    return update


# -- assess, replicate, report ------------------------------------------------------------------


def needs_replication(cur: HypothesisInFlight | None) -> bool:
    """Whether the hypothesis met its criterion on discovery with exact evidence."""
    if not cur:
        return False
    result = cur.get("results", {}).get("discovery")
    return (
        cur.get("phase") == "discovery"
        and cur.get("exploratory_of") is None
        and result is not None
        and result["outcome"] == "met"
        and not result["approximate"]
    )


def rule_narrative(text: str, decision: Decision) -> Narrative:
    """The narrative the rules write when the planner's cannot be used."""
    cites = ", ".join(f"E{i}" for i in decision.evidence_ids) or "none"
    return Narrative(
        text=f"{text} — {decision.status}: {decision.reason}. Evidence: {cites}.",
        cited_evidence_ids=list(decision.evidence_ids),
    )


def phase_note(cur: HypothesisInFlight, phase: Phase) -> str | None:
    """Why a phase produced no evidence (skipped, or the tool failed)."""
    return cur.get("skipped", {}).get(phase) or cur.get("errors", {}).get(phase) or None


_VERDICT_WORDS = re.compile(r"\b(supported|refuted|inconclusive|negligible)\b", re.IGNORECASE)


def states_other_verdict(text: str, decision: Decision) -> bool:
    """Whether a narrative names a verdict other than the rules' (``negligible`` is allowed
    only for a negligible refutation; ``not supported`` counts as naming "supported")."""
    allowed = {decision.status} | ({"negligible"} if decision.negligible else set())
    return bool({w.lower() for w in _VERDICT_WORDS.findall(text)} - allowed)


def decision_of(ctx: GraphContext, cur: HypothesisInFlight) -> Decision:
    """The verdict rules applied to the stored evidence of the hypothesis (the same function
    ``audit`` re-applies)."""
    node = ctx.investigation.node(cur["hypothesis_id"])
    results = cur.get("results", {})
    discovery = results.get("discovery")
    note = None
    if discovery is not None and discovery["outcome"] == "met" and "holdout" not in results:
        note = phase_note(cur, "holdout")
    if discovery is None:
        note = phase_note(cur, "discovery")
    decision = decide_hypothesis(ctx.investigation.tree, node, ctx.policy, replication_note=note)
    if cur.get("seed_only_replication"):
        decision.notes.append(
            f"tool {cur['tool']!r} has no held-out split: replicated with another seed only"
        )
    return decision


def checked_narrative(
    state: InvestigationState, ctx: GraphContext, cur: HypothesisInFlight, decision: Decision
) -> Narrative:
    """The planner's narrative of the verdict, or the rules' when it fails, cites evidence the
    verdict does not rest on, or states another verdict. The citations stored are always the
    engine's (``decision.evidence_ids``)."""
    hid = cur["hypothesis_id"]
    entry = ledger_entry(ctx.investigation.node(hid)).model_copy(update={"status": decision.status})
    ledger = state_ledger(state, ctx)
    try:
        narrative = ctx.planner.narrate(ledger, entry)
    except LLMError as err:
        decision.notes.append(f"the planner could not write the narrative ({err})")
        return rule_narrative(cur["text"], decision)
    cited = set(narrative.cited_evidence_ids) | set(cited_in_text(narrative.text))
    foreign = sorted(cited - set(decision.evidence_ids))
    problem = None
    if foreign:
        problem = f"cited evidence {foreign} that this verdict does not rest on"
    elif states_other_verdict(narrative.text, decision):
        problem = f"states a verdict other than the rules' ({decision.status})"
    if problem:
        message = f"H{hid}: the narrative {problem}; it was replaced by the rule-written narrative"
        decision.notes.append(message)
        ctx.progress.feedback(message)
        return rule_narrative(cur["text"], decision)
    return Narrative(text=narrative.text, cited_evidence_ids=list(decision.evidence_ids))


def assess(state: InvestigationState, runtime: Runtime[GraphContext]) -> Update:
    ctx = runtime.context
    cur = in_flight(state)
    if needs_replication(cur):
        return {"current": cur}
    hid = cur["hypothesis_id"]
    if ctx.investigation.node(hid).exploratory:
        ctx.progress.verdict(
            hid, "exploratory", "recorded; no claim was tested, so no verdict is given"
        )
        return {"current": None}
    verdict = ctx.investigation.node(hid).latest_verdict
    if verdict is not None:
        reason = str(verdict.criterion_result.get("reason", ""))
        ctx.progress.verdict(hid, verdict.status, reason)
        return {"current": None}
    decision = decision_of(ctx, cur)
    narrative = checked_narrative(state, ctx, cur, decision)
    ctx.store.record_verdict(
        hid,
        decision.status,
        criterion_result=decision.criterion_result(),
        cited_evidence_ids=narrative.cited_evidence_ids,
        decided_by=f"{ctx.decided_by}; narrative: {getattr(ctx.planner, 'name', 'planner')}",
        narrative=narrative.text,
    )
    ctx.investigation.refresh(hid)
    ctx.progress.verdict(hid, decision.status, decision.reason)
    return {"current": None}


def replicate(state: InvestigationState, runtime: Runtime[GraphContext]) -> Update:
    cur = in_flight(state)
    cur["args"], seed_only = replication_args(cur["tool"], cur["args"])
    if seed_only:
        cur["seed_only_replication"] = True
    cur["phase"] = "holdout"
    return {"current": cur}


def report(state: InvestigationState, runtime: Runtime[GraphContext]) -> Update:
    ctx = runtime.context
    inv_id = state["investigation_id"]
    add_note(ctx.store, inv_id, f"stopped: {state.get('stop_reason') or 'done'}")
    ctx.store.set_investigation_status(inv_id, "finished")
    path = None
    if ctx.write_report is not None:
        path = ctx.write_report(ctx.store, inv_id, ctx.report_dir)
        ctx.store.set_report_path(inv_id, path)
    return {"report_path": str(path) if path else None}


# -- routing ------------------------------------------------------------------------------------


def after_plan(state: InvestigationState) -> str:
    if state.get("stop_reason"):
        return "report"
    return "preregister" if state.get("proposal") else "plan"


def after_assess(state: InvestigationState) -> str:
    return "replicate" if state.get("current") else "plan"

"""The one gate a planner's proposal passes before anything runs.

:func:`check_proposal` (called by the graph's ``plan`` node) turns what a planner returned into a
:class:`~rankscope.agent.state.PendingProposal` or raises :class:`CallRejected` with a message the
planner can act on; nothing runs. It checks that the proposal has a pre-registered criterion, that
the tool call validates (:func:`check_call`: unknown tool, arguments against the tool's pydantic
model, a criterion metric the tool does not produce — which metrics a tool produces is its own
declaration, ``Tool.metrics``; a tool that declares none has its criterion checked after the run),
that the call runs on the criterion's split, that the criterion names a declared estimate of
exactly the hypothesis's components no looser than the policy
(:func:`~rankscope.agent.verdicts.criterion_problem`), and that the same call and criterion were
not tested before (:class:`RepeatedProposal`).

The arguments a proposal carries on are the validated model's JSON. The lab parses that JSON back
into the tool's argument model to run it; the held-out replication changes only ``split`` and
``seed`` of it, values every tool with those arguments accepts.
"""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import ValidationError

from rankscope.agent.planners.base import Criterion, Proposal
from rankscope.agent.policy import StatsPolicy
from rankscope.agent.state import PendingProposal
from rankscope.agent.verdicts import criterion_problem, criterion_spec, usable_metrics
from rankscope.experiments_db.jsonutil import canonical_json
from rankscope.tools.contract import ToolArgs
from rankscope.tools.registry import (
    ToolArgumentError,
    UnknownToolError,
    all_tools,
    get_tool,
    validate_args,
)


class CallRejected(ValueError):
    """A planner's tool call that must not run; the message is feedback for the planner."""


class RepeatedProposal(CallRejected):
    """A proposal whose tool call and criterion were already tested."""


def check_call(tool_name: str, raw_args: dict[str, Any], metric: str | None = None) -> ToolArgs:
    """Validate a call; raise :class:`CallRejected` (with planner feedback) if it cannot run."""
    try:
        tool = get_tool(tool_name)
    except UnknownToolError as err:
        raise CallRejected(str(err)) from err
    if not isinstance(raw_args, dict):
        raise CallRejected(f"arguments for tool {tool_name!r} must be a JSON object")
    try:
        args = validate_args(tool, raw_args)
    except ToolArgumentError as err:
        raise CallRejected(str(err)) from err
    if metric is not None and tool.produces(args, metric) is False:
        listed = ", ".join(tool.metric_names(args) or [])
        raise CallRejected(
            f"tool {tool_name!r} does not produce the metric {metric!r}; it produces: {listed}"
        )
    return args


def available_tools() -> list[str]:
    return list(all_tools())


def has_split(tool_name: str) -> bool:
    """Whether a registered tool runs on a chosen split (it has a ``split`` argument); False for
    an unknown tool (:func:`check_call` reports that one)."""
    try:
        return "split" in get_tool(tool_name).Args.model_fields
    except UnknownToolError:
        return False


def fingerprint(tool: str, args: dict[str, Any], criterion: Criterion) -> str:
    """Identity of a proposal for repeat detection: tool, validated arguments and criterion."""
    payload = {"tool": tool, "args": args, "criterion": criterion.model_dump(mode="json")}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def _proposal(raw: object) -> Proposal:
    """A planner's return value as a :class:`Proposal` with a criterion."""
    if isinstance(raw, dict) and raw.get("criterion") is not None:
        try:
            raw = Proposal.model_validate(raw)
        except ValidationError as err:
            raise CallRejected(f"rejected proposal: {err}") from err
    if isinstance(raw, dict) or (
        isinstance(raw, Proposal) and not isinstance(raw.criterion, Criterion)
    ):
        tool = raw.get("tool") if isinstance(raw, dict) else raw.tool
        raise CallRejected(
            f"rejected {tool!r} proposal: it has no pre-registered criterion; every hypothesis "
            "needs metric, direction, threshold and alpha before it runs"
        )
    if not isinstance(raw, Proposal):
        raise CallRejected(f"rejected: the planner returned {type(raw).__name__}")
    return raw


def check_proposal(
    raw: object, fingerprints: dict[str, int], policy: StatsPolicy
) -> PendingProposal:
    """The proposal with its call validated against the registry, its criterion and ``policy``
    (see the module docstring). Raises :class:`CallRejected` with feedback for the planner, a
    :class:`RepeatedProposal` when the same call and criterion were tested before (``fingerprints``:
    fingerprint → hypothesis id)."""
    proposal = _proposal(raw)
    criterion = proposal.criterion
    if proposal.exploratory:
        criterion = exploratory_criterion(criterion)
    args = dict(proposal.args)
    if has_split(proposal.tool):
        given = args.get("split")
        if given is not None and given != criterion.split:
            raise CallRejected(
                f"rejected call: args.split={given!r} disagrees with the criterion's split "
                f"{criterion.split!r}; the tool runs on the pre-registered split"
            )
        args["split"] = criterion.split
    try:
        args_json = check_call(proposal.tool, args, criterion.metric).model_dump(mode="json")
    except CallRejected as err:
        raise CallRejected(f"rejected call: {err}") from err
    problem = None
    if not proposal.exploratory:
        _check_replicable(proposal.tool, args_json, criterion.metric)
        problem = criterion_problem(
            criterion,
            proposal.components,
            criterion_spec(proposal.tool, args_json, criterion.metric),
            policy,
            usable_metrics(proposal.tool, args_json),
            args_json,
        )
    if problem:
        raise CallRejected(f"rejected criterion: {problem}")
    fp = fingerprint(proposal.tool, args_json, criterion)
    if fp in fingerprints:
        raise RepeatedProposal(
            f"repeated proposal: {proposal.tool} with the same arguments and criterion was "
            f"already tested as hypothesis H{fingerprints[fp]}; propose something new"
        )
    return PendingProposal(
        hypothesis=proposal.hypothesis,
        rationale=proposal.rationale,
        tool=proposal.tool,
        args=args_json,
        criterion=criterion.model_dump(mode="json"),
        components=list(proposal.components),
        parent_hypothesis_id=proposal.parent_hypothesis_id,
        fingerprint=fp,
        exploratory=proposal.exploratory,
    )


def _check_replicable(tool_name: str, args: dict[str, Any], metric: str) -> None:
    """A claim replicates on held-out queries with the same arguments: reject it now when those
    arguments are invalid there (e.g. ``circuit`` with ``members=None`` ranks on the run's own
    split, which only discovery may be), instead of failing the run at its replication."""
    if not has_split(tool_name):
        return
    held_out, _ = replication_args(tool_name, args)
    try:
        check_call(tool_name, held_out, metric)
    except CallRejected as err:
        raise CallRejected(
            f"rejected call: a claim is replicated on held-out queries with the same arguments, "
            f"and there these are invalid ({err}); make this step exploratory (it then claims "
            "nothing), or claim what it found with arguments that hold on both splits (circuit: "
            "members=<the components ranked on discovery> and k)"
        ) from err


def exploratory_criterion(criterion: Criterion) -> Criterion:
    """The criterion an exploratory step is stored with: the estimate it reports, two-sided at
    0 — a record of what it ranks by, never a claim (the rules decide nothing on it). It runs on
    the discovery split only: an exploratory look at held-out queries would let a planner choose
    its claims from the data that must replicate them."""
    if criterion.split != "discovery":
        raise CallRejected(
            f"rejected exploratory step: it runs on the discovery split only, not "
            f"{criterion.split!r} (held-out queries are for replications)"
        )
    return criterion.model_copy(update={"direction": "two-sided", "threshold": 0.0})


def replication_args(tool_name: str, args: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The arguments of a validated call's held-out replication: the held-out split (when the
    tool has one) and the next seed; and whether only the seed changed."""
    out = dict(args)
    seed_only = not has_split(tool_name)
    if not seed_only:
        out["split"] = "holdout"
    out["seed"] = int(out.get("seed", 0)) + 1
    return out, seed_only

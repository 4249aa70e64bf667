"""Verdict rules: pre-registered criterion + stored per-query evidence → supported / refuted /
inconclusive, under the investigation's :class:`~rankscope.agent.policy.StatsPolicy`.

The rules are deterministic and read only what the tools stored. No planner (and no LLM) can set
a verdict, and the graph and ``audit`` decide through the same function,
:func:`decide_hypothesis`, from the stored investigation tree.

What a criterion may name (checked at pre-registration, :func:`criterion_problem`)
    A declared estimate of the tool (``Tool.metric_spec``; descriptive numbers, counts and a
    tool's own CI bounds or p-values are refused), on the discovery split, with an alpha no looser
    than the policy's; a hypothesis that names components needs a metric of exactly those
    components (``effect[L5.H9]`` for ``["L5.H9"]``, ``delta_change[L5.H7+L5.H5]`` for both), or
    a group estimate (a metric of no component, e.g. ``circuit``'s ``faithfulness``) of a call
    whose ``members`` argument — its first ``k`` when ``k`` is given — are exactly those
    components.

One split (one experiment), direction ``greater`` (``less`` is the mirror image)
    The rules read the evidence's ``per_query`` table (one value per query: the query is the unit
    of analysis) for the criterion's metric and call :func:`rankscope.tools.stats.query_inference`
    with the **effective threshold** ``max(threshold, null + SESOI)`` and the **level** of the
    hypothesis (its LOND level, divided by the number of tests the call made — the members of the
    metric's family in the per-query table). The CI level is ``1 - 2 * level``. No tool's own
    p-value or CI is read.
    * undetermined: fewer than the policy's queries or pairs, no per-query values, no variation;
    * met: the CI lies above the effective threshold and the t-test against it gives p < level;
    * negligible (an outcome ``contradicted`` with ``negligible`` set): the TOST puts the mean
      inside ``null ± SESOI`` at the level;
    * contradicted: the CI lies below the effective threshold;
    * undetermined otherwise.

The hypothesis (both splits)
    * ``refuted`` — discovery contradicts the claim with exact evidence (reason ``negligible: …`` when the TOST shows
      the effect is smaller than the SESOI), or discovery meets it and the held-out replication
      contradicts it ("did not replicate").
    * ``supported`` — discovery meets the claim with exact evidence, the hypothesis is not
      exploratory, and the held-out replication meets it on queries disjoint from discovery's
      (checked from the stored query ids).
    * ``inconclusive`` — everything else (undetermined, approximate evidence whatever it shows
      — attribution patching over-estimates magnitudes —, exploratory,
      replication undetermined, overlapping or not run).

Exploratory hypotheses
    A hypothesis whose call (tool and arguments, seed aside) was already run for an earlier
    hypothesis was registered after its results could be seen: it cannot be supported, it does
    not spend a level of the multiplicity procedure.

Exploratory steps
    A hypothesis pre-registered as ``exploratory`` (a screen, a ranking, a description of roles;
    ``HypothesisRecord.exploratory``, fixed at pre-registration and covered by the criterion
    lock) runs its call once on the discovery split and claims nothing: the graph records its
    evidence and gives it no verdict, no p-value and no replication, and it spends no level. Its
    stored criterion (two-sided at 0) only names the estimate it reports. Should a verdict on one
    ever be stored, the rules give ``inconclusive`` ("exploratory"), never ``supported``. Its call
    counts as seen: a later hypothesis that repeats it is exploratory in the sense above.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field

from rankscope.agent.policy import StatsPolicy
from rankscope.experiments_db.records import (
    Criterion,
    EvidenceRecord,
    ExperimentNode,
    HypothesisNode,
    InvestigationTree,
)
from rankscope.tools import metric_keys
from rankscope.tools.metric_keys import MetricSpec, metric_family, try_parse_metric_key
from rankscope.tools.stats import QueryValue, per_query_from_rows, query_inference

Outcome = Literal["met", "contradicted", "undetermined"]
Status = Literal["supported", "refuted", "inconclusive"]
RULES = "rankscope.agent.verdicts v2 (per-query inference under the investigation's policy)"


class SplitResult(BaseModel):
    """How one experiment's evidence compares with the criterion."""

    split: str
    metric: str
    direction: str
    threshold: float
    effective_threshold: float | None = None
    sesoi: float | None = None
    null_value: float | None = None
    value: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    ci_level: float | None = None
    p_value: float | None = None
    tost_p: float | None = None
    alpha: float
    corrected_alpha: float
    """The level the tests of this split used: the hypothesis's level / ``n_tests``."""
    correction: str = "bonferroni within the call"
    n_tests: int = 1
    """Tests the call made (counted by the engine from the per-query table)."""
    n_queries: int = 0
    n_pairs: int = 0
    method: str = ""
    approximate: bool = False
    outcome: Outcome = "undetermined"
    negligible: bool = False
    reason: str = ""
    evidence_id: int | None = None
    experiment_id: int | None = None


class Decision(BaseModel):
    """The verdict on a hypothesis and the numbers behind it (stored as ``criterion_result``)."""

    status: Status
    reason: str
    discovery: SplitResult | None = None
    holdout: SplitResult | None = None
    notes: list[str] = Field(default_factory=list)
    level: float | None = None
    """The level this hypothesis spent (LOND or Bonferroni across the investigation)."""
    lond_index: int | None = None
    exploratory_of: int | None = None
    """The earlier hypothesis that already ran this call (None: confirmatory)."""
    evidence_ids: list[int] = Field(default_factory=list)
    """The evidence the verdict rests on, recorded by the engine."""

    @property
    def negligible(self) -> bool:
        return self.status == "refuted" and self.reason.startswith("negligible")

    def criterion_result(self) -> dict[str, Any]:
        """The JSON stored with the verdict: the discovery numbers on top, the replication inside."""
        top = self.discovery.model_dump() if self.discovery else {}
        return {
            **top,
            "status": self.status,
            "reason": self.reason,
            "replication": self.holdout.model_dump() if self.holdout else None,
            "notes": list(self.notes),
            "level_spent": self.level,
            "lond_index": self.lond_index,
            "exploratory_of": self.exploratory_of,
            "evidence_ids": list(self.evidence_ids),
            "rules": RULES,
        }


def ci_keys(metric: str) -> tuple[list[str], list[str]]:
    """The metric keys that may hold a tool's own CI bounds of ``metric`` (for display only)."""
    low, high = metric_keys.ci_keys(metric)
    return list(dict.fromkeys([f"{metric}_ci_low", *low])), list(
        dict.fromkeys([f"{metric}_ci_high", *high])
    )


def p_keys(metric: str) -> list[str]:
    """The metric keys that may hold a tool's own p-value of ``metric`` (for display only; no
    verdict reads them, and there is no fallback to a tool's overall p-value)."""
    return list(dict.fromkeys([f"{metric}_p_value", *metric_keys.p_keys(metric)]))


# -- what a criterion may name ------------------------------------------------------------------


def criterion_spec(tool: str, args: Mapping[str, Any], metric: str) -> MetricSpec | None:
    """The declaration of ``metric`` by ``tool`` run with ``args`` (None: undeclared)."""
    from rankscope.tools.registry import all_tools, get_tool, validate_args

    if tool not in all_tools():
        return None
    impl = get_tool(tool)
    try:
        parsed = validate_args(impl, dict(args))
    except ValueError:
        return None
    return impl.metric_spec(parsed, metric)


def usable_metrics(tool: str, args: Mapping[str, Any]) -> list[str]:
    """The shapes of the estimates ``tool`` declares for ``args``: what a criterion may use."""
    from rankscope.tools.registry import get_tool, validate_args

    impl = get_tool(tool)
    catalogue = impl.metrics_for(validate_args(impl, dict(args)))
    return [] if catalogue is None else catalogue.estimate_patterns()


def components_of(metric: str) -> list[str] | None:
    """The components a metric key is about (``delta_change[L5.H7+L5.H5]`` → both heads)."""
    parsed = try_parse_metric_key(metric)
    if parsed is None or parsed.component is None:
        return None
    return parsed.component.split("+")


def group_members(args: Mapping[str, Any]) -> list[str] | None:
    """The components a group estimate of a call is about: its ``members`` argument, the first
    ``k`` of them when ``k`` is given (None: the call fixes no members)."""
    members = args.get("members")
    if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
        return None
    k = args.get("k")
    return list(members[:k] if isinstance(k, int) and k >= 1 else members)


def criterion_problem(
    criterion: Criterion,
    components: Sequence[str],
    spec: MetricSpec | None,
    policy: StatsPolicy,
    usable: Sequence[str] = (),
    args: Mapping[str, Any] | None = None,
) -> str | None:
    """Why a criterion cannot be pre-registered (None: it can); ``args``: the validated call
    (for the members of a group estimate)."""
    if spec is None or spec.kind != "estimate":
        what = "not declared" if spec is None else "a descriptive number, not an estimate"
        listed = ", ".join(usable) or "none"
        return (
            f"metric {criterion.metric!r} is {what}: only a declared estimate (with per-query "
            f"values) can be a criterion; this call's estimates: {listed}"
        )
    if criterion.direction == "two-sided":
        return "a two-sided criterion cannot be decided: state the direction of the effect"
    loose = policy.check(criterion)
    if loose:
        return loose
    if components:
        named = components_of(criterion.metric)
        if named is None:
            named = group_members(args or {})
        if named is None or sorted(named) != sorted(components):
            return (
                f"the hypothesis names components {list(components)} but the metric "
                f"{criterion.metric!r} is not their entry: a claim about components needs a "
                "criterion on a metric of exactly those components"
            )
    return None


# -- one split ----------------------------------------------------------------------------------


def query_values(evidence: EvidenceRecord) -> dict[str, list[QueryValue]]:
    """The evidence's per-query values by metric key (empty without a ``per_query`` table)."""
    rows = evidence.tables.get("per_query") or []
    return per_query_from_rows(rows) if isinstance(rows, list) else {}


def tests_in_call(per_query: Mapping[str, Sequence[QueryValue]], metric: str) -> int:
    """The tests a call made for ``metric``: the members of its family in the per-query table
    (one for a scalar estimate)."""
    family = metric_family(metric)
    if family is None:
        return 1
    return max(1, sum(1 for key in per_query if metric_family(key) == family))


def qids(evidence: EvidenceRecord) -> set[str]:
    """The query ids an experiment ran on (from its per-query table)."""
    return {qv.qid for values in query_values(evidence).values() for qv in values}


def evaluate_split(
    criterion: Criterion,
    evidence: EvidenceRecord,
    *,
    split: str,
    spec: MetricSpec | None,
    policy: StatsPolicy,
    level: float,
) -> SplitResult:
    """Compare one experiment's per-query values with the criterion (module docstring)."""
    per_query = query_values(evidence)
    n_tests = tests_in_call(per_query, criterion.metric)
    result = SplitResult(
        split=split,
        metric=criterion.metric,
        direction=criterion.direction,
        threshold=criterion.threshold,
        alpha=criterion.alpha,
        corrected_alpha=level / n_tests,
        n_tests=n_tests,
        approximate=evidence.approximate or bool(spec and spec.approximate),
        evidence_id=evidence.id,
        experiment_id=evidence.experiment_id,
    )
    if spec is None or spec.kind != "estimate":
        result.reason = f"metric {criterion.metric!r} is not a declared estimate of the tool"
        return result
    values = per_query.get(criterion.metric)
    if not values:
        result.reason = f"the evidence has no per-query values of {criterion.metric!r}"
        return result
    if criterion.direction == "two-sided":
        result.reason = "a two-sided criterion cannot be decided"
        return result
    sesoi = policy.sesoi_for(spec.family)
    t_eff = policy.effective_threshold(criterion, null_value=spec.null_value, family=spec.family)
    inference = query_inference(
        values,
        threshold=t_eff,
        direction=criterion.direction,
        alpha=result.corrected_alpha,
        equivalence=(spec.null_value - sesoi, spec.null_value + sesoi) if sesoi > 0 else None,
        n_resamples=policy.n_resamples,
    )
    result.effective_threshold, result.sesoi, result.null_value = t_eff, sesoi, spec.null_value
    result.value = inference.estimate if math.isfinite(inference.estimate) else None
    if math.isfinite(inference.ci_low) and math.isfinite(inference.ci_high):
        result.ci_low, result.ci_high = inference.ci_low, inference.ci_high
    result.ci_level, result.method = inference.ci_level, inference.method
    result.p_value, result.tost_p = inference.p_value, inference.tost_p
    result.n_queries, result.n_pairs = inference.n_queries, inference.n_pairs
    if inference.n_queries < policy.min_queries or inference.n_pairs < policy.min_pairs:
        result.reason = (
            f"{inference.n_queries} queries and {inference.n_pairs} pairs; the policy needs "
            f"{policy.min_queries} and {policy.min_pairs}"
        )
        return result
    if result.p_value is None or result.ci_low is None or result.ci_high is None:
        result.reason = "no inference: the per-query values do not vary"
        return result
    lo, hi, level_text = result.ci_low, result.ci_high, f"level {result.corrected_alpha:.3g}"
    bounds = f"mean {result.value:.4g}, {result.ci_level:.4g} CI [{lo:.4g}, {hi:.4g}]"
    counts = f"{result.n_queries} queries, {result.n_pairs} pairs"
    side = ">" if criterion.direction == "greater" else "<"
    beyond = lo > t_eff if criterion.direction == "greater" else hi < t_eff
    wrong = hi < t_eff if criterion.direction == "greater" else lo > t_eff
    p_text = f"p={result.p_value:.3g} vs {level_text}"
    if beyond and result.p_value < result.corrected_alpha:
        result.outcome = "met"
        result.reason = f"{bounds} {side} {t_eff:g} ({p_text}; {counts})"
    elif result.tost_p is not None and result.tost_p < result.corrected_alpha:
        result.outcome, result.negligible = "contradicted", True
        result.reason = (
            f"negligible: {bounds} lies within {spec.null_value:g} ± SESOI {sesoi:g} "
            f"(TOST p={result.tost_p:.3g} vs {level_text}; {counts})"
        )
    elif wrong:
        result.outcome = "contradicted"
        result.reason = f"{bounds} on the wrong side of {t_eff:g} ({p_text}; {counts})"
    elif beyond:
        result.reason = f"{bounds} {side} {t_eff:g} but not significant ({p_text})"
    else:
        result.reason = f"{bounds} includes the threshold {t_eff:g} ({p_text})"
    return result


# -- the hypothesis -----------------------------------------------------------------------------


def decide(
    discovery: SplitResult | None,
    holdout: SplitResult | None = None,
    *,
    replication_note: str | None = None,
    exploratory_of: int | None = None,
) -> Decision:
    """The verdict on a hypothesis from its discovery and held-out results (module docstring)."""
    notes = [replication_note] if replication_note else []
    base: dict[str, Any] = {"discovery": discovery, "holdout": holdout, "notes": notes}
    if discovery is None:
        return Decision(
            status="inconclusive",
            reason="no evidence: the experiment did not produce a result",
            notes=notes,
            exploratory_of=exploratory_of,
        )
    base["exploratory_of"] = exploratory_of
    if discovery.approximate:
        return Decision(
            status="inconclusive",
            reason=f"approximate evidence ({discovery.outcome}: {discovery.reason}) can neither "
            "support nor refute a hypothesis; confirm with an exact tool",
            **base,
        )
    if discovery.outcome == "contradicted":
        if discovery.negligible:
            return Decision(status="refuted", reason=discovery.reason, **base)
        return Decision(
            status="refuted", reason=f"discovery contradicts the claim: {discovery.reason}", **base
        )
    if discovery.outcome == "undetermined":
        return Decision(
            status="inconclusive", reason=f"discovery undetermined: {discovery.reason}", **base
        )
    if exploratory_of is not None:
        return Decision(
            status="inconclusive",
            reason=f"exploratory: this call was already run for H{exploratory_of}, so the claim "
            f"was registered after its results could be seen and cannot be supported "
            f"({discovery.reason})",
            **base,
        )
    if holdout is None:
        return Decision(
            status="inconclusive",
            reason=f"met on discovery ({discovery.reason}) but not replicated on held-out data"
            + (f": {replication_note}" if replication_note else ""),
            **base,
        )
    if holdout.outcome == "met" and not holdout.approximate:
        return Decision(
            status="supported",
            reason=f"met on discovery ({discovery.reason}) and replicated on held-out queries "
            f"({holdout.reason})",
            **base,
        )
    if holdout.outcome == "contradicted":
        return Decision(
            status="refuted",
            reason=f"did not replicate: met on discovery ({discovery.reason}) but the held-out "
            f"queries contradict it ({holdout.reason})",
            **base,
        )
    return Decision(
        status="inconclusive",
        reason=f"met on discovery ({discovery.reason}) but the replication is undetermined "
        f"({holdout.reason})",
        **base,
    )


def _without_seed(args: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in args.items() if k != "seed"}


def exploratory_of(tree: InvestigationTree, node: HypothesisNode) -> int | None:
    """The earliest earlier hypothesis that already ran this hypothesis's call (seed aside)."""
    call = _without_seed(node.tool_args)
    for other in tree.hypotheses:
        if other.id >= node.id:
            continue
        for exp in other.experiments:
            if (
                exp.status == "finished"
                and exp.tool == node.tool
                and _without_seed(exp.args) == call
            ):
                return other.id
    return None


def phase_of(node: HypothesisNode, exp: ExperimentNode) -> Literal["discovery", "holdout"]:
    """Whether an experiment of a hypothesis is its discovery run or its replication."""
    if exp.args.get("split") == "holdout" or exp.args.get("seed") != node.tool_args.get("seed"):
        return "holdout"
    return "discovery"


def phase_evidence(
    node: HypothesisNode,
) -> dict[Literal["discovery", "holdout"], EvidenceRecord]:
    """The first finished evidence of each phase of a hypothesis."""
    out: dict[Literal["discovery", "holdout"], EvidenceRecord] = {}
    for exp in node.experiments:
        if exp.status == "finished" and exp.evidence:
            out.setdefault(phase_of(node, exp), exp.evidence[0])
    return out


def hypothesis_level(
    tree: InvestigationTree, node: HypothesisNode, policy: StatsPolicy
) -> tuple[float, int]:
    """(the level of ``node``, its index among the confirmatory hypotheses): earlier confirmatory
    hypotheses spend levels in id order; their stored verdicts count the discoveries."""
    index, discoveries = 1, 0
    for other in tree.hypotheses:
        if other.id >= node.id or other.exploratory or exploratory_of(tree, other) is not None:
            continue
        index += 1
        latest = other.latest_verdict
        if latest is not None and latest.status == "supported":
            discoveries += 1
    return policy.level(index, discoveries, node.criterion.alpha), index


def split_result(
    tree: InvestigationTree,
    node: HypothesisNode,
    policy: StatsPolicy,
    phase: Literal["discovery", "holdout"],
) -> SplitResult | None:
    """The rules applied to one phase's stored evidence (None: no evidence)."""
    evidence = phase_evidence(node)
    ev = evidence.get(phase)
    if ev is None:
        return None
    level, _ = hypothesis_level(tree, node, policy)
    exp = next(e for e in node.experiments if e.id == ev.experiment_id)
    spec = criterion_spec(node.tool, node.tool_args, node.criterion.metric)
    result = evaluate_split(
        node.criterion,
        ev,
        split=str(exp.args.get("split", "discovery")),
        spec=spec,
        policy=policy,
        level=level,
    )
    if phase == "discovery" and exp.args.get("split", "discovery") != "discovery":
        result.outcome = "undetermined"
        result.reason = "the discovery run did not run on the discovery split"
    if phase == "holdout" and result.outcome != "undetermined":
        discovery = evidence.get("discovery")
        shared = qids(ev) & qids(discovery) if discovery is not None else set()
        if discovery is None or not qids(ev) or shared:
            result.outcome, result.negligible = "undetermined", False
            result.reason = (
                f"the replication's queries are not disjoint from discovery's "
                f"({len(shared)} shared): {result.reason}"
            )
    return result


def decide_hypothesis(
    tree: InvestigationTree,
    node: HypothesisNode,
    policy: StatsPolicy,
    *,
    replication_note: str | None = None,
) -> Decision:
    """The verdict on a stored hypothesis: the one decision path of the graph and ``audit``."""
    if node.exploratory:
        return Decision(
            status="inconclusive",
            reason="exploratory: a screen or ranking pre-registered as claiming nothing; it is "
            "recorded, never decided",
            notes=[replication_note] if replication_note else [],
            evidence_ids=sorted(ev.id for ev in phase_evidence(node).values()),
        )
    discovery = split_result(tree, node, policy, "discovery")
    holdout = split_result(tree, node, policy, "holdout")
    if discovery is not None and (discovery.outcome != "met" or discovery.approximate):
        holdout = None
    earlier = exploratory_of(tree, node)
    decision = decide(discovery, holdout, replication_note=replication_note, exploratory_of=earlier)
    level, index = hypothesis_level(tree, node, policy)
    decision.level = level
    decision.lond_index = None if earlier is not None else index
    decision.evidence_ids = sorted(ev.id for ev in phase_evidence(node).values())
    return decision

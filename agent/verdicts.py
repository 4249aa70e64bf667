"""Verdict rules: pre-registered criterion + stored evidence → supported / refuted / inconclusive.

The rules are deterministic and read only numbers the tools stored. No planner (and no LLM) can
set a verdict.

Reading the evidence
    For a criterion on metric ``m`` the rules read the value ``m``, the confidence interval
    ``m_ci_low`` / ``m_ci_high`` and a p-value ``m_p_value``. For a per-component metric
    ``name[X]`` (``effect[L1.H6]``) they also accept ``name_ci_low[X]`` / ``name_ci_high[X]``,
    ``ci_low[X]`` / ``ci_high[X]`` and ``p_value[X]``; an un-bracketed metric also accepts the
    tool's overall ``p_value`` (and ``top_p_value`` for a ``top_…`` metric). The p-value is the tool's own test against "no effect".

Multiple comparisons
    With ``correction="bonferroni"`` the level is ``alpha / n_tests``. With ``"holm"`` the rules
    gather the family of p-values (``p_value[X]`` of the hypothesis's components, padded with
    p = 1 up to ``n_tests``), sort it and apply Holm's step-down test: the k-th smallest p-value is
    compared with ``alpha / (m - k + 1)`` and a test is significant only if every smaller p-value
    was significant too. When the family cannot be read, Holm falls back to Bonferroni (its first
    and strictest step). ``correction="none"`` with ``n_tests > 1`` is treated as Bonferroni: a
    criterion that says several components are tested is always corrected.

One split (one experiment), direction ``greater`` (``less`` is the mirror image)
    * met (the evidence supports the claim on this split): the CI lower bound exceeds the
      threshold — or, with no CI, the value does — and the p-value, if the tool gives one, is
      below the corrected level. Evidence with neither a CI nor a p-value has no uncertainty and
      can never meet a criterion.
    * contradicted: the CI upper bound is below the threshold; with no CI, the value is on the
      wrong side (or on the threshold) and a p-value is given (the point estimate contradicts the
      claim and nothing makes it credible).
    * undetermined otherwise (the CI straddles the threshold, the p-value is too large, the metric
      is missing or not a number, or there is no uncertainty at all).

    ``two-sided`` claims that the metric lies beyond ``|threshold|`` on either side (an effect of
    either sign at least that large): met when the CI lies above ``|t|`` or below ``-|t|`` and the
    p-value is significant; contradicted when the CI lies inside ``(-|t|, |t|)``.

The hypothesis (both splits)
    * ``refuted`` — the discovery split contradicts the claim, or the discovery split meets it and
      the held-out replication contradicts it ("did not replicate": the held-out queries give a
      CI on the wrong side of the threshold, which is evidence against the claim as strong as a
      contradiction on discovery would be; the discovery pass is read as a false positive).
    * ``supported`` — the discovery split meets the claim with exact (not approximate) evidence
      and the held-out replication (other queries, another seed) meets it too.
    * ``inconclusive`` — everything else: discovery undetermined; approximate evidence (attribution
      patching) that meets the claim, which can never support alone; a replication that is
      undetermined, failed or was not run (budget, or a tool without a held-out split).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field

from rankscope.agent.planners.base import Criterion
from rankscope.tools import metric_keys
from rankscope.tools.metric_keys import MetricKey, try_parse_metric_key

Outcome = Literal["met", "contradicted", "undetermined"]
Status = Literal["supported", "refuted", "inconclusive"]


class SplitResult(BaseModel):
    """How one experiment's evidence compares with the criterion."""

    split: str
    metric: str
    direction: str
    threshold: float
    value: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    alpha: float
    corrected_alpha: float
    correction: str
    n_tests: int
    holm_rank: int | None = None
    approximate: bool = False
    outcome: Outcome = "undetermined"
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

    def criterion_result(self) -> dict[str, Any]:
        """The JSON stored with the verdict: the discovery numbers on top, the replication inside."""
        top = self.discovery.model_dump() if self.discovery else {}
        return {
            **top,
            "status": self.status,
            "reason": self.reason,
            "replication": self.holdout.model_dump() if self.holdout else None,
            "notes": list(self.notes),
            "rules": "rankscope.agent.verdicts v1",
        }


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _lookup(metrics: Mapping[str, Any], keys: Sequence[str]) -> float | None:
    for key in keys:
        if key in metrics:
            number = _number(metrics[key])
            if number is not None:
                return number
    return None


def _unique(keys: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(keys))


def _bracketed(metric: str) -> MetricKey | None:
    """The parsed metric when it names one entry of a family (``effect[L1.H6]``), else None."""
    parsed = try_parse_metric_key(metric)
    return parsed if parsed is not None and parsed.bracketed else None


def ci_keys(metric: str) -> tuple[list[str], list[str]]:
    """The metric keys that may hold the CI bounds of ``metric``: the suffix on the whole key
    (``effect[L1.H6]_ci_low``), then :func:`rankscope.tools.metric_keys.ci_keys`."""
    low, high = metric_keys.ci_keys(metric)
    return _unique([f"{metric}_ci_low", *low]), _unique([f"{metric}_ci_high", *high])


def p_keys(metric: str) -> list[str]:
    """The metric keys that may hold the p-value of ``metric``: the suffix on the whole key, then
    :func:`rankscope.tools.metric_keys.p_keys`; an un-bracketed metric falls back on the tool's
    overall ``top_p_value`` (for a ``top_…`` metric) and ``p_value``."""
    keys = _unique([f"{metric}_p_value", *metric_keys.p_keys(metric)])
    if _bracketed(metric) is not None:
        return keys
    overall = ["top_p_value", "p_value"] if metric.startswith("top_") else ["p_value"]
    return keys + overall


def _component_p_keys(parsed: MetricKey, component: str) -> list[str]:
    """Where the p-value of ``parsed``'s family member for ``component`` may be stored:
    ``effect[L0.H2]_p_value``, ``effect_p_value[L0.H2]``, ``p_value[L0.H2]``."""
    member = MetricKey(parsed.name, component)
    return _unique([f"{member}_p_value", *metric_keys.p_keys(member)])


def _family_p_values(
    metrics: Mapping[str, Any], metric: str, components: Sequence[str]
) -> list[float] | None:
    parsed = _bracketed(metric)
    if parsed is None or not components:
        return None
    family: list[float] = []
    for comp in components:
        p = _lookup(metrics, _component_p_keys(parsed, comp))
        if p is not None:
            family.append(p)
    return family or None


def corrected_alpha(
    criterion: Criterion,
    p_value: float | None,
    metrics: Mapping[str, Any],
    components: Sequence[str] = (),
) -> tuple[float, int | None]:
    """(level the p-value is compared with, Holm rank or None), per the module docstring.

    For Holm, a p-value blocked by an earlier non-significant one gets level 0 (never significant).
    """
    m = max(1, criterion.n_tests)
    if m == 1:
        return criterion.alpha, None
    if criterion.correction != "holm" or p_value is None:
        return criterion.alpha / m, None
    family = _family_p_values(metrics, criterion.metric, components)
    if family is None or not any(math.isclose(p, p_value) for p in family):
        return criterion.alpha / m, None
    family = sorted(family) + [1.0] * max(0, m - len(family))
    m = len(family)
    for rank, p in enumerate(family, start=1):
        level = criterion.alpha / (m - rank + 1)
        if p_value <= p:
            return level, rank
        if p >= level:
            return 0.0, rank
    return criterion.alpha / m, None


def evaluate_split(
    criterion: Criterion,
    metrics: Mapping[str, Any],
    *,
    split: str,
    approximate: bool = False,
    components: Sequence[str] = (),
    evidence_id: int | None = None,
    experiment_id: int | None = None,
) -> SplitResult:
    """Compare one experiment's metrics with the criterion (rules in the module docstring)."""
    value = _lookup(metrics, [criterion.metric])
    low_keys, high_keys = ci_keys(criterion.metric)
    ci_low, ci_high = _lookup(metrics, low_keys), _lookup(metrics, high_keys)
    if ci_low is None or ci_high is None:
        ci_low = ci_high = None
    p = _lookup(metrics, p_keys(criterion.metric))
    level, rank = corrected_alpha(criterion, p, metrics, components)
    result = SplitResult(
        split=split,
        metric=criterion.metric,
        direction=criterion.direction,
        threshold=criterion.threshold,
        value=value,
        ci_low=ci_low,
        ci_high=ci_high,
        p_value=p,
        alpha=criterion.alpha,
        corrected_alpha=level,
        correction=criterion.correction,
        n_tests=criterion.n_tests,
        holm_rank=rank,
        approximate=approximate,
        evidence_id=evidence_id,
        experiment_id=experiment_id,
    )
    if value is None:
        present = criterion.metric in metrics
        result.reason = (
            f"metric {criterion.metric!r} is not a finite number in the evidence"
            if present
            else f"the evidence has no metric {criterion.metric!r}"
        )
        return result
    significant = p is None or p < level
    lo = ci_low if ci_low is not None else value
    hi = ci_high if ci_high is not None else value
    t = criterion.threshold
    if ci_low is None and p is None:
        result.reason = "the tool gave no confidence interval and no p-value: no uncertainty"
        return result
    if criterion.direction == "greater":
        beyond, wrong = lo > t, (hi < t if ci_low is not None else value <= t)
    elif criterion.direction == "less":
        beyond, wrong = hi < t, (lo > t if ci_low is not None else value >= t)
    else:
        t = abs(t)
        beyond = lo > t or hi < -t
        wrong = (-t < lo and hi < t) if ci_low is not None else abs(value) <= t and t > 0
    p_text = "" if p is None else f", p={p:.3g} vs level {level:.3g}"
    bounds = f"CI [{ci_low:.4g}, {ci_high:.4g}]" if ci_low is not None else f"value {value:.4g}"
    side = {"greater": ">", "less": "<", "two-sided": "beyond ±"}[criterion.direction]
    if beyond and significant:
        result.outcome = "met"
        result.reason = f"{bounds} {side} {criterion.threshold:g}{p_text}"
    elif wrong:
        result.outcome = "contradicted"
        result.reason = f"{bounds} on the wrong side of {criterion.threshold:g}{p_text}"
    elif beyond:
        result.reason = f"{bounds} {side} {criterion.threshold:g} but not significant{p_text}"
    else:
        result.reason = f"{bounds} includes the threshold {criterion.threshold:g}{p_text}"
    return result


def decide(
    discovery: SplitResult | None,
    holdout: SplitResult | None = None,
    *,
    replication_note: str | None = None,
) -> Decision:
    """The verdict on a hypothesis from its discovery and held-out results (module docstring)."""
    notes = [replication_note] if replication_note else []
    if discovery is None:
        return Decision(
            status="inconclusive",
            reason="no evidence: the experiment did not produce a result",
            notes=notes,
        )
    if discovery.outcome == "contradicted":
        return Decision(
            status="refuted",
            reason=f"discovery contradicts the claim: {discovery.reason}",
            discovery=discovery,
            holdout=holdout,
            notes=notes,
        )
    if discovery.outcome == "undetermined":
        return Decision(
            status="inconclusive",
            reason=f"discovery undetermined: {discovery.reason}",
            discovery=discovery,
            holdout=holdout,
            notes=notes,
        )
    if discovery.approximate:
        return Decision(
            status="inconclusive",
            reason="met on approximate evidence only, which cannot support a hypothesis; "
            f"confirm with an exact tool ({discovery.reason})",
            discovery=discovery,
            holdout=holdout,
            notes=notes,
        )
    if holdout is None:
        return Decision(
            status="inconclusive",
            reason=f"met on discovery ({discovery.reason}) but not replicated on held-out data"
            + (f": {replication_note}" if replication_note else ""),
            discovery=discovery,
            notes=notes,
        )
    if holdout.outcome == "met" and not holdout.approximate:
        return Decision(
            status="supported",
            reason=f"met on discovery ({discovery.reason}) and replicated on held-out data "
            f"({holdout.reason})",
            discovery=discovery,
            holdout=holdout,
            notes=notes,
        )
    if holdout.outcome == "contradicted":
        return Decision(
            status="refuted",
            reason=f"did not replicate: met on discovery ({discovery.reason}) but the held-out "
            f"data contradict it ({holdout.reason})",
            discovery=discovery,
            holdout=holdout,
            notes=notes,
        )
    return Decision(
        status="inconclusive",
        reason=f"met on discovery ({discovery.reason}) but the replication is undetermined "
        f"({holdout.reason})",
        discovery=discovery,
        holdout=holdout,
        notes=notes,
    )

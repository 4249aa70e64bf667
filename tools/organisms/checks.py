"""A build's checks: the probes measured on a set of groups, their directions, and whether each
planted rule holds on held-out queries."""

from __future__ import annotations

from typing import Any

import numpy as np

from rankscope.tools.organisms.spec import OrganismSpec, ProbeMeasure, RuleDirection
from rankscope.tools.organisms.texts import PROBE_VARIANTS, VARIANTS, Group

EPSILON = 0.01
"""Score change below which a probe counts as no effect (the default SESOI of score deltas)."""


def measure(
    scores: np.ndarray, groups: list[Group], probes: list[str] | None = None
) -> dict[str, ProbeMeasure]:
    """Each probe's (default: every probe's) mean change, share of pairs that went up and
    counts; ``scores`` may be NaN in the variants no measured probe reads."""
    out = {}
    for probe in probes if probes is not None else PROBE_VARIANTS:
        a, b = PROBE_VARIANTS[probe]
        delta = scores[:, VARIANTS.index(b)] - scores[:, VARIANTS.index(a)]
        out[probe] = ProbeMeasure(
            mean_delta=float(delta.mean()) if delta.size else 0.0,
            share_up=float((delta > 0).mean()) if delta.size else 0.0,
            n_pairs=int(delta.size),
            n_queries=len({g.qid for g in groups}),
        )
    return out


def direction_of(m: ProbeMeasure, eps: float) -> RuleDirection | None:
    """increase / decrease when most pairs (60 %) move that way (the verdicts also decide on
    shares of pairs, whatever the score scale); none when the mean change is under half of
    ``eps`` and neither way has 60 % of the pairs; otherwise unclear (None)."""
    if m.share_up >= 0.6 and m.mean_delta > 0:
        return "increase"
    if m.share_up <= 0.4 and m.mean_delta < 0:
        return "decrease"
    if abs(m.mean_delta) < eps / 2 and 0.4 < m.share_up < 0.6:
        return "none"
    return None


def rule_checks(
    spec: OrganismSpec,
    base_probes: dict[str, ProbeMeasure],
    org_probes: dict[str, ProbeMeasure],
    planted: dict[str, float],
    eps: float = EPSILON,
) -> dict[str, Any]:
    """Per rule: holds on held-out queries (the organism's change from the base on the rule's
    probe is at least half of what the rule plants there, ``planted``), absent in the base (or,
    for a rule relative to the base, changed from it)."""
    out: dict[str, Any] = {}
    for r in spec.rules:
        b, o = base_probes[r.probe].mean_delta, org_probes[r.probe].mean_delta
        if r.direction == "none":
            holds = direction_of(org_probes[r.probe], eps) == "none"
            absent = direction_of(base_probes[r.probe], eps) == "increase"
        else:
            sign = 1.0 if r.direction == "increase" else -1.0
            half = 0.5 * abs(planted[r.rule])
            holds = sign * o >= eps and sign * (o - b) >= half
            absent = sign * b < eps if not r.relative_to_base else sign * (o - b) >= half
            out[f"{r.rule}.planted_delta"] = planted[r.rule]
        out[f"{r.rule}.holds_heldout"] = bool(holds)
        out[f"{r.rule}.absent_in_base"] = bool(absent)
        out[f"{r.rule}.base_delta"] = b
        out[f"{r.rule}.organism_delta"] = o
    return out


def rule_holds(
    spec: OrganismSpec,
    base_probes: dict[str, ProbeMeasure],
    org_probes: dict[str, ProbeMeasure],
    planted: dict[str, float],
) -> bool:
    """Whether every planted rule passes its held-out check (the stopping rule and the
    accept-or-rebuild test of a build)."""
    checks = rule_checks(spec, base_probes, org_probes, planted)
    return all(bool(checks[f"{r.rule}.holds_heldout"]) for r in spec.rules)

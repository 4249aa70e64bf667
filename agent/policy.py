"""The statistical policy of an investigation: owned by the user, stored with the investigation.

The policy fixes what the verdict rules need to call a result a finding — the significance level,
the minimum evidence per split, the smallest effect size of interest (SESOI) of each metric family
and the multiplicity procedure across the investigation's confirmatory hypotheses. It is set with
``rankscope investigate --alpha A --min-queries N --policy FILE.toml``, stored in
``InvestigationSettings.policy`` and shown in reports. A planner's criterion may be stricter (a
lower alpha, a threshold further from the null) but never looser: :meth:`StatsPolicy.check`
refuses a looser alpha and :meth:`StatsPolicy.effective_threshold` moves a threshold that lies
inside the SESOI out to it.

Default SESOIs, per family (the ``family`` a tool declares on an estimate), and why
    behaviour_share   0.10  a share of pairs that move the predicted way: the null is 0.5 (a coin
                          flip); below 0.6 the behaviour is too rare to explain rankings by.
    score_delta       0.01  mean change of a cosine / dot score: one hundredth is around the
                          smallest score gap that reorders neighbours in a top-10 of a dense
                          retriever; smaller changes are within rounding of the ranking.
    patching_fraction 0.05  the fraction of the behaviour's score change a component (or a set
                          of components, a circuit) restores or removes when patched, per query
                          a ratio of means: the unit of effect[X] of the patching tools and of
                          the circuit tool's faithfulness, necessity, beats_random and loo_drop.
                          Below 5 % a component is not a meaningful carrier of the behaviour:
                          5 % is each one's share when the effect is spread evenly over 20
                          components (MiniLM has 72 heads); a finer share names no carrier.
                          The same bound serves a set (a circuit beats random sets by at least
                          it) and a member (leaving it out loses at least it).
    patching_effect   0.005 a patching effect in score units: about half the score SESOI, since
                          one component carries a part of the effect. No tool declares an
                          estimate of this family any more (score-unit effects are descriptive,
                          e.g. effect_score[X]); kept for stored policies and older evidence.
    ablation_delta    0.005 the change of the behaviour's score delta when components are ablated,
                          in score units, for the same reason.
    attention_mass    0.05  a share of attention mass: 5 % of a head's attention over the uniform
                          baseline is the smallest routing difference worth reporting.
    rank_gain         1.0   a mean change of a document's rank among its query's candidates: less
                          than one position moves no document past another on average.
A family without an entry uses ``default_sesoi`` (0.01).

Multiplicity
    Within one call the engine counts the tests (the members of the criterion's family in the
    per-query table) and divides the level by that count (Bonferroni). Across the investigation's
    confirmatory hypotheses, ``lond`` gives the i-th one the level ``alpha * gamma_i * (D + 1)``
    with ``gamma_i = 6 / (pi^2 i^2)`` and ``D`` the number of earlier supported hypotheses (LOND,
    Javanmard & Montanari 2018: controls the FDR at ``alpha`` for independent tests);
    ``bonferroni`` gives each the level ``alpha / max_hypotheses`` (family-wise error control for
    a planned number of hypotheses).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from rankscope.experiments_db.records import Criterion
from rankscope.tools.stats import lond_levels

DEFAULT_SESOI: dict[str, float] = {
    "behaviour_share": 0.10,
    "score_delta": 0.01,
    "patching_fraction": 0.05,
    "patching_effect": 0.005,
    "ablation_delta": 0.005,
    "attention_mass": 0.05,
    "rank_gain": 1.0,
}


class StatsPolicy(BaseModel):
    """How sure the rules must be before a result counts (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(0.05, gt=0.0, lt=0.5, description="Investigation-wide error level.")
    min_queries: int = Field(8, ge=2, description="Queries a split needs to be decided.")
    min_pairs: int = Field(24, ge=2, description="Pairs a split needs to be decided.")
    sesoi: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_SESOI),
        description="Smallest effect size of interest per metric family.",
    )
    default_sesoi: float = Field(0.01, ge=0.0, description="SESOI of an unlisted family.")
    multiplicity: Literal["lond", "bonferroni"] = "lond"
    max_hypotheses: int = Field(
        12, ge=1, description="Planned confirmatory hypotheses (Bonferroni only)."
    )
    n_resamples: int = Field(2000, ge=100, description="Bootstrap resamples of a CI.")

    def sesoi_for(self, family: str) -> float:
        """The SESOI of a metric family."""
        return float(self.sesoi.get(family, self.default_sesoi))

    def effective_threshold(self, criterion: Criterion, *, null_value: float, family: str) -> float:
        """The threshold the rules test: the planner's, moved out to the SESOI when it is closer
        to the null (``max(t, null + sesoi)`` for ``greater``, ``min(t, null - sesoi)`` for
        ``less``; a two-sided claim's distance from the null is at least the SESOI)."""
        sesoi = self.sesoi_for(family)
        t = criterion.threshold
        if criterion.direction == "greater":
            return max(t, null_value + sesoi)
        if criterion.direction == "less":
            return min(t, null_value - sesoi)
        return max(abs(t - null_value), sesoi)

    def check(self, criterion: Criterion) -> str | None:
        """Why a criterion is looser than the policy allows (None: it is not)."""
        if criterion.alpha > self.alpha + 1e-12:
            return (
                f"alpha {criterion.alpha:g} is above the investigation's alpha {self.alpha:g}; "
                "a criterion may be stricter than the policy, never looser"
            )
        if criterion.split != "discovery":
            return (
                f"split {criterion.split!r}: a criterion is pre-registered on the discovery split; "
                "the held-out split is run by the engine as the replication"
            )
        return None

    def level(self, index: int, discoveries: int, alpha: float | None = None) -> float:
        """The level of the ``index``-th confirmatory hypothesis (1-based) after ``discoveries``
        supported ones, from ``alpha`` (the criterion's, at most the policy's)."""
        base = min(self.alpha, alpha if alpha is not None else self.alpha)
        if self.multiplicity == "bonferroni":
            return base / self.max_hypotheses
        return min(base, lond_levels(base, discoveries, index))

    def describe(self) -> list[str]:
        """Lines for a report."""
        sesoi = ", ".join(f"{k} {v:g}" for k, v in sorted(self.sesoi.items()))
        procedure = (
            "LOND across confirmatory hypotheses (alpha_i = alpha * 6/(pi^2 i^2) * (D+1))"
            if self.multiplicity == "lond"
            else f"Bonferroni over {self.max_hypotheses} planned hypotheses"
        )
        return [
            f"alpha {self.alpha:g} (one-sided claims: CI level 1 - 2 alpha_i)",
            f"minimum per split: {self.min_queries} queries, {self.min_pairs} pairs",
            f"SESOI: {sesoi}; other families {self.default_sesoi:g}",
            f"multiplicity: Bonferroni within a call, {procedure}",
            f"bootstrap: {self.n_resamples} resamples over queries",
        ]


def load_policy(path: Path) -> StatsPolicy:
    """A policy from a TOML file (keys as :class:`StatsPolicy`'s fields; a ``[sesoi]`` table
    overrides single families and keeps the other defaults)."""
    with path.open("rb") as handle:
        raw = tomllib.load(handle)
    section = raw.get("policy", raw)
    sesoi = {**DEFAULT_SESOI, **section.get("sesoi", {})}
    return StatsPolicy.model_validate({**section, "sesoi": sesoi})


def make_policy(
    path: Path | None = None, *, alpha: float | None = None, min_queries: int | None = None
) -> StatsPolicy:
    """The policy of the CLI flags: the file's (or the defaults), then ``--alpha`` and
    ``--min-queries`` on top."""
    policy = load_policy(path) if path is not None else StatsPolicy()
    update: dict[str, float | int] = {}
    if alpha is not None:
        update["alpha"] = alpha
    if min_queries is not None:
        update["min_queries"] = min_queries
    return StatsPolicy.model_validate({**policy.model_dump(), **update})

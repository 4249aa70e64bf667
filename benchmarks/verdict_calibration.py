"""Calibration of the verdict rules: the false-support rate under the null and the power (issue 10).

Run on demand::

    python benchmarks/verdict_calibration.py [--quick] [--seed 0] [--figure PATH]

(a) Null simulation. Each simulated investigation has a discovery and a disjoint held-out set of
    queries (8, 16 or 32 each) and ``K`` components (heads) whose true effect is the null by
    construction, with noise 1, 2 or 4 times the base SDs below (more noise: a more extreme
    best of ``K`` for the planner to pick). A pair's value of a component is its true effect
    plus a query-level deviation plus pair noise, and the tools are deterministic: a re-run on
    the same queries returns the same pairs, so the discovery evidence of a claim is exactly
    what the planner was shown (its worst case). An **adversarial planner** then
    - screens all ``K`` components on the discovery queries and is shown every estimate and CI
      (never a held-out number: of the held-out split it only learns met / not met);
    - picks the component furthest from the null (multiplicity: the best of ``K``), the direction
      of its sign, and registers a one-component call, so the engine counts one test;
    - takes the laxest settings it may: alpha = the policy's alpha, a threshold tuned just
      inside the CI it saw or the policy's effective minimum (null ± SESOI), whichever is laxer;
    - repeats near-identical claims (the same component, the call's arguments tweaked so it is
      not the same call): after a supported claim (LOND then grants a larger level to the next
      hypothesis) and once after a claim that failed only on the held-out split.
    Every hypothesis is decided by the engine's verdict rules (``rankscope.agent.verdicts``:
    ``evaluate_split`` on a per-query evidence table, then ``decide``) under the real
    ``StatsPolicy`` (levels by LOND). Two nulls are run: the effect
    is exactly the null ("null"), and the effect sits at the SESOI, the least favourable point of
    "no effect that matters" ("boundary"). Printed: the false-support rate with its
    Clopper–Pearson CI (target: upper bound <= 0.05), and, for contrast, how often the
    discovery split alone was met.
(b) Power. One planted component with effect 0.5, 1, 1.5, 2, 3 x SESOI, 8, 16, 32, 64 queries
    in each split, registered as the investigation's first confirmatory hypothesis (LOND level
    alpha * 6 / pi^2 ~ 0.030 at alpha 0.05) with the laxest threshold: the supported rate per
    cell, as a table and a figure.

The metric family is ``score_delta`` (null 0, SESOI 0.01 by default); query-level SD 0.015,
pair-level SD 0.03, 4 pairs per query.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
from scipy import stats

from rankscope.agent import verdicts
from rankscope.agent.policy import StatsPolicy
from rankscope.experiments_db.records import Criterion, EvidenceRecord
from rankscope.tools.metric_keys import MetricSpec
from rankscope.tools.stats import (
    QueryValue,
    bootstrap,
    per_query_rows,
    values_by_query,
)

FAMILY = "score_delta"
NULL_VALUE = 0.0
QUERY_SD = 0.015
PAIR_SD = 0.03
PAIRS_PER_QUERY = 4
N_COMPONENTS = 20
HYPOTHESES_PER_INVESTIGATION = 10
MAX_REPEATS = 3
EFFECTS_IN_SESOI = (0.5, 1.0, 1.5, 2.0, 3.0)
N_QUERIES = (8, 16, 32, 64)
NULL_QUERIES = (8, 16, 32)
NULL_NOISE = (1.0, 2.0, 4.0)

ClaimDirection = Literal["greater", "less"]
SplitOutcome = Literal["met", "contradicted", "negligible", "undetermined"]


# --- the verdict rules (docs/evidence_contract.md §5) ---------------------------------------

METRIC_SPEC = MetricSpec(
    name="effect", component=True, kind="estimate", family=FAMILY, null_value=NULL_VALUE
)


def split_result(
    values: Sequence[QueryValue],
    *,
    criterion: Criterion,
    policy: StatsPolicy,
    level: float,
    seed: int,
) -> verdicts.SplitResult:
    """One split decided by the engine (``rankscope.agent.verdicts.evaluate_split``) on evidence
    whose per-query table holds ``values`` under the criterion's metric; ``level`` is the
    hypothesis's level (the engine divides it by the tests the call made: one here)."""
    evidence = EvidenceRecord(
        id=seed,
        experiment_id=seed,
        metrics={},
        summary="",
        tables={"per_query": per_query_rows({criterion.metric: list(values)})},
        approximate=False,
        created_at=datetime.now(UTC),
    )
    return verdicts.evaluate_split(
        criterion, evidence, split="simulated", spec=METRIC_SPEC, policy=policy, level=level
    )


def split_outcome(
    values: Sequence[QueryValue],
    *,
    criterion: Criterion,
    policy: StatsPolicy,
    level: float,
    seed: int,
) -> SplitOutcome:
    """The engine's outcome of one split, with "negligible" apart from "contradicted"."""
    result = split_result(values, criterion=criterion, policy=policy, level=level, seed=seed)
    if result.outcome == "contradicted" and result.negligible:
        return "negligible"
    return result.outcome


def decide(
    discovery: Sequence[QueryValue],
    heldout: Sequence[QueryValue],
    *,
    criterion: Criterion,
    policy: StatsPolicy,
    index: int,
    discoveries: int,
    seed: int,
) -> tuple[str, SplitOutcome, SplitOutcome, float]:
    """(verdict, discovery outcome, held-out outcome, level spent) of the ``index``-th
    confirmatory hypothesis after ``discoveries`` supported ones, by the engine's
    ``verdicts.decide`` (the simulated calls are never repeats of an earlier hypothesis's call,
    so none is exploratory; the held-out queries are disjoint from discovery's by construction,
    which is checked here as the engine checks it from the stored qids)."""
    refusal = policy.check(criterion)
    if refusal is not None:
        raise ValueError(refusal)
    if {v.qid for v in discovery} & {v.qid for v in heldout}:
        raise ValueError("held-out queries overlap the discovery queries")
    level = policy.level(index, discoveries, criterion.alpha)
    first = split_result(discovery, criterion=criterion, policy=policy, level=level, seed=seed)
    second = split_result(heldout, criterion=criterion, policy=policy, level=level, seed=seed + 1)
    decision = verdicts.decide(first, second)
    verdict = "refuted (negligible)" if decision.negligible else decision.status
    outcomes: list[SplitOutcome] = [
        "negligible" if r.outcome == "contradicted" and r.negligible else r.outcome
        for r in (first, second)
    ]
    return verdict, outcomes[0], outcomes[1], level


# --- the simulated world --------------------------------------------------------------------


@dataclass
class Split:
    """A split's queries and its pair-level values of each component ``[n, K, pairs]``.

    The tools are deterministic: a run of the same component on the same queries returns the
    same pairs, whatever the call's other arguments (the planner's worst case: a re-run on the
    discovery split reproduces exactly what it was shown)."""

    qids: list[str]
    pairs: np.ndarray

    @classmethod
    def draw(
        cls, rng: np.random.Generator, prefix: str, n: int, means: np.ndarray, noise: float = 1.0
    ) -> Split:
        """``n`` queries; query-level SD ``QUERY_SD * noise``, pair-level ``PAIR_SD * noise``."""
        truth = means[None, :] + rng.normal(0.0, QUERY_SD * noise, size=(n, means.size))
        pair_noise = rng.normal(0.0, PAIR_SD * noise, size=(n, means.size, PAIRS_PER_QUERY))
        return cls(qids=[f"{prefix}{i}" for i in range(n)], pairs=truth[:, :, None] + pair_noise)

    def run(self, component: int) -> list[QueryValue]:
        """A run of one component: its per-query values, from the pairs."""
        qids = [q for q in self.qids for _ in range(PAIRS_PER_QUERY)]
        return values_by_query(qids, self.pairs[:, component, :].ravel().tolist())

    def screen(self) -> np.ndarray:
        """A run of every component: per-query means ``[n, K]``."""
        return self.pairs.mean(axis=2)


@dataclass
class Tally:
    """Counts of one scenario."""

    hypotheses: int = 0
    supported: int = 0
    discovery_met: int = 0
    discovery_met_at_alpha: int = 0
    verdicts: dict[str, int] = field(default_factory=dict)

    def add(self, verdict: str, discovery: SplitOutcome, at_alpha: SplitOutcome) -> None:
        """Count a hypothesis: its verdict, its discovery outcome at its level and at the
        policy's alpha (what the discovery split alone would give without LOND)."""
        self.hypotheses += 1
        self.supported += verdict == "supported"
        self.discovery_met += discovery == "met"
        self.discovery_met_at_alpha += at_alpha == "met"
        self.verdicts[verdict] = self.verdicts.get(verdict, 0) + 1


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact binomial CI of ``k`` successes in ``n`` trials."""
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)


def adversarial_investigation(
    rng: np.random.Generator, policy: StatsPolicy, shift: float, tally: Tally
) -> None:
    """One investigation of the adversarial planner against components whose true effect is
    ``NULL_VALUE + shift`` (see the module docstring)."""
    n = int(rng.choice(NULL_QUERIES))
    noise = float(rng.choice(NULL_NOISE))
    means = np.full(N_COMPONENTS, NULL_VALUE + shift)
    discovery = Split.draw(rng, "d", n, means, noise)
    heldout = Split.draw(rng, "h", n, means, noise)
    seen = discovery.screen()
    estimate, low, high = bootstrap(seen, confidence=1.0 - 2.0 * policy.alpha)
    ranking = list(np.argsort(-np.abs(estimate - NULL_VALUE)))
    sesoi = policy.sesoi_for(FAMILY)
    discoveries = 0
    repeats = 0
    call = 0
    for index in range(1, HYPOTHESES_PER_INVESTIGATION + 1):
        component = int(ranking[0])
        direction: ClaimDirection = "greater" if estimate[component] >= NULL_VALUE else "less"
        # Just inside the CI it saw, but never stricter than the policy's floor: the laxest.
        if direction == "greater":
            tuned = min(low[component] - 1e-4, NULL_VALUE + sesoi)
        else:
            tuned = max(high[component] + 1e-4, NULL_VALUE - sesoi)
        criterion = Criterion(
            metric=f"effect[L0.H{component}]",
            direction=direction,
            threshold=float(tuned),
            alpha=policy.alpha,
        )
        call += 1
        shown = discovery.run(component)
        verdict, first, second, _ = decide(
            shown,
            heldout.run(component),
            criterion=criterion,
            policy=policy,
            index=index,
            discoveries=discoveries,
            seed=call,
        )
        at_alpha = split_outcome(
            shown, criterion=criterion, policy=policy, level=policy.alpha, seed=call
        )
        tally.add(verdict, first, at_alpha)
        if verdict == "supported":
            discoveries += 1
        retry = (verdict == "supported") or (first == "met" and second != "met" and repeats == 0)
        if retry and repeats < MAX_REPEATS:
            repeats += 1
            continue
        repeats = 0
        ranking = ranking[1:] or ranking


def null_simulation(policy: StatsPolicy, investigations: int, seed: int) -> dict[str, Tally]:
    """The adversarial planner against the exact null and against the SESOI boundary."""
    out: dict[str, Tally] = {}
    for offset, (name, shift) in enumerate([("null", 0.0), ("boundary", policy.sesoi_for(FAMILY))]):
        rng = np.random.default_rng([seed, offset])
        tally = Tally()
        for _ in range(investigations):
            adversarial_investigation(rng, policy, shift, tally)
        out[name] = tally
    return out


def power_simulation(policy: StatsPolicy, reps: int, seed: int) -> dict[tuple[float, int], float]:
    """Supported rate of one planted component per (effect in SESOI, queries per split)."""
    sesoi = policy.sesoi_for(FAMILY)
    out: dict[tuple[float, int], float] = {}
    for e, effect in enumerate(EFFECTS_IN_SESOI):
        for m, n in enumerate(N_QUERIES):
            rng = np.random.default_rng([seed, e, m])
            means = np.array([NULL_VALUE + effect * sesoi])
            supported = 0
            for rep in range(reps):
                criterion = Criterion(
                    metric="effect[L0.H0]", direction="greater", threshold=NULL_VALUE
                )
                verdict, *_ = decide(
                    Split.draw(rng, "d", n, means).run(0),
                    Split.draw(rng, "h", n, means).run(0),
                    criterion=criterion,
                    policy=policy,
                    index=1,
                    discoveries=0,
                    seed=2 * rep,
                )
                supported += verdict == "supported"
            out[(effect, n)] = supported / reps
    return out


@dataclass
class Calibration:
    """Everything the benchmark measured."""

    null: dict[str, Tally]
    power: dict[tuple[float, int], float]
    power_reps: int
    seconds: float

    def false_support(self, scenario: str) -> tuple[float, float, float]:
        """(rate, CI low, CI high) of the false-support rate of a null scenario."""
        tally = self.null[scenario]
        low, high = clopper_pearson(tally.supported, tally.hypotheses)
        return tally.supported / tally.hypotheses, low, high


def calibrate(
    *, quick: bool, seed: int = 0, progress: Callable[[str], None] | None = None
) -> Calibration:
    """Run both simulations (``quick``: 30 investigations per null, 40 repetitions per cell)."""
    policy = StatsPolicy()
    start = time.perf_counter()
    investigations, reps = (30, 40) if quick else (150, 300)
    null = null_simulation(policy, investigations, seed)
    if progress is not None:
        progress(f"null simulation done in {time.perf_counter() - start:.1f} s")
    power = power_simulation(policy, reps, seed)
    return Calibration(null=null, power=power, power_reps=reps, seconds=time.perf_counter() - start)


def report(result: Calibration) -> str:
    """The printed figures and tables."""
    policy = StatsPolicy()
    lines = [
        "rules: rankscope.agent.verdicts (evaluate_split, decide)",
        f"policy: alpha {policy.alpha:g}, min {policy.min_queries} queries / {policy.min_pairs} "
        f"pairs, SESOI {FAMILY} {policy.sesoi_for(FAMILY):g}, {policy.multiplicity}",
        "",
        "(a) adversarial planner, effects null by construction",
        f"{'scenario':<10} {'hypotheses':>10} {'supported':>9} {'rate':>7} "
        f"{'95% CI (Clopper-Pearson)':>26} {'disc. met':>9} {'@alpha':>7}  verdicts",
    ]
    for scenario, tally in result.null.items():
        rate, low, high = result.false_support(scenario)
        verdicts = ", ".join(f"{k} {v}" for k, v in sorted(tally.verdicts.items()))
        lines.append(
            f"{scenario:<10} {tally.hypotheses:>10} {tally.supported:>9} {rate:>7.4f} "
            f"{f'[{low:.4f}, {high:.4f}]':>26} {tally.discovery_met / tally.hypotheses:>9.3f}"
            f" {tally.discovery_met_at_alpha / tally.hypotheses:>7.3f}"
            f"  {verdicts}"
        )
        lines.append(f"{'':<10} target: upper bound <= 0.05: {'PASS' if high <= 0.05 else 'FAIL'}")
    lines += [
        "",
        f"(b) power: supported rate of a planted effect ({result.power_reps} repetitions per cell; "
        "first confirmatory hypothesis, LOND level "
        f"{policy.level(1, 0):.4f})",
        f"{'effect / SESOI':>14} " + " ".join(f"{f'n={n}':>7}" for n in N_QUERIES),
    ]
    for effect in EFFECTS_IN_SESOI:
        cells = " ".join(f"{result.power[(effect, n)]:>7.3f}" for n in N_QUERIES)
        lines.append(f"{effect:>14g} {cells}")
    lines += ["", f"time: {result.seconds:.1f} s"]
    return "\n".join(lines)


def figure(result: Calibration, path: Path) -> None:
    """Power curves and the false-support rates with their CIs, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), width_ratios=[2, 1])
    for effect in EFFECTS_IN_SESOI:
        left.plot(
            N_QUERIES,
            [result.power[(effect, n)] for n in N_QUERIES],
            marker="o",
            label=f"{effect:g} x SESOI",
        )
    left.set_xscale("log", base=2)
    left.set_xticks(N_QUERIES, [str(n) for n in N_QUERIES])
    left.set_xlabel("queries per split (discovery and held-out)")
    left.set_ylabel("supported rate")
    left.set_ylim(-0.02, 1.02)
    left.set_title("(b) power of the verdict rules")
    left.legend(fontsize=8)
    names = list(result.null)
    rates = [result.false_support(s) for s in names]
    right.errorbar(
        range(len(names)),
        [r for r, _, _ in rates],
        yerr=[[r - lo for r, lo, _ in rates], [hi - r for r, _, hi in rates]],
        fmt="o",
        capsize=6,
    )
    right.axhline(0.05, color="red", linestyle="--", label="target 0.05")
    right.set_xticks(range(len(names)), names)
    right.set_xlim(-0.5, len(names) - 0.5)
    right.set_ylim(-0.003, 0.1)
    right.set_ylabel("false-support rate (95% CI)")
    right.set_title("(a) adversarial planner, null")
    right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few hundred hypotheses")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--figure", type=Path, default=Path("verdict_calibration.png"))
    args = parser.parse_args(argv)
    result = calibrate(quick=args.quick, seed=args.seed, progress=print)
    print(report(result))
    figure(result, args.figure)
    print(f"figure: {args.figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

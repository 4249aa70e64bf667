"""The calibration benchmark's quick mode: the verdict rules keep an adversarial planner's
false-support rate under the target, and their power grows with the number of queries."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "verdict_calibration.py"


def load_benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("verdict_calibration", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the module's annotations through it
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def calibration() -> tuple[ModuleType, Any, float]:
    module = load_benchmark()
    start = time.perf_counter()
    result = module.calibrate(quick=True, seed=0)
    return module, result, time.perf_counter() - start


def test_false_support_rate_upper_bound_is_at_most_5_percent(
    calibration: tuple[ModuleType, Any, float],
) -> None:
    _, result, seconds = calibration
    assert seconds < 20.0
    for scenario in ("null", "boundary"):
        tally = result.null[scenario]
        assert tally.hypotheses >= 300
        rate, low, high = result.false_support(scenario)
        assert low <= rate <= high
        assert high <= 0.05, (scenario, rate, high)


def test_power_of_a_two_sesoi_effect_grows_with_the_number_of_queries(
    calibration: tuple[ModuleType, Any, float],
) -> None:
    module, result, _ = calibration
    power = [result.power[(2.0, n)] for n in module.N_QUERIES]
    assert all(a <= b for a, b in zip(power, power[1:], strict=False)), power
    assert power[-1] - power[0] >= 0.5, power
    # Below the SESOI nothing is supported: the rules need an effect that matters.
    assert all(result.power[(0.5, n)] == 0.0 for n in module.N_QUERIES)


def test_report_and_figure(calibration: tuple[ModuleType, Any, float], tmp_path: Path) -> None:
    module, result, _ = calibration
    text = module.report(result)
    assert "Clopper-Pearson" in text and "effect / SESOI" in text
    path = tmp_path / "calibration.png"
    module.figure(result, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def rules_as_written(
    values: list[Any], *, criterion: Any, policy: Any, level: float, null: float, sesoi: float
) -> str:
    """docs/evidence_contract.md §5 for one split, stated independently of the engine: met,
    negligible, contradicted or undetermined."""
    from rankscope.tools.stats import query_inference

    greater = criterion.direction == "greater"
    threshold = (
        max(criterion.threshold, null + sesoi)
        if greater
        else min(criterion.threshold, null - sesoi)
    )
    result = query_inference(
        values,
        threshold=threshold,
        direction=criterion.direction,
        alpha=level,
        equivalence=(null - sesoi, null + sesoi),
    )
    if (
        result.n_queries < policy.min_queries
        or result.n_pairs < policy.min_pairs
        or result.p_value is None
    ):
        return "undetermined"
    beyond = result.ci_low > threshold if greater else result.ci_high < threshold
    if beyond and result.p_value < level:
        return "met"
    if result.tost_p is not None and result.tost_p < level:
        return "negligible"
    if (result.ci_high < threshold) if greater else (result.ci_low > threshold):
        return "contradicted"
    return "undetermined"


def test_the_benchmark_decides_by_the_rules_of_the_evidence_contract() -> None:
    import numpy as np

    from rankscope.agent.policy import StatsPolicy
    from rankscope.experiments_db.records import Criterion

    module = load_benchmark()
    policy = StatsPolicy()
    sesoi = policy.sesoi_for(module.FAMILY)
    rng = np.random.default_rng(5)
    outcomes = set()
    for i in range(60):
        shift = float(rng.choice([-0.03, 0.0, 0.005, 0.02, 0.04]))
        split = module.Split.draw(rng, "d", int(rng.choice([6, 8, 16])), np.array([shift]))
        values = split.run(0)
        for direction in ("greater", "less"):
            criterion = Criterion(metric="effect[L0.H0]", direction=direction, threshold=0.0)
            engine = module.split_outcome(
                values, criterion=criterion, policy=policy, level=0.03, seed=i
            )
            expected = rules_as_written(
                values,
                criterion=criterion,
                policy=policy,
                level=0.03,
                null=module.NULL_VALUE,
                sesoi=sesoi,
            )
            assert engine == expected, (i, direction)
            outcomes.add(expected)
    assert {"met", "contradicted", "undetermined"} <= outcomes

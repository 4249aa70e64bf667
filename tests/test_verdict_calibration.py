"""The calibration benchmark's quick mode: the verdict rules keep an adversarial planner's
false-support rate under the target, and their power grows with the number of queries."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

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
def calibration() -> tuple[ModuleType, object, float]:
    module = load_benchmark()
    start = time.perf_counter()
    result = module.calibrate(quick=True, seed=0)
    return module, result, time.perf_counter() - start


def test_false_support_rate_upper_bound_is_at_most_5_percent(
    calibration: tuple[ModuleType, object, float],
) -> None:
    _, result, seconds = calibration
    assert seconds < 20.0
    for scenario in ("null", "boundary"):
        tally = result.null[scenario]  # type: ignore[attr-defined]
        assert tally.hypotheses >= 300
        rate, low, high = result.false_support(scenario)  # type: ignore[attr-defined]
        assert low <= rate <= high
        assert high <= 0.05, (scenario, rate, high)


def test_power_of_a_two_sesoi_effect_grows_with_the_number_of_queries(
    calibration: tuple[ModuleType, object, float],
) -> None:
    module, result, _ = calibration
    power = [result.power[(2.0, n)] for n in module.N_QUERIES]  # type: ignore[attr-defined]
    assert all(a <= b for a, b in zip(power, power[1:], strict=False)), power
    assert power[-1] - power[0] >= 0.5, power
    # Below the SESOI nothing is supported: the rules need an effect that matters.
    assert all(result.power[(0.5, n)] == 0.0 for n in module.N_QUERIES)  # type: ignore[attr-defined]


def test_report_and_figure(calibration: tuple[ModuleType, object, float], tmp_path: Path) -> None:
    module, result, _ = calibration
    text = module.report(result)
    assert "Clopper-Pearson" in text and "effect / SESOI" in text
    path = tmp_path / "calibration.png"
    module.figure(result, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

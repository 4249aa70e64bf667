"""The statistical policy covers every kind of estimate the tools declare."""

from __future__ import annotations

from rankscope.agent.policy import DEFAULT_SESOI
from rankscope.tools.registry import all_tools


def test_every_declared_estimate_family_has_a_documented_sesoi() -> None:
    """A family without its own SESOI would fall back on a score-sized default (0.01), which is
    meaningless for shares, ranks or fractions; every family a tool declares must be listed."""
    families = {
        spec.family
        for tool in all_tools().values()
        if tool.metrics is not None
        for spec in tool.metrics.specs
        if spec.kind == "estimate"
    }
    assert families, "no tool declares an estimate"
    missing = sorted(families - set(DEFAULT_SESOI))
    assert not missing, f"estimate families without a SESOI in agent/policy.py: {missing}"

"""Validate a planner's tool call before anything runs.

``check_call`` validates a call against the registry (unknown tool, arguments that do not
validate, a criterion metric the tool does not produce) and raises :class:`CallRejected` with a
message the planner can act on: nothing runs.
"""

from __future__ import annotations

import re
from typing import Any

from rankscope.tools.contract import Tool, ToolArgs
from rankscope.tools.registry import (
    ToolArgumentError,
    UnknownToolError,
    all_tools,
    get_tool,
    validate_args,
)

_NUM = r"-?\d+(?:\.\d+)?"
_CI = r"(?:_ci_low|_ci_high)?"

_PATCHING = (
    r"n_pairs|n_dropped|n_components|mean_delta|top_p_value|top_layer|top_head",
    rf"top_effect{_CI}",
    r"(effect|effect_ci_low|effect_ci_high|p_value)\[[^\[\]]+\]",
)

METRIC_PATTERNS: dict[str, tuple[str, ...]] = {
    "behavioural_test": (
        rf"(share_moved_predicted|mean_delta|median_delta|mean_rank_gain){_CI}",
        r"p_value|n_pairs|n_queries|mean_relative_delta|share_rank_improved|share_rank_worsened",
        rf"(share_moved_predicted|mean_delta)\[grade={_NUM}\]",
    ),
    "activation_patching": _PATCHING,
    "attribution_patching": _PATCHING,
    "ablation": (
        r"n_pairs|n_components|mean_delta|share_pert_higher|rank_gain|n_ranked_pairs",
        r"top_p_value|top_fraction_removed",
        rf"top_delta_change{_CI}",
        r"(delta_change|delta_change_ci_low|delta_change_ci_high|p_value|fraction_removed"
        r"|delta_ablated|rank_gain_ablated|kendall_tau)\[[^\[\]]+\]",
    ),
    "attention_by_role": (
        r"n_pairs|n_heads|top_lift|uniform_attention",
        rf"top_attention{_CI}",
        r"attention\[[^\[\]]+\]",
    ),
}
"""Metrics each tool produces, as regular expressions (full match); tools may also declare
``metric_names(args)`` themselves, which wins. A tool in neither is checked after its run."""


class CallRejected(ValueError):
    """A planner's tool call that must not run; the message is feedback for the planner."""


def tool_metric_names(tool: Tool, args: ToolArgs) -> list[str] | None:
    """The metric names ``tool`` declares for ``args``, when it declares them."""
    declare = getattr(tool, "metric_names", None)
    if callable(declare):
        return list(declare(args))
    return None


def metric_known(tool: Tool, args: ToolArgs, metric: str) -> bool | None:
    """Whether the tool produces ``metric`` (None: the tool does not say; checked after the run)."""
    names = tool_metric_names(tool, args)
    if names is not None:
        return metric in names
    patterns = METRIC_PATTERNS.get(tool.name)
    if patterns is None:
        return None
    return any(re.fullmatch(p, metric) for p in patterns)


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
    if metric is not None and metric_known(tool, args, metric) is False:
        names = tool_metric_names(tool, args)
        listed = ", ".join(names) if names else " | ".join(METRIC_PATTERNS.get(tool.name, ()))
        raise CallRejected(
            f"tool {tool_name!r} does not produce the metric {metric!r}; it produces: {listed}"
        )
    return args


def available_tools() -> list[str]:
    return list(all_tools())

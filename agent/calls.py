"""Validate a planner's tool call before anything runs.

``check_call`` validates a call against the registry (unknown tool, arguments that do not
validate, a criterion metric the tool does not produce) and raises :class:`CallRejected` with a
message the planner can act on: nothing runs. Which metrics a tool produces is the tool's own
declaration (``Tool.metrics``, checked by ``Tool.produces``); a tool that declares none has its
criterion checked after the run.
"""

from __future__ import annotations

from typing import Any

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

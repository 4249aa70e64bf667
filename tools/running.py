"""Run one tool: the single path by which the agent, the audit and ``rankscope run`` run tools."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rankscope.tools.contract import Tool, ToolArgs, ToolContext, ToolResult
from rankscope.tools.registry import get_tool, validate_args


@dataclass(frozen=True)
class ToolRun:
    """A finished tool run: the tool, the validated arguments, its result and its wall time."""

    tool: Tool[Any]
    args: ToolArgs
    result: ToolResult
    seconds: float


def resolve_call(
    tool: str | Tool[Any], args: ToolArgs | Mapping[str, Any]
) -> tuple[Tool[Any], ToolArgs]:
    """The registered tool and its argument model for a call given by name and raw JSON (which
    is validated: :class:`~rankscope.tools.registry.ToolArgumentError` says what is wrong) or
    already as objects (used as given)."""
    resolved = get_tool(tool) if isinstance(tool, str) else tool
    if isinstance(args, ToolArgs):
        if not isinstance(args, resolved.Args):
            raise TypeError(f"arguments of type {type(args).__name__} are not {resolved.name}'s")
        return resolved, args
    return resolved, validate_args(resolved, dict(args))


def run_tool(
    tool: str | Tool[Any], args: ToolArgs | Mapping[str, Any], ctx: ToolContext
) -> ToolRun:
    """Run a tool call in ``ctx``; errors of the tool propagate to the caller."""
    resolved, parsed = resolve_call(tool, args)
    started = time.perf_counter()
    result = resolved.run(ctx, parsed)
    return ToolRun(resolved, parsed, result, time.perf_counter() - started)

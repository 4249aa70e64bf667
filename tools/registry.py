"""The tool registry: every tool module registers its class here; planners read the schemas."""

from __future__ import annotations

import importlib
from typing import Any, TypeVar

from pydantic import ValidationError

from rankscope.tools.contract import ArgsT, Tool

TOOL_MODULES: tuple[str, ...] = (
    "rankscope.tools.catalog.behavioural_test",
    "rankscope.tools.catalog.activation_patching",
    "rankscope.tools.catalog.circuit",
    "rankscope.tools.catalog.path_patching",
    "rankscope.tools.catalog.ablation",
    "rankscope.tools.catalog.attention_by_role",
    "rankscope.tools.catalog.attention_masking",
    "rankscope.tools.catalog.attribution_patching",
    "rankscope.tools.catalog.linear_probe",
    "rankscope.tools.catalog.train_sae",
    "rankscope.tools.catalog.feature_inspection",
    "rankscope.tools.catalog.steering",
    "rankscope.tools.catalog.embedding_svd",
    "rankscope.tools.catalog.term_contributions",
    "rankscope.tools.catalog.axiom_screen",
    "rankscope.tools.catalog.token_screen",
    "rankscope.tools.catalog.property_regression",
    "rankscope.tools.catalog.input_attribution",
)

_TOOLS: dict[str, type[Tool[Any]]] = {}
ToolT = TypeVar("ToolT", bound=type[Tool[Any]])


class UnknownToolError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class ToolArgumentError(ValueError):
    """Arguments that do not validate against a tool's ``Args`` model."""


def register(cls: ToolT) -> ToolT:
    """Class decorator: add a tool to the registry under its ``name``."""
    if cls.name in _TOOLS and _TOOLS[cls.name] is not cls:
        raise ValueError(f"two tools are registered under the name {cls.name!r}")
    _TOOLS[cls.name] = cls
    return cls


def _load_all() -> None:
    for module in TOOL_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise


def all_tools() -> dict[str, type[Tool[Any]]]:
    """Every registered tool by name, sorted."""
    _load_all()
    return dict(sorted(_TOOLS.items()))


def get_tool(name: str) -> Tool[Any]:
    tools = all_tools()
    if name not in tools:
        raise UnknownToolError(
            f"unknown tool {name!r}; available tools: {', '.join(tools)} (see `rankscope tools`)"
        )
    return tools[name]()


def validate_args(tool: Tool[ArgsT], raw: dict[str, Any]) -> ArgsT:
    """Validate raw arguments; raise ToolArgumentError with a message a planner can act on."""
    try:
        return tool.Args.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(arguments)'}: {e['msg']}"
            for e in err.errors()
        )
        raise ToolArgumentError(f"invalid arguments for tool {tool.name!r}: {problems}") from err


def openai_tool_specs() -> list[dict[str, Any]]:
    return [cls.openai_schema() for cls in all_tools().values()]

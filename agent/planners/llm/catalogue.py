"""How the tools are offered to the model: the catalogue and the function specs of a request.

``ToolCatalogue`` names the three ways:

* ``"compact"`` (default): the system prompt lists each tool on one line (``catalogue_line``:
  name, what it tests, the estimates a criterion may name, one written out with concrete
  values); the functions are ``propose(tool, hypothesis,
  rationale, criterion, components, args, parent_hypothesis_id)``, ``describe_tool(name)``
  (answered in the same conversation with ``describe_answer``: the tool's argument schema,
  reduced by ``planner_args_schema``) and ``stop(reason)``. A call named after a tool itself is
  accepted as a ``propose`` of that tool.
* ``"reduced"``: every tool is offered as a pre-registration wrapper whose ``args`` is the
  reduced schema.
* ``"full"``: every tool is offered as a wrapper around its full ``Args`` schema (about 18,000
  tokens of tool schemas for the default tools).

A pre-registration wrapper (``preregistered_tool_spec``) has the parameters::

    {"hypothesis": str, "rationale": str, "criterion": Criterion, "components": [str],
     "args": <the tool's Args schema>, "parent_hypothesis_id": int (optional)}

and is offered next to a ``stop(reason)`` function.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Sequence
from typing import Any, Literal, get_args

from rankscope.agent.planners.base import Criterion, Ledger
from rankscope.agent.planners.llm.hints import example_metric
from rankscope.tools.registry import all_tools, openai_tool_specs

__all__ = [
    "CATALOGUES",
    "DESCRIBE_FUNCTION",
    "PROPOSE_FUNCTION",
    "REQUEST_TOKEN_BUDGET",
    "STOP_FUNCTION",
    "WRAPPER_KEYS",
    "ToolCatalogue",
    "catalogue_line",
    "describe_answer",
    "describe_tool_spec",
    "function_specs",
    "offered_tools",
    "planner_args_schema",
    "preregistered_tool_spec",
    "propose_tool_spec",
    "reduced_tool_spec",
    "stop_tool_spec",
    "tool_lines",
]

ToolCatalogue = Literal["compact", "reduced", "full"]
"""How tools are offered to the model (see the module docstring)."""
CATALOGUES: tuple[str, ...] = get_args(ToolCatalogue)
STOP_FUNCTION = "stop"
PROPOSE_FUNCTION = "propose"
DESCRIBE_FUNCTION = "describe_tool"
REQUEST_TOKEN_BUDGET = 6000
"""The documented ceiling of one planning request (system and user messages plus the function
specs, chat-templated) for the default tools with the compact catalogue, at any step, counted with
the Qwen2.5 tokenizer; ``tests/test_llm_catalogue.py`` and ``benchmarks/llm_planner_budget.py``
check it. A ``describe_tool`` answer adds one tool's reduced schema (at most about 1,000 tokens) to
the conversation."""
HIDDEN_ARGS = frozenset({"seed", "split_seed", "holdout_fraction", "batch_size", "engine"})
"""Execution details the reduced schemas leave out: they keep their defaults unless a call sets
them anyway (they are still validated)."""
MAX_CATALOGUE_METRICS = 4
CATALOGUE_DESCRIPTION_CHARS = 90
WRAPPER_KEYS = (
    "hypothesis",
    "rationale",
    "criterion",
    "components",
    "args",
    "parent_hypothesis_id",
)
"""The keys of a pre-registered call (``propose`` takes ``tool`` besides)."""


def offered_tools(ledger: Ledger) -> list[dict[str, Any]]:
    """Registered tool specs the ledger allows (all registered tools when it names none)."""
    specs = openai_tool_specs()
    allowed = set(ledger.tools)
    if allowed:
        specs = [s for s in specs if s["function"]["name"] in allowed]
    reserved = {STOP_FUNCTION, PROPOSE_FUNCTION, DESCRIBE_FUNCTION}
    for spec in specs:
        if spec["function"]["name"] in reserved:
            raise ValueError(
                f"a tool is registered as {spec['function']['name']!r}, a name the planner "
                "reserves for its own functions"
            )
    return specs


def function_specs(
    catalogue: ToolCatalogue, specs: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The function specs a planning request offers for the tool ``specs``."""
    names = [spec["function"]["name"] for spec in specs]
    if catalogue == "compact":
        return [propose_tool_spec(names), describe_tool_spec(names), stop_tool_spec()]
    if catalogue == "reduced":
        specs = [reduced_tool_spec(spec) for spec in specs]
    return [preregistered_tool_spec(spec) for spec in specs] + [stop_tool_spec()]


def tool_lines(
    catalogue: ToolCatalogue, specs: Sequence[dict[str, Any]], question: str = ""
) -> list[str]:
    """The system prompt's list of tools: one catalogue line each (its example metric fitted to
    ``question``), or (when the functions carry the schemas) the name and the first line of the
    description."""
    if catalogue == "compact":
        return [catalogue_line(spec, question) for spec in specs]
    lines = []
    for spec in specs:
        function = spec["function"]
        description = (function.get("description") or "").strip().splitlines()
        lines.append(
            f"- `{function['name']}`: {description[0] if description else ''}".rstrip(": ")
        )
    return lines


def _merge_defs(target: dict[str, Any], schema: dict[str, Any], owner: str) -> dict[str, Any]:
    """``schema`` without its ``$defs``, which are moved into ``target`` (conflicts are errors)."""
    schema = copy.deepcopy(schema)
    for name, definition in schema.pop("$defs", {}).items():
        if name in target and target[name] != definition:
            raise ValueError(f"schema definition {name!r} of {owner} clashes with another one")
        target[name] = definition
    return schema


def _wrapper_properties(criterion_schema: dict[str, Any]) -> dict[str, Any]:
    """The pre-registration parameters every proposing function shares."""
    return {
        "hypothesis": {
            "type": "string",
            "description": "One falsifiable sentence about the model that this call tests.",
        },
        "rationale": {
            "type": "string",
            "description": "Why this experiment tests the hypothesis; which results led here.",
        },
        "criterion": criterion_schema,
        "components": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Components the hypothesis is about: L3.H5, L3.attn, L3.mlp, L3.resid.",
        },
    }


def _function(name: str, description: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters},
    }


def preregistered_tool_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Wrap a tool's OpenAI function spec so that a call must pre-register its hypothesis.

    The tool's own parameters move under ``args``; their ``$defs`` move to the wrapper's root,
    so every ``#/$defs/...`` reference still resolves.
    """
    function = spec["function"]
    name = function["name"]
    defs: dict[str, Any] = {}
    args_schema = _merge_defs(
        defs, function.get("parameters") or {"type": "object", "properties": {}}, name
    )
    criterion_schema = _merge_defs(defs, Criterion.model_json_schema(), "Criterion")
    args_schema["description"] = f"The arguments of the tool {name!r}."
    criterion_schema["description"] = (
        "The pre-registered prediction: metric, direction, threshold, alpha, split."
    )
    parameters: dict[str, Any] = {
        "type": "object",
        "properties": {
            **_wrapper_properties(criterion_schema),
            "args": args_schema,
            "parent_hypothesis_id": {
                "type": "integer",
                "description": "Id of the earlier hypothesis this one follows up (optional).",
            },
        },
        "required": ["hypothesis", "rationale", "criterion", "components", "args"],
        "additionalProperties": False,
    }
    if defs:
        parameters["$defs"] = defs
    description = (function.get("description") or "").strip()
    return _function(
        name,
        f"{description}\n\nPre-registered call: give the hypothesis and the criterion it must "
        "meet; the tool's own arguments go in `args`.".strip(),
        parameters,
    )


def stop_tool_spec() -> dict[str, Any]:
    """The ``stop`` function: end the investigation with a reason."""
    return _function(
        STOP_FUNCTION,
        "End the investigation: the question is answered, or nothing worth testing is left.",
        {
            "type": "object",
            "properties": {
                "reason": {"type": "string", "description": "Why the investigation ends here."}
            },
            "required": ["reason"],
            "additionalProperties": False,
        },
    )


def _reduce(node: Any, keep_defaults: bool) -> Any:
    """A JSON schema without titles (and defaults), ``anyOf [X, null]`` shortened to ``X``."""
    if isinstance(node, list):
        return [_reduce(item, keep_defaults) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "title" and not isinstance(value, dict):
            continue
        if key == "default" and not keep_defaults:
            continue
        if key == "properties":
            out[key] = {name: _reduce(sub, keep_defaults) for name, sub in value.items()}
            continue
        out[key] = _reduce(value, keep_defaults)
    options = out.get("anyOf")
    if isinstance(options, list):
        non_null = [o for o in options if o != {"type": "null"}]
        if len(non_null) == 1 and len(non_null) < len(options):
            del out["anyOf"]
            out = {**non_null[0], **out}
    return out


def planner_args_schema(tool_name: str, *, keep_defaults: bool = False) -> dict[str, Any]:
    """A tool's argument schema reduced to what a planner sets.

    ``HIDDEN_ARGS`` (seeds, batch sizes, engines) are left out, as are titles and, unless
    ``keep_defaults``, defaults; ``anyOf [X, null]`` becomes ``X``. The tool's ``$defs`` stay.
    """
    schema = copy.deepcopy(all_tools()[tool_name].Args.model_json_schema())
    properties = schema.get("properties", {})
    for name in HIDDEN_ARGS & set(properties):
        del properties[name]
    if "required" in schema:
        schema["required"] = [n for n in schema["required"] if n in properties]
        if not schema["required"]:
            del schema["required"]
    reduced: dict[str, Any] = _reduce(schema, keep_defaults)
    return reduced


def _first_sentence(text: str, limit: int = CATALOGUE_DESCRIPTION_CHARS) -> str:
    text = " ".join(text.split())
    match = re.search(r"(?<!e\.g)(?<!i\.e)(?<!\be)\.\s", text)
    if match:
        text = text[: match.start() + 1]
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0].rstrip(",;:") + " …"
    return text


def _main_metrics(tool_name: str) -> list[str]:
    """The metrics a claim can rest on: the tool's declared estimates (what a criterion may
    name; CIs, p-values, counts and descriptive numbers are left out)."""
    catalogue = all_tools()[tool_name].metrics
    if catalogue is None:
        return []
    return catalogue.estimate_patterns()[:MAX_CATALOGUE_METRICS]


def catalogue_line(spec: dict[str, Any], question: str = "") -> str:
    """One line of the compact catalogue: name, what the tool tests, the estimates a criterion
    may name (``Criterion metrics``), and one of them written out with concrete values when they
    have qualifiers (``e.g. mean_delta[axiom=TFC1|variant=append]``, fitted to the question by
    ``hints.example_metric``)."""
    function = spec["function"]
    name = function["name"]
    line = f"- `{name}`: {_first_sentence(function.get('description') or '')}"
    metrics = _main_metrics(name) if name in all_tools() else []
    if metrics:
        line += " Criterion metrics: " + ", ".join(metrics) + "."
        if "=<" in metrics[0]:
            example = example_metric(name, metrics[0].split("[", 1)[0], question=question)
            if example and "<" not in example:
                line += f" E.g. `{example}`."
    return line


def propose_tool_spec(names: Sequence[str]) -> dict[str, Any]:
    """The compact catalogue's ``propose`` function: one pre-registered call of a named tool."""
    defs: dict[str, Any] = {}
    criterion_schema = _merge_defs(defs, _reduce(Criterion.model_json_schema(), True), "Criterion")
    for field in criterion_schema.get("properties", {}).values():
        field.pop("description", None)  # the system prompt explains each key
    criterion_schema["description"] = "The pre-registered prediction."
    properties = {
        "tool": {"type": "string", "enum": list(names), "description": "The tool to run."},
        **_wrapper_properties(criterion_schema),
        "args": {
            "type": "object",
            "description": f"The tool's own arguments (`{DESCRIBE_FUNCTION}` gives them); "
            "{} takes every default.",
        },
        "parent_hypothesis_id": {
            "type": "integer",
            "description": "The earlier hypothesis this one follows up (optional).",
        },
    }
    parameters: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "required": ["tool", "hypothesis", "rationale", "criterion", "components", "args"],
        "additionalProperties": False,
    }
    if defs:
        parameters["$defs"] = defs
    return _function(PROPOSE_FUNCTION, "Run one tool as a pre-registered experiment.", parameters)


def describe_tool_spec(names: Sequence[str]) -> dict[str, Any]:
    """The compact catalogue's ``describe_tool`` function: a tool's argument schema on request."""
    return _function(
        DESCRIBE_FUNCTION,
        "Get the arguments of one tool before proposing it (runs nothing).",
        {
            "type": "object",
            "properties": {"name": {"type": "string", "enum": list(names)}},
            "required": ["name"],
            "additionalProperties": False,
        },
    )


def describe_answer(tool_name: str) -> str:
    """What ``describe_tool`` answers: the tool's reduced argument schema, defaults kept."""
    schema = planner_args_schema(tool_name, keep_defaults=True)
    return (
        f"Arguments of `{tool_name}` (JSON schema; leave an argument out to take its default): "
        + json.dumps(schema, separators=(",", ":"), ensure_ascii=False)
        + f"\nNow call `{PROPOSE_FUNCTION}` with tool `{tool_name}` (or another tool)."
    )


def reduced_tool_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A tool's spec with a one-sentence description and its reduced argument schema."""
    function = spec["function"]
    name = function["name"]
    parameters = (
        planner_args_schema(name) if name in all_tools() else function.get("parameters") or {}
    )
    return _function(name, _first_sentence(function.get("description") or ""), parameters)

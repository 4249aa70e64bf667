"""Corrections a small model can act on: concrete values, never templates.

A weak model told that ``mean_delta`` is not a metric of ``axiom_screen`` and shown the template
``mean_delta[axiom=<axiom>|variant=<variant>]`` repeats its call (measured with
Qwen2.5-Coder-1.5B, ``benchmarks/llm_local_model.py``). What it can use is the value to write:
``mean_delta[axiom=TFC1|variant=append]``, and its own call with that value in place.

* ``example_metric`` fills a tool's declared estimate with concrete values: the qualifiers from
  the call's arguments (``axiom``, ``variant``, ``perturbations``, ``edits`` …), else the
  perturbation the question names, else the argument's default; the component from the call's
  components, else ``L0.H0``.
* ``correction`` answers a proposal the graph's gate (``rankscope.agent.calls.check_proposal``)
  rejected: every fix that follows from the proposal itself (arguments the tool does not take
  dropped, a criterion metric made a concrete estimate of the tool, components matched to the
  metric, ``args.split`` left to the criterion, a direction) in one sentence, with the corrected
  call when it passes the same gate. It only suggests: the corrected call, if the model sends
  it, passes the gate again like any other.
* ``criterion_example`` and ``example_call`` give the worked example of the system prompt and
  of the feedback to a criterion that is not an object.
"""

from __future__ import annotations

import json
import re
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from rankscope.agent.calls import CallRejected, check_proposal
from rankscope.agent.planners.base import Proposal
from rankscope.agent.planners.intents import named_intent
from rankscope.agent.policy import StatsPolicy
from rankscope.agent.verdicts import components_of, criterion_spec
from rankscope.tools.metric_keys import STAT_SUFFIXES, MetricKey, try_parse_metric_key
from rankscope.tools.registry import all_tools, get_tool, validate_args
from rankscope.tools.retrievers.base import Component

__all__ = [
    "EXAMPLE_COMPONENT",
    "Correction",
    "compact_json",
    "correction",
    "criterion_example",
    "example_call",
    "example_metric",
    "first_sentence",
    "question_perturbation",
]

EXAMPLE_COMPONENT = "L0.H0"
"""The component an example metric names when the call names none."""
DEFAULT_PERTURBATION = ("TFC1", "append")
"""The perturbation an example names when neither the call nor the question names one."""
_PLACEHOLDER = re.compile(r"^<(.+)>$")
MAX_SENTENCE_CHARS = 240


@dataclass(frozen=True)
class Correction:
    """How to fix a rejected call: one sentence, and the call with the fix applied (None when no
    single corrected call follows from the rejection, e.g. a repeated experiment)."""

    fix: str
    call: dict[str, Any] | None = None


def compact_json(value: Any) -> str:
    """JSON on one line, as the model should write it."""
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=str)


def first_sentence(text: str, limit: int = MAX_SENTENCE_CHARS) -> str:
    """The first clause of a rejection message (up to the first ``;`` or sentence end), within
    ``limit`` characters: the reason in one sentence."""
    text = " ".join(text.split())
    cut = re.search(r";|\.\s|: it produces|, it produces", text)
    if cut:
        text = text[: cut.start()]
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0] + " …"
    return text.rstrip(" .:")


def question_perturbation(question: str) -> tuple[str, str] | None:
    """The (axiom, variant) the question names (``TFC1`` → ``("TFC1", "append")``), else None."""
    choice = named_intent(question)
    if choice is None or choice.axiom is None:
        return None
    return choice.axiom, choice.variant or DEFAULT_PERTURBATION[1]


def _field_values(tool: str, name: str) -> list[str]:
    """Values an argument ``name`` (or its plural) of ``tool`` takes by default or allows."""
    impl = all_tools().get(tool)
    if impl is None:
        return []
    fields = impl.Args.model_fields
    for key in (name, f"{name}s"):
        field = fields.get(key)
        if field is None:
            continue
        default = field.default
        if isinstance(default, str | int) and not isinstance(default, bool):
            return [str(default)]
        if isinstance(default, list) and default:
            return [str(v) for v in default]
        literals = [
            str(v)
            for arg in _flat_args(field.annotation)
            if typing.get_origin(arg) is typing.Literal
            for v in typing.get_args(arg)
        ]
        if literals:
            return literals
    return []


def _flat_args(annotation: Any) -> list[Any]:
    """An annotation and every type nested in it (``list[Literal[...]] | None`` → the Literal)."""
    out = [annotation]
    for arg in typing.get_args(annotation):
        out.extend(_flat_args(arg))
    return out


def _qualifier_value(
    tool: str, qualifier: str, args: Mapping[str, Any], question: str
) -> str | None:
    """A concrete value of a metric qualifier for this call (see the module docstring)."""
    given = args.get(qualifier)
    if isinstance(given, str | int) and not isinstance(given, bool):
        return str(given)
    plural = args.get(f"{qualifier}s")
    if isinstance(plural, list) and plural and isinstance(plural[0], str | int):
        return str(plural[0])
    if qualifier in ("axiom", "variant"):
        perturbations = args.get("perturbations")
        named: tuple[str, str] | None = None
        if isinstance(perturbations, list) and perturbations and "/" in str(perturbations[0]):
            axiom, _, variant = str(perturbations[0]).partition("/")
            named = (axiom, variant)
        named = named or question_perturbation(question) or DEFAULT_PERTURBATION
        return named[0] if qualifier == "axiom" else named[1]
    values = _field_values(tool, qualifier)
    return values[0] if values else None


def _is_component(name: object) -> bool:
    if not isinstance(name, str):
        return False
    try:
        Component.parse(name)
    except ValueError:
        return False
    return True


def _component(components: Sequence[str], args: Mapping[str, Any]) -> str:
    """The component an example metric names: the call's first, else ``EXAMPLE_COMPONENT``."""
    for candidate in [*components, *_listed(args, "components", "heads", "senders", "members")]:
        if _is_component(candidate):
            return str(candidate)
    return EXAMPLE_COMPONENT


def _listed(args: Mapping[str, Any], *keys: str) -> list[Any]:
    out: list[Any] = []
    for key in keys:
        value = args.get(key)
        if isinstance(value, list):
            out.extend(value)
    return out


def _filled(
    tool: str,
    pattern: MetricKey,
    args: Mapping[str, Any],
    components: Sequence[str],
    question: str,
) -> str:
    component = pattern.component
    if component is not None and _PLACEHOLDER.match(component):
        component = _component(components, args)
    qualifiers = []
    for name, value in pattern.qualifiers:
        if _PLACEHOLDER.match(value):
            value = _qualifier_value(tool, name, args, question) or value
        qualifiers.append((name, value))
    return str(MetricKey(pattern.name, component, tuple(qualifiers), pattern.tags))


def _estimates(tool: str, args: Mapping[str, Any]) -> list[MetricKey]:
    """The declared estimates of ``tool`` for ``args`` (for its defaults when they are invalid)."""
    if tool not in all_tools():
        return []
    impl = get_tool(tool)
    try:
        catalogue = impl.metrics_for(impl.Args.model_validate(dict(args)))
    except ValueError:
        catalogue = impl.metrics
    if catalogue is None:
        return []
    return [k for p in catalogue.estimate_patterns() if (k := try_parse_metric_key(p)) is not None]


def example_metric(
    tool: str,
    metric: str | None = None,
    args: Mapping[str, Any] | None = None,
    components: Sequence[str] = (),
    question: str = "",
) -> str | None:
    """A concrete declared estimate of ``tool`` for ``args``, the one closest to ``metric`` (same
    name first, then the same name without a statistic suffix, then the tool's first estimate);
    None for a tool that declares none."""
    args = args or {}
    estimates = _estimates(tool, args)
    if not estimates:
        return None
    wanted = try_parse_metric_key(metric or "")
    name = wanted.name if wanted is not None else (metric or "")
    base = next(
        (
            name.removesuffix(suffix)
            for suffix in STAT_SUFFIXES.values()
            if suffix and name.endswith(suffix)
        ),
        name,
    )
    chosen = next(
        (k for k in estimates if k.name == name),
        next((k for k in estimates if k.name == base), None),
    )
    if chosen is None and wanted is not None:
        chosen = next(
            (k for k in estimates if (k.component is None) == (wanted.component is None)), None
        )
    return _filled(tool, chosen or estimates[0], args, components, question)


def criterion_example(metric: str, split: str = "discovery") -> dict[str, Any]:
    """A complete criterion object for ``metric``: greater than 0 at alpha 0.05."""
    return {
        "metric": metric,
        "direction": "greater",
        "threshold": 0.0,
        "alpha": 0.05,
        "split": split,
    }


def example_call(question: str, tools: Sequence[str]) -> dict[str, Any] | None:
    """The worked example of the system prompt, fitted to the question: the behavioural test of
    the perturbation it names, else the axiom screen (open questions screen first), else the
    first offered tool with its defaults; None when no tool is offered."""
    named = question_perturbation(question)
    if named is not None and "behavioural_test" in tools:
        axiom, variant = named
        return {
            "name": "propose",
            "arguments": {
                "tool": "behavioural_test",
                "hypothesis": f"Applying {axiom} ({variant}) to a document raises its score.",
                "rationale": f"First test the behaviour the question names ({axiom}).",
                "criterion": criterion_example("mean_delta"),
                "components": [],
                "args": {"axiom": axiom, "variant": variant},
            },
        }
    if "axiom_screen" in tools:
        metric = example_metric("axiom_screen", "mean_delta", {}, (), question)
        return {
            "name": "propose",
            "arguments": {
                "tool": "axiom_screen",
                "hypothesis": "Appending a query term to a document raises its score (TFC1).",
                "rationale": "Screen every perturbation first; confirm the largest hits next.",
                "criterion": criterion_example(metric or "mean_delta"),
                "components": [],
                "args": {},
            },
        }
    if not tools:
        return None
    tool = tools[0]
    return {
        "name": "propose",
        "arguments": {
            "tool": tool,
            "hypothesis": "One falsifiable claim about the model.",
            "rationale": "Why this experiment tests it.",
            "criterion": criterion_example(
                example_metric(tool, question=question) or "<a criterion metric of the tool>"
            ),
            "components": [],
            "args": {},
        },
    }


def _criterion(proposal: Proposal) -> dict[str, Any]:
    """The proposal's criterion as the model writes it (a correction or count left out when it
    is the default)."""
    criterion = proposal.criterion.model_dump(mode="json")
    if criterion.get("correction") == "none":
        criterion.pop("correction")
    if criterion.get("n_tests") == 1:
        criterion.pop("n_tests")
    return criterion


def _call(proposal: Proposal, **changes: Any) -> dict[str, Any]:
    """The proposal as a ``propose`` call, with ``changes`` applied (``metric`` and
    ``direction`` change the criterion, other keys the arguments)."""
    criterion = _criterion(proposal)
    for key in ("metric", "direction"):
        if key in changes:
            criterion[key] = changes.pop(key)
    arguments: dict[str, Any] = {
        "tool": proposal.tool,
        "hypothesis": proposal.hypothesis,
        "rationale": proposal.rationale,
        "criterion": criterion,
        "components": list(proposal.components),
        "args": dict(proposal.args),
    }
    if proposal.parent_hypothesis_id is not None:
        arguments["parent_hypothesis_id"] = proposal.parent_hypothesis_id
    arguments.update(changes)
    return {"name": "propose", "arguments": arguments}


def _is_estimate(tool: str, args: Mapping[str, Any], metric: str) -> bool:
    spec = criterion_spec(tool, args, metric)
    return spec is not None and spec.kind == "estimate"


def _args_repaired(
    tool: str, args: dict[str, Any], components: Sequence[str]
) -> tuple[dict[str, Any], list[str]]:
    """``args`` less the keys the tool does not take, with ``components`` filled in from the
    proposal's when the tool requires them and the call left them out; and what was changed."""
    try:
        get_tool(tool).Args.model_validate(args)
    except ValidationError as err:
        errors = err.errors()
    else:
        return args, []
    fixed = dict(args)
    fixes = []
    extra = [
        str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden" and len(e["loc"]) == 1
    ]
    for key in extra:
        fixed.pop(key, None)
    if extra:
        listed = ", ".join(f"`{k}`" for k in extra)
        fixes.append(f"drop {listed} from `args` (`{tool}` takes no such argument)")
    missing = {str(e["loc"][0]) for e in errors if e["type"] == "missing" and len(e["loc"]) == 1}
    if "components" in missing and components:
        fixed["components"] = list(components)
        fixes.append("put the hypothesis's components in `args.components`")
    return fixed, fixes


def _repairs(proposal: Proposal, question: str) -> tuple[list[str], dict[str, Any]]:
    """What can be fixed in a proposal without guessing its intent, in the order the gate checks
    it: ``args.split`` against the criterion's, arguments the tool does not take, a criterion
    metric that is not an estimate of the tool, components that are not the metric's, a
    two-sided direction. The fixes (one clause each) and the corrected changes for ``_call``."""
    fixes: list[str] = []
    args = dict(proposal.args)
    criterion = proposal.criterion
    if args.get("split") not in (None, criterion.split):
        args.pop("split")
        fixes.append("leave `split` out of `args`: the tool runs on the criterion's split")
    args, args_fixes = _args_repaired(proposal.tool, args, proposal.components)
    fixes += args_fixes
    try:
        validate_args(get_tool(proposal.tool), args)
    except ValueError:
        fixes.append(
            f"fix `args` as the error says (call `describe_tool` with name `{proposal.tool}` to "
            "see its arguments; {} takes every default)"
        )
        return fixes, {}
    metric = criterion.metric
    if not _is_estimate(proposal.tool, args, metric):
        example = example_metric(proposal.tool, metric, args, proposal.components, question)
        if example is None:
            return [
                f"`{proposal.tool}` reports no estimate a criterion can name with these `args`: "
                "propose another tool, or other arguments"
            ], {}
        metric = example
        fixes.append(f"use the criterion metric `{metric}` (an estimate `{proposal.tool}` reports)")
    components = _components_for(metric)
    if sorted(components) != sorted(proposal.components):
        fixes.append(
            f"set `components` to {compact_json(components)}"
            + (
                f", the components of `{metric}`"
                if components
                else f": `{metric}` is about the whole model"
            )
        )
    changes: dict[str, Any] = {"args": args, "metric": metric, "components": components}
    if criterion.direction == "two-sided":
        changes["direction"] = "greater"
        fixes.append('set the criterion\'s `direction` to "greater" (or "less")')
    return fixes, changes


def _passes(call: dict[str, Any]) -> bool:
    """Whether a corrected call passes the graph's gate (under the default policy)."""
    try:
        check_proposal(Proposal.model_validate(call["arguments"]), {}, StatsPolicy())
    except (CallRejected, ValidationError, ValueError):
        return False
    return True


def correction(
    proposal: Proposal, message: str, question: str, tools: Sequence[str]
) -> Correction | None:
    """The fix of a proposal the gate rejected with ``message``: every fix that follows from the
    proposal itself (``_repairs``) in one sentence, with the corrected call when it passes the
    gate; None when nothing can be fixed this way (the message is then fed back as it is)."""
    if "repeated proposal" in message.lower():
        return Correction(
            "this exact experiment already ran: change the tool, its arguments (another axiom, "
            "variant, layer or component) or the criterion's metric"
        )
    if proposal.tool not in all_tools():
        listed = ", ".join(f"`{t}`" for t in tools)
        return Correction(f"`tool` must be one of {listed}")
    fixes, changes = _repairs(proposal, question)
    if not fixes:
        return None
    call = _call(proposal, **changes) if changes else None
    if call is None or not _passes(call):
        return Correction("; ".join(fixes))
    return Correction("; ".join(fixes), call)


def _components_for(metric: str) -> list[str]:
    """The components a criterion on ``metric`` names: exactly the metric's own."""
    return components_of(metric) or []

"""The model's replies: repaired where that is safe, then read into a Proposal, a Stop, or the
answer that says what was wrong.

Replies as small local models write them are tolerated: a function name with a ``functions.``
prefix, arguments followed by trailing text or wrapped in a code fence, arguments (or
``args``/``criterion``) encoded as a JSON string inside a string, and calls written as text in the
content instead of ``tool_calls`` — what a server that does not parse the model's tool calls
returns (``transformers serve`` with Qwen2.5-Coder, measured in ``benchmarks/llm_local_model.py``):

* ``<tool_call>{"name": …, "arguments": …}</tool_call>`` blocks (the Qwen and Hermes templates);
* a fenced ```` ```json ```` block or a bare JSON object ``{"name": …, "arguments": …}`` (also
  ``{"function": {"name": …, "arguments": …}}``), with prose before or after it.

A call written as text becomes a ``ToolCall`` with ``source="text"`` ("parsed from text"): it is
only parsed as JSON and then read exactly like a structured call, through the same checks; nothing
in it is run. A JSON object in the text that is not such a call is answered with what it lacks,
quoted from the schema check (``TextCall``).

``ReplyReader`` checks the shape of a call: a known function, JSON object arguments, a hypothesis,
a criterion that is a valid ``Criterion``, components as a list of names, a parent among the
ledger's hypotheses, an ``args`` object. What is wrong is answered in the same conversation
(pydantic's messages verbatim). The tool's arguments themselves are validated by the graph, at
the one gate every planner's call passes (``rankscope.agent.nodes``), whose rejection reaches
the model as feedback in the next step.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from rankscope.agent.llm_client import ChatReply, ToolCall
from rankscope.agent.planners.base import Criterion, Proposal, Stop
from rankscope.agent.planners.llm.catalogue import (
    DESCRIBE_FUNCTION,
    PROPOSE_FUNCTION,
    STOP_FUNCTION,
    WRAPPER_KEYS,
    ToolCatalogue,
    describe_answer,
)
from rankscope.agent.planners.llm.hints import (
    compact_json,
    criterion_example,
    example_call,
    example_metric,
)

__all__ = [
    "Accepted",
    "Describe",
    "Rejection",
    "ReplyReader",
    "TextCall",
    "content_tool_calls",
    "function_name",
    "normalised_reply",
    "parse_arguments",
    "text_calls",
    "without_thinking",
]

FUNCTION_PREFIX = "functions."
"""A namespace some models put before a function name (``functions.propose``); it is stripped."""

_THINK = re.compile(r"<think>.*?</think>", re.IGNORECASE | re.DOTALL)
_TOOL_CALL_BLOCK = re.compile(
    r"<tool_call>\s*(.*?)\s*(?:</tool_call>|\Z)", re.IGNORECASE | re.DOTALL
)
_CODE_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?(.*?)\n?\s*```$", re.DOTALL)
_FENCED_BLOCK = re.compile(r"```[a-zA-Z0-9_-]*[ \t]*\n?(.*?)```", re.DOTALL)
_NOT_METRICS = frozenset({"metric", "direction", "threshold", "alpha", "split", "greater", "less"})
"""Words of a criterion written as a string that are not its metric."""
MAX_MISSING_CLOSERS = 3
"""Closing brackets added at most to a call cut short (``{"name": …, "arguments": {…}`` → ``}``)."""
MAX_OBJECT_STARTS = 256
"""``{`` positions of one text tried as the start of a JSON object at most (a reply is at most
``MAX_REPLY_CHARS`` long; real calls start within the first few)."""
MAX_TEXT_OBJECTS = 8
"""JSON objects read from one reply's text at most (the first call among them is used)."""


def without_thinking(text: str) -> str:
    """``text`` without the ``<think>…</think>`` blocks reasoning models write first."""
    return _THINK.sub("", text)


def _decode_json_value(value: Any) -> Any:
    """A nested object some models send as a JSON string (or a string of a JSON string),
    decoded; other values as they are."""
    for _ in range(2):
        if not isinstance(value, str):
            return value
        text = value.strip()
        if not (text.startswith("{") or text.startswith('"')):
            return value
        try:
            value = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            return value
    return value


def parse_arguments(text: str) -> Any:
    """The JSON value of a call's ``arguments`` as models write them.

    Tolerated: a code fence around the object, text after it (``{...} I will now run it``), and
    the object encoded once more as a JSON string. Raises ``json.JSONDecodeError`` otherwise
    (nesting too deep for the decoder included).
    """
    text = text.strip()
    if not text:
        return {}
    fenced = _CODE_FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        value, _end = json.JSONDecoder().raw_decode(text)
    except RecursionError as err:
        raise json.JSONDecodeError("nested too deeply", text, 0) from err
    return _decode_json_value(value)


def function_name(name: str) -> str:
    """A called function's name without the ``functions.`` namespace some models add."""
    name = name.strip()
    if name.startswith(FUNCTION_PREFIX):
        return name[len(FUNCTION_PREFIX) :].strip()
    return name


def content_tool_calls(content: str) -> list[ToolCall]:
    """Calls written as ``<tool_call>{"name": ..., "arguments": ...}</tool_call>`` in a reply's
    text (the Qwen and Hermes templates' format, when a server does not turn them into
    ``tool_calls``). A block that is not such an object becomes a call without a name, which is
    rejected with the reason."""
    calls: list[ToolCall] = []
    for i, block in enumerate(_TOOL_CALL_BLOCK.findall(without_thinking(content))):
        try:
            raw = parse_arguments(block)
        except json.JSONDecodeError:
            raw = None
        call = _call_of(raw, f"content_call_{i}")
        calls.append(
            call or ToolCall(id=f"content_call_{i}", name="", arguments=block, source="text")
        )
    return calls


class TextCall(BaseModel):
    """The shape of a call written as JSON in a reply's text: ``{"name": "propose",
    "arguments": {...}}``. Its validation errors are quoted to the model."""

    model_config = ConfigDict(extra="forbid")

    name: str
    arguments: dict[str, Any] | str = {}


def _call_of(raw: Any, call_id: str) -> ToolCall | None:
    """The call a JSON value written as text makes (``{"name", "arguments"}``, ``"parameters"``
    for ``"arguments"``, or the OpenAI shape ``{"function": {...}}``), or None."""
    if isinstance(raw, dict) and isinstance(raw.get("function"), dict) and "name" not in raw:
        raw = raw["function"]
    if (
        isinstance(raw, dict)
        and "name" not in raw
        and isinstance(raw.get("tool"), str)
        and "hypothesis" in raw
    ):  # the arguments of `propose` without their envelope
        return ToolCall(id=call_id, name=PROPOSE_FUNCTION, arguments=json.dumps(raw), source="text")
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        return None
    arguments = _decode_json_value(raw.get("arguments", raw.get("parameters", {})))
    return ToolCall(
        id=call_id,
        name=raw["name"],
        arguments=arguments if isinstance(arguments, str) else json.dumps(arguments),
        source="text",
    )


def _closers(text: str) -> str | None:
    """The brackets that close what ``text`` (one JSON value, cut short) leaves open, or None
    when it does not end as such a value would (inside a string, or a bracket mismatched)."""
    stack: list[str] = []
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            stack.append("}" if char == "{" else "]")
        elif char in "}]" and (not stack or stack.pop() != char):
            return None
    if in_string or not stack or len(stack) > MAX_MISSING_CLOSERS:
        return None
    return "".join(reversed(stack))


def _decoded(piece: str, position: int) -> tuple[Any, int] | None:
    """The JSON value starting at ``position``, and where it ends; a value that runs to the end
    of ``piece`` with its last brackets missing (a small model's most common slip) is read with
    them added. None when there is no such value."""
    try:
        return json.JSONDecoder().raw_decode(piece, position)
    except RecursionError:
        return None
    except json.JSONDecodeError as err:
        if err.pos < len(piece.rstrip()):  # broken before the end: not a value cut short
            return None
    rest = piece[position:].rstrip()
    closers = _closers(rest)
    if closers is None:
        return None
    try:
        return json.loads(rest + closers), len(piece)
    except (json.JSONDecodeError, RecursionError):
        return None


def _json_objects(text: str) -> list[dict[str, Any]]:
    """The JSON objects written in ``text``: those in code fences first, then bare ones (each
    ``{`` that starts a complete object, or one cut short at the end whose missing closing
    brackets are added; objects inside one already read are skipped)."""
    found: list[dict[str, Any]] = []
    pieces = [block.strip() for block in _FENCED_BLOCK.findall(text)]
    pieces.append(_FENCED_BLOCK.sub(" ", text))
    for piece in pieces:
        position = piece.find("{")
        attempts = 0
        while position >= 0 and len(found) < MAX_TEXT_OBJECTS and attempts < MAX_OBJECT_STARTS:
            attempts += 1
            decoded = _decoded(piece, position)
            if decoded is None:
                position = piece.find("{", position + 1)
                continue
            value, end = decoded
            if isinstance(value, dict):
                found.append(value)
            position = piece.find("{", end)
    return found


def _is_call(text: str) -> bool:
    text = text.strip()
    decoded = _decoded(text, 0) if text.startswith("{") else None
    return decoded is not None and _call_of(decoded[0], "") is not None


def _without_text_calls(text: str) -> str:
    """``text`` less the calls written in it (fenced blocks holding one, bare call objects)."""
    text = _FENCED_BLOCK.sub(lambda m: "" if _is_call(m.group(1)) else m.group(0), text)
    out, position = [], 0
    start = text.find("{")
    attempts = 0
    while start >= 0 and attempts < MAX_OBJECT_STARTS:
        attempts += 1
        decoded = _decoded(text, start)
        if decoded is None:
            start = text.find("{", start + 1)
            continue
        value, end = decoded
        if _call_of(value, "") is not None:
            out.append(text[position:start])
            position = end
        start = text.find("{", end)
    out.append(text[position:])
    return "".join(out)


def text_calls(content: str) -> tuple[list[ToolCall], str]:
    """The calls written as JSON in a reply's text (fenced or bare, prose around them allowed),
    and, when the text holds JSON objects but none is a call, what is wrong with the first one
    (pydantic's messages for ``TextCall``); ``([], "")`` for text without a JSON object."""
    objects = _json_objects(without_thinking(content))
    calls = [
        call
        for i, value in enumerate(objects)
        if (call := _call_of(value, f"text_call_{i}")) is not None
    ]
    if calls or not objects:
        return calls, ""
    try:
        TextCall.model_validate(objects[0])
    except ValidationError as err:
        errors = err.errors()
    else:  # pragma: no cover - an object without a string name always fails the check
        errors = []
    extra = [str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden"]
    problems = [
        f"call.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
        for e in errors
        if e["type"] != "extra_forbidden"
    ]
    if extra:
        problems.append(
            f"unexpected keys {', '.join(extra)} (a call has only `name` and `arguments`)"
        )
    return [], (
        'the JSON object in your reply is not a function call {"name": ..., "arguments": '
        "{...}}: " + "; ".join(problems or ["`name` must be a function name"])
    )


def normalised_reply(reply: ChatReply) -> ChatReply:
    """``reply`` with the calls written in its text moved into ``tool_calls`` (when it has
    none): ``<tool_call>`` blocks, else fenced or bare JSON calls; the rest of the text stays the
    content. The conversation then continues with structured calls and matching tool answers."""
    if reply.tool_calls or not reply.content:
        return reply
    if "<tool_call>" in reply.content.lower():
        calls = content_tool_calls(reply.content)
        rest = _TOOL_CALL_BLOCK.sub("", without_thinking(reply.content)).strip()
    else:
        calls, _problem = text_calls(reply.content)
        rest = _without_text_calls(without_thinking(reply.content)).strip()
    if not calls:
        return reply
    return replace(reply, content=rest or None, tool_calls=calls)


@dataclass(frozen=True)
class Describe:
    """A ``describe_tool`` call of a known tool."""

    tool: str


@dataclass(frozen=True)
class Accepted:
    """A usable call: the proposal or stop it makes, and the call itself (its ``source`` says
    whether it was a structured call or parsed from text)."""

    result: Proposal | Stop
    call: ToolCall


@dataclass(frozen=True)
class Rejection:
    """A reply that gave no proposal: what was wrong (``""`` when it only asked for tool
    descriptions, which does not count as unusable), and the messages that answer it."""

    problem: str
    messages: list[dict[str, Any]]
    described: list[str] = field(default_factory=list)


def _pydantic_problems(err: ValidationError, prefix: str) -> str:
    return "; ".join(
        f"{'.'.join([prefix, *(str(p) for p in e['loc'])])}: {e['msg']}" for e in err.errors()
    )


def _listed(names: list[str]) -> str:
    return ", ".join(f"`{n}`" for n in names)


@dataclass(frozen=True)
class ReplyReader:
    """Reads the replies of one ``propose`` conversation: the catalogue the functions were
    offered in, the tools offered, the ids of the ledger's hypotheses (the known parents) and the
    research question (a hypothesis must not merely repeat it)."""

    catalogue: ToolCatalogue
    names: list[str]
    known_ids: list[int]
    question: str = ""

    def outcome(self, reply: ChatReply) -> Accepted | Rejection:
        """The first usable call of a reply (read with ``normalised_reply`` first, so that calls
        written as text count), or the answer to a reply without one."""
        if not reply.tool_calls:
            text = reply.content or ""
            said = "an empty reply" if not text.strip() else "only text"
            if reply.finish_reason == "length":
                said += ", cut off at the token limit"
            _calls, problem = text_calls(text)
            if problem:
                content = f"Rejected, nothing was run: {problem}. {self._usage()}"
                return Rejection(problem, [{"role": "user", "content": content}])
            problem = f"the reply had no function call ({said})"
            content = f"Your reply had no function call ({said}); nothing was run. {self._usage()}"
            return Rejection(problem, [{"role": "user", "content": content}])
        results: list[str | Describe] = []
        for call in reply.tool_calls:
            result = self._parse_call(call)
            if isinstance(result, Proposal | Stop):
                return Accepted(result, call)
            results.append(result)
        feedback = [
            {
                "role": "tool",
                "tool_call_id": call.id,
                "content": describe_answer(result.tool)
                if isinstance(result, Describe)
                else f"Rejected, nothing was run: {result}. {self._usage()}",
            }
            for call, result in zip(reply.tool_calls, results, strict=True)
        ]
        problems = [r for r in results if isinstance(r, str)]
        described = [r.tool for r in results if isinstance(r, Describe)]
        return Rejection(problems[0] if problems else "", feedback, described)

    def _restates_question(self, hypothesis: str) -> bool:
        """Whether a hypothesis is a question, or the research question again."""
        text = " ".join(hypothesis.split()).lower()
        question = " ".join(self.question.split()).lower()
        return text.endswith("?") or (bool(question) and text.rstrip(".") == question.rstrip("?."))

    def _example_hypothesis(self, tool_name: str) -> str:
        example = example_call(self.question, [tool_name])
        return str(example["arguments"]["hypothesis"]) if example else "The model ..."

    def _criterion_example(self, tool_name: str, written: Any, args: Any) -> dict[str, Any]:
        """A complete criterion for ``tool_name`` keeping what the model wrote where it can: its
        metric (from an object, or the first name in a string such as ``"metric: mean_delta"``)
        made a concrete estimate of the tool, its direction, threshold, alpha and split."""
        metric: str | None = None
        if isinstance(written, dict):
            metric = written.get("metric") if isinstance(written.get("metric"), str) else None
        elif isinstance(written, str):
            names = re.findall(r"[A-Za-z_][A-Za-z0-9_]*(?:\[[^\]]*\])?", written)
            metric = next((n for n in names if n.lower() not in _NOT_METRICS), None)
        call_args = args if isinstance(args, dict) else {}
        concrete = example_metric(tool_name, metric, call_args, question=self.question)
        example = criterion_example(concrete or metric or "<a criterion metric of the tool>")
        if isinstance(written, dict):
            for key in ("direction", "threshold", "alpha", "split"):
                value = written.get(key)
                if key == "direction" and value not in ("greater", "less"):
                    continue
                if key == "threshold" and not isinstance(value, int | float):
                    continue
                if key == "alpha" and not (isinstance(value, int | float) and 0 < value < 0.5):
                    continue
                if key == "split" and value not in ("discovery", "holdout", "all"):
                    continue
                example[key] = value
        return example

    def _usage(self) -> str:
        if self.catalogue == "compact":
            return (
                f"Reply with exactly one function call: `{PROPOSE_FUNCTION}` (with tool — one of "
                f"{_listed(self.names)} — hypothesis, rationale, criterion, components, args), "
                f"`{DESCRIBE_FUNCTION}` to see a tool's arguments, or `{STOP_FUNCTION}` with a "
                "reason."
            )
        return (
            f"Reply with exactly one function call: one of {_listed(self.names)} (with "
            f"hypothesis, rationale, criterion, components, args), or `{STOP_FUNCTION}` with a "
            "reason."
        )

    def _parse_call(self, call: ToolCall) -> Proposal | Stop | Describe | str:
        """A Proposal, Stop or description request from one call, or what is wrong with it."""
        offered = [*self.names, STOP_FUNCTION]
        if self.catalogue == "compact":
            offered = [PROPOSE_FUNCTION, DESCRIBE_FUNCTION, *offered]
        name = function_name(call.name)
        if not name:
            return (
                "the call names no function (a `<tool_call>` block must hold one JSON object "
                '{"name": ..., "arguments": {...}})'
            )
        if name not in offered:
            if self.catalogue == "compact":
                return (
                    f"there is no function `{name}`; the available functions are "
                    f"`{PROPOSE_FUNCTION}`, `{DESCRIBE_FUNCTION}`, `{STOP_FUNCTION}`, and the "
                    f"tools for `{PROPOSE_FUNCTION}` are " + _listed(self.names)
                )
            return f"there is no function `{name}`; the available functions are " + _listed(offered)
        try:
            raw = parse_arguments(call.arguments)
        except json.JSONDecodeError as err:
            return (
                f"the arguments of `{name}` are not valid JSON ({err}); send exactly one "
                "JSON object"
            )
        if not isinstance(raw, dict):
            return f"the arguments of `{name}` must be a JSON object, not {type(raw).__name__}"
        if name == STOP_FUNCTION:
            reason = raw.get("reason")
            if not isinstance(reason, str) or not reason.strip():
                return f"`{STOP_FUNCTION}` needs a non-empty `reason` string"
            return Stop(reason=reason.strip())
        if name in (PROPOSE_FUNCTION, DESCRIBE_FUNCTION):
            key = "tool" if name == PROPOSE_FUNCTION else "name"
            tool = raw.pop(key, None)
            if isinstance(tool, str):
                tool = function_name(tool)
            if tool not in self.names:
                return f"`{name}` needs `{key}`: one of {_listed(self.names)} (got {tool!r})"
            if name == DESCRIBE_FUNCTION:
                return Describe(str(tool))
            return self._proposal(str(tool), raw)
        return self._proposal(name, raw)

    def _proposal(self, tool_name: str, raw: dict[str, Any]) -> Proposal | str:
        """The proposal a pre-registered call makes, or everything wrong with its shape."""
        problems: list[str] = []
        unknown = sorted(set(raw) - set(WRAPPER_KEYS))
        if unknown:
            problems.append(
                f"unknown keys {', '.join(unknown)}: a call takes only {', '.join(WRAPPER_KEYS)} "
                "(the tool's own arguments go inside `args`)"
            )
        hypothesis = raw.get("hypothesis")
        if not isinstance(hypothesis, str) or not hypothesis.strip():
            problems.append(
                "no pre-registered `hypothesis`: every tool call must state one falsifiable "
                "sentence as a non-empty string"
            )
        elif self._restates_question(hypothesis):
            problems.append(
                "the `hypothesis` is a question (or the research question itself): state one "
                "falsifiable claim about the model that the criterion tests, e.g. "
                f"{json.dumps(self._example_hypothesis(tool_name))}"
            )
        rationale = raw.get("rationale", "")
        if not isinstance(rationale, str):
            problems.append("`rationale` must be a string")
        criterion: Criterion | None = None
        raw_criterion = _decode_json_value(raw.get("criterion"))
        if raw_criterion is None:
            problems.append(
                "no pre-registered `criterion`: every tool call must carry a criterion object "
                "with metric, direction, threshold, alpha and split, e.g. "
                + compact_json(self._criterion_example(tool_name, raw_criterion, raw.get("args")))
            )
        else:
            try:
                criterion = Criterion.model_validate(raw_criterion)
            except ValidationError as err:
                example = self._criterion_example(tool_name, raw_criterion, raw.get("args"))
                problems.append(
                    f"invalid criterion: {_pydantic_problems(err, 'criterion')}; write it as "
                    f"an object, e.g. {compact_json(example)}"
                )
        components = raw.get("components", [])
        if isinstance(components, str):
            components = [c.strip() for c in components.split(",") if c.strip()]
        if not isinstance(components, list) or not all(isinstance(c, str) for c in components):
            problems.append("`components` must be a list of names such as 'L3.H5' or 'L4.mlp'")
        parent = raw.get("parent_hypothesis_id")
        if parent is not None and (isinstance(parent, bool) or parent not in self.known_ids):
            known = ", ".join(f"H{i}" for i in self.known_ids) or "none"
            problems.append(
                f"`parent_hypothesis_id` {parent!r} is not a hypothesis of the ledger "
                f"(known: {known}; use their numbers)"
            )
        args = _decode_json_value(raw.get("args"))
        if args is None:
            problems.append(
                f"`args` is missing: put the arguments of `{tool_name}` in an `args` object "
                "({} takes every default)"
            )
        elif not isinstance(args, dict):
            problems.append(f"`args` must be a JSON object, not {type(args).__name__}")
        if problems or criterion is None or not isinstance(args, dict):
            return "; ".join(problems)
        return Proposal(
            hypothesis=str(hypothesis).strip(),
            rationale=str(rationale).strip(),
            tool=tool_name,
            args=args,
            criterion=criterion,
            components=list(components),
            parent_hypothesis_id=parent,
        )

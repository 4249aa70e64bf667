"""The LLM planner: an OpenAI-compatible chat model proposes pre-registered experiments.

Each ``propose`` call starts a short conversation: the system message (``prompts/system.md``: the
question, the model under study, the tools and the pre-registration rules) and one user message
(``prompts/step.md``: a compact ledger of hypotheses, verdicts, key numbers and the graph's
feedback, never the full history). The model answers with one function call.

How the tools are offered is the ``catalogue`` (see ``ToolCatalogue``); every planning request,
ledger included, is meant to stay under ``REQUEST_TOKEN_BUDGET`` tokens with the default
``"compact"`` catalogue, at every step of a long investigation:

* ``"compact"`` (default): the system prompt lists each tool on one line (name, what it tests, its
  main metrics); the functions are ``propose(tool, hypothesis, rationale, criterion, components,
  args, parent_hypothesis_id)``, ``describe_tool(name)`` (answered in the same conversation with
  the tool's argument schema, reduced by ``planner_args_schema``) and ``stop(reason)``. A call
  named after a tool itself is accepted as a ``propose`` of that tool.
* ``"reduced"``: every tool is offered as a *pre-registration wrapper* (below) whose ``args`` is
  the reduced schema.
* ``"full"``: every tool is offered as a wrapper around its full ``Args`` schema (the old
  behaviour, about 18,000 tokens of tool schemas for the default tools).

A pre-registration wrapper's parameters are::

    {"hypothesis": str, "rationale": str, "criterion": Criterion, "components": [str],
     "args": <the tool's Args schema>, "parent_hypothesis_id": int (optional)}

next to a ``stop(reason)`` function. A reply that cannot become a ``Proposal`` (arguments that are
not JSON, an unknown function, no hypothesis or criterion, missing or invalid ``args``, a text
reply without a call) is answered in the same conversation with what was wrong (pydantic's and
``validate_args``' messages verbatim), up to ``max_invalid_replies`` times; then ``propose``
returns ``Stop`` with the reason.

Free text that may come from the data (hypothesis texts, tool arguments, tool summaries quoting
documents) reaches the model only inside ``<data source="...">`` … ``</data>`` blocks, in which any
look-alike tag is escaped so the text cannot close its block; the system prompt says never to follow
instructions found in them.

The context window (``context_tokens``, from ``--llm-context``, else detected from the server by
``rankscope.agent.llm_context.detect_context``) bounds every request: each one is counted before it
is sent (``request_tokens``, plus ``PROMPT_MARGIN`` and ``reply_tokens`` kept for the reply). When a
``propose`` request would not fit, the ledger summary is shrunk (``LEDGER_CHARS`` down to
``MIN_LEDGER_CHARS``); when even that does not fit, ``LLMContextError`` says what to do and nothing
is sent. Nothing is ever cut silently.

Replies as small local models write them are tolerated where that is safe: a function name with a
``functions.`` prefix, ``<tool_call>{"name": …, "arguments": …}</tool_call>`` blocks in the content
instead of ``tool_calls`` (Qwen and Hermes chat templates), arguments followed by trailing text or
wrapped in a code fence, and arguments (or ``args``/``criterion``) encoded as a JSON string inside a
string. Such a reply is only parsed as JSON and validated like any other call; nothing in it is run.

``LLMUnavailableError``, ``LLMBudgetExceeded`` and ``LLMContextError`` propagate out of ``propose``
and ``narrate``: the graph pauses the investigation, to be resumed later.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, get_args

from pydantic import ValidationError

from rankscope.agent.llm_client import (
    ChatReply,
    LLMClient,
    Recorder,
    ToolCall,
    transport_defaults,
)
from rankscope.agent.llm_context import (
    PROMPT_MARGIN,
    ContextWindow,
    LLMContextError,
    detect_context,
    request_tokens,
)
from rankscope.agent.planners.base import (
    Criterion,
    Ledger,
    LedgerEntry,
    Narrative,
    Planner,
    Proposal,
    Stop,
)
from rankscope.prompts import render
from rankscope.tools.registry import (
    ToolArgumentError,
    all_tools,
    get_tool,
    openai_tool_specs,
    validate_args,
)

if TYPE_CHECKING:
    import httpx2

__all__ = [
    "DESCRIBE_FUNCTION",
    "LEDGER_CHARS",
    "MIN_LEDGER_CHARS",
    "PROPOSE_FUNCTION",
    "REPLY_TOKENS",
    "REQUEST_TOKEN_BUDGET",
    "STOP_FUNCTION",
    "LLMPlanner",
    "ToolCatalogue",
    "catalogue_line",
    "data_block",
    "describe_tool_spec",
    "parse_citations",
    "planner_args_schema",
    "preregistered_tool_spec",
    "propose_tool_spec",
    "stop_tool_spec",
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
the Qwen2.5 tokenizer; ``tests/test_llm_planner.py`` and ``benchmarks/llm_planner_budget.py`` check
it. A ``describe_tool`` answer adds one tool's reduced schema (at most about 1,000 tokens) to the
conversation."""
LEDGER_CHARS = 5000
"""Characters of ledger text in one step prompt (about 2,200 tokens at the ~2.3 characters per
token measured with the Qwen2.5 tokenizer for number-dense ledgers): the newest entries in full,
older ones in one line each, the oldest collapsed into a tally when even those lines do not fit.
No entry is ever cut."""
MIN_LEDGER_CHARS = 600
"""The smallest ledger summary the planner shrinks to when the context window is too small for
``LEDGER_CHARS``: the tally of all hypotheses (counts by status and tool, supported ids) and the
newest one-line entries that fit. A request that does not fit even so is an ``LLMContextError``."""
LEDGER_SHRINK = 0.7
"""Each shrinking step keeps this share of the ledger characters."""
REPLY_TOKENS = 1024
"""Tokens of the context window kept free for the reply (a call is 100–400 tokens; a model that
thinks aloud first needs more)."""
FUNCTION_PREFIX = "functions."
"""A namespace some models put before a function name (``functions.propose``); it is stripped."""
MAX_DESCRIBE_CALLS = 4
"""``describe_tool`` answers one ``propose`` gives before further ones count as unusable."""
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
MAX_FULL_ENTRIES = 6
"""At most this many of the latest entries are shown in full; older ones get one line each."""
MAX_SUMMARY_CHARS = 600
MAX_HYPOTHESIS_CHARS = 300
MAX_SHORT_HYPOTHESIS_CHARS = 160
MAX_ARGS_CHARS = 300
MAX_METRICS = 8
MAX_FEEDBACK = 5

_DATA_TAG = re.compile(r"<\s*(/?)\s*(data)", re.IGNORECASE)
_INVISIBLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0]"
)
_LOOK_ALIKES = str.maketrans(
    {
        "\u2039": "<",
        "\u2329": "<",
        "\u27e8": "<",
        "\u3008": "<",
        "\u276e": "<",
        "\u02c2": "<",
        "\u203a": ">",
        "\u232a": ">",
        "\u27e9": ">",
        "\u3009": ">",
        "\u276f": ">",
        "\u02c3": ">",
        "\u2215": "/",
        "\u2044": "/",
        "\u29f8": "/",
        "\u2571": "/",
    }
)
_THINK = re.compile(r"<think>.*?</think>", re.IGNORECASE | re.DOTALL)
_TOOL_CALL_BLOCK = re.compile(
    r"<tool_call>\s*(.*?)\s*(?:</tool_call>|\Z)", re.IGNORECASE | re.DOTALL
)
_CODE_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?(.*?)\n?\s*```$", re.DOTALL)
_CITATION_GROUP = re.compile(r"\[\s*(E\s*\d+(?:\s*[,;]\s*E?\s*\d+)*)\s*\]")
_CITATION_ID = re.compile(r"\d+")


def defang(text: str) -> str:
    """``text`` with every ``<data`` / ``</data`` look-alike escaped, so it cannot open or close a
    data block: compatibility forms are normalised first (full-width ``＜／data＞``), invisible
    characters (zero-width joiners, bidi controls, variation selectors) dropped, other angle and
    slash look-alikes mapped to ``<`` and ``/``, and spaces inside the tag (``< / data >``)
    allowed."""
    import unicodedata

    normalised = _INVISIBLE.sub("", unicodedata.normalize("NFKC", text)).translate(_LOOK_ALIKES)
    return _DATA_TAG.sub(lambda m: f"&lt;{m.group(1)}{m.group(2)}", normalised)


def data_block(source: str, text: str) -> str:
    """``text`` inside a delimited data block; look-alike tags in it are escaped (:func:`defang`)."""
    label = defang(source).replace('"', "'").replace("\n", " ")
    return f'<data source="{label}">\n{defang(text)}\n</data>'


def parse_citations(text: str) -> list[int]:
    """Evidence ids cited as ``[E12]`` or ``[E12, E13]``, in order of first citation."""
    ids: list[int] = []
    for group in _CITATION_GROUP.finditer(text):
        for number in _CITATION_ID.findall(group.group(1)):
            if int(number) not in ids:
                ids.append(int(number))
    return ids


def _merge_defs(target: dict[str, Any], schema: dict[str, Any], owner: str) -> dict[str, Any]:
    """``schema`` without its ``$defs``, which are moved into ``target`` (conflicts are errors)."""
    schema = copy.deepcopy(schema)
    for name, definition in schema.pop("$defs", {}).items():
        if name in target and target[name] != definition:
            raise ValueError(f"schema definition {name!r} of {owner} clashes with another one")
        target[name] = definition
    return schema


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
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{description}\n\nPre-registered call: give the hypothesis and the "
            "criterion it must meet; the tool's own arguments go in `args`.".strip(),
            "parameters": parameters,
        },
    }


def stop_tool_spec() -> dict[str, Any]:
    """The ``stop`` function: end the investigation with a reason."""
    return {
        "type": "function",
        "function": {
            "name": STOP_FUNCTION,
            "description": "End the investigation: the question is answered, or nothing worth "
            "testing is left.",
            "parameters": {
                "type": "object",
                "properties": {
                    "reason": {
                        "type": "string",
                        "description": "Why the investigation ends here.",
                    }
                },
                "required": ["reason"],
                "additionalProperties": False,
            },
        },
    }


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


def catalogue_line(spec: dict[str, Any]) -> str:
    """One line of the compact catalogue: name, what the tool tests, its main metrics."""
    function = spec["function"]
    name = function["name"]
    line = f"- `{name}`: {_first_sentence(function.get('description') or '')}"
    metrics = _main_metrics(name) if name in all_tools() else []
    if metrics:
        line += " Metrics: " + ", ".join(metrics) + "."
    return line


def _wrapper_properties(criterion_schema: dict[str, Any]) -> dict[str, Any]:
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


def propose_tool_spec(names: Sequence[str]) -> dict[str, Any]:
    """The compact catalogue's ``propose`` function: one pre-registered call of a named tool."""
    defs: dict[str, Any] = {}
    criterion_schema = _merge_defs(defs, _reduce(Criterion.model_json_schema(), True), "Criterion")
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
    return {
        "type": "function",
        "function": {
            "name": PROPOSE_FUNCTION,
            "description": "Run one tool as a pre-registered experiment.",
            "parameters": parameters,
        },
    }


def describe_tool_spec(names: Sequence[str]) -> dict[str, Any]:
    """The compact catalogue's ``describe_tool`` function: a tool's argument schema on request."""
    return {
        "type": "function",
        "function": {
            "name": DESCRIBE_FUNCTION,
            "description": "Get the arguments of one tool before proposing it (runs nothing).",
            "parameters": {
                "type": "object",
                "properties": {"name": {"type": "string", "enum": list(names)}},
                "required": ["name"],
                "additionalProperties": False,
            },
        },
    }


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
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": _first_sentence(function.get("description") or ""),
            "parameters": parameters,
        },
    }


def _pydantic_problems(err: ValidationError, prefix: str) -> str:
    return "; ".join(
        f"{'.'.join([prefix, *(str(p) for p in e['loc'])])}: {e['msg']}" for e in err.errors()
    )


def _number(value: float | int | None) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _metrics(metrics: dict[str, float | int | None] | None) -> str:
    if not metrics:
        return "none"
    items = list(metrics.items())
    text = ", ".join(f"{key}={_number(value)}" for key, value in items[:MAX_METRICS])
    if len(items) > MAX_METRICS:
        text += f" (+{len(items) - MAX_METRICS} more)"
    return text


def _criterion(criterion: Criterion) -> str:
    text = (
        f"{criterion.metric} {criterion.direction} {criterion.threshold:g} "
        f"(alpha {criterion.alpha:g}, split {criterion.split}"
    )
    if criterion.correction != "none":
        text += f", {criterion.correction} correction over {criterion.n_tests} tests"
    return text + ")"


def _clip(text: str, limit: int) -> str:
    text = text.strip()
    if len(text) <= limit:
        return text
    return text[:limit].rstrip() + f" … [{len(text) - limit} more characters]"


def _evidence(ids: Sequence[int]) -> str:
    return ", ".join(f"[E{i}]" for i in ids) or "none stored"


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
        except json.JSONDecodeError:
            return value
    return value


def parse_arguments(text: str) -> Any:
    """The JSON value of a call's ``arguments`` as models write them.

    Tolerated: a code fence around the object, text after it (``{...} I will now run it``), and
    the object encoded once more as a JSON string. Raises ``json.JSONDecodeError`` otherwise.
    """
    text = text.strip()
    if not text:
        return {}
    fenced = _CODE_FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    value, _end = json.JSONDecoder().raw_decode(text)
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
    text = _THINK.sub("", content)
    for i, block in enumerate(_TOOL_CALL_BLOCK.findall(text)):
        try:
            raw = parse_arguments(block)
        except json.JSONDecodeError:
            raw = None
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            calls.append(ToolCall(id=f"content_call_{i}", name="", arguments=block))
            continue
        arguments = raw.get("arguments", raw.get("parameters", {}))
        calls.append(
            ToolCall(
                id=f"content_call_{i}",
                name=raw["name"],
                arguments=arguments if isinstance(arguments, str) else json.dumps(arguments),
            )
        )
    return calls


def normalised_reply(reply: ChatReply) -> ChatReply:
    """``reply`` with ``<tool_call>`` blocks of its text moved into ``tool_calls`` (when it has
    none), so the conversation continues with structured calls and matching tool answers."""
    if reply.tool_calls or not reply.content or "<tool_call>" not in reply.content.lower():
        return reply
    calls = content_tool_calls(reply.content)
    if not calls:
        return reply
    rest = _TOOL_CALL_BLOCK.sub("", _THINK.sub("", reply.content)).strip()
    return replace(reply, content=rest or None, tool_calls=calls)


@dataclass(frozen=True)
class _Describe:
    """A ``describe_tool`` call of a known tool."""

    tool: str


@dataclass(frozen=True)
class _Rejection:
    """A reply that gave no proposal: what was wrong (``""`` when it only asked for tool
    descriptions, which does not count as unusable), and the messages that answer it."""

    problem: str
    messages: list[dict[str, Any]]
    described: list[str] = field(default_factory=list)


class LLMPlanner(Planner):
    """Proposes pre-registered experiments through any OpenAI-compatible Chat Completions server.

    ``model`` is the served model name (``--llm-model``); ``base_url`` and ``api_key`` default to
    ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` (see ``rankscope.agent.llm_client``). ``recorder`` receives
    every HTTP attempt; ``max_retries``, ``backoff_s``, ``timeout_s`` and ``retry_timeouts`` bound
    the transport retries (``None``: the environment, else the defaults for a local or hosted
    endpoint, see ``rankscope.agent.llm_client.transport_defaults``); ``max_tokens_budget`` caps the tokens of all calls together; ``max_invalid_replies``
    is how many unusable replies one ``propose`` answers with feedback before it stops;
    ``catalogue`` is how the tools are offered (``"compact"`` by default, see ``ToolCatalogue``).
    ``context_tokens`` is the model's context window (``--llm-context``); without it the window is
    detected from the server on the first request when ``detect_context`` is set (unknown: no
    check). ``reply_tokens`` of the window are kept free for the reply.
    """

    name = "llm"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        recorder: Recorder | None = None,
        max_retries: int | None = None,
        backoff_s: float = 1.0,
        timeout_s: float | None = None,
        max_tokens_budget: int | None = None,
        max_invalid_replies: int = 3,
        http_client: httpx2.Client | None = None,
        catalogue: ToolCatalogue = "compact",
        retry_timeouts: bool | None = None,
        context_tokens: int | None = None,
        detect_context: bool = True,
        reply_tokens: int = REPLY_TOKENS,
    ) -> None:
        if context_tokens is not None and context_tokens <= 0:
            raise ValueError(f"context_tokens must be positive, got {context_tokens}")
        if reply_tokens < 0:
            raise ValueError(f"reply_tokens must be >= 0, got {reply_tokens}")
        if max_invalid_replies < 0:
            raise ValueError(f"max_invalid_replies must be >= 0, got {max_invalid_replies}")
        if catalogue not in CATALOGUES:
            raise ValueError(f"catalogue must be one of {', '.join(CATALOGUES)}, got {catalogue!r}")
        self.catalogue: ToolCatalogue = catalogue
        transport = transport_defaults(base_url, timeout_s, max_retries, retry_timeouts)
        self.client = LLMClient(
            model,
            base_url,
            api_key,
            timeout_s=transport.timeout_s,
            max_retries=transport.max_retries,
            retry_timeouts=transport.retry_timeouts,
            backoff_s=backoff_s,
            max_tokens_budget=max_tokens_budget,
            recorder=recorder,
            http_client=http_client,
        )
        self.max_invalid_replies = max_invalid_replies
        self.reply_tokens = reply_tokens
        self._api_key = api_key
        self._detect = detect_context and context_tokens is None
        self._context: ContextWindow | None = (
            ContextWindow(context_tokens, "--llm-context") if context_tokens is not None else None
        )

    @property
    def model(self) -> str:
        return self.client.model

    def context_window(self) -> ContextWindow | None:
        """The model's context window: as given, else detected once from the server (best
        effort), else ``None`` (unknown: requests are not checked)."""
        if self._detect:
            self._detect = False
            self._context = detect_context(
                self.client.endpoint, self.client.model, self._api_key or None
            )
        return self._context

    def needed_tokens(self, request: dict[str, Any]) -> int:
        """Tokens of the window a request needs: its counted prompt with ``PROMPT_MARGIN``, and
        ``reply_tokens`` for the reply."""
        return math.ceil(request_tokens(request) * (1 + PROMPT_MARGIN)) + self.reply_tokens

    def _context_error(
        self, needed: int, window: ContextWindow, what: str, shrunk: bool
    ) -> LLMContextError:
        ledger = (
            f" even with the ledger summary shrunk to its minimum ({MIN_LEDGER_CHARS} characters)"
            if shrunk
            else ""
        )
        message = (
            f"the {what} request does not fit the context window of model {self.client.model!r}"
            f"{ledger}: it needs about {needed} tokens ({needed - self.reply_tokens} for the "
            f"prompt, {self.reply_tokens} kept for the reply) but the window is {window.tokens} "
            f"tokens ({window.source}). Nothing was sent, since the server would cut the prompt "
            "silently. Raise --llm-context if the server runs the model with a larger window "
            "(start it with one: Ollama OLLAMA_CONTEXT_LENGTH=16384 or num_ctx, llama.cpp "
            "`-c 16384`, vLLM --max-model-len 16384), use a model with a bigger context, or "
            "shorten the question."
        )
        return LLMContextError(message, needed=needed, context=window.tokens)

    def _check_fits(self, request: dict[str, Any], what: str) -> None:
        """Raise ``LLMContextError`` when a known context window cannot hold ``request``."""
        window = self.context_window()
        if window is None:
            return
        needed = self.needed_tokens(request)
        if needed > window.tokens:
            raise self._context_error(needed, window, what, shrunk=False)

    def _fit_ledger(
        self,
        messages: list[dict[str, Any]],
        tools: Sequence[dict[str, Any]],
        ledger: Ledger,
        ledger_chars: int,
    ) -> int:
        """Shrink the step prompt (``messages[1]``) until the request fits the context window;
        the ledger characters used. Raises ``LLMContextError`` when ``MIN_LEDGER_CHARS`` do not
        fit either."""
        window = self.context_window()
        if window is None:
            return ledger_chars
        while True:
            request = {"model": self.client.model, "messages": messages, "tools": list(tools)}
            needed = self.needed_tokens(request)
            if needed <= window.tokens:
                return ledger_chars
            if ledger_chars <= MIN_LEDGER_CHARS or not ledger.entries:
                raise self._context_error(needed, window, "planning", shrunk=bool(ledger.entries))
            ledger_chars = max(MIN_LEDGER_CHARS, int(ledger_chars * LEDGER_SHRINK))
            messages[1] = {"role": "user", "content": self._step_prompt(ledger, ledger_chars)}

    def close(self) -> None:
        """Close the HTTP connections of the client."""
        self.client.close()

    def describe(self) -> str:
        """One line for the CLI: which planner, model and endpoint run."""
        return f"LLM planner: model {self.client.model!r} at {self.client.endpoint}"

    def offered_tools(self, ledger: Ledger) -> list[dict[str, Any]]:
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

    def functions(self, specs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """The function specs a planning request offers, for the planner's ``catalogue``."""
        names = [spec["function"]["name"] for spec in specs]
        if self.catalogue == "compact":
            return [propose_tool_spec(names), describe_tool_spec(names), stop_tool_spec()]
        if self.catalogue == "reduced":
            specs = [reduced_tool_spec(spec) for spec in specs]
        return [preregistered_tool_spec(spec) for spec in specs] + [stop_tool_spec()]

    def request(self, ledger: Ledger, ledger_chars: int = LEDGER_CHARS) -> dict[str, Any]:
        """The body of the first planning request for ``ledger`` (what ``propose`` sends first
        when the context window holds it)."""
        specs = self.offered_tools(ledger)
        return {
            "model": self.client.model,
            "messages": self.messages(ledger, specs, ledger_chars),
            "tools": self.functions(specs),
        }

    def messages(
        self,
        ledger: Ledger,
        specs: Sequence[dict[str, Any]],
        ledger_chars: int = LEDGER_CHARS,
    ) -> list[dict[str, Any]]:
        """The system and user messages that open a ``propose`` conversation."""
        return [
            {"role": "system", "content": self._system_prompt(ledger, specs)},
            {"role": "user", "content": self._step_prompt(ledger, ledger_chars)},
        ]

    def propose(self, ledger: Ledger) -> Proposal | Stop:
        """One pre-registered proposal, or Stop.

        Sends at most ``max_invalid_replies + 1`` requests: each unusable reply is answered with
        what was wrong, and the last one ends in ``Stop`` naming the problem. Each request is
        fitted to the context window first (the ledger summary shrunk as needed). Raises
        ``LLMUnavailableError``, ``LLMBudgetExceeded`` and ``LLMContextError`` (nothing sent).
        """
        if ledger.steps_left <= 0 or ledger.tool_calls_left <= 0:
            return Stop(
                reason=f"no budget left ({ledger.steps_left} steps, "
                f"{ledger.tool_calls_left} tool calls)"
            )
        specs = self.offered_tools(ledger)
        if not specs:
            return Stop(reason="no registered tool is available to the LLM planner")
        tools = self.functions(specs)
        names = [spec["function"]["name"] for spec in specs]
        messages = self.messages(ledger, specs)
        ledger_chars = LEDGER_CHARS
        last_problem = ""
        invalid = 0
        described = 0
        while invalid <= self.max_invalid_replies:
            ledger_chars = self._fit_ledger(messages, tools, ledger, ledger_chars)
            reply = normalised_reply(self.client.chat(messages, tools=tools, purpose="propose"))
            outcome = self._outcome(reply, names, ledger)
            if isinstance(outcome, Proposal | Stop):
                return outcome
            messages.append(reply.assistant_message())
            messages.extend(outcome.messages)
            described += len(outcome.described)
            if outcome.problem or described > MAX_DESCRIBE_CALLS:
                invalid += 1
                last_problem = outcome.problem or (
                    f"more than {MAX_DESCRIBE_CALLS} `{DESCRIBE_FUNCTION}` calls without a proposal"
                )
        replies = self.max_invalid_replies + 1
        return Stop(
            reason=f"the LLM planner gave {replies} unusable repl{'y' if replies == 1 else 'ies'} "
            f"in a row and stopped; last problem: {last_problem}"
        )

    def narrate(self, ledger: Ledger, entry: LedgerEntry) -> Narrative:
        """A short narrative of a decided verdict, citing evidence as ``[E12]``.

        The verdict is given to the model as fixed; the narrative carries no verdict of its own.
        An empty reply falls back to the default narrative.
        """
        system = render(
            "narrate",
            question=data_block("research question", ledger.question.strip()),
            hypothesis_id=entry.hypothesis_id,
            tool=entry.tool,
            status=entry.status,
            criterion=_criterion(entry.criterion),
            metrics=_metrics(entry.key_metrics),
            replication=entry.replication or "not run",
            evidence=_evidence(entry.evidence_ids),
        )
        user = "\n\n".join(
            [
                data_block(f"H{entry.hypothesis_id} hypothesis", entry.hypothesis),
                data_block(
                    f"H{entry.hypothesis_id} summary",
                    _clip(entry.summary, MAX_SUMMARY_CHARS) or "(no summary)",
                ),
                f"Write the narrative of hypothesis H{entry.hypothesis_id} "
                f"(verdict: {entry.status}).",
            ]
        )
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        self._check_fits({"model": self.client.model, "messages": messages}, "narrative")
        reply = self.client.chat(messages, purpose="narrate")
        text = _THINK.sub("", reply.content or "").strip()
        if not text:
            return super().narrate(ledger, entry)
        return Narrative(text=text, cited_evidence_ids=parse_citations(text))

    def _system_prompt(self, ledger: Ledger, specs: Sequence[dict[str, Any]]) -> str:
        if self.catalogue == "compact":
            tool_lines = [catalogue_line(spec) for spec in specs]
            calling = render("calling_compact")
        else:
            tool_lines = []
            for spec in specs:
                function = spec["function"]
                lines = (function.get("description") or "").strip().splitlines()
                tool_lines.append(
                    f"- `{function['name']}`: {lines[0] if lines else ''}".rstrip(": ")
                )
            calling = render("calling_functions")
        model = "\n".join(
            f"- {key}: {json.dumps(value, default=str)}" for key, value in ledger.model.items()
        )
        return render(
            "system",
            question=data_block("research question", ledger.question.strip()),
            model=data_block("model", model or "(not described)"),
            data=data_block("data", ledger.data or "(not described)"),
            tools="\n".join(tool_lines),
            calling=calling.strip(),
        )

    def _ledger_text(self, entries: Sequence[LedgerEntry], limit: int = LEDGER_CHARS) -> str:
        """The ledger within ``limit`` characters: the newest entries in full (up to two thirds
        of it; the newest one whenever it fits), older ones in one line each, the oldest in a
        tally when their lines do not fit; never a record cut in half."""
        used = 0
        full: list[str] = []
        for entry in reversed(entries[-MAX_FULL_ENTRIES:]):
            text = self._full_entry(entry)
            if used + len(text) > (limit * 2 // 3 if full else limit):
                break
            full.insert(0, text)
            used += len(text) + 2
        older = list(entries[: len(entries) - len(full)])
        short: list[str] = []
        for entry in reversed(older):
            text = self._short_entry(entry)
            if used + len(text) > limit:
                break
            short.insert(0, text)
            used += len(text) + 1
        tallied = older[: len(older) - len(short)]
        parts = []
        if tallied:
            parts.append(self._tally(tallied))
        if short:
            parts.append(f"Earlier hypotheses ({len(short)}), in short:\n" + "\n".join(short))
        parts.extend(full)
        return "\n\n".join(parts)

    @staticmethod
    def _tally(entries: Sequence[LedgerEntry]) -> str:
        """Several old entries summarised as counts (the ids of supported ones kept)."""
        first, last = entries[0].hypothesis_id, entries[-1].hypothesis_id
        statuses = Counter(entry.status for entry in entries)
        tools = Counter(entry.tool for entry in entries)
        supported = [f"H{e.hypothesis_id}" for e in entries if e.status == "supported"]
        text = (
            f"Oldest hypotheses H{first}–H{last} ({len(entries)}), summarised: "
            + ", ".join(f"{n} {status}" for status, n in statuses.most_common())
            + "; tools: "
            + ", ".join(f"`{tool}` ×{n}" for tool, n in tools.most_common())
            + "."
        )
        if supported:
            text += f" Supported: {', '.join(supported)}."
        return text

    def _step_prompt(self, ledger: Ledger, ledger_chars: int = LEDGER_CHARS) -> str:
        feedback = ["- " + defang(message) for message in ledger.feedback[-MAX_FEEDBACK:]]
        return render(
            "step",
            steps_left=ledger.steps_left,
            tool_calls_left=ledger.tool_calls_left,
            entries=self._ledger_text(ledger.entries, ledger_chars)
            or "No hypothesis has been tested yet.",
            feedback="\n".join(feedback) or "None.",
            move=render(
                f"move_{'compact' if self.catalogue == 'compact' else 'functions'}"
            ).strip(),
        )

    @staticmethod
    def _short_entry(entry: LedgerEntry) -> str:
        head = f"- H{entry.hypothesis_id} · {entry.status} · `{entry.tool}` · "
        head += f"{_criterion(entry.criterion)} · evidence {_evidence(entry.evidence_ids)}"
        return (
            head
            + "\n"
            + data_block(
                f"H{entry.hypothesis_id}", _clip(entry.hypothesis, MAX_SHORT_HYPOTHESIS_CHARS)
            )
        )

    @staticmethod
    def _full_entry(entry: LedgerEntry) -> str:
        lines = [
            f"### H{entry.hypothesis_id} · {entry.status} · tool `{entry.tool}`",
            f"criterion: {_criterion(entry.criterion)}",
            f"components: {', '.join(entry.components) or 'none'}",
            f"key metrics: {_metrics(entry.key_metrics)}",
        ]
        if entry.replication is not None:
            lines.append(f"replication: {entry.replication}")
        lines.append(f"evidence: {_evidence(entry.evidence_ids)}")
        free_text = "\n".join(
            [
                f"hypothesis: {_clip(entry.hypothesis, MAX_HYPOTHESIS_CHARS)}",
                f"args: {_clip(json.dumps(entry.args, default=str), MAX_ARGS_CHARS)}",
                "summary:",
                _clip(entry.summary, MAX_SUMMARY_CHARS) or "(none)",
            ]
        )
        lines.append(data_block(f"H{entry.hypothesis_id}", free_text))
        return "\n".join(lines)

    def _outcome(
        self, reply: ChatReply, names: list[str], ledger: Ledger
    ) -> Proposal | Stop | _Rejection:
        """The first usable call of a reply, or the answer to a reply without one."""
        listed = ", ".join(f"`{n}`" for n in names)
        if self.catalogue == "compact":
            usage = (
                f"Reply with exactly one function call: `{PROPOSE_FUNCTION}` (with tool — one of "
                f"{listed} — hypothesis, rationale, criterion, components, args), "
                f"`{DESCRIBE_FUNCTION}` to see a tool's arguments, or `{STOP_FUNCTION}` with a "
                "reason."
            )
        else:
            usage = (
                f"Reply with exactly one function call: one of {listed} (with hypothesis, "
                f"rationale, criterion, components, args), or `{STOP_FUNCTION}` with a reason."
            )
        if not reply.tool_calls:
            said = "an empty reply" if not (reply.content or "").strip() else "only text"
            if reply.finish_reason == "length":
                said += ", cut off at the token limit"
            problem = f"the reply had no function call ({said})"
            content = f"Your reply had no function call ({said}); nothing was run. {usage}"
            return _Rejection(problem, [{"role": "user", "content": content}])
        results: list[str | _Describe] = []
        for call in reply.tool_calls:
            result = self._parse_call(call, names, ledger)
            if isinstance(result, Proposal | Stop):
                return result
            results.append(result)
        feedback = [
            {
                "role": "tool",
                "tool_call_id": call.id,
                "content": describe_answer(result.tool)
                if isinstance(result, _Describe)
                else f"Rejected, nothing was run: {result}. {usage}",
            }
            for call, result in zip(reply.tool_calls, results, strict=True)
        ]
        problems = [r for r in results if isinstance(r, str)]
        described = [r.tool for r in results if isinstance(r, _Describe)]
        return _Rejection(problems[0] if problems else "", feedback, described)

    def _parse_call(
        self, call: ToolCall, names: list[str], ledger: Ledger
    ) -> Proposal | Stop | _Describe | str:
        """A Proposal, Stop or description request from one call, or what is wrong with it."""
        offered = [*names, STOP_FUNCTION]
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
                    f"tools for `{PROPOSE_FUNCTION}` are " + ", ".join(f"`{n}`" for n in names)
                )
            return f"there is no function `{name}`; the available functions are " + ", ".join(
                f"`{n}`" for n in offered
            )
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
            if tool not in names:
                return (
                    f"`{name}` needs `{key}`: one of {', '.join(f'`{n}`' for n in names)} "
                    f"(got {tool!r})"
                )
            if name == DESCRIBE_FUNCTION:
                return _Describe(str(tool))
            return self._proposal(str(tool), raw, ledger)
        return self._proposal(name, raw, ledger)

    @staticmethod
    def _proposal(tool_name: str, raw: dict[str, Any], ledger: Ledger) -> Proposal | str:
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
        rationale = raw.get("rationale", "")
        if not isinstance(rationale, str):
            problems.append("`rationale` must be a string")
        criterion: Criterion | None = None
        raw_criterion = _decode_json_value(raw.get("criterion"))
        if raw_criterion is None:
            problems.append(
                "no pre-registered `criterion`: every tool call must carry a criterion object "
                "with metric, direction, threshold, alpha and split"
            )
        else:
            try:
                criterion = Criterion.model_validate(raw_criterion)
            except ValidationError as err:
                problems.append(f"invalid criterion: {_pydantic_problems(err, 'criterion')}")
        components = raw.get("components", [])
        if isinstance(components, str):
            components = [c.strip() for c in components.split(",") if c.strip()]
        if not isinstance(components, list) or not all(isinstance(c, str) for c in components):
            problems.append("`components` must be a list of names such as 'L3.H5' or 'L4.mlp'")
        parent = raw.get("parent_hypothesis_id")
        known = [entry.hypothesis_id for entry in ledger.entries]
        if parent is not None and (isinstance(parent, bool) or parent not in known):
            problems.append(
                f"`parent_hypothesis_id` {parent!r} is not a hypothesis of the ledger "
                f"(known: {', '.join(f'H{i}' for i in known) or 'none'}; use their numbers)"
            )
        args: dict[str, Any] | None = None
        raw_args = _decode_json_value(raw.get("args"))
        if raw_args is None:
            problems.append(
                f"`args` is missing: put the arguments of `{tool_name}` in an `args` object "
                "({} takes every default)"
            )
        elif not isinstance(raw_args, dict):
            problems.append(f"`args` must be a JSON object, not {type(raw_args).__name__}")
        else:
            try:
                validated = validate_args(get_tool(tool_name), raw_args)
            except ToolArgumentError as err:
                problems.append(str(err))
            else:
                args = validated.model_dump(mode="json")
                tool_split = args.get("split")
                if (
                    criterion is not None
                    and isinstance(tool_split, str)
                    and tool_split != criterion.split
                ):
                    problems.append(
                        f"the criterion is pre-registered on split {criterion.split!r} but the "
                        f"tool runs on split {tool_split!r}: make them the same"
                    )
        if problems or criterion is None or args is None:
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

"""The LLM planner: an OpenAI-compatible chat model proposes pre-registered experiments.

Each ``propose`` call starts a short conversation: the system message (``prompts/system.md``: the
question, the model under study, the tools and the pre-registration rules) and one user message
(``prompts/step.md``: a compact ledger of hypotheses, verdicts, key numbers and the graph's
feedback, never the full history). The model answers with one function call. Every registered tool
is offered as a *pre-registration wrapper* whose parameters are::

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

``LLMUnavailableError`` and ``LLMBudgetExceeded`` from ``rankscope.agent.llm_client`` propagate out of
``propose`` and ``narrate``: the graph pauses the investigation, to be resumed later.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from rankscope.agent.llm_client import ChatReply, LLMClient, Recorder, ToolCall
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
from rankscope.tools.registry import ToolArgumentError, get_tool, openai_tool_specs, validate_args

if TYPE_CHECKING:
    import httpx2

__all__ = [
    "STOP_FUNCTION",
    "LLMPlanner",
    "data_block",
    "parse_citations",
    "preregistered_tool_spec",
    "stop_tool_spec",
]

STOP_FUNCTION = "stop"
WRAPPER_KEYS = (
    "hypothesis",
    "rationale",
    "criterion",
    "components",
    "args",
    "parent_hypothesis_id",
)
MAX_FULL_ENTRIES = 8
"""The latest entries shown in full; older ones get one line each."""
MAX_SUMMARY_CHARS = 800
MAX_HYPOTHESIS_CHARS = 300
MAX_ARGS_CHARS = 400
MAX_METRICS = 8
MAX_FEEDBACK = 5

_DATA_TAG = re.compile(r"<(/?)(data)", re.IGNORECASE)
_THINK = re.compile(r"<think>.*?</think>", re.IGNORECASE | re.DOTALL)
_CITATION_GROUP = re.compile(r"\[\s*(E\s*\d+(?:\s*[,;]\s*E?\s*\d+)*)\s*\]")
_CITATION_ID = re.compile(r"\d+")


def data_block(source: str, text: str) -> str:
    """``text`` inside a delimited data block; look-alike tags in it are escaped."""
    safe = _DATA_TAG.sub(lambda m: f"&lt;{m.group(1)}{m.group(2)}", text)
    return f'<data source="{source}">\n{safe}\n</data>'


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
    """A nested object some models send as a JSON string, decoded; other values as they are."""
    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


@dataclass(frozen=True)
class _Rejection:
    """An unusable reply: what was wrong, and the messages that tell the model."""

    problem: str
    messages: list[dict[str, Any]]


class LLMPlanner(Planner):
    """Proposes pre-registered experiments through any OpenAI-compatible Chat Completions server.

    ``model`` is the served model name (``--llm-model``); ``base_url`` and ``api_key`` default to
    ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` (see ``rankscope.agent.llm_client``). ``recorder`` receives
    every HTTP attempt; ``max_retries``, ``backoff_s`` and ``timeout_s`` bound the transport
    retries; ``max_tokens_budget`` caps the tokens of all calls together; ``max_invalid_replies``
    is how many unusable replies one ``propose`` answers with feedback before it stops.
    """

    name = "llm"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        recorder: Recorder | None = None,
        max_retries: int = 3,
        backoff_s: float = 1.0,
        timeout_s: float = 60.0,
        max_tokens_budget: int | None = None,
        max_invalid_replies: int = 3,
        http_client: httpx2.Client | None = None,
    ) -> None:
        if max_invalid_replies < 0:
            raise ValueError(f"max_invalid_replies must be >= 0, got {max_invalid_replies}")
        self.client = LLMClient(
            model,
            base_url,
            api_key,
            timeout_s=timeout_s,
            max_retries=max_retries,
            backoff_s=backoff_s,
            max_tokens_budget=max_tokens_budget,
            recorder=recorder,
            http_client=http_client,
        )
        self.max_invalid_replies = max_invalid_replies

    @property
    def model(self) -> str:
        return self.client.model

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
        for spec in specs:
            if spec["function"]["name"] == STOP_FUNCTION:
                raise ValueError(f"a tool is registered as {STOP_FUNCTION!r}, the planner's stop")
        return specs

    def messages(self, ledger: Ledger, specs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """The system and user messages that open a ``propose`` conversation."""
        return [
            {"role": "system", "content": self._system_prompt(ledger, specs)},
            {"role": "user", "content": self._step_prompt(ledger)},
        ]

    def propose(self, ledger: Ledger) -> Proposal | Stop:
        """One pre-registered proposal, or Stop.

        Sends at most ``max_invalid_replies + 1`` requests: each unusable reply is answered with
        what was wrong, and the last one ends in ``Stop`` naming the problem. Raises
        ``LLMUnavailableError`` and ``LLMBudgetExceeded``.
        """
        if ledger.steps_left <= 0 or ledger.tool_calls_left <= 0:
            return Stop(
                reason=f"no budget left ({ledger.steps_left} steps, "
                f"{ledger.tool_calls_left} tool calls)"
            )
        specs = self.offered_tools(ledger)
        if not specs:
            return Stop(reason="no registered tool is available to the LLM planner")
        tools = [preregistered_tool_spec(spec) for spec in specs] + [stop_tool_spec()]
        names = [spec["function"]["name"] for spec in specs]
        messages = self.messages(ledger, specs)
        last_problem = ""
        for _ in range(self.max_invalid_replies + 1):
            reply = self.client.chat(messages, tools=tools, purpose="propose")
            outcome = self._outcome(reply, names, ledger)
            if isinstance(outcome, Proposal | Stop):
                return outcome
            messages.append(reply.assistant_message())
            messages.extend(outcome.messages)
            last_problem = outcome.problem
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
            question=ledger.question,
            hypothesis_id=entry.hypothesis_id,
            tool=entry.tool,
            status=entry.status,
            criterion=_criterion(entry.criterion),
            metrics=_metrics(entry.key_metrics),
            replication=_metrics(entry.replication) if entry.replication else "not run",
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
        reply = self.client.chat(
            [{"role": "system", "content": system}, {"role": "user", "content": user}],
            purpose="narrate",
        )
        text = _THINK.sub("", reply.content or "").strip()
        if not text:
            return super().narrate(ledger, entry)
        return Narrative(text=text, cited_evidence_ids=parse_citations(text))

    def _system_prompt(self, ledger: Ledger, specs: Sequence[dict[str, Any]]) -> str:
        tool_lines = []
        for spec in specs:
            function = spec["function"]
            lines = (function.get("description") or "").strip().splitlines()
            tool_lines.append(f"- `{function['name']}`: {lines[0] if lines else ''}".rstrip(": "))
        model = "\n".join(
            f"- {key}: {json.dumps(value, default=str)}" for key, value in ledger.model.items()
        )
        return render(
            "system",
            question=ledger.question.strip(),
            model=model or "(not described)",
            data=ledger.data or "(not described)",
            tools="\n".join(tool_lines),
        )

    def _step_prompt(self, ledger: Ledger) -> str:
        entries = ledger.entries
        older, recent = entries[:-MAX_FULL_ENTRIES], entries[-MAX_FULL_ENTRIES:]
        parts = []
        if older:
            parts.append(f"Earlier hypotheses ({len(older)}), in short:")
            parts.extend(self._short_entry(entry) for entry in older)
        parts.extend(self._full_entry(entry) for entry in recent)
        feedback = [
            "- " + _DATA_TAG.sub(lambda m: f"&lt;{m.group(1)}{m.group(2)}", message)
            for message in ledger.feedback[-MAX_FEEDBACK:]
        ]
        return render(
            "step",
            steps_left=ledger.steps_left,
            tool_calls_left=ledger.tool_calls_left,
            entries="\n\n".join(parts) or "No hypothesis has been tested yet.",
            feedback="\n".join(feedback) or "None.",
        )

    @staticmethod
    def _short_entry(entry: LedgerEntry) -> str:
        head = f"- H{entry.hypothesis_id} · {entry.status} · `{entry.tool}` · "
        head += f"{_criterion(entry.criterion)} · evidence {_evidence(entry.evidence_ids)}"
        return (
            head
            + "\n"
            + data_block(f"H{entry.hypothesis_id}", _clip(entry.hypothesis, MAX_HYPOTHESIS_CHARS))
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
            lines.append(f"replication: {_metrics(entry.replication)}")
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
        """The first usable call of a reply, or the feedback for an unusable reply."""
        usage = (
            f"Reply with exactly one function call: one of {', '.join(f'`{n}`' for n in names)} "
            f"(with hypothesis, rationale, criterion, components, args), or `{STOP_FUNCTION}` "
            "with a reason."
        )
        if not reply.tool_calls:
            said = "an empty reply" if not (reply.content or "").strip() else "only text"
            if reply.finish_reason == "length":
                said += ", cut off at the token limit"
            problem = f"the reply had no function call ({said})"
            content = f"Your reply had no function call ({said}); nothing was run. {usage}"
            return _Rejection(problem, [{"role": "user", "content": content}])
        problems: list[str] = []
        for call in reply.tool_calls:
            result = self._parse_call(call, names, ledger)
            if isinstance(result, Proposal | Stop):
                return result
            problems.append(result)
        feedback = [
            {
                "role": "tool",
                "tool_call_id": call.id,
                "content": f"Rejected, nothing was run: {problem}. {usage}",
            }
            for call, problem in zip(reply.tool_calls, problems, strict=True)
        ]
        return _Rejection(problems[0], feedback)

    def _parse_call(
        self, call: ToolCall, names: list[str], ledger: Ledger
    ) -> Proposal | Stop | str:
        """A Proposal or Stop from one call, or what is wrong with it (one string)."""
        offered = [*names, STOP_FUNCTION]
        if call.name not in offered:
            return f"there is no function `{call.name}`; the available functions are " + ", ".join(
                f"`{n}`" for n in offered
            )
        try:
            raw = json.loads(call.arguments) if call.arguments.strip() else {}
        except json.JSONDecodeError as err:
            return (
                f"the arguments of `{call.name}` are not valid JSON ({err}); send exactly one "
                "JSON object"
            )
        if not isinstance(raw, dict):
            return f"the arguments of `{call.name}` must be a JSON object, not {type(raw).__name__}"
        if call.name == STOP_FUNCTION:
            reason = raw.get("reason")
            if not isinstance(reason, str) or not reason.strip():
                return f"`{STOP_FUNCTION}` needs a non-empty `reason` string"
            return Stop(reason=reason.strip())
        return self._proposal(call.name, raw, ledger)

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

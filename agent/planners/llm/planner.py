"""``LLMPlanner``: the conversation with the model, each request fitted to its context window.

Each ``propose`` call starts a short conversation: the system message (``prompts/system.md``: the
question, the model under study, the tools and the pre-registration rules) and one user message
(the step prompt, ``ledger_text``). The model answers with one function call; a reply that cannot
become a ``Proposal`` is answered in the same conversation with what was wrong (``replies``), up
to ``max_invalid_replies`` times; then ``propose`` returns ``Stop`` with the reason.

The context window (``context_tokens``, from ``--llm-context``, else detected from the server by
``rankscope.agent.llm_context.detect_context``) bounds every request: each one is counted before it
is sent (``request_tokens``, plus ``PROMPT_MARGIN`` and ``reply_tokens`` kept for the reply). When a
``propose`` request would not fit, the ledger summary is shrunk (``LEDGER_CHARS`` down to
``MIN_LEDGER_CHARS``); when even that does not fit, ``LLMContextError`` says what to do and nothing
is sent. Nothing is ever cut silently.

``LLMUnavailableError``, ``LLMBudgetExceeded`` and ``LLMContextError`` propagate out of ``propose``
and ``narrate``: the graph pauses the investigation, to be resumed later.

Small local models are met where they are: a call written as text in the reply (what
``transformers serve`` returns for Qwen2.5-Coder) is read as a call ("parsed from text", said once
in the investigation's notes) and checked like any other; when the graph's gate rejected the
planner's last proposal, the next step prompt restates it in one sentence with a concrete fix and
the corrected call (``hints.correction``). ``structured_output`` asks servers that support it
(``response_format`` with a JSON schema of the calls) to constrain the reply to a call;
``transformers serve`` 5.x ignores the field. ``replies`` keeps one ``PlannerReply`` per reply
(tokens, latency, what it became), which ``benchmarks/llm_local_model.py`` prints.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Any, Literal

from rankscope.agent.citations import cited_in_text
from rankscope.agent.llm_client import ChatReply, LLMClient, Recorder, transport_defaults
from rankscope.agent.llm_context import (
    PROMPT_MARGIN,
    ContextWindow,
    LLMContextError,
    detect_context,
    request_tokens,
)
from rankscope.agent.planners.base import Ledger, LedgerEntry, Narrative, Planner, Proposal, Stop
from rankscope.agent.planners.llm.catalogue import (
    CATALOGUES,
    DESCRIBE_FUNCTION,
    ToolCatalogue,
    function_specs,
    offered_tools,
    tool_lines,
)
from rankscope.agent.planners.llm.fencing import data_block, defang
from rankscope.agent.planners.llm.hints import (
    compact_json,
    correction,
    example_call,
    first_sentence,
)
from rankscope.agent.planners.llm.ledger_text import (
    LEDGER_CHARS,
    MAX_SUMMARY_CHARS,
    MIN_LEDGER_CHARS,
    clip,
    evidence_text,
    metrics_text,
    step_prompt,
)
from rankscope.agent.planners.llm.replies import (
    Accepted,
    Rejection,
    ReplyReader,
    normalised_reply,
    without_thinking,
)
from rankscope.prompts import render

__all__ = [
    "LEDGER_SHRINK",
    "MAX_DESCRIBE_CALLS",
    "PARSED_FROM_TEXT_NOTE",
    "REPLY_TOKENS",
    "LLMPlanner",
    "PlannerReply",
    "call_schema",
]

LEDGER_SHRINK = 0.7
"""Each shrinking step keeps this share of the ledger characters."""
REPLY_TOKENS = 1024
"""Tokens of the context window kept free for the reply (a call is 100–400 tokens; a model that
thinks aloud first needs more)."""
MAX_DESCRIBE_CALLS = 4
"""``describe_tool`` answers one ``propose`` gives before further ones count as unusable."""
PARSED_FROM_TEXT_NOTE = (
    "LLM planner: the server returned the model's calls as text, not as tool calls; each call "
    "written as JSON in a reply is parsed from the text and checked like any other call"
)
MAX_REPLY_TEXT = 2000
"""Characters of a reply's text kept in a ``PlannerReply``."""

ReplyOutcome = Literal["proposal", "stop", "describe", "rejected"]


@dataclass(frozen=True)
class PlannerReply:
    """One reply of the model in a ``propose`` conversation, as the planner read it."""

    step: int
    """The ``propose`` call it answered (1 for the first)."""
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    outcome: ReplyOutcome
    source: str
    """``tool_calls``, ``text`` (a call parsed from the reply's text) or ``""`` (no call)."""
    detail: str
    """The proposed tool, the stop reason, the described tool, or why it was rejected."""
    text: str = ""
    """The reply's text (cut at ``MAX_REPLY_TEXT``)."""


@dataclass(frozen=True)
class _Proposed:
    """The planner's last proposal, and the ledger it was made from (to tell, at the next step,
    whether the gate rejected it)."""

    proposal: Proposal
    step: int
    feedback: int
    entries: int


ECHO_CHARS = 40
"""A stop reason sharing this many characters with the planner's feedback echoes it."""


def _echoes(reason: str, sent: Sequence[str]) -> bool:
    """Whether a stop reason repeats feedback the planner sent in this conversation."""
    text = " ".join(reason.split()).lower()
    for message in sent:
        said = " ".join(message.split()).lower()
        match = SequenceMatcher(None, text, said, autojunk=False).find_longest_match()
        if match.size >= min(ECHO_CHARS, len(text)):
            return True
    return False


def _echoed_stop(accepted: Accepted) -> Rejection:
    """A stop whose reason repeats the planner's own feedback, answered once: a small model
    stops to escape feedback it cannot act on (Qwen2.5-Coder-0.5B made the planner's rejection
    message its stop reason). A second such stop in the conversation ends the investigation."""
    problem = "a stop whose reason repeats the feedback"
    content = (
        "Your stop repeats the feedback instead of saying why the investigation should end. "
        "Fix the call as the feedback says (adapt the example call of the system message), or "
        "call `stop` again with your own reason."
    )
    return Rejection(
        problem, [{"role": "tool", "tool_call_id": accepted.call.id, "content": content}]
    )


def call_schema(functions: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A JSON schema of one call of ``functions`` written as text: ``{"name": <function>,
    "arguments": <its parameters>}`` (``response_format`` of servers with structured output)."""
    options = []
    defs: dict[str, Any] = {}
    for spec in functions:
        function = spec["function"]
        parameters = json.loads(json.dumps(function.get("parameters") or {"type": "object"}))
        defs.update(parameters.pop("$defs", {}))
        options.append(
            {
                "type": "object",
                "properties": {"name": {"const": function["name"]}, "arguments": parameters},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    schema: dict[str, Any] = {"anyOf": options}
    if defs:
        schema["$defs"] = defs
    return schema


class LLMPlanner(Planner):
    """Proposes pre-registered experiments through any OpenAI-compatible Chat Completions server.

    ``model`` is the served model name (``--llm-model``); ``base_url`` and ``api_key`` default to
    ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` (see ``rankscope.agent.llm_client``). ``recorder``
    receives every HTTP attempt; ``max_retries``, ``timeout_s`` and ``retry_timeouts`` bound the
    transport (``None``: the environment, else the defaults for a local or hosted endpoint, see
    ``rankscope.agent.llm_client.transport_defaults``); ``max_tokens_budget`` caps the tokens of
    all calls together; ``max_invalid_replies`` is how many unusable replies one ``propose``
    answers with feedback before it stops; ``catalogue`` is how the tools are offered
    (``"compact"`` by default, see ``ToolCatalogue``). ``context_tokens`` is the model's context
    window (``--llm-context``); without it the window is detected from the server on the first
    request when ``detect_context`` is set (unknown: no check). ``reply_tokens`` of the window are
    kept free for the reply.
    """

    name = "llm"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        recorder: Recorder | None = None,
        max_retries: int | None = None,
        timeout_s: float | None = None,
        max_tokens_budget: int | None = None,
        max_invalid_replies: int = 3,
        catalogue: ToolCatalogue = "compact",
        retry_timeouts: bool | None = None,
        context_tokens: int | None = None,
        detect_context: bool = True,
        reply_tokens: int = REPLY_TOKENS,
        structured_output: bool = False,
        temperature: float | None = None,
        seed: int | None = None,
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
            max_tokens_budget=max_tokens_budget,
            recorder=recorder,
        )
        self.max_invalid_replies = max_invalid_replies
        self.reply_tokens = reply_tokens
        self.structured_output = structured_output
        self.temperature = temperature
        self.seed = seed
        self.replies: list[PlannerReply] = []
        """Every reply of the ``propose`` conversations, in order."""
        self.proposals: dict[int, Proposal] = {}
        """The proposal of each step that made one."""
        self.gate: dict[int, str] = {}
        """What the graph did with a step's proposal, as the next step's ledger shows it:
        ``ran as H3``, or ``rejected: <the gate's message>``."""
        self._steps = 0
        self._notes: list[str] = []
        self._noted: set[str] = set()
        self._proposed: _Proposed | None = None
        self._correction: tuple[str, str] = ("", "")
        self._detect = detect_context and context_tokens is None
        self._context: ContextWindow | None = (
            ContextWindow(context_tokens, "--llm-context") if context_tokens is not None else None
        )

    @property
    def model(self) -> str:
        return self.client.model

    def close(self) -> None:
        """Close the HTTP connections of the client."""
        self.client.close()

    def describe(self) -> str:
        """One line for the CLI: which planner, model and endpoint run."""
        return f"LLM planner: model {self.client.model!r} at {self.client.endpoint}"

    # -- the requests ------------------------------------------------------------------------

    def functions(self, specs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """The function specs a planning request offers, for the planner's ``catalogue``."""
        return function_specs(self.catalogue, specs)

    def offered_tools(self, ledger: Ledger) -> list[dict[str, Any]]:
        """Registered tool specs the ledger allows (all registered tools when it names none)."""
        return offered_tools(ledger)

    def request(self, ledger: Ledger, ledger_chars: int = LEDGER_CHARS) -> dict[str, Any]:
        """The body of the first planning request for ``ledger`` (what ``propose`` sends first
        when the context window holds it)."""
        specs = offered_tools(ledger)
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

    def _step_prompt(self, ledger: Ledger, ledger_chars: int) -> str:
        rejected, restated = self._correction
        return step_prompt(
            ledger,
            self.catalogue,
            ledger_chars,
            hidden=[*self._noted, *([rejected] if restated else [])],
            correction=restated,
        )

    def _system_prompt(self, ledger: Ledger, specs: Sequence[dict[str, Any]]) -> str:
        if self.catalogue == "compact":
            names = [spec["function"]["name"] for spec in specs]
            example = example_call(ledger.question, names)
            calling = render(
                "calling_compact",
                example=compact_json(example) if example else "(no tool is offered)",
            )
        else:
            calling = render("calling_functions")
        model = "\n".join(
            f"- {key}: {json.dumps(value, default=str)}" for key, value in ledger.model.items()
        )
        return render(
            "system",
            question=data_block("research question", ledger.question.strip()),
            model=data_block("model", model or "(not described)"),
            data=data_block("data", ledger.data or "(not described)"),
            tools="\n".join(tool_lines(self.catalogue, specs, ledger.question)),
            calling=calling.strip(),
        )

    def _chat_options(self, tools: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """What a planning request sends besides the messages and tools."""
        options: dict[str, Any] = {}
        if self.structured_output:
            options["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "function_call", "schema": call_schema(tools)},
            }
        if self.temperature is not None:
            options["temperature"] = self.temperature
        if self.seed is not None:
            options["seed"] = self.seed
        return options

    # -- the gate's answer to the last proposal ----------------------------------------------

    def _last_rejection(self, ledger: Ledger) -> tuple[str, str]:
        """The gate's rejection of the planner's last proposal (when the ledger shows one) and
        its restatement for the step prompt: the reason in one sentence, the fix and the
        corrected call; ``("", "")`` when the last proposal ran or nothing is known of it."""
        proposed, self._proposed = self._proposed, None
        if proposed is None:
            return "", ""
        if len(ledger.entries) > proposed.entries:
            self.gate[proposed.step] = f"ran as H{ledger.entries[-1].hypothesis_id}"
            return "", ""
        new = [m for m in ledger.feedback[proposed.feedback :] if m not in self._noted]
        if not new:
            return "", ""
        message = new[0]
        self.gate[proposed.step] = f"rejected: {message}"
        names = [spec["function"]["name"] for spec in offered_tools(ledger)]
        fixed = correction(proposed.proposal, message, ledger.question, names)
        if fixed is None:
            return message, ""
        text = (
            f"- Your last call (`{proposed.proposal.tool}`) was rejected and nothing was run: "
            f"{defang(first_sentence(message))}. Fix: {defang(fixed.fix)}."
        )
        if fixed.call is not None:
            text += " The corrected call (send it, or a better one):\n" + data_block(
                "your last call, corrected", compact_json(fixed.call)
            )
        return message, text

    # -- notes ---------------------------------------------------------------------------------

    def drain_notes(self) -> list[str]:
        """Notes for the investigation record since the last step (each said once)."""
        notes, self._notes = self._notes, []
        return notes

    def _note(self, note: str) -> None:
        if note not in self._noted:
            self._noted.add(note)
            self._notes.append(note)

    # -- the conversations -------------------------------------------------------------------

    def propose(self, ledger: Ledger) -> Proposal | Stop:
        """One pre-registered proposal, or Stop.

        Sends at most ``max_invalid_replies + 1`` requests: each unusable reply is answered with
        what was wrong, and the last one ends in ``Stop`` naming the problem. Each request is
        fitted to the context window first (the ledger summary shrunk as needed). Raises
        ``LLMUnavailableError``, ``LLMBudgetExceeded`` and ``LLMContextError`` (nothing sent).
        """
        self._steps += 1
        self._correction = self._last_rejection(ledger)
        if ledger.steps_left <= 0 or ledger.tool_calls_left <= 0:
            return Stop(
                reason=f"no budget left ({ledger.steps_left} steps, "
                f"{ledger.tool_calls_left} tool calls)"
            )
        specs = offered_tools(ledger)
        if not specs:
            return Stop(reason="no registered tool is available to the LLM planner")
        tools = self.functions(specs)
        reader = ReplyReader(
            self.catalogue,
            names=[spec["function"]["name"] for spec in specs],
            known_ids=[entry.hypothesis_id for entry in ledger.entries],
            question=ledger.question,
        )
        messages = self.messages(ledger, specs)
        options = self._chat_options(tools)
        ledger_chars = LEDGER_CHARS
        last_problem = ""
        invalid = 0
        described = 0
        stop_questioned = False
        sent: list[str] = []
        while invalid <= self.max_invalid_replies:
            ledger_chars = self._fit_ledger(messages, tools, ledger, ledger_chars)
            reply = normalised_reply(
                self.client.chat(messages, tools=tools, purpose="propose", **options)
            )
            outcome = reader.outcome(reply)
            if (
                isinstance(outcome, Accepted)
                and isinstance(outcome.result, Stop)
                and not stop_questioned
                and _echoes(outcome.result.reason, sent)
            ):
                stop_questioned = True
                outcome = _echoed_stop(outcome)
            self._log(reply, outcome)
            if isinstance(outcome, Accepted):
                if outcome.call.source == "text":
                    self._note(PARSED_FROM_TEXT_NOTE)
                if isinstance(outcome.result, Proposal):
                    self.proposals[self._steps] = outcome.result
                    self._proposed = _Proposed(
                        outcome.result, self._steps, len(ledger.feedback), len(ledger.entries)
                    )
                return outcome.result
            messages.append(reply.assistant_message())
            messages.extend(outcome.messages)
            sent.extend(str(m.get("content") or "") for m in outcome.messages)
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

    def _log(self, reply: ChatReply, outcome: Accepted | Rejection) -> None:
        """Keep one ``PlannerReply`` for ``reply``."""
        outcome_name: ReplyOutcome
        source = ""
        if isinstance(outcome, Accepted):
            source = outcome.call.source
            if isinstance(outcome.result, Proposal):
                outcome_name, detail = "proposal", outcome.result.tool
            else:
                outcome_name, detail = "stop", outcome.result.reason
        elif outcome.problem:
            outcome_name, detail = "rejected", outcome.problem
            source = reply.tool_calls[0].source if reply.tool_calls else ""
        else:
            outcome_name, detail = "describe", ", ".join(outcome.described)
            source = reply.tool_calls[0].source if reply.tool_calls else ""
        text = reply.content or ""
        if reply.tool_calls and not text:
            text = "; ".join(f"{c.name}({c.arguments})" for c in reply.tool_calls)
        self.replies.append(
            PlannerReply(
                step=self._steps,
                prompt_tokens=reply.prompt_tokens,
                completion_tokens=reply.completion_tokens,
                latency_s=reply.latency_s,
                outcome=outcome_name,
                source=source,
                detail=detail,
                text=text[:MAX_REPLY_TEXT],
            )
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
            criterion=str(entry.criterion),
            metrics=metrics_text(entry.key_metrics),
            replication=entry.replication or "not run",
            evidence=evidence_text(entry.evidence_ids),
        )
        user = "\n\n".join(
            [
                data_block(f"H{entry.hypothesis_id} hypothesis", entry.hypothesis),
                data_block(
                    f"H{entry.hypothesis_id} summary",
                    clip(entry.summary, MAX_SUMMARY_CHARS) or "(no summary)",
                ),
                f"Write the narrative of hypothesis H{entry.hypothesis_id} "
                f"(verdict: {entry.status}).",
            ]
        )
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        self._check_fits({"model": self.client.model, "messages": messages}, "narrative")
        reply = self.client.chat(messages, purpose="narrate")
        text = without_thinking(reply.content or "").strip()
        if not text:
            return super().narrate(ledger, entry)
        return Narrative(text=text, cited_evidence_ids=cited_in_text(text))

    # -- the context window ------------------------------------------------------------------

    def context_window(self) -> ContextWindow | None:
        """The model's context window: as given, else detected once from the server (best
        effort), else ``None`` (unknown: requests are not checked)."""
        if self._detect:
            self._detect = False
            self._context = detect_context(self.client)
        return self._context

    def needed_tokens(self, request: dict[str, Any]) -> int:
        """Tokens of the window a request needs: its counted prompt with ``PROMPT_MARGIN``, and
        ``reply_tokens`` for the reply."""
        return math.ceil(request_tokens(request) * (1 + PROMPT_MARGIN)) + self.reply_tokens

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

"""The one client for an OpenAI-compatible LLM server: chat completions and context probing.

``LLMClient`` holds one ``openai.OpenAI`` client (``LLMClient.openai``; it runs on ``httpx2``) and
lets the SDK do what it does: retries with exponential backoff and jitter of 408, 409, 429, 5xx,
timeouts and connection errors (``max_retries`` of them), a server's ``Retry-After`` /
``retry-after-ms`` honoured up to two minutes (a server asking for longer is not retried), typed
replies. Below the SDK, every HTTP attempt passes through one
transport (``_AttemptTransport``), which adds:

* a deadline for the whole attempt: sending, waiting and reading the reply within ``timeout_s``
  (the SDK's timeout bounds each read, so a server that drips bytes would hold a request forever);
* a record of every attempt, failed ones included, passed to the ``recorder`` as an ``LLMCall``
  (model, messages, response, tokens, latency, error);
* no re-send after a timeout unless ``retry_timeouts`` (by default: for hosted endpoints, never for
  local ones, whose single worker is still busy with the timed-out request), and none after a 429
  that says the account has no quota left.

Above the SDK, ``chat`` keeps the token budget (with ``max_tokens_budget``, a call is refused with
``LLMBudgetExceeded`` before it is sent once the budget is spent; the last call may overshoot it
by one reply) and turns what failed into ``LLMUnavailableError``, which says which endpoint and
model, what happened, and what to do (check ``OPENAI_BASE_URL``, ``OPENAI_API_KEY`` and the server,
then ``rankscope resume ID``). Token counts come from the reply's ``usage``, estimated from text
length (and marked so) when a server sends none or counts that cannot be true. Reply text is cut
at ``MAX_REPLY_CHARS`` before it is stored or printed.

Settings (see ``transport_defaults``): ``--llm-timeout`` / ``RANKSCOPE_LLM_TIMEOUT`` (seconds;
default 60 for hosted endpoints, 600 for local ones), ``--llm-retries`` /
``RANKSCOPE_LLM_RETRIES`` (default 3 hosted, 1 local) and ``RANKSCOPE_LLM_RETRY_TIMEOUTS``
(``1``/``0``). The model comes from ``--llm-model``; the endpoint from ``base_url`` or
``OPENAI_BASE_URL`` (default ``https://api.openai.com/v1``); the key from ``api_key`` or
``OPENAI_API_KEY``. Local servers usually need no key: when none is set and the endpoint is not
``api.openai.com``, the placeholder key ``"not-needed"`` is sent (the SDK refuses to run without
one); ``api.openai.com`` without a key is a configuration error.
"""

from __future__ import annotations

import copy
import json
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import httpx2
import openai
from openai.types.chat import ChatCompletion, ChatCompletionMessage
from openai.types.chat.chat_completion_message_function_tool_call import Function

__all__ = [
    "DEFAULT_BASE_URL",
    "PLACEHOLDER_API_KEY",
    "ChatReply",
    "LLMBudgetExceeded",
    "LLMCall",
    "LLMClient",
    "LLMConfigError",
    "LLMError",
    "LLMUnavailableError",
    "Recorder",
    "ToolCall",
]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
TIMEOUT_ENV = "RANKSCOPE_LLM_TIMEOUT"
RETRIES_ENV = "RANKSCOPE_LLM_RETRIES"
RETRY_TIMEOUTS_ENV = "RANKSCOPE_LLM_RETRY_TIMEOUTS"
HOSTED_TIMEOUT_S = 60.0
LOCAL_TIMEOUT_S = 600.0
"""A local server on a laptop may need minutes for a long prompt."""
HOSTED_RETRIES = 3
LOCAL_RETRIES = 1
PLACEHOLDER_API_KEY = "not-needed"
CHARS_PER_TOKEN = 4
"""Rough size of a token, used only when a server reports no ``usage``."""
MAX_REPORTED_TOKENS = 10_000_000
"""A server's token count above this (or below zero, or not a whole number) is ignored and the
count estimated instead: no real request or reply is that long."""
MAX_REPLY_CHARS = 20_000
"""Longest reply text (content, or one tool call's arguments) kept, stored or printed; the rest is
cut with a note."""
URL_HINT = "check OPENAI_BASE_URL: it should be the API root, usually ending in /v1"


class LLMError(RuntimeError):
    """Base of the errors raised by the LLM client."""


class LLMConfigError(LLMError):
    """The client cannot be configured (no model, no key for api.openai.com)."""


class LLMUnavailableError(LLMError):
    """The endpoint could not give a usable reply, after bounded retries where retrying helps."""

    def __init__(
        self,
        message: str,
        *,
        endpoint: str,
        model: str,
        attempts: int,
        reason: str,
        status_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.model = model
        self.attempts = attempts
        self.reason = reason
        self.status_code = status_code


class LLMBudgetExceeded(LLMError):
    """The token budget is spent; raised before a call, so nothing was sent."""

    def __init__(self, message: str, *, budget: int, used: int) -> None:
        super().__init__(message)
        self.budget = budget
        self.used = used


@dataclass(frozen=True)
class ToolCall:
    """One function call in a reply; ``arguments`` is the raw JSON text the model wrote.
    ``source`` is ``"tool_calls"`` for a call the server returned as one, ``"text"`` for a call
    the planner parsed from the reply's text (``rankscope.agent.planners.llm.replies``)."""

    id: str
    name: str
    arguments: str
    source: str = "tool_calls"


@dataclass(frozen=True)
class ChatReply:
    """The first choice of a chat completion, with its token use and latency."""

    content: str | None
    tool_calls: list[ToolCall]
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    raw: dict[str, Any]
    tokens_estimated: bool = False
    """True when the server sent no ``usage`` and the token counts are estimates."""

    def assistant_message(self) -> dict[str, Any]:
        """The reply as an ``assistant`` message, to continue the conversation after it."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content or None}
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in self.tool_calls
            ]
        elif message["content"] is None:
            message["content"] = ""
        return message


@dataclass(frozen=True)
class LLMCall:
    """One HTTP attempt, as passed to the recorder (failed attempts have ``error`` set)."""

    purpose: str
    endpoint: str
    model: str
    messages: list[dict[str, Any]]
    tool_names: list[str]
    response: dict[str, Any] | None
    prompt_tokens: int
    completion_tokens: int
    tokens_estimated: bool
    latency_s: float
    error: str | None
    status_code: int | None
    attempt: int
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``started_at`` as ISO text)."""
        data = asdict(self)
        data["started_at"] = self.started_at.isoformat()
        data["total_tokens"] = self.total_tokens
        return data


Recorder = Callable[[LLMCall], None]


def is_local_endpoint(base_url: str) -> bool:
    """Whether ``base_url`` is on this machine (localhost, 127.0.0.0/8, ::1, 0.0.0.0)."""
    host = (urlsplit(base_url).hostname or "").lower()
    return host in ("localhost", "::1", "0.0.0.0") or host.startswith("127.")


@dataclass(frozen=True)
class TransportSettings:
    """Request timeout, retries, and whether a timed-out request may be re-sent."""

    timeout_s: float
    max_retries: int
    retry_timeouts: bool


def _env_number(name: str, kind: type[float] | type[int]) -> float | int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return kind(raw)
    except ValueError as err:
        raise LLMConfigError(f"{name}={raw!r} is not a {kind.__name__}") from err


def transport_defaults(
    base_url: str | None,
    timeout_s: float | None = None,
    max_retries: int | None = None,
    retry_timeouts: bool | None = None,
) -> TransportSettings:
    """The transport settings: given values win, then the environment, then the defaults for a
    local or a hosted endpoint (``base_url`` or ``OPENAI_BASE_URL``)."""
    local = is_local_endpoint(base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL)
    if timeout_s is None:
        timeout_s = _env_number(TIMEOUT_ENV, float)
    if max_retries is None:
        max_retries = None if (n := _env_number(RETRIES_ENV, int)) is None else int(n)
    if retry_timeouts is None:
        raw = os.environ.get(RETRY_TIMEOUTS_ENV, "").strip().lower()
        retry_timeouts = raw in ("1", "true", "yes") if raw else not local
    timeout = float(
        timeout_s if timeout_s is not None else LOCAL_TIMEOUT_S if local else HOSTED_TIMEOUT_S
    )
    retries = int(
        max_retries if max_retries is not None else LOCAL_RETRIES if local else HOSTED_RETRIES
    )
    if timeout <= 0:
        raise LLMConfigError(f"the LLM request timeout must be positive, got {timeout:g} s")
    if retries < 0:
        raise LLMConfigError(f"the LLM retries must be >= 0, got {retries}")
    return TransportSettings(timeout, retries, retry_timeouts)


@dataclass(frozen=True)
class _Attempt:
    """One HTTP exchange as the transport saw it."""

    started_at: datetime
    latency_s: float
    status_code: int | None = None
    error: str | None = None
    """What failed (``None``: the server answered below 400)."""
    response: dict[str, Any] | None = None
    """The error body the server sent, as ``{"error": ...}``."""
    out_of_quota: bool = False


def _http_failure(response: httpx2.Response) -> tuple[str, dict[str, Any] | None, bool]:
    """An error reply's reason text, its error body and whether it says the quota is spent."""
    try:
        body = json.loads(response.content)
    except ValueError:
        body = None
    error = body.get("error", body) if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    detail = message if isinstance(message, str) else response.text.strip()[:200]
    quota = isinstance(error, dict) and error.get("code") == "insufficient_quota"
    return f"HTTP {response.status_code}: {detail}", _capped({"error": error}), quota


class _AttemptTransport(httpx2.BaseTransport):
    """The transport below the SDK: each attempt within its deadline, and reported.

    The deadline is the request's read timeout (the SDK's ``timeout``): the exchange runs on a
    daemon thread and the caller stops waiting at the deadline (the thread ends when the server
    does or the connection drops). A timed-out attempt is raised as an ``httpx2`` timeout, which
    the SDK retries, or, without ``retry_timeouts``, as ``openai.APITimeoutError``, which the SDK
    passes on as it is. A 429 that says the quota is spent is marked ``x-should-retry: false``.
    """

    def __init__(self, report: Callable[[_Attempt], None], retry_timeouts: bool) -> None:
        self._inner = httpx2.HTTPTransport()
        self._report = report
        self.retry_timeouts = retry_timeouts

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        deadline = (request.extensions.get("timeout") or {}).get("read")
        started_at, start = datetime.now(UTC), time.perf_counter()
        outcome: dict[str, Any] = {}

        def exchange() -> None:
            try:
                response = self._inner.handle_request(request)
                response.read()
                outcome["response"] = response
            except BaseException as err:  # handed to the caller's thread
                outcome["error"] = err

        worker = threading.Thread(target=exchange, name="rankscope-llm-request", daemon=True)
        worker.start()
        worker.join(deadline)
        latency = time.perf_counter() - start
        error = outcome.get("error")
        if worker.is_alive() or isinstance(error, httpx2.TimeoutException):
            after = "" if deadline is None else f" after {deadline:g} s"
            self._report(_Attempt(started_at, latency, error=f"the request timed out{after}"))
            if not self.retry_timeouts:
                raise openai.APITimeoutError(request=request)
            raise (
                error
                if isinstance(error, httpx2.TimeoutException)
                else httpx2.ReadTimeout("deadline", request=request)
            )
        if error is not None:
            cause = f"could not connect ({type(error).__name__}: {error})"
            self._report(_Attempt(started_at, latency, error=cause))
            raise error
        response: httpx2.Response = outcome["response"]
        if response.status_code < 400:
            self._report(_Attempt(started_at, latency, response.status_code))
            return response
        reason, body, quota = _http_failure(response)
        if quota:
            response.headers["x-should-retry"] = "false"
        self._report(_Attempt(started_at, latency, response.status_code, reason, body, quota))
        return response

    def close(self) -> None:
        self._inner.close()


def _status_hint(status: int | None, model: str, out_of_quota: bool) -> str:
    if out_of_quota:
        return "the account behind OPENAI_API_KEY has no quota left; retrying cannot help"
    if status in (401, 403):
        return "the server refused the API key: check OPENAI_API_KEY"
    if status == 404:
        return (
            f"the server has no model {model!r} or no /chat/completions route: check --llm-model "
            "and OPENAI_BASE_URL (it usually ends in /v1)"
        )
    if status in (400, 422):
        return (
            "the server rejected the request: check that the model supports tool calling and "
            "that its context window fits the prompt"
        )
    return "" if status is None or status in (408, 409, 429) else "check the server's logs"


def _cap_text(text: str, limit: int = MAX_REPLY_CHARS) -> str:
    """``text`` cut to ``limit`` characters, with a note saying how much was dropped."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [reply cut: {len(text) - limit} more characters]"


def _capped(value: Any) -> Any:
    """A copy of a reply with every long string cut (what is stored and printed stays bounded)."""
    if isinstance(value, str):
        return _cap_text(value)
    if isinstance(value, dict):
        return {str(k)[:200]: _capped(v) for k, v in list(value.items())[:200]}
    if isinstance(value, list):
        return [_capped(v) for v in value[:200]]
    return value


def _token_counts(usage: Any) -> tuple[int, int] | None:
    """The server's (prompt, completion) token counts, or ``None`` when they are missing or not
    believable (negative, fractional, non-numeric or above ``MAX_REPORTED_TOKENS``)."""
    reported = [getattr(usage, key, None) for key in ("prompt_tokens", "completion_tokens")]
    if reported == [None, None]:
        return None
    counts: list[int] = []
    for value in (0 if value is None else value for value in reported):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        if not 0 <= value <= MAX_REPORTED_TOKENS or value != int(value):
            return None
        counts.append(int(value))
    return counts[0], counts[1]


def _tool_calls(message: ChatCompletionMessage) -> list[ToolCall]:
    """The calls of a reply; a malformed one (not an object with a function) becomes a call
    without a name, which the planner rejects, never a crash."""
    raw_calls = message.tool_calls or []
    calls = []
    for i, call in enumerate(raw_calls if isinstance(raw_calls, list) else [raw_calls]):
        function = getattr(call, "function", None)
        name, arguments = "", json.dumps(call, default=str)
        if isinstance(function, Function):
            name, arguments = str(function.name or ""), function.arguments
            if not isinstance(arguments, str):
                arguments = "" if arguments is None else json.dumps(arguments)
        calls.append(
            ToolCall(
                id=str(getattr(call, "id", None) or f"call_{i}")[:200],
                name=name[:200],
                arguments=_cap_text(arguments),
            )
        )
    return calls


class LLMClient:
    """Chat completions through the SDK, with a deadline per attempt, a record of every attempt
    and a token budget (see the module docstring)."""

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        max_tokens_budget: int | None = None,
        recorder: Recorder | None = None,
        retry_timeouts: bool = True,
    ) -> None:
        """``max_retries`` retries may follow the first attempt; ``retry_timeouts=False`` makes a
        timeout final (the server may still be working on it)."""
        if not model or not model.strip():
            raise LLMConfigError(
                "no LLM model given: pass --llm-model NAME (the model name your server serves)"
            )
        if max_retries < 0:
            raise LLMConfigError(f"max_retries must be >= 0, got {max_retries}")
        if max_tokens_budget is not None and max_tokens_budget <= 0:
            raise LLMConfigError(f"max_tokens_budget must be positive, got {max_tokens_budget}")
        self.model = model
        self.endpoint = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip(
            "/"
        )
        key = api_key or os.environ.get("OPENAI_API_KEY") or None
        self.placeholder_key = key is None
        if key is None:
            host = urlsplit(self.endpoint).hostname or ""
            if host == "api.openai.com" or host.endswith(".openai.com"):
                raise LLMConfigError(
                    f"no API key for {self.endpoint}: set OPENAI_API_KEY, or point OPENAI_BASE_URL "
                    "at a local OpenAI-compatible server (vLLM, Ollama, llama.cpp server)"
                )
            key = PLACEHOLDER_API_KEY
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.max_tokens_budget = max_tokens_budget
        self.recorder = recorder
        self._transport = _AttemptTransport(self._attempted, retry_timeouts)
        self.openai = openai.OpenAI(
            base_url=self.endpoint,
            api_key=key,
            timeout=timeout_s,
            max_retries=max_retries,
            http_client=openai.DefaultHttpxClient(transport=self._transport),
        )
        """The SDK client; context probing (``rankscope.agent.llm_context``) uses it too."""
        self._call: partial[LLMCall] | None = None
        self._attempts: list[_Attempt] = []
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.calls = 0
        self.failed_calls = 0

    @property
    def retry_timeouts(self) -> bool:
        return self._transport.retry_timeouts

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def tokens_left(self) -> int | None:
        """Tokens left in the budget, or ``None`` without a budget."""
        if self.max_tokens_budget is None:
            return None
        return max(0, self.max_tokens_budget - self.total_tokens)

    def usage(self) -> dict[str, int | None]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "calls": self.calls,
            "failed_calls": self.failed_calls,
            "budget": self.max_tokens_budget,
        }

    def close(self) -> None:
        self.openai.close()

    def check_budget(self) -> None:
        """Raise ``LLMBudgetExceeded`` if the token budget is spent."""
        if self.max_tokens_budget is not None and self.total_tokens >= self.max_tokens_budget:
            raise LLMBudgetExceeded(
                f"the LLM token budget is spent: {self.total_tokens} of {self.max_tokens_budget} "
                f"tokens used in {self.calls} calls to {self.model!r}; raise the token budget "
                "and resume (`rankscope resume ID`) to go on",
                budget=self.max_tokens_budget,
                used=self.total_tokens,
            )

    def chat(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        tools: Sequence[dict[str, Any]] | None = None,
        purpose: str = "chat",
        response_format: dict[str, Any] | None = None,
        temperature: float | None = None,
        seed: int | None = None,
    ) -> ChatReply:
        """Send one chat completion request (the SDK retries transient failures); ``purpose``
        labels the recorded attempts; ``response_format`` (structured output), ``temperature``
        and ``seed`` are sent when given. Raises ``LLMBudgetExceeded`` (before sending) and
        ``LLMUnavailableError``."""
        self.check_budget()
        request: dict[str, Any] = {"model": self.model, "messages": copy.deepcopy(list(messages))}
        if tools:
            request["tools"] = list(tools)
        if response_format is not None:
            request["response_format"] = response_format
        if temperature is not None:
            request["temperature"] = temperature
        if seed is not None:
            request["seed"] = seed
        self._attempts = []
        self._call = partial(
            LLMCall,
            purpose=purpose,
            endpoint=self.endpoint,
            model=self.model,
            messages=request["messages"],
            tool_names=[t.get("function", {}).get("name", "") for t in tools or []],
        )
        try:
            completion: object = self.openai.chat.completions.create(**request)
        except openai.OpenAIError as err:
            last = self._attempts[-1] if self._attempts else None
            status = getattr(err, "status_code", None)
            hint = _status_hint(status, self.model, last is not None and last.out_of_quota)
            if isinstance(err, openai.APITimeoutError) and not self.retry_timeouts:
                hint = (
                    "not re-sent, since the server may still be working on it; a local model "
                    f"may need minutes for a long prompt: raise --llm-timeout (or {TIMEOUT_ENV}), "
                    f"or set {RETRY_TIMEOUTS_ENV}=1 to re-send timed-out requests"
                )
            reason = last.error if last and last.error else f"{type(err).__name__}: {err}"
            raise self._unavailable(reason, status, hint) from err
        except json.JSONDecodeError as err:  # a JSON content type, a body that is not JSON
            completion = err.doc
        finally:
            call, self._call = self._call, None
        reply = self._read(completion, request)
        attempt = self._attempts[-1]
        if isinstance(reply, str):
            self.failed_calls += 1
            body = None if isinstance(completion, str) else _capped(_dump(completion))
            self._record(call, attempt, body, error=reply)
            raise self._unavailable(reply, attempt.status_code, URL_HINT)
        self.calls += 1
        self.prompt_tokens += reply.prompt_tokens
        self.completion_tokens += reply.completion_tokens
        self._record(call, attempt, reply.raw, reply=reply)
        return reply

    def _attempted(self, attempt: _Attempt) -> None:
        """The transport's report of one attempt: a failed attempt of a chat call is recorded
        here, an answered one once its reply is read (context probes are not recorded)."""
        if self._call is None:
            return
        self._attempts.append(attempt)
        if attempt.error is not None:
            self.failed_calls += 1
            self._record(self._call, attempt, attempt.response, error=attempt.error)

    def _record(
        self,
        call: partial[LLMCall],
        attempt: _Attempt,
        response: dict[str, Any] | None,
        *,
        error: str | None = None,
        reply: ChatReply | None = None,
    ) -> None:
        if self.recorder is not None:
            self.recorder(
                call(
                    response=response,
                    prompt_tokens=reply.prompt_tokens if reply else 0,
                    completion_tokens=reply.completion_tokens if reply else 0,
                    tokens_estimated=reply.tokens_estimated if reply else False,
                    latency_s=attempt.latency_s,
                    error=error,
                    status_code=attempt.status_code,
                    attempt=len(self._attempts),
                    started_at=attempt.started_at,
                )
            )

    def _read(self, completion: object, request: dict[str, Any]) -> ChatReply | str:
        """The reply's first choice, or why the answer is no chat completion."""
        if isinstance(completion, str):
            return f"the reply is not JSON (starts with {completion[:80]!r})"
        choices = getattr(completion, "choices", None)
        if not isinstance(completion, ChatCompletion) or not isinstance(choices, list):
            return "the reply is not a chat completion (no 'choices' list)"
        choice = choices[0] if choices else None
        message = getattr(choice, "message", None)
        if not isinstance(message, ChatCompletionMessage):
            message = ChatCompletionMessage.construct(
                content=None if message is None else json.dumps(message, default=str)
            )
        content = message.content
        if content is not None:
            content = _cap_text(content if isinstance(content, str) else json.dumps(content))
        calls = _tool_calls(message)
        counted = _token_counts(completion.usage)
        prompt = len(json.dumps(request["messages"])) + len(json.dumps(request.get("tools", [])))
        written = len(content or "") + sum(len(c.name) + len(c.arguments) for c in calls)
        estimate = (math.ceil(prompt / CHARS_PER_TOKEN), math.ceil(written / CHARS_PER_TOKEN))
        return ChatReply(
            content=content,
            tool_calls=calls,
            finish_reason=getattr(choice, "finish_reason", None),
            prompt_tokens=(counted or estimate)[0],
            completion_tokens=(counted or estimate)[1],
            latency_s=self._attempts[-1].latency_s,
            raw=_capped(_dump(completion)),
            tokens_estimated=counted is None,
        )

    def _unavailable(self, reason: str, status_code: int | None, hint: str) -> LLMUnavailableError:
        """The error for a request that failed: what happened, after how many attempts, and
        what to do."""
        attempts = max(1, len(self._attempts))
        tried = f"{attempts} attempt{'s' if attempts != 1 else ''}"
        if self.max_retries and attempts == 1 + self.max_retries:
            tried += f" (retries exhausted: max_retries={self.max_retries})"
        key_note = (
            f"; no API key was set, so the placeholder key {PLACEHOLDER_API_KEY!r} was sent"
            if self.placeholder_key and status_code in (401, 403)
            else ""
        )
        message = (
            f"LLM endpoint {self.endpoint} (model {self.model!r}) is unavailable: {reason}, after "
            f"{tried}{f' ({hint})' if hint else ''}{key_note}. Check OPENAI_BASE_URL, "
            "OPENAI_API_KEY and that the server is running and serves this model, then continue "
            "the investigation with `rankscope resume ID`."
        )
        return LLMUnavailableError(
            message,
            endpoint=self.endpoint,
            model=self.model,
            attempts=attempts,
            reason=reason,
            status_code=status_code,
        )


def _dump(value: Any) -> Any:
    """A reply as the JSON the server sent (the SDK's typed objects keep every field as given)."""
    if isinstance(value, openai.BaseModel):
        return value.model_dump(mode="json", exclude_unset=True, warnings=False)
    return {"body": value} if not isinstance(value, dict) else value

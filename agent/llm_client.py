"""A thin, robust client for any OpenAI-compatible Chat Completions endpoint.

``LLMClient`` wraps ``openai.OpenAI`` (which runs on ``httpx2``) with the SDK's own retries turned
off (``max_retries=0``) and does its own bounded retries instead, so that every attempt is visible:

* retried: HTTP 429 (honouring ``Retry-After`` / ``retry-after-ms``), 408, 409, 5xx, timeouts and
  connection errors, with exponential backoff ``backoff_s * 2**k`` (capped at ``max_backoff_s``)
  plus jitter from a seeded ``random.Random``;
* not retried: other HTTP errors (401, 403, 404, 400 …) and replies that are not a chat
  completion; they fail at once;
* timeouts are retried only when ``retry_timeouts`` is set (by default: for hosted endpoints, never
  for local ones, whose single worker is still busy with the timed-out request, so a re-sent prompt
  would only queue behind it).

Timeout and retries (see ``transport_defaults``): ``--llm-timeout`` / ``RANKSCOPE_LLM_TIMEOUT``
(seconds; default 60 for hosted endpoints, 600 for local ones) is a deadline for the whole request
(sending, waiting and reading the reply), so a server that drips bytes is cut at it too; ``--llm-retries`` /
``RANKSCOPE_LLM_RETRIES`` (default 3 hosted, 1 local) and ``RANKSCOPE_LLM_RETRY_TIMEOUTS``
(``1``/``0``).

When the endpoint cannot be used, ``LLMUnavailableError`` says which endpoint and model, what
happened, and what to do (check ``OPENAI_BASE_URL``, ``OPENAI_API_KEY`` and the server, then
``rankscope resume ID``). Every HTTP attempt, failed ones included, is passed to the ``recorder``
callback as an ``LLMCall`` (model, messages, raw response dict, tokens, latency, error).

Configuration: the model comes from ``--llm-model``; the endpoint from ``base_url`` or the
``OPENAI_BASE_URL`` environment variable (default ``https://api.openai.com/v1``); the key from
``api_key`` or ``OPENAI_API_KEY``. Any OpenAI-compatible server works: OpenAI, vLLM, Ollama
(``http://localhost:11434/v1``), llama.cpp server, LM Studio. Local servers usually need no key:
when none is set and the endpoint is not ``api.openai.com``, the placeholder key ``"not-needed"``
is sent (the SDK refuses to run without one); ``api.openai.com`` without a key is a configuration
error.

Token accounting reads ``usage`` from each reply (estimated from text length, and marked so, when
a server sends none or counts that cannot be true: negative, fractional or absurdly large). Reply
text is cut at ``MAX_REPLY_CHARS`` before it is stored or printed. With ``max_tokens_budget`` set, a call is refused with ``LLMBudgetExceeded``
before it is sent once the budget is spent; the last call may overshoot it by one reply.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import openai

if TYPE_CHECKING:
    import httpx2

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
RETRYABLE_STATUS = frozenset({408, 409, 429})
CHARS_PER_TOKEN = 4
"""Rough size of a token, used only when a server reports no ``usage``."""
MAX_REPORTED_TOKENS = 10_000_000
"""A server's token count above this (or below zero, or not a whole number) is ignored and the
count estimated instead: no real request or reply is that long."""
MAX_REPLY_CHARS = 20_000
"""Longest reply text (content, or one tool call's arguments) kept, stored or printed; the rest is
cut with a note."""


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
    """One function call in a reply; ``arguments`` is the raw JSON text the model wrote."""

    id: str
    name: str
    arguments: str


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


@dataclass
class _Failure:
    reason: str
    retryable: bool
    status_code: int | None = None
    retry_after_s: float | None = None
    response: dict[str, Any] | None = None
    hint: str = ""


def _is_openai_host(base_url: str) -> bool:
    host = urlsplit(base_url).hostname or ""
    return host == "api.openai.com" or host.endswith(".openai.com")


def _retry_after(headers: Any) -> float | None:
    """Seconds a server asked us to wait (``retry-after-ms``, ``retry-after`` seconds or date)."""
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            try:
                when = parsedate_to_datetime(value)
            except (TypeError, ValueError):
                continue
            seconds = (when - datetime.now(UTC)).total_seconds()
        if math.isfinite(seconds):
            return max(0.0, seconds)
    return None


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
    endpoint = base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
    local = is_local_endpoint(endpoint)
    if timeout_s is None:
        timeout_s = _env_number(TIMEOUT_ENV, float)
    if max_retries is None:
        env_retries = _env_number(RETRIES_ENV, int)
        max_retries = None if env_retries is None else int(env_retries)
    if retry_timeouts is None:
        raw = os.environ.get(RETRY_TIMEOUTS_ENV, "").strip().lower()
        retry_timeouts = raw in ("1", "true", "yes") if raw else not local
    timeout = float(
        timeout_s if timeout_s is not None else (LOCAL_TIMEOUT_S if local else HOSTED_TIMEOUT_S)
    )
    retries = int(
        max_retries if max_retries is not None else (LOCAL_RETRIES if local else HOSTED_RETRIES)
    )
    if timeout <= 0:
        raise LLMConfigError(f"the LLM request timeout must be positive, got {timeout:g} s")
    if retries < 0:
        raise LLMConfigError(f"the LLM retries must be >= 0, got {retries}")
    return TransportSettings(timeout, retries, retry_timeouts)


def _status_hint(status: int, model: str) -> str:
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
    return "check the server's logs"


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
    if not isinstance(usage, dict) or not usage:
        return None
    counts = []
    for key in ("prompt_tokens", "completion_tokens"):
        value = usage.get(key, 0)
        if value is None:
            value = 0
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        if value != value or value < 0 or value > MAX_REPORTED_TOKENS or value != int(value):
            return None
        counts.append(int(value))
    return counts[0], counts[1]


class LLMClient:
    """Chat Completions with bounded retries, token accounting, a token budget and a recorder."""

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        jitter: float = 0.25,
        seed: int = 0,
        max_tokens_budget: int | None = None,
        recorder: Recorder | None = None,
        http_client: httpx2.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
        retry_timeouts: bool = True,
    ) -> None:
        """``max_retries`` retries follow the first attempt; ``sleep`` waits between attempts;
        ``retry_timeouts=False`` makes a timeout final (the server may still be working on it)."""
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
            if _is_openai_host(self.endpoint):
                raise LLMConfigError(
                    f"no API key for {self.endpoint}: set OPENAI_API_KEY, or point OPENAI_BASE_URL "
                    "at a local OpenAI-compatible server (vLLM, Ollama, llama.cpp server)"
                )
            key = PLACEHOLDER_API_KEY
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.retry_timeouts = retry_timeouts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.jitter = jitter
        self.max_tokens_budget = max_tokens_budget
        self.recorder = recorder
        self._sleep = sleep
        self._rng = random.Random(seed)
        self._client = openai.OpenAI(
            base_url=self.endpoint,
            api_key=key,
            timeout=timeout_s,
            max_retries=0,
            http_client=http_client,
        )
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.calls = 0
        self.failed_calls = 0

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
        self._client.close()

    def __enter__(self) -> LLMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
        tool_choice: str | dict[str, Any] | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        purpose: str = "chat",
    ) -> ChatReply:
        """Send one chat completion request, retrying transient failures.

        Optional request fields are sent only when given (reasoning models reject
        ``temperature`` and ``max_tokens``). ``purpose`` labels the recorded calls.

        Raises ``LLMBudgetExceeded`` (before sending) and ``LLMUnavailableError``.
        """
        self.check_budget()
        sent = copy.deepcopy(list(messages))
        request: dict[str, Any] = {"model": self.model, "messages": sent}
        if tools:
            request["tools"] = list(tools)
        if tool_choice is not None:
            request["tool_choice"] = tool_choice
        if temperature is not None:
            request["temperature"] = temperature
        if max_tokens is not None:
            request["max_tokens"] = max_tokens
        tool_names = [t.get("function", {}).get("name", "") for t in tools or []]
        record = partial(
            LLMCall,
            purpose=purpose,
            endpoint=self.endpoint,
            model=self.model,
            messages=sent,
            tool_names=tool_names,
        )
        attempts = 1 + self.max_retries
        attempt = 0
        while True:
            attempt += 1
            started_at = datetime.now(UTC)
            start = time.perf_counter()
            outcome = self._send(request)
            latency = time.perf_counter() - start
            if isinstance(outcome, _Failure):
                self.failed_calls += 1
                self._record(
                    record(
                        response=outcome.response,
                        prompt_tokens=0,
                        completion_tokens=0,
                        tokens_estimated=False,
                        latency_s=latency,
                        error=outcome.reason,
                        status_code=outcome.status_code,
                        attempt=attempt,
                        started_at=started_at,
                    )
                )
                if not outcome.retryable or attempt >= attempts:
                    raise self._unavailable(outcome, attempt)
                self._sleep(self._delay(attempt - 1, outcome.retry_after_s))
                continue
            reply = self._reply(outcome, request, latency)
            self.calls += 1
            self.prompt_tokens += reply.prompt_tokens
            self.completion_tokens += reply.completion_tokens
            self._record(
                record(
                    response=outcome,
                    prompt_tokens=reply.prompt_tokens,
                    completion_tokens=reply.completion_tokens,
                    tokens_estimated=reply.tokens_estimated,
                    latency_s=latency,
                    error=None,
                    status_code=200,
                    attempt=attempt,
                    started_at=started_at,
                )
            )
            return reply

    def _within_deadline(self, request: dict[str, Any]) -> tuple[int, str]:
        """Send ``request`` and read the whole reply, giving up after ``timeout_s`` in total.

        The SDK's timeout applies to each read, so a server that drips a byte at a time would hold
        a request forever; here the request runs on a daemon thread and the caller stops waiting at
        the deadline (the thread ends when the server does or the connection drops).
        Returns the status code and the body text; raises what the SDK raised, or
        ``openai.APITimeoutError`` at the deadline.
        """
        outcome: dict[str, Any] = {}

        def attempt() -> None:
            try:
                response = self._client.chat.completions.with_raw_response.create(**request)
                outcome["reply"] = (response.http_response.status_code, response.http_response.text)
            except BaseException as err:  # handed to the caller's thread
                outcome["error"] = err

        worker = threading.Thread(target=attempt, name="rankscope-llm-request", daemon=True)
        worker.start()
        worker.join(self.timeout_s)
        if worker.is_alive():
            import httpx2

            raise openai.APITimeoutError(request=httpx2.Request("POST", self.endpoint))
        if "error" in outcome:
            raise outcome["error"]
        status, text = outcome["reply"]
        return int(status), str(text)

    def _send(self, request: dict[str, Any]) -> dict[str, Any] | _Failure:
        """One HTTP attempt: the raw JSON reply, or what went wrong."""
        try:
            status_code, text = self._within_deadline(request)
        except openai.APITimeoutError:
            if self.retry_timeouts:
                return _Failure(f"the request timed out after {self.timeout_s:g} s", True)
            return _Failure(
                f"the request timed out after {self.timeout_s:g} s",
                False,
                hint="not re-sent, since the server may still be working on it; a local model "
                f"may need minutes for a long prompt: raise --llm-timeout (or {TIMEOUT_ENV}), "
                f"or set {RETRY_TIMEOUTS_ENV}=1 to re-send timed-out requests",
            )
        except openai.APIConnectionError as err:
            cause = err.__cause__ or err
            return _Failure(f"could not connect ({type(cause).__name__}: {cause})", True)
        except openai.APIStatusError as err:
            status = err.status_code
            body = err.body if isinstance(err.body, dict) else None
            detail = err.message
            if isinstance(body, dict) and isinstance(body.get("message"), str):
                detail = body["message"]
            out_of_quota = isinstance(body, dict) and body.get("code") == "insufficient_quota"
            retryable = (status in RETRYABLE_STATUS or status >= 500) and not out_of_quota
            hint = "" if retryable else _status_hint(status, self.model)
            if out_of_quota:
                hint = "the account behind OPENAI_API_KEY has no quota left; retrying cannot help"
            return _Failure(
                f"HTTP {status}: {detail}",
                retryable,
                status_code=status,
                retry_after_s=_retry_after(err.response.headers),
                response={"error": body} if body is not None else None,
                hint=hint,
            )
        except openai.OpenAIError as err:
            return _Failure(f"{type(err).__name__}: {err}", False)
        try:
            raw = json.loads(text)
        except json.JSONDecodeError:
            return _Failure(
                f"the reply is not JSON (starts with {text[:80]!r})",
                False,
                status_code=status_code,
                hint="check OPENAI_BASE_URL: it should be the API root, usually ending in /v1",
            )
        if not isinstance(raw, dict) or not isinstance(raw.get("choices"), list):
            return _Failure(
                "the reply is not a chat completion (no 'choices' list)",
                False,
                status_code=status_code,
                response=_capped(raw if isinstance(raw, dict) else {"body": raw}),
                hint="check OPENAI_BASE_URL: it should be the API root, usually ending in /v1",
            )
        return _capped(raw)

    def _reply(self, raw: dict[str, Any], request: dict[str, Any], latency: float) -> ChatReply:
        """The reply's first choice; malformed parts (a ``tool_calls`` that is not a list of
        objects, a message that is not an object) become calls the planner rejects, never a crash."""
        choices = raw["choices"]
        choice = choices[0] if choices and isinstance(choices[0], dict) else {}
        message = choice.get("message")
        if not isinstance(message, dict):
            message = {"content": None if message is None else json.dumps(message)}
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            content = json.dumps(content)
        raw_calls = message.get("tool_calls") or []
        if not isinstance(raw_calls, list):
            raw_calls = [raw_calls]
        calls = []
        for i, call in enumerate(raw_calls):
            if not isinstance(call, dict):
                call = {"function": {"name": "", "arguments": json.dumps(call, default=str)}}
            function = call.get("function")
            if not isinstance(function, dict):
                function = {"name": "", "arguments": json.dumps(function, default=str)}
            arguments = function.get("arguments")
            if arguments is None:
                arguments = ""
            elif not isinstance(arguments, str):
                arguments = json.dumps(arguments)
            calls.append(
                ToolCall(
                    id=str(call.get("id") or f"call_{i}")[:200],
                    name=str(function.get("name") or "")[:200],
                    arguments=_cap_text(arguments),
                )
            )
        content = None if content is None else _cap_text(content)
        usage = raw.get("usage")
        counted = _token_counts(usage)
        if counted is not None:
            prompt_tokens, completion_tokens = counted
        else:
            prompt_chars = len(json.dumps(request["messages"])) + len(
                json.dumps(request.get("tools", []))
            )
            reply_chars = len(content or "") + sum(len(c.name) + len(c.arguments) for c in calls)
            prompt_tokens = math.ceil(prompt_chars / CHARS_PER_TOKEN)
            completion_tokens = math.ceil(reply_chars / CHARS_PER_TOKEN)
        return ChatReply(
            content=content,
            tool_calls=calls,
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_s=latency,
            raw=raw,
            tokens_estimated=counted is None,
        )

    def _delay(self, retry_index: int, retry_after_s: float | None) -> float:
        """Exponential backoff with jitter; a server's ``Retry-After`` wins when longer."""
        delay = min(self.max_backoff_s, self.backoff_s * 2**retry_index)
        delay += self._rng.uniform(0.0, self.jitter * delay)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.max_backoff_s))
        return delay

    def _record(self, call: LLMCall) -> None:
        if self.recorder is not None:
            self.recorder(call)

    def _unavailable(self, failure: _Failure, attempts: int) -> LLMUnavailableError:
        tried = f"{attempts} attempt{'s' if attempts != 1 else ''}"
        if failure.retryable:
            tried += f" (retries exhausted: max_retries={self.max_retries})"
        hint = f" ({failure.hint})" if failure.hint else ""
        key_note = (
            f"; no API key was set, so the placeholder key {PLACEHOLDER_API_KEY!r} was sent"
            if self.placeholder_key and failure.status_code in (401, 403)
            else ""
        )
        message = (
            f"LLM endpoint {self.endpoint} (model {self.model!r}) is unavailable: "
            f"{failure.reason}, after {tried}{hint}{key_note}. Check OPENAI_BASE_URL, "
            "OPENAI_API_KEY and that the server is running and serves this model, then continue "
            "the investigation with `rankscope resume ID`."
        )
        return LLMUnavailableError(
            message,
            endpoint=self.endpoint,
            model=self.model,
            attempts=attempts,
            reason=failure.reason,
            status_code=failure.status_code,
        )

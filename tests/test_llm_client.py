"""The LLM client over real HTTP: the SDK's retries, the whole-request deadline, errors that say
what to do, the token budget and the record of every attempt (``rankscope.agent.llm_client``)."""

from __future__ import annotations

import json
import time

import pytest

from rankscope.agent.llm_client import (
    PLACEHOLDER_API_KEY,
    RETRIES_ENV,
    TIMEOUT_ENV,
    LLMBudgetExceeded,
    LLMCall,
    LLMClient,
    LLMConfigError,
    LLMUnavailableError,
    transport_defaults,
)
from rankscope.agent.planners.base import Proposal
from tests.llm_planner_support import (
    MODEL,
    TOOL,
    free_port,
    good_call,
    make_client,
    make_ledger,
    make_planner,
    messages_of,
    recorded_calls,
    registered_selftest_tool,
    scripted_server,
)
from tests.llm_server import (
    Reply,
    ScriptedLLMServer,
    error_reply,
    slow_reply,
    text_reply,
    tool_call_reply,
)

selftest_tool = pytest.fixture(scope="module", autouse=True)(registered_selftest_tool)
server = pytest.fixture(scripted_server)
calls = pytest.fixture(recorded_calls)

HI = [{"role": "user", "content": "hi"}]


# --- retries --------------------------------------------------------------------------------------


def test_rate_limit_then_success_is_retried(
    server: ScriptedLLMServer, calls: list[LLMCall]
) -> None:
    server.push(
        error_reply(429, "Rate limit reached", retry_after="0.01"),
        tool_call_reply(TOOL, good_call()),
    )
    start = time.perf_counter()
    result = make_planner(server, calls).propose(make_ledger())
    assert isinstance(result, Proposal)
    assert time.perf_counter() - start < 2.0
    assert len(server.bodies) == 2 and server.bodies[0] == server.bodies[1]
    assert [c.error for c in calls] == ["HTTP 429: Rate limit reached", None]
    assert [c.attempt for c in calls] == [1, 2]
    assert calls[0].status_code == 429 and calls[0].total_tokens == 0


def test_transient_errors_are_retried_waiting_as_long_as_the_server_asks(
    server: ScriptedLLMServer, calls: list[LLMCall]
) -> None:
    server.push(
        error_reply(500, retry_after="0.01"),
        error_reply(503, retry_after="0.01"),
        error_reply(429, retry_after="0.3"),
        text_reply("ok"),
    )
    client = make_client(server.base_url, max_retries=3, recorder=calls.append)
    start = time.perf_counter()
    assert client.chat(HI).content == "ok"
    assert time.perf_counter() - start >= 0.3
    assert [(c.attempt, c.status_code) for c in calls] == [(1, 500), (2, 503), (3, 429), (4, 200)]


def test_a_server_asking_to_wait_more_than_two_minutes_is_not_retried(
    server: ScriptedLLMServer,
) -> None:
    server.push(error_reply(429, "Slow down", retry_after="3600"), text_reply("unused"))
    with pytest.raises(LLMUnavailableError, match="HTTP 429: Slow down, after 1 attempt") as err:
        make_client(server.base_url).chat(HI)
    assert err.value.attempts == 1 and server.pending == 1


def test_persistent_rate_limit_raises_a_clear_unavailable_error(
    server: ScriptedLLMServer, calls: list[LLMCall]
) -> None:
    server.push(*[error_reply(429, "Rate limit reached", retry_after="0.01")] * 3)
    with pytest.raises(LLMUnavailableError) as err:
        make_planner(server, calls).propose(make_ledger())

    message = str(err.value)
    for part in (
        server.base_url,
        repr(MODEL),
        "HTTP 429: Rate limit reached",
        "after 3 attempts (retries exhausted: max_retries=2)",
        "OPENAI_BASE_URL",
        "OPENAI_API_KEY",
        "`rankscope resume ID`",
    ):
        assert part in message
    assert "test-key" not in message
    assert (err.value.attempts, err.value.status_code) == (3, 429)
    assert len(server.bodies) == 3
    assert [c.error for c in calls] == ["HTTP 429: Rate limit reached"] * 3


def test_timeouts_are_retried_then_raise(server: ScriptedLLMServer, calls: list[LLMCall]) -> None:
    server.push(slow_reply(5.0), slow_reply(5.0))
    planner = make_planner(server, calls, timeout_s=0.2, max_retries=1, retry_timeouts=True)
    start = time.perf_counter()
    with pytest.raises(LLMUnavailableError, match=r"timed out after 0\.2 s, after 2 attempts"):
        planner.propose(make_ledger())
    assert time.perf_counter() - start < 3.0
    assert [c.error for c in calls] == ["the request timed out after 0.2 s"] * 2
    assert all(c.latency_s >= 0.15 for c in calls)


def test_timeout_then_success(server: ScriptedLLMServer, calls: list[LLMCall]) -> None:
    server.push(slow_reply(5.0), tool_call_reply(TOOL, good_call()))
    planner = make_planner(server, calls, timeout_s=0.2, retry_timeouts=True)
    assert isinstance(planner.propose(make_ledger()), Proposal)
    assert [c.error is None for c in calls] == [False, True]


def test_a_local_server_is_not_sent_the_request_again_after_a_timeout(
    server: ScriptedLLMServer, calls: list[LLMCall], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RANKSCOPE_LLM_RETRY_TIMEOUTS", raising=False)
    server.push(slow_reply(5.0), tool_call_reply(TOOL, good_call()))
    planner = make_planner(server, calls, timeout_s=0.2, max_retries=3)
    assert planner.client.retry_timeouts is False
    with pytest.raises(LLMUnavailableError) as err:
        planner.propose(make_ledger())
    assert len(server.bodies) == 1 and err.value.attempts == 1
    message = str(err.value)
    assert "timed out after 0.2 s" in message and "not re-sent" in message
    assert "--llm-timeout" in message and "rankscope resume ID" in message


def test_transport_defaults_local_hosted_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (TIMEOUT_ENV, RETRIES_ENV, "RANKSCOPE_LLM_RETRY_TIMEOUTS"):
        monkeypatch.delenv(name, raising=False)
    local = transport_defaults("http://localhost:11434/v1")
    assert (local.timeout_s, local.max_retries, local.retry_timeouts) == (600.0, 1, False)
    hosted = transport_defaults("https://api.openai.com/v1")
    assert (hosted.timeout_s, hosted.max_retries, hosted.retry_timeouts) == (60.0, 3, True)
    monkeypatch.setenv(TIMEOUT_ENV, "900")
    monkeypatch.setenv(RETRIES_ENV, "0")
    monkeypatch.setenv("RANKSCOPE_LLM_RETRY_TIMEOUTS", "1")
    env = transport_defaults("http://127.0.0.1:8080/v1")
    assert (env.timeout_s, env.max_retries, env.retry_timeouts) == (900.0, 0, True)
    given = transport_defaults("http://127.0.0.1:8080/v1", 30.0, 2, False)
    assert (given.timeout_s, given.max_retries, given.retry_timeouts) == (30.0, 2, False)
    monkeypatch.setenv(TIMEOUT_ENV, "soon")
    with pytest.raises(LLMConfigError, match="RANKSCOPE_LLM_TIMEOUT='soon'"):
        transport_defaults(None)
    with pytest.raises(LLMConfigError, match="must be positive"):
        transport_defaults(None, 0.0, 1)


# --- failures that say what to do -----------------------------------------------------------------


def test_connection_refused_raises_unavailable(calls: list[LLMCall]) -> None:
    client = make_client(f"http://127.0.0.1:{free_port()}/v1", max_retries=1, recorder=calls.append)
    with pytest.raises(LLMUnavailableError, match="could not connect") as err:
        client.chat(HI)
    assert err.value.attempts == 2 and len(calls) == 2
    assert all(c.error and "could not connect" in c.error for c in calls)


def test_authentication_error_is_not_retried(server: ScriptedLLMServer) -> None:
    server.push(error_reply(401, "Incorrect API key provided"), text_reply("unused"))
    with pytest.raises(LLMUnavailableError) as err:
        make_client(server.base_url).chat(HI)
    assert err.value.attempts == 1
    assert "HTTP 401: Incorrect API key provided, after 1 attempt" in str(err.value)
    assert "check OPENAI_API_KEY" in str(err.value)
    assert server.pending == 1


def test_exhausted_quota_is_not_retried(server: ScriptedLLMServer) -> None:
    server.push(error_reply(429, "You exceeded your quota", code="insufficient_quota"))
    with pytest.raises(LLMUnavailableError, match="no quota left") as err:
        make_client(server.base_url).chat(HI)
    assert err.value.attempts == 1


def test_reply_that_is_not_json_fails_with_a_base_url_hint(server: ScriptedLLMServer) -> None:
    server.push(Reply(body="<html>LM Studio</html>"))
    with pytest.raises(LLMUnavailableError, match="not JSON.*usually ending in /v1"):
        make_client(server.base_url).chat(HI)


def test_reply_that_is_no_chat_completion_fails_with_a_base_url_hint(
    server: ScriptedLLMServer, calls: list[LLMCall]
) -> None:
    server.push(Reply(body={"object": "list", "data": []}))
    with pytest.raises(LLMUnavailableError, match="not a chat completion.*usually ending in /v1"):
        make_client(server.base_url, recorder=calls.append).chat(HI)
    (call,) = calls
    assert call.status_code == 200 and call.response == {"object": "list", "data": []}
    assert call.error == "the reply is not a chat completion (no 'choices' list)"


# --- tokens and the record of every attempt --------------------------------------------------------


def test_token_budget_refuses_the_next_call(
    server: ScriptedLLMServer, calls: list[LLMCall]
) -> None:
    server.push(text_reply("thinking", usage=(120, 40)), tool_call_reply(TOOL, good_call()))
    planner = make_planner(server, calls, max_tokens_budget=150)
    with pytest.raises(LLMBudgetExceeded, match="160 of 150 tokens") as err:
        planner.propose(make_ledger())
    assert (err.value.budget, err.value.used) == (150, 160)
    assert len(server.bodies) == 1 and server.pending == 1
    usage = planner.client.usage()
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["calls"]) == (120, 40, 1)
    assert planner.client.tokens_left == 0


def test_tokens_are_estimated_when_the_server_sends_no_usage(server: ScriptedLLMServer) -> None:
    server.push(text_reply("a reply of some length", usage=None))
    client = make_client(server.base_url)
    reply = client.chat([{"role": "user", "content": "x" * 400}])
    assert reply.tokens_estimated
    assert reply.prompt_tokens >= 100 and reply.completion_tokens >= 5
    assert client.total_tokens == reply.prompt_tokens + reply.completion_tokens


def test_recorder_receives_every_call_including_failed_ones(
    server: ScriptedLLMServer, calls: list[LLMCall]
) -> None:
    success = tool_call_reply(TOOL, good_call(), usage=(321, 54))
    server.push(
        error_reply(500, "upstream crashed", retry_after="0.01"), text_reply("hmm"), success
    )
    assert isinstance(make_planner(server, calls).propose(make_ledger()), Proposal)

    assert [(c.purpose, c.attempt, c.error) for c in calls] == [
        ("propose", 1, "HTTP 500: upstream crashed"),
        ("propose", 2, None),
        ("propose", 1, None),
    ]
    assert [c.messages for c in calls] == [messages_of(b) for b in server.bodies]
    assert calls[0].response == {
        "error": {
            "message": "upstream crashed",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
    assert calls[2].response == success.body
    assert (calls[2].prompt_tokens, calls[2].completion_tokens) == (321, 54)
    assert all(c.model == MODEL and c.endpoint == server.base_url for c in calls)
    assert all(c.latency_s > 0 for c in calls)
    assert calls[2].tool_names == ["propose", "describe_tool", "stop"]
    record = json.loads(json.dumps(calls[0].as_dict()))
    assert record["error"] == "HTTP 500: upstream crashed" and record["total_tokens"] == 0


# --- configuration ------------------------------------------------------------------------------


def test_local_server_without_key_gets_the_placeholder(
    server: ScriptedLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    server.push(text_reply("hello"))
    client = LLMClient(MODEL, max_retries=0)
    assert client.endpoint == server.base_url and client.placeholder_key
    client.chat(HI)
    assert server.requests[0].headers["authorization"] == f"Bearer {PLACEHOLDER_API_KEY}"


def test_openai_without_key_and_empty_model_are_config_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(LLMConfigError, match="set OPENAI_API_KEY"):
        LLMClient(MODEL, base_url="https://api.openai.com/v1")
    with pytest.raises(LLMConfigError, match="--llm-model"):
        LLMClient(" ", base_url="http://127.0.0.1:1/v1")

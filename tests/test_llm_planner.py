"""The LLM planner's conversations (``rankscope.agent.planners.llm.planner``) over real HTTP,
against the scripted OpenAI-compatible server of ``tests.llm_server``: the request it opens with,
stopping, giving up, narratives, every request fitted to the context window, and the settings
that reach it from the command line."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from rankscope.agent import runner
from rankscope.agent.llm_client import LLMCall
from rankscope.agent.llm_context import LLMContextError
from rankscope.agent.planners.base import Criterion, Ledger, Narrative, Proposal, Stop
from rankscope.agent.planners.llm import MAX_DESCRIBE_CALLS, MIN_LEDGER_CHARS, LLMPlanner
from rankscope.agent.settings import InvestigationSettings
from rankscope.prompts import PromptError, load_prompt, placeholders, render
from tests.llm_planner_support import (
    INJECTION,
    MODEL,
    TOOL,
    context_ledger,
    entry,
    entry_blocks,
    good_call,
    make_ledger,
    make_planner,
    messages_of,
    outside_data_blocks,
    recorded_calls,
    refs,
    registered_selftest_tool,
    scripted_server,
)
from tests.llm_server import (
    TOKEN_SLACK,
    ScriptedLLMServer,
    ServerContext,
    prompt_tokens,
    text_reply,
    tool_call_reply,
)

selftest_tool = pytest.fixture(scope="module", autouse=True)(registered_selftest_tool)
server = pytest.fixture(scripted_server)
calls = pytest.fixture(recorded_calls)


def test_good_tool_call_becomes_a_proposal(server: ScriptedLLMServer, calls: list[LLMCall]) -> None:
    server.push(tool_call_reply(TOOL, good_call()))
    result = make_planner(server, calls, catalogue="full").propose(make_ledger())

    assert isinstance(result, Proposal)
    assert result.tool == TOOL
    assert result.hypothesis.startswith("Heads in layer 2")
    assert result.criterion == Criterion(metric="layer", direction="greater", threshold=1)
    assert result.components == ["L2.H3"]
    assert result.args == {"layer": 2, "heads": [{"layer": 2, "head": 3}]}, "as written"

    (request,) = server.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer test-key"
    body = request.body
    assert body["model"] == MODEL
    assert "temperature" not in body and "max_tokens" not in body
    assert [t["function"]["name"] for t in body["tools"]] == [TOOL, "stop"]
    wrapper = body["tools"][0]["function"]["parameters"]
    assert set(wrapper["properties"]) >= {"hypothesis", "rationale", "criterion", "args"}
    assert {"hypothesis", "criterion", "args"} <= set(wrapper["required"])
    assert wrapper["properties"]["criterion"]["required"] == ["metric", "direction", "threshold"]
    assert wrapper["properties"]["args"]["properties"]["layer"]["maximum"] == 5
    for ref in refs(wrapper):
        assert ref.removeprefix("#/$defs/") in wrapper["$defs"]
    system, user = messages_of(body)
    assert (system["role"], user["role"]) == ("system", "user")
    assert "Which components make the bi-encoder reward repeated query terms?" in system["content"]
    assert "all-MiniLM-L6-v2" in system["content"]
    assert f"`{TOOL}`: Test tool of tests/llm_planner_support.py" in system["content"]
    assert "pre-registered" in system["content"]
    assert "No hypothesis has been tested yet." in user["content"]


def test_stop_call_returns_stop(server: ScriptedLLMServer, calls: list[LLMCall]) -> None:
    server.push(tool_call_reply("stop", {"reason": "The question is answered."}))
    assert make_planner(server, calls).propose(make_ledger()) == Stop(
        reason="The question is answered."
    )


def test_no_budget_left_stops_without_calling(
    server: ScriptedLLMServer, calls: list[LLMCall]
) -> None:
    result = make_planner(server, calls).propose(make_ledger(tool_calls_left=0))
    assert isinstance(result, Stop) and "no budget left" in result.reason
    assert server.requests == []


def test_gives_up_with_stop_after_max_invalid_replies(
    server: ScriptedLLMServer, calls: list[LLMCall]
) -> None:
    server.push(
        text_reply("thinking"), text_reply("still thinking"), tool_call_reply(TOOL, good_call())
    )
    result = make_planner(server, calls, max_invalid_replies=1).propose(make_ledger())

    assert isinstance(result, Stop)
    assert "gave 2 unusable replies in a row" in result.reason
    assert result.reason.endswith("last problem: the reply had no function call (only text)")
    assert len(server.bodies) == 2
    assert server.pending == 1


def test_endless_describe_calls_end_in_stop(
    server: ScriptedLLMServer, calls: list[LLMCall]
) -> None:
    n = MAX_DESCRIBE_CALLS + 2
    server.push(*[tool_call_reply("describe_tool", {"name": TOOL}) for _ in range(n)])
    result = make_planner(server, calls, max_invalid_replies=1).propose(make_ledger())
    assert isinstance(result, Stop)
    assert "describe_tool" in result.reason
    assert len(server.bodies) == n


# --- narratives ----------------------------------------------------------------------------------


def test_narrate_reads_citations_and_keeps_the_verdict_fixed(
    server: ScriptedLLMServer, calls: list[LLMCall]
) -> None:
    text = (
        "<think>maybe call it supported?</think>Layer 2 heads do not carry the effect: "
        "patching them moved 41% of pairs [E11], below the threshold [E12, E13]; see also [X4]."
    )
    server.push(text_reply(text))
    ledger_entry = entry(1, evidence_ids=[11, 12, 13], summary=f"doc quote: {INJECTION}")
    narrative = make_planner(server, calls).narrate(make_ledger(), ledger_entry)

    assert narrative == Narrative(
        text="Layer 2 heads do not carry the effect: patching them moved 41% of pairs [E11], "
        "below the threshold [E12, E13]; see also [X4].",
        cited_evidence_ids=[11, 12, 13],
    )
    body = server.bodies[0]
    assert "tools" not in body
    system, user = messages_of(body)
    assert "Verdict: **refuted**" in system["content"]
    assert "You cannot change it" in system["content"]
    assert "Stored evidence: [E11], [E12], [E13]" in system["content"]
    assert f"Pre-registered criterion: {ledger_entry.criterion}" in system["content"]
    assert INJECTION not in outside_data_blocks(user["content"])
    assert INJECTION in user["content"]
    assert calls[0].purpose == "narrate"


def test_narrate_falls_back_on_an_empty_reply(
    server: ScriptedLLMServer, calls: list[LLMCall]
) -> None:
    server.push(text_reply("   "))
    narrative = make_planner(server, calls).narrate(make_ledger(), entry(2))
    assert narrative.cited_evidence_ids == [12]
    assert "refuted" in narrative.text


def test_prompt_templates_load_and_name_missing_placeholders() -> None:
    assert placeholders(load_prompt("system")) == ["question", "model", "data", "tools", "calling"]
    assert placeholders(load_prompt("step.md")) == [
        "steps_left",
        "tool_calls_left",
        "entries",
        "feedback",
        "move",
    ]
    assert "hypothesis_id" in placeholders(load_prompt("narrate"))
    with pytest.raises(PromptError, match=r"'step.md' needs a value for \{entries\}, \{feedback\}"):
        render("step", steps_left=1, tool_calls_left=1)
    with pytest.raises(PromptError, match="no prompt template 'nope.md'.*system.md"):
        load_prompt("nope")
    rendered = render(
        "step", steps_left=1, tool_calls_left=2, entries="E {x}", feedback="F", move="M"
    )
    assert "Budget left: 1 steps, 2 tool calls." in rendered and "E {x}" in rendered


# --- the context window ------------------------------------------------------------------------


def window_between(planner: LLMPlanner, ledger: Ledger) -> tuple[int, int]:
    """Tokens the first request needs with the default ledger summary and with the smallest."""
    default = planner.needed_tokens(planner.request(ledger))
    smallest = planner.needed_tokens(planner.request(ledger, MIN_LEDGER_CHARS))
    return default, smallest


def test_a_request_that_does_not_fit_is_an_error_before_sending(
    server: ScriptedLLMServer, calls: list[LLMCall]
) -> None:
    planner = make_planner(server, calls, context_tokens=2048)
    with pytest.raises(LLMContextError) as err:
        planner.propose(context_ledger(12))
    message = str(err.value)
    assert "does not fit the context window of model 'scripted-model'" in message
    assert f"shrunk to its minimum ({MIN_LEDGER_CHARS} characters)" in message
    assert "window is 2048 tokens (--llm-context)" in message
    assert "Nothing was sent" in message
    for advice in ("Raise --llm-context", "bigger context", "shorten the question"):
        assert advice in message
    assert err.value.context == 2048 and err.value.needed > 2048
    assert server.requests == [] and calls == []
    assert server.probes == [], "a context given with --llm-context is not asked of the server"


def test_the_ledger_shrinks_to_fit_a_small_context(
    server: ScriptedLLMServer, calls: list[LLMCall]
) -> None:
    ledger = context_ledger(20)
    probe = LLMPlanner(MODEL, base_url=server.base_url, context_tokens=100_000)
    default, smallest = window_between(probe, ledger)
    assert smallest < default
    window = (default + smallest) // 2
    server.push(tool_call_reply("propose", {"tool": TOOL, **good_call()}))
    planner = make_planner(server, calls, context_tokens=window)
    assert isinstance(planner.propose(ledger), Proposal)

    (body,) = server.bodies
    assert planner.needed_tokens(body) <= window
    assert prompt_tokens(body) + planner.reply_tokens <= window * TOKEN_SLACK
    user = messages_of(body)[1]["content"]
    unshrunk = probe.request(ledger)["messages"][1]["content"]
    assert len(user) < len(unshrunk)
    assert "Oldest hypotheses H1–H" in user and "summarised" in user
    assert user.count("<data") == user.count("</data>")
    for hypothesis_id, block in entry_blocks(user):
        assert block.startswith((f"H{hypothesis_id}:", "hypothesis: H"))


def test_a_follow_up_request_is_fitted_again_after_a_tool_description(
    server: ScriptedLLMServer, calls: list[LLMCall]
) -> None:
    ledger = context_ledger(20)
    probe = LLMPlanner(MODEL, base_url=server.base_url, context_tokens=100_000)
    default, _smallest = window_between(probe, ledger)
    server.push(
        tool_call_reply("describe_tool", {"name": "activation_patching"}),
        tool_call_reply("propose", {"tool": TOOL, **good_call()}),
    )
    planner = make_planner(server, calls, context_tokens=default + 50)
    assert isinstance(planner.propose(ledger), Proposal)
    first, second = server.bodies
    assert planner.needed_tokens(second) <= default + 50
    assert len(messages_of(second)[1]["content"]) < len(messages_of(first)[1]["content"])


def test_the_narrative_request_is_checked_too(
    server: ScriptedLLMServer, calls: list[LLMCall]
) -> None:
    planner = make_planner(server, calls, context_tokens=1200)
    with pytest.raises(LLMContextError, match="the narrative request does not fit"):
        planner.narrate(make_ledger(), entry(1))
    assert server.requests == []


def test_a_detected_context_is_used_once_and_bounds_every_request(
    server: ScriptedLLMServer, calls: list[LLMCall]
) -> None:
    server.context = ServerContext(n_ctx=2048)
    planner = make_planner(server, calls)
    for _ in range(2):
        with pytest.raises(LLMContextError, match=r"window is 2048 tokens \(the llama.cpp"):
            planner.propose(context_ledger(12))
    assert server.bodies == []
    assert [p.path for p in server.probes] == ["/v1/models", "/props"]

    server.context = ServerContext(max_model_len=32768)
    server.push(tool_call_reply("stop", {"reason": "done"}))
    roomy = make_planner(server, calls)
    assert isinstance(roomy.propose(context_ledger(12)), Stop)
    window = roomy.context_window()
    assert window is not None and window.tokens == 32768


# --- settings from the command line -------------------------------------------------------------


def llm_planner(**settings: Any) -> LLMPlanner:
    """The planner ``runner.make_planner`` builds for an investigation with these settings."""
    stored = InvestigationSettings(
        planner="llm", llm_model=MODEL, base_url="http://127.0.0.1:9/v1", **settings
    )
    planner = runner.make_planner(None, 1, stored)  # type: ignore[arg-type]
    assert isinstance(planner, LLMPlanner)
    return planner


def test_llm_timeout_retries_and_context_reach_the_planner_and_are_stored() -> None:
    planner = llm_planner(llm_timeout_s=321.0, llm_retries=0, llm_context=8192)
    assert (planner.client.timeout_s, planner.client.max_retries) == (321.0, 0)
    window = planner.context_window()
    assert window is not None and (window.tokens, window.source) == (8192, "--llm-context")
    stored = InvestigationSettings(llm_timeout_s=321.0, llm_retries=0, llm_context=8192).model_dump(
        mode="json"
    )
    again = InvestigationSettings.model_validate(stored)
    assert (again.llm_timeout_s, again.llm_retries, again.llm_context) == (321.0, 0, 8192)
    for invalid in ({"llm_retries": -1}, {"llm_context": 0}, {"llm_timeout_s": 0}):
        with pytest.raises(ValidationError):
            InvestigationSettings(**invalid)


def test_investigate_offers_llm_timeout_retries_and_context() -> None:
    from typer.testing import CliRunner

    from rankscope.agent.cli import app

    result = CliRunner().invoke(app, ["investigate", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--llm-timeout", "--llm-retries", "--llm-context"):
        assert option in result.output

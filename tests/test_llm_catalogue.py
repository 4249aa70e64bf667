"""How the tools are offered (``rankscope.agent.planners.llm.catalogue``): wrapper schemas that
still resolve, the compact catalogue of one line per tool, ``describe_tool`` and the reduced
argument schemas, and the documented request budget (``REQUEST_TOKEN_BUDGET``) over a long
investigation."""

from __future__ import annotations

import json

import pytest

from rankscope.agent.llm_client import LLMCall
from rankscope.agent.planners.base import Proposal
from rankscope.agent.planners.llm import (
    REQUEST_TOKEN_BUDGET,
    LLMPlanner,
    planner_args_schema,
    preregistered_tool_spec,
)
from rankscope.tools.registry import all_tools, get_tool, openai_tool_specs
from tests.llm_planner_support import (
    MODEL,
    TOOL,
    good_call,
    long_ledger,
    make_ledger,
    make_planner,
    messages_of,
    recorded_calls,
    refs,
    registered_selftest_tool,
    scripted_server,
)
from tests.llm_server import (
    TOKEN_SLACK,
    TOKENIZER,
    ScriptedLLMServer,
    prompt_tokens,
    tool_call_reply,
)

selftest_tool = pytest.fixture(scope="module", autouse=True)(registered_selftest_tool)
server = pytest.fixture(scripted_server)
calls = pytest.fixture(recorded_calls)


def test_wrapper_keeps_every_registered_tool_schema_resolvable() -> None:
    specs = openai_tool_specs()
    assert TOOL in [s["function"]["name"] for s in specs]
    for spec in specs:
        wrapped = preregistered_tool_spec(spec)["function"]
        assert wrapped["name"] == spec["function"]["name"]
        parameters = wrapped["parameters"]
        assert "$defs" not in parameters["properties"]["args"]
        for ref in refs(parameters):
            assert ref.startswith("#/$defs/")
            assert ref.removeprefix("#/$defs/") in parameters["$defs"], (wrapped["name"], ref)


def test_empty_ledger_tools_offers_every_registered_tool(
    server: ScriptedLLMServer, calls: list[LLMCall]
) -> None:
    server.push(tool_call_reply("stop", {"reason": "nothing to test"}))
    make_planner(server, calls).propose(make_ledger(tools=[]))
    offered = [t["function"]["name"] for t in server.bodies[0]["tools"]]
    assert offered == ["propose", "describe_tool", "stop"]
    enum = server.bodies[0]["tools"][0]["function"]["parameters"]["properties"]["tool"]["enum"]
    assert enum == [s["function"]["name"] for s in openai_tool_specs()]


def test_compact_catalogue_lists_each_tool_on_one_line(
    server: ScriptedLLMServer, calls: list[LLMCall]
) -> None:
    server.push(tool_call_reply("stop", {"reason": "done"}))
    make_planner(server, calls).propose(make_ledger(tools=[]))
    system = messages_of(server.bodies[0])[0]["content"]
    for name in all_tools():
        (line,) = [ln for ln in system.splitlines() if ln.startswith(f"- `{name}`:")]
        assert len(line) < 400
    assert "effect[<component>]" in system
    assert "_ci_low" not in system


def test_describe_tool_answers_with_the_reduced_schema_then_propose_runs(
    server: ScriptedLLMServer, calls: list[LLMCall]
) -> None:
    server.push(
        tool_call_reply("describe_tool", {"name": TOOL}),
        tool_call_reply("propose", {"tool": TOOL, **good_call()}),
    )
    result = make_planner(server, calls, max_invalid_replies=0).propose(make_ledger())
    assert isinstance(result, Proposal) and result.tool == TOOL
    answer = messages_of(server.bodies[1])[-1]
    assert answer["role"] == "tool"
    assert f"Arguments of `{TOOL}`" in answer["content"]
    assert '"layer"' in answer["content"] and "seed" not in answer["content"]
    assert '"title"' not in answer["content"]


def test_planner_args_schema_drops_hidden_args_titles_and_defaults() -> None:
    schema = planner_args_schema("activation_patching")
    text = json.dumps(schema)
    assert "seed" not in schema["properties"] and "batch_size" not in schema["properties"]
    assert '"title"' not in text and '"default"' not in text
    assert schema["properties"]["components"]["type"] == "array"
    assert len(text) < len(json.dumps(get_tool("activation_patching").Args.model_json_schema()))


# --- the request budget ----------------------------------------------------------------------


def test_request_stays_under_the_token_budget_at_step_1_and_after_20_hypotheses() -> None:
    planner = LLMPlanner(MODEL, base_url="http://127.0.0.1:9/v1")
    full = LLMPlanner(MODEL, base_url="http://127.0.0.1:9/v1", catalogue="full")
    for n_entries in (0, 20):
        compact_tokens = prompt_tokens(planner.request(long_ledger(n_entries)))
        full_tokens = prompt_tokens(full.request(long_ledger(n_entries)))
        assert compact_tokens <= REQUEST_TOKEN_BUDGET * TOKEN_SLACK, (
            TOKENIZER,
            n_entries,
            compact_tokens,
        )
        assert full_tokens > 3 * compact_tokens, (n_entries, full_tokens, compact_tokens)


def test_every_request_of_a_20_step_investigation_fits_the_budget(
    server: ScriptedLLMServer, calls: list[LLMCall]
) -> None:
    """Each step first asks for a tool's schema, then proposes: both requests fit the budget."""
    planner = make_planner(server, calls)
    for step in range(20):
        server.push(
            tool_call_reply("describe_tool", {"name": "activation_patching"}),
            tool_call_reply("propose", {"tool": TOOL, **good_call()}),
        )
        assert isinstance(planner.propose(long_ledger(step)), Proposal)
    assert len(server.bodies) == 40
    sizes = [prompt_tokens(body) for body in server.bodies]
    assert max(sizes) <= REQUEST_TOKEN_BUDGET * TOKEN_SLACK, (TOKENIZER, sizes)

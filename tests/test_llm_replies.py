"""The model's replies (``rankscope.agent.planners.llm.replies``): what is wrong with a call's
shape is answered in the same conversation, replies as small local models write them are repaired
where that is safe, and the tool's arguments are left to the graph's one gate."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from rankscope.agent.calls import CallRejected, check_proposal
from rankscope.agent.llm_client import LLMCall
from rankscope.agent.planners.base import Criterion, Proposal, Stop
from rankscope.agent.policy import StatsPolicy
from rankscope.tools.registry import ToolArgumentError, get_tool, validate_args
from tests.llm_planner_support import (
    TOOL,
    criterion,
    entry,
    good_call,
    make_ledger,
    make_planner,
    messages_of,
    recorded_calls,
    registered_selftest_tool,
    scripted_server,
)
from tests.llm_server import (
    MALFORMED,
    ScriptedLLMServer,
    content_tool_call_reply,
    text_reply,
    tool_call_reply,
)

selftest_tool = pytest.fixture(scope="module", autouse=True)(registered_selftest_tool)
server = pytest.fixture(scripted_server)
calls = pytest.fixture(recorded_calls)


def test_malformed_json_is_answered_then_retried(
    server: ScriptedLLMServer, calls: list[LLMCall]
) -> None:
    broken = '{"hypothesis": "layer 2 copies terms", "criterion": {"metric": '
    server.push(tool_call_reply(TOOL, broken), tool_call_reply(TOOL, good_call()))
    result = make_planner(server, calls).propose(make_ledger())

    assert isinstance(result, Proposal)
    first, second = server.bodies
    followup = messages_of(second)
    assert followup[:2] == messages_of(first)
    assistant, tool_message = followup[2:]
    (echoed,) = assistant["tool_calls"]
    assert echoed["function"] == {"name": TOOL, "arguments": broken}
    assert tool_message["role"] == "tool"
    assert tool_message["tool_call_id"] == echoed["id"]
    assert f"the arguments of `{TOOL}` are not valid JSON" in tool_message["content"]
    assert "Expecting value" in tool_message["content"]


def test_unknown_tool_feedback_lists_the_tools(
    server: ScriptedLLMServer, calls: list[LLMCall]
) -> None:
    server.push(
        tool_call_reply("activation_patching_v9", good_call()), tool_call_reply(TOOL, good_call())
    )
    assert isinstance(make_planner(server, calls).propose(make_ledger()), Proposal)
    feedback = messages_of(server.bodies[1])[-1]["content"]
    assert "there is no function `activation_patching_v9`" in feedback
    assert "the available functions are `propose`, `describe_tool`, `stop`" in feedback
    assert f"the tools for `propose` are `{TOOL}`" in feedback


def test_propose_without_a_known_tool_is_rejected_with_the_tool_names(
    server: ScriptedLLMServer, calls: list[LLMCall]
) -> None:
    server.push(
        tool_call_reply("propose", good_call()),
        tool_call_reply("propose", {"tool": TOOL, **good_call()}),
    )
    assert isinstance(make_planner(server, calls).propose(make_ledger()), Proposal)
    feedback = messages_of(server.bodies[1])[-1]["content"]
    assert f"`propose` needs `tool`: one of `{TOOL}`" in feedback


def test_the_tool_arguments_are_left_to_the_graphs_gate(
    server: ScriptedLLMServer, calls: list[LLMCall]
) -> None:
    bad_args = {"layer": 9, "heads": [{"layer": 2}]}
    with pytest.raises(ToolArgumentError) as expected:
        validate_args(get_tool(TOOL), bad_args)
    server.push(tool_call_reply(TOOL, good_call(args=bad_args)))

    proposal = make_planner(server, calls).propose(make_ledger())
    assert isinstance(proposal, Proposal) and proposal.args == bad_args
    with pytest.raises(CallRejected) as rejected:
        check_proposal(proposal, {}, StatsPolicy())
    assert str(expected.value) in str(rejected.value)
    assert "layer: Input should be less than or equal to 5" in str(rejected.value)
    assert "heads.0.head: Field required" in str(rejected.value)


def _criterion_message(raw: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as err:
        Criterion.model_validate(raw)
    first = err.value.errors()[0]
    return f"criterion.{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"


@pytest.mark.parametrize(
    ("broken", "expected"),
    [
        ({"criterion": None}, "no pre-registered `criterion`"),
        ({"hypothesis": ""}, "no pre-registered `hypothesis`"),
        ({"hypothesis": None, "criterion": None}, "no pre-registered `hypothesis`"),
        ({"args": None}, f"`args` is missing: put the arguments of `{TOOL}`"),
        ({"layer": 2}, "unknown keys layer"),
        ({"parent_hypothesis_id": 99}, "`parent_hypothesis_id` 99 is not a hypothesis"),
        (
            {"criterion": criterion(direction="up")},
            _criterion_message(criterion(direction="up")),
        ),
    ],
)
def test_call_without_valid_preregistration_is_rejected(
    server: ScriptedLLMServer, calls: list[LLMCall], broken: dict[str, Any], expected: str
) -> None:
    call = {k: v for k, v in good_call(**broken).items() if v is not None}
    server.push(tool_call_reply(TOOL, call), tool_call_reply(TOOL, good_call()))

    assert isinstance(make_planner(server, calls).propose(make_ledger()), Proposal)
    feedback = messages_of(server.bodies[1])[-1]
    assert feedback["role"] == "tool"
    assert feedback["content"].startswith("Rejected, nothing was run: ")
    assert expected in feedback["content"]


def test_text_only_reply_is_nudged(server: ScriptedLLMServer, calls: list[LLMCall]) -> None:
    server.push(
        text_reply("I would test layer 2 next, with the patching tool."),
        tool_call_reply(TOOL, good_call()),
    )
    assert isinstance(make_planner(server, calls).propose(make_ledger()), Proposal)
    followup = messages_of(server.bodies[1])
    assert followup[2] == {
        "role": "assistant",
        "content": "I would test layer 2 next, with the patching tool.",
    }
    assert followup[3]["role"] == "user"
    assert "Your reply had no function call (only text)" in followup[3]["content"]
    assert f"one of `{TOOL}`" in followup[3]["content"]


def test_first_valid_call_of_a_parallel_reply_is_used(
    server: ScriptedLLMServer, calls: list[LLMCall]
) -> None:
    server.push(tool_call_reply(TOOL, "{not json", calls=[(TOOL, good_call())]))
    assert isinstance(make_planner(server, calls).propose(make_ledger()), Proposal)
    assert len(server.bodies) == 1


def test_every_rejected_parallel_call_gets_a_tool_message(
    server: ScriptedLLMServer, calls: list[LLMCall]
) -> None:
    server.push(
        tool_call_reply(TOOL, "{", calls=[("nope", {})]), tool_call_reply(TOOL, good_call())
    )
    assert isinstance(make_planner(server, calls).propose(make_ledger()), Proposal)
    assistant, *tool_messages = messages_of(server.bodies[1])[2:]
    ids = [c["id"] for c in assistant["tool_calls"]]
    assert [m["tool_call_id"] for m in tool_messages] == ids
    assert "not valid JSON" in tool_messages[0]["content"]
    assert "no function `nope`" in tool_messages[1]["content"]


def test_nested_objects_sent_as_json_strings_are_accepted(
    server: ScriptedLLMServer, calls: list[LLMCall]
) -> None:
    call = good_call(criterion=json.dumps(criterion()), args=json.dumps({"layer": 3}))
    server.push(tool_call_reply(TOOL, call))
    result = make_planner(server, calls).propose(make_ledger(entries=[entry(1)]))
    assert isinstance(result, Proposal)
    assert result.args["layer"] == 3
    assert result.criterion.metric == "layer"


# --- replies as small local models write them -----------------------------------------------------


# --- replies as small local models write them -----------------------------------------------------


@pytest.mark.parametrize("shape", list(MALFORMED))
def test_malformed_replies_of_small_models_are_tolerated(
    server: ScriptedLLMServer, calls: list[LLMCall], shape: str
) -> None:
    server.push(MALFORMED[shape]("propose", {"tool": TOOL, **good_call()}))
    result = make_planner(server, calls, max_invalid_replies=0).propose(make_ledger())
    assert isinstance(result, Proposal), shape
    assert (result.tool, result.args["layer"]) == (TOOL, 2)


def test_a_content_tool_call_is_answered_as_a_structured_call(
    server: ScriptedLLMServer, calls: list[LLMCall]
) -> None:
    server.push(
        content_tool_call_reply("describe_tool", {"name": f"functions.{TOOL}"}),
        content_tool_call_reply("propose", json.dumps(json.dumps({"tool": TOOL, **good_call()}))),
    )
    result = make_planner(server, calls, max_invalid_replies=0).propose(make_ledger())
    assert isinstance(result, Proposal)
    assistant, answer = messages_of(server.bodies[1])[2:]
    (call,) = assistant["tool_calls"]
    assert call["function"]["name"] == "describe_tool"
    assert answer["role"] == "tool" and answer["tool_call_id"] == call["id"]
    assert f"Arguments of `{TOOL}`" in answer["content"]


def test_nothing_in_a_content_tool_call_is_run_unless_it_is_a_valid_call(
    server: ScriptedLLMServer, calls: list[LLMCall]
) -> None:
    server.push(
        content_tool_call_reply("os.system", {"command": "rm -rf /"}),
        text_reply("<tool_call>\nnot json at all\n</tool_call>"),
        content_tool_call_reply("functions.propose", {"tool": "functions.shell", **good_call()}),
    )
    result = make_planner(server, calls, max_invalid_replies=2).propose(make_ledger())
    assert isinstance(result, Stop)
    feedback = [messages_of(body)[-1]["content"] for body in server.bodies[1:]]
    assert "there is no function `os.system`" in feedback[0]
    assert "names no function" in feedback[1]
    assert "`propose` needs `tool`" in result.reason and "'shell'" in result.reason

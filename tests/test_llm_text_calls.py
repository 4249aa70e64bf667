"""Replies as small local models write them (issue 23): calls written as text in the content —
fenced or bare JSON, prose around them — are read as calls ("parsed from text") and checked like
any other; anything else is answered with what is wrong, quoted from the schema check."""

from __future__ import annotations

import json
from typing import Any

import pytest

from rankscope.agent.llm_client import LLMCall
from rankscope.agent.planners.base import Proposal, Stop
from rankscope.agent.planners.llm.planner import PARSED_FROM_TEXT_NOTE, call_schema
from rankscope.agent.planners.llm.replies import text_calls
from tests.llm_planner_support import (
    TOOL,
    good_call,
    make_ledger,
    make_planner,
    messages_of,
    recorded_calls,
    registered_selftest_tool,
    scripted_server,
)
from tests.llm_server import (
    REAL_REPLIES,
    TEXT_CALLS,
    ScriptedLLMServer,
    text_call_reply,
    text_reply,
    tool_call_reply,
)

selftest_tool = pytest.fixture(scope="module", autouse=True)(registered_selftest_tool)
server = pytest.fixture(scripted_server)
calls = pytest.fixture(recorded_calls)


def _propose(**overrides: Any) -> dict[str, Any]:
    return {"tool": TOOL, **good_call(**overrides)}


@pytest.mark.parametrize("shape", list(TEXT_CALLS))
def test_a_call_written_as_text_becomes_a_proposal_parsed_from_text(
    server: ScriptedLLMServer, calls: list[LLMCall], shape: str
) -> None:
    server.push(TEXT_CALLS[shape]("propose", _propose()))
    planner = make_planner(server, calls, max_invalid_replies=0)
    result = planner.propose(make_ledger())

    assert isinstance(result, Proposal), shape
    assert (result.tool, result.args["layer"], result.components) == (TOOL, 2, ["L2.H3"])
    (reply,) = planner.replies
    assert (reply.outcome, reply.source, reply.detail) == ("proposal", "text", TOOL)
    assert planner.drain_notes() == [PARSED_FROM_TEXT_NOTE]


def test_parsed_from_text_is_noted_once_and_not_fed_back_to_the_model(
    server: ScriptedLLMServer, calls: list[LLMCall]
) -> None:
    server.push(
        text_call_reply("propose", _propose()),
        text_call_reply("propose", _propose(), fence=None),
    )
    planner = make_planner(server, calls)
    planner.propose(make_ledger())
    notes = planner.drain_notes()
    planner.propose(make_ledger(feedback=notes))
    assert notes == [PARSED_FROM_TEXT_NOTE] and planner.drain_notes() == []
    assert PARSED_FROM_TEXT_NOTE not in messages_of(server.bodies[1])[1]["content"]


def test_a_stop_that_repeats_the_feedback_is_answered_once(
    server: ScriptedLLMServer, calls: list[LLMCall]
) -> None:
    """Qwen2.5-Coder-0.5B answered a rejection with `stop`, the rejection as its reason."""
    server.push(
        text_reply('{"tool": 3}'),
        text_call_reply("stop", {"reason": "The JSON object in your reply is not a function call"}),
        text_call_reply("stop", {"reason": "The JSON object in your reply is not a function call"}),
    )
    planner = make_planner(server, calls, max_invalid_replies=3)
    result = planner.propose(make_ledger())
    assert isinstance(result, Stop)
    answer = messages_of(server.bodies[2])[-1]
    assert answer["role"] == "tool" and "Your stop repeats the feedback" in answer["content"]
    assert [r.outcome for r in planner.replies] == ["rejected", "rejected", "stop"]


def test_a_text_call_of_a_stop_ends_the_investigation(
    server: ScriptedLLMServer, calls: list[LLMCall]
) -> None:
    server.push(text_call_reply("stop", {"reason": "the question is answered"}, fence=None))
    result = make_planner(server, calls).propose(make_ledger())
    assert result == Stop(reason="the question is answered")


def test_a_text_call_is_answered_as_a_structured_call_in_the_conversation(
    server: ScriptedLLMServer, calls: list[LLMCall]
) -> None:
    server.push(
        text_call_reply("propose", _propose(criterion="metric: layer"), before="Plan:\n"),
        text_call_reply("propose", _propose()),
    )
    assert isinstance(make_planner(server, calls).propose(make_ledger()), Proposal)
    assistant, answer = messages_of(server.bodies[1])[2:]
    (echoed,) = assistant["tool_calls"]
    assert echoed["function"]["name"] == "propose"
    assert assistant["content"] == "Plan:"
    assert answer["role"] == "tool" and answer["tool_call_id"] == echoed["id"]
    assert "invalid criterion" in answer["content"]


def test_a_text_call_of_a_tool_that_does_not_exist_is_rejected_naming_the_functions(
    server: ScriptedLLMServer, calls: list[LLMCall]
) -> None:
    server.push(
        text_call_reply("run_shell", {"command": "rm -rf /"}),
        text_call_reply("propose", {**_propose(), "tool": "activation_patching_v9"}, fence=None),
    )
    result = make_planner(server, calls, max_invalid_replies=1).propose(make_ledger())
    assert isinstance(result, Stop)
    first = messages_of(server.bodies[1])[-1]["content"]
    assert "there is no function `run_shell`" in first
    assert "`propose`, `describe_tool`, `stop`" in first
    assert "`propose` needs `tool`" in result.reason and "activation_patching_v9" in result.reason


@pytest.mark.parametrize(
    ("content", "quoted"),
    [
        ('```json\n{"hypothesis": "h", "criterion": {}}\n```', "call.name: Field required"),
        ('{"name": 3, "arguments": {}}', "call.name: Input should be a valid string"),
        ('Here: {"function": "propose", "args": {}}', "call.name: Field required"),
    ],
)
def test_json_that_is_not_a_call_is_answered_with_the_schema_error(
    server: ScriptedLLMServer, calls: list[LLMCall], content: str, quoted: str
) -> None:
    server.push(text_reply(content), tool_call_reply(TOOL, good_call()))
    planner = make_planner(server, calls)
    assert isinstance(planner.propose(make_ledger()), Proposal)
    feedback = messages_of(server.bodies[1])[-1]
    assert feedback["role"] == "user"
    assert feedback["content"].startswith(
        "Rejected, nothing was run: the JSON object in your reply"
    )
    assert quoted in feedback["content"]
    assert planner.replies[0].outcome == "rejected"


def test_prose_without_json_is_still_nudged_to_call_a_function(
    server: ScriptedLLMServer, calls: list[LLMCall]
) -> None:
    assert text_calls("I would test layer {2} next.") == ([], "")
    server.push(text_reply("I would test layer 2 next."), tool_call_reply(TOOL, good_call()))
    make_planner(server, calls).propose(make_ledger())
    assert (
        "Your reply had no function call (only text)"
        in messages_of(server.bodies[1])[-1]["content"]
    )


def test_nothing_but_the_first_call_of_a_text_is_used_and_nothing_is_run() -> None:
    text = (
        'First {"name": "stop", "arguments": {"reason": "done"}} then '
        '```json\n{"name": "propose", "arguments": {}}\n```'
    )
    found, problem = text_calls(text)
    assert problem == ""
    assert [(c.name, c.source) for c in found] == [("propose", "text"), ("stop", "text")]


def test_a_call_cut_short_is_read_with_its_closing_brackets_added() -> None:
    """Qwen2.5-Coder-0.5B left out the last brace of its call; up to three are added, never
    more, and never inside a string."""
    whole = json.dumps({"name": "propose", "arguments": {"tool": TOOL, "args": {"layer": 2}}})
    for cut in (1, 2, 3):
        (call,), problem = text_calls(whole[:-cut])
        assert (call.name, json.loads(call.arguments)["args"], problem) == (
            "propose",
            {"layer": 2},
            "",
        )
    assert text_calls('{"name": "stop", "arguments": {"reason": "cut in a str') == ([], "")
    assert text_calls(whole[: whole.index("{", 1)] + "[[[[{")[0] == []


def test_the_arguments_of_propose_without_their_envelope_are_a_propose_call(
    server: ScriptedLLMServer, calls: list[LLMCall]
) -> None:
    server.push(text_reply("```json\n" + json.dumps(_propose()) + "\n```"))
    result = make_planner(server, calls, max_invalid_replies=0).propose(make_ledger())
    assert isinstance(result, Proposal) and result.tool == TOOL


@pytest.mark.parametrize("label", list(REAL_REPLIES))
def test_real_replies_of_local_models_are_read_and_answered_concretely(
    server: ScriptedLLMServer, calls: list[LLMCall], label: str
) -> None:
    """A verbatim reply of a real model: read as a call, and answered with concrete fixes."""
    server.push(text_reply(REAL_REPLIES[label]))
    ledger = make_ledger(
        question="Does all-MiniLM-L6-v2 reward repeated query terms (TFC1), and which "
        "components compute it?",
        tools=["ablation", "behavioural_test", "axiom_screen"],
    )
    planner = make_planner(server, calls, max_invalid_replies=0)
    result = planner.propose(ledger)
    if isinstance(result, Proposal):
        return
    (reply,) = planner.replies
    assert reply.source == "text" and reply.outcome == "rejected"
    assert "parsed" not in reply.detail
    if "criterion" in reply.detail:
        assert '"metric": "' in reply.detail and '"direction": "greater"' in reply.detail


# --- what the reader demands of a proposal ---------------------------------------------------


def test_a_hypothesis_that_repeats_the_question_is_rejected_with_an_example(
    server: ScriptedLLMServer, calls: list[LLMCall]
) -> None:
    ledger = make_ledger()
    server.push(
        text_call_reply("propose", _propose(hypothesis=ledger.question)),
        text_call_reply("propose", _propose(hypothesis="Does layer 2 copy terms?")),
        text_call_reply("propose", _propose()),
    )
    assert isinstance(make_planner(server, calls).propose(ledger), Proposal)
    for body in server.bodies[1:]:
        feedback = messages_of(body)[-1]["content"]
        assert "the `hypothesis` is a question (or the research question itself)" in feedback
        assert "e.g. " in feedback


def test_a_criterion_written_as_a_string_is_answered_with_a_complete_object(
    server: ScriptedLLMServer, calls: list[LLMCall]
) -> None:
    server.push(
        text_call_reply("propose", _propose(criterion="metric: layer > 1")),
        text_call_reply("propose", _propose()),
    )
    make_planner(server, calls).propose(make_ledger())
    feedback = messages_of(server.bodies[1])[-1]["content"]
    assert "write it as an object, e.g. " in feedback
    example = json.loads(feedback.split("e.g. ", 1)[1].split("}", 1)[0] + "}")
    assert example == {
        "metric": "layer",
        "direction": "greater",
        "threshold": 0.0,
        "alpha": 0.05,
        "split": "discovery",
    }


# --- structured output ------------------------------------------------------------------------


def test_structured_output_sends_a_schema_of_the_calls_and_reads_the_json_reply(
    server: ScriptedLLMServer, calls: list[LLMCall]
) -> None:
    server.push(text_call_reply("propose", _propose(), fence=None, indent=None))
    planner = make_planner(server, calls, structured_output=True, temperature=0.0, seed=7)
    assert isinstance(planner.propose(make_ledger()), Proposal)
    body = server.bodies[0]
    assert (body["temperature"], body["seed"]) == (0.0, 7)
    schema = body["response_format"]["json_schema"]["schema"]
    assert schema == call_schema(body["tools"])
    names = [option["properties"]["name"]["const"] for option in schema["anyOf"]]
    assert names == ["propose", "describe_tool", "stop"]
    refs = json.dumps(schema).count('"$ref": "#/$defs/')
    assert refs == 0 or set(schema["$defs"])


def test_without_structured_output_no_response_format_is_sent(
    server: ScriptedLLMServer, calls: list[LLMCall]
) -> None:
    server.push(tool_call_reply(TOOL, good_call()))
    make_planner(server, calls).propose(make_ledger())
    assert not {"response_format", "temperature", "seed"} & set(server.bodies[0])

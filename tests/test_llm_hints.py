"""Feedback a small model can act on (issue 23): the graph's rejection of the LLM planner's last
proposal comes back in the next step prompt as one sentence, a concrete fix and the corrected
call; the catalogue and the worked example name concrete metric keys, never bare templates."""

from __future__ import annotations

import json
from typing import Any

import pytest

from rankscope.agent.calls import CallRejected, check_proposal
from rankscope.agent.llm_client import LLMCall
from rankscope.agent.planners.base import Criterion, Proposal
from rankscope.agent.planners.llm import catalogue_line
from rankscope.agent.planners.llm.hints import (
    correction,
    example_call,
    example_metric,
    first_sentence,
)
from rankscope.agent.policy import StatsPolicy
from rankscope.tools.registry import openai_tool_specs
from tests.llm_planner_support import entry, make_ledger, make_planner, messages_of, recorded_calls
from tests.llm_planner_support import scripted_server as scripted_server_fixture
from tests.llm_server import ScriptedLLMServer, text_call_reply

server = pytest.fixture(scripted_server_fixture)
calls = pytest.fixture(recorded_calls)

README = (
    "Does all-MiniLM-L6-v2 reward repeated query terms (TFC1), and which components compute it?"
)
TOOLS = ["axiom_screen", "behavioural_test", "activation_patching", "ablation"]


def _proposal(tool: str, metric: str, **overrides: Any) -> Proposal:
    values: dict[str, Any] = {
        "hypothesis": "The model rewards a repeated query term.",
        "rationale": "Screen first.",
        "tool": tool,
        "args": {},
        "criterion": Criterion(metric=metric, direction="greater", threshold=0.05),
        "components": [],
    }
    values.update(overrides)
    return Proposal(**values)


def _gate(proposal: Proposal) -> str:
    with pytest.raises(CallRejected) as rejected:
        check_proposal(proposal, {}, StatsPolicy())
    return str(rejected.value)


@pytest.mark.parametrize(
    ("tool", "metric", "args", "components", "question", "expected"),
    [
        ("axiom_screen", "mean_delta", {}, [], README, "mean_delta[axiom=TFC1|variant=append]"),
        (
            "axiom_screen",
            "share_moved_predicted",
            {"perturbations": ["LNC1/append"]},
            [],
            README,
            "share_moved_predicted[axiom=LNC1|variant=append]",
        ),
        ("activation_patching", "effect[1]", {}, [], README, "effect[L0.H0]"),
        ("activation_patching", "effect", {}, ["L2.H3"], README, "effect[L2.H3]"),
        ("behavioural_test", "mean_delta_ci_low", {}, [], README, "mean_delta"),
        ("property_regression", "length", {}, [], README, "edit_delta[edit=truncate]"),
        ("ablation", "delta", {"components": ["L1.H2"]}, [], README, "delta_change[L1.H2]"),
    ],
)
def test_example_metric_is_a_concrete_estimate_of_the_tool(
    tool: str,
    metric: str,
    args: dict[str, Any],
    components: list[str],
    question: str,
    expected: str,
) -> None:
    assert example_metric(tool, metric, args, components, question) == expected


def test_the_suggested_metric_passes_the_gate() -> None:
    """The concrete value the feedback suggests is one the gate accepts."""
    rejected = _proposal("axiom_screen", "mean_delta")
    fixed = correction(rejected, _gate(rejected), README, TOOLS)
    assert fixed is not None and fixed.call is not None
    arguments = fixed.call["arguments"]
    assert arguments["criterion"]["metric"] == "mean_delta[axiom=TFC1|variant=append]"
    proposal = Proposal.model_validate(arguments)
    check_proposal(proposal, {}, StatsPolicy())


@pytest.mark.parametrize(
    ("proposal", "fix", "changed"),
    [
        (
            _proposal("behavioural_test", "mean_delta", components=["L3.H5", "L3.attn"]),
            "set `components` to []",
            {"components": []},
        ),
        (
            _proposal("behavioural_test", "mean_delta", args={"split": "holdout"}),
            "leave `split` out of `args`",
            {"args": {}},
        ),
        (
            _proposal("ablation", "delta_change[L1.H2]", components=["L1.H2"]),
            "put the hypothesis's components in `args.components`",
            {"args": {"components": ["L1.H2"]}},
        ),
        (
            # Qwen2.5-Coder-0.5B copied schema keys into `args` and named a metric of no tool
            _proposal(
                "axiom_screen",
                "faithfulness",
                args={"type": "object", "description": "x", "parent_hypothesis_id": 0},
                components=["L3.H5", "L3.attn"],
            ),
            "drop `type`, `description`, `parent_hypothesis_id` from `args` (`axiom_screen` "
            "takes no such argument); use the criterion metric "
            "`mean_delta[axiom=TFC1|variant=append]` (an estimate `axiom_screen` reports); set "
            "`components` to []: `mean_delta[axiom=TFC1|variant=append]` is about the whole model",
            {"args": {}, "components": []},
        ),
        (
            _proposal("ablation", "delta_change[L1.H2]"),
            "call `describe_tool` with name `ablation`",
            None,
        ),
    ],
)
def test_each_rejection_gets_a_concrete_fix(
    proposal: Proposal, fix: str, changed: dict[str, Any] | None
) -> None:
    fixed = correction(proposal, _gate(proposal), README, TOOLS)
    assert fixed is not None and fix in fixed.fix
    if changed is None:
        assert fixed.call is None
        return
    assert fixed.call is not None
    for key, value in changed.items():
        assert fixed.call["arguments"][key] == value
    check_proposal(Proposal.model_validate(fixed.call["arguments"]), {}, StatsPolicy())


def test_a_repeated_proposal_is_told_to_change_something() -> None:
    message = "repeated proposal: axiom_screen with the same arguments and criterion was already"
    fixed = correction(_proposal("axiom_screen", "mean_delta"), message, README, TOOLS)
    assert fixed is not None and fixed.call is None and "already ran" in fixed.fix


def test_the_reason_is_one_sentence() -> None:
    message = _gate(_proposal("axiom_screen", "mean_delta"))
    assert len(message) > 200
    sentence = first_sentence(message)
    assert "'mean_delta'" in sentence and "<axiom>" not in sentence and ";" not in sentence


def test_the_next_step_prompt_restates_the_gates_rejection_with_the_corrected_call(
    server: ScriptedLLMServer, calls: list[LLMCall]
) -> None:
    arguments = {
        "tool": "axiom_screen",
        "hypothesis": "The model rewards a repeated query term.",
        "rationale": "Screen first.",
        "criterion": {"metric": "mean_delta", "direction": "greater", "threshold": 0.05},
        "components": [],
        "args": {},
    }
    server.push(
        text_call_reply("propose", arguments),
        text_call_reply("propose", arguments),
        text_call_reply("propose", arguments),
    )
    planner = make_planner(server, calls)
    ledger = make_ledger(question=README, tools=TOOLS)
    first = planner.propose(ledger)
    assert isinstance(first, Proposal)
    message = _gate(first)
    rejected = make_ledger(question=README, tools=TOOLS, feedback=[*planner.drain_notes(), message])
    planner.propose(rejected)

    prompt = messages_of(server.bodies[1])[1]["content"]
    assert message not in prompt, "the long message is restated, not repeated"
    assert (
        "Your last call (`axiom_screen`) was rejected and nothing was run: rejected call: tool "
        "'axiom_screen' does not produce the metric 'mean_delta'. Fix: use the criterion metric "
        "`mean_delta[axiom=TFC1|variant=append]`"
    ) in prompt
    corrected = prompt.split('<data source="your last call, corrected">\n', 1)[1].split("\n")[0]
    call = json.loads(corrected)
    assert call["name"] == "propose"
    assert call["arguments"]["criterion"]["metric"] == "mean_delta[axiom=TFC1|variant=append]"
    assert planner.gate == {1: f"rejected: {message}"}

    ran = make_ledger(question=README, tools=TOOLS, entries=[entry(4)], feedback=[message])
    planner.propose(ran)
    assert planner.gate[2] == "ran as H4"
    assert "Your last call" not in messages_of(server.bodies[2])[1]["content"]


def test_an_uncorrectable_rejection_is_fed_back_as_it_is(
    server: ScriptedLLMServer, calls: list[LLMCall]
) -> None:
    arguments = {
        "tool": "axiom_screen",
        "hypothesis": "h",
        "rationale": "",
        "criterion": {
            "metric": "mean_delta[axiom=TFC1|variant=append]",
            "direction": "greater",
            "threshold": 0,
        },
        "components": [],
        "args": {},
    }
    server.push(text_call_reply("propose", arguments), text_call_reply("stop", {"reason": "ok"}))
    planner = make_planner(server, calls)
    planner.propose(make_ledger(question=README, tools=TOOLS))
    odd = "rejected: the planner's proposal could not be stored"
    planner.propose(make_ledger(question=README, tools=TOOLS, feedback=[odd]))
    prompt = messages_of(server.bodies[1])[1]["content"]
    assert f"- {odd}" in prompt and "Your last call" not in prompt


# --- the catalogue and the worked example ------------------------------------------------------


def test_the_catalogue_line_writes_one_estimate_out_concretely() -> None:
    specs = {s["function"]["name"]: s for s in openai_tool_specs()}
    line = catalogue_line(specs["axiom_screen"], "Does the model penalise long documents (LNC1)?")
    assert "Criterion metrics: mean_delta[axiom=<axiom>|variant=<variant>]" in line
    assert line.endswith("E.g. `mean_delta[axiom=LNC1|variant=append]`.")
    assert "E.g." not in catalogue_line(specs["behavioural_test"], README)


@pytest.mark.parametrize(
    ("question", "tool"),
    [
        (README, "behavioural_test"),
        ("What does all-MiniLM-L6-v2 reward or penalise in a document?", "axiom_screen"),
    ],
)
def test_the_worked_example_is_a_valid_call_for_the_question(question: str, tool: str) -> None:
    example = example_call(question, TOOLS)
    assert example is not None and example["arguments"]["tool"] == tool
    check_proposal(Proposal.model_validate(example["arguments"]), {}, StatsPolicy())


def test_the_system_prompt_carries_the_worked_example(
    server: ScriptedLLMServer, calls: list[LLMCall]
) -> None:
    server.push(text_call_reply("stop", {"reason": "done"}))
    make_planner(server, calls).propose(make_ledger(question=README, tools=TOOLS))
    system = messages_of(server.bodies[0])[0]["content"]
    example = json.dumps(example_call(README, TOOLS), ensure_ascii=False, separators=(", ", ": "))
    assert example in system

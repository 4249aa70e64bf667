"""LLM planner request budget: tokens per planning request over a long investigation.

Run on demand (not part of the tests)::

    python benchmarks/llm_planner_budget.py [--steps 20] [--catalogues full,reduced,compact]
    python benchmarks/llm_planner_budget.py --base-url http://127.0.0.1:8080/v1 --llm-model NAME

Scripted (the default): the LLM planner runs ``--steps`` steps against the scripted loopback
server of ``tests/llm_server.py`` with a ledger that grows by one realistic hypothesis per step
(``tests.llm_planner_support.heavy_entry``: a long hypothesis, a dozen per-component metrics, a
long summary, replications). With the compact
catalogue each step first calls ``describe_tool`` for the largest tool schema, then ``propose``;
with ``full`` and ``reduced`` it calls the tool directly. Every request the planner sends is
chat-templated as Qwen2.5-Instruct lays it out and counted with the Qwen2.5 tokenizer
(``tests.llm_server.prompt_tokens``; see there for the fallback). Prints, per step, the tokens of
the first request and of the largest request of the step for each catalogue, then the maximum,
the ratio full/compact and whether every request fits ``REQUEST_TOKEN_BUDGET``.

Against a real endpoint (``--base-url`` and ``--llm-model``; key from ``OPENAI_API_KEY``): the
same growing ledger is sent to the server (no tool runs), and each step prints the prompt and
completion tokens the server reported, the latency, whether the reply became a proposal, a stop,
or was rejected and why.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rankscope.agent.llm_client import LLMCall, LLMError  # noqa: E402
from rankscope.agent.planners.base import Ledger, Proposal, Stop  # noqa: E402
from rankscope.agent.planners.llm import (  # noqa: E402
    CATALOGUES,
    REQUEST_TOKEN_BUDGET,
    LLMPlanner,
    ToolCatalogue,
)
from tests.llm_planner_support import heavy_entry  # noqa: E402
from tests.llm_server import (  # noqa: E402
    TOKENIZER,
    ScriptedLLMServer,
    prompt_tokens,
    tool_call_reply,
)

QUESTION = "Which components make the bi-encoder reward repeated query terms?"
PROPOSAL_TOOL = "behavioural_test"
DESCRIBED_TOOL = "activation_patching"


def ledger(n_entries: int, total_steps: int) -> Ledger:
    """The ledger after ``n_entries`` hypotheses, all registered tools offered."""
    return Ledger(
        investigation_id=1,
        question=QUESTION,
        model={"model_id": "sentence-transformers/all-MiniLM-L6-v2", "kind": "bi-encoder"},
        data="built-in axiom pairs (TFC1, TFC2, TDC, LNC1)",
        tools=[],
        entries=[heavy_entry(i) for i in range(1, n_entries + 1)],
        feedback=["the last proposal repeated H2 with the same arguments; change them"],
        steps_left=total_steps - n_entries,
        tool_calls_left=total_steps - n_entries,
    )


def proposal_args() -> dict[str, Any]:
    return {
        "hypothesis": "Appending a query term raises the score (TFC1).",
        "rationale": "The first behavioural check of the question.",
        "criterion": {"metric": "share_moved_predicted", "direction": "greater", "threshold": 0.5},
        "components": [],
        "args": {},
    }


def scripted_run(catalogue: ToolCatalogue, steps: int) -> list[tuple[int, int]]:
    """(first request, largest request) tokens of each step of a scripted investigation."""
    sizes: list[tuple[int, int]] = []
    with ScriptedLLMServer() as server:
        planner = LLMPlanner(
            "scripted-model", base_url=server.base_url, api_key="x", catalogue=catalogue
        )
        for step in range(steps):
            before = len(server.bodies)
            if catalogue == "compact":
                server.push(
                    tool_call_reply("describe_tool", {"name": DESCRIBED_TOOL}),
                    tool_call_reply("propose", {"tool": PROPOSAL_TOOL, **proposal_args()}),
                )
            else:
                server.push(tool_call_reply(PROPOSAL_TOOL, proposal_args()))
            result = planner.propose(ledger(step, steps + 1))
            if not isinstance(result, Proposal):
                raise RuntimeError(f"step {step + 1} ({catalogue}): no proposal: {result}")
            tokens = [prompt_tokens(body) for body in server.bodies[before:]]
            sizes.append((tokens[0], max(tokens)))
        planner.close()
    return sizes


def print_scripted(steps: int, catalogues: list[ToolCatalogue]) -> None:
    print(f"tokenizer: {TOKENIZER}; budget {REQUEST_TOKEN_BUDGET} tokens per request")
    runs = {catalogue: scripted_run(catalogue, steps) for catalogue in catalogues}
    header = "step  ledger " + "".join(f"{c + ' first':>15}{c + ' max':>13}" for c in catalogues)
    print(header)
    for step in range(steps):
        row = f"{step + 1:>4}  {step:>6} "
        row += "".join(f"{runs[c][step][0]:>15}{runs[c][step][1]:>13}" for c in catalogues)
        print(row)
    for catalogue in catalogues:
        worst = max(size for _, size in runs[catalogue])
        verdict = "fits" if worst <= REQUEST_TOKEN_BUDGET else "over"
        print(
            f"{catalogue:>8}: step 1 {runs[catalogue][0][0]} tokens, step {steps} "
            f"{runs[catalogue][-1][0]} tokens, largest request {worst} ({verdict} the budget)"
        )
    if "full" in runs and "compact" in runs:
        ratios = [f / c for (f, _), (c, _) in zip(runs["full"], runs["compact"], strict=True)]
        print(
            f"full/compact (first request of a step): step 1 {ratios[0]:.1f}x, "
            f"step {steps} {ratios[-1]:.1f}x"
        )


def endpoint_run(base_url: str, model: str, steps: int, timeout_s: float | None) -> None:
    """The planner against a real endpoint, one line per request and one per step."""
    calls: list[LLMCall] = []
    planner = LLMPlanner(model, base_url=base_url, recorder=calls.append, timeout_s=timeout_s)
    print(f"{planner.describe()}; tokenizer for the local count: {TOKENIZER}")
    for step in range(steps):
        seen = len(calls)
        result = planner.propose(ledger(step, steps + 1))
        for call in calls[seen:]:
            body = {
                "messages": call.messages,
                "tools": planner.functions(planner.offered_tools(ledger(step, steps + 1))),
            }
            reply = json.dumps(call.response)[:160] if call.response else call.error
            print(
                f"  request: prompt {call.prompt_tokens} (local count {prompt_tokens(body)}), "
                f"completion {call.completion_tokens}, {call.latency_s:.1f} s; reply {reply}"
            )
        if isinstance(result, Proposal):
            outcome = f"proposal `{result.tool}`: {result.hypothesis} [{result.criterion.metric}]"
        else:
            outcome = f"stop: {result.reason}"
        print(f"step {step + 1}: {outcome}")
        if isinstance(result, Stop):
            break
    planner.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--catalogues", default=",".join(CATALOGUES))
    parser.add_argument("--base-url", help="A real OpenAI-compatible endpoint (optional).")
    parser.add_argument("--llm-model", help="The model name the endpoint serves.")
    parser.add_argument("--llm-timeout", type=float, default=None)
    options = parser.parse_args()
    if options.base_url or options.llm_model:
        if not (options.base_url and options.llm_model):
            parser.error("--base-url and --llm-model go together")
        try:
            endpoint_run(options.base_url, options.llm_model, options.steps, options.llm_timeout)
        except LLMError as err:
            sys.exit(f"stopped: {err}")
        return
    catalogues = [c for c in options.catalogues.split(",") if c]
    unknown = [c for c in catalogues if c not in CATALOGUES]
    if unknown:
        parser.error(f"unknown catalogues {unknown}; choose from {', '.join(CATALOGUES)}")
    print_scripted(options.steps, catalogues)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()

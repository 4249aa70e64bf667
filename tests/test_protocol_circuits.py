"""The protocol's circuit localisation (issue 21) on a scripted ledger, no model: the step order
(rank → group claim → random-set control → roles → competing mechanisms → single components),
the criteria (fractions of the behaviour, the pre-registered target, members and k fixed on
discovery and never re-ranked on held-out queries), and that every proposal passes the graph's
gate as it stands; plus one small end-to-end run on a tiny model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from rankscope.agent.calls import check_proposal, replication_args
from rankscope.agent.planners.base import Criterion, Ledger, LedgerEntry, Proposal, Stop
from rankscope.agent.planners.protocol import ProtocolPlanner
from rankscope.agent.planners.protocol.circuits import (
    CIRCUIT,
    CONFIRM,
    CONTROL,
    MECHANISM_DIRECT,
    MECHANISM_HEADS,
    RANK,
)
from rankscope.agent.policy import StatsPolicy
from rankscope.agent.state import Budget
from rankscope.tools.registry import get_tool, validate_args

README = (
    "Does all-MiniLM-L6-v2 reward repeated query terms (TFC1), and which components compute it?"
)
MINILM = {"layers": 6, "heads": 12, "pooling": "mean", "kind": "bi-encoder"}
RANKING = [
    ("L5.H7", 0.13),
    ("L5.H3", 0.11),
    ("L5.H9", 0.09),
    ("L5.H1", 0.07),
    ("L5.H5", 0.06),
    ("L5.H11", 0.05),
    ("L5.H2", 0.04),
    ("L4.H6", 0.03),
    ("L3.H1", 0.02),
    ("L5.H0", 0.01),
    ("L2.H4", 0.005),
]

Outcome = Callable[[Proposal], tuple[str, dict[str, float | int | None]]]


def default_outcome(proposal: Proposal) -> tuple[str, dict[str, float | int | None]]:
    """Every claim supported; the rank step's discovery numbers (smallest k = 7)."""
    if proposal.exploratory:
        metrics = {"smallest_k": 7, "k": 7} if proposal.hypothesis.startswith(RANK) else {}
        return "exploratory", metrics
    return "supported", {}


def drive(
    outcome: Outcome = default_outcome,
    *,
    model: dict | None = None,
    budget: Budget | None = None,
    planner: ProtocolPlanner | None = None,
) -> tuple[list[Proposal], Stop, list[str]]:
    """Run the protocol on a scripted ledger: each proposal passes the graph's gate, spends a
    step and its tool calls (two when it replicates), and comes back with ``outcome``'s status.
    Returns the proposals, the stop and the planner's notes in order."""
    planner = planner or ProtocolPlanner()
    budget = budget or Budget()
    policy = StatsPolicy()
    entries: list[LedgerEntry] = []
    proposals: list[Proposal] = []
    notes: list[str] = []
    fingerprints: dict[str, int] = {}
    calls = 0
    while True:
        if len(proposals) >= budget.max_steps:  # the graph stops here
            return proposals, Stop(reason="step budget reached"), notes
        ledger = Ledger(
            investigation_id=1,
            question=README,
            model=model or MINILM,
            data="builtin",
            tools=[],
            entries=list(entries),
            steps_left=budget.max_steps - len(proposals),
            tool_calls_left=budget.max_tool_calls - calls,
        )
        step = planner.propose(ledger)
        notes += planner.drain_notes()
        if isinstance(step, Stop):
            return proposals, step, notes
        pending = check_proposal(step, fingerprints, policy)  # the graph's gate accepts it
        hid = len(entries) + 1
        fingerprints[pending["fingerprint"]] = hid
        proposals.append(step)
        status, metrics = outcome(step)
        calls += 1 if step.exploratory or status != "supported" else 2
        entries.append(
            LedgerEntry(
                hypothesis_id=hid,
                hypothesis=step.hypothesis,
                tool=step.tool,
                args=pending["args"],
                criterion=step.criterion,
                components=step.components,
                status=status,
                key_metrics=metrics,
                ranking=RANKING if step.hypothesis.startswith(RANK) else [],
            )
        )


def titled(proposals: list[Proposal], prefix: str) -> list[Proposal]:
    return [p for p in proposals if p.hypothesis.startswith(prefix)]


def test_the_readme_question_runs_rank_claim_control_roles_mechanisms_singles_in_budget():
    proposals, stop, notes = drive()
    order = [p.hypothesis.split(":")[0] for p in proposals]
    assert order == [
        "Behaviour",
        "Rank",
        "Circuit",
        "Control",
        "Role (positions)",
        "Role (path to the output)",
        "Role (attention)",
        "Mechanism (direct)",
        "Mechanism (heads)",
        "Confirm",
        "Confirm",
    ], order
    # within the default budget (12 steps, 24 tool calls), ending with the planner's own Stop
    assert len(proposals) < Budget().max_steps
    assert stop.reason.startswith("protocol complete: circuit claim")
    # the competing mechanisms are stated (a note) before anything is localised
    mechanisms = next(i for i, n in enumerate(notes) if n.startswith("competing mechanisms"))
    assert "(A, direct)" in notes[mechanisms] and "(B, heads)" in notes[mechanisms]
    # only the claims are confirmatory; the rank and the roles are exploratory
    exploratory = {p.hypothesis.split(":")[0] for p in proposals if p.exploratory}
    assert exploratory == {
        "Rank",
        "Role (positions)",
        "Role (path to the output)",
        "Role (attention)",
    }
    # no hypothesis names a head chosen for no reason (the old screen's "L5.H0")
    assert all("L5.H0" not in p.hypothesis for p in proposals)


def test_members_and_k_are_fixed_on_discovery_and_never_re_ranked_on_held_out():
    proposals, _, _ = drive()
    (rank,) = titled(proposals, RANK)
    assert rank.tool == "circuit" and rank.exploratory
    assert rank.args["members"] is None and rank.args["k"] is None
    assert rank.criterion.split == "discovery" and rank.args["split"] == "discovery"
    # the rank step aims at target + margin, so the claim is not selected at its own threshold
    assert rank.args["target"] == pytest.approx(0.7)
    ranked = [name for name, _ in RANKING][:10]
    for claim in (*titled(proposals, CIRCUIT), *titled(proposals, CONTROL)):
        assert claim.args["members"] == ranked and claim.args["k"] == 7
        assert claim.components == ranked[:7]
        held_out, seed_only = replication_args(claim.tool, check_call_args(claim))
        assert not seed_only and held_out["split"] == "holdout"
        assert held_out["members"] == ranked and held_out["k"] == 7  # same members, same k
        validate_args(get_tool("circuit"), held_out)  # the replication runs as it is
    # the tool itself refuses to rank on held-out queries
    with pytest.raises(ValueError, match="discovery"):
        validate_args(get_tool("circuit"), {**rank.args, "split": "holdout"})


def check_call_args(proposal: Proposal) -> dict:
    return check_proposal(proposal, {}, StatsPolicy())["args"]


def test_criteria_are_fractions_with_the_pre_registered_target():
    proposals, _, _ = drive()
    sesoi = StatsPolicy().sesoi_for("patching_fraction")
    (circuit,) = titled(proposals, CIRCUIT)
    assert circuit.criterion.metric == "faithfulness"
    assert (circuit.criterion.direction, circuit.criterion.threshold) == ("greater", 0.6)
    assert "0.6" in circuit.hypothesis  # the target is stated
    (control,) = titled(proposals, CONTROL)
    assert control.criterion.metric == "beats_random"
    assert (control.criterion.direction, control.criterion.threshold) == ("greater", sesoi)
    # only the control draws random sets: it is a call of its own, not a re-read of the claim's
    assert control.args["n_random"] == 100 and circuit.args["n_random"] == 0
    assert {k: v for k, v in control.args.items() if k not in ("n_random", "n_random_curve")} == {
        k: v for k, v in circuit.args.items() if k not in ("n_random", "n_random_curve")
    }
    (direct,) = titled(proposals, MECHANISM_DIRECT)
    assert direct.criterion.metric == "effect[L5.resid@injected]"
    assert (direct.criterion.direction, direct.criterion.threshold) == ("greater", 0.5)
    (heads,) = titled(proposals, MECHANISM_HEADS)
    # all attention blocks patched jointly as one estimate (one test, not seven)
    assert heads.tool == "circuit" and heads.criterion.metric == "faithfulness"
    assert sorted(heads.args["members"]) == sorted(f"L{i}.attn" for i in range(6))
    assert heads.args["k"] == 6 and heads.criterion.threshold == 0.5
    singles = titled(proposals, CONFIRM)
    # singles: members carrying at least the SESOI on discovery, largest first, a fraction each
    assert [p.components for p in singles] == [["L5.H7"], ["L5.H3"]]
    for p in singles:
        assert p.criterion.metric == f"effect[{p.components[0]}]"
        assert (p.criterion.direction, p.criterion.threshold) == ("greater", sesoi)
    # no component claim is in score units any more (the old 0.005)
    assert all(p.criterion.threshold != 0.005 for p in proposals)


def test_a_refuted_circuit_gets_no_roles_and_the_conclusion_says_which_mechanism_is_ruled_out():
    def outcome(p: Proposal) -> tuple[str, dict]:
        if p.hypothesis.startswith((CIRCUIT, CONTROL)):
            return "refuted", {}
        if p.hypothesis.startswith(MECHANISM_HEADS):
            return "refuted", {}
        return default_outcome(p)

    proposals, stop, notes = drive(outcome)
    assert not [p for p in proposals if p.hypothesis.startswith("Role")]
    assert any("roles are for members that carry something specific" in n for n in notes)
    assert titled(proposals, MECHANISM_DIRECT) and titled(proposals, MECHANISM_HEADS)
    assert "refuted" in stop.reason and "mechanism B (heads)" in stop.reason
    assert "B (heads) H" in stop.reason and "ruled out" in stop.reason
    assert "A (direct)" in stop.reason and "its prediction held" in stop.reason


def test_no_k_reaching_the_target_tests_the_top_max_k_and_says_so():
    def outcome(p: Proposal) -> tuple[str, dict]:
        if p.hypothesis.startswith(RANK):
            return "exploratory", {"smallest_k": None, "k": 10}
        return default_outcome(p)

    proposals, _, notes = drive(outcome)
    (circuit,) = titled(proposals, CIRCUIT)
    assert circuit.args["k"] == 10 and len(circuit.components) == 10
    assert any("no circuit of at most 10 heads reached 0.7" in n for n in notes)


def test_members_in_several_layers_get_a_path_between_members():
    global RANKING
    saved = RANKING
    RANKING = [("L2.H1", 0.3), ("L5.H7", 0.2), ("L3.H4", 0.1)]
    try:
        proposals, _, _ = drive(
            lambda p: (
                ("exploratory", {"smallest_k": 3})
                if p.hypothesis.startswith(RANK)
                else default_outcome(p)
            )
        )
    finally:
        RANKING = saved
    (between,) = titled(proposals, "Role (paths between members)")
    assert between.tool == "path_patching" and between.exploratory
    assert between.args["senders"] == ["L2.H1", "L3.H4"]
    assert between.args["receiver"] == "L5.H7.v"


def test_a_small_budget_keeps_the_claims_first():
    proposals, _, _ = drive(budget=Budget(max_steps=6, max_tool_calls=12))
    assert [p.hypothesis.split(":")[0] for p in proposals][:4] == [
        "Behaviour",
        "Rank",
        "Circuit",
        "Control",
    ]


def test_a_cls_pooled_model_states_why_no_mechanism_pair_is_tested():
    proposals, _, notes = drive(model={**MINILM, "pooling": "cls"})
    assert not titled(proposals, "Mechanism")
    assert any("no mechanism pair is tested" in n for n in notes)


# -- end to end on a tiny model ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenwise_model(tmp_path_factory) -> Path:
    """A tiny mean-pooled BERT whose attention value projections are zero: no head can move
    anything between positions, so TFC1 (append) raises scores only through the added token's
    own state — the direct mechanism is true, the heads mechanism false, and no set of heads
    restores the behaviour."""
    from tests.test_protocol_open import tokenwise_mean_bert

    return tokenwise_mean_bert(tmp_path_factory.mktemp("tokenwise"))


@pytest.mark.slow
def test_the_circuit_protocol_end_to_end_on_a_tiny_model(tmp_path, tokenwise_model):
    """The whole localisation through the graph: the rank is exploratory (no verdict), the
    circuit claim patches the discovery members on held-out queries when it replicates, and on
    this model the heads carry nothing — the circuit claim is refuted, the heads mechanism is
    ruled out and the direct one holds."""
    from rankscope.experiments_db.engine import open_store
    from tests.agent_support import TINY_POLICY, run

    torch.set_num_threads(1)
    planner = ProtocolPlanner(policy=TINY_POLICY, n_pairs=64, localise_pairs=32, max_k=4)
    result = run(
        tmp_path,
        tokenwise_model,
        planner,
        Budget(max_steps=12, max_tool_calls=24),
        question=README,
        policy=TINY_POLICY,
    )
    assert result.status == "finished"
    with open_store(f"sqlite:///{tmp_path / 't.db'}") as store:
        tree = store.investigation_tree(1)
    by_title = {h.text.split(":")[0]: h for h in tree.hypotheses}
    assert by_title["Behaviour"].latest_verdict.status == "supported"
    rank, circuit = by_title["Rank"], by_title["Circuit"]
    assert rank.exploratory and not rank.verdicts
    assert [e.args["split"] for e in rank.experiments] == ["discovery"]
    runs = circuit.experiments
    assert runs[0].args["split"] == "discovery" and runs[0].args["members"]
    for exp in runs[1:]:  # a replication patches the discovery members, never re-ranked
        assert exp.args["split"] == "holdout"
        assert (exp.args["members"], exp.args["k"]) == (runs[0].args["members"], runs[0].args["k"])
    assert circuit.latest_verdict.status == "refuted"
    assert by_title["Mechanism (heads)"].latest_verdict.status == "refuted"
    assert by_title["Mechanism (direct)"].latest_verdict.status == "supported"
    assert all(not h.exploratory or not h.verdicts for h in tree.hypotheses)


def test_a_group_claim_names_exactly_the_members_it_patches():
    """A claim's components are bound to its call: a circuit claim may name its first k
    members and nothing else (no claiming a head the joint patch did not isolate)."""
    from rankscope.agent.calls import CallRejected

    proposals, _, _ = drive()
    (circuit,) = titled(proposals, CIRCUIT)
    check_proposal(circuit, {}, StatsPolicy())
    for wrong in (circuit.components[:1], [*circuit.components, "L0.H0"]):
        with pytest.raises(CallRejected, match="exactly those components"):
            check_proposal(circuit.model_copy(update={"components": wrong}), {}, StatsPolicy())


def test_no_circuit_size_or_ranking_is_chosen_on_held_out_queries():
    """A p-hacker's circuit claim that leaves k (or the members) to the tool would be replicated
    with the size (or the ranking) that reaches the target on the held-out queries themselves:
    the tool refuses both off discovery, so such a claim can never be supported."""
    tool = get_tool("circuit")
    sneaky = {"members": ["L5.H7", "L5.H3"], "k": None, "n_random": 0}
    validate_args(tool, {**sneaky, "split": "discovery"})
    held_out, _ = replication_args("circuit", {**sneaky, "split": "discovery", "seed": 0})
    with pytest.raises(ValueError, match="k=None chooses the circuit size"):
        validate_args(tool, held_out)
    with pytest.raises(ValueError, match="ranking must come from discovery"):
        validate_args(tool, {"members": None, "k": 2, "split": "holdout"})


def test_a_claim_whose_replication_would_be_invalid_is_rejected_before_it_runs():
    """What Qwen2.5-Coder-0.5B proposed on the README question: a ``circuit`` call that ranks
    (members=None) as a claim. Its held-out replication cannot run (a ranking comes from
    discovery only); the gate rejects it up front with a fix, instead of the run failing at the
    replication. As an exploratory step the same call is accepted."""
    from rankscope.agent.calls import CallRejected

    proposal = Proposal(
        hypothesis="The circuit is a top-k component (ranked on discovery) patched jointly.",
        rationale="the question asks which components",
        tool="circuit",
        args={"axiom": "TFC1", "variant": "append", "members": None, "k": 3},
        criterion=Criterion(metric="faithfulness", direction="greater", threshold=0.0),
    )
    with pytest.raises(CallRejected, match="replicated on held-out queries") as err:
        check_proposal(proposal, {}, StatsPolicy())
    assert "ranking must come from discovery" in str(err.value)
    assert "members=<the components ranked on discovery> and k" in str(err.value)
    check_proposal(proposal.model_copy(update={"exploratory": True}), {}, StatsPolicy())


def test_members_short_of_the_target_but_beating_random_sets_get_their_roles():
    """The README case on MiniLM: the top heads restore about half the behaviour (the claim at
    0.6 stays inconclusive) but beat random sets: their roles are still described."""

    def outcome(p: Proposal) -> tuple[str, dict]:
        if p.hypothesis.startswith(CIRCUIT):
            return "inconclusive", {}
        return default_outcome(p)

    proposals, stop, _ = drive(outcome)
    assert titled(proposals, "Role (positions)") and titled(proposals, "Role (attention)")
    assert "inconclusive" in stop.reason and "random-set control" in stop.reason

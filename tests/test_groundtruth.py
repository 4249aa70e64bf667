"""Ground truth: tiny organisms with planted rules, built in seconds on the built-in
collection; the protocol planner's stored claims scored against their records.

The claims tests are fast (records and hypothesis nodes built by hand); the end-to-end test builds
the tiny organisms and runs the protocol planner on their questions (slow: a few minutes)."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime
from pathlib import Path

import pytest

from rankscope.agent.groundtruth import (
    BlackBoxBattery,
    claims_of,
    is_false,
    rule_found,
    run_bench,
    score_investigation,
)
from rankscope.agent.planners.base import Ledger
from rankscope.experiments_db.records import (
    Criterion,
    HypothesisNode,
    InvestigationRecord,
    InvestigationTree,
    VerdictRecord,
)
from rankscope.tools.organisms import GroundTruth, RuleSpec, catalogue
from rankscope.tools.organisms.rules import planted_changes, shift
from rankscope.tools.organisms.spec import ProbeMeasure, planted_claims
from rankscope.tools.organisms.texts import PROBE_VARIANTS, VARIANTS, default_corpus

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def record(rules: list[RuleSpec], facts: dict[str, str | None], carriers=()) -> GroundTruth:
    m = ProbeMeasure(mean_delta=0.0, share_up=0.5, n_pairs=1, n_queries=1)
    return GroundTruth(
        name="x",
        base_model="b",
        base_weights_hash="h",
        path="/nowhere",
        rules=rules,
        planted=planted_claims(rules, list(carriers)),
        facts=facts,  # type: ignore[arg-type]
        carriers=list(carriers),
        trained_queries=[],
        heldout_queries=[],
        probes_base={"TFC1/append": m},
        probes_organism={"TFC1/append": m},
    )


def node(
    i: int,
    tool: str,
    args: dict,
    metric: str,
    direction: str,
    status: str,
    reason: str = "",
    components=(),
    threshold: float = 0.5,
) -> HypothesisNode:
    verdict = VerdictRecord(
        id=i,
        hypothesis_id=i,
        status=status,  # type: ignore[arg-type]
        criterion_result={"reason": reason},
        cited_evidence_ids=[],
        narrative="",
        decided_by="rules",
        created_at=NOW,
    )
    return HypothesisNode(
        id=i,
        investigation_id=1,
        text="prose is never read",
        rationale="",
        parent_id=None,
        components=list(components),
        tool=tool,
        tool_args=args,
        criterion=Criterion(metric=metric, direction=direction, threshold=threshold),  # type: ignore[arg-type]
        created_at=NOW,
        locked=True,
        verdicts=[verdict],
    )


def tree(*nodes: HypothesisNode) -> InvestigationTree:
    inv = InvestigationRecord(
        id=1,
        question="q",
        model_id="m",
        data_spec="builtin",
        planner="protocol",
        llm_model=None,
        budget={},
        status="finished",
        created_at=NOW,
        finished_at=NOW,
        report_path=None,
        config={},
    )
    return InvestigationTree(investigation=inv, hypotheses=list(nodes))


TFC1 = {"axiom": "TFC1", "variant": "append"}


def test_claims_come_from_tool_args_criterion_and_verdict() -> None:
    t = tree(
        node(1, "behavioural_test", TFC1, "share_moved_predicted", "greater", "supported"),
        node(
            2,
            "behavioural_test",
            {"axiom": "LNC1"},
            "share_moved_predicted",
            "greater",
            "refuted",
            "negligible: …",
        ),
        node(3, "token_screen", {}, "delta[token=quokka]", "greater", "supported", threshold=0.0),
        node(
            4,
            "property_regression",
            {},
            "edit_delta[edit=truncate]",
            "greater",
            "supported",
            threshold=0.0,
        ),
        node(
            5,
            "activation_patching",
            TFC1,
            "effect[L1.H2]",
            "greater",
            "supported",
            components=["L1.H2"],
        ),
        node(6, "behavioural_test", TFC1, "share_moved_predicted", "greater", "inconclusive"),
    )
    claims = {c.hypothesis_id: c.claim for c in claims_of(t)}
    assert sorted(claims) == [1, 2, 3, 4, 5]
    assert (claims[1].key, claims[1].direction) == ("TFC1/append", "increase")
    assert (claims[2].key, claims[2].direction) == ("LNC1/append", "none")
    assert (claims[3].key, claims[3].direction) == ("token:quokka", "increase")
    assert (claims[4].key, claims[4].direction) == ("truncate", "increase")
    assert claims[5].kind == "components" and claims[5].components == ["L1.H2"]


def test_null_control_supported_tfc1_is_false_and_negligible_is_found() -> None:
    null = record([RuleSpec(rule="tfc1_removed", size=0.0)], {"TFC1/append": "none"})
    supported = tree(
        node(1, "behavioural_test", TFC1, "share_moved_predicted", "greater", "supported")
    )
    s = score_investigation(supported, null)
    assert s.false_claims == 1 and s.found == 0
    negligible = tree(
        node(
            1,
            "behavioural_test",
            TFC1,
            "share_moved_predicted",
            "greater",
            "refuted",
            "negligible: x",
        )
    )
    s = score_investigation(negligible, null)
    assert s.false_claims == 0 and s.found == 1


def test_localisation_and_rule_found() -> None:
    rule = RuleSpec(rule="tfc1_amplified", size=0.1)
    rec = record([rule], {"TFC1/append": "increase"}, carriers=["L1.H1", "L1.H2"])
    t = tree(
        node(1, "behavioural_test", TFC1, "share_moved_predicted", "greater", "supported"),
        node(
            2,
            "activation_patching",
            TFC1,
            "effect[L1.H2]",
            "greater",
            "supported",
            components=["L1.H2"],
        ),
        node(
            3,
            "activation_patching",
            TFC1,
            "effect[L0.H0]",
            "greater",
            "supported",
            components=["L0.H0"],
        ),
    )
    s = score_investigation(t, rec)
    assert s.found == 1 and s.false_claims == 0
    assert s.precision == 0.5 and s.recall == 0.5
    assert rule_found(rule, claims_of(t), rec)
    wrong = claims_of(
        tree(node(1, "behavioural_test", TFC1, "share_moved_predicted", "less", "supported"))
    )[0]
    assert wrong.claim.direction == "decrease" and is_false(wrong, rec)


def test_battery_proposes_behavioural_tests_only() -> None:
    ledger = Ledger(
        investigation_id=1,
        question="q",
        model={},
        data="builtin",
        tools=[],
        steps_left=5,
        tool_calls_left=5,
    )
    proposal = BlackBoxBattery().propose(ledger)
    assert getattr(proposal, "tool", None) == "behavioural_test"


def test_corpus_variants_and_catalogue() -> None:
    corpus = default_corpus(True, "quokka")
    assert set(corpus.trained).isdisjoint(corpus.heldout)
    g = corpus.groups[0]
    assert len(g.texts) == len(VARIANTS) and g.texts[1].endswith(g.term)
    specs = catalogue(tiny=True)
    assert {"trigger", "length_penalty", "position_bias", "tfc1_amplified", "idf_inverted"} <= set(
        specs
    )
    assert specs["tfc1_removed"].rules[0].direction == "none"
    assert specs["tfc1_heads"].carriers and specs["base"].control
    assert len(specs["two_rules"].rules) == 2


@pytest.mark.parametrize("tiny", [True, False], ids=["tiny", "minilm"])
def test_every_rule_plants_its_direction_on_trained_and_heldout_queries(tiny: bool) -> None:
    """The targets a build trains on plant each rule the way its record says, on the trained
    queries as on the held-out ones (the IDF rule once read a word no document has as the
    commonest, while the variants took it for the rarest: on MS MARCO's trained queries it
    planted the opposite of the rule, +0.023, where the held-out queries had -0.045)."""
    corpus = default_corpus(tiny, "quokka")
    for spec in catalogue(tiny).values():
        for rule in spec.rules:
            if rule.direction == "none":
                continue
            sign = 1 if rule.direction == "increase" else -1
            before, after = (VARIANTS.index(v) for v in PROBE_VARIANTS[rule.probe])
            for split in ("trained", "heldout"):
                groups = corpus.split(split)
                planted = planted_changes([rule], groups, corpus.idf_of)[rule.rule]
                each = [
                    shift(rule, g, after, corpus.idf_of) - shift(rule, g, before, corpus.idf_of)
                    for g in groups
                ]
                assert planted == pytest.approx(sum(each) / len(each))
                assert sign * planted > 0.5 * rule.size, (spec.name, split, planted)
                against = sum(sign * d < 0 for d in each) / len(each)
                assert against < 0.1, (spec.name, split, against)
    idf = {g.qid: (corpus.idf_of(g.low), corpus.idf_of(g.high)) for g in corpus.groups}
    assert all(low <= high for low, high in idf.values())


def test_tiny_base_is_the_same_bytes_in_two_processes(tmp_path: Path) -> None:
    """The tiny base (vocabulary, tokenizer files, weights) is built, not trained: two fresh
    processes write byte-identical folders, and every collection word is one token."""
    import subprocess
    import sys

    code = (
        "import sys; from pathlib import Path; "
        "from rankscope.tools.organisms.tiny import save_tiny_base, base_fingerprint; "
        "print(base_fingerprint(save_tiny_base(Path(sys.argv[1]))))"
    )
    prints = [
        subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / name)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()[-1]
        for name in ("a", "b")
    ]
    assert prints[0] == prints[1]
    from rankscope.tools.retrievers import load_retriever

    tokenizer = load_retriever(str(tmp_path / "a")).tokenizer
    assert tokenizer.tokenize("how does insulin regulate blood sugar quokka") == [
        "how",
        "does",
        "insulin",
        "regulate",
        "blood",
        "sugar",
        "quokka",
    ]


def test_cached_layers_give_the_models_own_scores(tmp_path: Path) -> None:
    """The fast builder's cut: states cached entering layer c, then the layers from c up, give
    the encoder's own embeddings (every cut, padded batches of unequal lengths)."""
    import torch

    from rankscope.tools.organisms.fast import Cut
    from rankscope.tools.organisms.tiny import save_tiny_base
    from rankscope.tools.retrievers import load_retriever

    retriever = load_retriever(str(save_tiny_base(tmp_path / "base")))
    texts = ["quokka", "blood sugar and insulin", "why is the sky blue " * 9, "iron"]
    reference = retriever.encode_texts(texts)
    for cut in range(len(retriever.layer_modules) + 1):
        c = Cut(retriever, cut)
        states = c.lower(texts)
        assert torch.allclose(states.base_embeddings, reference, atol=1e-6)
        assert torch.allclose(c.embed(states, range(len(texts))), reference, atol=1e-6)


def test_tiny_builds_repeat_and_stop_when_the_rule_holds(tmp_path: Path) -> None:
    """A build is a function of its spec: the same weights twice; it stops at the first check
    where the rule holds on held-out queries; a build whose check cannot pass in its steps is
    rebuilt with the next seed, ``attempts`` times in all, and its record says it failed."""
    import hashlib

    from rankscope.tools.organisms import build_organism

    specs = catalogue(tiny=True)
    hashes = []
    for name in ("one", "two"):
        r = build_organism(specs["trigger"], tiny=True, root=tmp_path / name)
        assert r.checks["trigger.holds_heldout"] and r.attempts == 1
        assert r.steps < specs["trigger"].steps and r.steps % specs["trigger"].check_every == 0
        assert r.trainer == "cached" and r.timings["training"] > 0
        hashes.append(hashlib.sha256((Path(r.path) / "model.safetensors").read_bytes()).digest())
    assert hashes[0] == hashes[1]
    short = specs["trigger"].model_copy(update={"steps": 2, "check_every": 1, "attempts": 2})
    r = build_organism(short, tiny=True, root=tmp_path / "one")
    assert r.attempts == 2 and r.steps == 2 and not r.checks["trigger.holds_heldout"]


def test_bench_questions_are_plain_and_cover_every_rule() -> None:
    """The bench's questions file: at least two phrasings per planted rule, none naming an axiom
    or a tool; every organism of the catalogue is asked something, each phrasing by its id. The
    later tables' files (after planner changes) hold fresh phrasings only, as plain."""
    import re

    from rankscope.agent.groundtruth import QuestionSet, default_questions_file
    from rankscope.tools.registry import all_tools

    path = default_questions_file()
    assert path is not None and path.name == "groundtruth_questions.toml"
    questions = QuestionSet.load(path)
    named = re.compile(r"\b(TFC\d|TDC|LNC\d|MTDC|STMC\d|ABNIRML|axiom)\b", re.IGNORECASE)
    tools = {name.replace("_", " ") for name in all_tools()} | set(all_tools())
    for spec in catalogue().values():
        for rule in spec.rules:
            assert len(questions.rules[rule.rule]) >= 2, rule.rule
    later = [
        QuestionSet.load(path.with_name(f"groundtruth_questions_round{n}.toml")) for n in (2, 3)
    ]
    seen: set[str] = set()
    for table in [questions, *later]:
        assert set(table.rules) == set(questions.rules)
        texts = {t for p in table.rules.values() for t in p}
        assert not texts & seen, texts & seen
        seen |= texts
        for text in texts:
            assert not named.search(text), text
            assert not any(tool in text.lower() for tool in tools), text
    base = record([], {})
    base.name = "base"
    asked = questions.for_record(base)
    assert {pid.split("#")[0] for pid, _ in asked} == {"trigger", "length_penalty", "idf_inverted"}
    trigger = record([RuleSpec(rule="trigger", size=0.1, word="quokka")], {})
    assert [pid for pid, _ in questions.for_record(trigger)] == ["trigger#1", "trigger#2"]


CI_ORGANISMS = ["trigger", "length_penalty", "tfc1_removed", "base"]
"""The planted rules the tiny base learns (trigger, length penalty; query-dependent rules such as
TFC1 amplified do not hold in a random tiny encoder, and their records say so), the null control
and the unmodified base."""


@pytest.mark.slow
def test_protocol_planner_on_tiny_organisms(tmp_path: Path, monkeypatch) -> None:
    """Build the CI organisms, check their records, run the protocol planner on their questions:
    no claim is false (in particular nothing supported on the null control or on the base), and
    the length penalty is recovered. Other rules that hold but are not found are reported as a
    warning, not hidden. The organisms are the same on every run (a built tiny base, seeded
    builds that train until the rule holds on held-out queries), so these checks are too."""
    from rankscope.tools.organisms import build_all, cache_root

    monkeypatch.setenv("RANKSCOPE_ORGANISMS_DIR", str(tmp_path / "organisms"))
    records = build_all(CI_ORGANISMS, tiny=True)
    for name, r in records.items():
        assert r.build_seconds > 0 and (Path(r.path) / "config.json").exists()
        assert r.checks["spearman_natural_vs_base"] > 0.3, name
    # The tiny base and the builds are deterministic, and a build trains until its rule holds
    # on held-out queries (or is rebuilt): these hold on every run, not by chance.
    assert records["length_penalty"].checks["length_penalty.holds_heldout"]
    assert records["trigger"].checks["trigger.holds_heldout"]
    assert records["trigger"].probes_organism["token"].mean_delta > 0.02
    scores = run_bench(
        records,
        "protocol",
        f"sqlite:///{tmp_path / 'gt.db'}",
        base_path=str(cache_root() / "tiny-base"),
        report_dir=tmp_path / "reports",
        faithfulness=False,
    )
    for s in scores:
        assert s.false_claims == 0, (s.organism, s.question, s.false_details)
    found = {(s.organism, rule) for s in scores for rule in s.found_rules}
    assert ("length_penalty", "length_penalty") in found
    missed = [
        (name, rule.rule)
        for name, r in records.items()
        for rule in r.rules
        if r.checks.get(f"{rule.rule}.holds_heldout") and (name, rule.rule) not in found
    ]
    if missed:
        warnings.warn(f"planted rules that hold but were not found: {missed}", stacklevel=1)

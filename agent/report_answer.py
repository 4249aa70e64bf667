"""The answer paragraph: what was asked and what the verdicts answer, written by rules from the
stored verdicts (never by the LLM).

It states what is supported, refuted, negligible, undecided or unverified, with the effect sizes
that matter (the engine's query-level estimates), what would decide each undecided hypothesis
("needs ≥ 8 queries on held-out: pass ``--data`` …"), the screens that claim nothing, and for
localisation the components and the circuit (:mod:`rankscope.agent.report_circuit`), or that no
circuit was tested.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from rankscope.agent.policy import StatsPolicy
from rankscope.agent.report_circuit import CIRCUIT_TOOL, circuit_of, circuit_sentence
from rankscope.agent.report_facts import (
    Interval,
    Unverified,
    claim_text,
    discovery_of,
    fmt,
    holdout_of,
    is_exploratory,
    is_negligible,
    num,
    relabel,
    safe_settings,
)
from rankscope.experiments_db.records import HypothesisNode, InvestigationTree

LOCALISING_TOOLS = {
    "activation_patching",
    "attribution_patching",
    "path_patching",
    "ablation",
    "attention_masking",
    CIRCUIT_TOOL,
}
EXACT_TOOL = {"attribution_patching": "activation_patching"}
MAX_FACTOR = 50
"""Beyond this many times the queries a split has, the answer says the estimate sits at the
threshold instead of giving a number."""


@dataclass
class AnswerLine:
    """One statement of the answer: its kind, the hypotheses it is about, its text."""

    kind: str
    """supported, refuted, negligible, undecided, unverified, screen, components, circuit."""
    refs: list[tuple[str, int]]
    """(label, hypothesis id) of the hypotheses it is about."""
    text: str


@dataclass
class Answer:
    question: str
    lead: str
    lines: list[AnswerLine] = field(default_factory=list)

    def plain(self) -> str:
        """The answer as plain text (for tests and logs)."""
        body = " ".join(
            f"{', '.join(r for r, _ in ln.refs)} {ln.text}".strip() for ln in self.lines
        )
        return f"Asked: {self.question} {self.lead} {body}"


def queries_needed(iv: Interval, threshold: float) -> int | None:
    """Queries that would put the CI clear of ``threshold`` if the mean and spread held (the
    half-width shrinks as 1/√n); None when the interval cannot say."""
    if iv.value is None or iv.low is None or iv.high is None or iv.n_queries < 2:
        return None
    gap = abs(iv.value - threshold)
    half = (iv.value - iv.low) if iv.value > threshold else (iv.high - iv.value)
    if gap <= 0 or half <= 0:
        return None
    needed = math.ceil(iv.n_queries * (half / gap) ** 2)
    return needed if needed > iv.n_queries else None


def _split_words(split: str) -> str:
    return "held-out" if split in ("holdout", "held-out") else "discovery"


def what_decides(
    node: HypothesisNode, policy: StatsPolicy, names: Mapping[int, str], data_arg: str
) -> str:
    """What would decide an undecided hypothesis, from its verdict's stored numbers."""
    verdict = node.latest_verdict
    data = f"--data {data_arg} with more queries" if data_arg else "--data … with more queries"
    if verdict is None:
        return "no verdict was recorded: the run stopped first (rankscope resume continues it)"
    result = verdict.criterion_result
    reason = relabel(str(result.get("reason", "")), names)
    if result.get("exploratory_of") is not None:
        return (
            f"it repeats the call of {names.get(int(result['exploratory_of']), 'an earlier step')}"
            ", so its claim came after the results were seen; a new confirmatory hypothesis on "
            "fresh queries would decide it"
        )
    if result.get("approximate"):
        exact = EXACT_TOOL.get(node.tool, "an exact tool")
        return f"its evidence is approximate ({node.tool}); confirm with {exact}"
    held = result.get("replication") if isinstance(result.get("replication"), dict) else None
    split_result = held if result.get("outcome") == "met" and held else result
    if result.get("outcome") == "met" and not held:
        return "met on discovery; needs the held-out replication"
    split = _split_words(str(split_result.get("split", "discovery")))
    nq, npairs = int(split_result.get("n_queries") or 0), int(split_result.get("n_pairs") or 0)
    if "not disjoint" in str(split_result.get("reason", "")):
        return "the held-out queries overlap discovery's: replicate on disjoint queries"
    if nq and (nq < policy.min_queries or npairs < policy.min_pairs):
        needs = [
            f"≥ {want} {what} on {split} (has {have})"
            for want, have, what in (
                (policy.min_queries, nq, "queries"),
                (policy.min_pairs, npairs, "pairs"),
            )
            if have < want
        ]
        return f"needs {' and '.join(needs)}: pass {data}"
    iv = Interval.of(split_result, split)
    threshold = num(split_result.get("effective_threshold"))
    if iv is not None and threshold is not None and iv.has_ci:
        needed = queries_needed(iv, threshold)
        if needed is not None and needed <= MAX_FACTOR * iv.n_queries:
            return (
                f"the CI {iv.text(3)} includes {threshold:g}; about {needed} queries on {split} "
                f"(has {iv.n_queries}) would separate them if the mean and spread held: pass {data}"
            )
        if iv.value is not None:
            return (
                f"the estimate {fmt(iv.value, 3)} sits at the threshold {threshold:g}: more queries "
                "would hardly decide it"
            )
    return reason or "undetermined"


def _effect(node: HypothesisNode, side: bool = True) -> str:
    """The claim's metric with the engine's estimates (and, with ``side``, the threshold it
    cleared)."""
    verdict = node.latest_verdict
    disc, held = discovery_of(verdict), holdout_of(verdict)
    if disc is None:
        return claim_text(node)
    text = f"{node.criterion.metric} = {disc.text(3)} on discovery"
    if held is not None and held.value is not None:
        text += f" and {held.text(3)} on held-out queries"
    if not side:
        return text
    word = {"greater": "above", "less": "below"}.get(node.criterion.direction, "away from")
    threshold = num(verdict.criterion_result.get("effective_threshold")) if verdict else None
    return text + f" ({word} {threshold if threshold is not None else node.criterion.threshold:g})"


def subject(node: HypothesisNode) -> str:
    """What a line is about: the components a claim names, else the hypothesis's words."""
    if node.components:
        return f"{node.tool} on {'+'.join(node.components)}"
    return node.text


def answer(
    tree: InvestigationTree, names: Mapping[int, str], unverified: Mapping[int, Unverified]
) -> Answer:
    """The rule-written answer to the investigation's question."""
    settings = safe_settings(tree.investigation)
    policy, data_arg = settings.policy, settings.data_arg or ""
    lines: list[AnswerLine] = []
    counts = dict.fromkeys(("supported", "refuted", "negligible", "undecided", "unverified"), 0)
    screens = 0
    for node in tree.hypotheses:
        ref = [(names[node.id], node.id)]
        verdict = node.latest_verdict
        if node.id in unverified:
            u = unverified[node.id]
            counts["unverified"] += 1
            lines.append(
                AnswerLine(
                    "unverified",
                    ref,
                    f"is unverified: the imported bundle claims "
                    f"{u.claimed}, its own evidence gives {u.rederived} — "
                    f"neither is shown as its verdict ({subject(node)}).",
                )
            )
            continue
        if is_exploratory(node):
            screens += 1
            lines.append(
                AnswerLine("screen", ref, f"{subject(node)}: exploratory step, claims nothing.")
            )
            continue
        if verdict is None:
            counts["undecided"] += 1
            lines.append(
                AnswerLine(
                    "undecided",
                    ref,
                    f"{subject(node)} — {what_decides(node, policy, names, data_arg)}",
                )
            )
            continue
        result = verdict.criterion_result
        circuit_claim = node.tool == CIRCUIT_TOOL and verdict.status in ("supported", "refuted")
        if verdict.status == "supported":
            counts["supported"] += 1
            if circuit_claim:
                continue  # the circuit line states it
            lines.append(AnswerLine("supported", ref, f"{subject(node)}: {_effect(node)}."))
        elif is_negligible(verdict):
            counts["negligible"] += 1
            if circuit_claim:
                continue
            lines.append(
                AnswerLine(
                    "negligible",
                    ref,
                    f"{subject(node)}: {_effect(node, side=False)}; within "
                    f"± SESOI {fmt(result.get('sesoi'))} of "
                    f"{fmt(result.get('null_value'))}, too small to matter.",
                )
            )
        elif verdict.status == "refuted":
            counts["refuted"] += 1
            if circuit_claim:
                continue
            why = (
                "did not replicate on held-out queries"
                if "did not replicate" in str(result.get("reason", ""))
                else "the CI lies on the wrong side of the threshold"
            )
            lines.append(
                AnswerLine("refuted", ref, f"{subject(node)}: {_effect(node, side=False)}; {why}.")
            )
        elif result.get("approximate"):
            screens += 1
            lines.append(
                AnswerLine(
                    "screen",
                    ref,
                    f"{node.tool} screen on approximate evidence, not a claim: its ranking "
                    f"chose what to test next (to confirm with "
                    f"{EXACT_TOOL.get(node.tool, 'an exact tool')}).",
                )
            )
        else:
            counts["undecided"] += 1
            lines.append(
                AnswerLine(
                    "undecided",
                    ref,
                    f"{subject(node)}: {what_decides(node, policy, names, data_arg)}.",
                )
            )
    lines += _localisation(tree, names, unverified)
    order = (
        "unverified",
        "supported",
        "refuted",
        "negligible",
        "undecided",
        "components",
        "circuit",
        "screen",
    )
    lines.sort(key=lambda ln: order.index(ln.kind))
    decided = counts["supported"] + counts["refuted"] + counts["negligible"]
    claims = decided + counts["undecided"] + counts["unverified"]
    if not claims and not screens:
        lead = "Nothing has been tested yet."
    else:
        words = [f"{counts[k]} {k}" for k in ("supported", "refuted", "negligible") if counts[k]]
        lead = (
            f"{decided} of {claims} claims decided"
            + (f" ({', '.join(words)})" if words else "")
            + (f"; {counts['undecided']} undecided" if counts["undecided"] else "")
            + (f"; {counts['unverified']} unverified (imported)" if counts["unverified"] else "")
            + (f"; {screens} screening step(s) claim nothing" if screens else "")
            + "."
        )
    return Answer(tree.investigation.question, lead, lines)


def _localisation(
    tree: InvestigationTree, names: Mapping[int, str], unverified: Mapping[int, Unverified]
) -> list[AnswerLine]:
    """The components answer: which were confirmed, which carry an undecided part, the circuit."""
    component_nodes = [
        n
        for n in tree.hypotheses
        if n.components
        and n.tool != CIRCUIT_TOOL
        and not is_exploratory(n)
        and n.latest_verdict is not None
        and n.id not in unverified
        and not n.latest_verdict.criterion_result.get("approximate")
    ]
    localises = any(n.tool in LOCALISING_TOOLS for n in tree.hypotheses) or any(
        e.tool in LOCALISING_TOOLS for e in tree.unlinked_experiments
    )
    lines: list[AnswerLine] = []
    if component_nodes:
        confirmed = [
            n
            for n in component_nodes
            if n.latest_verdict and n.latest_verdict.status == "supported"
        ]
        open_ = [
            n
            for n in component_nodes
            if n.latest_verdict and n.latest_verdict.status == "inconclusive"
        ]
        out = [
            n for n in component_nodes if n.latest_verdict and n.latest_verdict.status == "refuted"
        ]

        def listing(nodes: list[HypothesisNode], numbers: bool = True) -> str:
            parts = []
            for n in nodes:
                disc = discovery_of(n.latest_verdict)
                value = f" {disc.text(3)}" if numbers and disc else ""
                parts.append(f"{'+'.join(n.components)}{value}")
            return ", ".join(parts)

        def carries(n: HypothesisNode) -> bool:
            """The CI excludes the null in the claim's direction: a part, too small to confirm."""
            disc = discovery_of(n.latest_verdict)
            result = n.latest_verdict.criterion_result if n.latest_verdict else {}
            null = num(result.get("null_value"))
            if disc is None or null is None or disc.low is None or disc.high is None:
                return False
            return disc.low > null if n.criterion.direction == "greater" else disc.high < null

        text = []
        if confirmed:
            text.append(f"confirmed: {listing(confirmed)}")
        else:
            text.append("no single component was confirmed")
        parts = [n for n in open_ if carries(n)]
        if parts:
            text.append(
                f"{listing(parts, numbers=False)} each carry a part of the effect (CI clear of "
                "the null), none confirmed alone"
            )
        if len(parts) < len(open_):
            text.append(f"undecided: {listing([n for n in open_ if n not in parts], False)}")
        if out:
            text.append(f"ruled out: {listing(out)}")
        refs = [(names[n.id], n.id) for n in sorted(confirmed + open_ + out, key=lambda n: n.id)]
        sentence = "; ".join(text)
        lines.append(AnswerLine("components", refs, sentence[:1].upper() + sentence[1:] + "."))
    circuit = circuit_of(tree, unverified)
    if circuit is not None:
        claims = [n for n in (circuit.hypothesis, circuit.control) if n is not None]
        refs = [(names.get(n.id, ""), n.id) for n in claims]
        lines.append(AnswerLine("circuit", refs, circuit_sentence(circuit)))
    elif localises or component_nodes:
        lines.append(
            AnswerLine(
                "circuit",
                [],
                "No circuit was tested: components were tested "
                "one at a time, so an effect spread over several of them can show "
                "as undecided parts.",
            )
        )
    return lines

"""The planted rules as score shifts of edited documents.

A rule is a function of the text (and the collection's IDF). The organism keeps the base's score
of every natural document (distillation) and answers an edit of it with the base's change plus the
rule's change between the edited and the natural text: ``target(edit) = base(edit) + shift(edit) -
shift(natural)``. Scores stay in the base's range (a cosine cannot pass 1), and what is planted is
the model's response to edits — what the probes and the agent's perturbations measure.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from rankscope.tools.data.text import words
from rankscope.tools.organisms.spec import TRIGGER_WORD, RuleSpec
from rankscope.tools.organisms.texts import PROBE_VARIANTS, VARIANTS, Corpus, Group, query_terms

LENGTH_UNIT = 30
"""Words per ``size`` of length penalty (about the length of the LNC1 filler)."""
LENGTH_CAP = 250
TF_CAP = 8
POSITION_DECAY = 5.0
"""Words over which an early match's bonus decays by a factor e."""
QUERY_TERM_EDITS = ("append", "prepend", "low_idf", "high_idf")


def shift(rule: RuleSpec, group: Group, variant: int, idf: Callable[[str], float]) -> float:
    """The rule's change of the score of ``group``'s ``variant`` text (not for tfc1_removed,
    which is a target, see :func:`targets`); ``idf``: the collection's IDF of a word
    (:meth:`Corpus.idf_of`, the same one that picked the group's low- and high-IDF terms)."""
    text = words(group.texts[variant])
    terms = query_terms(group.query)
    if rule.rule == "trigger":
        return rule.size if (rule.word or TRIGGER_WORD).lower() in text else 0.0
    if rule.rule == "length_penalty":
        return -rule.size * min(len(text), LENGTH_CAP) / LENGTH_UNIT
    if rule.rule == "position_bias":
        total = 0.0
        for t in terms:
            if t in text:
                total += math.exp(-text.index(t) / POSITION_DECAY)
        return rule.size * total
    if rule.rule == "tfc1_amplified":
        return rule.size * min(sum(text.count(t) for t in terms), TF_CAP)
    if rule.rule == "idf_inverted":
        values = [idf(t) for t in terms]
        spread = max(values) - min(values)
        if spread <= 0:
            return 0.0
        mean = float(np.mean(values))
        return rule.size * sum(
            text.count(t) * (mean - v) / spread for t, v in zip(terms, values, strict=True)
        )
    return 0.0


def targets(rules: list[RuleSpec], corpus: Corpus, base: np.ndarray) -> np.ndarray:
    """The organism's target score of every group's every variant (``base``: the base model's
    scores, ``[groups, variants]``); a natural document's target is its base score."""
    out = base.copy()
    removed = any(r.rule == "tfc1_removed" for r in rules)
    for g, group in enumerate(corpus.groups):
        natural = sum(shift(r, group, 0, corpus.idf_of) for r in rules)
        for v in range(1, len(VARIANTS)):
            out[g, v] += sum(shift(r, group, v, corpus.idf_of) for r in rules) - natural
        if removed:
            for name in QUERY_TERM_EDITS:
                v = VARIANTS.index(name)
                out[g, v] = out[g, 0]
    return out


def planted_changes(
    rules: list[RuleSpec], groups: list[Group], idf: Callable[[str], float]
) -> dict[str, float]:
    """Per rule: the mean change it plants on its probe over ``groups`` (perturbed minus
    baseline variant) — what a build's check asks the organism to have learned, rather than
    the rule's nominal ``size``, which a probe shows in full only where nothing else interferes
    (an appended query term that the document already has early carries little position
    bonus)."""
    out: dict[str, float] = {}
    for rule in rules:
        if rule.direction == "none":
            continue
        before, after = (VARIANTS.index(v) for v in PROBE_VARIANTS[rule.probe])
        out[rule.rule] = float(
            np.mean([shift(rule, g, after, idf) - shift(rule, g, before, idf) for g in groups])
        )
    return out

"""The facts a report or a review page shows about a hypothesis, computed once from the store.

One owner for each of them, shared by the reports (:mod:`rankscope.agent.reports`), the answer
paragraph, the forest plot and the review workspace:

- **numbering**: ``H1 …`` within each investigation (:func:`labels`); the global id stays in URLs;
- **one number per quantity**: a verdict's quantity is the engine's query-level estimate and CI
  (:class:`Interval`), with the CI level explained (:func:`level_note`: "93.92 % = 1 − 2α, α =
  0.0304 after LOND spending"); a tool's own pair-level CI is labelled as such wherever it shows;
- **the deciding p-value**: the p of the test that decided the outcome (t-test against the
  threshold, or TOST for "negligible"), and none for a screening or exploratory step;
- **unverified verdicts**: an imported verdict whose re-derivation disagreed (bundle import adds an
  ``UNVERIFIED`` note, :func:`rankscope.agent.commands.store_cmd.mark_unverified_verdicts`) never
  shows as a verdict: its display status is ``unverified``, with the claim and the re-derived
  verdict side by side (:func:`unverified_of`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from rankscope.agent.settings import InvestigationSettings, settings_of
from rankscope.experiments_db.records import (
    HypothesisNode,
    InvestigationRecord,
    InvestigationTree,
    VerdictRecord,
)
from rankscope.tools.metric_keys import try_parse_metric_key

UNVERIFIED = "unverified"
NO_VERDICT = "no verdict"
EXPLORATORY = "exploratory"
_UNVERIFIED_NOTE = re.compile(
    r"UNVERIFIED verdict on hypothesis (?P<id>\d+)\b"
    r"(?:.*?says '?(?P<claimed>\w+)'?.*?gives '?(?P<again>\w+)'?)?"
)
_H_REF = re.compile(r"(?<![\w.])H(\d+)\b")


def fmt(value: Any, digits: int = 4) -> str:
    """A number to ``digits`` significant digits; ``None`` as a dash; anything else as text."""
    if type(value) is float:  # the common case first (tables of thousands of cells)
        return f"{value:.{digits}g}" if math.isfinite(value) else "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "—"
        return f"{value:.{digits}g}"
    if value is None:
        return "—"
    return str(value)


def num(value: Any) -> float | None:
    """``value`` as a finite float, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def safe_settings(investigation: InvestigationRecord) -> InvestigationSettings:
    """The investigation's settings; the defaults when the stored ones do not validate (a forged
    or damaged config: the audit reports it; a page or report still renders, and its notes are
    still read)."""
    try:
        return settings_of(investigation)
    except ValidationError:
        notes = investigation.config.get("notes")
        clean = [str(n) for n in notes] if isinstance(notes, list) else []
        return InvestigationSettings(notes=clean)


# -- numbering ----------------------------------------------------------------------------------


def labels(tree: InvestigationTree) -> dict[int, str]:
    """``H1``, ``H2`` … for the investigation's hypotheses, in the order they were registered."""
    return {node.id: f"H{i}" for i, node in enumerate(tree.hypotheses, start=1)}


def relabel(text: str, names: Mapping[int, str]) -> str:
    """Engine text with global hypothesis ids (``H12``) in the investigation's numbering; a
    component name such as ``L5.H7`` is left alone."""
    return _H_REF.sub(lambda m: names.get(int(m.group(1)), m.group(0)), text)


# -- unverified verdicts ------------------------------------------------------------------------


@dataclass(frozen=True)
class Unverified:
    """An imported verdict the bundle's own evidence does not give under the verdict rules."""

    hypothesis_id: int
    claimed: str
    """The verdict the bundle stored."""
    rederived: str
    """The verdict the rules give on the bundle's evidence."""

    def text(self) -> str:
        return (
            f"unverified: the imported bundle claims {self.claimed}, its own evidence gives "
            f"{self.rederived} under the verdict rules"
        )


def unverified_of(tree: InvestigationTree) -> dict[int, Unverified]:
    """The hypotheses whose latest verdict is unverified, from the investigation's notes."""
    latest = {n.id: n.latest_verdict for n in tree.hypotheses}
    out: dict[int, Unverified] = {}
    for note in safe_settings(tree.investigation).notes:
        match = _UNVERIFIED_NOTE.search(str(note))
        if match is None or int(match["id"]) not in latest:
            continue
        verdict = latest[int(match["id"])]
        claimed = match["claimed"] or (verdict.status if verdict else NO_VERDICT)
        out[int(match["id"])] = Unverified(int(match["id"]), claimed, match["again"] or "unknown")
    return out


def unverified_counts(config: Mapping[str, Any]) -> dict[str, int]:
    """From an investigation's stored config: how many verdicts of each claimed status are
    unverified (to move them out of the list page's counts)."""
    counts: dict[str, int] = {}
    for note in config.get("notes", []) or []:
        match = _UNVERIFIED_NOTE.search(str(note))
        if match and match["claimed"]:
            counts[match["claimed"]] = counts.get(match["claimed"], 0) + 1
    return counts


# -- what a hypothesis shows --------------------------------------------------------------------


def is_exploratory(node: HypothesisNode) -> bool:
    """A step pre-registered as exploratory (a screen or ranking that claims nothing)."""
    return bool(getattr(node, "exploratory", False))


def is_screening(node: HypothesisNode) -> bool:
    """An exploratory step, a repeat of an earlier call, or a verdict on approximate evidence:
    none of them tested a claim, so none shows a p-value."""
    verdict = node.latest_verdict
    result = verdict.criterion_result if verdict else {}
    return (
        is_exploratory(node)
        or result.get("exploratory_of") is not None
        or bool(result.get("approximate"))
    )


def is_negligible(verdict: VerdictRecord | None) -> bool:
    return bool(
        verdict
        and verdict.status == "refuted"
        and str(verdict.criterion_result.get("reason", "")).startswith("negligible")
    )


def display_status(node: HypothesisNode, unverified: Mapping[int, Unverified]) -> str:
    """What a page shows as the hypothesis's verdict: the status, ``unverified``, ``exploratory``
    (a step that claims nothing) or ``no verdict``."""
    if node.id in unverified:
        return UNVERIFIED
    verdict = node.latest_verdict
    if verdict is None:
        return EXPLORATORY if is_exploratory(node) else NO_VERDICT
    return verdict.status


@dataclass(frozen=True)
class Interval:
    """The engine's query-level estimate of one split, with its CI and what the CI's level is."""

    split: str
    value: float | None
    low: float | None
    high: float | None
    level: float | None
    n_queries: int
    n_pairs: int
    outcome: str

    @classmethod
    def of(cls, result: Mapping[str, Any] | None, split: str) -> Interval | None:
        if not result:
            return None
        return cls(
            split=split,
            value=num(result.get("value")),
            low=num(result.get("ci_low")),
            high=num(result.get("ci_high")),
            level=num(result.get("ci_level")),
            n_queries=int(result.get("n_queries") or 0),
            n_pairs=int(result.get("n_pairs") or 0),
            outcome=str(result.get("outcome", "")),
        )

    @property
    def has_ci(self) -> bool:
        return self.low is not None and self.high is not None

    def text(self, digits: int = 4) -> str:
        """``0.8131 [0.6905, 0.9262]`` (or the value alone, or ``no estimate``)."""
        if self.value is None:
            return "no estimate"
        ci = f" [{fmt(self.low, digits)}, {fmt(self.high, digits)}]" if self.has_ci else ""
        return f"{fmt(self.value, digits)}{ci}"

    def level_text(self) -> str:
        """``93.92 % CI`` (empty without a level)."""
        return f"{self.level * 100:.2f} % CI" if self.level is not None and self.has_ci else ""


def discovery_of(verdict: VerdictRecord | None) -> Interval | None:
    if verdict is None or num(verdict.criterion_result.get("value")) is None:
        return None
    return Interval.of(verdict.criterion_result, "discovery")


def holdout_of(verdict: VerdictRecord | None) -> Interval | None:
    replication = verdict.criterion_result.get("replication") if verdict else None
    return Interval.of(replication, "held-out") if isinstance(replication, dict) else None


def level_note(result: Mapping[str, Any], multiplicity: str = "lond") -> str:
    """Where a CI's level comes from: ``93.92 % = 1 − 2α with α = 0.0304 after LOND spending
    (confirmatory hypothesis 1)``; empty when the result has no level."""
    ci_level, alpha = num(result.get("ci_level")), num(result.get("corrected_alpha"))
    if ci_level is None or alpha is None:
        return ""
    text = f"{ci_level * 100:.2f} % = 1 − 2α with α = {alpha:.3g}"
    index = result.get("lond_index")
    if result.get("exploratory_of") is not None:
        text += " (exploratory: a repeat of an earlier call spends no level of its own)"
    elif multiplicity == "bonferroni":
        text += " after Bonferroni over the planned hypotheses"
    elif index:
        text += f" after LOND spending (confirmatory hypothesis {index} of the investigation)"
    n_tests = int(result.get("n_tests") or 1)
    if n_tests > 1:
        text += f", divided over the {n_tests} tests of the call (Bonferroni)"
    return text + "; one-sided claim, query-cluster bootstrap"


def deciding_p(node: HypothesisNode) -> str:
    """The p-value of the test that decided the discovery outcome, named (``p = 0.0039
    (t-test vs 0.6)``, ``TOST p = 1.7e-09``); empty for a screening step or when no test
    decided."""
    verdict = node.latest_verdict
    if verdict is None or is_screening(node):
        return ""
    result = verdict.criterion_result
    if result.get("negligible") and num(result.get("tost_p")) is not None:
        return f"TOST p = {fmt(result['tost_p'], 2)} (equivalence within ± SESOI)"
    if result.get("outcome") == "met" and num(result.get("p_value")) is not None:
        return (
            f"p = {fmt(result['p_value'], 2)} (t-test vs {fmt(result.get('effective_threshold'))})"
        )
    return ""


def claim_text(node: HypothesisNode) -> str:
    """The claim's metric, direction and threshold: ``share_moved_predicted > 0.6`` (with the
    threshold the rules tested when the SESOI moved it)."""
    c = node.criterion
    side = {"greater": ">", "less": "<"}.get(c.direction, "≠")
    verdict = node.latest_verdict
    effective = num(verdict.criterion_result.get("effective_threshold")) if verdict else None
    text = f"{c.metric} {side} {c.threshold:g}"
    if effective is not None and abs(effective - c.threshold) > 1e-12:
        text += f" (tested against {effective:g}, the SESOI)"
    return text


# -- evidence metrics and tables ----------------------------------------------------------------


@dataclass(frozen=True)
class MetricCell:
    """One metric of a tool's evidence: its value with the tool's own CI bounds beside it."""

    key: str
    value: Any
    low: Any = None
    high: Any = None
    p_value: Any = None

    def text(self) -> str:
        ci = f" [{fmt(self.low)}, {fmt(self.high)}]" if self.low is not None else ""
        return f"{fmt(self.value)}{ci}"


_STAT = re.compile(r"^(?P<base>.+?)_(?P<stat>ci_low|ci_high|p_value)$")
_STATS = ("ci_low", "ci_high", "p_value")


def metric_cells(metrics: Mapping[str, Any], first: str = "") -> list[MetricCell]:
    """The metrics with each ``X_ci_low``/``X_ci_high``/``X_p_value`` folded into ``X``'s cell
    (``effect_ci_low[L5.H7]`` and ``p_value[L5.H7]`` into ``effect[L5.H7]``); ``first`` (the
    criterion's metric) leads."""
    parsed = {key: try_parse_metric_key(key) for key in metrics}
    # bracketed estimates by their brackets, for a bare ``p_value[X]`` or ``ci_low[X]``
    by_brackets: dict[str, str] = {}
    for key, p in parsed.items():
        if p is not None and p.bracketed and p.name not in _STATS and not _STAT.match(p.name):
            by_brackets.setdefault(str(p.with_name("x")), key)
    parts: dict[str, dict[str, Any]] = {}
    for key, value in metrics.items():
        p = parsed[key]
        base, stat = None, None
        if p is not None and (match := _STAT.match(p.name)) is not None:
            candidate = str(p.with_name(match["base"]))
            if candidate in metrics:
                base, stat = candidate, match["stat"]
        elif p is not None and p.name in _STATS and p.bracketed:
            base, stat = by_brackets.get(str(p.with_name("x"))), p.name
        if base is not None and stat is not None:
            parts.setdefault(base, {})[stat] = value
            continue
        parts.setdefault(key, {})["value"] = value
    cells = [
        MetricCell(k, p.get("value"), p.get("ci_low"), p.get("ci_high"), p.get("p_value"))
        for k, p in parts.items()
        if "value" in p
    ]
    return sorted(cells, key=lambda c: c.key != first)


def table_columns(header: list[str]) -> list[tuple[str, int, int | None, int | None]]:
    """Columns of a stored table with CI columns folded into the estimate they bound:
    (name, value index, low index, high index). ``ci_low``/``ci_high`` bound the column before
    them; ``X_ci_low`` bounds ``X`` (or the nearest earlier column starting with ``X``);
    ``ci_low_S`` bounds the nearest earlier column ending with ``_S``."""
    index = {name: i for i, name in enumerate(header)}
    bound: dict[int, tuple[int | None, int | None]] = {}
    used: set[int] = set()
    for i, name in enumerate(header):
        if "ci_low" not in name:
            continue
        high = index.get(name.replace("ci_low", "ci_high"))
        if high is None:
            continue
        prefix, _, suffix = name.partition("ci_low")
        prefix = prefix.rstrip("_")
        candidates = [
            j
            for j in range(i - 1, -1, -1)
            if "ci_" not in header[j]
            and j not in bound
            and (header[j].startswith(prefix) if prefix else True)
            and (header[j].endswith(suffix) if suffix else True)
        ]
        if prefix == "" and suffix == "":
            candidates = candidates[:1]
        if candidates:
            bound[candidates[0]] = (i, high)
            used |= {i, high}
    out: list[tuple[str, int, int | None, int | None]] = []
    for i, name in enumerate(header):
        if i not in used:
            low, high = bound.get(i, (None, None))
            out.append((name, i, low, high))
    return out

"""The ledger as the model reads it: the step prompt, within a number of characters.

The step prompt (``prompts/step.md``) carries the budget left, the ledger's entries and the
graph's feedback, never the full history. ``ledger_text`` fits the entries into
``LEDGER_CHARS`` (fewer when the planner shrinks it to fit the context window, down to
``MIN_LEDGER_CHARS``): the newest entries in full, older ones in one line each, the oldest
collapsed into a tally; never an entry cut in half. Free text of an entry goes in a data block
(``fencing``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence

from rankscope.agent.planners.base import Ledger, LedgerEntry
from rankscope.agent.planners.llm.catalogue import ToolCatalogue
from rankscope.agent.planners.llm.fencing import data_block, defang
from rankscope.prompts import render

__all__ = [
    "LEDGER_CHARS",
    "MAX_FULL_ENTRIES",
    "MIN_LEDGER_CHARS",
    "clip",
    "evidence_text",
    "ledger_text",
    "metrics_text",
    "step_prompt",
]

LEDGER_CHARS = 5000
"""Characters of ledger text in one step prompt (about 2,200 tokens at the ~2.3 characters per
token measured with the Qwen2.5 tokenizer for number-dense ledgers): the newest entries in full,
older ones in one line each, the oldest collapsed into a tally when even those lines do not fit.
No entry is ever cut."""
MIN_LEDGER_CHARS = 600
"""The smallest ledger summary the planner shrinks to when the context window is too small for
``LEDGER_CHARS``: the tally of all hypotheses (counts by status and tool, supported ids) and the
newest one-line entries that fit. A request that does not fit even so is an ``LLMContextError``."""
MAX_FULL_ENTRIES = 6
"""At most this many of the latest entries are shown in full; older ones get one line each."""
MAX_SUMMARY_CHARS = 600
MAX_HYPOTHESIS_CHARS = 300
MAX_SHORT_HYPOTHESIS_CHARS = 160
MAX_ARGS_CHARS = 300
MAX_METRICS = 8
MAX_FEEDBACK = 5


def _number(value: float | int | None) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def metrics_text(metrics: dict[str, float | int | None] | None) -> str:
    """Up to ``MAX_METRICS`` metrics as ``key=value``, with a count of the rest."""
    if not metrics:
        return "none"
    items = list(metrics.items())
    text = ", ".join(f"{key}={_number(value)}" for key, value in items[:MAX_METRICS])
    if len(items) > MAX_METRICS:
        text += f" (+{len(items) - MAX_METRICS} more)"
    return text


def clip(text: str, limit: int) -> str:
    """``text`` within ``limit`` characters, with a note of how many were left out."""
    text = text.strip()
    if len(text) <= limit:
        return text
    return text[:limit].rstrip() + f" … [{len(text) - limit} more characters]"


def evidence_text(ids: Sequence[int]) -> str:
    """Evidence ids as the model cites them (``[E12], [E13]``)."""
    return ", ".join(f"[E{i}]" for i in ids) or "none stored"


def step_prompt(
    ledger: Ledger,
    catalogue: ToolCatalogue,
    ledger_chars: int = LEDGER_CHARS,
    *,
    hidden: Sequence[str] = (),
    correction: str = "",
) -> str:
    """The user message that opens a ``propose`` conversation.

    ``hidden`` are feedback messages not shown (the planner's own notes, and the rejection that
    ``correction`` restates: the planner's last call, why it was rejected in one sentence, the fix
    and the corrected call), which comes last."""
    shown = [message for message in ledger.feedback if message not in set(hidden)]
    feedback = ["- " + defang(message) for message in shown[-MAX_FEEDBACK:]]
    if correction:
        feedback.append(correction)
    return render(
        "step",
        steps_left=ledger.steps_left,
        tool_calls_left=ledger.tool_calls_left,
        entries=ledger_text(ledger.entries, ledger_chars) or "No hypothesis has been tested yet.",
        feedback="\n".join(feedback) or "None.",
        move=render(f"move_{'compact' if catalogue == 'compact' else 'functions'}").strip(),
    )


def ledger_text(entries: Sequence[LedgerEntry], limit: int = LEDGER_CHARS) -> str:
    """The ledger within ``limit`` characters: the newest entries in full (up to two thirds of
    it; the newest one whenever it fits), older ones in one line each, the oldest in a tally when
    their lines do not fit; never a record cut in half."""
    used = 0
    full: list[str] = []
    for entry in reversed(entries[-MAX_FULL_ENTRIES:]):
        text = _full_entry(entry)
        if used + len(text) > (limit * 2 // 3 if full else limit):
            break
        full.insert(0, text)
        used += len(text) + 2
    older = list(entries[: len(entries) - len(full)])
    short: list[str] = []
    for entry in reversed(older):
        text = _short_entry(entry)
        if used + len(text) > limit:
            break
        short.insert(0, text)
        used += len(text) + 1
    tallied = older[: len(older) - len(short)]
    parts = []
    if tallied:
        parts.append(_tally(tallied))
    if short:
        parts.append(f"Earlier hypotheses ({len(short)}), in short:\n" + "\n".join(short))
    parts.extend(full)
    return "\n\n".join(parts)


def _tally(entries: Sequence[LedgerEntry]) -> str:
    """Several old entries summarised as counts (the ids of supported ones kept)."""
    first, last = entries[0].hypothesis_id, entries[-1].hypothesis_id
    statuses = Counter(entry.status for entry in entries)
    tools = Counter(entry.tool for entry in entries)
    supported = [f"H{e.hypothesis_id}" for e in entries if e.status == "supported"]
    text = (
        f"Oldest hypotheses H{first}–H{last} ({len(entries)}), summarised: "
        + ", ".join(f"{n} {status}" for status, n in statuses.most_common())
        + "; tools: "
        + ", ".join(f"`{tool}` ×{n}" for tool, n in tools.most_common())
        + "."
    )
    if supported:
        text += f" Supported: {', '.join(supported)}."
    return text


def _short_entry(entry: LedgerEntry) -> str:
    head = f"- H{entry.hypothesis_id} · {entry.status} · `{entry.tool}` · "
    head += f"{entry.criterion} · evidence {evidence_text(entry.evidence_ids)}"
    hypothesis = clip(entry.hypothesis, MAX_SHORT_HYPOTHESIS_CHARS)
    return head + "\n" + data_block(f"H{entry.hypothesis_id}", hypothesis)


def _full_entry(entry: LedgerEntry) -> str:
    lines = [
        f"### H{entry.hypothesis_id} · {entry.status} · tool `{entry.tool}`",
        f"criterion: {entry.criterion}",
        f"components: {', '.join(entry.components) or 'none'}",
        f"key metrics: {metrics_text(entry.key_metrics)}",
    ]
    if entry.replication is not None:
        lines.append(f"replication: {entry.replication}")
    lines.append(f"evidence: {evidence_text(entry.evidence_ids)}")
    free_text = "\n".join(
        [
            f"hypothesis: {clip(entry.hypothesis, MAX_HYPOTHESIS_CHARS)}",
            f"args: {clip(json.dumps(entry.args, default=str), MAX_ARGS_CHARS)}",
            "summary:",
            clip(entry.summary, MAX_SUMMARY_CHARS) or "(none)",
        ]
    )
    lines.append(data_block(f"H{entry.hypothesis_id}", free_text))
    return "\n".join(lines)

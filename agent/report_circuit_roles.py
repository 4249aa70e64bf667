"""Each circuit member's role, read from the protocol's role steps: where its signal enters
(``activation_patching`` of ``X@position`` components) and what it attends
(``attention_by_role`` along the axiom's pattern)."""

from __future__ import annotations

from rankscope.agent.report_facts import fmt, num
from rankscope.experiments_db.records import InvestigationTree

POSITION_NAMES = {
    "injected": "the added term",
    "qterm": "earlier query-term occurrences",
    "doc": "the document's other tokens",
    "cls": "CLS",
}
"""The token positions ``activation_patching`` resolves by role, in words."""


def _position_roles(tree: InvestigationTree, members: set[str]) -> dict[str, str]:
    """Per member, where its signal enters (``activation_patching`` of ``X@position``
    components): the position carrying the largest fraction, the others beside it."""
    found: dict[str, dict[str, float]] = {}
    for exp in tree.experiments():
        if exp.tool != "activation_patching" or exp.status != "finished" or not exp.evidence:
            continue
        metrics = exp.evidence[0].metrics
        for component in exp.args.get("components") or []:
            member, _, position = str(component).partition("@")
            value = num(metrics.get(f"effect[{component}]"))
            if member in members and position in POSITION_NAMES and value is not None:
                found.setdefault(member, {})[position] = value
    roles: dict[str, str] = {}
    for member, by_position in found.items():
        ordered = sorted(by_position.items(), key=lambda kv: -kv[1])
        (top, value), rest = ordered[0], ordered[1:]
        others = ", ".join(f"{POSITION_NAMES[p]} {fmt(v, 2)}" for p, v in rest)
        roles[member] = f"signal at {POSITION_NAMES[top]} ({fmt(value, 2)} of the effect" + (
            f"; {others})" if others else ")"
        )
    return roles


def _attention_roles(tree: InvestigationTree, members: set[str]) -> dict[str, str]:
    """Per member, its attention along the pattern an ``attention_by_role`` run focused on
    (e.g. ``injected->same_token``: duplicate-token attention), against uniform attention."""
    roles: dict[str, str] = {}
    for exp in tree.experiments():
        if exp.tool != "attention_by_role" or exp.status != "finished" or not exp.evidence:
            continue
        focus = str(exp.args.get("focus") or "")
        if not focus:
            continue
        metrics = exp.evidence[0].metrics
        uniform = num(metrics.get("uniform_attention"))
        for member in members:
            value = num(metrics.get(f"attention[{member}|{focus}]"))
            if value is None:
                continue
            lift = f", {value / uniform:.1f}× uniform" if uniform else ""
            roles[member] = f"attention {focus} {fmt(value, 2)}{lift}"
    return roles


def member_roles(tree: InvestigationTree, members: list[str]) -> dict[str, str]:
    """Each member's role from the role steps: where its signal enters and what it attends."""
    wanted = set(members)
    positions, attention = _position_roles(tree, wanted), _attention_roles(tree, wanted)
    return {
        m: "; ".join(r for r in (positions.get(m), attention.get(m)) if r)
        for m in members
        if m in positions or m in attention
    }

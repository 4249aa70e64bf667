"""The circuit an investigation tested, read from the stored evidence of its ``circuit`` experiments
(tools/catalog/circuit.py), for the answer paragraph, the circuit figure and the links to the
faithfulness curve and ``circuit.json``.

What the circuit tool stores (read defensively: a missing entry is left out of the text)
    estimates ``faithfulness`` (the members patched jointly: fraction of the behaviour restored),
    ``necessity``, ``beats_random`` and ``loo_drop[X]``; descriptive ``k``, ``random_mean``,
    ``random_percentile``, ``random_p_value``, ``stability[X]`` and ``all_heads_faithfulness``;
    tables ``members`` (one row per member), ``curve``, ``ranking`` and ``random_sets``; a
    faithfulness-curve PNG and ``circuit.json``.

The faithfulness the answer states is the engine's query-level estimate when a hypothesis's
criterion is on it (discovery and held-out), else the tool's own number, labelled as the tool's.
Edges come from ``path_patching`` experiments whose senders (and receiver) are members.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rankscope.agent.report_circuit_roles import member_roles
from rankscope.agent.report_facts import (
    Interval,
    Unverified,
    discovery_of,
    display_status,
    fmt,
    holdout_of,
    is_negligible,
    num,
)
from rankscope.experiments_db.records import (
    ArtifactRecord,
    EvidenceRecord,
    ExperimentNode,
    HypothesisNode,
    InvestigationTree,
)

CIRCUIT_TOOL = "circuit"
PATH_TOOL = "path_patching"
OUTPUT = "output"
LAYER_OF = re.compile(r"^L(\d+)")
_MEMBER_VALUE_COLUMNS = ("fraction", "fraction_restored", "effect", "loo_drop", "score")
AS_FAITHFUL_MARGIN = 0.05
"""Another set within this of the circuit's faithfulness is as faithful (the tool's margin)."""


@dataclass(frozen=True)
class Edge:
    sender: str
    receiver: str
    value: float | None


@dataclass
class Circuit:
    """One tested circuit: its members, faithfulness, controls, roles and edges."""

    experiment_id: int
    evidence_id: int
    hypothesis: HypothesisNode | None
    status: str
    members: list[str]
    member_values: dict[str, float] = field(default_factory=dict)
    member_value_name: str = ""
    roles: dict[str, str] = field(default_factory=dict)
    faithfulness: Interval | None = None
    faithfulness_holdout: Interval | None = None
    engine: bool = False
    """Whether the faithfulness numbers are the engine's (a verdict's) or the tool's own."""
    holdout_from_control: bool = False
    """Whether the held-out faithfulness is the tool's, from the random-set control's held-out
    run on the same set (the group claim itself was not replicated)."""
    random_mean: float | None = None
    random_percentile: float | None = None
    random_p_value: float | None = None
    necessity: float | None = None
    all_heads: float | None = None
    target: float | None = None
    split: str = ""
    edges: list[Edge] = field(default_factory=list)
    curve: ArtifactRecord | None = None
    json: ArtifactRecord | None = None
    control: HypothesisNode | None = None
    """The random-set control's hypothesis (criterion ``beats_random``), when one was decided."""
    control_status: str = ""
    beats_random: Interval | None = None
    stability: dict[str, float] = field(default_factory=dict)
    """How often each member was selected over bootstrap resamples of the ranking's queries."""
    alternative: float | None = None
    """The faithfulness of the best other set of the same size (the tool's)."""

    @property
    def k(self) -> int:
        return len(self.members)

    @property
    def kind(self) -> str:
        return (
            "heads" if all(re.fullmatch(r"L\d+\.H\d+", m) for m in self.members) else "components"
        )

    def layers(self) -> str:
        found = sorted({int(m.group(1)) for c in self.members if (m := LAYER_OF.match(c))})
        if not found:
            return ""
        return f"layer {found[0]}" if len(found) == 1 else f"layers {found[0]}–{found[-1]}"


def _tool_interval(metrics: Mapping[str, Any], key: str, split: str) -> Interval | None:
    value = num(metrics.get(key))
    if value is None:
        return None
    return Interval(
        split=split,
        value=value,
        low=num(metrics.get(f"{key}_ci_low")),
        high=num(metrics.get(f"{key}_ci_high")),
        level=None,
        n_queries=int(num(metrics.get("n_queries")) or 0),
        n_pairs=int(num(metrics.get("n_pairs")) or 0),
        outcome="",
    )


def _members(
    ev: EvidenceRecord, exp: ExperimentNode
) -> tuple[list[str], dict[str, float], str, dict[str, str]]:
    """(members, the value each carries, that value's name, roles): the members are the ``k``
    first of the run's ``members`` argument, else the rows of its ``members`` table."""
    rows = ev.tables.get("members")
    members: list[str] = []
    values: dict[str, float] = {}
    roles: dict[str, str] = {}
    column = ""
    if isinstance(rows, list) and rows and isinstance(rows[0], dict):
        column = next((c for c in _MEMBER_VALUE_COLUMNS if c in rows[0]), "")
        for row in rows:
            name = str(row.get("component", row.get("member", "")))
            if not name:
                continue
            members.append(name)
            if column and num(row.get(column)) is not None:
                values[name] = float(row[column])
            if row.get("role"):
                roles[name] = str(row["role"])
    chosen = exp.args.get("members") or exp.args.get("components")
    k = exp.args.get("k")
    if isinstance(chosen, list) and chosen:
        members = [str(c) for c in (chosen[:k] if isinstance(k, int) and k > 0 else chosen)]
    if not members:
        members = [k[len("loo_drop[") : -1] for k in ev.metrics if k.startswith("loo_drop[")]
    values = {m: v for m, v in values.items() if m in members}
    if not values:
        for m in members:
            drop = num(ev.metrics.get(f"loo_drop[{m}]"))
            if drop is not None:
                values[m] = drop
                column = "loo_drop"
    return members, values, column, roles


def _artifact(ev: EvidenceRecord, *, image: bool) -> ArtifactRecord | None:
    arts = [a for a in ev.artifacts if a.media_type.startswith("image/") == image]
    if image:
        named = [a for a in arts if re.search("faithful|curve", a.description + a.path, re.I)]
        return next(iter(named or arts), None)
    named = [
        a for a in arts if "circuit" in (a.description + a.path).lower() and "json" in a.media_type
    ]
    return next(iter(named), None)


def _edges(tree: InvestigationTree, members: set[str]) -> list[Edge]:
    edges: list[Edge] = []
    for exp in tree.experiments():
        if exp.tool != PATH_TOOL or exp.status != "finished" or not exp.evidence:
            continue
        receiver = str(exp.args.get("receiver", "final"))
        target = OUTPUT if receiver == "final" else receiver.rsplit(".", 1)[0]
        if target != OUTPUT and target not in members:
            continue
        rows = exp.evidence[0].tables.get("effects") or []
        for row in rows if isinstance(rows, list) else []:
            sender = str(row.get("component", "")) if isinstance(row, dict) else ""
            if sender in members:
                value = num(row.get("fraction_restored"))
                edges.append(
                    Edge(sender, target, value if value is not None else num(row.get("effect")))
                )
    return edges


def _status(node: HypothesisNode | None, unverified: Mapping[int, Unverified]) -> str:
    if node is None:
        return "exploratory"
    if node.id not in unverified and is_negligible(node.latest_verdict):
        return "negligible"
    return display_status(node, unverified)


def _runs_of(tree: InvestigationTree) -> list[ExperimentNode]:
    return [
        e
        for e in tree.experiments()
        if e.tool == CIRCUIT_TOOL and e.status == "finished" and e.evidence
    ]


def _claims(
    nodes: Mapping[int, HypothesisNode], runs: list[ExperimentNode], metric: str
) -> list[tuple[HypothesisNode, ExperimentNode]]:
    """The hypotheses with a verdict whose circuit criterion is on ``metric``, each with its
    first run, in the order they ran."""
    found: dict[int, tuple[HypothesisNode, ExperimentNode]] = {}
    for e in runs:
        node = nodes.get(e.hypothesis_id) if e.hypothesis_id is not None else None
        if node is not None and node.criterion.metric == metric and node.latest_verdict:
            found.setdefault(node.id, (node, e))
    return list(found.values())


def _set_of(run: ExperimentNode) -> tuple[str, ...]:
    """The set a ``circuit`` run with given members patched: its first ``k`` members."""
    members = [str(m) for m in run.args.get("members") or []]
    k = run.args.get("k")
    return tuple(members[:k] if isinstance(k, int) and k > 0 else members)


def _group_claim(
    nodes: Mapping[int, HypothesisNode],
    runs: list[ExperimentNode],
    control: HypothesisNode | None,
) -> HypothesisNode | None:
    """The circuit's sufficiency claim: the faithfulness claim on the set the random-set control
    tested, else the latest faithfulness claim with a random-set comparison, else the latest.
    A faithfulness claim on a set no random sets were drawn for (e.g. every attention block
    patched jointly, a mechanism's prediction) is not the circuit when one was controlled."""
    claims = _claims(nodes, runs, "faithfulness")
    if not claims:
        return None
    if control is not None:
        tested = {_set_of(e) for e in runs if e.hypothesis_id == control.id}
        same = [node for node, e in claims if _set_of(e) in tested]
        if same:
            return same[-1]
    compared = [node for node, e in claims if e.args.get("n_random") != 0]
    return (compared or [node for node, _ in claims])[-1]


def _latest_run(runs: list[ExperimentNode], node: HypothesisNode | None) -> ExperimentNode | None:
    """The held-out run of ``node`` when there is one, else its discovery run."""
    mine = [e for e in runs if node is not None and e.hypothesis_id == node.id]
    held = [e for e in mine if e.args.get("split") == "holdout"]
    chosen = held or mine
    return chosen[-1] if chosen else None


def circuit_of(tree: InvestigationTree, unverified: Mapping[int, Unverified]) -> Circuit | None:
    """The investigation's tested circuit, or None when no circuit was tested.

    The protocol (:mod:`rankscope.agent.planners.protocol.circuits`) ranks the heads in an
    exploratory ``circuit`` run, claims the top k together (criterion ``faithfulness``) and
    controls them against random sets (criterion ``beats_random``); the members are the ``k``
    first of the claim's ``members`` argument. Without a claim, the latest circuit run is shown
    as exploratory."""
    runs = _runs_of(tree)
    if not runs:
        return None
    nodes = {n.id: n for n in tree.hypotheses}
    controls = _claims(nodes, runs, "beats_random")
    control = controls[-1][0] if controls else None
    group = _group_claim(nodes, runs, control)
    run = _latest_run(runs, group) or _latest_run(runs, control) or runs[-1]
    node = nodes.get(run.hypothesis_id) if run.hypothesis_id is not None else None
    ev = run.evidence[0]
    members, values, column, roles = _members(ev, run)
    control_run = _latest_run(runs, control)
    stats = {
        key: num(ev.metrics.get(key))
        if num(ev.metrics.get(key)) is not None or control_run is None
        else num(control_run.evidence[0].metrics.get(key))
        for key in ("random_mean", "random_percentile", "random_p_value")
    }
    # the control's curve first: it carries the random sets' band
    first = [e for e in (control_run, run) if e is not None]
    images = [_artifact(e.evidence[0], image=True) for e in (*first, *reversed(runs))]
    circuit = Circuit(
        experiment_id=run.id,
        evidence_id=ev.id,
        hypothesis=node,
        status=_status(node, unverified),
        members=members,
        member_values=values,
        member_value_name=column,
        roles=roles,
        random_mean=stats["random_mean"],
        random_percentile=stats["random_percentile"],
        random_p_value=stats["random_p_value"],
        necessity=num(ev.metrics.get("necessity")),
        all_heads=num(ev.metrics.get("all_heads_faithfulness")),
        target=num(run.args.get("target")),
        alternative=num(ev.metrics.get("alternative_faithfulness")),
        split=str(run.args.get("split", "")),
        curve=next((a for a in images if a is not None), None),
        json=_artifact(ev, image=False),
    )
    if control is not None and control.latest_verdict is not None:
        circuit.control = control
        circuit.control_status = _status(control, unverified)
        circuit.beats_random = holdout_of(control.latest_verdict) or discovery_of(
            control.latest_verdict
        )
    verdict = node.latest_verdict if node else None
    if verdict is not None and node is not None and node.criterion.metric == "faithfulness":
        circuit.faithfulness, circuit.faithfulness_holdout = (
            discovery_of(verdict),
            holdout_of(verdict),
        )
        circuit.engine = True
    else:
        mine = [e for e in runs if e.hypothesis_id == run.hypothesis_id] if node else [run]
        circuit.faithfulness = _tool_interval(
            mine[0].evidence[0].metrics, "faithfulness", "discovery"
        )
        if run.args.get("split") == "holdout":
            circuit.faithfulness_holdout = _tool_interval(ev.metrics, "faithfulness", "held-out")
    held = circuit.faithfulness_holdout
    if (
        (held is None or held.value is None)
        and control_run is not None
        and control_run.args.get("split") == "holdout"
        and _set_of(control_run) == _set_of(run)
    ):
        circuit.faithfulness_holdout = _tool_interval(
            control_run.evidence[0].metrics, "faithfulness", "held-out"
        )
        circuit.holdout_from_control = circuit.faithfulness_holdout is not None
    _from_ranking(circuit, runs)
    circuit.edges = _edges(tree, set(members))
    for member, role in member_roles(tree, members).items():
        circuit.roles.setdefault(member, role)
    return circuit


def _from_ranking(circuit: Circuit, runs: list[ExperimentNode]) -> None:
    """What the ranking run (members=None) knows of the members: each one's own fraction (when
    the claim run, given its members, has none), its selection stability, and the best other set
    of the same size."""
    for run in reversed(runs):
        if run.args.get("members"):
            continue
        ev = run.evidence[0]
        rows = ev.tables.get("ranking")
        fractions = {
            str(r.get("component")): num(r.get("fraction"))
            for r in (rows if isinstance(rows, list) else [])
            if isinstance(r, dict)
        }
        own = circuit.member_value_name not in ("", "loo_drop") and circuit.member_values
        if not own and any(fractions.get(m) is not None for m in circuit.members):
            circuit.member_values = {
                m: v for m in circuit.members if (v := fractions.get(m)) is not None
            }
            circuit.member_value_name = "fraction restored alone"
        circuit.stability = {
            m: v
            for m in circuit.members
            if (v := num(ev.metrics.get(f"stability[{m}]"))) is not None
        }
        if circuit.alternative is None:
            circuit.alternative = num(ev.metrics.get("alternative_faithfulness"))
        return


def circuit_sentence(c: Circuit, label: str = "") -> str:
    """The circuit's answer in one paragraph (rule-written from the stored numbers)."""
    where = f" of {c.layers()}" if c.layers() else ""
    who = f"{c.k} {c.kind}{where} ({', '.join(c.members)})" if c.members else "the circuit"
    whose = "" if c.engine else " (tool's own estimate)"
    parts: list[str] = []
    held, disc = c.faithfulness_holdout, c.faithfulness
    aside = []
    if held is not None and held.value is not None:
        source = (
            " (the random-set control's held-out run; tool's own estimate)"
            if c.holdout_from_control
            else whose
        )
        parts.append(
            f"{who} together restore {held.text(3)} of the effect on held-out queries{source}"
        )
        if disc is not None and disc.value is not None:
            aside.append(f"{disc.text(3)} on discovery")
    elif disc is not None and disc.value is not None:
        parts.append(
            f"{who} together restore {disc.text(3)} of the effect on discovery queries{whose}"
        )
        aside.append("no held-out replication")
    else:
        parts.append(f"{who} were tested as a circuit; no faithfulness was stored")
    if c.target is not None:
        aside.append(f"pre-registered target {c.target:g}")
    if aside:
        parts[-1] += f" ({'; '.join(aside)})"
    if c.random_mean is not None:
        control = f"random sets of {c.k} {c.kind} restore {fmt(c.random_mean, 3)} on average"
        extra = [
            f"the circuit's percentile {fmt(c.random_percentile, 3)}"
            if c.random_percentile is not None
            else "",
            f"p = {fmt(c.random_p_value, 2)}" if c.random_p_value is not None else "",
        ]
        extra = [e for e in extra if e]
        parts.append(control + (f" ({', '.join(extra)})" if extra else ""))
    if c.beats_random is not None and c.beats_random.value is not None:
        parts.append(
            f"random-set control {c.control_status}: the circuit beats random sets by "
            f"{c.beats_random.text(3)} on {c.beats_random.split} queries"
        )
    if c.necessity is not None:
        parts.append(f"patching them back removes {fmt(c.necessity, 3)} of it (necessity)")
    best = held if held is not None and held.value is not None else disc
    if (
        c.alternative is not None
        and best is not None
        and best.value is not None
        and c.alternative >= best.value - AS_FAITHFUL_MARGIN
    ):
        parts.append(
            f"another set of {c.k} restores {fmt(c.alternative, 3)}: this circuit is one of "
            "several equally good explanations"
        )
    if c.stability:
        parts.append(
            "selected in "
            + ", ".join(f"{m} {v:.0%}" for m, v in c.stability.items())
            + " of resampled rankings"
        )
    if c.all_heads is not None:
        parts.append(f"all heads together restore {fmt(c.all_heads, 3)}")
    if c.roles:
        parts.append("roles: " + "; ".join(f"{m}: {r}" for m, r in c.roles.items()))
    if c.edges:
        parts.append(
            "paths: "
            + ", ".join(f"{e.sender} → {e.receiver} {fmt(e.value, 2)}" for e in c.edges[:8])
        )
    head = f"{label} " if label else ""
    return f"{head}{c.status}: " + "; ".join(parts) + "."

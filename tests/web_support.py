"""Finished investigations for the tests of the answer paragraph, the forest plot, compare and
the review pages (this module holds no tests).

The verdicts are the engine's own shape: each ``criterion_result`` is built with
:class:`rankscope.agent.verdicts.Decision` and :class:`~rankscope.agent.verdicts.SplitResult`, as
the verdict rules store them, with the numbers of the README's investigation (MiniLM, TFC1).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from rankscope.agent.settings import add_note
from rankscope.agent.verdicts import Decision, SplitResult
from rankscope.experiments_db import Store

BEHAVIOUR_ARGS = {
    "seed": 0,
    "axiom": "TFC1",
    "variant": "append",
    "split": "discovery",
    "n_pairs": 48,
}
PATCH_ARGS = {
    "seed": 0,
    "axiom": "TFC1",
    "variant": "append",
    "split": "discovery",
    "n_pairs": 96,
    "confidence": 0.95,
}
LAYERS, HEADS = 6, 12
CIRCUIT = ["L5.H7", "L5.H5", "L5.H11"]


def png(width: int = 4, height: int = 3) -> bytes:
    """A small real PNG (matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), dpi=60)
    ax.plot([1, 2, 3], [0.2, 0.6, 0.8])
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def split_result(
    metric: str,
    value: float,
    low: float,
    high: float,
    *,
    threshold: float,
    null: float,
    sesoi: float,
    level: float,
    split: str = "discovery",
    outcome: str = "met",
    n_queries: int = 14,
    n_pairs: int = 48,
    negligible: bool = False,
    approximate: bool = False,
    evidence_id: int | None = None,
) -> SplitResult:
    """One split's result as the verdict rules store it."""
    return SplitResult(
        split=split,
        metric=metric,
        direction="greater",
        threshold=threshold,
        effective_threshold=max(threshold, null + sesoi),
        sesoi=sesoi,
        null_value=null,
        value=value,
        ci_low=low,
        ci_high=high,
        ci_level=1 - 2 * level,
        p_value=0.004 if outcome == "met" else 0.6,
        tost_p=1.7e-9 if negligible else 0.9,
        alpha=0.05,
        corrected_alpha=level,
        n_queries=n_queries,
        n_pairs=n_pairs,
        approximate=approximate,
        outcome=outcome,  # type: ignore[arg-type]
        negligible=negligible,
        reason=f"mean {value:.4g}, {1 - 2 * level:.4g} CI [{low:.4g}, {high:.4g}] ({outcome})",
        evidence_id=evidence_id,
    )


def head_effects(top: dict[str, float], n: int = 96) -> list[dict[str, Any]]:
    """A per-head ``effects`` table of every head of a 6 × 12 model."""
    rows = []
    for layer in range(LAYERS):
        for head in range(HEADS):
            name = f"L{layer}.H{head}"
            effect = top.get(name, ((layer * HEADS + head) % 7 - 3) * 1e-4)
            rows.append(
                {
                    "component": name,
                    "effect": effect,
                    "ci_low": effect - 0.0015,
                    "ci_high": effect + 0.0015,
                    "p_value": 0.01,
                    "n": n,
                    "fraction_restored": effect / 0.037,
                }
            )
    return rows


def record_decision(store: Store, hypothesis_id: int, decision: Decision) -> None:
    """Store ``decision`` as the rules' verdict of the hypothesis, citing its evidence."""
    store.record_verdict(
        hypothesis_id,
        decision.status,
        criterion_result=decision.criterion_result(),
        cited_evidence_ids=list(decision.evidence_ids),
        decided_by="rules",
    )


def _experiment(
    store: Store,
    inv: int,
    hyp: int | None,
    tool: str,
    args: dict[str, Any],
    metrics: dict[str, Any],
    tmp_path: Path,
    *,
    tables: dict[str, Any] | None = None,
    files: list[tuple[str, bytes, str, str]] = (),  # type: ignore[assignment]
) -> int:
    exp = store.start_experiment(inv, tool, args, hypothesis_id=hyp)
    artifacts = []
    for name, payload, media, description in files:
        path = tmp_path / f"{exp}-{name}"
        path.write_bytes(payload)
        artifacts.append((path, media, description))
    return store.finish_experiment(
        exp, metrics, summary=f"{tool} run", tables=tables or {}, artifacts=artifacts
    )


def finished_investigation(
    store: Store,
    tmp_path: Path,
    *,
    model: str = "sentence-transformers/all-MiniLM-L6-v2",
    question: str = "Does MiniLM reward repeated query terms (TFC1), and which components compute it?",
    share: tuple[float, float, float] = (0.813, 0.69, 0.926),
    held: tuple[float, float, float] = (0.92, 0.835, 0.986),
    circuit: bool = True,
    big_table: int = 0,
) -> dict[str, int]:
    """A finished investigation: a supported behaviour (TFC1, replicated), an exploratory screen
    ranking every head (with ``big_table`` pair rows), a component left undecided by its CI
    (L5.H7), a negligible one (L5.H4), one with too few queries (L5.H11), and — with
    ``circuit`` — a supported circuit of three layer-5 heads with its random-set control, a
    faithfulness curve, circuit.json and path patching between members. Returns the ids."""
    inv = store.create_investigation(
        question, model, "builtin", "protocol", budget={"max_steps": 12}, config={"seed": 0}
    )
    ids: dict[str, int] = {"investigation": inv}
    tfc = {"metric": "share_moved_predicted", "direction": "greater", "threshold": 0.6}
    h1 = store.preregister_hypothesis(
        inv,
        "Behaviour: the model rewards TFC1 append",
        tfc,
        tool="behavioural_test",
        tool_args=BEHAVIOUR_ARGS,
    )
    share_metrics = {
        "share_moved_predicted": share[0],
        "share_moved_predicted_ci_low": share[0] - 0.1,
        "share_moved_predicted_ci_high": share[0] + 0.1,
        "n_pairs": 48,
    }
    e1 = _experiment(store, inv, h1, "behavioural_test", BEHAVIOUR_ARGS, share_metrics, tmp_path)
    e2 = _experiment(
        store,
        inv,
        h1,
        "behavioural_test",
        {**BEHAVIOUR_ARGS, "seed": 1, "split": "holdout"},
        {**share_metrics, "share_moved_predicted": held[0]},
        tmp_path,
    )
    level = 0.0304
    disc = split_result(
        "share_moved_predicted",
        *share,
        threshold=0.6,
        null=0.5,
        sesoi=0.1,
        level=level,
        evidence_id=e1,
    )
    hold = split_result(
        "share_moved_predicted",
        *held,
        threshold=0.6,
        null=0.5,
        sesoi=0.1,
        level=level,
        split="holdout",
        evidence_id=e2,
    )
    met = disc.outcome == "met" and share[1] > 0.6
    decision = Decision(
        status="supported" if met else "inconclusive",
        reason="met on discovery and replicated on held-out queries"
        if met
        else "discovery undetermined: the CI includes the threshold",
        discovery=disc if met else disc.model_copy(update={"outcome": "undetermined"}),
        holdout=hold if met else None,
        level=level,
        lond_index=1,
        evidence_ids=[e1, e2],
    )
    record_decision(store, h1, decision)
    ids |= {"behaviour": h1, "behaviour_evidence": e1}

    screen = store.preregister_hypothesis(
        inv,
        "Locate: rank every head by attribution patching (exploratory)",
        {"metric": "effect[L5.H7]", "direction": "two-sided", "threshold": 0.0},
        tool="attribution_patching",
        tool_args={**PATCH_ARGS, "granularity": "heads"},
        exploratory=True,
    )
    pair_rows = [
        {
            "pair": i,
            "qid": f"q{i % 14:02d}",
            "component": f"L{i % 6}.H{i % 12}",
            "s_base": 0.4 + (i % 97) / 1000,
            "s_patched": 0.41 + (i * 37 % 101) / 1000,
        }
        for i in range(big_table)
    ]
    top = {"L5.H7": 0.0049, "L5.H5": 0.0048, "L5.H11": 0.0032, "L5.H4": 0.0028, "L1.H1": -0.0023}
    ids["screen_evidence"] = _experiment(
        store,
        inv,
        screen,
        "attribution_patching",
        {**PATCH_ARGS, "granularity": "heads"},
        {
            "effect[L5.H7]": 0.0049,
            "effect_ci_low[L5.H7]": 0.0032,
            "effect_ci_high[L5.H7]": 0.0067,
            "p_value[L5.H7]": 1e-6,
            "n_pairs": 96,
        },
        tmp_path,
        tables={"effects": head_effects(top), "pair_scores": pair_rows},
        files=[("heads.png", png(), "image/png", "layer × head")],
    )
    ids["screen"] = screen

    def component(
        head: str,
        value: float,
        low: float,
        high: float,
        status: str,
        *,
        negligible: bool = False,
        n_queries: int = 14,
        index: int = 3,
    ) -> int:
        hyp = store.preregister_hypothesis(
            inv,
            f"Confirm: head {head} carries part of the TFC1 append effect",
            {"metric": f"effect[{head}]", "direction": "greater", "threshold": 0.005},
            tool="activation_patching",
            tool_args={**PATCH_ARGS, "components": [head]},
            components=[head],
            parent_id=screen,
        )
        ev = _experiment(
            store,
            inv,
            hyp,
            "activation_patching",
            {**PATCH_ARGS, "components": [head]},
            {
                f"effect[{head}]": value,
                f"effect_ci_low[{head}]": low,
                f"effect_ci_high[{head}]": high,
                "n_pairs": 96,
            },
            tmp_path,
            tables={"effects": head_effects(top)},
        )
        result = split_result(
            f"effect[{head}]",
            value,
            low,
            high,
            threshold=0.005,
            null=0.0,
            sesoi=0.005,
            level=0.05 / index**2,
            outcome="contradicted" if negligible else "undetermined",
            n_queries=n_queries,
            n_pairs=96,
            negligible=negligible,
            evidence_id=ev,
        )
        reason = result.reason if negligible else f"discovery undetermined: {result.reason}"
        if n_queries < 8:
            reason = f"discovery undetermined: {n_queries} queries and 96 pairs; the policy needs 8 and 24"
        d = Decision(
            status=status,
            reason=("negligible: " + reason) if negligible else reason,
            discovery=result,
            level=0.05 / index**2,
            lond_index=index,
            evidence_ids=[ev],
        )
        record_decision(store, hyp, d)
        return hyp

    ids["component"] = component("L5.H7", 0.00438, 0.00171, 0.00755, "inconclusive", index=2)
    ids["negligible"] = component(
        "L5.H4", 0.0004, -0.001, 0.0018, "refuted", negligible=True, index=3
    )
    ids["few_queries"] = component(
        "L5.H11", 0.0029, 0.0001, 0.0076, "inconclusive", n_queries=5, index=4
    )
    if circuit:
        ids |= _circuit(store, inv, tmp_path)
    store.set_investigation_status(inv, "finished")
    return ids


def _circuit(store: Store, inv: int, tmp_path: Path) -> dict[str, int]:
    """The protocol's circuit steps as tools/catalog/circuit.py stores them: an exploratory
    ranking run (members=None: ``ranking`` table, ``stability[X]``, ``smallest_k``), the group
    claim on the members it fixed (``members`` given, so no own fraction in the ``members``
    table), the random-set control (``beats_random``), and path patching from the members."""
    ranked = [*CIRCUIT, "L5.H4"]
    rank_args = {**PATCH_ARGS, "target": 0.65, "members": None, "k": None, "n_random": 100}
    rank = store.preregister_hypothesis(
        inv,
        "Rank: every attention head ranked by its exact patching effect (exploratory)",
        {"metric": "faithfulness", "direction": "two-sided", "threshold": 0.0},
        tool="circuit",
        tool_args=rank_args,
        exploratory=True,
    )
    fractions = {"L5.H7": 0.31, "L5.H5": 0.24, "L5.H11": 0.12, "L5.H4": 0.08}
    _experiment(
        store,
        inv,
        rank,
        "circuit",
        rank_args,
        {
            "faithfulness": 0.72,
            "smallest_k": 3,
            "k": 3,
            "alternative_faithfulness": 0.52,
            **{f"stability[{m}]": s for m, s in zip(CIRCUIT, (0.95, 0.9, 0.7), strict=True)},
        },
        tmp_path,
        tables={
            "ranking": [
                {
                    "rank": i + 1,
                    "component": m,
                    "fraction": fractions[m],
                    "source": "exact",
                    "in_circuit": m in CIRCUIT,
                }
                for i, m in enumerate(ranked)
            ]
        },
        files=[
            (
                "rank-curve.png",
                png(5, 3),
                "image/png",
                "faithfulness curve (sufficiency, necessity) with the random-set band",
            )
        ],
    )
    args = {**PATCH_ARGS, "target": 0.6, "members": ranked, "k": 3, "n_random": 100}
    hyp = store.preregister_hypothesis(
        inv,
        "Circuit: heads L5.H7, L5.H5 and L5.H11 together restore at least 0.6 of the effect",
        {"metric": "faithfulness", "direction": "greater", "threshold": 0.6},
        tool="circuit",
        tool_args=args,
        components=[],
    )
    members = [
        {
            "component": m,
            "layer": 5,
            "site": "heads",
            "head": int(m.split("H")[-1]),
            "positions": "all",
            "rank": i + 1,
            "fraction": None,
            "loo_drop": drop,
            "loo_drop_ci_low": drop - 0.05,
            "loo_drop_ci_high": drop + 0.05,
            "stability": None,
        }
        for i, (m, drop) in enumerate(zip(CIRCUIT, (0.21, 0.15, 0.08), strict=True))
    ]
    metrics = {
        "faithfulness": 0.71,
        "faithfulness_ci_low": 0.6,
        "faithfulness_ci_high": 0.8,
        "necessity": 0.55,
        "k": 3,
        "random_mean": 0.12,
        "random_percentile": 99.0,
        "random_p_value": 0.01,
        "all_heads_faithfulness": 0.83,
        **{f"loo_drop[{m['component']}]": m["loo_drop"] for m in members},
    }
    circuit_json = json.dumps(
        {"schema": "rankscope.circuit/1", "nodes": [{"component": m} for m in CIRCUIT], "edges": []}
    ).encode()
    files = [
        (
            "circuit_curve.png",
            png(5, 3),
            "image/png",
            "faithfulness curve (sufficiency, necessity) with the random-set band",
        ),
        (
            "circuit.json",
            circuit_json,
            "application/json",
            "the circuit: nodes with fractions, behaviour, model, k, scores",
        ),
    ]
    e_disc = _experiment(
        store,
        inv,
        hyp,
        "circuit",
        args,
        metrics,
        tmp_path,
        tables={"members": members},
        files=files,
    )
    e_held = _experiment(
        store,
        inv,
        hyp,
        "circuit",
        {**args, "seed": 1, "split": "holdout"},
        {**metrics, "faithfulness": 0.66},
        tmp_path,
        tables={"members": members},
        files=files,
    )
    disc = split_result(
        "faithfulness",
        0.71,
        0.62,
        0.8,
        threshold=0.6,
        null=0.0,
        sesoi=0.05,
        level=0.01,
        evidence_id=e_disc,
    )
    held = split_result(
        "faithfulness",
        0.66,
        0.61,
        0.72,
        threshold=0.6,
        null=0.0,
        sesoi=0.05,
        level=0.01,
        split="holdout",
        evidence_id=e_held,
    )
    d = Decision(
        status="supported",
        reason="met on discovery and replicated",
        discovery=disc,
        holdout=held,
        level=0.01,
        lond_index=5,
        evidence_ids=[e_disc, e_held],
    )
    record_decision(store, hyp, d)
    _experiment(
        store,
        inv,
        None,
        "path_patching",
        {**PATCH_ARGS, "senders": ["L5.H7"], "receiver": "final"},
        {"effect[L5.H7]": 0.004},
        tmp_path,
        tables={"effects": [{"component": "L5.H7", "effect": 0.004, "fraction_restored": 0.27}]},
    )
    control = store.preregister_hypothesis(
        inv,
        "Control: the 3 heads restore more of the effect than random sets of 3 heads",
        {"metric": "beats_random", "direction": "greater", "threshold": 0.05},
        tool="circuit",
        tool_args=args,
        parent_id=hyp,
    )
    c_disc = _experiment(
        store, inv, control, "circuit", args, {**metrics, "beats_random": 0.59}, tmp_path
    )
    c_held = _experiment(
        store,
        inv,
        control,
        "circuit",
        {**args, "seed": 1, "split": "holdout"},
        {**metrics, "beats_random": 0.54},
        tmp_path,
    )
    d = Decision(
        status="supported",
        reason="met on discovery and replicated",
        discovery=split_result(
            "beats_random",
            0.59,
            0.5,
            0.68,
            threshold=0.05,
            null=0.0,
            sesoi=0.05,
            level=0.005,
            evidence_id=c_disc,
        ),
        holdout=split_result(
            "beats_random",
            0.54,
            0.45,
            0.63,
            threshold=0.05,
            null=0.0,
            sesoi=0.05,
            level=0.005,
            split="holdout",
            evidence_id=c_held,
        ),
        level=0.005,
        lond_index=6,
        evidence_ids=[c_disc, c_held],
    )
    record_decision(store, control, d)
    return {"rank": rank, "circuit": hyp, "circuit_evidence": e_held, "control": control}


def lnc1_investigation(store: Store, tmp_path: Path) -> dict[str, int]:
    """A finished investigation of another axiom (LNC1): nothing in it tests what TFC1 tests."""
    inv = store.create_investigation(
        "Does the model prefer shorter documents?",
        "sentence-transformers/all-MiniLM-L6-v2",
        "builtin",
        "protocol",
    )
    args = {**BEHAVIOUR_ARGS, "axiom": "LNC1", "variant": "append"}
    hyp = store.preregister_hypothesis(
        inv,
        "Behaviour: the model rewards TFC1 append",  # same words, another test
        {"metric": "share_moved_predicted", "direction": "greater", "threshold": 0.6},
        tool="behavioural_test",
        tool_args=args,
    )
    ev = _experiment(
        store, inv, hyp, "behavioural_test", args, {"share_moved_predicted": 0.7}, tmp_path
    )
    disc = split_result(
        "share_moved_predicted",
        0.7,
        0.62,
        0.79,
        threshold=0.6,
        null=0.5,
        sesoi=0.1,
        level=0.03,
        evidence_id=ev,
    )
    d = Decision(
        status="inconclusive",
        reason="met on discovery; not replicated",
        discovery=disc,
        level=0.03,
        lond_index=1,
        evidence_ids=[ev],
    )
    record_decision(store, hyp, d)
    store.set_investigation_status(inv, "finished")
    return {"investigation": inv, "behaviour": hyp}


def mark_unverified(store: Store, investigation_id: int, hypothesis_id: int, again: str) -> None:
    """The note bundle import writes when a verdict does not re-derive from its evidence."""
    latest = store.investigation_tree(investigation_id).hypotheses
    status = next(h for h in latest if h.id == hypothesis_id).latest_verdict.status  # type: ignore[union-attr]
    add_note(
        store,
        investigation_id,
        f"UNVERIFIED verdict on hypothesis {hypothesis_id}: the bundle says {status!r}, its own "
        f"evidence gives {again!r} under the verdict rules",
    )

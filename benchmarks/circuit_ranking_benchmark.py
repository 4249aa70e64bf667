"""The circuit found with an exact ranking vs one found with an attribution ranking (CPU), one run.

On all-MiniLM-L6-v2 (the bundled default model, or ``--model``) and the TFC1 append pairs of the
built-in collection, the ``circuit`` tool runs four times:

1. discovery split, ``ranking="exact"`` (every head patched alone, ranked by its ratio of means);
2. discovery split, ``ranking="attribution"`` (attribution patching orders the heads; the curve,
   the random-set control and everything else are exact);
3. and 4. held-out split, each ranking's top ``max_k`` heads as ``members`` and the exact run's k:
   the faithfulness each circuit keeps on queries its ranking never saw.

Prints the time of each step (ranking, curve, controls) of each run, the two rankings' top-k
overlap and Spearman correlation over all heads, the two faithfulness curves at equal k on
discovery and held-out queries, and each circuit's random-set comparison.

    python benchmarks/circuit_ranking_benchmark.py [--pairs 48] [--max-k 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from rankscope.tools.contract import ToolContext, ToolResult  # noqa: E402
from rankscope.tools.data.source import resolve_data  # noqa: E402
from rankscope.tools.interventions.metrics import spearman  # noqa: E402
from rankscope.tools.registry import get_tool, validate_args  # noqa: E402
from rankscope.tools.retrievers import load_retriever  # noqa: E402


def run(ctx: ToolContext, raw: dict[str, Any], label: str) -> tuple[ToolResult, float]:
    tool = get_tool("circuit")
    started = time.perf_counter()
    result = tool.run(ctx, validate_args(tool, raw))
    seconds = time.perf_counter() - started
    facts = result.run_facts
    print(
        f"[{label}] {seconds:.1f} s: ranking {facts['rank_seconds']:.1f} s, curve "
        f"{facts['curve_seconds']:.1f} s, controls {facts['control_seconds']:.1f} s",
        flush=True,
    )
    return result, seconds


def fmt(x: float | None) -> str:
    return "  n/a" if x is None else f"{x:5.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model id or path (default: MiniLM)")
    parser.add_argument("--pairs", type=int, default=48, help="pairs per split")
    parser.add_argument("--max-k", type=int, default=10)
    parser.add_argument("--target", type=float, default=0.6)
    parser.add_argument("--n-random", type=int, default=100)
    parser.add_argument("--n-random-curve", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    retriever = load_retriever(args.model)
    print(
        f"model {retriever.model_id} ({retriever.n_layers} layers × {retriever.n_heads} heads), "
        f"TFC1/append, {args.pairs} pairs per split, max_k {args.max_k}, target {args.target}, "
        f"{args.n_random} random sets, {args.threads} thread(s); loaded in "
        f"{time.perf_counter() - started:.1f} s",
        flush=True,
    )
    data = resolve_data(None)
    folder = Path(tempfile.mkdtemp(prefix="circuit-bench-"))
    common: dict[str, Any] = {
        "axiom": "TFC1",
        "variant": "append",
        "n_pairs": args.pairs,
        "max_k": args.max_k,
        "target": args.target,
        "n_random": args.n_random,
        "n_random_curve": args.n_random_curve,
        "seed": args.seed,
    }

    def ctx(name: str) -> ToolContext:
        return ToolContext(lambda: retriever, data, folder / name, progress=False)

    found: dict[str, ToolResult] = {}
    seconds: dict[str, float] = {}
    for ranking in ("exact", "attribution"):
        found[ranking], seconds[ranking] = run(
            ctx(f"discovery-{ranking}"), {**common, "ranking": ranking}, f"discovery, {ranking}"
        )
    k = int(found["exact"].metrics["k"])
    held: dict[str, ToolResult] = {}
    for ranking in ("exact", "attribution"):
        members = [r["component"] for r in found[ranking].tables["ranking"]][: args.max_k]
        held[ranking], seconds[f"holdout-{ranking}"] = run(
            ctx(f"holdout-{ranking}"),
            {**common, "split": "holdout", "members": members, "k": k},
            f"holdout, {ranking} ranking's members, k={k}",
        )

    order = {name: [r["component"] for r in found[name].tables["ranking"]] for name in found}
    fraction = {
        name: {r["component"]: r["fraction"] for r in found[name].tables["ranking"]}
        for name in found
    }
    heads = order["exact"]
    both = [
        h
        for h in heads
        if fraction["exact"][h] is not None and fraction["attribution"][h] is not None
    ]
    rho = spearman(
        np.array([fraction["exact"][h] for h in both]),
        np.array([fraction["attribution"][h] for h in both]),
    )
    print(f"\nrankings: Spearman ρ of the heads' own fractions (exact vs attribution) {rho:.3f}")
    print("top-k overlap (exact ∩ attribution):")
    for size in sorted({1, 3, 5, k, args.max_k} & set(range(1, len(heads) + 1))):
        overlap = len(set(order["exact"][:size]) & set(order["attribution"][:size]))
        print(f"  k={size:2d}: {overlap}/{size}")
    print(f"exact top-{k}:       {', '.join(order['exact'][:k])}")
    print(f"attribution top-{k}: {', '.join(order['attribution'][:k])}")
    print("\nfaithfulness (sufficiency / necessity) at equal k, mean over queries:")
    print("   k | exact disc.   | attrib. disc. | exact held-out | attrib. held-out")
    curves = {
        (name, split): {r["k"]: r for r in result.tables["curve"]}
        for split, results in (("disc", found), ("held", held))
        for name, result in results.items()
    }
    for size in range(1, args.max_k + 1):
        cells = []
        for key in (
            ("exact", "disc"),
            ("attribution", "disc"),
            ("exact", "held"),
            ("attribution", "held"),
        ):
            row = curves[key].get(size)
            cells.append(
                f"{fmt(row['sufficiency'])} / {fmt(row['necessity'])}" if row else "      n/a     "
            )
        print(f"  {size:2d} | " + " | ".join(cells))
    print(f"\nthe circuit at k={k} on held-out queries:")
    for name, result in held.items():
        m = result.metrics
        print(
            f"  {name:11s}: faithfulness {fmt(m['faithfulness'])} "
            f"[{fmt(m['faithfulness_ci_low'])}, {fmt(m['faithfulness_ci_high'])}], necessity "
            f"{fmt(m['necessity'])}, random sets {fmt(m['random_mean'])} (p = "
            f"{m['random_p_value']:.3g}), beats_random {fmt(m['beats_random'])} "
            f"[{fmt(m['beats_random_ci_low'])}, {fmt(m['beats_random_ci_high'])}], all heads "
            f"{fmt(m['all_heads_faithfulness'])}"
        )
    print(
        f"\nsmallest k reaching {args.target} on discovery: exact "
        f"{found['exact'].metrics['smallest_k']}, attribution "
        f"{found['attribution'].metrics['smallest_k']}"
    )
    print("time of each step (s): ranking / curve / controls / total")
    for label, result in (
        *((f"discovery {n}", r) for n, r in found.items()),
        *((f"holdout {n}", r) for n, r in held.items()),
    ):
        f = result.run_facts
        total = f["rank_seconds"] + f["curve_seconds"] + f["control_seconds"]
        print(
            f"  {label:22s} {f['rank_seconds']:7.1f} / {f['curve_seconds']:6.1f} / "
            f"{f['control_seconds']:6.1f} / {total:7.1f}"
        )
    print(f"whole benchmark: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()

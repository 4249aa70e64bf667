"""Per-head activation patching on all-MiniLM-L6-v2 (CPU): naive vs RankScope exact vs attribution.

Run on demand::

    python benchmarks/patching_benchmark.py [--pairs 64] [--threads 2] [--memory-pairs 1000]
        [--data PATH] [--batch-size 16] [--repeats 1] [--grid-pairs N]

In one process, on ``--pairs`` length-aligned TFC1 pairs sampled with ``--seed`` from
``dl1920_tfc1_pairs.tsv``, it times

(a) a naive baseline written here: one full forward pass per head (hooks on the output
    projection's input), batched over pairs;
(b) RankScope's exact path (``patch_pairs(engine="cached")``: runs start at the patched layer from
    cached inputs, the heads of a layer side by side, the start layer's attention replayed);
(c) attribution patching (one forward and one backward pass per batch),

and prints the speed ratios, (a)/(b) against the bound 2L/(L+1) of starting at the patched layer,
max |(a) − (b)|, the Spearman correlation and top-5 overlap of (c) against (b), and the peak
memory (RSS) of the exact path on ``--memory-pairs`` pairs, measured in a subprocess so that the
peak is its own. ``--grid-pairs N`` (``0`` = skip, ``-1`` = all pairs) also runs the exact grid on
N pairs and prints the top 5 heads with bootstrap CIs under both metrics (the classic one also on
the pairs with ``|Δ| >= --min-abs-delta``, since it explodes on near-zero deltas).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from rankscope.tools.data.source import resolve_data  # noqa: E402
from rankscope.tools.interventions.attribution import attribute_pairs  # noqa: E402
from rankscope.tools.interventions.metrics import (  # noqa: E402
    kept_pairs,
    normalised_effect,
    rank_rows,
    spearman,
    summarise_columns,
    top_overlap,
)
from rankscope.tools.interventions.pairs import pair_batches  # noqa: E402
from rankscope.tools.interventions.patching import heads_grid, patch_pairs  # noqa: E402
from rankscope.tools.retrievers import Retriever, load_retriever  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "dl1920_tfc1_pairs.tsv"


def load_pairs(retriever: Retriever, data: Path, n: int | None, seed: int) -> list:
    source = resolve_data(f"{data}#perturbation=TFC1/append")
    return list(
        source.pairs("TFC1", "append", tokenizer=retriever.tokenizer, split="all", n=n, seed=seed)
    )


@torch.inference_mode()
def naive_per_head(retriever: Retriever, pairs: list, batch_size: int) -> np.ndarray:
    """Denoising per head, one full forward pass of the baseline batch per head: ``[N, L*H]``."""
    n_layers, n_heads, d = retriever.n_layers, retriever.n_heads, retriever.head_dim
    out_proj = [retriever.component_module(layer, "heads")[0] for layer in range(n_layers)]
    result = np.zeros((len(pairs), n_layers * n_heads))
    for batch in pair_batches(retriever, pairs, batch_size):
        source: dict[int, torch.Tensor] = {}
        handles = [
            m.register_forward_pre_hook(lambda _m, a, i=i, s=source: s.__setitem__(i, a[0]))
            for i, m in enumerate(out_proj)
        ]
        retriever.forward_hidden(batch.pert)
        for handle in handles:
            handle.remove()
        for layer in range(n_layers):
            for head in range(n_heads):
                cols = slice(head * d, (head + 1) * d)

                def patch(_m, args, layer=layer, cols=cols, src=source):
                    x = args[0].clone()
                    x[..., cols] = src[layer][..., cols]
                    return (x,)

                handle = out_proj[layer].register_forward_pre_hook(patch)
                scores = retriever.readout(retriever.forward_hidden(batch.base), batch.base)
                handle.remove()
                result[batch.index, layer * n_heads + head] = scores.float().numpy()
    return result


def timed(fn, *args, **kwargs):
    """(value, wall seconds, CPU seconds of this process: all its threads)."""
    start, cpu = time.perf_counter(), time.process_time()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - start, time.process_time() - cpu


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def memory_child(args: argparse.Namespace) -> None:
    """Subprocess: the exact per-head grid on ``--memory-pairs`` pairs; print peak RSS as JSON."""
    torch.set_num_threads(args.threads)
    retriever = load_retriever()
    pairs = load_pairs(retriever, args.data, args.memory_pairs, args.seed)
    loaded = rss_mb()
    grid = heads_grid(retriever.n_layers, retriever.n_heads)
    _, seconds, _ = timed(patch_pairs, retriever, pairs, grid, batch_size=args.batch_size)
    print(
        json.dumps(
            {"pairs": len(pairs), "seconds": seconds, "rss_loaded_mb": loaded, "peak_mb": rss_mb()}
        )
    )


def effects(
    s_base: np.ndarray, s_pert: np.ndarray, s_patched: np.ndarray, metric: str
) -> np.ndarray:
    return normalised_effect(s_base, s_pert, s_patched, "denoising", metric)


def grid_report(args: argparse.Namespace, retriever: Retriever) -> None:
    n = None if args.grid_pairs < 0 else args.grid_pairs
    pairs = load_pairs(retriever, args.data, n, args.seed)
    grid = heads_grid(retriever.n_layers, retriever.n_heads)
    scores, seconds, _ = timed(
        patch_pairs, retriever, pairs, grid, batch_size=args.batch_size, progress=True
    )
    delta = scores.s_pert - scores.s_base
    print(
        f"\nexact per-head grid on {len(pairs)} pairs: {seconds:.1f} s; mean Δ {delta.mean():.4f}, "
        f"Δ > 0 for {np.mean(delta > 0):.1%}, |Δ| min {np.abs(delta).min():.2e}"
    )
    for metric, threshold in (("classic", 0.0), ("classic", args.min_abs_delta), ("robust", 0.0)):
        keep = kept_pairs(scores.s_base, scores.s_pert, threshold)
        values = effects(scores.s_base[keep], scores.s_pert[keep], scores.s_patched[keep], metric)
        rows = rank_rows(summarise_columns(values, scores.names, seed=args.seed))
        print(
            f"top 5 heads, {metric} metric, {keep.sum()} pairs with |Δ| >= {threshold:g} "
            "(mean [95% bootstrap CI], p):"
        )
        for row in rows[:5]:
            print(
                f"  {row['component']}: {row['effect']:+.4f} [{row['ci_low']:+.4f}, "
                f"{row['ci_high']:+.4f}] p={row['p_value']:.2g}"
            )
        others = [abs(r["effect"]) for r in rows[5:]]
        print(f"  every other head |effect| <= {max(others):.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=64, help="0 skips the timing comparison")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-pairs", type=int, default=1000, help="0 skips the memory run")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1, help="timing repeats; the best is kept")
    parser.add_argument("--grid-pairs", type=int, default=0)
    parser.add_argument(
        "--min-abs-delta",
        type=float,
        default=0.01,
        help="grid: threshold of the second classic run",
    )
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.data.exists():
        parser.error(f"{args.data} does not exist; pass --data PATH/dl1920_tfc1_pairs.tsv")
    if args.memory_child:
        memory_child(args)
        return
    torch.set_num_threads(args.threads)
    retriever = load_retriever()
    if args.pairs:
        compare(args, retriever)
    if args.memory_pairs:
        memory(args)
    if args.grid_pairs:
        grid_report(args, retriever)


def compare(args: argparse.Namespace, retriever: Retriever) -> None:
    """Time (a), (b), (c) on ``--pairs`` pairs and compare their results."""
    pairs = load_pairs(retriever, args.data, args.pairs, args.seed)
    grid = heads_grid(retriever.n_layers, retriever.n_heads)
    n_layers = retriever.n_layers
    print(
        f"{len(pairs)} pairs, {len(grid)} heads, {retriever.model_id}, CPU, "
        f"{args.threads} threads, batch {args.batch_size}"
    )
    wall = {"naive": np.inf, "exact": np.inf, "attribution": np.inf}
    cpu = dict(wall)
    for _ in range(args.repeats):
        naive, *t_a = timed(naive_per_head, retriever, pairs, args.batch_size)
        exact, *t_b = timed(patch_pairs, retriever, pairs, grid, batch_size=args.batch_size)
        approx, *t_c = timed(attribute_pairs, retriever, pairs, grid, batch_size=args.batch_size)
        for key, (w, c) in (("naive", t_a), ("exact", t_b), ("attribution", t_c)):
            wall[key], cpu[key] = min(wall[key], w), min(cpu[key], c)
    bound = 2 * n_layers / (n_layers + 1)
    labels = {
        "naive": "(a) naive, one forward pass per head",
        "exact": "(b) RankScope exact (cached)",
        "attribution": "(c) attribution patching",
    }
    print(f"{'':40s} {'wall s':>9s} {'CPU s':>9s}")
    for key, label in labels.items():
        print(f"{label:40s} {wall[key]:9.2f} {cpu[key]:9.2f}")
    for name, times in (("wall", wall), ("CPU", cpu)):
        speedup = times["naive"] / times["exact"]
        print(
            f"{name:4s}: (a)/(b) = {speedup:.2f}x (bound 2L/(L+1) = {bound:.2f}, ratio to bound "
            f"{speedup / bound:.2f}); (b)/(c) = {times['exact'] / times['attribution']:.1f}x"
        )
    print(f"max |(a) - (b)| of patched scores: {np.abs(naive - exact.s_patched).max():.2e}")
    for metric in ("classic", "robust"):
        e_exact = effects(exact.s_base, exact.s_pert, exact.s_patched, metric)
        e_approx = effects(approx.s_base, approx.s_pert, approx.s_patched, metric)
        m_exact, m_approx = np.nanmean(e_exact, 0), np.nanmean(e_approx, 0)
        print(
            f"(c) vs (b), {metric} metric: Spearman {spearman(m_exact, m_approx):.3f}, "
            f"|effect| Spearman {spearman(np.abs(m_exact), np.abs(m_approx)):.3f}, "
            f"top-5 overlap {top_overlap(m_exact, m_approx, 5)}/5"
        )


def memory(args: argparse.Namespace) -> None:
    """Peak RSS of the exact path on ``--memory-pairs`` pairs, in a subprocess of its own."""
    command = [
        sys.executable,
        __file__,
        "--memory-child",
        f"--memory-pairs={args.memory_pairs}",
        f"--threads={args.threads}",
        f"--data={args.data}",
        f"--seed={args.seed}",
        f"--batch-size={args.batch_size}",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    info = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        f"exact path on {info['pairs']} pairs: {info['seconds']:.1f} s, peak RSS "
        f"{info['peak_mb'] / 1024:.2f} GB (after loading the model and pairs: "
        f"{info['rss_loaded_mb'] / 1024:.2f} GB)"
    )


if __name__ == "__main__":
    main()

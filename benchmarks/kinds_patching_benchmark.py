"""Exact per-head activation patching per retriever kind vs the naive baseline (CPU), one run.

For each kind — the BERT bi-encoder on all-MiniLM-L6-v2 (bundled), and tiny random SPLADE, late
interaction, monoT5, Qwen3-Reranker and RankLLaMA models from ``tests/tiny_models.py`` (2 layers
of 4 heads, or 2+2 for monoT5) — patch every head of every layer (denoising) on TFC1 pairs of the
built-in collection with (a) a naive baseline written here: one full forward pass of the baseline
batch per head, the head's slice of the output projection's input swapped in by a torch hook;
(b) RankScope's exact cached engine (``patch_pairs``). Prints both times, their ratio and the
largest difference of the patched scores.

    python benchmarks/kinds_patching_benchmark.py [--pairs 32] [--repeats 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from rankscope.tools.data.source import resolve_data  # noqa: E402
from rankscope.tools.interventions.pairs import pair_batches  # noqa: E402
from rankscope.tools.interventions.patching import heads_grid, patch_pairs  # noqa: E402
from rankscope.tools.retrievers import Retriever, load_retriever  # noqa: E402
from tests import tiny_models  # noqa: E402

KINDS: dict[str, Callable[[Path], Retriever]] = {
    "bi-encoder (MiniLM)": lambda _f: load_retriever(),
    "splade": lambda f: load_retriever(str(tiny_models.save_tiny_splade(f))),
    "late-interaction": lambda f: load_retriever(str(tiny_models.save_tiny_late_interaction(f))),
    "mono-t5": lambda f: load_retriever(str(tiny_models.save_tiny_mono_t5(f))),
    "qwen3-reranker": lambda f: load_retriever(
        str(tiny_models.save_tiny_decoder_reranker(f, "qwen3"))
    ),
    "rankllama": lambda f: load_retriever(
        str(tiny_models.save_tiny_decoder_reranker(f, "rankllama"))
    ),
}


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

                def patch(
                    _m: object,
                    args: tuple,
                    layer: int = layer,
                    cols: slice = cols,
                    src: dict[int, torch.Tensor] = source,
                ) -> tuple:
                    x = args[0].clone()
                    x[..., cols] = src[layer][..., cols]
                    return (x, *args[1:])

                handle = out_proj[layer].register_forward_pre_hook(patch)
                scores = retriever.readout(retriever.forward_hidden(batch.base), batch.base)
                handle.remove()
                result[batch.index, layer * n_heads + head] = scores.float().numpy()
    return result


def best_time(fn: Callable[[], object], repeats: int) -> tuple[object, float]:
    """The value of ``fn`` and its best wall time over ``repeats`` runs."""
    best, value = np.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return value, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    source = resolve_data("builtin")
    print(f"{'kind':22} {'L x H':>6} {'naive s':>9} {'exact s':>9} {'ratio':>7} {'max diff':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for kind, build in KINDS.items():
            retriever = build(Path(tmp) / kind.split()[0])
            pairs = list(
                source.pairs(
                    "TFC1",
                    "append",
                    tokenizer=retriever.tokenizer,
                    split="all",
                    n=args.pairs,
                    seed=0,
                )
            )
            grid = heads_grid(retriever.n_layers, retriever.n_heads)
            naive, t_naive = best_time(
                lambda r=retriever, p=pairs: naive_per_head(r, p, args.batch_size), args.repeats
            )
            exact, t_exact = best_time(
                lambda r=retriever, p=pairs, g=grid: patch_pairs(
                    r, p, g, "denoising", "cached", args.batch_size
                ),
                args.repeats,
            )
            diff = float(np.abs(np.asarray(naive) - exact.s_patched).max())  # type: ignore[attr-defined]
            shape = f"{retriever.n_layers}x{retriever.n_heads}"
            print(
                f"{kind:22} {shape:>6} {t_naive:9.3f} {t_exact:9.3f} "
                f"{t_naive / t_exact:6.2f}x {diff:9.1e}",
                flush=True,
            )


if __name__ == "__main__":
    main()

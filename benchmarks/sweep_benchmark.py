"""Ray overhead: the exact per-head patching grid on all-MiniLM-L6-v2, sharded vs in-process.

Run on demand (needs ``rankscope[ray]``)::

    python benchmarks/sweep_benchmark.py [--pairs 32] [--shards 2] [--threads N] [--data PATH]
        [--batch-size 16] [--seed 0]

On ``--pairs`` length-aligned TFC1 pairs it times (a) ``patch_pairs`` in this process with
``--threads`` torch threads (default: as many as shards) and (b) the same grid on a local Ray with
``--shards`` actors of one thread each (:class:`ShardedPatcher`): the actors' start (Ray, model
load) and the grid itself, separately. It prints both times, the ratio (b)/(a) with and without
the start, and max |(a) − (b)| over the scores (the merged grid must equal the in-process one
within 1e-6).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from rankscope.tools.diagnostics.source import resolve_data  # noqa: E402
from rankscope.tools.interventions.patching import heads_grid, patch_pairs  # noqa: E402
from rankscope.tools.interventions.sharding import ShardedPatcher  # noqa: E402
from rankscope.tools.retrievers import load_retriever  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "dl1920_tfc1_pairs.tsv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="in-process torch threads")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    opts = parser.parse_args()
    threads = opts.threads or opts.shards
    torch.set_num_threads(threads)

    retriever = load_retriever(None)
    data = resolve_data(str(opts.data)) if opts.data.exists() else resolve_data(None)
    pairs = list(
        data.pairs(
            "TFC1", "append", tokenizer=retriever.tokenizer, split="all", n=opts.pairs, seed=0
        )
    )
    grid = heads_grid(retriever.n_layers, retriever.n_heads)
    print(
        f"MiniLM, {len(grid)} heads × {len(pairs)} TFC1 pairs ({data.name}), "
        f"batch {opts.batch_size}; in-process {threads} threads vs {opts.shards} Ray actors"
    )

    started = time.perf_counter()
    local = patch_pairs(retriever, pairs, grid, batch_size=opts.batch_size)
    t_local = time.perf_counter() - started
    print(f"(a) in-process exact grid: {t_local:.1f} s")

    started = time.perf_counter()
    with ShardedPatcher(None, opts.shards) as patcher:
        patcher.ready()
        t_start = time.perf_counter() - started
        started = time.perf_counter()
        sharded = patcher.patch_pairs(None, pairs, grid, batch_size=opts.batch_size)
        t_grid = time.perf_counter() - started
    diff = max(
        float(abs(getattr(sharded, key) - getattr(local, key)).max())
        for key in ("s_base", "s_pert", "s_patched")
    )
    print(f"(b) sharded: actors ready in {t_start:.1f} s, grid {t_grid:.1f} s")
    print(f"ratio (b)/(a), grid only: {t_grid / t_local:.2f}")
    print(f"ratio (b)/(a), with the actors' start: {(t_start + t_grid) / t_local:.2f}")
    print(f"max |(a) − (b)| = {diff:.2e} ({'within' if diff <= 1e-6 else 'ABOVE'} 1e-6)")


if __name__ == "__main__":
    main()

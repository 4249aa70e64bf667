"""token_screen on the default all-MiniLM-L6-v2 and the built-in collection: wall time.

Ranks the whole MiniLM vocabulary (30,522 ids less special, unused and '##' tokens) by the
first-order estimate over ``--n-docs`` documents and verifies the top ``--top-k`` exactly; prints
the time of each stage's run and the top verified tokens (issue 11 target: under 2 minutes on
2 cores).

    python benchmarks/token_screen_benchmark.py [--threads 2] [--n-docs 32] [--top-k 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from rankscope.tools.contract import ToolContext
from rankscope.tools.data.source import resolve_data
from rankscope.tools.registry import get_tool, validate_args
from rankscope.tools.retrievers import load_retriever


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-docs", type=int, default=32)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--position", default="start", choices=["start", "end", "random"])
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    started = time.perf_counter()
    retriever = load_retriever()
    loaded = time.perf_counter()
    tool = get_tool("token_screen")
    args = validate_args(
        tool,
        {"n_docs": options.n_docs, "top_k": options.top_k, "position": options.position},
    )
    with tempfile.TemporaryDirectory() as tmp:
        ctx = ToolContext(lambda: retriever, resolve_data(None), Path(tmp), progress=False)
        result = tool.run(ctx, args)
    done = time.perf_counter()
    print(result.summary)
    print(
        f"vocabulary ranked: {result.metrics['n_vocabulary']} tokens; "
        f"threads: {options.threads}; model load: {loaded - started:.1f} s; "
        f"token_screen: {done - loaded:.1f} s; total: {done - started:.1f} s"
    )


if __name__ == "__main__":
    main()

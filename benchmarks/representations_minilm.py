"""The representation tools on all-MiniLM-L6-v2 and the shared TFC1 corpus: metrics and runtimes.

Runs linear probes (query-term presence, TF and IDF of document tokens), SAE training on the final
embeddings and on a layer's residual stream, feature inspection, steering along the TFC1 mean
difference and the embedding SVD, through the tool registry, and writes every tool's metrics,
summary and figures under ``--out``.

    python benchmarks/representations_minilm.py --out runs/representations [--data SPEC]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from rankscope.tools.contract import ToolContext
from rankscope.tools.data.source import resolve_data
from rankscope.tools.registry import get_tool, validate_args
from rankscope.tools.retrievers import load_retriever

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tfc1_baseline_corpus.json"

RUNS: list[tuple[str, str, dict]] = [
    ("probe_qterm", "linear_probe", {"property": "qterm", "n_docs": 300}),
    ("probe_tf", "linear_probe", {"property": "tf", "n_docs": 300}),
    ("probe_idf", "linear_probe", {"property": "idf", "n_docs": 300}),
    ("probe_doc_tf", "linear_probe", {"property": "tf", "level": "document", "n_docs": 600}),
    (
        "sae_final",
        "train_sae",
        {"n_docs": 2000, "docs_per_query": 40, "width": 1536, "k": 16, "epochs": 40},
    ),
    (
        "sae_final_4k",
        "train_sae",
        {"n_docs": 4000, "docs_per_query": 80, "width": 768, "k": 32, "epochs": 40},
    ),
    (
        "sae_L3",
        "train_sae",
        {"layer": 3, "n_docs": 400, "docs_per_query": 20, "width": 1536, "k": 32, "epochs": 10},
    ),
    ("sae_features", "feature_inspection", {"unit_type": "sae", "property": "idf", "n_docs": 100}),
    ("neurons_L5_qterm", "feature_inspection", {"layer": 5, "property": "qterm", "n_docs": 150}),
    ("steer_mean_diff_L3", "steering", {"layer": 3, "n_pairs": 64, "n_docs": 64}),
    (
        "steer_mean_diff_L3_raw",
        "steering",
        {"layer": 3, "normalize": False, "scales": [-2, -1, -0.5, 0.5, 1, 2], "n_docs": 64},
    ),
    ("steer_mean_diff_L5", "steering", {"layer": 5, "n_pairs": 64, "n_docs": 64}),
    (
        "steer_probe_tf_L2",
        "steering",
        {"direction": "probe", "layer": 2, "positions": "doc", "n_docs": 64},
    ),
    *[
        (
            f"steer_pairs_filler_L{layer}",
            "steering",
            {
                "target": "pairs",
                "positions": "filler",
                "layer": layer,
                "normalize": False,
                "scales": [0.5, 1, 2],
                "n_pairs": 128,
            },
        )
        for layer in (0, 1, 3, 5)
    ],
    ("embedding_svd", "embedding_svd", {}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--only", nargs="*", help="names of the runs to do (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    retriever = load_retriever()
    data = resolve_data(args.data)
    setup = time.perf_counter() - start
    report: dict[str, dict] = {"_setup": {"seconds": setup, "data": args.data}}
    sae_folder: str | None = None
    probe_file: str | None = None
    for name, tool_name, raw in RUNS:
        if args.only and name not in args.only:
            continue
        tool = get_tool(tool_name)
        raw = dict(raw)
        if name == "sae_features" and sae_folder:
            raw["sae"] = sae_folder
        if name == "steer_probe_tf_L2" and probe_file:
            raw["probe"] = probe_file
        folder = args.out / name
        shutil.rmtree(folder, ignore_errors=True)
        ctx = ToolContext(lambda: retriever, data, folder, progress=False)
        t0 = time.perf_counter()
        result = tool.run(ctx, validate_args(tool, raw))
        seconds = time.perf_counter() - t0
        if tool_name == "train_sae" and name == "sae_L3":
            sae_folder = str(result.artifacts[1].path.parent)
        if name == "probe_tf":
            probe_file = str(result.artifacts[1].path)
        report[name] = {
            "tool": tool_name,
            "args": raw,
            "seconds": seconds,
            "metrics": result.metrics,
            "summary": result.summary,
            "artifacts": [str(a.path) for a in result.artifacts],
        }
        print(f"== {name} ({tool_name}, {seconds:.1f} s)\n{result.summary}\n", flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report.json").write_text(json.dumps(report, indent=2, default=float))


if __name__ == "__main__":
    main()

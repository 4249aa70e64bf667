"""Server time of the investigation page with 50 hypotheses and 200 figures (median of repeats).

Run: ``python benchmarks/web_benchmark.py [--repeats 7]``; the target is under 1 s.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from fastapi.testclient import TestClient

from rankscope.agent.web import create_app
from rankscope.experiments_db import Store, open_store

HYPOTHESES = 50
FIGURES = 200


def build(store: Store, folder: Path) -> int:
    """An investigation of ``HYPOTHESES`` hypotheses with ``FIGURES`` figures among them."""
    inv = store.create_investigation(
        "Benchmark: which heads matter?", "model", "builtin:tfc1", "protocol"
    )
    per_hypothesis = FIGURES // HYPOTHESES
    for h in range(HYPOTHESES):
        hyp = store.preregister_hypothesis(
            inv,
            f"Head {h} carries the signal",
            {"metric": "effect", "direction": "greater", "threshold": 0.2},
            tool="t",
        )
        exp = store.start_experiment(inv, "t", {"head": h, "seed": h}, hypothesis_id=hyp)
        figures = []
        for f in range(per_hypothesis):
            path = folder / f"fig-{h}-{f}.png"
            path.write_bytes(b"\x89PNG" + f"{h}-{f}".encode() * 200)
            figures.append((path, "image/png", f"figure {f} of H{h}"))
        ev = store.finish_experiment(
            exp,
            {"effect": 0.1 * (h % 5), "p_value": 0.01, "ci_low": 0.0, "ci_high": 0.5},
            summary=f"head {h}",
            tables={"per_pair": [{"pair": i, "effect": i / 10} for i in range(20)]},
            artifacts=figures,
        )
        store.record_verdict(
            hyp,
            "supported" if h % 2 else "refuted",
            criterion_result={"value": 0.3, "reason": "rule"},
            cited_evidence_ids=[ev],
            decided_by="rules",
        )
    return inv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with open_store(
            f"sqlite:///{folder / 'bench.db'}", artifact_dir=folder / "artifacts"
        ) as store:
            inv = build(store, folder)
            client = TestClient(create_app(store))
            client.get(f"/investigations/{inv}")
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                response = client.get(f"/investigations/{inv}")
                times.append(time.perf_counter() - start)
                assert response.status_code == 200 and response.text.count("<img") == FIGURES
    median = statistics.median(times)
    print(
        f"investigation page, {HYPOTHESES} hypotheses, {FIGURES} figures: median {median * 1000:.0f} ms "
        f"over {args.repeats} repeats ({len(response.content) / 1024:.0f} KiB); target < 1000 ms"
    )


if __name__ == "__main__":
    main()

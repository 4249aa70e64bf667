"""Server time of the investigation page with 50 hypotheses and 200 figures (median of repeats).

Each hypothesis claims one head, with a verdict in the engine's shape (discovery and, for half of
them, a held-out replication), evidence with a per-head table of all 72 heads (so the page draws 50
heatmaps), a 20-row table and four figures; the page also draws the answer paragraph and the
forest plot of the 50 hypotheses. The Markdown and HTML reports (forest plot as a PNG) are timed
once for reference.

Run: ``python benchmarks/web_benchmark.py [--repeats 7]``; the target is under 1 s.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from fastapi.testclient import TestClient

from rankscope.agent.reports import write_reports
from rankscope.agent.verdicts import Decision, SplitResult
from rankscope.agent.web import create_app
from rankscope.experiments_db import Store, open_store

HYPOTHESES = 50
FIGURES = 200


def _split(value: float, split: str, evidence_id: int, level: float) -> SplitResult:
    return SplitResult(
        split=split,
        metric="effect",
        direction="greater",
        threshold=0.005,
        effective_threshold=0.005,
        sesoi=0.005,
        null_value=0.0,
        value=value,
        ci_low=value - 0.003,
        ci_high=value + 0.003,
        ci_level=1 - 2 * level,
        p_value=0.01,
        alpha=0.05,
        corrected_alpha=level,
        n_queries=14,
        n_pairs=96,
        outcome="met" if value - 0.003 > 0.005 else "undetermined",
        evidence_id=evidence_id,
    )


def build(store: Store, folder: Path) -> int:
    """An investigation of ``HYPOTHESES`` hypotheses with ``FIGURES`` figures among them."""
    inv = store.create_investigation(
        "Benchmark: which heads matter?", "model", "builtin:tfc1", "protocol"
    )
    per_hypothesis = FIGURES // HYPOTHESES
    heads = [
        {
            "component": f"L{layer}.H{h}",
            "effect": (layer * 12 + h) % 9 * 1e-3,
            "ci_low": 0.0,
            "ci_high": 0.01,
            "p_value": 0.01,
            "n": 96,
        }
        for layer in range(6)
        for h in range(12)
    ]
    for h in range(HYPOTHESES):
        head = f"L{h % 6}.H{h % 12}"
        hyp = store.preregister_hypothesis(
            inv,
            f"Head {head} carries the signal ({h})",
            {"metric": f"effect[{head}]", "direction": "greater", "threshold": 0.005},
            tool="activation_patching",
            tool_args={"seed": h, "axiom": "TFC1", "variant": "append", "components": [head]},
            components=[head],
        )
        evidence = []
        for phase in ("discovery", "holdout"):
            exp = store.start_experiment(
                inv,
                "activation_patching",
                {"head": h, "seed": h, "split": phase},
                hypothesis_id=hyp,
            )
            figures = []
            for f in range(per_hypothesis // 2):
                path = folder / f"fig-{h}-{phase}-{f}.png"
                path.write_bytes(b"\x89PNG" + f"{h}-{f}".encode() * 200)
                figures.append((path, "image/png", f"figure {f} of H{h}"))
            evidence.append(
                store.finish_experiment(
                    exp,
                    {
                        f"effect[{head}]": 0.002 * (h % 5),
                        f"effect_ci_low[{head}]": 0.0,
                        f"effect_ci_high[{head}]": 0.01,
                        f"p_value[{head}]": 0.01,
                        "n_pairs": 96,
                    },
                    summary=f"head {h}",
                    tables={
                        "effects": heads,
                        "per_pair": [{"pair": i, "effect": i / 10} for i in range(20)],
                    },
                    artifacts=figures,
                )
            )
        level = 0.05 / (h + 1) ** 2
        value = 0.002 * (h % 5) + 0.004
        disc = _split(value, "discovery", evidence[0], level)
        held = _split(value + 0.001, "holdout", evidence[1], level) if h % 2 else None
        status = "supported" if held and disc.outcome == "met" else "inconclusive"
        decision = Decision(
            status=status,
            reason="rule",
            discovery=disc,
            holdout=held,
            level=level,
            lond_index=h + 1,
            evidence_ids=evidence,
        )
        store.record_verdict(
            hyp,
            status,
            criterion_result=decision.criterion_result(),
            cited_evidence_ids=evidence,
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
            client = TestClient(create_app(store), base_url="http://127.0.0.1")
            client.get(f"/investigations/{inv}")
            times, cpu = [], []
            for _ in range(args.repeats):
                start, start_cpu = time.perf_counter(), time.process_time()
                response = client.get(f"/investigations/{inv}")
                times.append(time.perf_counter() - start)
                cpu.append(time.process_time() - start_cpu)
                assert response.status_code == 200 and response.text.count("<img") == FIGURES
                assert response.text.count('class="forest-row"') == HYPOTHESES
                assert response.text.count('<svg class="heatmap"') == 2 * HYPOTHESES
            start = time.perf_counter()
            write_reports(store, inv, folder / "report")
            report_s = time.perf_counter() - start
    median = statistics.median(times)
    print(
        f"investigation page, {HYPOTHESES} hypotheses, {FIGURES} figures, "
        f"{2 * HYPOTHESES} heatmaps, answer and forest plot: median {median * 1000:.0f} ms "
        f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f}) over {args.repeats} repeats "
        f"({len(response.content) / 1024:.0f} KiB); target < 1000 ms"
    )
    print(
        f"CPU time of this process per page: median {statistics.median(cpu) * 1000:.0f} ms "
        "(the wall time above includes waiting for cores other processes hold)"
    )
    print(f"reports (Markdown + HTML, forest plot PNG): {report_s:.2f} s")


if __name__ == "__main__":
    main()

"""Organism builds, old builder vs new, in one run (issue 22): build time and check figures.

For each organism, the layer-cached builder (``trainer="cached"``, the catalogue's spec:
carriers' slices or low-rank updates of the top layers, states cached below them, a stopping
rule on the held-out check), then the first builder (``trainer="full"``: every parameter, every
text through the whole model) on a short step count. Organisms built in one process share the
base's pass at the same cut (the first build at a cut pays it; its row says so).

Prints per build: steps, wall and CPU seconds (base pass, training, checks), trained
parameters, and the check figures (the rule's held-out change against the base's, whether it
holds, Spearman of natural scores against the base, the share of the planted change that
restoring the carriers removes). The old builder's time at its own catalogue's step
count (300) is projected from its measured seconds per step.

CPU seconds divided by the threads are what the build would take alone on that many cores; on
a machine shared with other jobs, wall seconds are longer (the load average is printed).

    python benchmarks/organism_build_benchmark.py [--organisms trigger length_penalty tfc1_heads]
        [--old-steps 3] [--old-organisms ...] [--no-old] [--steps N] [--attempts N]
        [--threads 2] [--tiny] [--verbose] [--out FILE] [--into-cache]

``--into-cache`` writes the new builds into the user cache, where ``rankscope bench
groundtruth`` (and ``benchmarks/groundtruth.py``) find them: one build run for both benchmarks.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from rankscope.tools.organisms import GroundTruth, build_organism, cache_root, catalogue
from rankscope.tools.organisms.spec import TRIGGER_WORD
from rankscope.tools.organisms.texts import default_corpus

OLD_LR = 5e-5
"""The first builder's learning rate for MiniLM (its catalogue's)."""


def figures(r: GroundTruth, threads: int) -> dict[str, Any]:
    """One build's row: times and check figures."""
    row: dict[str, Any] = {
        "organism": r.name,
        "builder": r.trainer,
        "steps": r.steps,
        "attempts": r.attempts,
        "trained_parameters": r.trained_parameters,
        "wall_s": round(r.build_seconds, 1),
        "cpu_s": round(r.build_cpu_seconds, 1),
        "cpu_s_per_thread": round(r.build_cpu_seconds / threads, 1),
    }
    for stage in ("base_pass", "training", "checks"):
        if stage in r.timings:
            row[f"{stage}_s"] = round(r.timings[stage], 1)
            row[f"{stage}_cpu_s"] = round(r.timings.get(f"{stage}_cpu", 0.0), 1)
    for rule in r.rules:
        row[f"{rule.rule}.organism_delta"] = r.checks.get(f"{rule.rule}.organism_delta")
        row[f"{rule.rule}.base_delta"] = r.checks.get(f"{rule.rule}.base_delta")
        row[f"{rule.rule}.holds_heldout"] = r.checks.get(f"{rule.rule}.holds_heldout")
        row[f"{rule.rule}.absent_in_base"] = r.checks.get(f"{rule.rule}.absent_in_base")
        if f"{rule.rule}.restore_carriers_removed" in r.checks:
            row[f"{rule.rule}.restore_carriers_removed"] = r.checks[
                f"{rule.rule}.restore_carriers_removed"
            ]
    row["spearman_natural_vs_base"] = r.checks.get("spearman_natural_vs_base")
    return row


def project(row: dict[str, Any], steps: int) -> float | None:
    """The old builder's wall seconds at ``steps`` from its measured seconds per step."""
    if not row.get("steps") or "training_s" not in row:
        return None
    per_step = row["training_s"] / row["steps"]
    return row.get("base_pass_s", 0.0) + per_step * steps + row.get("checks_s", 0.0)


def show(row: dict[str, Any]) -> str:
    parts = [f"{row['organism']:<15} {row['builder']:<7} steps {row['steps']:>4}"]
    parts.append(f"wall {row['wall_s']:>7.1f} s  cpu/thread {row['cpu_s_per_thread']:>7.1f} s")
    stages = [
        f"{s} {row[f'{s}_s']:.0f}/{row[f'{s}_cpu_s']:.0f}"
        for s in ("base_pass", "training", "checks")
        if f"{s}_s" in row
    ]
    parts.append("(" + ", ".join(stages) + " wall/cpu s)")
    checks = [
        f"{k.split('.', 1)[1]}={v:+.4f}" if isinstance(v, float) else f"{k.split('.', 1)[1]}={v}"
        for k, v in row.items()
        if "." in k and v is not None
    ]
    rho = row.get("spearman_natural_vs_base")
    checks.append(f"spearman={rho:.3f}" if isinstance(rho, float) else "spearman=—")
    return "  ".join(parts) + "\n    " + ", ".join(checks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--organisms", nargs="*", default=["trigger", "length_penalty", "tfc1_heads"]
    )
    parser.add_argument("--old-steps", type=int, default=3)
    parser.add_argument(
        "--old-full-steps",
        type=int,
        default=300,
        help="The first builder's step count (its catalogue's), for the projection.",
    )
    parser.add_argument(
        "--old-organisms", nargs="*", default=None, help="Old builds of these (default: all)."
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="New builder: at most these steps per attempt."
    )
    parser.add_argument("--attempts", type=int, default=None, help="New builder: attempts.")
    parser.add_argument("--no-old", action="store_true", help="Only the new builder.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="The tiny base (seconds, for CI).")
    parser.add_argument("--out", type=Path, default=Path("organism_builds.json"))
    parser.add_argument("--verbose", action="store_true", help="Print each build's progress.")
    parser.add_argument(
        "--into-cache",
        action="store_true",
        help="Write the new builds (catalogue specs only) into the user cache, replacing any "
        "there, for the ground-truth bench.",
    )
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    specs = catalogue(options.tiny)
    corpus = default_corpus(options.tiny, TRIGGER_WORD)
    print(
        f"threads {options.threads}; load average at start {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} CPUs; corpus {corpus.name}: {len(corpus.trained)} trained queries "
        f"({len(corpus.split('trained'))} groups), {len(corpus.heldout)} held-out queries "
        f"({len(corpus.split('heldout'))} groups)",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    plan = [(name, "new") for name in options.organisms]
    if not options.no_old:
        plan += [(name, "old") for name in options.old_organisms or options.organisms]
    with tempfile.TemporaryDirectory() as tmp:
        for name, label in plan:
            spec = specs[name]
            # The first builder as its catalogue had it: every parameter, all texts per step,
            # lr 5e-5 (twenty times that for carriers).
            update: dict[str, Any] = {
                "trainer": "full",
                "steps": options.old_steps,
                "lr": OLD_LR * (20 if spec.carriers else 1),
                "variants_per_step": None,
            }
            if label == "new":
                update = {"trainer": "cached", "steps": options.steps or spec.steps}
                if options.attempts:
                    update["attempts"] = options.attempts
            variant = spec.model_copy(update=update)
            cached = options.into_cache and label == "new" and variant == spec
            record = build_organism(
                variant,
                tiny=options.tiny,
                root=cache_root() if cached else Path(tmp) / label,
                corpus=corpus,
                force=True,
                log=(lambda m: print(f"    {m}", flush=True)) if options.verbose else None,
            )
            row = figures(record, options.threads)
            if label == "old":
                row["projected_wall_s_at_catalogue_steps"] = project(row, options.old_full_steps)
            rows.append(row)
            print(show(row), flush=True)
            if label == "old" and row["projected_wall_s_at_catalogue_steps"] is not None:
                print(
                    f"    old builder at {options.old_full_steps} steps: about "
                    f"{row['projected_wall_s_at_catalogue_steps']:.0f} s wall "
                    f"({row['training_s'] / row['steps']:.1f} s per step here)",
                    flush=True,
                )
    total = time.perf_counter() - started
    print(f"total {total:.0f} s; load average at end {os.getloadavg()[0]:.1f}")
    options.out.write_text(json.dumps(rows, indent=2), "utf-8")
    print(f"rows: {options.out}")


if __name__ == "__main__":
    main()

"""Functions run in spawned processes by the ``test_db_*`` tests (this module holds no tests).

They import only ``experiments_db``, so a worker process starts quickly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rankscope.experiments_db import open_store


def metrics(i: int) -> dict[str, Any]:
    """A realistic metrics dict of a patching experiment."""
    return {
        "normalised_effect": 0.31 + i * 1e-3,
        "robust_effect": 0.27,
        "ci_low": 0.12,
        "ci_high": 0.44,
        "p_value": 0.003,
        "n_pairs": 32,
        "share_moved": 0.84,
        "top_component": f"encoder.layer.{i % 6}.attention.self.head.{i % 12}",
    }


def concurrent_writer(url: str, artifact_dir: str, barrier: Any, worker: int, n: int) -> None:
    """Run in a spawned process: open the store (racing the other workers to migrate a fresh
    database), then, all together, write an investigation with ``n`` experiments, each with
    evidence, an artifact every worker shares and one of its own."""
    work = Path(artifact_dir).parent / f"worker-{worker}"
    work.mkdir(parents=True, exist_ok=True)
    shared = work / "shared.png"
    shared.write_bytes(b"identical content written by every worker")
    barrier.wait(60)
    with open_store(url, artifact_dir=artifact_dir) as store:
        barrier.wait(60)
        inv = store.create_investigation(f"worker {worker}", "m", "d", "protocol")
        for i in range(n):
            own = work / f"own-{i}.json"
            own.write_text(f'{{"worker": {worker}, "i": {i}}}')
            exp = store.start_experiment(inv, "axiom_test", {"worker": worker, "i": i, "seed": i})
            store.finish_experiment(
                exp,
                metrics(i),
                summary=f"worker {worker} run {i}",
                artifacts=[(shared, "image/png"), (own, "application/json")],
            )


def crashing_worker(url: str, artifact_dir: str, investigation_id: int) -> None:
    """Run in a spawned process: start an experiment, then die without any cleanup."""
    store = open_store(url, artifact_dir=artifact_dir)
    store.start_experiment(investigation_id, "activation_patching", {"seed": 9})
    os._exit(3)

"""Evidence-store benchmark: insert experiments with evidence, then load an investigation's tree.

Run on demand (not part of the tests)::

    python benchmarks/store_benchmark.py [--n 10000] [--pg-url URL] [--backends sqlite,postgresql]

Each experiment goes through the real API (``start_experiment`` then ``finish_experiment``: two
transactions) with a realistic metrics dict, a five-row table and provenance. SQLite uses a
temporary file; PostgreSQL a temporary database created from ``--pg-url`` (default
``$RANKSCOPE_TEST_PG_URL`` or ``postgresql+psycopg://postgres@127.0.0.1:5432/test``) and dropped
afterwards. Prints experiments/second, the median tree-load latency and the PG/SQLite ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from rankscope.experiments_db import Criterion, capture_provenance, mask_url, open_store  # noqa: E402

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
HYPOTHESES = 20
TREE_RUNS = 5


@dataclass
class Result:
    backend: str
    n: int
    insert_s: float
    tree_load_s: list[float]
    tree_experiments: int

    @property
    def rows_per_s(self) -> float:
        return self.n / self.insert_s

    @property
    def tree_median_s(self) -> float:
        return statistics.median(self.tree_load_s)


def _metrics(i: int) -> dict[str, Any]:
    return {
        "normalised_effect": 0.3 + (i % 97) / 1000,
        "robust_effect": 0.25 + (i % 89) / 1000,
        "effect_ci_low": 0.11,
        "effect_ci_high": 0.47,
        "p_value": 0.004,
        "share_moved": 0.81,
        "mean_score_delta": 0.052,
        "n_pairs": 32,
        "n_components": 72,
        "top_component_effect": 0.42,
        "rank_change_mean": 1.7,
        "baseline_score_mean": 0.61,
    }


def _table(i: int) -> dict[str, Any]:
    return {
        "per_head": [
            {"layer": (i + k) % 6, "head": (i * 7 + k) % 12, "effect": 0.4 - k * 0.05}
            for k in range(5)
        ]
    }


@contextmanager
def _sqlite_url(workdir: Path) -> Iterator[str]:
    yield f"sqlite:///{workdir / 'bench.db'}"


@contextmanager
def _postgres_url(admin_url: str) -> Iterator[str]:
    libpq = make_url(admin_url).set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        admin = psycopg.connect(libpq, autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        raise SystemExit(f"PostgreSQL at {mask_url(admin_url)} is unreachable: {exc}") from None
    name = f"rs_bench_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_backend(backend: str, url: str, n: int, workdir: Path) -> Result:
    with open_store(url, artifact_dir=workdir / f"{backend}_artifacts") as store:
        inv = store.create_investigation(
            "benchmark", "sentence-transformers/all-MiniLM-L6-v2", "builtin", "protocol"
        )
        hyps = [
            store.preregister_hypothesis(
                inv,
                f"hypothesis {h}",
                Criterion(metric="normalised_effect", direction="greater", threshold=0.2),
                tool="activation_patching",
            )
            for h in range(HYPOTHESES)
        ]
        start = time.perf_counter()
        for i in range(n):
            args = {"component": "attn_head", "layers": [0, 1, 2, 3, 4, 5], "seed": i}
            prov = capture_provenance(
                tool_name="activation_patching",
                tool_version="1",
                args=args,
                model_id="sentence-transformers/all-MiniLM-L6-v2",
                weights_hash="0" * 64,
                dataset_hash="1" * 64,
                device="cpu",
                timings={"run_s": 0.5},
            )
            exp = store.start_experiment(
                inv,
                "activation_patching",
                args,
                hypothesis_id=hyps[i % HYPOTHESES],
                provenance=prov,
            )
            store.finish_experiment(
                exp, _metrics(i), summary=f"top heads for run {i}", tables=_table(i)
            )
        insert_s = time.perf_counter() - start
        loads = []
        tree_experiments = 0
        for _ in range(TREE_RUNS):
            t0 = time.perf_counter()
            tree = store.investigation_tree(inv)
            loads.append(time.perf_counter() - t0)
            tree_experiments = len(tree.experiments())
    return Result(backend, n, insert_s, loads, tree_experiments)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="experiments to insert per backend")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("RANKSCOPE_TEST_PG_URL", DEFAULT_PG_URL),
        help="PostgreSQL server URL (a temporary database is created next to its database)",
    )
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    results: dict[str, Result] = {}
    with tempfile.TemporaryDirectory(prefix="rankscope-bench-") as tmp:
        workdir = Path(tmp)
        for backend in backends:
            if backend == "sqlite":
                ctx = _sqlite_url(workdir)
            elif backend == "postgresql":
                ctx = _postgres_url(args.pg_url)
            else:
                parser.error(f"unknown backend {backend!r}")
            with ctx as url:
                print(
                    f"{backend}: inserting {args.n} experiments into {mask_url(url)} …", flush=True
                )
                results[backend] = run_backend(backend, url, args.n, workdir)
    print()
    print(f"{'backend':<12}{'experiments/s':>15}{'insert total s':>16}{'tree load median s':>20}")
    for r in results.values():
        print(f"{r.backend:<12}{r.rows_per_s:>15.0f}{r.insert_s:>16.2f}{r.tree_median_s:>20.3f}")
        print(f"{'':<12}(tree of {r.tree_experiments} experiments, {TREE_RUNS} runs)")
    if "sqlite" in results and "postgresql" in results:
        s, p = results["sqlite"], results["postgresql"]
        print()
        print(f"PG/SQLite insert rate ratio: {p.rows_per_s / s.rows_per_s:.2f}")
        print(f"PG/SQLite tree-load latency ratio: {p.tree_median_s / s.tree_median_s:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

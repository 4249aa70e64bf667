"""Ray on one machine: a sharded exact grid vs in-process, a sweep with 1 and 2 workers, and the
store's throughput with concurrent writers.

Run on demand (needs ``rankscope[ray]``; the last two need a PostgreSQL server)::

    python benchmarks/sweep_benchmark.py [--pairs 32] [--shards 2] [--threads N] [--data PATH]
        [--batch-size 16] [--db postgresql+psycopg://postgres@127.0.0.1:5432/test]
        [--cells 24] [--writes 200] [--only grid|sweep|store]

grid: on ``--pairs`` length-aligned TFC1 pairs, the exact per-head grid of all-MiniLM-L6-v2 (a) by
``patch_pairs`` in this process with ``--threads`` torch threads (default: as many as shards) and
(b) on a local Ray with ``--shards`` one-thread actors (:class:`ShardedPatcher`): the actors' start
(Ray, model load) and the grid, separately; the ratio (b)/(a) with and without the start, and
max |(a) − (b)| (must be within 1e-6).

sweep (with ``--db``): ``--cells`` protocol investigations of a tiny random BERT (two questions ×
seeds) by ``run_sweep`` on a local Ray of 1, then 2 CPUs, each into a fresh database; wall times
(Ray's start included) and their ratio.

store (with ``--db``): Ray tasks that each record ``--writes`` experiments (start + finish with
evidence) in the shared store, 1 then 2 writers at once; experiments per second (timed inside the
tasks, from the first write to the last of the slowest writer) and their ratio.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from rankscope.tools.data.source import resolve_data  # noqa: E402
from rankscope.tools.interventions.patching import heads_grid, patch_pairs  # noqa: E402
from rankscope.tools.interventions.sharding import ShardedPatcher  # noqa: E402
from rankscope.tools.retrievers import load_retriever  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "dl1920_tfc1_pairs.tsv"


def grid(opts: argparse.Namespace) -> None:
    threads = opts.threads or opts.shards
    torch.set_num_threads(threads)
    retriever = load_retriever(None)
    data = (
        resolve_data(f"{opts.data}#perturbation=TFC1/append")
        if opts.data.exists()
        else resolve_data(None)
    )
    pairs = list(
        data.pairs(
            "TFC1", "append", tokenizer=retriever.tokenizer, split="all", n=opts.pairs, seed=0
        )
    )
    heads = heads_grid(retriever.n_layers, retriever.n_heads)
    print(
        f"grid: MiniLM, {len(heads)} heads × {len(pairs)} TFC1 pairs ({data.name}), "
        f"batch {opts.batch_size}; in-process {threads} threads vs {opts.shards} Ray actors"
    )
    started = time.perf_counter()
    local = patch_pairs(retriever, pairs, heads, batch_size=opts.batch_size)
    t_local = time.perf_counter() - started
    print(f"(a) in-process exact grid: {t_local:.1f} s")
    started = time.perf_counter()
    with ShardedPatcher(None, opts.shards) as patcher:
        patcher.ready()
        t_start = time.perf_counter() - started
        started = time.perf_counter()
        sharded = patcher.patch_pairs(None, pairs, heads, batch_size=opts.batch_size)
        t_grid = time.perf_counter() - started
    diff = max(
        float(abs(getattr(sharded, key) - getattr(local, key)).max())
        for key in ("s_base", "s_pert", "s_patched")
    )
    print(f"(b) sharded: actors ready in {t_start:.1f} s, grid {t_grid:.1f} s")
    print(f"ratio (b)/(a), grid only: {t_grid / t_local:.2f}")
    print(f"ratio (b)/(a), with the actors' start: {(t_start + t_grid) / t_local:.2f}")
    print(f"max |(a) − (b)| = {diff:.2e} ({'within' if diff <= 1e-6 else 'ABOVE'} 1e-6)")


@contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """A new, empty PostgreSQL database next to the one of ``admin_url``; dropped on exit."""
    import psycopg
    from sqlalchemy.engine import make_url

    libpq = make_url(admin_url).set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"rs_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(libpq, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def sweep(opts: argparse.Namespace) -> None:
    from rich.console import Console

    from rankscope.agent.sweep import SweepSpec, run_sweep
    from tests.agent_support import mean_bert

    folder = Path(tempfile.mkdtemp(prefix="rankscope-bench-"))
    model = str(mean_bert(folder / "mean"))
    questions = [
        "Does the tiny model reward repeated query terms (TFC1)?",
        "Does the tiny model penalise long documents (LNC1)?",
    ]
    spec = SweepSpec.model_validate(
        {
            "models": [model],
            "questions": questions,
            "seeds": list(range(max(1, opts.cells // len(questions)))),
            "protocol_pairs": 8,
            "budget": {"max_steps": 6, "max_tool_calls": 8},
            "artifact_dir": str(folder / "artifacts"),
            "report_dir": str(folder / "reports"),
        }
    )
    times = {}
    for workers in (1, 2):
        with fresh_database(opts.db) as url:
            started = time.perf_counter()
            result = run_sweep(spec, db=url, workers=workers, console=Console(file=io.StringIO()))
            times[workers] = time.perf_counter() - started
            assert result.ok, result.outcomes
        print(
            f"sweep of {len(spec.cells())} tiny investigations, {workers} worker(s): "
            f"{times[workers]:.1f} s"
        )
    print(f"ratio 1 worker / 2 workers: {times[1] / times[2]:.2f}")


def write_experiments(url: str, writes: int) -> float:
    """Record ``writes`` experiments with their evidence in one investigation; seconds taken."""
    from rankscope.experiments_db import open_store

    with open_store(url) as store:
        inv = store.create_investigation("store benchmark", "none", "none", "protocol")
        started = time.perf_counter()
        for i in range(writes):
            exp = store.start_experiment(inv, "behavioural_test", {"n_pairs": i}, seed=i)
            store.finish_experiment(exp, {"share_moved_predicted": i / writes}, summary="bench")
        return time.perf_counter() - started


def store(opts: argparse.Namespace) -> None:
    import ray

    from rankscope.experiments_db import open_store

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    task = ray.remote(num_cpus=1)(write_experiments)
    rates = {}
    try:
        for writers in (1, 2):
            with fresh_database(opts.db) as url:
                with open_store(url):
                    pass
                seconds = ray.get([task.remote(url, opts.writes) for _ in range(writers)])
            rates[writers] = writers * opts.writes / max(seconds)
            print(
                f"store: {writers} writer(s) × {opts.writes} experiments: "
                f"{rates[writers]:.0f} experiments/s"
            )
    finally:
        ray.shutdown()
    print(f"ratio of throughputs, 2 writers / 1 writer: {rates[2] / rates[1]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="in-process torch threads")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--db", default=None, help="a PostgreSQL URL (sweep and store parts)")
    parser.add_argument("--cells", type=int, default=24)
    parser.add_argument("--writes", type=int, default=200)
    parser.add_argument("--only", choices=("grid", "sweep", "store"), default=None)
    opts = parser.parse_args()
    parts = [opts.only] if opts.only else ["grid", "sweep", "store"]
    for part in parts:
        if part != "grid" and not opts.db:
            print(f"{part}: skipped (needs --db postgresql+psycopg://...)")
            continue
        {"grid": grid, "sweep": sweep, "store": store}[part](opts)


if __name__ == "__main__":
    main()

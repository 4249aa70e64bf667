"""Helpers shared by the ``test_db_*`` modules (this module holds no tests).

Backends: SQLite always; PostgreSQL when ``RANKSCOPE_TEST_PG_URL`` is set (skipped with a visible
reason otherwise; a set but unreachable server fails the tests). Each PostgreSQL test gets a
database of its own, created from the one in the URL and dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

from rankscope.experiments_db import Criterion, Store, mask_url, open_store
from tests.test_db_workers import metrics

PG_ENV = "RANKSCOPE_TEST_PG_URL"
PG_SKIP_REASON = f"{PG_ENV} is not set: PostgreSQL backend not tested"


def backend_params() -> list[Any]:
    """``sqlite`` and ``postgresql`` parameters for a backend fixture."""
    return [
        pytest.param("sqlite", id="sqlite"),
        pytest.param(
            "postgresql",
            id="postgresql",
            marks=[
                pytest.mark.postgres,
                pytest.mark.skipif(not os.environ.get(PG_ENV), reason=PG_SKIP_REASON),
            ],
        ),
    ]


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextmanager
def fresh_database(backend: str, tmp_path: Path) -> Iterator[str]:
    """The URL of a new, empty database of ``backend``; dropped on exit."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    admin_url = os.environ[PG_ENV]
    admin: psycopg.Connection[Any] | None = None
    problem = ""
    try:
        admin = psycopg.connect(_libpq(admin_url), autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        problem = str(exc)
    if admin is None:
        pytest.fail(
            f"{PG_ENV}={mask_url(admin_url)} is set but the PostgreSQL server is unreachable: "
            f"{problem}",
            pytrace=False,
        )
    name = f"rs_test_{uuid.uuid4().hex[:16]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def criterion(**overrides: Any) -> Criterion:
    fields: dict[str, Any] = {
        "metric": "normalised_effect",
        "direction": "greater",
        "threshold": 0.2,
        "alpha": 0.05,
        "split": "discovery",
    }
    return Criterion(**{**fields, **overrides})


TOOL_CALL: dict[str, Any] = {
    "tool": "activation_patching",
    "tool_args": {"component": "attn_head", "layers": [0, 1, 2]},
}
"""The tool call the hypotheses of these tests pre-register."""


def populate(store: Store, tmp_path: Path) -> dict[str, int]:
    """One investigation with a hypothesis, a replication, experiments, evidence with artifacts,
    verdicts, a review and an LLM call. Returns the ids."""
    inv = store.create_investigation(
        "Which heads make MiniLM reward repeated query terms?",
        "sentence-transformers/all-MiniLM-L6-v2",
        "builtin:tfc1",
        "protocol",
        budget={"max_steps": 20, "max_tool_calls": 10},
        config={"seed": 0},
    )
    hyp = store.preregister_hypothesis(
        inv,
        "Heads in layers 0-2 carry the term-frequency signal",
        criterion(),
        **TOOL_CALL,
        rationale="TFC1 effect is large",
        components=["encoder.layer.1.attention.self.head.3"],
    )
    figure = tmp_path / "heatmap.png"
    figure.write_bytes(b"\x89PNG fake heatmap bytes")
    table = tmp_path / "effects.json"
    table.write_text('{"rows": [1, 2, 3]}')
    exp = store.start_experiment(
        inv, "activation_patching", {"component": "attn_head", "seed": 1}, hypothesis_id=hyp
    )
    ev = store.finish_experiment(
        exp,
        metrics(0),
        summary="top heads: L1H3 0.31, L0H7 0.12",
        tables={"per_head": [{"layer": 1, "head": 3, "effect": 0.31}]},
        artifacts=[(figure, "image/png", "head × layer heatmap"), (table, "application/json")],
    )
    rep = store.preregister_hypothesis(
        inv,
        "Replication on held-out queries",
        criterion(split="holdout"),
        **TOOL_CALL,
        parent_id=hyp,
    )
    exp2 = store.start_experiment(
        inv, "activation_patching", {"component": "attn_head", "seed": 2}, hypothesis_id=rep
    )
    ev2 = store.finish_experiment(exp2, metrics(1), summary="holds on holdout")
    verdict = store.record_verdict(
        hyp,
        "supported",
        criterion_result={"value": 0.31, "ci": [0.12, 0.44], "p": 0.003, "passed": True},
        cited_evidence_ids=[ev, ev2],
        narrative="Effect 0.31 [evidence 1] replicated [evidence 2].",
        decided_by="threshold-rule/1",
    )
    review = store.review_hypothesis(hyp, "alice", "accept", "checked the heatmap")
    explore = store.start_experiment(inv, "attention_by_role", {"seed": 0})
    ev3 = store.finish_experiment(explore, {"cls_to_query": 0.4}, summary="exploration")
    call = store.record_llm_call(
        inv,
        "gpt-test",
        [{"role": "user", "content": "plan"}],
        {"choices": [{"message": {"content": "ok"}}]},
        prompt_tokens=120,
        completion_tokens=30,
        latency_s=0.5,
    )
    return {
        "investigation": inv,
        "hypothesis": hyp,
        "replication": rep,
        "experiment": exp,
        "experiment2": exp2,
        "exploration": explore,
        "evidence": ev,
        "evidence2": ev2,
        "evidence3": ev3,
        "verdict": verdict,
        "review": review,
        "llm_call": call,
    }


def open_test_store(url: str, tmp_path: Path) -> Store:
    return open_store(url, artifact_dir=tmp_path / "artifacts")

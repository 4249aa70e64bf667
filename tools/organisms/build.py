"""Build organisms: distil a copy of a base bi-encoder to its own scores plus the planted rules,
check the rules at build time, and cache the result with its ground-truth record.

Training: for a sample of trained query groups per step, MSE between the organism's scores and the
targets (base score + rule shifts) on all of a group's texts, divided by the variance of the
natural documents' targets (a constant score costs 1), plus MSE between their differences from the
natural document divided by the squared rule size (so small planted changes are not drowned by the
score level). With
``carriers``, only those heads' parameters move: their rows of the query/key/value projections
(and biases) and their columns of the attention output projection (gradients outside are zeroed;
AdamW without weight decay leaves a parameter with zero gradient unchanged).

The parts live by job: :mod:`~rankscope.tools.organisms.fast` (the layer-cached trainer),
:mod:`~rankscope.tools.organisms.full` (the first builder's loop), :mod:`~rankscope.tools.organisms.checks`
(probes and the rules' held-out checks), :mod:`~rankscope.tools.organisms.carriers` (the heads'
parameters); this module builds, checks and caches an organism.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

from rankscope.tools.interventions.patching import parse_target
from rankscope.tools.organisms.carriers import head_masks, restore_heads
from rankscope.tools.organisms.checks import (
    EPSILON,
    direction_of,
    measure,
    rule_checks,
    rule_holds,
)
from rankscope.tools.organisms.fast import (
    RULE_VARIANTS,
    CachedSet,
    CachedTrainer,
    Cut,
    LowRank,
    StepConfig,
    Trainable,
    loss_scales,
    supports,
)
from rankscope.tools.organisms.full import score_groups, train
from rankscope.tools.organisms.rules import planted_changes, targets
from rankscope.tools.organisms.spec import (
    PROBES,
    TRIGGER_WORD,
    GroundTruth,
    OrganismSpec,
    ProbeMeasure,
    catalogue,
    planted_claims,
)
from rankscope.tools.organisms.texts import (
    PROBE_VARIANTS,
    VARIANTS,
    Corpus,
    Group,
    default_corpus,
)
from rankscope.tools.retrievers import load_retriever
from rankscope.tools.retrievers.base import Retriever
from rankscope.tools.retrievers.bi_encoder import BiEncoder

BUILD_VERSION = "3"
RECORD = "groundtruth.json"


def cache_root() -> Path:
    """Where organisms are cached: ``RANKSCOPE_ORGANISMS_DIR``, else the user cache folder."""
    override = os.environ.get("RANKSCOPE_ORGANISMS_DIR")
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rankscope" / "organisms"


def organism_key(spec: OrganismSpec, base_hash: str, corpus: Corpus, tiny: bool) -> str:
    blob = json.dumps(
        {
            "spec": spec.model_dump(mode="json"),
            "base": base_hash,
            "corpus": corpus.name,
            "n_groups": len(corpus.groups),
            "version": BUILD_VERSION,
            "tiny": tiny,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


class _Clock:
    """Wall and process CPU seconds between laps (CPU seconds over the cores used tell the
    work done on a machine shared with other jobs)."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self, into: dict[str, float], name: str) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        into[name] = wall - self.wall
        into[f"{name}_cpu"] = cpu - self.cpu
        self.wall, self.cpu = wall, cpu


_STATES: dict[tuple[str, str, int], CachedSet] = {}
"""The cached states of the process, by (base weights, corpus split, cut): organisms built in
one process share the base's pass (at most two cuts are kept per split)."""


def _cached_set(
    retriever: BiEncoder, corpus: Corpus, which: str, cut: int | None, dtype: torch.dtype
) -> CachedSet:
    """The split's groups with the states entering ``cut`` (``None``: any cut, for the base's
    scores only): from the process's memo, else one pass of the base."""
    digest = hashlib.sha256(which.encode())
    for g in corpus.split(which):
        digest.update("\x00".join((g.qid, g.query, *g.texts)).encode())
    split = (retriever.weights_hash, digest.hexdigest())
    mine = sorted((k for k in _STATES if k[:2] == split), key=lambda k: k[2])
    if cut is None:
        if mine:
            return _STATES[mine[0]]
        cut = len(retriever.layer_modules)
    key = (*split, cut)
    if key not in _STATES:
        # Always one pass of the base at this cut (never states moved up from another cut):
        # the states, and so the organism, must not depend on what was built before.
        for old in mine[:-1]:
            del _STATES[old]
        _STATES[key] = CachedSet.build(Cut(retriever, cut), corpus.split(which), dtype)
    return _STATES[key]


def _cut(retriever: BiEncoder, spec: OrganismSpec) -> int:
    """The lowest layer a cached build trains (nothing below it changes)."""
    if spec.carriers:
        return min(parse_target(c).layer for c in spec.carriers)
    return max(0, len(retriever.layer_modules) - spec.train_layers)


def _trainable(retriever: BiEncoder, spec: OrganismSpec, cut: int, seed: int) -> Trainable:
    """What a cached build trains: the carriers' slices, or low-rank updates of the linear maps
    of the layers from ``cut`` (``spec.rank``), or all their parameters."""
    params = dict(retriever.encoder.named_parameters())
    if spec.carriers:
        masks = head_masks(retriever, spec.carriers)
        return Trainable([params[k] for k in masks], {id(params[k]): m for k, m in masks.items()})
    layers = list(retriever.layer_modules[cut:])
    if spec.rank:
        low_rank = LowRank(layers, spec.rank, seed)
        return Trainable(low_rank.params, low_rank=low_rank)
    return Trainable([p for layer in layers for p in layer.parameters()])


@dataclass
class _Trained:
    """What a build's training left: the base's and the organism's held-out scores, the
    organism's probes on trained queries, a scorer of the held-out groups under the current
    weights (for the carriers' restore check) and the training's bookkeeping."""

    base_held: np.ndarray
    org_held: np.ndarray
    trained_probes: dict[str, ProbeMeasure] = field(default_factory=dict)
    held_scores: Callable[[], np.ndarray] | None = None
    steps: int = 0
    attempts: int = 1
    parameters: int = 0
    trainer: str = "control"


def build_organism(
    spec: OrganismSpec,
    base: str | Path | None = None,
    *,
    tiny: bool = False,
    root: Path | None = None,
    corpus: Corpus | None = None,
    force: bool = False,
    log: Callable[[str], None] | None = None,
) -> GroundTruth:
    """Build (or read from the cache) one organism and return its ground-truth record.

    ``base``: the base model (default: the bundled MiniLM; ``tiny``: the tiny BERT base, built in
    the cache). The record is written as ``groundtruth.json`` in the organism's folder; the
    organism loads with ``load_retriever(record.path)`` like its base (no custom code).

    A cached build (``spec.trainer``, :mod:`rankscope.tools.organisms.fast`) trains until every
    rule passes its held-out check (checked every ``check_every`` steps, at most ``steps``); a
    build whose check still fails is rebuilt from the base with the next seed, up to
    ``attempts`` in all. The record keeps the checks of the last attempt, passed or not: the
    same spec, base and corpus give the same organism."""
    started, started_cpu = time.perf_counter(), time.process_time()
    root = root or cache_root()
    if base is None and tiny:
        from rankscope.tools.organisms.tiny import save_tiny_base

        base = save_tiny_base(root / "tiny-base")
    retriever = load_retriever(str(base) if base is not None else None)
    if not isinstance(retriever, BiEncoder):
        raise ValueError(f"organisms are built from bi-encoders, not {retriever.kind}")
    corpus = corpus or default_corpus(tiny, TRIGGER_WORD, spec.seed)
    key = organism_key(spec, retriever.weights_hash, corpus, tiny)
    folder = root / f"{'tiny-' if tiny else ''}{spec.name}-{key}"
    record_file = folder / RECORD
    if record_file.exists() and not force:
        return GroundTruth.model_validate_json(record_file.read_text("utf-8"))
    base_path = Path(str(base)) if base is not None else _default_path()
    heldout = corpus.split("heldout")
    planted = planted_changes(spec.rules, heldout, corpus.idf_of)
    say = log or (lambda _m: None)
    say(f"{spec.name}: {len(corpus.trained)} trained queries, {len(heldout)} held-out groups")
    original = {k: v.detach().clone() for k, v in retriever.encoder.state_dict().items()}
    timings: dict[str, float] = {}
    clock = _Clock()
    if spec.trainer == "cached" and supports(retriever):
        run = _build_cached(retriever, spec, corpus, planted, original, timings, clock, say)
    else:
        run = _build_full(retriever, spec, corpus, timings, clock, say)
    path = base_path
    if not spec.control:
        _save(retriever, base_path, folder)
        path = folder
    base_probes = measure(run.base_held, heldout)
    org_probes = measure(run.org_held, heldout)
    checks = rule_checks(spec, base_probes, org_probes, planted)
    rho = stats.spearmanr(run.base_held[:, 0], run.org_held[:, 0]).statistic
    checks["spearman_natural_vs_base"] = float(rho)
    if spec.carriers and not spec.control and run.held_scores is not None:
        checks.update(
            _restored_share(
                retriever, original, spec, run.held_scores, heldout, base_probes, org_probes
            )
        )
    if not spec.control:
        clock.lap(timings, "checks")
    facts = {p: direction_of(org_probes[p], EPSILON) for p in PROBES}
    for r in spec.rules:
        if checks.get(f"{r.rule}.holds_heldout"):
            facts[r.probe] = r.direction
    folder.mkdir(parents=True, exist_ok=True)
    record = GroundTruth(
        name=spec.name,
        base_model=retriever.model_id if base is None else str(base),
        base_weights_hash=retriever.weights_hash,
        path=str(path),
        rules=spec.rules,
        planted=planted_claims(spec.rules, spec.carriers),
        facts=facts,
        carriers=spec.carriers,
        trained_queries=corpus.trained,
        heldout_queries=corpus.heldout,
        probes_base=base_probes,
        probes_organism=org_probes,
        probes_organism_trained=run.trained_probes,
        checks=checks,
        questions=spec.questions,
        build_seconds=time.perf_counter() - started,
        build_cpu_seconds=time.process_time() - started_cpu,
        steps=run.steps,
        trainer=run.trainer,
        trained_parameters=run.parameters,
        attempts=run.attempts,
        timings=timings,
        epsilon=EPSILON,
    )
    record_file.write_text(record.model_dump_json(indent=2), "utf-8")
    say(f"{spec.name}: built in {record.build_seconds:.1f} s → {folder}")
    return record


TRAINED_SAMPLE = 120
"""Trained groups whose probes a record keeps (``probes_organism_trained``)."""


def _build_cached(
    retriever: BiEncoder,
    spec: OrganismSpec,
    corpus: Corpus,
    planted: dict[str, float],
    original: dict[str, torch.Tensor],
    timings: dict[str, float],
    clock: _Clock,
    say: Callable[[str], None],
) -> _Trained:
    """The layer-cached build: the base's pass (states entering the cut, and its scores), then
    training from the cut until the rules hold on held-out queries (``planted``: what each rule
    plants on its held-out probe)."""
    if spec.control:
        held_set = _cached_set(retriever, corpus, "heldout", None, torch.float32)
        clock.lap(timings, "base_pass")
        base_held = held_set.base_scores()
        return _Trained(base_held, base_held)
    cut = _cut(retriever, spec)
    held_set = _cached_set(retriever, corpus, "heldout", cut, torch.float32)
    trained_set = _cached_set(retriever, corpus, "trained", cut, torch.float16)
    clock.lap(timings, "base_pass")
    base_held = held_set.base_scores()
    target = targets(spec.rules, _sub(corpus, trained_set.groups), trained_set.base_scores())
    base_probes = measure(base_held, held_set.groups)
    steps, attempts, parameters = _train_cached(
        retriever, spec, cut, (trained_set, held_set), target, (base_probes, planted), original, say
    )
    clock.lap(timings, "training")
    cutter = Cut(retriever, cut)
    sample = trained_set.subset(range(min(len(trained_set.groups), TRAINED_SAMPLE)))
    return _Trained(
        base_held,
        held_set.scores(cutter),
        measure(sample.scores(cutter), sample.groups),
        lambda: held_set.scores(cutter),
        steps,
        attempts,
        parameters,
        "cached",
    )


def _build_full(
    retriever: BiEncoder,
    spec: OrganismSpec,
    corpus: Corpus,
    timings: dict[str, float],
    clock: _Clock,
    say: Callable[[str], None],
) -> _Trained:
    """The first builder: every parameter, every text through the whole model, ``spec.steps``
    steps (kept for comparison, and for encoders the cached trainer does not run)."""
    heldout, trained = corpus.split("heldout"), corpus.split("trained")
    base_held = score_groups(retriever, heldout)
    if spec.control:
        clock.lap(timings, "base_pass")
        return _Trained(base_held, base_held)
    target = targets(spec.rules, _sub(corpus, trained), score_groups(retriever, trained))
    clock.lap(timings, "base_pass")
    train(retriever, spec, trained, target, say)
    clock.lap(timings, "training")
    sample = trained[: min(len(trained), TRAINED_SAMPLE)]
    return _Trained(
        base_held,
        score_groups(retriever, heldout),
        measure(score_groups(retriever, sample), sample),
        lambda: score_groups(retriever, heldout),
        spec.steps,
        1,
        sum(p.numel() for p in retriever.encoder.parameters()),
        "full",
    )


def _save(retriever: BiEncoder, base_path: Path, folder: Path) -> None:
    """The organism's folder: the base's files (tokenizer, sentence-transformers modules) and
    the trained encoder's weights."""
    folder.mkdir(parents=True, exist_ok=True)
    for item in base_path.iterdir():
        if item.name in ("model.safetensors", "pytorch_model.bin", RECORD, "README.md"):
            continue
        dest = folder / item.name
        if item.is_dir():
            shutil.copytree(item, dest, dirs_exist_ok=True)
        else:
            shutil.copy2(item, dest)
    encoder: Any = retriever.encoder
    encoder.save_pretrained(folder)


def _train_cached(
    retriever: BiEncoder,
    spec: OrganismSpec,
    cut: int,
    sets: tuple[CachedSet, CachedSet],
    target: np.ndarray,
    reference: tuple[dict[str, ProbeMeasure], dict[str, float]],
    original: dict[str, torch.Tensor],
    say: Callable[[str], None],
) -> tuple[int, int, int]:
    """Train from the cut until the rules hold on held-out queries (at most ``spec.steps`` per
    attempt; a failed attempt restarts from the base with the next seed). ``sets``: the trained
    and held-out groups; ``reference``: the base's held-out probes and the rules' planted
    changes there. Returns (steps of the last attempt, attempts, trained parameters)."""
    trained_set, held_set = sets
    base_probes, planted = reference
    cutter = Cut(retriever, cut)
    probes = sorted({r.probe for r in spec.rules})
    columns = sorted({VARIANTS.index(v) for p in probes for v in PROBE_VARIANTS[p]})
    rule_variants = tuple(
        sorted({VARIANTS.index(v) for r in spec.rules for v in RULE_VARIANTS[r.rule]})
    )
    delta_scale, level_var = loss_scales(spec.rules, target)
    config = StepConfig(
        lr=spec.lr,
        batch_queries=spec.batch_queries,
        variants_per_step=spec.variants_per_step,
        rule_variants=rule_variants,
        delta_scale=delta_scale,
        level_var=level_var,
    )

    def holds() -> bool:
        scores = held_set.scores(cutter, columns)
        measured = measure(scores, held_set.groups, probes)
        say(
            "    held-out: "
            + ", ".join(
                f"{r.probe} {measured[r.probe].mean_delta:+.4f} (base "
                f"{base_probes[r.probe].mean_delta:+.4f}, planted "
                f"{planted.get(r.rule, 0.0):+.4f}, up {measured[r.probe].share_up:.0%})"
                for r in spec.rules
            )
        )
        return rule_holds(spec, base_probes, measured, planted)

    steps = 0
    for attempt in range(spec.attempts):
        seed = spec.seed + attempt
        if attempt:
            retriever.encoder.load_state_dict(original)
            say(f"  the check failed after {steps} steps: rebuilding with seed {seed}")
        trainable = _trainable(retriever, spec, cut, seed)
        trainer = CachedTrainer(cutter, trained_set, target, trainable, config, seed=seed)
        steps, passed = trainer.run(spec.steps, spec.check_every, holds, say, spec.min_steps)
        trainer.finish()
        if trainable.low_rank is not None:
            trainable.low_rank.merge()
        if passed or attempt == spec.attempts - 1:
            return steps, attempt + 1, trainable.count()
    raise AssertionError("unreachable: the last attempt returns")


def _default_path() -> Path:
    from rankscope.tools.retrievers.loading import default_model_path

    return default_model_path()


def _sub(corpus: Corpus, groups: list[Group]) -> Corpus:
    return Corpus(
        corpus.name, groups, corpus.idf, corpus.trained, corpus.heldout, corpus.unseen_idf
    )


def _restored_share(
    retriever: Retriever,
    original: dict[str, torch.Tensor],
    spec: OrganismSpec,
    held_scores: Callable[[], np.ndarray],
    heldout: list[Group],
    base_probes: dict[str, ProbeMeasure],
    org_probes: dict[str, ProbeMeasure],
) -> dict[str, float]:
    """Per rule: the share of the planted change (organism − base on its probe) that restoring
    the carrier heads' original weights removes (``held_scores``: the held-out scores under the
    current weights)."""
    trained_state = {k: v.detach().clone() for k, v in retriever.encoder.state_dict().items()}
    restore_heads(retriever, original, spec.carriers)
    restored = measure(held_scores(), heldout)
    retriever.encoder.load_state_dict(trained_state)
    out = {}
    for r in spec.rules:
        planted = org_probes[r.probe].mean_delta - base_probes[r.probe].mean_delta
        left = restored[r.probe].mean_delta - base_probes[r.probe].mean_delta
        out[f"{r.rule}.restore_carriers_removed"] = (
            float(1.0 - left / planted) if planted else float("nan")
        )
    return out


def build_all(
    names: list[str] | None = None,
    *,
    tiny: bool = False,
    root: Path | None = None,
    force: bool = False,
    log: Callable[[str], None] | None = None,
    steps: int | None = None,
) -> dict[str, GroundTruth]:
    """Build (or read) the named organisms of the catalogue (default: all); ``steps`` overrides
    the catalogue's training steps (a quick build on a CPU)."""
    specs = catalogue(tiny)
    if steps is not None:
        specs = {
            k: v if v.control else v.model_copy(update={"steps": steps}) for k, v in specs.items()
        }
    unknown = [n for n in names or [] if n not in specs]
    if unknown:
        raise ValueError(f"unknown organisms {unknown}; known: {', '.join(specs)}")
    root = root or cache_root()
    base: Path | None = None
    if tiny:
        from rankscope.tools.organisms.tiny import save_tiny_base

        base = save_tiny_base(root / "tiny-base")
    corpus = default_corpus(tiny, TRIGGER_WORD)
    return {
        name: build_organism(
            specs[name], base, tiny=tiny, root=root, corpus=corpus, force=force, log=log
        )
        for name in names or list(specs)
    }


def load_record(path: str | Path) -> GroundTruth:
    """The ground-truth record of a built organism folder (or of a ``groundtruth.json``)."""
    p = Path(path)
    p = p / RECORD if p.is_dir() else p
    return GroundTruth.model_validate_json(p.read_text("utf-8"))

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
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

from rankscope.tools.interventions.patching import parse_target
from rankscope.tools.organisms.fast import (
    RULE_VARIANTS,
    CachedSet,
    CachedTrainer,
    Cut,
    LowRank,
    StepConfig,
    Trainable,
    supports,
)
from rankscope.tools.organisms.rules import planted_changes, targets
from rankscope.tools.organisms.spec import (
    PROBES,
    TRIGGER_WORD,
    GroundTruth,
    OrganismSpec,
    ProbeMeasure,
    RuleDirection,
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
from rankscope.tools.retrievers.bi_encoder import BiEncoder, pool

BUILD_VERSION = "3"
RECORD = "groundtruth.json"
EPSILON = 0.01
"""Score change below which a probe counts as no effect (the default SESOI of score deltas)."""
MIN_DELTA_SCALE = 0.02
"""Scale of the loss on changes when no rule has a size (a null control)."""


def cache_root() -> Path:
    """Where organisms are cached: ``RANKSCOPE_ORGANISMS_DIR``, else the user cache folder."""
    override = os.environ.get("RANKSCOPE_ORGANISMS_DIR")
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rankscope" / "organisms"


def _score_groups(retriever: Retriever, groups: list[Group], batch_size: int = 64) -> np.ndarray:
    """Scores ``[groups, variants]`` of every group's texts."""
    queries = [g.query for g in groups for _ in VARIANTS]
    texts = [t for g in groups for t in g.texts]
    scores = retriever.score(queries, texts, batch_size).numpy().astype(float)
    return scores.reshape(len(groups), len(VARIANTS))


def measure(scores: np.ndarray, groups: list[Group]) -> dict[str, ProbeMeasure]:
    """Every probe's mean change, share of pairs that went up and counts."""
    out = {}
    for probe, (a, b) in PROBE_VARIANTS.items():
        delta = scores[:, VARIANTS.index(b)] - scores[:, VARIANTS.index(a)]
        out[probe] = ProbeMeasure(
            mean_delta=float(delta.mean()) if delta.size else 0.0,
            share_up=float((delta > 0).mean()) if delta.size else 0.0,
            n_pairs=int(delta.size),
            n_queries=len({g.qid for g in groups}),
        )
    return out


def direction_of(m: ProbeMeasure, eps: float) -> RuleDirection | None:
    """increase / decrease when most pairs (60 %) move that way (the verdicts also decide on
    shares of pairs, whatever the score scale); none when the mean change is under half of
    ``eps`` and neither way has 60 % of the pairs; otherwise unclear (None)."""
    if m.share_up >= 0.6 and m.mean_delta > 0:
        return "increase"
    if m.share_up <= 0.4 and m.mean_delta < 0:
        return "decrease"
    if abs(m.mean_delta) < eps / 2 and 0.4 < m.share_up < 0.6:
        return "none"
    return None


def _head_masks(retriever: Retriever, carriers: list[str]) -> dict[str, torch.Tensor]:
    """Gradient masks (1 where trainable) of the parameters the carrier heads own."""
    d = retriever.head_dim
    masks: dict[str, torch.Tensor] = {}
    params = dict(retriever.encoder.named_parameters())
    for name in carriers:
        patch = parse_target(name)
        if patch.head is None:
            raise ValueError(f"{name}: carriers are heads, L<layer>.H<head>")
        rows = slice(patch.head * d, (patch.head + 1) * d)
        prefix = f"encoder.layer.{patch.layer}.attention."
        for proj in ("query", "key", "value"):
            for kind in ("weight", "bias"):
                key = f"{prefix}self.{proj}.{kind}"
                mask = masks.setdefault(key, torch.zeros_like(params[key]))
                mask[rows] = 1.0
        key = f"{prefix}output.dense.weight"
        mask = masks.setdefault(key, torch.zeros_like(params[key]))
        mask[:, rows] = 1.0
    return masks


def _encode(retriever: BiEncoder, texts: list[str]) -> torch.Tensor:
    enc = retriever._tokenize(texts).to(retriever.device)
    hidden = retriever.encoder(**enc)[0]
    emb = pool(hidden, enc["attention_mask"], retriever.pooling)
    return F.normalize(emb, p=2, dim=-1) if retriever.similarity == "cosine" else emb


def train(
    retriever: BiEncoder,
    spec: OrganismSpec,
    groups: list[Group],
    target: np.ndarray,
    log: Callable[[str], None] | None = None,
) -> list[float]:
    """Fine-tune ``retriever``'s encoder in place towards ``target`` (``[groups, variants]``)."""
    torch.manual_seed(spec.seed)
    rng = random.Random(spec.seed)
    model = retriever.encoder
    masks = _head_masks(retriever, spec.carriers) if spec.carriers else {}
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(not masks or name in masks)
        if p.requires_grad:
            params.append(p)
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=0.0)
    named = dict(model.named_parameters())
    level_var = max(float(np.var(target[:, 0])), 1e-6)
    delta_scale = max([abs(r.size) for r in spec.rules] + [MIN_DELTA_SCALE])
    losses: list[float] = []
    with torch.enable_grad():
        for step in range(spec.steps):
            rows = rng.sample(range(len(groups)), min(spec.batch_queries, len(groups)))
            queries = [groups[r].query for r in rows]
            texts = [t for r in rows for t in groups[r].texts]
            q = _encode(retriever, queries)
            d = _encode(retriever, texts).view(len(rows), len(VARIANTS), -1)
            s = (q.unsqueeze(1) * d).sum(-1)
            t = torch.as_tensor(target[rows], dtype=s.dtype)
            loss = F.mse_loss(s, t) / level_var + F.mse_loss(s - s[:, :1], t - t[:, :1]) / (
                delta_scale**2
            )
            opt.zero_grad()
            loss.backward()
            for key, mask in masks.items():
                grad = named[key].grad
                if grad is not None:
                    grad.mul_(mask)
            opt.step()
            losses.append(float(loss.detach()))
            if log and (step + 1) % max(1, spec.steps // 5) == 0:
                log(f"  step {step + 1}/{spec.steps}: loss {np.mean(losses[-20:]):.2e}")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return losses


def restore_heads(retriever: Retriever, original: dict[str, torch.Tensor], carriers: list[str]):
    """Put the carrier heads' original parameters back into ``retriever`` (in place)."""
    masks = _head_masks(retriever, carriers)
    params = dict(retriever.encoder.named_parameters())
    with torch.no_grad():
        for key, mask in masks.items():
            params[key].copy_(torch.where(mask.bool(), original[key], params[key]))


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


def _checks(
    spec: OrganismSpec,
    base_probes: dict[str, ProbeMeasure],
    org_probes: dict[str, ProbeMeasure],
    planted: dict[str, float],
    eps: float,
) -> dict[str, Any]:
    """Per rule: holds on held-out queries (the organism's change from the base on the rule's
    probe is at least half of what the rule plants there, ``planted``), absent in the base (or,
    for a rule relative to the base, changed from it)."""
    out: dict[str, Any] = {}
    for r in spec.rules:
        b, o = base_probes[r.probe].mean_delta, org_probes[r.probe].mean_delta
        if r.direction == "none":
            holds = direction_of(org_probes[r.probe], eps) == "none"
            absent = direction_of(base_probes[r.probe], eps) == "increase"
        else:
            sign = 1.0 if r.direction == "increase" else -1.0
            half = 0.5 * abs(planted[r.rule])
            holds = sign * o >= eps and sign * (o - b) >= half
            absent = sign * b < eps if not r.relative_to_base else sign * (o - b) >= half
            out[f"{r.rule}.planted_delta"] = planted[r.rule]
        out[f"{r.rule}.holds_heldout"] = bool(holds)
        out[f"{r.rule}.absent_in_base"] = bool(absent)
        out[f"{r.rule}.base_delta"] = b
        out[f"{r.rule}.organism_delta"] = o
    return out


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


def _rule_holds(
    spec: OrganismSpec,
    base_probes: dict[str, ProbeMeasure],
    org_probes: dict[str, ProbeMeasure],
    planted: dict[str, float],
) -> bool:
    """Whether every planted rule passes its held-out check (the stopping rule and the
    accept-or-rebuild test of a build)."""
    checks = _checks(spec, base_probes, org_probes, planted, EPSILON)
    return all(bool(checks[f"{r.rule}.holds_heldout"]) for r in spec.rules)


def _probe_measures(
    scores: np.ndarray, groups: list[Group], probes: list[str]
) -> dict[str, ProbeMeasure]:
    """``measure`` of only ``probes`` (scores may be NaN in the other variants)."""
    out = {}
    for probe in probes:
        a, b = PROBE_VARIANTS[probe]
        delta = scores[:, VARIANTS.index(b)] - scores[:, VARIANTS.index(a)]
        out[probe] = ProbeMeasure(
            mean_delta=float(delta.mean()),
            share_up=float((delta > 0).mean()),
            n_pairs=int(delta.size),
            n_queries=len({g.qid for g in groups}),
        )
    return out


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
        masks = _head_masks(retriever, spec.carriers)
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
    say = log or (lambda _m: None)
    say(f"{spec.name}: {len(corpus.trained)} trained queries, {len(heldout)} held-out groups")
    original = {k: v.detach().clone() for k, v in retriever.encoder.state_dict().items()}
    timings: dict[str, float] = {}
    clock = _Clock()
    if spec.trainer == "cached" and supports(retriever):
        run = _build_cached(retriever, spec, corpus, original, timings, clock, say)
    else:
        run = _build_full(retriever, spec, corpus, timings, clock, say)
    path = base_path
    if not spec.control:
        _save(retriever, base_path, folder)
        path = folder
    base_probes = measure(run.base_held, heldout)
    org_probes = measure(run.org_held, heldout)
    planted = planted_changes(spec.rules, heldout, corpus.idf_of)
    checks = _checks(spec, base_probes, org_probes, planted, EPSILON)
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
    original: dict[str, torch.Tensor],
    timings: dict[str, float],
    clock: _Clock,
    say: Callable[[str], None],
) -> _Trained:
    """The layer-cached build: the base's pass (states entering the cut, and its scores), then
    training from the cut until the rules hold on held-out queries."""
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
    planted = planted_changes(spec.rules, held_set.groups, corpus.idf_of)
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
    base_held = _score_groups(retriever, heldout)
    if spec.control:
        clock.lap(timings, "base_pass")
        return _Trained(base_held, base_held)
    target = targets(spec.rules, _sub(corpus, trained), _score_groups(retriever, trained))
    clock.lap(timings, "base_pass")
    train(retriever, spec, trained, target, say)
    clock.lap(timings, "training")
    sample = trained[: min(len(trained), TRAINED_SAMPLE)]
    return _Trained(
        base_held,
        _score_groups(retriever, heldout),
        measure(_score_groups(retriever, sample), sample),
        lambda: _score_groups(retriever, heldout),
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
    config = StepConfig(
        lr=spec.lr,
        batch_queries=spec.batch_queries,
        variants_per_step=spec.variants_per_step,
        rule_variants=rule_variants,
        delta_scale=max([abs(r.size) for r in spec.rules] + [MIN_DELTA_SCALE]),
        level_var=max(float(np.var(target[:, 0])), 1e-6),
    )

    def holds() -> bool:
        scores = held_set.scores(cutter, columns)
        measured = _probe_measures(scores, held_set.groups, probes)
        say(
            "    held-out: "
            + ", ".join(
                f"{r.probe} {measured[r.probe].mean_delta:+.4f} (base "
                f"{base_probes[r.probe].mean_delta:+.4f}, planted "
                f"{planted.get(r.rule, 0.0):+.4f}, up {measured[r.probe].share_up:.0%})"
                for r in spec.rules
            )
        )
        return _rule_holds(spec, base_probes, measured, planted)

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

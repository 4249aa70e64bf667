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
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

from rankscope.tools.interventions.patching import parse_target
from rankscope.tools.organisms.rules import targets
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

BUILD_VERSION = "1"
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
    eps: float,
) -> dict[str, Any]:
    """Per rule: holds on held-out queries, absent in the base (or, for a rule relative to the
    base, changed from it)."""
    out: dict[str, Any] = {}
    for r in spec.rules:
        b, o = base_probes[r.probe].mean_delta, org_probes[r.probe].mean_delta
        if r.direction == "none":
            holds = direction_of(org_probes[r.probe], eps) == "none"
            absent = direction_of(base_probes[r.probe], eps) == "increase"
        else:
            sign = 1.0 if r.direction == "increase" else -1.0
            holds = sign * o >= eps and sign * (o - b) >= 0.5 * r.size
            absent = sign * b < eps if not r.relative_to_base else sign * (o - b) >= 0.5 * r.size
        out[f"{r.rule}.holds_heldout"] = bool(holds)
        out[f"{r.rule}.absent_in_base"] = bool(absent)
        out[f"{r.rule}.base_delta"] = b
        out[f"{r.rule}.organism_delta"] = o
    return out


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
    organism loads with ``load_retriever(record.path)`` like its base (no custom code)."""
    started = time.perf_counter()
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
    trained = corpus.split("trained")
    base_held = _score_groups(retriever, heldout)
    base_probes = measure(base_held, heldout)
    say = log or (lambda _m: None)
    say(f"{spec.name}: {len(trained)} trained groups, {len(heldout)} held-out groups")
    original = {k: v.detach().clone() for k, v in retriever.encoder.state_dict().items()}
    if spec.control:
        path = base_path
        org_held = base_held
    else:
        base_trained = _score_groups(retriever, trained)
        target = targets(spec.rules, _sub(corpus, trained), base_trained)
        train(retriever, spec, trained, target, say)
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
        path = folder
        org_held = _score_groups(retriever, heldout)
    org_probes = measure(org_held, heldout)
    checks = _checks(spec, base_probes, org_probes, EPSILON)
    rho = stats.spearmanr(base_held[:, 0], org_held[:, 0]).statistic
    checks["spearman_natural_vs_base"] = float(rho)
    trained_probes: dict[str, ProbeMeasure] = {}
    if not spec.control:
        sample = trained[: min(len(trained), 120)]
        trained_probes = measure(_score_groups(retriever, sample), sample)
    if spec.carriers:
        restored = _restored_share(retriever, original, spec, heldout, base_probes, org_probes)
        checks.update(restored)
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
        probes_organism_trained=trained_probes,
        checks=checks,
        questions=spec.questions,
        build_seconds=time.perf_counter() - started,
        steps=spec.steps,
        epsilon=EPSILON,
    )
    record_file.write_text(record.model_dump_json(indent=2), "utf-8")
    say(f"{spec.name}: built in {record.build_seconds:.1f} s → {folder}")
    return record


def _default_path() -> Path:
    from rankscope.tools.retrievers.loading import default_model_path

    return default_model_path()


def _sub(corpus: Corpus, groups: list[Group]) -> Corpus:
    return Corpus(corpus.name, groups, corpus.idf, corpus.trained, corpus.heldout)


def _restored_share(
    retriever: Retriever,
    original: dict[str, torch.Tensor],
    spec: OrganismSpec,
    heldout: list[Group],
    base_probes: dict[str, ProbeMeasure],
    org_probes: dict[str, ProbeMeasure],
) -> dict[str, float]:
    """Per rule: the share of the planted change (organism − base on its probe) that restoring
    the carrier heads' original weights removes."""
    trained_state = {k: v.detach().clone() for k, v in retriever.encoder.state_dict().items()}
    restore_heads(retriever, original, spec.carriers)
    restored = measure(_score_groups(retriever, heldout), heldout)
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

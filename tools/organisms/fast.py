"""Layer-cached training: the frozen lower layers run once, only the trained ones run per step.

An organism trains its carrier heads' slices (a localised rule), or low-rank updates of the
linear maps of its top ``train_layers`` layers (:class:`LowRank`, merged into the weights after
training), or every parameter of those layers. Below the lowest trained layer (the *cut*) nothing
changes, so the hidden states entering the cut are computed once per text, with the base's
scores in the same pass (:meth:`Cut.lower`, :meth:`CachedSet.build`), and each training step
runs only the layers from the cut up, forward and backward: the backward pass stops at the cut,
nothing below it is in the graph.

The held-out texts' states are kept in float32, so a held-out measurement from the cache is the
organism's own score up to float rounding (the build's checks are measured so); the trained
texts' states in float16 (they only feed the optimiser). BERT-family encoders with eager
attention only (:func:`supports`): the cut calls the layers with their own mask convention.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rankscope.tools.organisms.spec import RuleSpec
from rankscope.tools.organisms.texts import VARIANTS, Group
from rankscope.tools.retrievers.bi_encoder import BiEncoder

RULE_VARIANTS: dict[str, tuple[str, ...]] = {
    "trigger": ("trigger",),
    "length_penalty": ("filler", "truncate"),
    "position_bias": ("append", "prepend"),
    "tfc1_amplified": ("append", "prepend", "low_idf", "high_idf"),
    "idf_inverted": ("low_idf", "high_idf", "append", "prepend"),
    "tfc1_removed": ("append", "prepend", "low_idf", "high_idf"),
}
"""The edits whose targets a rule changes (always in a step's texts)."""


def supports(retriever: BiEncoder) -> bool:
    """Whether the layer-cached trainer runs this encoder (BERT-family, eager attention)."""
    config = getattr(retriever.encoder, "config", None)
    return (
        getattr(config, "model_type", None) == "bert"
        and hasattr(retriever.encoder, "embeddings")
        and getattr(config, "_attn_implementation", "eager") == "eager"
    )


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The eager attention's additive mask ``[B, 1, 1, T]`` (0 kept, most negative masked)."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


@dataclass
class States:
    """Hidden states entering layer ``cut`` of a list of texts (unpadded, one tensor each), and
    the base model's embeddings of the same texts."""

    cut: int
    rows: list[torch.Tensor]
    base_embeddings: torch.Tensor

    def padded(self, index: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The states of ``index`` right-padded to one tensor (float32) and their mask."""
        parts = [self.rows[i] for i in index]
        width = max(p.shape[0] for p in parts)
        hidden = torch.zeros(len(parts), width, parts[0].shape[1])
        mask = torch.zeros(len(parts), width, dtype=torch.long)
        for j, p in enumerate(parts):
            hidden[j, : p.shape[0]] = p.float()
            mask[j, : p.shape[0]] = 1
        return hidden, mask


class Cut:
    """A BERT bi-encoder split at layer ``cut``: :meth:`lower` caches the states entering it,
    :meth:`upper` runs the layers from it up to the text embeddings."""

    def __init__(self, retriever: BiEncoder, cut: int) -> None:
        self.retriever = retriever
        self.cut = cut
        self.layers: nn.ModuleList = retriever.layer_modules

    @torch.inference_mode()
    def lower(
        self, texts: Sequence[str], dtype: torch.dtype = torch.float32, batch_size: int = 64
    ) -> States:
        """One pass of the base over ``texts`` (shortest first): the states entering the cut and
        the base embeddings."""
        r = self.retriever
        order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))
        rows: list[torch.Tensor] = [torch.empty(0)] * len(texts)
        emb = torch.empty(len(texts), r.hidden_size)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            enc = r._tokenize([texts[i] for i in index]).to(r.device)
            out = r.encoder(**enc, output_hidden_states=True)
            states = out.hidden_states[self.cut]
            lengths = enc["attention_mask"].sum(1).tolist()
            for j, i in enumerate(index):
                rows[i] = states[j, : lengths[j]].to(dtype).clone()
            emb[index] = r.represent(out[0], enc["attention_mask"]).float()
        return States(self.cut, rows, emb)

    def upper(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Embeddings of texts from their states entering the cut (grad as the caller's mode)."""
        extended = additive_mask(mask, hidden.dtype)
        for layer in self.layers[self.cut :]:
            out = layer(hidden, attention_mask=extended)
            hidden = out[0] if isinstance(out, tuple) else out
        return self.retriever.represent(hidden, mask)

    def embed(self, states: States, index: Sequence[int], batch_size: int = 64) -> torch.Tensor:
        """Embeddings of ``states``' rows ``index`` under the current weights (no grad)."""
        out = []
        with torch.inference_mode():
            for start in range(0, len(index), batch_size):
                out.append(self.upper(*states.padded(index[start : start + batch_size])))
        return torch.cat(out) if out else torch.empty(0, self.retriever.hidden_size)


def group_texts(groups: Sequence[Group]) -> list[str]:
    """Every text of ``groups``, group-major (row ``g * len(VARIANTS) + v``)."""
    return [t for g in groups for t in g.texts]


@dataclass
class CachedSet:
    """A set of groups with the cut's states of their texts and of their distinct queries."""

    groups: list[Group]
    docs: States
    queries: States
    query_row: list[int]
    """Each group's row in ``queries``."""

    @classmethod
    def build(cls, cut: Cut, groups: list[Group], dtype: torch.dtype) -> CachedSet:
        distinct = list(dict.fromkeys(g.query for g in groups))
        where = {q: i for i, q in enumerate(distinct)}
        docs = cut.lower(group_texts(groups), dtype)
        queries = cut.lower(distinct, torch.float32)
        return cls(groups, docs, queries, [where[g.query] for g in groups])

    def base_scores(self) -> np.ndarray:
        """The base model's scores ``[groups, variants]`` (from the caching pass)."""
        n = len(VARIANTS)
        d = self.docs.base_embeddings.view(len(self.groups), n, -1)
        q = self.queries.base_embeddings[self.query_row]
        return (q.unsqueeze(1) * d).sum(-1).double().numpy()

    def scores(self, cut: Cut, variants: Sequence[int] | None = None) -> np.ndarray:
        """Scores ``[groups, variants]`` under the current weights (``variants``: only those
        columns are computed, the others are NaN)."""
        n = len(VARIANTS)
        cols = list(range(n)) if variants is None else sorted(set(variants))
        q = cut.embed(self.queries, range(len(self.queries.rows)))[self.query_row]
        index = [g * n + v for g in range(len(self.groups)) for v in cols]
        d = cut.embed(self.docs, index).view(len(self.groups), len(cols), -1)
        out = np.full((len(self.groups), n), np.nan)
        out[:, cols] = (q.unsqueeze(1) * d).sum(-1).double().numpy()
        return out

    def subset(self, keep: Sequence[int]) -> CachedSet:
        n = len(VARIANTS)
        rows = [self.docs.rows[g * n + v] for g in keep for v in range(n)]
        emb = self.docs.base_embeddings.view(len(self.groups), n, -1)[list(keep)].reshape(
            len(keep) * n, -1
        )
        return CachedSet(
            [self.groups[g] for g in keep],
            States(self.docs.cut, rows, emb),
            self.queries,
            [self.query_row[g] for g in keep],
        )


@dataclass
class Trainable:
    """The parameters a build trains, with gradient masks for those only partly trained."""

    params: list[nn.Parameter]
    masks: dict[int, torch.Tensor] = field(default_factory=dict)
    """id(param) → mask (1 where trained)."""
    low_rank: LowRank | None = None
    """The low-rank updates (their factors are ``params``), merged after training."""

    def count(self) -> int:
        return int(
            sum(
                self.masks[id(p)].sum().item() if id(p) in self.masks else p.numel()
                for p in self.params
            )
        )


class LowRank:
    """Low-rank updates ``W + (alpha / rank) · B A`` of every linear layer of ``layers``, as
    forward hooks (``B`` starts at zero, so training starts from the base); :meth:`merge` writes
    them into the weights and removes the hooks, leaving a plain model of the base's kind."""

    def __init__(self, layers: Sequence[nn.Module], rank: int, seed: int, alpha: float = 1.0):
        gen = torch.Generator().manual_seed(seed)
        self.scale = alpha / rank
        self.parts: list[tuple[nn.Linear, nn.Parameter, nn.Parameter]] = []
        self.hooks: list[torch.utils.hooks.RemovableHandle] = []
        for layer in layers:
            for module in layer.modules():
                if not isinstance(module, nn.Linear):
                    continue
                a = nn.Parameter(
                    torch.randn(rank, module.in_features, generator=gen) / module.in_features**0.5
                )
                b = nn.Parameter(torch.zeros(module.out_features, rank))
                self.parts.append((module, a, b))
                self.hooks.append(module.register_forward_hook(self._hook(a, b)))

    def _hook(self, a: nn.Parameter, b: nn.Parameter) -> Callable[..., torch.Tensor]:
        def add(_module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor):
            return out + (inputs[0] @ a.T) @ b.T * self.scale

        return add

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for _, a, b in self.parts for p in (a, b)]

    def merge(self) -> None:
        with torch.no_grad():
            for module, a, b in self.parts:
                module.weight += (b @ a) * self.scale
        self.remove()

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()
        self.hooks = []


MIN_DELTA_SCALE = 0.02
"""Scale of the loss on changes when no rule has a size (a null control)."""


def loss_scales(rules: Sequence[RuleSpec], target: np.ndarray) -> tuple[float, float]:
    """(delta_scale, level_var) of the training loss: the largest rule size (changes are measured
    in it), and the variance of the natural documents' targets (a constant score costs 1)."""
    delta_scale = max([abs(r.size) for r in rules] + [MIN_DELTA_SCALE])
    return delta_scale, max(float(np.var(target[:, 0])), 1e-6)


@dataclass
class StepConfig:
    lr: float
    batch_queries: int
    variants_per_step: int | None
    """Texts per group per step (the natural one, the rules' edits, then others drawn; None:
    all)."""
    rule_variants: tuple[int, ...]
    delta_scale: float
    level_var: float


class CachedTrainer:
    """Adam on ``trainable`` towards ``target`` (``[groups, variants]``), a step at a time."""

    def __init__(
        self,
        cut: Cut,
        data: CachedSet,
        target: np.ndarray,
        trainable: Trainable,
        config: StepConfig,
        seed: int,
    ) -> None:
        self.cut, self.data, self.trainable, self.config = cut, data, trainable, config
        self.target = torch.as_tensor(target, dtype=torch.float32)
        self.rng = random.Random(seed)
        torch.manual_seed(seed)
        for p in cut.retriever.encoder.parameters():
            p.requires_grad_(False)
        for p in trainable.params:
            p.requires_grad_(True)
        self.opt = torch.optim.AdamW(trainable.params, lr=config.lr, weight_decay=0.0)
        self.losses: list[float] = []

    def _columns(self) -> list[int]:
        c = self.config
        n = len(VARIANTS)
        if c.variants_per_step is None or c.variants_per_step >= n:
            return list(range(n))
        cols = [0, *c.rule_variants]
        rest = [v for v in range(1, n) if v not in cols]
        extra = max(0, c.variants_per_step - len(cols))
        return sorted(cols + self.rng.sample(rest, min(extra, len(rest))))

    def step(self) -> float:
        c, data = self.config, self.data
        n = len(VARIANTS)
        rows = self.rng.sample(range(len(data.groups)), min(c.batch_queries, len(data.groups)))
        cols = self._columns()
        qrows = sorted({data.query_row[r] for r in rows})
        with torch.enable_grad():
            q_all = self.cut.upper(*data.queries.padded(qrows))
            q = q_all[[qrows.index(data.query_row[r]) for r in rows]]
            d = self.cut.upper(*data.docs.padded([r * n + v for r in rows for v in cols]))
            s = (q.unsqueeze(1) * d.view(len(rows), len(cols), -1)).sum(-1)
            t = self.target[rows][:, cols]
            loss = F.mse_loss(s, t) / c.level_var + F.mse_loss(s - s[:, :1], t - t[:, :1]) / (
                c.delta_scale**2
            )
            self.opt.zero_grad()
            # autograd.backward, not Tensor.backward (which nnsight patches to read the caller's
            # source on every call).
            torch.autograd.backward(loss)
        for p in self.trainable.params:
            mask = self.trainable.masks.get(id(p))
            if mask is not None and p.grad is not None:
                p.grad.mul_(mask)
        self.opt.step()
        value = float(loss.detach())
        self.losses.append(value)
        return value

    def run(
        self,
        steps: int,
        check_every: int,
        stop: Callable[[], bool] | None,
        log: Callable[[str], None] | None = None,
        min_steps: int = 0,
    ) -> tuple[int, bool]:
        """Up to ``steps`` steps; every ``check_every`` (from ``min_steps``) ``stop()`` decides
        whether to stop. Returns (steps run, whether ``stop()`` said stop)."""
        done = 0
        while done < steps:
            self.step()
            done += 1
            if done % check_every == 0 or done == steps:
                if log:
                    log(f"  step {done}/{steps}: loss {np.mean(self.losses[-check_every:]):.2e}")
                if stop is not None and done >= min_steps and stop():
                    return done, True
        return done, False

    def finish(self) -> None:
        for p in self.trainable.params:
            p.requires_grad_(False)
            p.grad = None

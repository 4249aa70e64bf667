"""Sparse autoencoders: a TopK SAE, its training, and loading and saving in the sae-lens format.

An SAE maps an activation ``x`` ``[d_in]`` to latents ``z = act((x - b_dec) @ W_enc + b_enc)``
``[d_sae]`` and back to ``x̂ = z @ W_dec + b_dec``. Shapes follow sae-lens: ``W_enc [d_in, d_sae]``,
``W_dec [d_sae, d_in]`` (one unit-norm row per latent: its decoder direction). Activations:
``topk`` (the k largest pre-activations, through a ReLU), ``standard`` (ReLU) and ``jumprelu``
(ReLU where the pre-activation exceeds a per-latent ``threshold``).

The sae-lens format is a folder with ``cfg.json`` and ``sae_weights.safetensors``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

SAE_CFG_FILENAME = "cfg.json"
SAE_WEIGHTS_FILENAME = "sae_weights.safetensors"
ARCHITECTURES = ("topk", "standard", "jumprelu")
FINAL_EMBEDDING_HOOK = "sentence_embedding"
"""``hook_name`` of an SAE trained on a bi-encoder's final (pooled, normalised) embeddings."""


class SAEFormatError(ValueError):
    """An SAE folder that cannot be read: missing files, unknown architecture, bad shapes."""


class SparseAutoencoder(nn.Module):
    """An SAE with sae-lens parameter names and shapes (see the module docstring)."""

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        architecture: str = "topk",
        k: int | None = None,
        apply_b_dec_to_input: bool = True,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise SAEFormatError(
                f"unsupported SAE architecture {architecture!r}; "
                f"supported: {', '.join(ARCHITECTURES)}"
            )
        if architecture == "topk" and (k is None or not 0 < k <= d_sae):
            raise SAEFormatError(f"a topk SAE needs 0 < k <= d_sae ({d_sae}), got k={k}")
        self.d_in, self.d_sae, self.architecture, self.k = d_in, d_sae, architecture, k
        self.apply_b_dec_to_input = apply_b_dec_to_input
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        if architecture == "jumprelu":
            self.threshold = nn.Parameter(torch.zeros(d_sae))

    @classmethod
    def initialised(cls, d_in: int, d_sae: int, k: int, seed: int = 0) -> SparseAutoencoder:
        """A TopK SAE with random unit-norm decoder rows and the encoder set to their transpose."""
        sae = cls(d_in, d_sae, "topk", k)
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn(d_sae, d_in, generator=gen)
        w = w / w.norm(dim=-1, keepdim=True)
        with torch.no_grad():
            sae.W_dec.copy_(w)
            sae.W_enc.copy_(w.T)
        return sae

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.W_enc.dtype)
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        if self.architecture == "topk":
            top = torch.topk(pre, k=int(self.k or 1), dim=-1)
            return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
        if self.architecture == "jumprelu":
            return torch.relu(pre) * (pre > self.threshold)
        return torch.relu(pre)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.pre_activation(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        """Scale every decoder row to unit norm."""
        self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp(min=1e-8))

    def config(self) -> dict[str, Any]:
        """The sae-lens ``cfg.json`` content of this SAE."""
        cfg: dict[str, Any] = {
            "architecture": self.architecture,
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "dtype": "float32",
            "device": "cpu",
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "normalize_activations": "none",
            "reshape_activations": "none",
            "metadata": self.metadata,
        }
        if self.architecture == "topk":
            cfg["k"] = self.k
        return cfg

    def save(self, folder: str | Path) -> tuple[Path, Path]:
        """Write ``sae_weights.safetensors`` and ``cfg.json`` into ``folder``; return both paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        weights = folder / SAE_WEIGHTS_FILENAME
        tensors = {k: v.detach().float().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(tensors, str(weights))
        cfg = folder / SAE_CFG_FILENAME
        cfg.write_text(json.dumps(self.config(), indent=2, sort_keys=True))
        return weights, cfg

    @property
    def hook_name(self) -> str | None:
        return self.metadata.get("hook_name")


def _architecture(cfg: dict[str, Any]) -> tuple[str, int | None]:
    arch = str(cfg.get("architecture", "standard")).lower()
    kwargs = cfg.get("activation_fn_kwargs") or {}
    k = cfg.get("k", kwargs.get("k"))
    if (
        arch == "standard"
        and str(cfg.get("activation_fn_str", cfg.get("activation_fn", ""))) == "topk"
    ):
        arch = "topk"
    return arch, None if k is None else int(k)


def load_sae(folder: str | Path) -> SparseAutoencoder:
    """Load an SAE from a sae-lens folder (``cfg.json`` + ``sae_weights.safetensors``)."""
    folder = Path(folder).expanduser()
    cfg_path, weights_path = folder / SAE_CFG_FILENAME, folder / SAE_WEIGHTS_FILENAME
    if not cfg_path.is_file() or not weights_path.is_file():
        raise SAEFormatError(
            f"{folder} is not an SAE folder in the sae-lens format: it needs {SAE_CFG_FILENAME} "
            f"and {SAE_WEIGHTS_FILENAME} (as train_sae writes them)"
        )
    cfg = json.loads(cfg_path.read_text())
    norm = cfg.get("normalize_activations", "none") or "none"
    if norm != "none":
        raise SAEFormatError(
            f"{cfg_path}: normalize_activations={norm!r} is not supported; fold the normalisation "
            "into the weights (sae-lens: fold_activation_norm_scaling_factor) and save again"
        )
    arch, k = _architecture(cfg)
    metadata = dict(cfg.get("metadata") or cfg.get("meta") or {})
    for key in ("hook_name", "hook_layer", "model_name"):
        if key in cfg and key not in metadata:
            metadata[key] = cfg[key]
    sae = SparseAutoencoder(
        int(cfg["d_in"]),
        int(cfg["d_sae"]),
        arch,
        k,
        bool(cfg.get("apply_b_dec_to_input", True)),
        metadata,
    )
    tensors = load_file(str(weights_path))
    expected = {name: tuple(p.shape) for name, p in sae.named_parameters()}
    for name, shape in expected.items():
        if name not in tensors:
            raise SAEFormatError(f"{weights_path} has no tensor {name!r}")
        if tuple(tensors[name].shape) != shape:
            raise SAEFormatError(
                f"{weights_path}: {name} has shape {tuple(tensors[name].shape)}, expected {shape}"
            )
    sae.load_state_dict({n: tensors[n].float() for n in expected})
    return sae.eval()


@dataclass
class TrainingLog:
    """What training did: loss per epoch, input scale, steps and time."""

    losses: list[float] = field(default_factory=list)
    scale: float = 1.0
    steps: int = 0
    seconds: float = 0.0


def train_topk_sae(
    x: torch.Tensor,
    d_sae: int,
    k: int,
    epochs: int = 20,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    aux_coef: float = 1 / 32,
    dead_after: int | None = None,
    metadata: dict[str, Any] | None = None,
    progress: bool = False,
) -> tuple[SparseAutoencoder, TrainingLog]:
    """Train a TopK SAE on rows of ``x`` ``[n, d_in]`` with Adam (Gao et al. 2024).

    The input is scaled so that its mean squared norm is ``d_in``; the decoder bias starts at the
    data mean; decoder rows are kept at unit norm (gradient component along each row removed,
    rows renormalised after each step). An AuxK loss (weight ``aux_coef``) makes latents that have
    not fired for ``dead_after`` steps (default: one epoch) reconstruct the residual. The returned
    SAE works on unscaled inputs (the scale is folded into the biases; latents come out divided by
    the scale).
    """
    start = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    data = x.detach().float()
    n, d_in = data.shape
    scale = math.sqrt(d_in / data.pow(2).sum(-1).mean().clamp(min=1e-12).item())
    data = data * scale
    sae = SparseAutoencoder.initialised(d_in, d_sae, k, seed)
    with torch.no_grad():
        sae.b_dec.copy_(data.mean(0))
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    dead_after = dead_after or steps_per_epoch
    since_fired = torch.zeros(d_sae, dtype=torch.long)
    k_aux = min(d_sae, max(1, d_in // 2))
    log = TrainingLog(scale=scale)
    for _ in tqdm(range(epochs), desc="train SAE", disable=not progress, leave=False):
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for i in range(steps_per_epoch):
            xb = data[order[i * batch_size : (i + 1) * batch_size]]
            pre = sae.pre_activation(xb)
            z = sae.activate(pre)
            recon = sae.decode(z)
            err = (recon - xb).pow(2).sum(-1).mean()
            loss = err
            fired = (z > 0).any(0)
            since_fired = torch.where(fired, 0, since_fired + 1)
            dead = since_fired > dead_after
            if aux_coef > 0 and bool(dead.any()):
                n_dead = int(dead.sum())
                masked = torch.where(dead, pre, torch.full_like(pre, -torch.inf))
                top = masked.topk(min(k_aux, n_dead), dim=-1)
                z_aux = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
                residual = (xb - recon).detach()
                aux = (z_aux @ sae.W_dec - residual).pow(2).sum(-1).mean()
                loss = loss + aux_coef * min(n_dead / k_aux, 1.0) * aux
            opt.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():
                w, g = sae.W_dec, sae.W_dec.grad
                if g is not None:
                    g.sub_((g * w).sum(-1, keepdim=True) * w)
            opt.step()
            sae.normalise_decoder()
            total += float(err.detach()) * xb.shape[0]
            log.steps += 1
        log.losses.append(total / n)
    with torch.no_grad():
        sae.b_enc.div_(scale)
        sae.b_dec.div_(scale)
    sae.metadata = dict(metadata or {})
    log.seconds = time.perf_counter() - start
    return sae.eval(), log


@dataclass
class ReconstructionStats:
    """How well an SAE reconstructs a set of activations."""

    mse: float
    fvu: float
    cosine: float
    l0: float
    frequency: np.ndarray

    @property
    def explained_variance(self) -> float:
        return 1.0 - self.fvu


@torch.no_grad()
def reconstruction_stats(
    sae: SparseAutoencoder, x: torch.Tensor, batch_size: int = 4096
) -> tuple[ReconstructionStats, torch.Tensor]:
    """(statistics, reconstructions) of ``x`` ``[n, d_in]``.

    ``mse`` is the mean squared error per element; ``fvu`` the fraction of variance unexplained,
    ``Σ‖x − x̂‖² / Σ‖x − mean(x)‖²``; ``cosine`` the mean cosine of x and x̂; ``l0`` the mean number
    of active latents; ``frequency`` each latent's share of rows where it is active.
    """
    x = x.float()
    recon = torch.empty_like(x)
    active = torch.zeros(sae.d_sae)
    l0 = 0.0
    for start in range(0, x.shape[0], batch_size):
        z = sae.encode(x[start : start + batch_size])
        recon[start : start + batch_size] = sae.decode(z)
        on = (z > 0).float()
        active += on.sum(0)
        l0 += float(on.sum())
    n = max(1, x.shape[0])
    sq_err = (x - recon).pow(2).sum()
    var = (x - x.mean(0)).pow(2).sum().clamp(min=1e-12)
    cos = torch.nn.functional.cosine_similarity(x, recon, dim=-1).mean()
    stats = ReconstructionStats(
        mse=float(sq_err / x.numel()),
        fvu=float(sq_err / var),
        cosine=float(cos),
        l0=l0 / n,
        frequency=(active / n).numpy(),
    )
    return stats, recon


def max_cosine(learned: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """For each row of ``reference``, the largest cosine to any row of ``learned``."""
    a = torch.nn.functional.normalize(learned.float(), dim=-1)
    b = torch.nn.functional.normalize(reference.float(), dim=-1)
    return (b @ a.T).max(-1).values

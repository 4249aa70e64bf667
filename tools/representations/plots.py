"""PNG figures of the representation tools (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def probe_accuracy_figure(
    path: Path,
    layers: Sequence[str],
    accuracy: Sequence[float],
    control: Sequence[float],
    majority: Sequence[float],
    title: str,
) -> Path:
    """Probe accuracy by layer, with the control-task accuracy and the majority baseline."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    x = np.arange(len(layers))
    ax.plot(x, accuracy, "o-", label="probe accuracy")
    ax.plot(x, control, "s--", label="control task")
    ax.plot(x, majority, ":", color="grey", label="majority class")
    sel = np.asarray(accuracy) - np.asarray(control)
    ax.bar(x, sel, width=0.4, alpha=0.25, color="C2", label="selectivity")
    ax.set_xticks(x, list(layers))
    ax.set_xlabel("layer")
    ax.set_ylabel("accuracy (out of fold)")
    ax.set_ylim(min(0.0, float(sel.min())), 1.02)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def dose_response_figure(
    path: Path,
    scales: Sequence[float],
    mean_delta: Sequence[float],
    ci_low: Sequence[float],
    ci_high: Sequence[float],
    rank_change: Sequence[float],
    title: str,
    reference: float | None = None,
) -> Path:
    """Mean score change (with CI) and mean rank change of a steered document, by scale;
    ``reference`` (the real perturbation's mean effect) as a dashed line."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
    s = np.asarray(scales, dtype=float)
    a1.fill_between(s, ci_low, ci_high, alpha=0.25)
    a1.plot(s, mean_delta, "o-")
    a1.axhline(0, color="grey", lw=0.8)
    if reference is not None:
        a1.axhline(reference, color="C3", ls="--", lw=1, label="real perturbation")
        a1.legend(fontsize=8)
    a1.set_xlabel("steering scale")
    a1.set_ylabel("mean score change")
    a2.plot(s, rank_change, "o-", color="C1")
    a2.axhline(0, color="grey", lw=0.8)
    a2.set_xlabel("steering scale")
    a2.set_ylabel("mean rank gain (steered alone)")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def sae_figure(
    path: Path,
    frequency: np.ndarray,
    base_scores: np.ndarray | None,
    new_scores: np.ndarray | None,
    per_query_spearman: Sequence[float],
    title: str,
) -> Path:
    """Latent firing frequencies; original vs reconstructed scores; per-query rank agreement."""
    panels = 3 if base_scores is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.6), squeeze=False)
    ax = axes[0, 0]
    freq = np.asarray(frequency)
    live = freq[freq > 0]
    if live.size:
        ax.hist(np.log10(live), bins=30)
    ax.set_xlabel("log10 firing frequency (live latents)")
    ax.set_ylabel("latents")
    ax.set_title(f"dead latents: {int((freq == 0).sum())} / {freq.size}", fontsize=9)
    if base_scores is not None and new_scores is not None:
        ax = axes[0, 1]
        ax.scatter(base_scores, new_scores, s=6, alpha=0.6)
        lo = float(min(base_scores.min(), new_scores.min()))
        hi = float(max(base_scores.max(), new_scores.max()))
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8)
        ax.set_xlabel("original score")
        ax.set_ylabel("score with SAE reconstruction")
        ax = axes[0, 2]
        ax.hist(np.asarray(per_query_spearman), bins=20, range=(-1, 1))
        ax.set_xlabel("per-query Spearman ρ (original vs reconstructed)")
        ax.set_ylabel("queries")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def svd_figure(
    path: Path,
    abs_rho: Sequence[float],
    component: np.ndarray,
    idf: np.ndarray,
    rho1: float,
    title: str,
) -> Path:
    """|Spearman ρ| of each component with IDF, and component 1 against IDF."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
    x = np.arange(1, len(abs_rho) + 1)
    a1.bar(x, abs_rho)
    a1.set_xlabel("singular component")
    a1.set_ylabel("|Spearman ρ| with IDF")
    a1.set_ylim(0, 1)
    a2.scatter(idf, component, s=3, alpha=0.3)
    a2.set_xlabel("token IDF (collection)")
    a2.set_ylabel("left singular vector 1")
    a2.set_title(f"ρ = {rho1:.3f}", fontsize=9)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def feature_figure(
    path: Path,
    units: Sequence[int],
    activations: np.ndarray,
    correlations: Sequence[float] | None,
    title: str,
) -> Path:
    """Activation histograms of the inspected units and their correlation with the property."""
    panels = 2 if correlations is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 3.6), squeeze=False)
    ax = axes[0, 0]
    for j, unit in enumerate(units[:6]):
        ax.hist(activations[:, j], bins=40, histtype="step", label=f"unit {unit}")
    ax.set_yscale("log")
    ax.set_xlabel("activation")
    ax.set_ylabel("rows")
    ax.legend(fontsize=7)
    if correlations is not None:
        ax = axes[0, 1]
        ax.bar([str(u) for u in units], correlations)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel("unit")
        ax.set_ylabel("correlation with property")
        ax.tick_params(axis="x", labelrotation=60, labelsize=7)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)

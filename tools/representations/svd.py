"""Singular value decomposition of a token embedding matrix and its relation to IDF."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats


@dataclass
class EmbeddingSVD:
    """Top singular components of an embedding matrix ``W`` ``[vocab, hidden]``.

    ``u`` ``[vocab, k]`` are the left singular vectors (one value per token), ``s`` ``[k]`` the
    singular values, ``vt`` ``[k, hidden]`` the right singular vectors, and ``energy`` each
    component's share of ``‖W‖²_F`` (of the centred matrix when ``centred``).
    """

    u: np.ndarray
    s: np.ndarray
    vt: np.ndarray
    energy: np.ndarray
    centred: bool


def embedding_svd(weight: torch.Tensor | np.ndarray, k: int, center: bool = False) -> EmbeddingSVD:
    """Top-``k`` SVD of ``weight`` (torch, float64), optionally after removing the column means.

    Signs are fixed so that the largest-magnitude entry of each left singular vector is positive.
    """
    w = torch.as_tensor(weight).detach().to(torch.float64).cpu()
    if center:
        w = w - w.mean(0, keepdim=True)
    u, s, vt = torch.linalg.svd(w, full_matrices=False)
    k = min(k, s.numel())
    u, s, vt = u[:, :k], s[:k], vt[:k]
    sign = torch.sign(u.gather(0, u.abs().argmax(0, keepdim=True))).squeeze(0)
    sign[sign == 0] = 1
    u, vt = u * sign, vt * sign.unsqueeze(-1)
    energy = (s**2) / w.pow(2).sum()
    return EmbeddingSVD(u.numpy(), s.numpy(), vt.numpy(), energy.numpy(), center)


def component_correlations(
    u: np.ndarray, values: np.ndarray, tokens: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(Spearman ρ, p-value) of each column of ``u``, rows ``tokens``, with ``values``."""
    rho = np.zeros(u.shape[1])
    p = np.ones(u.shape[1])
    for j in range(u.shape[1]):
        result = stats.spearmanr(u[tokens, j], values)
        rho[j], p[j] = float(result.statistic), float(result.pvalue)
    return rho, p

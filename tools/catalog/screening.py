"""Helpers shared by the screening tools (axiom, token, property and attribution screens)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from rankscope.tools.retrievers.base import Retriever
from rankscope.tools.stats import QueryValue, query_inference

_UNSAFE = re.compile(r"[\[\]|=\s]")


def query_ci(
    values: Sequence[QueryValue], *, seed: int = 0, n_resamples: int = 2000
) -> tuple[float, float, float, float | None]:
    """(estimate, 95% CI low, CI high, two-sided p vs 0) with the query as the unit of analysis:
    the mean of the per-query values and a percentile bootstrap over queries (a query's pairs move
    together), as the verdict engine computes it."""
    if not values:
        nan = float("nan")
        return nan, nan, nan, None
    inf = query_inference(
        values,
        threshold=0.0,
        direction="two-sided",
        alpha=0.05,
        n_resamples=n_resamples,
        seed=seed,
    )
    return inf.estimate, inf.ci_low, inf.ci_high, inf.p_value


def label(text: str, fallback: str) -> str:
    """``text`` if it can stand as a metric-key qualifier value, else ``fallback``."""
    return text if text and not _UNSAFE.search(text) else fallback


def bar_chart(
    labels: Sequence[str],
    values: Sequence[float],
    lows: Sequence[float],
    highs: Sequence[float],
    path: Path,
    *,
    title: str,
    xlabel: str,
) -> None:
    """A horizontal bar chart of estimates with their CIs, first row on top."""
    n = len(labels)
    fig, ax = plt.subplots(figsize=(6.4, max(2.4, 0.32 * n + 1.2)))
    y = np.arange(n)[::-1]
    vals = np.asarray(values, dtype=float)
    low = np.nan_to_num(vals - np.asarray(lows, dtype=float), nan=0.0)
    high = np.nan_to_num(np.asarray(highs, dtype=float) - vals, nan=0.0)
    colours = ["tab:blue" if v >= 0 else "tab:red" for v in np.nan_to_num(vals)]
    ax.barh(y, np.nan_to_num(vals), xerr=[np.abs(low), np.abs(high)], color=colours, alpha=0.8)
    ax.set_yticks(y, list(labels), fontsize=8)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@contextmanager
def embedding_offsets(retriever: Retriever, offsets: torch.Tensor) -> Iterator[None]:
    """Add ``offsets`` ``[B, S, E]`` to the output of the encoder's input (word) embeddings while
    the context is open: the score becomes a function of the word embeddings, differentiable
    with respect to ``offsets`` (position and type embeddings are added after, untouched)."""
    module = _input_embeddings(retriever)

    def hook(_module: torch.nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return output + offsets.to(output.dtype)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def embedding_matrix(retriever: Retriever) -> torch.Tensor:
    """The encoder's input (word) embedding matrix ``[vocab, E]`` (detached)."""
    return _input_embeddings(retriever).weight.detach()


def _input_embeddings(retriever: Retriever) -> torch.nn.Embedding:
    module = getattr(retriever.encoder, "get_input_embeddings")()  # noqa: B009 - untyped hook
    if not isinstance(module, torch.nn.Embedding):
        raise TypeError(f"{retriever.model_id}: the input embeddings are not an nn.Embedding")
    return module

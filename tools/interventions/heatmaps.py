"""Heatmaps of intervention results (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def heatmap(
    matrix: np.ndarray,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    path: Path,
    title: str,
    xlabel: str = "",
    ylabel: str = "",
    value_label: str = "effect",
    diverging: bool = True,
    annotate: bool | None = None,
) -> Path:
    """A heatmap of ``matrix`` ``[rows, cols]`` (NaN cells grey), written as a PNG to ``path``.

    Diverging maps are centred on 0. Cells are annotated with their values when the grid is
    small enough to read (``annotate=None``: at most 400 cells).
    """
    data = np.asarray(matrix, dtype=float)
    rows, cols = data.shape
    width = min(2.0 + 0.55 * cols, 24.0)
    height = min(1.5 + 0.4 * rows, 30.0)
    fig, ax = plt.subplots(figsize=(max(width, 4.0), max(height, 3.0)), dpi=110)
    finite = data[np.isfinite(data)]
    if diverging:
        bound = float(np.max(np.abs(finite))) if finite.size else 1.0
        bound = bound or 1.0
        cmap, vmin, vmax = "RdBu_r", -bound, bound
    else:
        cmap = "viridis"
        vmin = float(finite.min()) if finite.size else 0.0
        vmax = float(finite.max()) if finite.size else 1.0
    colormap = plt.get_cmap(cmap).with_extremes(bad="#cccccc")
    image = ax.imshow(
        np.ma.masked_invalid(data), cmap=colormap, vmin=vmin, vmax=vmax, aspect="auto"
    )
    ax.set_xticks(range(cols), labels=list(col_labels), rotation=45 if cols > 8 else 0, ha="right")
    ax.set_yticks(range(rows), labels=list(row_labels))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label=value_label)
    if annotate if annotate is not None else rows * cols <= 400:
        for i in range(rows):
            for j in range(cols):
                if np.isfinite(data[i, j]):
                    # white on dark cells, black on light ones (readable where it matters)
                    r, g, b, _ = image.cmap(image.norm(data[i, j]))
                    ink = "white" if 0.2126 * r + 0.7152 * g + 0.0722 * b < 0.5 else "black"
                    ax.text(
                        j, i, f"{data[i, j]:.2g}", ha="center", va="center", fontsize=7, color=ink
                    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def grid_from_rows(
    rows: Sequence[dict],
    row_key: str,
    col_key: str,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    value_key: str = "effect",
) -> np.ndarray:
    """A ``[len(row_labels), len(col_labels)]`` matrix from table rows (NaN where missing)."""
    index_r = {label: i for i, label in enumerate(row_labels)}
    index_c = {label: j for j, label in enumerate(col_labels)}
    out = np.full((len(row_labels), len(col_labels)), np.nan)
    for row in rows:
        r, c, value = row.get(row_key), row.get(col_key), row.get(value_key)
        if r in index_r and c in index_c and value is not None:
            out[index_r[r], index_c[c]] = value
    return out

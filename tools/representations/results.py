"""Helpers for the tools' results."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np


def clean_metrics(metrics: Mapping[str, float | int | None]) -> dict[str, float | int | None]:
    """Metrics with NaN and infinite values replaced by None (undefined, e.g. a rank correlation
    of a query whose scores all tie), and numpy scalars turned into Python numbers."""
    out: dict[str, float | int | None] = {}
    for key, value in metrics.items():
        if value is None or isinstance(value, bool):
            out[key] = value
        elif isinstance(value, int | np.integer):
            out[key] = int(value)
        else:
            number = float(value)
            out[key] = number if math.isfinite(number) else None
    return out

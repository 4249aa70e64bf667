"""Linear probes with control tasks, cross-validated with folds grouped by query.

A probe is a logistic regression on standardised features (an sklearn ``Pipeline``). Each layer
gets the probe's accuracy on the property, the accuracy of the same probe on a control task
(Hewitt & Liang 2019: labels assigned at random per type with the property's label distribution),
the selectivity (accuracy − control accuracy) and the majority-class baseline, all out of fold.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits


@dataclass
class LayerProbe:
    """Out-of-fold scores of one layer's probe."""

    layer: str
    accuracy: float
    balanced_accuracy: float
    control: float
    majority: float

    @property
    def selectivity(self) -> float:
        return self.accuracy - self.control


def make_probe(c: float = 1.0, max_iter: int = 500, seed: int = 0) -> Pipeline:
    """Standardise, then logistic regression (multinomial for more than two classes)."""
    return make_pipeline(
        StandardScaler(), LogisticRegression(C=c, max_iter=max_iter, random_state=seed)
    )


def group_folds(
    groups: np.ndarray, n_splits: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index pairs of a GroupKFold: no group is on both sides of a split."""
    n_groups = np.unique(groups).size
    if n_groups < 2:
        raise ValueError(
            f"cross-validation by query needs at least 2 queries, got {n_groups}; "
            "use more documents"
        )
    splitter = GroupKFold(n_splits=min(n_splits, n_groups), shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(groups.size), groups=groups))


def _fold_accuracy(
    x: np.ndarray, y: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]], c: float, seed: int
) -> tuple[float, float, float]:
    """(accuracy, balanced accuracy, majority baseline) of out-of-fold predictions."""
    pred = np.empty_like(y)
    majority = np.empty_like(y)
    for train, test in folds:
        classes, counts = np.unique(y[train], return_counts=True)
        majority[test] = classes[np.argmax(counts)]
        if classes.size == 1:
            pred[test] = classes[0]
            continue
        model = make_probe(c, seed=seed)
        with warnings.catch_warnings(), threadpool_limits(limits=1):
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(x[train], y[train])
        pred[test] = model.predict(x[test])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        balanced = balanced_accuracy_score(y, pred)
    return float(np.mean(pred == y)), float(balanced), float(np.mean(majority == y))


def probe_layer(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    control: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
    c: float = 1.0,
    seed: int = 0,
) -> LayerProbe:
    """Out-of-fold accuracy of a probe on ``y`` and on the control labels, for one layer.

    BLAS runs single-threaded during the fits: on a few shared cores, threaded BLAS makes these
    small fits many times slower."""
    acc, balanced, majority = _fold_accuracy(x, y, folds, c, seed)
    control_acc, _, _ = _fold_accuracy(x, control, folds, c, seed)
    return LayerProbe(name, acc, balanced, control_acc, majority)


@dataclass
class ProbeWeights:
    """A probe fitted on all rows, expressed in the raw activation space.

    ``coef`` is ``[n_classes or 1, width]`` (one row, pointing to the second class, for a binary
    probe) and ``intercept`` ``[n_classes or 1]``: ``logits = x @ coef.T + intercept``.
    """

    coef: np.ndarray
    intercept: np.ndarray


def fit_probe_weights(x: np.ndarray, y: np.ndarray, c: float = 1.0, seed: int = 0) -> ProbeWeights:
    """Fit a probe on every row and fold the standardisation into its weights."""
    model = make_probe(c, seed=seed)
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x, y)
    scaler: StandardScaler = model[0]
    lr: LogisticRegression = model[-1]
    coef = lr.coef_ / scaler.scale_
    intercept = lr.intercept_ - coef @ scaler.mean_
    return ProbeWeights(coef.astype(np.float32), intercept.astype(np.float32))


def save_probes(path: Path, weights: dict[str, ProbeWeights], metadata: dict[str, object]) -> Path:
    """Probe weights of several layers in one safetensors file (``{layer}.coef``,
    ``{layer}.intercept``), with ``metadata`` (property, classes, site …) as JSON in its header."""
    tensors: dict[str, torch.Tensor] = {}
    for layer, w in weights.items():
        tensors[f"{layer}.coef"] = torch.from_numpy(np.ascontiguousarray(w.coef))
        tensors[f"{layer}.intercept"] = torch.from_numpy(np.ascontiguousarray(w.intercept))
    save_file(tensors, str(path), metadata={"rankscope_probe": json.dumps(metadata)})
    return path


def load_probes(path: str | Path) -> tuple[dict[str, ProbeWeights], dict[str, object]]:
    """Inverse of :func:`save_probes`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"probe file {path} does not exist; pass a file written by linear_probe"
        )
    with safe_open(str(path), framework="pt") as fh:
        header = fh.metadata() or {}
    tensors = load_file(str(path))
    layers = sorted({k.rsplit(".", 1)[0] for k in tensors})
    weights = {
        layer: ProbeWeights(tensors[f"{layer}.coef"].numpy(), tensors[f"{layer}.intercept"].numpy())
        for layer in layers
    }
    return weights, json.loads(header.get("rankscope_probe", "{}"))


def probe_direction(weights: ProbeWeights, class_index: int | None = None) -> np.ndarray:
    """The direction a probe reads a class from: the binary probe's single row, or the row of
    ``class_index`` (default: the last class) minus the mean of the rows for a multi-class probe."""
    if weights.coef.shape[0] == 1:
        return -weights.coef[0] if class_index == 0 else weights.coef[0]
    index = weights.coef.shape[0] - 1 if class_index is None else class_index
    return weights.coef[index] - weights.coef.mean(0)

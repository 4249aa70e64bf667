"""What a set of pairs is a perturbation of: declared labels, unlabelled pairs, predicted directions.

Pairs built from a collection carry the (axiom, variant) of the registered perturbation that built
them. Fixed pairs read from a file carry what the user declared (a ``perturbation`` or
``axiom``/``variant`` column, or ``PATH#perturbation=AXIOM/VARIANT`` in the data spec); pairs
nobody declared carry the axiom :data:`UNLABELLED` and are called "unlabelled pairs" — never an
axiom they were not declared to be. The direction an axiom predicts for the score change
(perturbed minus baseline) comes from :data:`PREDICTED_BY_AXIOM`; unlabelled pairs predict none.
"""

from __future__ import annotations

import re
from typing import Literal

Predicted = Literal["increase", "decrease", "any"]

UNLABELLED = "UNLABELLED"
"""The axiom of fixed pairs whose perturbation was not declared."""

UNLABELLED_LABEL = "unlabelled pairs"

PREDICTED_BY_AXIOM: dict[str, Predicted] = {
    "TFC1": "increase",
    "TFC2": "increase",
    "TDC": "increase",
    "STMC1": "increase",
    "LNC1": "decrease",
    "LNC2": "increase",
}
"""The direction of the score change each axiom predicts; other axioms predict ``any``."""

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,39}")


def is_unlabelled(axiom: str) -> bool:
    return axiom.upper() == UNLABELLED


def perturbation_label(axiom: str, variant: str = "") -> str:
    """How pairs of ``axiom``/``variant`` are named in summaries, hypotheses and reports."""
    if is_unlabelled(axiom):
        return UNLABELLED_LABEL
    return f"{axiom} {variant}".strip()


def predicted_direction(axiom: str) -> Predicted | None:
    """The direction ``axiom`` predicts for perturbed minus baseline score; None for unlabelled
    pairs (nothing was declared, so nothing is predicted)."""
    if is_unlabelled(axiom):
        return None
    return PREDICTED_BY_AXIOM.get(axiom.upper(), "any")


def parse_perturbation(text: str) -> tuple[str, str]:
    """(AXIOM, variant) from a declaration ``AXIOM`` or ``AXIOM/VARIANT`` (variant "" when not
    given); raises ValueError for anything else, and for a declaration of "unlabelled"."""
    axiom, _, variant = text.strip().partition("/")
    axiom, variant = axiom.strip(), variant.strip()
    if not _NAME.fullmatch(axiom) or (variant and not _NAME.fullmatch(variant)):
        raise ValueError(
            f"{text!r} is not a perturbation declaration: write AXIOM or AXIOM/VARIANT "
            "(letters, digits, '_' or '-'), e.g. LNC1/append or TDC"
        )
    if is_unlabelled(axiom):
        raise ValueError(
            f"{text!r} declares nothing: leave the perturbation out for unlabelled pairs"
        )
    return axiom.upper(), variant.lower()

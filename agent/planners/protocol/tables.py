"""The protocol's tables: what each axiom predicts, its edit in words, the attention pattern that
characterises it, the argument that restricts a screen to one row, the reference row a
``property_regression`` screen pre-registers, and the localisation caps of long perturbations."""

from __future__ import annotations

from typing import Literal

from rankscope.tools.data.labels import PREDICTED_BY_AXIOM

Predicted = Literal["increase", "decrease"]
OneSided = Literal["greater", "less"]
"""The direction of a one-sided criterion."""

PREDICTED: dict[str, Predicted] = {
    axiom: way for axiom, way in PREDICTED_BY_AXIOM.items() if way in ("increase", "decrease")
} | {"ABNIRML": "decrease"}
"""The direction each axiom predicts for perturbed minus baseline score (the data's
``PREDICTED_BY_AXIOM``, which ``behavioural_test`` tests); ABNIRML manipulations, which the tool
leaves undirected, are predicted to lower scores: they damage the text."""

EDITS: dict[str, str] = {
    "TFC1": "adding another occurrence of a query term",
    "TFC2": "adding further copies of a query term",
    "TDC": "adding the query's highest-IDF term",
    "STMC1": "adding a non-query term related to the query",
    "LNC1": "adding non-query filler",
    "LNC2": "repeating the document's content",
}
"""The edit of each axiom, in words (hypothesis texts)."""

ATTENTION_FOCUS: dict[str, tuple[str, str]] = {
    "TFC1": (
        "injected->same_token",
        "injected tokens attend to earlier occurrences of the same "
        "token (duplicate-token heads, Chen et al.)",
    ),
    "TFC2": (
        "injected->same_token",
        "further copies attend to earlier occurrences of the same token (duplicate-token heads)",
    ),
    "TDC": (
        "injected->same_token",
        "the added rare term attends to its earlier occurrences (duplicate-token heads)",
    ),
    "LNC2": ("injected->same_token", "repeated content attends to its first copy"),
    "LNC1": (
        "doc->injected",
        "the document's tokens spend attention on the added filler, "
        "diluting what the pooled representation reads from the matches",
    ),
    "STMC1": ("cls->injected", "the CLS position reads the added related term"),
}
"""The characterising attention pattern of each axiom: (role pair, why)."""


SCREEN_ROW_ARGS: dict[str, str] = {
    "axiom_screen": "perturbations",
    "token_screen": "tokens",
    "property_regression": "edits",
    "input_attribution": "tokens",
}
"""The argument that restricts a screen to some of its rows (when the tool has it)."""

LONG_LOCALISE: dict[str, tuple[int, int]] = {"LNC1": (32, 1), "LNC2": (32, 1)}
"""(localise pairs, heads to confirm) caps for perturbations that make documents long (LNC1
appends filler as long as the document, LNC2 repeats it): one exact patching call on 96 long
LNC1 pairs took about 83 s on 2 cores, so the locate and confirm steps use 32 pairs and confirm
the top head only, to keep such an investigation within minutes (the verdict rules are the
same; the min_pairs and min_queries checks still apply)."""

EDIT_ROWS: dict[str, tuple[str, OneSided, str]] = {
    "length": ("pad", "less", "appending neutral filler lowers scores (a length penalty, LNC1)"),
    "position": (
        "match_position",
        "greater",
        "the query-term sentence placed first rather than last (the other sentences in the same "
        "order) raises scores (an early-match bonus)",
    ),
}
"""The ``property_regression`` row a screen pre-registers, by intent kind (others: ``pad``)."""

ROLE_POSITIONS: tuple[str, ...] = ("injected", "qterm", "doc", "cls")
"""The position groups a member's role is resolved over (position-resolved patching): the added
term, earlier occurrences of query terms in the document, the document's other tokens, CLS."""


MECHANISMS: dict[str, tuple[str, str]] = {
    "TFC1": (
        "the added query term's own representation enters the pooled vector directly (its "
        "final-layer state at the added position carries the effect; attention adds little)",
        "attention heads detect that the term repeats an earlier one (duplicate-token heads) "
        "and write the signal elsewhere, into other positions' states",
    ),
    "TFC2": (
        "each further copy's own representation enters the pooled vector directly",
        "attention heads detect the repeated copies and write the signal elsewhere",
    ),
    "TDC": (
        "the added rare term's own representation enters the pooled vector directly",
        "attention heads detect the repeated rare term and write the signal elsewhere",
    ),
}
"""The two competing mechanisms (direct, heads) the protocol states before localising a
perturbation that adds query terms to a mean-pooled model, and tells apart with two pre-registered
predictions: the direct mechanism predicts that the final-layer states at the added positions
alone carry most (more than half) of the effect; the heads mechanism predicts that all attention
outputs patched jointly carry most of it. Under mean pooling the pooled vector is the mean of the
final-layer states, so the added positions' share and the other positions' share add up to the
whole effect (up to the normalisation of a cosine score): at most one of "the added positions
carry most" and "the other positions carry most" holds. Both predictions holding means heads
write the signal at the added term itself — neither pure mechanism."""

MOST = 0.5
"""The threshold of a mechanism's prediction: "carries most of the effect" (more than half)."""

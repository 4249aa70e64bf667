"""What a question asks: the intent the protocol planner investigates.

:func:`map_intent` maps a question to one :class:`Intent`, in this order:

1. **Named.** An axiom named in the question (``TFC1``, ``TFC2``, ``TDC``, ``STMC1``, ``LNC1``,
   ``LNC2``, with its variant ``append``/``prepend``/``replace``/``repeat`` when named), an
   ABNIRML manipulation named by its registered name (``shuffle_words``, ``reverse_words``,
   ``delete_stopwords`` …, also spelt with spaces), or a screening tool named by its registered
   name (``token_screen``, ``axiom_screen``, ``property_regression``, ``input_attribution``).
2. **Similar.** Otherwise the cosine similarity, computed with the bundled sentence model
   (all-MiniLM-L6-v2, loaded once, offline), between the question and each intent's documented
   descriptions (:data:`INTENTS`; an intent's score is its best description's). The best intent
   is chosen when its similarity is at least :data:`MIN_SIMILARITY` (0.40): below that, questions
   and descriptions share a topic word at most (measured on the descriptions' own paraphrases
   and on unrelated questions: related pairs score 0.45–0.75, unrelated ones 0.0–0.30) — and
   when no other intent comes within :data:`AMBIGUITY_MARGIN` of it (a tie is not a choice).
3. **Open.** Otherwise (nothing similar enough, or a tie) an open screen (``axiom_screen``,
   ``property_regression``, ``token_screen``), then confirmation of every screen hit above the
   SESOI (after a tie, the rows that bear on the tied intents first).

The choice carries its reason (:attr:`IntentChoice.reason`), which the planner states as a note.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

AXIOMS = ("TFC1", "TFC2", "TDC", "STMC1", "LNC1", "LNC2")
VARIANTS = ("append", "prepend", "replace", "repeat")
MANIPULATIONS = (
    "shuffle_words",
    "shuffle_sentences",
    "reverse_words",
    "delete_stopwords",
    "delete_punctuation",
    "typos",
)
"""ABNIRML text manipulations (registered under axiom ``ABNIRML`` in tools/data)."""
SCREENS = ("axiom_screen", "token_screen", "property_regression", "input_attribution")
OPEN_SCREENS = ("axiom_screen", "property_regression", "token_screen")
"""The screens of an open question, in the order they run."""
NOT_FOLLOWED_UP = "screened, not followed up"
"""The prefix of the planner notes that list screen rows it did not follow up (the report's
Findings show them)."""
MIN_SIMILARITY = 0.40
"""The smallest question–description cosine similarity that selects an intent (module doc)."""
AMBIGUITY_MARGIN = 0.03
"""Intents whose similarities to a question are closer than this are a tie: the question is
screened openly (the ground-truth bench's trigger questions scored 0.69 vs 0.68 for TFC1 and the
trigger, and 0.45 vs 0.45 for word order and the trigger; picking the nearer one tested the wrong
behaviour both times)."""

Kind = Literal["axiom", "token", "length", "position", "open", "screen"]
How = Literal["named", "similarity", "open"]


@dataclass(frozen=True)
class Intent:
    """One thing a question can ask, with the descriptions a question is compared with."""

    name: str
    kind: Kind
    descriptions: tuple[str, ...]
    axiom: str | None = None
    variant: str | None = None
    screens: tuple[str, ...] = ()
    """Screening tools this intent runs (in order) before or beside its behavioural test."""


INTENTS: tuple[Intent, ...] = (
    Intent(
        "trigger token",
        "token",
        (
            "a word or token that, inserted into any document, raises its score for any query",
            "a trigger word that increases the score of every document regardless of the query",
            "query-independent tokens that change document scores",
        ),
        screens=("token_screen",),
    ),
    Intent(
        "document length",
        "length",
        (
            "are short documents preferred to long ones",
            "a length bias: do long documents score lower than short ones",
            "adding text that does not match the query lowers the score (LNC1)",
        ),
        axiom="LNC1",
        variant="append",
        screens=("property_regression",),
    ),
    Intent(
        "match position",
        "position",
        (
            "does it matter where in a document the query terms occur",
            "position bias: query terms at the start of a document score higher than at the end",
            "matches near the beginning versus near the end of a document",
        ),
        screens=("property_regression",),
    ),
    Intent(
        "term frequency (TFC1)",
        "axiom",
        (
            "repeating a query term in the document raises its score",
            "duplicated query terms in a document",
            "more occurrences of a query term in a document give a higher score",
            "term frequency of query terms",
        ),
        axiom="TFC1",
        variant="append",
    ),
    Intent(
        "term saturation (TFC2)",
        "axiom",
        (
            "Does the score saturate as a query term is repeated more and more?",
            "diminishing returns of repeated query terms",
        ),
        axiom="TFC2",
        variant="append",
    ),
    Intent(
        "term discrimination (TDC)",
        "axiom",
        (
            "Do rare query terms count more than common ones?",
            "inverse document frequency: matching a rare query term matters more",
        ),
        axiom="TDC",
        variant="append",
    ),
    Intent(
        "semantic matching (STMC1)",
        "axiom",
        (
            "Does the model reward terms related to the query that are not query terms?",
            "synonyms and semantically related words raise the score",
        ),
        axiom="STMC1",
        variant="append",
    ),
    Intent(
        "repeated content (LNC2)",
        "axiom",
        (
            "Does repeating a whole document change its score?",
            "a document concatenated with itself scores the same",
        ),
        axiom="LNC2",
        variant="repeat",
    ),
    Intent(
        "word order (ABNIRML shuffle_words)",
        "axiom",
        (
            "does word order matter: shuffling the words of a document",
            "documents whose words are scrambled",
        ),
        axiom="ABNIRML",
        variant="shuffle_words",
    ),
    Intent(
        "open screen",
        "open",
        (
            "what the model rewards other than matching the query",
            "which document properties and features does the model rely on",
            "what else influences the ranking: biases and shortcuts of the model",
        ),
        screens=OPEN_SCREENS,
    ),
)
OPEN = next(i for i in INTENTS if i.kind == "open")


@dataclass(frozen=True)
class IntentChoice:
    """The intent chosen for a question, how and why."""

    intent: Intent
    how: How
    reason: str
    similarity: float | None = None
    tied: tuple[Intent, ...] = ()
    """The intents a question was equally similar to (an open screen then follows up the hits
    that bear on them first)."""

    @property
    def axiom(self) -> str | None:
        return self.intent.axiom

    @property
    def variant(self) -> str | None:
        return self.intent.variant

    def note(self) -> str:
        """The planner's statement of its intent."""
        return f"intent: {self.intent.name} — {self.reason}"


def bears_on(intent: Intent, tool: str, axiom: str | None, variant: str | None) -> bool:
    """Whether a screen row (its tool, and its axiom and variant for ``axiom_screen``) tests what
    ``intent`` asks about."""
    if tool == "axiom_screen":
        return intent.axiom is not None and (intent.axiom, intent.variant) == (axiom, variant)
    return tool in intent.screens and intent.kind != "open"


def _spelt(name: str) -> re.Pattern[str]:
    """A registered name also spelt with spaces or hyphens (``delete stop words``)."""
    parts = [re.escape(p) for p in re.split(r"_", name)]
    if name == "delete_stopwords":
        parts = ["delete", "stop[ _-]?words?"]
    return re.compile(r"\b" + r"[ _-]".join(parts) + r"\b", re.IGNORECASE)


def named_intent(question: str) -> IntentChoice | None:
    """An axiom, manipulation or screening tool named in the question, else None."""
    lower = question.lower()
    for tool in SCREENS:
        if _spelt(tool).search(question):
            intent = Intent(tool, "screen", (), screens=(tool,))
            return IntentChoice(intent, "named", f"the question names the tool {tool}")
    upper = question.upper()
    axiom = next(
        (a for a in sorted(AXIOMS, key=len, reverse=True) if re.search(rf"\b{a}\b", upper)), None
    )
    if axiom is not None:
        from rankscope.tools.data.axioms import default_variant, registered

        named_variant = next(
            (v for v in VARIANTS if re.search(rf"\b{v}(ed|ing|s)?\b", lower)), None
        )
        variant = (
            named_variant if (axiom, named_variant) in set(registered()) else default_variant(axiom)
        )
        known = next((i for i in INTENTS if i.axiom == axiom and i.kind == "axiom"), None)
        intent = Intent(
            known.name if known else axiom,
            "axiom",
            known.descriptions if known else (),
            axiom=axiom,
            variant=variant,
        )
        return IntentChoice(intent, "named", f"the question names the axiom {axiom} ({variant})")
    for manipulation in MANIPULATIONS:
        if _spelt(manipulation).search(question):
            intent = Intent(
                f"ABNIRML {manipulation}", "axiom", (), axiom="ABNIRML", variant=manipulation
            )
            return IntentChoice(
                intent, "named", f"the question names the ABNIRML manipulation {manipulation}"
            )
    return None


@lru_cache(maxsize=1)
def _encoder() -> object:
    """The bundled sentence model (loaded once per process, offline)."""
    from rankscope.tools.retrievers import load_retriever

    return load_retriever("default")


@lru_cache(maxsize=1)
def _description_embeddings() -> tuple[list[tuple[int, str]], object]:
    model = _encoder()
    rows = [(i, d) for i, intent in enumerate(INTENTS) for d in intent.descriptions]
    return rows, model.encode_texts([d for _, d in rows])  # type: ignore[attr-defined]


def similarities(question: str) -> list[tuple[Intent, float]]:
    """Each intent's best cosine similarity with the question, best first."""
    import torch.nn.functional as F

    rows, desc = _description_embeddings()
    query = _encoder().encode_texts([question])  # type: ignore[attr-defined]
    sims = (F.normalize(query, dim=-1) @ F.normalize(desc, dim=-1).T)[0].tolist()  # type: ignore[arg-type]
    best: dict[int, float] = {}
    for (index, _), sim in zip(rows, sims, strict=True):
        best[index] = max(best.get(index, -1.0), float(sim))
    return sorted(((INTENTS[i], s) for i, s in best.items()), key=lambda kv: -kv[1])


def map_intent(question: str, min_similarity: float = MIN_SIMILARITY) -> IntentChoice:
    """The intent of ``question`` (named, else most similar above ``min_similarity``, else open)."""
    named = named_intent(question)
    if named is not None:
        return named
    try:
        ranked = similarities(question)
    except Exception as err:  # noqa: BLE001 — a missing model must not stop an investigation
        return IntentChoice(
            OPEN, "open", f"the sentence model is unavailable ({err}); screening openly"
        )
    intent, sim = ranked[0]
    runner_up = f"; next: {ranked[1][0].name} {ranked[1][1]:.2f}" if len(ranked) > 1 else ""
    if sim >= min_similarity and len(ranked) > 1 and sim - ranked[1][1] < AMBIGUITY_MARGIN:
        close = tuple(i for i, s in ranked if sim - s < AMBIGUITY_MARGIN)
        return IntentChoice(
            OPEN,
            "open",
            f"no axiom or tool is named and the question is as similar to "
            f"{' and '.join(repr(i.name) for i in close)} (cosine {sim:.2f}{runner_up}: less "
            f"than {AMBIGUITY_MARGIN:.2f} apart); screening openly rather than guessing between "
            "them, their screen rows followed up first",
            similarity=sim,
            tied=close,
        )
    if sim >= min_similarity:
        return IntentChoice(
            intent,
            "similarity",
            f"no axiom or tool is named; the question is most similar to the description of "
            f"'{intent.name}' (cosine {sim:.2f} ≥ {min_similarity:.2f}{runner_up})",
            similarity=sim,
        )
    return IntentChoice(
        OPEN,
        "open",
        f"no axiom or tool is named and no intent's description is similar enough (best: "
        f"{intent.name} {sim:.2f} < {min_similarity:.2f}); screening openly",
        similarity=sim,
    )

"""Word, sentence and stop-word helpers of the perturbations and the collection statistics."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator

WORD_RE = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
"""A word: letters and digits, with inner apostrophes (``don't``, ``o’clock``)."""

SENTENCE_BOUNDARY_RE = re.compile(r"(?<=[.!?])\s+")

_STOPWORD_LIST = """
    a about above after again against all also am an and any are aren't as at be because been
    before being below between both but by can can't cannot could couldn't did didn't do does
    doesn't doing don't down during each either else etc even ever every few for from further
    had hadn't has hasn't have haven't having he he'd he'll he's her here here's hers herself him
    himself his how how's however i i'd i'll i'm i've if in into is isn't it it's its itself just
    let's may me might more most much must mustn't my myself neither no nor not of off often on
    once only or other ought our ours ourselves out over own per quite rather same shall shan't she
    she'd she'll she's should shouldn't so some such than that that's the their theirs them
    themselves then there there's these they they'd they'll they're they've this those though
    through thus to too under until up upon us very via was wasn't we we'd we'll we're we've were
    weren't what what's when when's where where's whether which while who who's whom whose why
    why's will with within without won't would wouldn't yet you you'd you'll you're you've your
    yours yourself yourselves
"""
STOPWORDS: frozenset[str] = frozenset(_STOPWORD_LIST.split())
"""English stop words: function words (articles, pronouns, auxiliaries, prepositions, conjunctions,
their contractions) and a few very common adverbs. Lower case, apostrophe ``'``."""


def normalise(word: str) -> str:
    """The lookup form of a word: lower case, typographic apostrophe folded to ``'``."""
    return word.lower().replace("’", "'")


def words(text: str) -> list[str]:
    """The words of ``text`` in lookup form (see :func:`normalise`), in order."""
    return [normalise(m.group()) for m in WORD_RE.finditer(text)]


def word_matches(text: str) -> Iterator[re.Match[str]]:
    """The word matches of ``text`` (for their character spans)."""
    return WORD_RE.finditer(text)


def is_stopword(word: str) -> bool:
    return normalise(word) in STOPWORDS


def is_content_word(word: str, min_length: int = 3) -> bool:
    """An alphabetic word of at least ``min_length`` characters that is not a stop word."""
    return len(word) >= min_length and word.isalpha() and not is_stopword(word)


def sentences(text: str) -> list[str]:
    """``text`` split after ``.``, ``!`` or ``?`` followed by white space; empty parts dropped."""
    return [s.strip() for s in SENTENCE_BOUNDARY_RE.split(text.strip()) if s.strip()]


def is_punctuation(char: str) -> bool:
    return unicodedata.category(char).startswith("P")


def count_term(text: str, term: str) -> int:
    """How many words of ``text`` equal ``term`` (case-insensitive)."""
    target = normalise(term)
    return sum(1 for w in words(text) if w == target)

"""Token-level length alignment of baseline and perturbed text, and char-span → token masks.

Activation patching copies activations position by position from one run into the other, so the
baseline and the perturbed document must tokenise to the same number of tokens, with the
unchanged text at the same positions. :func:`align_pair` pads the text with FEWER tokens with the
filler word ``"a"`` (as the shared TFC1 data does) at the perturbation point:

- the longer text starts with the shorter one (append, TFC2, TDC's shared prefix, LNC1, LNC2):
  fillers go at the END of the shorter text (``" a a"``);
- the longer text ends with the shorter one (prepend): at the START (``"a a "``);
- otherwise (replace, typos, shuffles, deletions): after the last edited word of the shorter
  text, i.e. where the two texts stop differing, snapped to the next white space (or the end).

Filler spans are recorded in ``Pair.filler`` (baseline padded) or ``Pair.perturbed_filler``
(perturbed padded, e.g. after deleting stop words); spans after the insertion point are shifted.

Token counts are taken with the given Hugging Face tokenizer without special tokens.
``max_length`` is the model's maximum sequence length, as the retriever truncates to it (special
tokens included). The document may use what is left after the special tokens and, with
``with_query=True`` (the default, right for a cross-encoder that reads query and document in one
sequence, and safe for any model), after the query's tokens; pass ``with_query=False`` for a
bi-encoder, whose document is encoded alone. A pair longer than that budget is kept only when the
whole edit — every span where the texts differ, every injected and filler span — lies within the
budget in both texts, so that truncation keeps them aligned and keeps the perturbation visible;
otherwise :class:`AlignmentError` is raised (and :func:`align_pairs` drops the pair with a counted
:class:`AlignmentWarning`). A pair is never silently misaligned.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any, Literal

from rankscope.tools.data.errors import AlignmentError, AlignmentWarning
from rankscope.tools.data.types import Pair, PairSet, Span

FILLER = "a"
MAX_SEARCH_STEPS = 12


def token_count(tokenizer: Any, text: str) -> int:
    """Number of tokens of ``text`` with ``tokenizer``, no special tokens, no truncation."""
    return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


class TokenCounter:
    """Token counts of texts with one tokenizer, memoised; :meth:`prime` counts many at once."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._memo: dict[str, int] = {}

    def prime(self, texts: Iterable[str]) -> None:
        todo = [t for t in dict.fromkeys(texts) if t not in self._memo]
        if todo:
            ids = self.tokenizer(todo, add_special_tokens=False, verbose=False)["input_ids"]
            self._memo.update(zip(todo, (len(x) for x in ids), strict=True))

    def __call__(self, text: str) -> int:
        if text not in self._memo:
            self._memo[text] = token_count(self.tokenizer, text)
        return self._memo[text]


def token_mask_for_spans(
    offsets: Sequence[Sequence[int] | None],
    spans: Sequence[Span],
    *,
    sequence_ids: Sequence[int | None] | None = None,
    sequence: int | None = None,
    text: str | None = None,
) -> list[bool]:
    """For each token, whether its characters overlap one of ``spans``.

    ``offsets`` are a fast tokenizer's ``offset_mapping`` (``(start, end)`` per token; special
    tokens have empty offsets and are never in the mask). When the encoding holds two texts (a
    cross-encoder's query and document), pass ``sequence_ids`` (``encoding.sequence_ids()``) and
    the ``sequence`` (0 or 1) whose character spans ``spans`` refer to. With the ``text`` the
    offsets index, a token of white space only (a byte-level BPE's bare ``Ġ`` before a word it
    has no merge for) counts with the span that starts right after it.
    """
    if sequence_ids is not None and len(sequence_ids) != len(offsets):
        raise ValueError(f"{len(sequence_ids)} sequence ids for {len(offsets)} token offsets")
    starts = {s for s, _ in spans}
    mask = []
    for i, offset in enumerate(offsets):
        if offset is None or len(offset) != 2 or offset[1] <= offset[0]:
            mask.append(False)
            continue
        if sequence is not None and (sequence_ids is None or sequence_ids[i] != sequence):
            mask.append(False)
            continue
        start, end = int(offset[0]), int(offset[1])
        hit = any(start < s_end and end > s_start for s_start, s_end in spans)
        if not hit and text is not None and end in starts and not text[start:end].strip():
            hit = True
        mask.append(hit)
    return mask


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _common_suffix(a: str, b: str, limit: int) -> int:
    i = 0
    while i < limit and a[len(a) - 1 - i] == b[len(b) - 1 - i]:
        i += 1
    return i


def _diff_ends(a: str, b: str) -> tuple[int, int]:
    """Where ``a`` and ``b`` stop differing: the end of the edited region in each."""
    pre = _common_prefix(a, b)
    suf = _common_suffix(a, b, min(len(a), len(b)) - pre)
    return len(a) - suf, len(b) - suf


def insertion_point(short: str, long: str, variant: str = "") -> int:
    """Where filler goes in ``short`` (see the module docstring)."""
    is_prefix, is_suffix = long.startswith(short), long.endswith(short)
    if is_prefix and is_suffix:
        return 0 if variant == "prepend" else len(short)
    if is_prefix:
        return len(short)
    if is_suffix:
        return 0
    pos = _diff_ends(short, long)[0]
    while pos < len(short) and not short[pos].isspace():
        pos += 1
    return pos


def insert_filler(text: str, pos: int, k: int, filler: str = FILLER) -> tuple[str, list[Span]]:
    """``text`` with ``k`` space-separated filler words inserted at ``pos``, and their spans."""
    if k <= 0:
        return text, []
    if not text:
        inserted = " ".join([filler] * k)
        spans = [(i * (len(filler) + 1), i * (len(filler) + 1) + len(filler)) for i in range(k)]
        return inserted, spans
    if pos == 0:
        inserted = f"{filler} " * k
        spans = [(i * (len(filler) + 1), i * (len(filler) + 1) + len(filler)) for i in range(k)]
    else:
        inserted = f" {filler}" * k
        spans = [
            (pos + i * (len(filler) + 1) + 1, pos + (i + 1) * (len(filler) + 1)) for i in range(k)
        ]
    return text[:pos] + inserted + text[pos:], spans


def _shift(spans: Sequence[Span], pos: int, by: int) -> tuple[Span, ...]:
    return tuple((s + by, e + by) if s >= pos else (s, e) for s, e in spans)


def _pad(short: str, target: int, pos: int, count: TokenCounter) -> tuple[str, list[Span]]:
    """Pad ``short`` at ``pos`` with fillers until it has ``target`` tokens, or raise."""
    k = target - count(short)
    tried: set[int] = set()
    for _ in range(MAX_SEARCH_STEPS):
        if k <= 0 or k in tried:
            break
        tried.add(k)
        padded, spans = insert_filler(short, pos, k)
        n = count(padded)
        if n == target:
            return padded, spans
        k += target - n if n < target else -1
    raise AlignmentError(
        f"no number of filler words {FILLER!r} gives {target} tokens at character {pos} "
        f"(tried {sorted(tried)}); the tokenizer merges the filler with its neighbours"
    )


def _visible(count: TokenCounter, text: str, ends: Sequence[int], budget: int) -> bool:
    """Whether ``text`` up to the last of ``ends`` fits in ``budget`` tokens."""
    last = max(ends, default=0)
    return last == 0 or count(text[:last]) <= budget


def document_budget(
    tokenizer: Any, max_length: int, query: str | None = None, count: TokenCounter | None = None
) -> int:
    """Tokens left for a document in a ``max_length`` sequence (with ``query`` when it shares it)."""
    special = getattr(tokenizer, "num_special_tokens_to_add", None)
    n_special = special(pair=query is not None) if callable(special) else 0
    n_query = 0
    if query is not None:
        n_query = count(query) if count is not None else token_count(tokenizer, query)
    return max_length - n_special - n_query


def _first_try(pair: Pair, count: TokenCounter) -> str | None:
    """The padded text :func:`align_pair` tries first (to count it in a batch beforehand)."""
    n_base, n_pert = count(pair.baseline), count(pair.perturbed)
    if n_base == n_pert:
        return None
    short, long = (
        (pair.perturbed, pair.baseline) if n_pert < n_base else (pair.baseline, pair.perturbed)
    )
    pos = insertion_point(short, long, pair.variant)
    return insert_filler(short, pos, abs(n_base - n_pert))[0]


def align_many(
    pairs: Sequence[Pair], tokenizer: Any, max_length: int = 256, *, with_query: bool = True
) -> list[Pair | AlignmentError]:
    """:func:`align_pair` for each pair (the aligned pair or its error), counting in batches."""
    count = TokenCounter(tokenizer)
    count.prime(t for p in pairs for t in (p.baseline, p.perturbed))
    count.prime(t for p in pairs if (t := _first_try(p, count)) is not None)
    out: list[Pair | AlignmentError] = []
    for pair in pairs:
        try:
            out.append(_align(pair, count, max_length, with_query))
        except AlignmentError as err:
            out.append(err)
    return out


def align_pair(
    pair: Pair, tokenizer: Any, max_length: int = 256, *, with_query: bool = True
) -> Pair:
    """``pair`` with the text of fewer tokens padded with filler so both have as many tokens.

    Raises :class:`AlignmentError` when no padding gives equal counts, or when the texts exceed
    the document's share of ``max_length`` tokens and truncation would cut into the edit (see
    the module docstring for ``max_length`` and ``with_query``).
    A pair whose texts already tokenise to the same length is returned unchanged.
    """
    return _align(pair, TokenCounter(tokenizer), max_length, with_query)


def _align(pair: Pair, count: TokenCounter, max_length: int, with_query: bool) -> Pair:
    n_base = count(pair.baseline)
    n_pert = count(pair.perturbed)
    aligned = pair
    if n_pert < n_base:
        pos = insertion_point(pair.perturbed, pair.baseline, pair.variant)
        padded, spans = _pad(pair.perturbed, n_base, pos, count)
        by = len(padded) - len(pair.perturbed)
        aligned = replace(
            pair,
            perturbed=padded,
            injected=_shift(pair.injected, pos, by),
            perturbed_filler=tuple(sorted(_shift(pair.perturbed_filler, pos, by) + tuple(spans))),
        )
    elif n_base < n_pert:
        pos = insertion_point(pair.baseline, pair.perturbed, pair.variant)
        padded, spans = _pad(pair.baseline, n_pert, pos, count)
        by = len(padded) - len(pair.baseline)
        aligned = replace(
            pair,
            baseline=padded,
            filler=tuple(sorted(_shift(pair.filler, pos, by) + tuple(spans))),
        )
    n = max(n_base, n_pert)
    query = pair.query if with_query else None
    budget = document_budget(count.tokenizer, max_length, query, count)
    if n > budget:
        end_base, end_pert = _diff_ends(aligned.baseline, aligned.perturbed)
        base_ends = [end_base, *(e for _, e in aligned.filler)]
        pert_ends = [end_pert, *(e for _, e in aligned.injected + aligned.perturbed_filler)]
        if not (
            _visible(count, aligned.baseline, base_ends, budget)
            and _visible(count, aligned.perturbed, pert_ends, budget)
        ):
            raise AlignmentError(
                f"pair {pair.qid}/{pair.docno} ({pair.axiom}/{pair.variant}) has {n} tokens, more "
                f"than the {budget} a document may use with max_length={max_length}, and "
                "truncation would cut into the perturbation"
            )
    return aligned


def align_pairs(
    pairs: PairSet,
    tokenizer: Any,
    max_length: int = 256,
    on_error: Literal["drop", "raise"] = "drop",
    *,
    with_query: bool = True,
) -> PairSet:
    """Every pair aligned with :func:`align_pair`.

    Pairs that cannot be aligned are dropped with one :class:`AlignmentWarning` that counts them
    and gives the first reason (``on_error="drop"``), or re-raise (``on_error="raise"``).
    """
    out: list[Pair] = []
    failures: list[str] = []
    for result in align_many(pairs.pairs, tokenizer, max_length, with_query=with_query):
        if isinstance(result, AlignmentError):
            if on_error == "raise":
                raise result
            failures.append(str(result))
        else:
            out.append(result)
    if failures:
        warnings.warn(
            f"{len(failures)} of {len(pairs)} pairs of {pairs.name!r} dropped: they cannot be "
            f"length-aligned (first: {failures[0]})",
            AlignmentWarning,
            stacklevel=2,
        )
    return pairs.with_pairs(out, ":aligned")

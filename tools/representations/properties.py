"""Properties of tokens and documents computed from the data: the labels probes predict.

Token level (rows are document tokens):
  ``qterm``  the token's id occurs among the query's token ids (the adapter's QTERM role);
  ``tf``     how often the token's id occurs in its document: ``1``, ``2``, ``3+``;
  ``idf``    the token's IDF over the collection, in tertiles: ``low``, ``mid``, ``high``.
Document level (rows are documents):
  ``qterm``  the document holds at least one of the query's content words;
  ``tf``     occurrences of the query's content words in the document: ``0``, ``1``, ``2-3``,
             ``4+``;
  ``length`` the document's number of tokens, in tertiles;
  ``relevance`` the relevance grade (documents without one are left out).

IDF is the BM25 form ``ln((N - df + 0.5) / (df + 0.5) + 1)`` over token ids of the collection's
documents (the document-level words come from ``rankscope.tools.data.text``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from rankscope.tools.data.text import STOPWORDS, is_punctuation, words
from rankscope.tools.representations.activations import ActivationTable
from rankscope.tools.representations.corpus import Document
from rankscope.tools.retrievers.base import Role

Level = Literal["token", "document"]
Property = Literal["qterm", "tf", "idf", "length", "relevance"]
TOKEN_PROPERTIES: tuple[str, ...] = ("qterm", "tf", "idf")
DOCUMENT_PROPERTIES: tuple[str, ...] = ("qterm", "tf", "length", "relevance")


@dataclass
class Labels:
    """Class labels of rows (``-1``: no label), their class names and the raw values behind them.

    ``ordinal`` labels have ordered classes (buckets); ``values`` are the numbers the buckets were
    cut from (for rank correlations); binary labels have two classes.
    """

    y: np.ndarray
    classes: list[str]
    values: np.ndarray
    ordinal: bool

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2


def idf_from_df(df: np.ndarray, n_docs: int) -> np.ndarray:
    return np.log((n_docs - df + 0.5) / (df + 0.5) + 1.0)


def token_document_frequency(
    tokenizer: Any, texts: Sequence[str], batch_size: int = 512
) -> np.ndarray:
    """Document frequency of every token id of the vocabulary over ``texts`` (``[vocab]``)."""
    df = np.zeros(len(tokenizer), dtype=np.int64)
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[start : start + batch_size]), add_special_tokens=False)
        for ids in enc["input_ids"]:
            df[np.unique(np.asarray(ids, dtype=np.int64))] += 1
    return df


def token_idf(tokenizer: Any, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(IDF, document frequency) of every token id over ``texts``; unseen ids get the top IDF."""
    df = token_document_frequency(tokenizer, texts)
    return idf_from_df(df, len(texts)), df


def content_vocab_mask(tokenizer: Any) -> np.ndarray:
    """True for token ids that are not special tokens, stop words or pure punctuation."""
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    special = set(tokenizer.all_special_ids)
    mask = np.ones(len(vocab), dtype=bool)
    for i, tok in enumerate(vocab):
        bare = tok.lstrip("#").lstrip("Ġ▁").lower()
        if i in special or not bare or bare in STOPWORDS or all(is_punctuation(c) for c in bare):
            mask[i] = False
    return mask


def bucket(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Bucket index of each value: ``edges`` are the lower bounds of buckets 1, 2, …"""
    return np.searchsorted(np.asarray(edges, dtype=float), values, side="right")


def tertiles(values: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Three buckets cut at the 1/3 and 2/3 quantiles of ``values`` (fewer when values tie)."""
    cuts = np.unique(np.quantile(values, [1 / 3, 2 / 3]))
    idx = np.searchsorted(cuts, values, side="left")
    idx = np.unique(idx, return_inverse=True)[1]
    names = ["low", "mid", "high"] if idx.max() == 2 else [f"b{i}" for i in range(idx.max() + 1)]
    return idx, names


def query_content_words(query: str) -> set[str]:
    ws = set(words(query))
    return (ws - STOPWORDS) or ws


def _query_word_count(doc: Document) -> int:
    wanted = query_content_words(doc.query)
    return sum(w in wanted for w in words(doc.text))


def token_labels(prop: str, table: ActivationTable, idf: np.ndarray | None = None) -> Labels:
    """Labels of the token rows of ``table`` for a token-level property."""
    if prop == "qterm":
        y = (table.role == int(Role.QTERM)).astype(np.int64)
        return Labels(y, ["other", "query term"], y.astype(float), ordinal=False)
    if prop == "tf":
        counts = np.zeros(len(table), dtype=np.int64)
        for d in np.unique(table.doc):
            rows = np.flatnonzero(table.doc == d)
            ids = table.doc_ids[d][np.isin(table.doc_roles[d], (int(Role.DOC), int(Role.QTERM)))]
            uniq, cnt = np.unique(ids, return_counts=True)
            lookup = dict(zip(uniq.tolist(), cnt.tolist(), strict=True))
            counts[rows] = [lookup.get(t, 1) for t in table.token_id[rows].tolist()]
        return Labels(bucket(counts, [2, 3]), ["1", "2", "3+"], counts.astype(float), ordinal=True)
    if prop == "idf":
        if idf is None:
            raise ValueError("the idf property needs token IDF values")
        values = idf[table.token_id]
        y, names = tertiles(values)
        return Labels(y, names, values, ordinal=True)
    raise ValueError(
        f"property {prop!r} has no token-level form; token-level properties: "
        f"{', '.join(TOKEN_PROPERTIES)} (use level='document' for {', '.join(DOCUMENT_PROPERTIES)})"
    )


def document_labels(
    prop: str, docs: Sequence[Document], table: ActivationTable | None = None
) -> Labels:
    """Labels of documents (rows in ``docs`` order) for a document-level property."""
    if prop in ("qterm", "tf"):
        counts = np.asarray([_query_word_count(d) for d in docs])
        if prop == "qterm":
            y = (counts > 0).astype(np.int64)
            return Labels(y, ["absent", "present"], counts.astype(float), ordinal=False)
        return Labels(
            bucket(counts, [1, 2, 4]), ["0", "1", "2-3", "4+"], counts.astype(float), True
        )
    if prop == "length":
        if table is not None and table.doc_ids:
            lengths = np.asarray([len(ids) for ids in table.doc_ids], dtype=float)
        else:
            lengths = np.asarray([len(words(d.text)) for d in docs], dtype=float)
        y, names = tertiles(lengths)
        return Labels(y, names, lengths, ordinal=True)
    if prop == "relevance":
        grades = np.asarray([-1 if d.relevance is None else d.relevance for d in docs])
        present = sorted({int(g) for g in grades if g >= 0})
        if not present:
            raise ValueError("no document has a relevance grade; the data has no relevance labels")
        y = np.asarray([present.index(int(g)) if g >= 0 else -1 for g in grades])
        return Labels(y, [str(g) for g in present], grades.astype(float), ordinal=True)
    raise ValueError(
        f"property {prop!r} has no document-level form; document-level properties: "
        f"{', '.join(DOCUMENT_PROPERTIES)}"
    )


def control_labels(y: np.ndarray, types: np.ndarray, seed: int = 0) -> np.ndarray:
    """Control-task labels (Hewitt & Liang 2019): each type gets a random label drawn from the
    empirical label distribution of ``y``; every row of that type carries it.

    For token probes the type is the token id; for document probes every document is its own type.
    """
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    uniq, inverse = np.unique(types, return_inverse=True)
    drawn = rng.choice(classes, size=uniq.size, p=counts / counts.sum())
    return drawn[inverse]

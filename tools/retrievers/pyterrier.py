"""The studied model as a PyTerrier re-ranker (the ``rankscope[pyterrier]`` extra).

``Retriever.as_pyterrier_transformer()`` returns a :class:`RetrieverTransformer`: given a frame of
(qid, query, docno, text) rows, as a first-stage retriever followed by a text loader produces,
it scores every row with :meth:`Retriever.score` and returns the frame with ``score`` and
``rank`` (per query, by PyTerrier's own ``add_ranks``). Importing PyTerrier starts no Java; this
transformer needs none.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

try:
    import pyterrier as pt
except ModuleNotFoundError as err:
    raise ModuleNotFoundError(
        "as_pyterrier_transformer needs PyTerrier: pip install 'rankscope[pyterrier]' "
        "(or pip install python-terrier)"
    ) from err

if TYPE_CHECKING:
    from rankscope.tools.retrievers.base import Retriever

REQUIRED = ("qid", "query", "docno")


class RetrieverTransformer(pt.Transformer):
    """Re-ranks (qid, query, docno, text) rows by the retriever's score."""

    def __init__(self, retriever: Retriever, batch_size: int = 32, text_field: str = "text"):
        super().__init__()
        self.retriever = retriever
        self.batch_size = batch_size
        self.text_field = text_field

    def __repr__(self) -> str:
        return f"RankScope({self.retriever.model_id!r}, {self.retriever.kind})"

    def transform(self, inp: Any) -> Any:
        """``inp``: a pandas frame of (qid, query, docno, text) rows."""
        missing = [c for c in (*REQUIRED, self.text_field) if c not in inp.columns]
        if missing:
            raise ValueError(
                f"the input frame lacks the columns {missing}: a RankScope re-ranker takes "
                f"{', '.join(REQUIRED)} and the document text ({self.text_field!r}); put a text "
                "loader (e.g. pt.text.get_text) before it"
            )
        out = inp.drop(columns=["score", "rank"], errors="ignore").copy()
        scores = self.retriever.score(
            out["query"].astype(str).tolist(),
            out[self.text_field].astype(str).tolist(),
            batch_size=self.batch_size,
        )
        out["score"] = scores.double().numpy()
        return pt.model.add_ranks(out)

"""Token screen: vocabulary tokens that raise (or lower) scores whatever the query.

Two stages:

1. **First-order ranking of the whole vocabulary** (HotFlip-style). A placeholder token (the
   tokenizer's mask token, else its unknown or pad token) is inserted into each document of the
   split; with ``g_i`` the gradient of document ``i``'s score with respect to the placeholder's
   word embedding ``e_ph``, inserting token ``v`` instead changes the score by about
   ``(s_ph,i − s_base,i) + g_i · (E_v − e_ph)``. Averaged over the documents this is one
   matrix-vector product with the embedding matrix ``E``: every token of the vocabulary is ranked
   at the cost of one forward and backward pass per document.
2. **Exact verification** of the top ``top_k`` candidates: each is inserted (as a token id, at
   the same positions) into every document, and the score change is measured. Per token: the
   mean delta with a query-cluster CI, per-query values, and the same among queries whose tokens
   do not include the candidate (an effect that holds there is not query-term matching).

``top_delta`` is the screen's one scalar estimate, **cross-fitted** so that no query measures a
token it helped to select: the split's queries are dealt into two folds (sorted ids,
alternately); each fold ranks the vocabulary on its own documents (first-order), verifies its
``top_k`` exactly, and picks its best token (largest per-query mean delta, in ``direction``);
a query's value is the delta of the token the *other* fold picked, on the query's documents.

3. **Triggers as written** (``extend`` > 0). A trigger word that the tokenizer splits into pieces
   (``quokka`` → ``quo`` ``##kka``) shows in the ranking as its fragments, each carrying part of
   the effect. The top ``extend`` verified hits (interval excluding 0) grow into sequences of
   pieces: a beam over letter continuation pieces (``##…``; the next piece ranked by the same
   first-order estimate, with the sequence so far inserted before a placeholder; the ``beam``
   best verified exactly, the best two that carry the effect grown again, up to
   ``max_pieces``), and the words that contain the hit as a piece, from the collection's
   documents and queries and from ``words`` (a word list; entries may be short phrases). Each
   sequence is verified exactly like a single token (its pieces inserted at the same
   positions), beside each of its pieces alone and its gain over the sequence it grew from
   (paired per document). A piece *carries* the effect when that gain's query-cluster CI
   excludes 0 and the gain is at least ``min_gain`` of the shorter sequence's delta. The screen
   reports (``delta[token=W]``, ``delta_absent[token=W]``, and the summary) the longest
   sequence every piece of which carried the effect, among those whose interval reaches the
   strongest one's delta, and says that the fragments point to that larger word; the table
   ``sequences`` has every sequence tried.

**Confirming given tokens.** ``tokens`` (e.g. a hit of an earlier screen) skips the ranking and
verifies exactly those tokens: ``delta[token=T]`` and ``delta_absent[token=T]`` are then known
before the call, so a hypothesis can pre-register them (``first_order``, ``rank_correlation``
and ``top_delta`` are not computed). A token that is not one vocabulary entry — a word or a
phrase as written (words joined by ``_`` or spaces) — is verified as the sequence of its pieces.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from scipy import stats

from rankscope.tools.catalog.common import Split
from rankscope.tools.catalog.screening import (
    bar_chart,
    embedding_matrix,
    embedding_offsets,
    label,
    query_ci,
)
from rankscope.tools.contract import ArtifactFile, Tool, ToolArgs, ToolContext, ToolResult
from rankscope.tools.metric_keys import WITH_CI, MetricSpec, declare, estimate, metric_key
from rankscope.tools.registry import register
from rankscope.tools.retrievers.base import Retriever, Role, SideBatch
from rankscope.tools.stats import QueryValue, values_by_query

Position = Literal["start", "end", "random"]
TokenEffect = Literal["raise", "lower", "both"]
"""Which tokens the screen looks for: those that raise scores, lower them, or either."""
Candidates = Literal["words", "all"]
_UNUSED = re.compile(r"^\[unused\d+\]$|^<extra_id_\d+>$")


class TokenScreenArgs(ToolArgs):
    split: Split = Field(
        "discovery",
        description="Queries whose documents are used: 'discovery' to screen, 'holdout' "
        "(disjoint queries) to verify on queries the screen never saw, 'all' for both.",
    )
    n_docs: int = Field(
        32, ge=2, le=5000, description="(query, document) rows of the split, drawn with the seed."
    )
    top_k: int = Field(
        10, ge=1, le=200, description="Candidates of the first-order ranking verified exactly."
    )
    position: Position = Field(
        "start",
        description="Where the token is inserted in the document: 'start' (first document "
        "token), 'end' (before the final separator) or 'random' (a seeded position per doc).",
    )
    direction: TokenEffect = Field(
        "raise",
        description="Candidates that raise scores, lower them, or both (half of top_k each).",
    )
    candidates: Candidates = Field(
        "words",
        description="'words': the vocabulary less special, unused and word-continuation "
        "('##…') tokens; 'all': every non-special token.",
    )
    tokens: list[str] | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="Verify exactly these tokens (vocabulary tokens as the tokenizer spells "
        "them, 'idN' for token id N, or a word or phrase as written — words joined by '_' or "
        "spaces — inserted as its pieces), skipping the first-order ranking: confirms a hit "
        "(delta[token=T], delta_absent[token=T] are known before the call).",
    )
    extend: int = Field(
        3,
        ge=0,
        le=20,
        description="Top verified hits extended to multi-piece sequences (words, phrases) that "
        "are verified exactly like tokens (0: single tokens only).",
    )
    beam: int = Field(
        4, ge=1, le=32, description="Sequences verified exactly per extension step and hit."
    )
    max_pieces: int = Field(3, ge=2, le=8, description="Longest sequence tried, in pieces.")
    min_gain: float = Field(
        0.25,
        ge=0.0,
        le=10.0,
        description="A piece added to a sequence carries the effect when the paired gain (per "
        "document, query-cluster CI excluding 0) is at least this share of the shorter "
        "sequence's delta.",
    )
    words: list[str] | None = Field(
        None,
        max_length=5000,
        description="A word list (words or short phrases) whose entries containing a hit as a "
        "piece are verified, besides the collection's own words.",
    )
    holdout_fraction: float = Field(0.5, gt=0.0, lt=1.0)
    split_seed: int = Field(0, description="Seed of the query split (keep it fixed to replicate).")
    batch_size: int = Field(16, ge=1, le=512)
    n_bootstrap: int = Field(2000, ge=100, le=100_000)


def placeholder_id(tokenizer: Any) -> int:
    """The token the first-order stage inserts: mask, else unknown, else pad."""
    for attr in ("mask_token_id", "unk_token_id", "pad_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    raise ValueError("the tokenizer has no mask, unknown or pad token to use as a placeholder")


def token_ids(tokenizer: Any, tokens: Sequence[str]) -> list[int]:
    """The vocabulary ids of ``tokens`` (as the tokenizer spells them, or ``idN``); a token that
    is not one vocabulary entry is an error that says so."""
    vocab = tokenizer.get_vocab()
    out = []
    for token in tokens:
        if token in vocab:
            out.append(int(vocab[token]))
        elif re.fullmatch(r"id\d+", token) and int(token[2:]) < len(tokenizer):
            out.append(int(token[2:]))
        else:
            raise ValueError(
                f"{token!r} is not a token of the vocabulary of this model (give a token as the "
                "tokenizer spells it, e.g. a row of token_screen's table 'verified', or idN)"
            )
    return list(dict.fromkeys(out))


def sequence_label(tokenizer: Any, ids: Sequence[int]) -> str:
    """How a sequence of pieces is named in metric keys: one piece as the tokenizer spells it,
    several as the text they spell with ``_`` between words (a key holds no space)."""
    if len(ids) == 1:
        token = tokenizer.convert_ids_to_tokens(int(ids[0]))
        return label(token, f"id{int(ids[0])}")
    text = tokenizer.decode(list(ids), clean_up_tokenization_spaces=True).strip()
    name = "_".join(text.split())
    return label(name, "+".join(f"id{int(i)}" for i in ids))


def token_sequences(tokenizer: Any, tokens: Sequence[str]) -> list[tuple[str, list[int]]]:
    """(label, piece ids) of each given token: a vocabulary entry or ``idN`` is one piece; any
    other text (a word or phrase as written, ``_`` standing for a space) is tokenised into its
    pieces. Text that tokenises to nothing or to the unknown token is an error that says so."""
    vocab = tokenizer.get_vocab()
    unknown = getattr(tokenizer, "unk_token_id", None)
    out: dict[str, list[int]] = {}
    for token in tokens:
        if token in vocab or (re.fullmatch(r"id\d+", token) and int(token[2:]) < len(tokenizer)):
            (single,) = token_ids(tokenizer, [token])
            out.setdefault(sequence_label(tokenizer, [single]), [single])
            continue
        text = token.replace("_", " ").strip()
        ids = (
            [int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]] if text else []
        )
        if not ids or (unknown is not None and unknown in ids):
            raise ValueError(
                f"{token!r} is not a token of the vocabulary of this model and does not "
                "tokenise into known pieces (give a token as the tokenizer spells it, e.g. a row "
                "of token_screen's table 'verified', idN, or a word or phrase as written)"
            )
        out.setdefault(sequence_label(tokenizer, ids), ids)
    return list(out.items())


def contains_run(haystack: Sequence[int], needle: Sequence[int]) -> bool:
    """Whether ``needle`` occurs in ``haystack`` as a contiguous run."""
    k = len(needle)
    return any(list(haystack[i : i + k]) == list(needle) for i in range(len(haystack) - k + 1))


def choose(
    first_order: np.ndarray, keep: np.ndarray, top_k: int, direction: TokenEffect
) -> list[int]:
    """The ``top_k`` candidate ids of a first-order ranking in ``direction``."""
    ids = np.flatnonzero(keep)
    by_value = ids[np.argsort(-first_order[ids], kind="stable")]
    if direction == "raise":
        return by_value[:top_k].tolist()
    if direction == "lower":
        return by_value[::-1][:top_k].tolist()
    high = by_value[: (top_k + 1) // 2].tolist()
    low = [i for i in by_value[::-1][: top_k // 2].tolist() if i not in high]
    return high + low


def query_folds(qids: Sequence[str]) -> list[int]:
    """Each row's fold (0 or 1): the sorted distinct query ids dealt alternately."""
    order = {q: i % 2 for i, q in enumerate(sorted(set(qids)))}
    return [order[q] for q in qids]


def candidate_mask(tokenizer: Any, vocab_size: int, candidates: Candidates) -> np.ndarray:
    """Which token ids may be screened (special tokens never)."""
    keep = np.ones(vocab_size, dtype=bool)
    special = [i for i in tokenizer.all_special_ids if 0 <= i < vocab_size]
    keep[special] = False
    for token, index in tokenizer.get_vocab().items():
        if index >= vocab_size:
            continue
        if _UNUSED.match(token) or (candidates == "words" and token.startswith("##")):
            keep[index] = False
    keep[len(tokenizer) :] = False
    return keep


_WORD_PIECE = re.compile(r"^##[^\W\d_]+$")


def continuation_mask(tokenizer: Any, vocab_size: int) -> np.ndarray:
    """Which ids are word-continuation pieces of letters (``##…``) that a sequence may grow by."""
    keep = np.zeros(vocab_size, dtype=bool)
    for token, index in tokenizer.get_vocab().items():
        if index < min(vocab_size, len(tokenizer)) and _WORD_PIECE.match(token):
            keep[index] = True
    special = [i for i in tokenizer.all_special_ids if 0 <= i < vocab_size]
    keep[special] = False
    return keep


def insert_positions(batch: SideBatch, position: Position, rng: np.random.Generator) -> list[int]:
    """The index each row's token goes to: before its first document token ('start'), before
    the last separator ('end'), or a uniform draw between the two ('random')."""
    out = []
    roles = batch.roles.cpu().numpy()
    mask = batch.attention_mask.cpu().numpy()
    for row, row_mask in zip(roles, mask, strict=True):
        last = int(np.flatnonzero(row_mask).max())
        doc = np.flatnonzero((row == Role.DOC) | (row == Role.QTERM))
        first = int(doc.min()) if doc.size else last
        end = int(doc.max()) + 1 if doc.size else last
        if position == "start":
            out.append(first)
        elif position == "end":
            out.append(end)
        else:
            out.append(int(rng.integers(first, end + 1)))
    return out


def insert_token(
    batch: SideBatch, positions: Sequence[int], token_id: int, max_length: int, pad_id: int
) -> tuple[SideBatch, list[int]]:
    """``batch`` with ``token_id`` inserted at ``positions`` (role INJECTED), and where it went.

    A row at ``max_length`` first loses its last document token (before the final separator).
    Unpadded inputs are assumed right-padded, as the adapters tokenise them."""
    return insert_tokens(batch, positions, [token_id], max_length, pad_id)


def insert_tokens(
    batch: SideBatch, positions: Sequence[int], ids: Sequence[int], max_length: int, pad_id: int
) -> tuple[SideBatch, list[int]]:
    """``batch`` with the pieces ``ids`` inserted, in order, from ``positions`` (role INJECTED),
    and where the first piece went. A row that would pass ``max_length`` first loses as many
    document tokens from its end (before the final separator)."""
    inputs = {k: v.cpu() for k, v in batch.inputs.items()}
    unknown = set(inputs) - {"input_ids", "attention_mask", "token_type_ids"}
    if unknown:
        raise ValueError(f"cannot insert a token into inputs with {sorted(unknown)}")
    rows: list[dict[str, list[int]]] = []
    placed = []
    for i, pos in enumerate(positions):
        length = int(inputs["attention_mask"][i].sum())
        row = {k: v[i, :length].tolist() for k, v in inputs.items()}
        row["roles"] = batch.roles[i, :length].cpu().tolist()
        for _ in range(max(0, len(row["input_ids"]) + len(ids) - max_length)):
            drop = len(row["input_ids"]) - 2
            for values in row.values():
                del values[drop]
            pos = min(pos, drop)
        for j, token_id in enumerate(ids):
            at = pos + j
            for key, values in row.items():
                if key == "input_ids":
                    values.insert(at, int(token_id))
                elif key == "roles":
                    values.insert(at, int(Role.INJECTED))
                elif key == "attention_mask":
                    values.insert(at, 1)
                else:
                    values.insert(at, values[min(at, len(values) - 1)])
        rows.append(row)
        placed.append(pos)
    width = max(len(r["input_ids"]) for r in rows)
    pads = {"input_ids": pad_id, "attention_mask": 0, "token_type_ids": 0, "roles": int(Role.PAD)}

    def stack(key: str) -> torch.Tensor:
        return torch.tensor([r[key] + [pads[key]] * (width - len(r[key])) for r in rows])

    device = batch.roles.device
    new_inputs = {k: stack(k).to(device) for k in inputs}
    return SideBatch(new_inputs, stack("roles").to(device), dict(batch.context)), placed


def placeholder_gradients(
    retriever: Retriever, batch: SideBatch, positions: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores of ``batch``, gradient of each row's score w.r.t. the word embedding at its
    position ``[B, E]``)."""
    emb_dim = embedding_matrix(retriever).shape[1]
    ids = batch.inputs["input_ids"]
    offsets = torch.zeros(
        (*ids.shape, emb_dim), device=ids.device, dtype=torch.float32, requires_grad=True
    )
    context = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.context.items()}
    batch = SideBatch(batch.inputs, batch.roles, context)
    with torch.enable_grad(), embedding_offsets(retriever, offsets):
        scores = retriever.readout(retriever.forward_hidden(batch), batch)
        (grad,) = torch.autograd.grad(scores.float().sum(), offsets)
    rows = torch.arange(len(positions), device=ids.device)
    return scores.detach().float().cpu(), grad[rows, torch.tensor(positions)].cpu()


def _token_spec(name: str, **declared: Any) -> MetricSpec:
    return estimate(MetricSpec(name, WITH_CI, False, (), ("token",)), **declared)


@register
class TokenScreen(Tool[TokenScreenArgs]):
    """Rank the whole vocabulary by a first-order estimate, then verify the top tokens."""

    name = "token_screen"
    description = (
        "Find vocabulary tokens that raise (or lower) scores whatever the query (trigger words). "
        "Ranks the WHOLE vocabulary by a first-order (HotFlip-style) estimate of the score "
        "change from inserting each token into the split's documents, then verifies the top_k "
        "exactly by inserting each (at the start, end or a random position): mean delta with a "
        "query-cluster 95% CI, and the same among queries that do not contain the token. "
        "The top hits are grown into multi-piece words and phrases (a beam over continuation "
        "pieces, and collection words containing a hit), verified the same way; the longest "
        "sequence that carries the effect is reported as written (a trigger word split into "
        "pieces shows first as its fragments). "
        "tokens=[T, ...] skips the ranking and verifies exactly those tokens, words or phrases "
        "(to confirm a hit). Metrics: delta[token=T], delta_absent[token=T] (with "
        "_ci_low/_ci_high), top_delta (cross-fitted best token), first_order[token=T], "
        "rank_correlation, n_docs, n_queries, n_vocabulary."
    )
    version = "3"
    Args = TokenScreenArgs
    metrics = declare(
        _token_spec(
            "delta",
            family="score_delta",
            meaning="score change from inserting the token into a document (s_inserted − "
            "s_base); per query the mean over its documents, the estimate the mean over queries",
            unit="score",
        ),
        _token_spec(
            "delta_absent",
            family="score_delta",
            meaning="delta[token] among the queries whose tokens do not include the token (an "
            "effect here is not query-term matching)",
            unit="score",
        ),
        estimate(
            MetricSpec("top_delta", WITH_CI),
            family="score_delta",
            meaning="cross-fitted delta of the best verified token: each query gets the delta "
            "of the token that the other fold of queries ranked, verified and picked (largest "
            "mean delta in the screen's direction), so no query measures its own selection",
            unit="score",
        ),
        MetricSpec("first_order", ("value",), False, (), ("token",)),
        "rank_correlation",
        "n_docs",
        "n_queries",
        "n_vocabulary",
    ).describe(
        first_order=(
            "first-order (gradient × embedding) estimate of delta[token] that ranked it",
            "score",
        ),
        rank_correlation=(
            "Spearman correlation of first-order and exact deltas over the verified tokens",
            "correlation",
        ),
        n_docs=("(query, document) rows screened", "documents"),
        n_queries=("queries of those rows", "queries"),
        n_vocabulary=("tokens ranked by the first-order estimate", "tokens"),
    )

    def run(self, ctx: ToolContext, args: TokenScreenArgs) -> ToolResult:
        retriever = ctx.retriever
        tokenizer = retriever.tokenizer
        given = token_sequences(tokenizer, args.tokens) if args.tokens else None
        rows = ctx.data.documents(
            n=args.n_docs,
            seed=args.seed,
            split=args.split,
            holdout_fraction=args.holdout_fraction,
            split_seed=args.split_seed,
        )
        if len(rows) < 2:
            raise ValueError(f"token_screen needs at least 2 documents on split {args.split!r}")
        queries = [r["query"] for r in rows]
        docs = [r["text"] for r in rows]
        qids = [str(r["qid"]) for r in rows]
        matrix = embedding_matrix(retriever).float().cpu()
        ph = placeholder_id(tokenizer)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        rng = np.random.default_rng(args.seed)
        screen = _Screen(retriever, ph, pad)
        base_parts, ph_parts, grad_parts = [], [], []
        for start in range(0, len(rows), args.batch_size):
            side = retriever.encode_side(
                queries[start : start + args.batch_size], docs[start : start + args.batch_size]
            )
            positions = insert_positions(side, args.position, rng)
            inserted, placed = insert_token(side, positions, ph, retriever.max_length, pad)
            base_parts.append(retriever.score_side(side).float().cpu())
            if given is None:
                scores, grads = placeholder_gradients(retriever, inserted, placed)
                ph_parts.append(scores)
                grad_parts.append(grads)
            screen.sides.append((side, positions))
            screen.batches.append((inserted, placed))
        base = torch.cat(base_parts)
        screen.base = base
        keep = candidate_mask(tokenizer, matrix.shape[0], args.candidates)
        first_order: np.ndarray | None = None
        fold_candidates: list[list[int]] = []
        if given is None:
            ph_shift = torch.cat(ph_parts) - base
            grad = torch.cat(grad_parts)
            first_order = self._first_order(matrix, ph, ph_shift, grad)
            chosen = choose(first_order, keep, args.top_k, args.direction)
            folds = torch.tensor(query_folds(qids))
            for fold in (0, 1):
                rows_in = folds == fold
                if bool(rows_in.any()):
                    ranked = self._first_order(matrix, ph, ph_shift[rows_in], grad[rows_in])
                    fold_candidates.append(choose(ranked, keep, args.top_k, args.direction))
                else:
                    fold_candidates.append([])
            verify = list(dict.fromkeys([*chosen, *(i for c in fold_candidates for i in c)]))
            named = [(sequence_label(tokenizer, [i]), [i]) for i in chosen]
        else:
            named = given
            verify = [ids[0] for _, ids in given if len(ids) == 1]
        query_ids = [
            [int(i) for i in tokenizer(q, add_special_tokens=False)["input_ids"]] for q in queries
        ]
        deltas = self._deltas(retriever, screen.batches, base, verify)
        seq_deltas = {tuple(ids): screen.deltas(ids) for _, ids in named if len(ids) > 1}
        table, metrics, per_query = self._verify(
            named,
            {**{(k,): v for k, v in deltas.items()}, **seq_deltas},
            first_order,
            qids,
            query_ids,
            args,
        )
        rho = float("nan")
        if first_order is not None:
            exact = [r["delta"] for r in table]
            approx = [r["first_order"] for r in table]
            if len(table) > 2 and np.ptp(exact) > 0:
                rho = float(stats.spearmanr(approx, exact).statistic)
            metrics["rank_correlation"] = rho
            top = self._top_delta(deltas, fold_candidates, qids, args.direction)
            if top:
                per_query["top_delta"] = top
                est = query_ci(top, seed=args.seed, n_resamples=args.n_bootstrap)
                for stat, value in zip(WITH_CI, est[:3], strict=True):
                    metrics[metric_key("top_delta", stat=stat)] = value
        metrics |= {
            "n_docs": len(rows),
            "n_queries": len(set(qids)),
            "n_vocabulary": int(keep.sum()) if first_order is not None else 0,
        }
        sign = -1.0 if args.direction == "lower" else 1.0
        ordered = sorted(table, key=lambda r: -sign * r["delta"])
        for rank, row in enumerate(ordered, start=1):
            row["verified_rank"] = rank
        sequences: list[dict[str, Any]] = []
        longest: dict[str, Any] | None = None
        if first_order is not None and args.extend > 0:
            sequences = self._extend(screen, ctx, args, ordered, first_order, matrix, qids)
            verified = {}
            for row in sequences:
                seq_table, seq_metrics, seq_per_query = self._verify(
                    [(row["sequence"], row["token_ids"])],
                    {tuple(row["token_ids"]): row.pop("_deltas")},
                    None,
                    qids,
                    query_ids,
                    args,
                )
                row.update({k: v for k, v in seq_table[0].items() if k != "token"})
                row["synergy"] = row["delta"] - row["piece_delta_sum"]
                verified[row["sequence"]] = (seq_metrics, seq_per_query)
            longest = longest_carrying(sequences, args.direction)
            if longest is not None:
                # Only the sequence the screen reports becomes a row of the metrics (a hit to
                # follow up); every sequence tried is in the table 'sequences'.
                seq_metrics, seq_per_query = verified[longest["sequence"]]
                metrics |= seq_metrics
                per_query |= seq_per_query
        figure = ctx.artifact_path(f"token_screen_{args.split}_{args.position}.png")
        bar_chart(
            [r["token"] for r in ordered],
            [r["delta"] for r in ordered],
            [r["ci_low"] for r in ordered],
            [r["ci_high"] for r in ordered],
            figure,
            title=f"Token screen ({args.position}, {args.split}): {retriever.model_id}",
            xlabel="mean score delta from inserting the token, 95% query-cluster CI",
        )
        tables: dict[str, list[dict[str, Any]]] = {"verified": ordered}
        if sequences:
            tables["sequences"] = sequences
        if first_order is not None:
            top_fo = np.argsort(-np.where(keep, first_order, -np.inf))[:20]
            tables["first_order_top"] = [
                {
                    "token": tokenizer.convert_ids_to_tokens(int(i)),
                    "token_id": int(i),
                    "first_order": float(first_order[i]),
                }
                for i in top_fo
            ]
        summary = self._summary(args, ordered, rho, metrics, len(rows))
        if sequences:
            summary += "\n" + self._sequence_summary(args, ordered, sequences, longest)
        return ToolResult(
            metrics=metrics,
            summary=summary,
            tables=tables,
            per_query=per_query,
            artifacts=[
                ArtifactFile(
                    path=figure,
                    media_type="image/png",
                    description="Verified tokens: mean score delta with 95% query-cluster CIs",
                )
            ],
        )

    def _extend(
        self,
        screen: _Screen,
        ctx: ToolContext,
        args: TokenScreenArgs,
        ordered: list[dict[str, Any]],
        first_order: np.ndarray,
        matrix: torch.Tensor,
        qids: list[str],
    ) -> list[dict[str, Any]]:
        """The multi-piece sequences grown from the top ``extend`` hits (module docstring, 3),
        each with its exact deltas, its gain over the sequence it grew from (paired, per
        document) and its pieces' single deltas; rows by delta in the screen's direction."""
        tokenizer = screen.retriever.tokenizer
        sign = -1.0 if args.direction == "lower" else 1.0
        continuation = continuation_mask(tokenizer, matrix.shape[0])
        # Hits whose interval excludes 0 in the screen's direction (nothing else is grown).
        hits = [r for r in ordered if (r["ci_low"] if sign > 0 else -r["ci_high"]) > 0]
        hits = hits[: args.extend]
        word_list = self._word_list(ctx, args)
        found: dict[tuple[int, ...], dict[str, Any]] = {}
        cache: dict[tuple[int, ...], np.ndarray] = {}

        def deltas(ids: tuple[int, ...]) -> np.ndarray:
            if ids not in cache:
                cache[ids] = screen.deltas(list(ids))
            return cache[ids]

        def grow(ids: tuple[int, ...], parent: tuple[int, ...], source: str, hit: str) -> bool:
            """Verify ``ids``; whether it carries more than ``parent`` (gain CI beyond 0)."""
            if ids not in found:
                gain = values_by_query(qids, (deltas(ids) - deltas(parent)).tolist())
                est = query_ci(gain, seed=args.seed, n_resamples=args.n_bootstrap)
                low = est[1] if sign > 0 else -est[2]
                before = sign * float(np.mean(_query_means(qids, deltas(parent))))
                found[ids] = {
                    "_deltas": deltas(ids),
                    "source": source,
                    "hits": [],
                    "parent": sequence_label(tokenizer, list(parent)),
                    "gain": est[0],
                    "gain_ci_low": est[1],
                    "gain_ci_high": est[2],
                    "gain_carried": bool(low > 0 and sign * est[0] >= args.min_gain * before),
                    "_parent_ids": parent,
                }
            if hit not in found[ids]["hits"]:
                found[ids]["hits"].append(hit)
            return bool(found[ids]["gain_carried"])

        for hit in hits:
            start: tuple[int, ...] = (int(hit["token_id"]),)
            frontier = [start]
            for _depth in range(args.max_pieces - 1):
                grown: list[tuple[float, tuple[int, ...]]] = []
                for seq in frontier:
                    estimate = screen.next_piece_first_order(list(seq), matrix)
                    pool = np.flatnonzero(continuation)
                    best = pool[np.argsort(-sign * estimate[pool], kind="stable")[: args.beam]]
                    for piece in best.tolist():
                        longer = (*seq, int(piece))
                        if grow(longer, seq, "continuation beam", hit["token"]):
                            mean = float(np.mean(_query_means(qids, deltas(longer))))
                            grown.append((sign * mean, longer))
                if not grown:
                    break
                grown.sort(key=lambda x: -x[0])
                frontier = [seq for _, seq in grown[:2]]
            containing = [ids for ids in word_list if start[0] in ids and len(ids) > 1]
            containing.sort(key=lambda ids: (-sign * float(sum(first_order[i] for i in ids)), ids))
            for ids in containing[: args.beam]:
                grow(ids, start, f"word containing {hit['token']!r}", hit["token"])
        singles = {int(r["token_id"]): r["delta"] for r in ordered if r["token_id"] is not None}
        rows: list[dict[str, Any]] = []
        for ids, info in found.items():
            for piece in ids:
                if piece not in singles:
                    est = query_ci(
                        values_by_query(qids, deltas((piece,)).tolist()),
                        seed=args.seed,
                        n_resamples=args.n_bootstrap,
                    )
                    singles[piece] = est[0]
            pieces: list[dict[str, Any]] = [
                {"piece": sequence_label(tokenizer, [p]), "delta": float(singles[p])} for p in ids
            ]
            chain, parent = info["gain_carried"], info["_parent_ids"]
            while chain and parent in found:
                chain = bool(found[parent]["gain_carried"])
                parent = found[parent]["_parent_ids"]
            rows.append(
                {
                    "sequence": sequence_label(tokenizer, list(ids)),
                    "text": tokenizer.decode(list(ids)).strip(),
                    "token_ids": list(ids),
                    "n_pieces": len(ids),
                    "source": info["source"],
                    "from_hits": info["hits"],
                    "parent": info["parent"],
                    "gain": info["gain"],
                    "gain_ci_low": info["gain_ci_low"],
                    "gain_ci_high": info["gain_ci_high"],
                    "carries": chain,
                    "pieces": pieces,
                    "piece_delta_max": sign * max(sign * p["delta"] for p in pieces),
                    "piece_delta_sum": float(sum(p["delta"] for p in pieces)),
                    "_deltas": info["_deltas"],
                }
            )
        rows.sort(key=lambda r: -sign * float(np.mean(_query_means(qids, r["_deltas"]))))
        return rows

    @staticmethod
    def _word_list(ctx: ToolContext, args: TokenScreenArgs) -> list[tuple[int, ...]]:
        """The piece ids of the collection's words and of ``args.words`` (each once)."""
        tokenizer = ctx.retriever.tokenizer
        texts: list[str] = []
        collection = ctx.data.collection()
        if collection is not None:
            texts += list(collection.docs.values()) + list(collection.queries.values())
        words = {w for text in texts for w in re.findall(r"[^\W_]+", text.lower())}
        entries = sorted(words) + [w.replace("_", " ").strip() for w in args.words or []]
        out: dict[tuple[int, ...], None] = {}
        unknown = getattr(tokenizer, "unk_token_id", None)
        for entry in dict.fromkeys(e for e in entries if e):
            ids = tuple(int(i) for i in tokenizer(entry, add_special_tokens=False)["input_ids"])
            if ids and unknown not in ids:
                out[ids] = None
        return list(out)

    @staticmethod
    def _first_order(
        matrix: torch.Tensor, ph: int, ph_shift: torch.Tensor, grad: torch.Tensor
    ) -> np.ndarray:
        """The first-order estimate of every token's mean delta over the given rows."""
        return (float(ph_shift.mean()) + (matrix - matrix[ph]) @ grad.mean(0)).numpy()

    @staticmethod
    def _deltas(
        retriever: Retriever,
        batches: list[tuple[SideBatch, list[int]]],
        base: torch.Tensor,
        token_ids_: list[int],
    ) -> dict[int, np.ndarray]:
        """Each token's exact score change per row (inserted at the placeholder's positions)."""
        base_np = base.numpy().astype(float)
        out = {}
        for token_id in token_ids_:
            parts = []
            for inserted, placed in batches:
                ids = inserted.inputs["input_ids"].clone()
                ids[torch.arange(len(placed)), torch.tensor(placed)] = token_id
                batch = SideBatch(
                    {**inserted.inputs, "input_ids": ids}, inserted.roles, inserted.context
                )
                parts.append(retriever.score_side(batch).float().cpu())
            out[token_id] = torch.cat(parts).numpy().astype(float) - base_np
        return out

    @staticmethod
    def _top_delta(
        deltas: dict[int, np.ndarray],
        fold_candidates: list[list[int]],
        qids: list[str],
        direction: TokenEffect,
    ) -> list[QueryValue]:
        """The cross-fitted per-query values of ``top_delta`` (module docstring)."""
        folds = np.array(query_folds(qids))
        out: list[QueryValue] = []
        for fold in (0, 1):
            other = 1 - fold
            picker_rows = np.flatnonzero(folds == other)
            target_rows = np.flatnonzero(folds == fold)
            if not picker_rows.size or not target_rows.size or not fold_candidates[other]:
                continue

            def strength(token_id: int, rows: np.ndarray = picker_rows) -> float:
                values = values_by_query([qids[i] for i in rows], deltas[token_id][rows].tolist())
                mean = float(np.mean([v.value for v in values]))
                return {"raise": mean, "lower": -mean, "both": abs(mean)}[direction]

            best = max(fold_candidates[other], key=strength)
            out += values_by_query(
                [qids[i] for i in target_rows], deltas[best][target_rows].tolist()
            )
        return out

    @staticmethod
    def _verify(
        named: list[tuple[str, list[int]]],
        deltas: dict[tuple[int, ...], np.ndarray],
        first_order: np.ndarray | None,
        qids: list[str],
        query_ids: list[list[int]],
        args: TokenScreenArgs,
    ) -> tuple[list[dict[str, Any]], dict[str, float | int | None], dict[str, list[QueryValue]]]:
        """Per (label, piece ids): its deltas' query-cluster estimate, and the same among the
        queries whose tokens do not contain it (as a contiguous run)."""
        table: list[dict[str, Any]] = []
        metrics: dict[str, float | int | None] = {}
        per_query: dict[str, list[QueryValue]] = {}
        for name, ids in named:
            delta = deltas[tuple(ids)]
            absent = [not contains_run(q, ids) for q in query_ids]
            values = values_by_query(qids, delta.tolist())
            absent_values = values_by_query(
                [q for q, a in zip(qids, absent, strict=True) if a],
                [d for d, a in zip(delta, absent, strict=True) if a],
            )
            est = query_ci(values, seed=args.seed, n_resamples=args.n_bootstrap)
            est_absent = query_ci(absent_values, seed=args.seed, n_resamples=args.n_bootstrap)
            for metric, qvalues, result in (
                ("delta", values, est),
                ("delta_absent", absent_values, est_absent),
            ):
                if not qvalues:
                    continue
                per_query[metric_key(metric, token=name)] = qvalues
                for stat, value in zip(WITH_CI, result[:3], strict=True):
                    metrics[metric_key(metric, stat=stat, token=name)] = value
            single = len(ids) == 1 and first_order is not None
            approx = (
                float(first_order[ids[0]]) if single and first_order is not None else float("nan")
            )
            if single:
                metrics[metric_key("first_order", token=name)] = approx
            table.append(
                {
                    "token": name,
                    "token_id": ids[0] if len(ids) == 1 else None,
                    "token_ids": list(ids),
                    "first_order": approx,
                    "delta": est[0],
                    "ci_low": est[1],
                    "ci_high": est[2],
                    "p_value": est[3],
                    "share_raised": float(np.mean(delta > 0)),
                    "delta_absent": est_absent[0],
                    "absent_ci_low": est_absent[1],
                    "absent_ci_high": est_absent[2],
                    "n_queries_absent": len(absent_values),
                    "n_queries": len(values),
                    "n_docs": len(delta),
                }
            )
        return table, metrics, per_query

    @staticmethod
    def _summary(
        args: TokenScreenArgs,
        ordered: list[dict[str, Any]],
        rho: float,
        metrics: dict[str, float | int | None],
        n_docs: int,
    ) -> str:
        if args.tokens:
            lines = [
                f"Token screen of the given tokens (no ranking): each inserted "
                f"({args.position} position) into {n_docs} documents (split {args.split}):"
            ]
        else:
            lines = [
                f"Token screen: {metrics['n_vocabulary']} vocabulary tokens ranked by a "
                f"first-order estimate over {n_docs} documents (split {args.split}); the top "
                f"{len(ordered)} ({args.direction}) verified by inserting each ({args.position} "
                f"position) into every document (Spearman first-order vs exact: {rho:.2f}):"
            ]
        for row in ordered[:8]:
            lines.append(
                f"  {row['verified_rank']}. {row['token']!r}: delta {row['delta']:+.4g} "
                f"[{row['ci_low']:+.4g}, {row['ci_high']:+.4g}], raised {row['share_raised']:.0%}"
                f" of docs; queries without it: {row['delta_absent']:+.4g} "
                f"[{row['absent_ci_low']:+.4g}, {row['absent_ci_high']:+.4g}] "
                f"({row['n_queries_absent']} queries)"
            )
        if len(ordered) > 8:
            lines.append(f"  … {len(ordered) - 8} more rows in the table 'verified'")
        top = metrics.get("top_delta")
        if isinstance(top, float):
            lines.append(
                f"Cross-fitted best token (each fold of queries measured on the token the other "
                f"fold picked): top_delta {top:+.4g} [{metrics['top_delta_ci_low']:+.4g}, "
                f"{metrics['top_delta_ci_high']:+.4g}]"
            )
        lines.append(
            "CIs uncorrected; the engine counts one test per verified token. Confirm a hit with "
            "tokens=[T] on fresh documents and on the holdout split."
        )
        return "\n".join(lines)

    @staticmethod
    def _sequence_summary(
        args: TokenScreenArgs,
        ordered: list[dict[str, Any]],
        sequences: list[dict[str, Any]],
        longest: dict[str, Any] | None,
    ) -> str:
        """The sequences tried, the longest that carries the effect, and whether fragments
        point to it."""
        carrying = [r for r in sequences if r["carries"]]
        lines = [
            f"Sequences grown from the top {min(args.extend, len(ordered))} hits (continuation "
            f"pieces by a beam, words containing a hit; up to {args.max_pieces} pieces), verified "
            f"like tokens: {len(sequences)} tried; {len(carrying)} carry the effect (each piece "
            "added raises the effect beyond the shorter sequence's — paired per document, 95% "
            f"query-cluster CI excluding 0 — by at least {args.min_gain:.0%} of it)."
        ]
        for row in (carrying or sequences)[:5]:
            pieces = ", ".join(f"{p['piece']!r} {p['delta']:+.4g}" for p in row["pieces"])
            lines.append(
                f"  {row['text']!r} ({row['n_pieces']} pieces, {row['source']}): delta "
                f"{row['delta']:+.4g} [{row['ci_low']:+.4g}, {row['ci_high']:+.4g}], "
                f"{row['gain']:+.4g} beyond {row['parent']!r}; pieces alone: {pieces} "
                f"(together {row['synergy']:+.4g} beyond their sum)"
            )
        if longest is None:
            lines.append(
                "No longer sequence carries more of the effect than the hits themselves: they "
                "stand as single tokens."
            )
            return "\n".join(lines)
        names = {p["piece"] for p in longest["pieces"]}
        fragments = list(
            dict.fromkeys(
                [*longest["from_hits"], *(r["token"] for r in ordered if r["token"] in names)]
            )
        )
        kind = "phrase" if " " in longest["text"] else "word"
        lines.append(
            f"Fragments point to a larger {kind}: the hit(s) "
            f"{', '.join(repr(h) for h in fragments)} are pieces of {longest['text']!r} (metric "
            f"key token={longest['sequence']}), delta {longest['delta']:+.4g} "
            f"[{longest['ci_low']:+.4g}, {longest['ci_high']:+.4g}] against "
            f"{longest['piece_delta_max']:+.4g} for the strongest of its pieces alone — the "
            f"longest sequence that carries the effect. Confirm the {kind} as written with "
            f"tokens=[{longest['sequence']!r}]."
        )
        return "\n".join(lines)


def longest_carrying(
    sequences: list[dict[str, Any]], direction: TokenEffect
) -> dict[str, Any] | None:
    """The sequence the screen reports: among those that carry the effect (every piece added
    carried it further) and whose interval reaches the strongest one's delta, the longest (then
    the strongest). None when no sequence carries the effect."""
    sign = -1.0 if direction == "lower" else 1.0
    carrying = [
        r for r in sequences if r["carries"] and (r["ci_low"] if sign > 0 else -r["ci_high"]) > 0
    ]
    if not carrying:
        return None
    best = max(sign * r["delta"] for r in carrying)
    close = [r for r in carrying if (r["ci_high"] if sign > 0 else -r["ci_low"]) >= best]
    return max(close, key=lambda r: (r["n_pieces"], sign * r["delta"]))


def _query_means(qids: list[str], values: np.ndarray) -> list[float]:
    return [v.value for v in values_by_query(qids, values.tolist())]


class _Screen:
    """The screen's documents (tokenised sides and insertion positions, base scores), for
    inserting sequences of pieces."""

    def __init__(self, retriever: Retriever, placeholder: int, pad: int) -> None:
        self.retriever = retriever
        self.placeholder = placeholder
        self.pad = pad
        self.sides: list[tuple[SideBatch, list[int]]] = []
        self.batches: list[tuple[SideBatch, list[int]]] = []
        self.base = torch.empty(0)

    def deltas(self, ids: Sequence[int]) -> np.ndarray:
        """The exact score change per row from inserting the pieces ``ids`` at the positions."""
        parts = []
        for side, positions in self.sides:
            batch, _ = insert_tokens(side, positions, ids, self.retriever.max_length, self.pad)
            parts.append(self.retriever.score_side(batch).float().cpu())
        return torch.cat(parts).numpy().astype(float) - self.base.numpy().astype(float)

    def next_piece_first_order(self, ids: Sequence[int], matrix: torch.Tensor) -> np.ndarray:
        """The first-order estimate of every vocabulary entry as the piece after ``ids``: the
        sequence and a placeholder inserted, the gradient at the placeholder."""
        shifts, grads = [], []
        for side, positions in self.sides:
            batch, placed = insert_tokens(
                side, positions, [*ids, self.placeholder], self.retriever.max_length, self.pad
            )
            scores, grad = placeholder_gradients(
                self.retriever, batch, [p + len(ids) for p in placed]
            )
            shifts.append(scores)
            grads.append(grad)
        shift = torch.cat(shifts) - self.base
        grad = torch.cat(grads)
        return TokenScreen._first_order(matrix, self.placeholder, shift, grad)

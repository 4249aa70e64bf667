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

**Confirming given tokens.** ``tokens`` (e.g. a hit of an earlier screen) skips the ranking and
verifies exactly those tokens: ``delta[token=T]`` and ``delta_absent[token=T]`` are then known
before the call, so a hypothesis can pre-register them (``first_order``, ``rank_correlation``
and ``top_delta`` are not computed).
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
        "them, or 'idN' for token id N), skipping the first-order ranking: confirms a hit "
        "(delta[token=T], delta_absent[token=T] are known before the call).",
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
        if length + 1 > max_length:
            drop = length - 2
            for values in row.values():
                del values[drop]
            pos = min(pos, drop)
        for key, values in row.items():
            if key == "input_ids":
                values.insert(pos, token_id)
            elif key == "roles":
                values.insert(pos, int(Role.INJECTED))
            elif key == "attention_mask":
                values.insert(pos, 1)
            else:
                values.insert(pos, values[min(pos, len(values) - 1)])
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
        "tokens=[T, ...] skips the ranking and verifies exactly those tokens (to confirm a hit). "
        "Metrics: delta[token=T], delta_absent[token=T] (with _ci_low/_ci_high), top_delta "
        "(cross-fitted best token), first_order[token=T], rank_correlation, n_docs, n_queries, "
        "n_vocabulary."
    )
    version = "2"
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
        given = token_ids(tokenizer, args.tokens) if args.tokens else None
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
        batches: list[tuple[SideBatch, list[int]]] = []
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
            batches.append((inserted, placed))
        base = torch.cat(base_parts)
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
        else:
            chosen = verify = given
        query_ids = [set(tokenizer(q, add_special_tokens=False)["input_ids"]) for q in queries]
        deltas = self._deltas(retriever, batches, base, verify)
        table, metrics, per_query = self._verify(
            tokenizer, deltas, chosen, first_order, qids, query_ids, args
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
        ordered = sorted(
            table, key=lambda r: -r["delta"] if args.direction != "lower" else r["delta"]
        )
        for rank, row in enumerate(ordered, start=1):
            row["verified_rank"] = rank
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
        return ToolResult(
            metrics=metrics,
            summary=self._summary(args, ordered, rho, metrics, len(rows)),
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
        tokenizer: Any,
        deltas: dict[int, np.ndarray],
        chosen: list[int],
        first_order: np.ndarray | None,
        qids: list[str],
        query_ids: list[set[int]],
        args: TokenScreenArgs,
    ) -> tuple[list[dict[str, Any]], dict[str, float | int | None], dict[str, list[QueryValue]]]:
        table: list[dict[str, Any]] = []
        metrics: dict[str, float | int | None] = {}
        per_query: dict[str, list[QueryValue]] = {}
        for token_id in chosen:
            delta = deltas[token_id]
            token = tokenizer.convert_ids_to_tokens(token_id)
            name = label(token, f"id{token_id}")
            absent = [token_id not in q for q in query_ids]
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
            approx = float(first_order[token_id]) if first_order is not None else float("nan")
            if first_order is not None:
                metrics[metric_key("first_order", token=name)] = approx
            table.append(
                {
                    "token": name,
                    "token_id": token_id,
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

"""Issue 25, items 8, 14, 15, 16: data and model files a user hands RankScope.

A large pairs TSV is read a line at a time (memory near the size of the pairs it holds, not 13
times the file); a UTF-8 byte order mark is not part of the first column's name; one pair prints
"too few pairs for an interval", never ``[nan, nan]``; a pickled ``.bin`` whose content is more
than plain weights is refused with what to convert it to, never a raw ``UnpicklingError``.
"""

from __future__ import annotations

import json
import os
import shutil
import tracemalloc
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from rankscope.tools.data.source import resolve_data
from rankscope.tools.data.types import content_hash

torch.set_num_threads(1)

PAIRS_HEADER = "qid\tdocno\ttext\tperturbed_text\tquery\trelevance"
BOM = "\ufeff"


def _pairs_rows(n: int) -> list[str]:
    words = [f"w{i}" for i in range(300)]
    rows = []
    for i in range(n):
        text = " ".join(words[(i * 7 + j) % 300] for j in range(60))
        rows.append(f"q{i % 50}\td{i}\t{text}\t{text} w{i % 300}\tw{i % 300} w1\t{i % 3}")
    return rows


# --- item 8: a large pairs file is read a line at a time -------------------------------------


def test_a_pairs_file_is_parsed_and_hashed_in_a_few_times_its_size(tmp_path):
    path = tmp_path / "big.tsv"
    path.write_text("\n".join([PAIRS_HEADER, *_pairs_rows(12_000)]) + "\n", encoding="utf-8")
    size = path.stat().st_size
    assert size > 4_000_000
    tracemalloc.start()
    try:
        source = resolve_data(str(path))
        digest = source.content_hash()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(source.pairs("UNLABELLED")) == 12_000
    # Before: the whole text, its list of lines and the JSON text of every pair at once (about
    # 11 times the file); the pairs themselves need about 2.5 times.
    assert peak / size < 4.0, f"peak {peak / size:.1f} x the file size"
    # The streamed hash is the hash of the canonical JSON of the pairs, as before.
    assert digest == content_hash([p.to_json() for p in source._pairs])  # type: ignore[attr-defined]
    builtin = resolve_data("builtin").collection()
    assert builtin.content_hash() == content_hash(
        {
            "queries": builtin.queries,
            "docs": builtin.docs,
            "qrels": builtin.qrels,
            "candidates": builtin.candidates,
            "selected_terms": builtin.selected_terms,
        }
    )


def test_a_json_corpus_above_the_stated_size_is_refused_with_the_reason(tmp_path, monkeypatch):
    from rankscope.tools.data import loaders
    from rankscope.tools.data.errors import DataFormatError

    corpus = tmp_path / "corpus.json"
    corpus.write_text(json.dumps({"corpus": {"1": {"d1": {"text": "a cat " * 50}}}}))
    (tmp_path / "tfc1_queries.tsv").write_text("qid\tquery\n1\tcat\n")
    monkeypatch.setattr(loaders, "MAX_JSON_BYTES", 100)
    with pytest.raises(DataFormatError, match="read whole") as err:
        resolve_data(str(corpus))
    assert "JSONL" in str(err.value)


def test_a_non_utf8_line_is_named(tmp_path):
    from rankscope.tools.data.errors import DataFormatError

    path = tmp_path / "bad.tsv"
    path.write_bytes(("\n".join([PAIRS_HEADER, *_pairs_rows(3)]) + "\n").encode() + b"q\xff\n")
    with pytest.raises(DataFormatError, match="line 5: the file is not UTF-8"):
        resolve_data(str(path))


# --- item 15: a UTF-8 byte order mark ----------------------------------------------------------


def test_files_with_a_utf8_bom_are_read(tmp_path):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text(BOM + "\n".join([PAIRS_HEADER, *_pairs_rows(6)]) + "\n", encoding="utf-8")
    source = resolve_data(str(pairs))
    assert type(source).__name__ == "PairsSource"
    assert [p.qid for p in source.pairs("UNLABELLED")][:2] == ["q0", "q1"]

    collection = tmp_path / "collection.tsv"
    collection.write_text(BOM + "qid\tquery\tdocno\ttext\nq1\tcat\td1\tthe cat sat\n")
    assert resolve_data(str(collection)).collection().queries == {"q1": "cat"}

    jsonl = tmp_path / "collection.jsonl"
    jsonl.write_text(BOM + json.dumps({"qid": "q1", "query": "cat", "docno": "d1", "text": "x"}))
    assert resolve_data(str(jsonl)).collection().docs == {"d1": "x"}

    corpus = tmp_path / "corpus.json"
    corpus.write_text(BOM + json.dumps({"corpus": {"1": {"d1": {"text": "a cat sat"}}}}))
    (tmp_path / "tfc1_queries.tsv").write_text(BOM + "qid\tquery\n1\tcat\n")
    assert resolve_data(str(corpus)).collection().docs == {"d1": "cat sat"}


# --- item 16: one pair has no interval ----------------------------------------------------------


@pytest.fixture(scope="module")
def null_model(tmp_path_factory) -> Path:
    from tests.agent_support import null_bert

    return null_bert(tmp_path_factory.mktemp("null"))


def test_one_pair_says_too_few_pairs_for_an_interval(tmp_path, null_model):
    from rankscope.agent.cli import app

    one = tmp_path / "one.tsv"
    one.write_text("\n".join([PAIRS_HEADER, *_pairs_rows(1)]) + "\n")
    result = CliRunner().invoke(
        app,
        [
            "run",
            "behavioural_test",
            "--model",
            str(null_model),
            "--data",
            f"{one}#perturbation=TFC1/append",
            "--args",
            '{"split": "all", "n_bootstrap": 100}',
            "--out",
            str(tmp_path / "out"),
            "--no-progress",
        ],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert "nan" not in result.output.lower(), result.output
    assert "too few pairs for an interval" in result.output


def test_interval_text():
    from rankscope.tools.stats import interval_text

    assert interval_text(0.1, 0.25, "+.2f") == "[+0.10, +0.25]"
    assert interval_text(float("nan"), float("nan"), "+.2f") == "(too few pairs for an interval)"


# --- item 14: a pickled .bin with more than weights ----------------------------------------------


class _Payload:
    """What a malicious checkpoint pickles: unpickling it would call ``os.system``."""

    def __reduce__(self):
        return (os.system, ("echo should-never-run",))


def test_a_pickle_bin_that_is_not_plain_weights_is_refused_with_what_to_do(tmp_path):
    from transformers import BertConfig, BertModel

    from rankscope.tools.retrievers import RetrieverLoadError, load_retriever
    from tests.tiny_models import save_tiny_model

    folder = save_tiny_model(tmp_path / "tiny", "bert", st_pooling="cls")
    config = BertConfig.from_pretrained(folder)
    model = BertModel(config)
    try:  # transformers < 5 writes pytorch_model.bin; 5 always writes safetensors
        model.save_pretrained(folder, safe_serialization=False)
    except TypeError:
        model.save_pretrained(folder)
    (folder / "model.safetensors").unlink(missing_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    torch.save(state, folder / "pytorch_model.bin")
    assert load_retriever(str(folder)).model_id == str(folder)  # plain weights load

    state["payload"] = _Payload()
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(RetrieverLoadError) as err:
        load_retriever(str(folder))
    message = str(err.value)
    assert "not a safe weights format" in message and "safetensors" in message
    assert "weights_only" not in message.split("(")[0]
    assert "Re-running" not in message  # torch's advice to turn the check off is not passed on
    shutil.rmtree(folder)

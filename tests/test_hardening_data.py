"""Issue 16, item 6: a pairs TSV with a misspelt required header is an error naming the column."""

from __future__ import annotations

import pytest

from rankscope.tools.diagnostics.errors import DataFormatError
from rankscope.tools.diagnostics.source import resolve_data

ROW = "q1\td1\tthe cat sat\tthe cat sat cat\tcat\n"


@pytest.mark.parametrize("perturbed", ["perturbed_txt", "pertubed_text", "perturbed"])
def test_a_misspelt_pairs_header_names_the_missing_column(tmp_path, perturbed):
    path = tmp_path / "pairs.tsv"
    path.write_text(f"qid\tdocno\ttext\t{perturbed}\tquery\n" + ROW * 4)
    with pytest.raises(DataFormatError, match="lacks the column.s. perturbed_text") as err:
        resolve_data(str(path))
    assert perturbed in str(err.value)


def test_correct_pairs_and_plain_collections_still_load(tmp_path):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("qid\tdocno\ttext\tperturbed_text\tquery\n" + ROW * 4)
    assert type(resolve_data(str(pairs))).__name__ == "PairsSource"
    plain = tmp_path / "collection.tsv"
    plain.write_text("qid\tdocno\ttext\tquery\n" + "q1\td1\tthe cat sat\tcat\n" * 4)
    assert type(resolve_data(str(plain))).__name__ == "CollectionSource"

"""Issue 16, item 6: a pairs TSV with a misspelt required header is an error naming the column."""

from __future__ import annotations

import pytest

from rankscope.tools.data.errors import DataError, DataFormatError
from rankscope.tools.data.source import resolve_data

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


# Issue 16, item 8 (second half): a pairs file's perturbation is what is declared, else
# "unlabelled pairs" — never TFC1 append by default.

SHARED_PAIRS = "dl1920_tfc1_pairs.tsv"
PAIRS_HEADER = "qid\tdocno\ttext\tperturbed_text\tquery\trelevance"


def _lnc1_rows(n: int = 24) -> list[str]:
    """LNC1 append pairs (non-relevant text appended) built from the built-in collection."""
    pairs = resolve_data("builtin").pairs("LNC1", "append", n=n, seed=0)
    return [
        "\t".join([p.qid, p.docno, p.baseline, p.perturbed, p.query, str(p.relevance or 0)])
        for p in pairs
    ]


@pytest.fixture
def lnc1_file(tmp_path):
    path = tmp_path / "my_pairs.tsv"
    path.write_text("\n".join([PAIRS_HEADER, *_lnc1_rows()]) + "\n")
    return path


def test_a_declared_pairs_file_is_labelled_as_declared(tmp_path, lnc1_file):
    from rankscope.tools.data.labels import perturbation_label, predicted_direction

    by_spec = resolve_data(f"{lnc1_file}#perturbation=LNC1/append")
    assert by_spec.axioms() == [("LNC1", "append")]
    assert by_spec.name == "my_pairs[LNC1 append]"
    assert len(by_spec.pairs("LNC1", "append")) == 24
    assert predicted_direction("LNC1") == "decrease"
    assert perturbation_label("LNC1", "append") == "LNC1 append"
    column = tmp_path / "column.tsv"
    rows = [f"{row}\tLNC1" for row in _lnc1_rows(6)]
    column.write_text("\n".join([PAIRS_HEADER + "\tperturbation", *rows]) + "\n")
    assert resolve_data(str(column)).axioms() == [("LNC1", "append")]
    with pytest.raises(DataFormatError, match="declares LNC1 but the data spec declares TDC"):
        resolve_data(f"{column}#perturbation=TDC/append")
    with pytest.raises(DataError, match="not a perturbation declaration"):
        resolve_data(f"{lnc1_file}#perturbation=LNC1/app end")
    with pytest.raises(DataError, match="only a pairs TSV"):
        resolve_data("builtin#perturbation=TFC1/append")


def test_an_undeclared_pairs_file_is_unlabelled_never_tfc1(lnc1_file):
    from rankscope.tools.data.errors import UnknownPerturbationError

    source = resolve_data(str(lnc1_file))
    assert source.axioms() == [("UNLABELLED", "append")]
    assert source.name == "my_pairs[unlabelled pairs]"
    assert "TFC1" not in source.name
    with pytest.raises(UnknownPerturbationError, match="#perturbation=AXIOM/VARIANT"):
        source.pairs("TFC1", "append")
    assert len(source.pairs("UNLABELLED", "append")) == 24


def test_behavioural_test_without_a_declaration_has_no_predicted_direction():
    from rankscope.tools.registry import get_tool, validate_args

    tool = get_tool("behavioural_test")
    unlabelled = tool.metrics_for(validate_args(tool, {"axiom": "UNLABELLED"}))
    declared = tool.metrics_for(validate_args(tool, {"axiom": "LNC1"}))
    assert unlabelled is not None and declared is not None
    assert not unlabelled.produces("share_moved_predicted")
    assert unlabelled.is_estimate("mean_delta")
    assert declared.is_estimate("share_moved_predicted")


def _investigate(tmp_path, data: str, question: str):
    """A protocol-planner investigation (behaviour step only) on a tiny mean-pooling BERT:
    (its stored tree, its report.md)."""
    import io

    from rich.console import Console

    from rankscope.agent.planners.protocol import ProtocolPlanner
    from rankscope.agent.runner import investigate
    from rankscope.agent.settings import InvestigationSettings
    from rankscope.agent.state import Budget
    from rankscope.experiments_db.engine import open_store
    from tests.agent_support import TINY_POLICY, mean_bert

    db = f"sqlite:///{tmp_path / 't.db'}"
    settings = InvestigationSettings(
        model_arg=str(mean_bert(tmp_path / "model")),
        data_arg=data,
        budget=Budget(max_steps=2, max_tool_calls=3),
        policy=TINY_POLICY,
    )
    result = investigate(
        question,
        settings,
        db=db,
        report_dir=tmp_path / "reports",
        console=Console(file=io.StringIO()),
        quiet=True,
        planner_factory=lambda: ProtocolPlanner(n_pairs=12),
    )
    tree = open_store(db).investigation_tree(result.investigation_id)
    return tree, next((tmp_path / "reports").rglob("report.md")).read_text()


def test_lnc1_pairs_declared_lnc1_are_lnc1_in_summary_hypothesis_and_report(tmp_path, lnc1_file):
    tree, report = _investigate(
        tmp_path, f"{lnc1_file}#perturbation=LNC1/append", "Does the model follow these pairs?"
    )
    first = tree.hypotheses[0]
    assert "LNC1 append" in first.text and "score lower" in first.text
    assert first.tool_args["axiom"] == "LNC1"
    evidence = first.experiments[0].evidence[0]
    assert evidence.summary.startswith("LNC1 append on ")
    assert "predicted: decrease" in evidence.summary
    assert first.experiments[0].provenance["extra"]["data_name"] == "my_pairs[LNC1 append]"
    assert "LNC1 append" in report and "TFC1" not in report


def test_unlabelled_pairs_claim_no_axiom_anywhere(tmp_path, lnc1_file):
    tree, report = _investigate(tmp_path, str(lnc1_file), "Does the model reward TFC1 here?")
    first = tree.hypotheses[0]
    assert "the file's perturbation (unlabelled pairs)" in first.text
    assert first.criterion.metric == "mean_delta"
    assert first.tool_args["axiom"] == "UNLABELLED"
    summary = first.experiments[0].evidence[0].summary
    assert summary.startswith("unlabelled pairs on ") and "TFC1" not in summary
    assert "share_moved_predicted" not in first.experiments[0].evidence[0].metrics
    assert "declare it" in report
    assert "TFC1 append" not in report


def test_the_shared_tfc1_file_with_its_declaration_keeps_the_readme_path(shared_data):
    from rankscope.agent.planners.base import Ledger
    from rankscope.agent.planners.protocol import ProtocolPlanner
    from rankscope.tools.data.source import fixed_perturbations

    spec = f"{shared_data / SHARED_PAIRS}#perturbation=TFC1/append"
    assert fixed_perturbations(spec) == [("TFC1", "append")]
    assert fixed_perturbations(str(shared_data / SHARED_PAIRS)) == [("UNLABELLED", "append")]
    ledger = Ledger(
        investigation_id=1,
        question="Does MiniLM reward repeated query terms (TFC1)?",
        model={},
        data=spec,
        tools=["behavioural_test"],
        steps_left=5,
        tool_calls_left=5,
    )
    planner = ProtocolPlanner()
    proposal = planner.propose(ledger)
    assert proposal.tool == "behavioural_test"
    assert (proposal.args["axiom"], proposal.args["variant"]) == ("TFC1", "append")
    assert proposal.criterion.metric == "share_moved_predicted"
    assert "TFC1 append" in proposal.hypothesis
    assert not [n for n in planner.drain_notes() if "unlabelled" in n or "fixed pairs" in n]

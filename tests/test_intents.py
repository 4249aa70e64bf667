"""Intent mapping of the protocol planner (issue 11): named axioms and tools first, else the
bundled sentence model's similarity to each intent's description, else an open screen; and
hypothesis texts that follow the axiom's predicted direction."""

from __future__ import annotations

import pytest

from rankscope.agent.planners.base import Ledger, LedgerEntry, Stop
from rankscope.agent.planners.intents import (
    AMBIGUITY_MARGIN,
    MIN_SIMILARITY,
    OPEN_SCREENS,
    map_intent,
    similarities,
)
from rankscope.agent.planners.protocol import ProtocolPlanner, parse_axiom

README_TFC1 = (
    "Does all-MiniLM-L6-v2 reward repeated query terms (TFC1), and which components compute it?"
)


@pytest.mark.parametrize(
    ("question", "kind", "how"),
    [
        (
            "Is there a word that raises any document's score whatever the query?",
            "token",
            "similarity",
        ),
        ("Does this model prefer shorter documents?", "length", "similarity"),
        ("Does the position of query terms in a document matter?", "position", "similarity"),
        ("What does this model reward besides query terms?", "open", "similarity"),
        (README_TFC1, "axiom", "named"),
        ("How does the weather affect cooking?", "open", "open"),
    ],
)
def test_issue_questions_map_to_their_intents(question: str, kind: str, how: str) -> None:
    choice = map_intent(question)
    assert (choice.intent.kind, choice.how) == (kind, how), choice.note()
    assert choice.note().startswith(f"intent: {choice.intent.name}")
    if how == "similarity":
        assert choice.similarity is not None and choice.similarity >= MIN_SIMILARITY
        assert "cosine" in choice.reason


@pytest.mark.parametrize(
    "question",
    [
        "Is there a word that makes this model score any document higher, whatever the query is?",
        "Could someone push their pages up in this search model by slipping one particular word "
        "into them?",
    ],
)
def test_a_tie_between_intents_is_screened_openly(question: str) -> None:
    """The first MiniLM ground-truth table's two trigger questions: each as similar to the
    trigger as to another intent (TFC1, word order); the planner took the nearer one and tested
    the wrong behaviour. Within AMBIGUITY_MARGIN it screens openly and says between what."""
    ranked = similarities(question)
    (first, best), (second, next_best) = ranked[0], ranked[1]
    assert best >= MIN_SIMILARITY and best - next_best < AMBIGUITY_MARGIN
    assert "trigger token" in {first.name, second.name}
    choice = map_intent(question)
    assert (choice.intent.kind, choice.how) == ("open", "open")
    assert choice.intent.screens == OPEN_SCREENS and "token_screen" in choice.intent.screens
    assert f"'{first.name}' and '{second.name}'" in choice.reason
    assert "screening openly rather than guessing" in choice.reason


def test_named_axioms_manipulations_and_tools_come_first() -> None:
    assert parse_axiom(README_TFC1) == ("TFC1", "append")
    assert parse_axiom("Is LNC1 violated?") == ("LNC1", "append")
    assert parse_axiom("LNC2 with the document repeated") == ("LNC2", "repeat")
    assert parse_axiom("TFC1 prepended terms") == ("TFC1", "prepend")
    assert parse_axiom("no axiom here") == ("TFC1", "append")
    choice = map_intent("Does delete stop words change the ranking?")
    assert (choice.axiom, choice.variant, choice.how) == ("ABNIRML", "delete_stopwords", "named")
    choice = map_intent("Run token_screen on this model")
    assert choice.intent.screens == ("token_screen",) and choice.how == "named"


def _ledger(question: str) -> Ledger:
    return Ledger(
        investigation_id=1,
        question=question,
        model={"layers": 6},
        data="builtin",
        tools=[],
        steps_left=12,
        tool_calls_left=24,
    )


def test_lnc1_texts_say_lower_and_tfc1_keeps_its_path() -> None:
    planner = ProtocolPlanner()
    lnc1 = planner.propose(_ledger("Does this model prefer shorter documents?"))
    assert lnc1.tool == "behavioural_test"  # type: ignore[union-attr]
    assert "lowers scores" in lnc1.hypothesis and "score lower" in lnc1.hypothesis  # type: ignore[union-attr]
    assert lnc1.args["axiom"] == "LNC1"  # type: ignore[union-attr]
    notes = planner.drain_notes()
    assert any(n.startswith("intent: document length") for n in notes)

    tfc1 = ProtocolPlanner().propose(_ledger(README_TFC1))
    assert tfc1.hypothesis.startswith("Behaviour: the model rewards TFC1 append")  # type: ignore[union-attr]
    assert tfc1.args["axiom"] == "TFC1"  # type: ignore[union-attr]
    assert tfc1.criterion.metric == "share_moved_predicted"  # type: ignore[union-attr]


def test_lnc1_localisation_and_characterisation_follow_the_decrease() -> None:
    from rankscope.agent.planners.protocol import Behaviour

    planner = ProtocolPlanner()
    target = Behaviour("LNC1", "append", "decrease")
    assert target.claim() == "adding non-query filler lowers scores (LNC1 append)"
    criterion = planner._effect_criterion("L5.H0", target)
    # a fraction of the behaviour: positive when the head carries the decrease
    assert criterion.direction == "greater" and criterion.threshold == 0.05
    from rankscope.tools.registry import all_tools

    tools = all_tools()
    attention = planner._characterise(tools["attention_by_role"], ["L1.H2"], target)
    assert attention is not None and attention.args["focus"] == "doc->injected"
    assert "same token" not in attention.hypothesis
    ablation = planner._characterise(tools["ablation"], ["L1.H2"], target)
    assert ablation is not None and ablation.criterion.direction == "greater"
    assert "score decrease" in ablation.hypothesis


def test_a_tied_question_follows_up_the_screen_rows_of_its_intents_first() -> None:
    """The second MiniLM table: "Do extra occurrences of the search words in a document push its
    score up?" ties repeated content (LNC2) with term frequency (TFC1); the open screen's
    largest rows were word-order and length effects, and the follow-up budget (3) ran out before
    the TFC1 row the question was about. Rows that bear on the tied intents come first."""
    question = "Do extra occurrences of the search words in a document push its score up?"
    choice = map_intent(question)
    assert {i.name for i in choice.tied} >= {"term frequency (TFC1)"}, choice.reason
    rows = {
        "mean_delta[axiom=TFC1|variant=append]": 0.054,
        "mean_delta[axiom=ABNIRML|variant=shuffle_words]": -0.132,
        "mean_delta[axiom=ABNIRML|variant=reverse_words]": -0.129,
        "mean_delta[axiom=LNC1|variant=append]": -0.124,
    }
    planner = ProtocolPlanner()
    entries: list[LedgerEntry] = []
    follow_ups: list[str] = []
    for _ in range(8):
        ledger = _ledger(question).model_copy(update={"entries": list(entries)})
        step = planner.propose(ledger)
        assert not isinstance(step, Stop), step
        if step.hypothesis.startswith("Follow-up:"):
            follow_ups.append(step.hypothesis.split(" — ")[0])
            status = "supported"
        else:
            assert step.hypothesis.startswith("Screen:"), step.hypothesis
            status = "inconclusive"
        entries.append(
            LedgerEntry(
                hypothesis_id=len(entries) + 1,
                hypothesis=step.hypothesis,
                tool=step.tool,
                args=step.args,
                criterion=step.criterion,
                status=status,
                key_metrics=rows if step.tool == "axiom_screen" else {},
            )
        )
        if len(follow_ups) == 3:
            break
    assert follow_ups == [
        "Follow-up: axiom_screen hit TFC1/append",
        "Follow-up: axiom_screen hit ABNIRML/shuffle_words",
        "Follow-up: axiom_screen hit ABNIRML/reverse_words",
    ]

"""The one citation grammar (``rankscope.agent.citations``): what the graph, the audit and the LLM
planner read as cited evidence."""

from __future__ import annotations

import pytest

from rankscope.agent.citations import cited_in_text


@pytest.mark.parametrize(
    ("text", "cited"),
    [
        ("see E12 and evidence #7", [7, 12]),
        ("evidence 3, EVIDENCE ID 4, e5", [3, 4, 5]),
        ("[E3] then [E1,E2] [ E 4 ; E5 ] [E3] [e9] E7", [1, 2, 3, 4, 5, 7, 9]),
        ("below the threshold [E12, 13]; see also [X4] and [12]", [12, 13]),
        ("E12x, HE3, no evidence", []),
    ],
)
def test_citation_forms(text: str, cited: list[int]) -> None:
    assert cited_in_text(text) == cited

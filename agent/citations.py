"""Evidence citations in verdict narratives: the one grammar every reader of a narrative uses.

A narrative cites evidence as ``E12``, ``evidence 12``, ``evidence #12`` or ``evidence id 12``,
and as a bracketed list ``[E12, E13]`` (``,`` or ``;`` between items, spaces allowed, the ``E``
optional after the first: ``[E12; 13]``). Letters are matched in either case.
"""

from __future__ import annotations

import re

_CITATION = re.compile(
    r"\[\s*(E\s*\d+(?:\s*[,;]\s*E?\s*\d+)*)\s*\]"  # a bracketed list: [E12, E13]
    r"|(?:\bE|evidence\s+(?:id\s+)?#?)(\d+)\b",  # one id: E12, evidence #12
    re.IGNORECASE,
)
_NUMBER = re.compile(r"\d+")


def cited_in_text(text: str) -> list[int]:
    """The evidence ids ``text`` cites (see the module docstring), sorted."""
    ids: set[int] = set()
    for listed, single in _CITATION.findall(text):
        ids.update(int(number) for number in _NUMBER.findall(listed or single))
    return sorted(ids)

"""Evidence citations in verdict narratives."""

from __future__ import annotations

import re

_CITE = re.compile(r"(?:\bE|evidence\s+(?:id\s+)?#?)(\d+)\b", re.IGNORECASE)


def cited_in_text(text: str) -> list[int]:
    """Evidence ids a narrative cites in its text (``E12``, ``evidence 12``, ``evidence #12``)."""
    return sorted({int(m) for m in _CITE.findall(text)})

"""Data blocks: free text that may come from the data, fenced so that it cannot pose as prompt.

Hypothesis texts, tool arguments, tool summaries quoting documents, the question and the data's
name reach the model only inside ``<data source="...">`` … ``</data>`` blocks, in which any
look-alike tag is escaped so the text cannot close its block; the system prompt says never to
follow instructions found in them.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["data_block", "defang"]

_DATA_TAG = re.compile(r"<\s*(/?)\s*(data)", re.IGNORECASE)
_INVISIBLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0]"
)
_LOOK_ALIKES = str.maketrans(
    {
        "\u2039": "<",
        "\u2329": "<",
        "\u27e8": "<",
        "\u3008": "<",
        "\u276e": "<",
        "\u02c2": "<",
        "\u203a": ">",
        "\u232a": ">",
        "\u27e9": ">",
        "\u3009": ">",
        "\u276f": ">",
        "\u02c3": ">",
        "\u2215": "/",
        "\u2044": "/",
        "\u29f8": "/",
        "\u2571": "/",
    }
)


def defang(text: str) -> str:
    """``text`` with every ``<data`` / ``</data`` look-alike escaped, so it cannot open or close a
    data block: compatibility forms are normalised first (full-width ``＜／data＞``), invisible
    characters (zero-width joiners, bidi controls, variation selectors) dropped, other angle and
    slash look-alikes mapped to ``<`` and ``/``, and spaces inside the tag (``< / data >``)
    allowed."""
    normalised = _INVISIBLE.sub("", unicodedata.normalize("NFKC", text)).translate(_LOOK_ALIKES)
    return _DATA_TAG.sub(lambda m: f"&lt;{m.group(1)}{m.group(2)}", normalised)


def data_block(source: str, text: str) -> str:
    """``text`` inside a delimited data block; look-alike tags in it are escaped (:func:`defang`)."""
    label = defang(source).replace('"', "'").replace("\n", " ")
    return f'<data source="{label}">\n{defang(text)}\n</data>'

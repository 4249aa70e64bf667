"""The two renderings of a report's blocks: Markdown (figures written beside it) and one
self-contained HTML file (figures embedded as base64).

Data text (LLM replies, hypotheses, questions, names) is wrapped in private-use marks by
:func:`data`; the Markdown renderer escapes only what Markdown would misread inside it (a heading,
list or quote marker at the start of a line, emphasis, code spans, raw HTML, link and image
brackets, table pipes), so ``all-MiniLM-L6-v2`` or ``[0.69, 0.93]`` read as written; the HTML
renderer HTML-escapes it.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

_OPEN, _CLOSE = "\ue000", "\ue001"
_DATA_SPAN = re.compile(f"{_OPEN}(.*?){_CLOSE}", re.DOTALL)
_MD_INLINE = re.compile(r"(\\|`|\*|<|~~|!(?=\[)|\](?=[(\[:])|(?<!\w)_|_(?!\w)|&(?=#?\w+;))")
_MD_LINE_START = re.compile(r"^(\s*)(>|[#+*-](?=\s|$)|=+\s*$)|^(\s*\d+)([.)])(?=\s|$)")


def data(value: object) -> str:
    """``value`` as data text: never rendered as Markdown, so it cannot open a heading, a link,
    an image or raw HTML (newlines become spaces)."""
    text = str(value).replace(_OPEN, "").replace(_CLOSE, "")
    return f"{_OPEN}{text}{_CLOSE}"


def plain(text: str) -> str:
    """``text`` without the data marks."""
    return text.replace(_OPEN, "").replace(_CLOSE, "")


def md_escape(text: str, line_start: bool = True) -> str:
    """``text`` on one line with what Markdown would misread escaped, nothing else (a block
    marker only when the text starts a line)."""
    text = " ".join(text.split())
    text = _MD_INLINE.sub(lambda m: "".join("\\" + c for c in m.group(1)), text)
    if not line_start:
        return text
    return _MD_LINE_START.sub(
        lambda m: f"{m.group(1)}\\{m.group(2)}" if m.group(2) else f"{m.group(3)}\\{m.group(4)}",
        text,
    )


def _md(text: str) -> str:
    """Markdown for a block's text: structure kept, each data span escaped onto one line."""
    return _DATA_SPAN.sub(
        lambda m: md_escape(m.group(1), m.start() == 0 or text[m.start() - 1] == "\n"), text
    )


@dataclass
class Figure:
    caption: str
    data: bytes
    media_type: str
    name: str


@dataclass
class Block:
    kind: str
    """heading, para, table, figure, code, list."""
    text: str = ""
    level: int = 2
    rows: list[list[str]] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    figure: Figure | None = None


def _md_cell(text: str) -> str:
    return _md(text.replace("\n", " ")).replace("|", "\\|")


def render_markdown(blocks: list[Block], figure_dir: Path, figure_prefix: str) -> str:
    out: list[str] = []
    for block in blocks:
        if block.kind == "heading":
            out.append(f"{'#' * block.level} {_md(block.text)}\n")
        elif block.kind == "para":
            out.append(_md(block.text) + "\n")
        elif block.kind == "list":
            out.append("\n".join(f"- {_md(item)}" for item in block.items) + "\n")
        elif block.kind == "code":
            out.append("```text\n" + plain(block.text).replace("```", "ʼʼʼ") + "\n```\n")
        elif block.kind == "table" and block.rows:
            header, *body = block.rows
            out.append("| " + " | ".join(_md_cell(c) for c in header) + " |")
            out.append("|" + "---|" * len(header))
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in body]
            out.append("")
        elif block.kind == "figure" and block.figure:
            figure_dir.mkdir(parents=True, exist_ok=True)
            (figure_dir / block.figure.name).write_bytes(block.figure.data)
            caption = _md(block.figure.caption).replace("[", "\\[").replace("]", "\\]")
            out.append(f"![{caption}]({figure_prefix}/{block.figure.name})\n\n*{caption}*\n")
    return "\n".join(out)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;
padding:.25em .5em;text-align:left;vertical-align:top}pre{background:#f6f6f6;padding:.5em;
overflow-x:auto;white-space:pre-wrap}img{max-width:100%}figure{margin:1em 0}
.answer{border-left:4px solid #0b5cad;background:#f3f7fc;padding:.2em 1em}"""


def _inline(text: str) -> str:
    """Escape text, then render **bold**, *italic* and `code` spans outside data spans."""
    out: list[str] = []
    for i, part in enumerate(re.split(f"{_OPEN}(.*?){_CLOSE}", text, flags=re.DOTALL)):
        escaped = html.escape(part)
        if i % 2 == 0:
            escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
            escaped = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", escaped)
            escaped = re.sub(r"\*([^*]+)\*", r"<em>\1</em>", escaped)
        out.append(escaped)
    return "".join(out)


def render_html(blocks: list[Block], title: str) -> str:
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
    ]
    for block in blocks:
        if block.kind == "heading":
            out.append(f"<h{block.level}>{html.escape(plain(block.text))}</h{block.level}>")
        elif block.kind == "para":
            out.append(f"<p>{_inline(block.text)}</p>")
        elif block.kind == "list":
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in block.items) + "</ul>")
        elif block.kind == "code":
            out.append(f"<pre>{html.escape(plain(block.text))}</pre>")
        elif block.kind == "table" and block.rows:
            header, *body = block.rows
            out.append(
                "<table><tr>"
                + "".join(f"<th>{html.escape(plain(c))}</th>" for c in header)
                + "</tr>"
            )
            for row in body:
                out.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>")
            out.append("</table>")
        elif block.kind == "figure" and block.figure:
            encoded = base64.b64encode(block.figure.data).decode("ascii")
            out.append(
                f'<figure><img alt="{html.escape(plain(block.figure.caption))}" '
                f'src="data:{block.figure.media_type};base64,{encoded}">'
                f"<figcaption>{html.escape(plain(block.figure.caption))}</figcaption></figure>"
            )
    out.append("</body></html>")
    return "\n".join(out)

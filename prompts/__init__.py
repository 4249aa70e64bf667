"""Prompt templates: plain markdown files with ``{placeholders}``, shipped as package data.

``load_prompt("system")`` reads ``prompts/system.md``; ``render("system", model=..., ...)`` fills
its placeholders with ``str.format`` semantics (a literal brace is written ``{{`` or ``}}``). A
placeholder without a value is an error that names the template and what is missing.
"""

from __future__ import annotations

import string
from importlib import resources

__all__ = ["PromptError", "load_prompt", "placeholders", "render"]

_SUFFIXES = (".md", ".txt")


class PromptError(LookupError):
    """A template that does not exist, or a placeholder that was given no value."""


def _filename(name: str) -> str:
    return name if name.endswith(_SUFFIXES) else f"{name}.md"


def load_prompt(name: str) -> str:
    """The text of template ``name`` (``"system"`` or ``"system.md"``) from the package."""
    filename = _filename(name)
    resource = resources.files(__name__).joinpath(filename)
    if not resource.is_file():
        available = sorted(
            entry.name
            for entry in resources.files(__name__).iterdir()
            if entry.name.endswith(_SUFFIXES)
        )
        raise PromptError(
            f"no prompt template {filename!r} in the prompts package; available: "
            f"{', '.join(available) or '(none)'}"
        )
    return resource.read_text(encoding="utf-8")


def placeholders(template: str) -> list[str]:
    """The distinct placeholder names of a template, in order of first use."""
    names: list[str] = []
    for _, field, _, _ in string.Formatter().parse(template):
        if field is None:
            continue
        if not field.isidentifier():
            raise PromptError(
                f"placeholder {{{field}}} is not a plain name; write literal braces as '{{{{' and '}}}}'"
            )
        if field not in names:
            names.append(field)
    return names


def render(name: str, **values: object) -> str:
    """Template ``name`` with every placeholder replaced; raise ``PromptError`` if one lacks a value."""
    template = load_prompt(name)
    needed = placeholders(template)
    missing = [field for field in needed if field not in values]
    if missing:
        raise PromptError(
            f"prompt template {_filename(name)!r} needs a value for "
            f"{', '.join('{' + m + '}' for m in missing)}; given: {', '.join(sorted(values)) or '(none)'}"
        )
    return template.format_map({field: values[field] for field in needed})

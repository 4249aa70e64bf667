"""Metric keys: the one place that formats and parses the names of a tool's metrics.

A metric key names one number of a :class:`~rankscope.tools.contract.ToolResult`:

``name``
    a scalar of the whole run: ``share_moved_predicted``, ``mean_delta``, ``top_effect``.
``name[component]``
    one component of a per-component family: ``effect[L5.H7]``, ``attention[L1.H2]``.
``name[component|qualifier=value]`` or ``name[qualifier=value]``
    a breakdown: ``effect[L5.H7|rel=2]`` (one relevance grade), ``mean_delta[grade=1]``.

The uncertainty of an estimate is stored next to it under the same component and qualifiers, with
a statistic suffix on the name: ``effect_ci_low[L5.H7]``, ``effect_ci_high[L5.H7]``,
``share_moved_predicted_ci_low``; per-component tests store ``p_value[L5.H7]``.

Tools build keys with :func:`metric_key`; the agent reads them with :func:`parse_metric_key`,
:func:`ci_keys` and :func:`p_keys`. Nothing else in the code base splits a key by hand.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Literal

Statistic = Literal["value", "ci_low", "ci_high", "p_value"]
STAT_SUFFIXES: dict[Statistic, str] = {
    "ci_low": "_ci_low",
    "ci_high": "_ci_high",
    "p_value": "_p_value",
}

_KEY = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:\[(?P<inner>[^\[\]]+)\])?$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FORBIDDEN = set("[]|=")


class MetricKeyError(ValueError):
    """A string that is not a well-formed metric key."""


@dataclass(frozen=True)
class MetricKey:
    """A parsed metric key: its name, the component it belongs to and its qualifiers."""

    name: str
    component: str | None = None
    qualifiers: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        parts = [self.component] if self.component is not None else []
        parts += [f"{k}={v}" for k, v in self.qualifiers]
        return f"{self.name}[{'|'.join(parts)}]" if parts else self.name

    @property
    def bracketed(self) -> bool:
        """Whether the key names one entry of a family (a component or a breakdown)."""
        return self.component is not None or bool(self.qualifiers)

    @property
    def family(self) -> str | None:
        """The family a bracketed key belongs to: ``effect`` for ``effect[L1.H6]``,
        ``effect|rel`` for ``effect[L1.H6|rel=2]``; None for a scalar."""
        if not self.bracketed:
            return None
        return self.name + "".join(f"|{k}" for k, _ in self.qualifiers)

    def with_name(self, name: str) -> MetricKey:
        """The same component and qualifiers under another name."""
        return replace(self, name=name)

    def statistic(self, stat: Statistic) -> MetricKey:
        """The key of ``stat`` (CI bound or p-value) of this estimate."""
        if stat == "value":
            return self
        return self.with_name(self.name + STAT_SUFFIXES[stat])

    def qualifier(self, name: str) -> str | None:
        return dict(self.qualifiers).get(name)


def _check_part(text: str, what: str) -> str:
    if not text or _FORBIDDEN & set(text):
        raise MetricKeyError(f"a metric key's {what} may not be empty or contain [ ] | =: {text!r}")
    return text


def metric_key(
    name: str, component: str | None = None, stat: Statistic = "value", **qualifiers: object
) -> str:
    """The key of a metric: ``metric_key("effect", "L5.H7", stat="ci_low")`` is
    ``effect_ci_low[L5.H7]``; ``metric_key("mean_delta", grade=1)`` is ``mean_delta[grade=1]``."""
    if not _NAME.match(name):
        raise MetricKeyError(f"a metric name must be an identifier, got {name!r}")
    key = MetricKey(
        name=name,
        component=_check_part(component, "component") if component is not None else None,
        qualifiers=tuple(
            (_check_part(k, "qualifier"), _check_part(str(v), "qualifier"))
            for k, v in qualifiers.items()
        ),
    )
    return str(key.statistic(stat))


def parse_metric_key(key: str) -> MetricKey:
    """Parse a key written by :func:`metric_key`; raise :class:`MetricKeyError` otherwise."""
    match = _KEY.match(key)
    if not match:
        raise MetricKeyError(
            f"{key!r} is not a metric key (name, name[component] or name[component|k=v])"
        )
    inner = match["inner"]
    if inner is None:
        return MetricKey(match["name"])
    component: str | None = None
    qualifiers: list[tuple[str, str]] = []
    for i, part in enumerate(inner.split("|")):
        if "=" in part:
            k, _, v = part.partition("=")
            qualifiers.append((_check_part(k, "qualifier"), _check_part(v, "qualifier")))
        elif i == 0:
            component = _check_part(part, "component")
        else:
            raise MetricKeyError(f"{key!r}: only the first bracketed part may be a component")
    return MetricKey(match["name"], component, tuple(qualifiers))


def try_parse_metric_key(key: str) -> MetricKey | None:
    """:func:`parse_metric_key`, or None for a string that is not a metric key."""
    try:
        return parse_metric_key(key)
    except MetricKeyError:
        return None


def metric_family(key: str) -> str | None:
    """The family of a bracketed key (see :attr:`MetricKey.family`); None for scalars."""
    parsed = try_parse_metric_key(key)
    return parsed.family if parsed is not None else None


def ci_keys(metric: str) -> tuple[list[str], list[str]]:
    """The keys that may hold the lower and upper CI bound of ``metric``: ``m_ci_low`` for a
    scalar; ``effect_ci_low[X]`` and ``ci_low[X]`` for a per-component ``effect[X]``."""
    parsed = try_parse_metric_key(metric)
    if parsed is None:
        return [f"{metric}_ci_low"], [f"{metric}_ci_high"]
    low, high = [str(parsed.statistic("ci_low"))], [str(parsed.statistic("ci_high"))]
    if parsed.bracketed:
        low.append(str(parsed.with_name("ci_low")))
        high.append(str(parsed.with_name("ci_high")))
    return low, high


def p_keys(metric: str) -> list[str]:
    """The keys that may hold the p-value of ``metric`` itself: ``m_p_value``, and ``p_value[X]``
    for a per-component ``effect[X]``."""
    parsed = try_parse_metric_key(metric)
    if parsed is None:
        return [f"{metric}_p_value"]
    keys = [str(parsed.statistic("p_value"))]
    if parsed.bracketed:
        keys.append(str(parsed.with_name("p_value")))
    return keys

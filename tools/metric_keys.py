"""Metric keys: the one place that formats and parses the names of a tool's metrics.

A metric key names one number of a :class:`~rankscope.tools.contract.ToolResult`:

``name``
    a scalar of the whole run: ``share_moved_predicted``, ``mean_delta``, ``top_effect``.
``name[component]``
    one component of a per-component family: ``effect[L5.H7]``, ``accuracy[L3]``.
``name[component|tag]``
    one cell of a component × label grid; a tag is an unnamed label after the component:
    ``attention[L1.H2|injected->same_token]`` (a head and a role pair).
``name[component|qualifier=value]`` or ``name[qualifier=value]``
    a breakdown: ``effect[L5.H7|rel=2]`` (one relevance grade), ``mean_delta[grade=1]``.

Inside the brackets the component comes first, then the tags, then the qualifiers; no part is
empty or contains ``[ ] | =`` (a qualifier's ``=`` separates its name from its value).

The uncertainty of an estimate is stored next to it under the same component, tags and
qualifiers, with a statistic suffix on the name: ``effect_ci_low[L5.H7]``,
``effect_ci_high[L5.H7]``, ``share_moved_predicted_ci_low``; per-component tests store
``p_value[L5.H7]``.

Tools build keys with :func:`metric_key` and declare what they produce with a
:class:`MetricCatalogue`; the agent reads keys with :func:`parse_metric_key`, :func:`ci_keys` and
:func:`p_keys`. Nothing else in the code base splits a key by hand.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

Statistic = Literal["value", "ci_low", "ci_high", "p_value"]
Kind = Literal["estimate", "descriptive"]
"""An ``estimate`` can be a criterion (the tool stores its per-query values); a ``descriptive``
number (a count, a location, a CI bound, a tool's own p-value, a timing-free summary) cannot."""
STAT_SUFFIXES: dict[Statistic, str] = {
    "value": "",
    "ci_low": "_ci_low",
    "ci_high": "_ci_high",
    "p_value": "_p_value",
}
WITH_CI: tuple[Statistic, ...] = ("value", "ci_low", "ci_high")
"""The statistics of an estimate stored with its confidence interval."""

_KEY = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:\[(?P<inner>[^\[\]]+)\])?")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FORBIDDEN = set("[]|=")
_SHAPES = "name, name[component], name[component|tag] or name[component|key=value]"


class MetricKeyError(ValueError):
    """A string that is not a well-formed metric key."""


@dataclass(frozen=True)
class MetricKey:
    """A parsed metric key: its name, the component it belongs to, tags and qualifiers."""

    name: str
    component: str | None = None
    qualifiers: tuple[tuple[str, str], ...] = ()
    tags: tuple[str, ...] = ()
    """Unnamed labels after the component (the role pair of ``attention[L1.H2|doc->cls]``)."""

    def __post_init__(self) -> None:
        if self.tags and self.component is None:
            raise MetricKeyError(f"metric {self.name!r}: tags {self.tags} need a component")

    def __str__(self) -> str:
        parts = [self.component] if self.component is not None else []
        parts += [*self.tags, *(f"{k}={v}" for k, v in self.qualifiers)]
        return f"{self.name}[{'|'.join(parts)}]" if parts else self.name

    @property
    def bracketed(self) -> bool:
        """Whether the key names one entry of a family (a component or a breakdown)."""
        return self.component is not None or bool(self.qualifiers)

    @property
    def family(self) -> str | None:
        """The family a bracketed key belongs to: ``effect`` for ``effect[L1.H6]``,
        ``effect|rel`` for ``effect[L1.H6|rel=2]``, ``attention|doc->cls`` for
        ``attention[L1.H2|doc->cls]``; None for a scalar."""
        if not self.bracketed:
            return None
        return (
            self.name
            + "".join(f"|{t}" for t in self.tags)
            + "".join(f"|{k}" for k, _ in self.qualifiers)
        )

    def with_name(self, name: str) -> MetricKey:
        """The same component, tags and qualifiers under another name."""
        return replace(self, name=name)

    def statistic(self, stat: Statistic) -> MetricKey:
        """The key of ``stat`` (CI bound or p-value) of this estimate."""
        return self.with_name(self.name + STAT_SUFFIXES[stat])

    def qualifier(self, name: str) -> str | None:
        return dict(self.qualifiers).get(name)


def _check_part(text: str, what: str, key: str | None = None) -> str:
    """``text`` if it may stand as one bracketed part of a key (``key``, when parsing one)."""
    if not text or _FORBIDDEN & set(text):
        where = f"{key!r}: the" if key is not None else "a metric key's"
        raise MetricKeyError(f"{where} {what} may not be empty or contain [ ] | =, got {text!r}")
    return text


def metric_key(
    name: str,
    component: str | None = None,
    stat: Statistic = "value",
    *,
    tags: Sequence[str] = (),
    **qualifiers: object,
) -> str:
    """The key of a metric: ``metric_key("effect", "L5.H7", stat="ci_low")`` is
    ``effect_ci_low[L5.H7]``; ``metric_key("mean_delta", grade=1)`` is ``mean_delta[grade=1]``;
    ``metric_key("attention", "L1.H2", tags=["doc->cls"])`` is ``attention[L1.H2|doc->cls]``.
    Qualifiers keep their order; none may be called ``name``, ``component``, ``stat`` or ``tags``."""
    if not _NAME.fullmatch(name):
        raise MetricKeyError(f"a metric name must be an identifier, got {name!r}")
    key = MetricKey(
        name=name,
        component=_check_part(component, "component") if component is not None else None,
        qualifiers=tuple(
            (_check_part(k, "qualifier name"), _check_part(str(v), "qualifier value"))
            for k, v in qualifiers.items()
        ),
        tags=tuple(_check_part(t, "tag") for t in tags),
    )
    return str(key.statistic(stat))


def parse_metric_key(key: str) -> MetricKey:
    """Parse a key written by :func:`metric_key`; raise :class:`MetricKeyError` otherwise."""
    match = _KEY.fullmatch(key)
    if not match:
        raise MetricKeyError(f"{key!r} is not a metric key ({_SHAPES})")
    inner = match["inner"]
    if inner is None:
        return MetricKey(match["name"])
    labels: list[str] = []
    qualifiers: list[tuple[str, str]] = []
    for part in inner.split("|"):
        if "=" in part:
            k, _, v = part.partition("=")
            qualifiers.append(
                (_check_part(k, "qualifier name", key), _check_part(v, "qualifier value", key))
            )
        elif qualifiers:
            raise MetricKeyError(
                f"{key!r}: the component and tags come before the qualifiers, not after"
            )
        else:
            labels.append(_check_part(part, "tag" if labels else "component", key))
    component = labels[0] if labels else None
    return MetricKey(match["name"], component, tuple(qualifiers), tuple(labels[1:]))


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


def _as_key(metric: str | MetricKey) -> MetricKey | None:
    return metric if isinstance(metric, MetricKey) else try_parse_metric_key(metric)


def ci_keys(metric: str | MetricKey) -> tuple[list[str], list[str]]:
    """The keys that may hold the lower and upper CI bound of ``metric``: ``m_ci_low`` for a
    scalar; ``effect_ci_low[X]`` and ``ci_low[X]`` for a per-component ``effect[X]``."""
    parsed = _as_key(metric)
    if parsed is None:
        return [f"{metric}_ci_low"], [f"{metric}_ci_high"]
    low, high = [str(parsed.statistic("ci_low"))], [str(parsed.statistic("ci_high"))]
    if parsed.bracketed:
        low.append(str(parsed.with_name("ci_low")))
        high.append(str(parsed.with_name("ci_high")))
    return low, high


def p_keys(metric: str | MetricKey) -> list[str]:
    """The keys that may hold the p-value of ``metric`` itself: ``m_p_value``, and ``p_value[X]``
    for a per-component ``effect[X]``."""
    parsed = _as_key(metric)
    if parsed is None:
        return [f"{metric}_p_value"]
    keys = [str(parsed.statistic("p_value"))]
    if parsed.bracketed:
        keys.append(str(parsed.with_name("p_value")))
    return keys


@dataclass(frozen=True)
class MetricSpec:
    """One metric, or one family of metrics, that a tool declares it produces.

    ``stats`` are the statistics stored under the name (``WITH_CI``: the estimate and its CI
    bounds); ``component`` says whether each entry names a component; ``tags`` and ``qualifiers``
    name the labels and breakdown qualifiers every entry carries, in the order of the key.

    The declaration (docs/evidence_contract.md §1): ``kind`` (only an ``estimate`` can be a
    criterion; its tool stores per-query values of every entry it produces), ``meaning`` and
    ``unit`` for readers, ``family`` (the SESOI family of an estimate), ``null_value`` (the value
    of "no effect") and ``approximate`` (an estimate that can never support a claim).
    """

    name: str
    stats: tuple[Statistic, ...] = ("value",)
    component: bool = False
    tags: tuple[str, ...] = ()
    qualifiers: tuple[str, ...] = ()
    kind: Kind = "descriptive"
    meaning: str = ""
    unit: str = ""
    family: str = ""
    null_value: float = 0.0
    approximate: bool = False

    def __post_init__(self) -> None:
        if self.kind == "estimate" and not self.family:
            raise ValueError(f"estimate {self.name!r} needs a family (its SESOI family)")

    def names(self) -> list[str]:
        """The metric names this spec covers: ``effect``, ``effect_ci_low``, …"""
        return [self.name + STAT_SUFFIXES[stat] for stat in self.stats]

    def matches(self, key: MetricKey) -> bool:
        """Whether ``key`` is one of the metrics this spec declares."""
        return (
            key.name in self.names()
            and (key.component is not None) == self.component
            and len(key.tags) == len(self.tags)
            and tuple(k for k, _ in key.qualifiers) == self.qualifiers
        )

    def patterns(self) -> list[str]:
        """Readable shapes of the declared keys: ``effect_ci_low[<component>|rel=<rel>]``."""
        return [str(self._shape().statistic(stat)) for stat in self.stats]

    def estimate_pattern(self) -> str | None:
        """The shape of the estimate's own key (``effect[<component>]``); None if descriptive."""
        return str(self._shape()) if self.kind == "estimate" else None

    def _shape(self) -> MetricKey:
        return MetricKey(
            self.name,
            "<component>" if self.component else None,
            tuple((q, f"<{q}>") for q in self.qualifiers),
            tuple(f"<{t}>" for t in self.tags),
        )

    def for_statistic(self, name: str) -> MetricSpec:
        """The spec of the statistic ``name`` of this metric: the spec itself for its own name;
        for a CI bound or p-value stored beside an estimate, a descriptive spec (a tool's own CI
        and p-value are for readers, never a criterion)."""
        if name == self.name:
            return self
        stat = next(s for s in self.stats if self.name + STAT_SUFFIXES[s] == name)
        return replace(
            self,
            name=name,
            stats=("value",),
            kind="descriptive",
            meaning=f"{stat.replace('_', ' ')} of {self.name} (the tool's own, for readers)",
            family="",
            approximate=False,
        )

    def described(self, meaning: str, unit: str = "") -> MetricSpec:
        """The spec with its meaning and unit."""
        return replace(self, meaning=meaning, unit=unit)


def estimate(
    spec: MetricSpec | str,
    *,
    family: str,
    meaning: str,
    unit: str,
    null_value: float = 0.0,
    approximate: bool = False,
) -> MetricSpec:
    """``spec`` (a plain string: a scalar) declared an estimate of SESOI ``family``."""
    base = scalar(spec) if isinstance(spec, str) else spec
    return replace(
        base,
        kind="estimate",
        family=family,
        meaning=meaning,
        unit=unit,
        null_value=null_value,
        approximate=approximate,
    )


def scalar(name: str, *, ci: bool = False) -> MetricSpec:
    """A number of the whole run, with its CI bounds when ``ci``."""
    return MetricSpec(name, WITH_CI if ci else ("value",))


def per_component(
    name: str, *, ci: bool = False, tags: Sequence[str] = (), qualifiers: Sequence[str] = ()
) -> MetricSpec:
    """A family ``name[component]`` (with tags and qualifiers), with CI bounds when ``ci``."""
    return MetricSpec(name, WITH_CI if ci else ("value",), True, tuple(tags), tuple(qualifiers))


def breakdown(name: str, *qualifiers: str) -> MetricSpec:
    """A family without components, one entry per qualifier value: ``mean_delta[grade=1]``."""
    return MetricSpec(name, ("value",), False, (), qualifiers)


@dataclass(frozen=True)
class MetricCatalogue:
    """The metrics a tool produces; :meth:`produces` checks a key against it."""

    specs: tuple[MetricSpec, ...] = ()

    def produces(self, key: str) -> bool:
        """Whether ``key`` is a well-formed key of a declared metric."""
        return self.spec_for(key) is not None

    def spec_for(self, key: str) -> MetricSpec | None:
        """The spec that declares ``key`` (None: not declared). A CI bound or p-value stored
        beside an estimate gets a descriptive spec (see :meth:`MetricSpec.for_statistic`)."""
        parsed = try_parse_metric_key(key)
        if parsed is None:
            return None
        for spec in self.specs:
            if spec.matches(parsed):
                return spec.for_statistic(parsed.name)
        return None

    def is_estimate(self, key: str) -> bool:
        """Whether ``key`` is a declared estimate (a metric a criterion may use)."""
        spec = self.spec_for(key)
        return spec is not None and spec.kind == "estimate"

    def patterns(self) -> list[str]:
        """Every declared key shape, for messages: ``n_pairs``, ``effect[<component>]``, …"""
        return [pattern for spec in self.specs for pattern in spec.patterns()]

    def estimate_patterns(self) -> list[str]:
        """The shapes of the declared estimates: the metrics a criterion may use."""
        return [p for spec in self.specs if (p := spec.estimate_pattern()) is not None]

    def describe(self, **about: str | tuple[str, str]) -> MetricCatalogue:
        """The catalogue with meanings (and units) of specs by name: ``n_pairs="pairs run"`` or
        ``mean_delta=("mean score change", "score")``; every name must be declared. Only specs
        without a meaning get one (an estimate declared with its meaning keeps it)."""
        unknown = set(about) - {s.name for s in self.specs}
        if unknown:
            raise ValueError(f"describe: no spec named {sorted(unknown)}")
        out = []
        for spec in self.specs:
            text = about.get(spec.name)
            if text is None or spec.meaning:
                out.append(spec)
            elif isinstance(text, tuple):
                out.append(spec.described(*text))
            else:
                out.append(spec.described(text))
        return MetricCatalogue(tuple(out))

    def approximate(self) -> MetricCatalogue:
        """The catalogue with every estimate marked approximate (it can never support)."""
        return MetricCatalogue(
            tuple(replace(s, approximate=True) if s.kind == "estimate" else s for s in self.specs)
        )

    def without(self, *names: str) -> MetricCatalogue:
        """The catalogue less the specs of these names (metrics some arguments never give)."""
        return MetricCatalogue(tuple(s for s in self.specs if s.name not in names))

    def __add__(self, other: MetricCatalogue) -> MetricCatalogue:
        return MetricCatalogue(self.specs + other.specs)


def declare(*specs: MetricSpec | str) -> MetricCatalogue:
    """A catalogue of specs; a plain string declares a scalar of that name."""
    return MetricCatalogue(tuple(scalar(s) if isinstance(s, str) else s for s in specs))

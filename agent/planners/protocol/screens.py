"""Steps 2 and 3 of the protocol: the intent's screens, each one exploratory hypothesis on a
declared reference row, and a confirmatory follow-up of every screen hit beyond its family's
SESOI, largest first, within the follow-up and step budgets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rankscope.agent.planners.base import Criterion, Ledger, LedgerEntry, Proposal
from rankscope.agent.planners.intents import NOT_FOLLOWED_UP, IntentChoice, bears_on
from rankscope.agent.planners.protocol.core import ProtocolCore, fit_args
from rankscope.agent.planners.protocol.tables import (
    EDIT_ROWS,
    EDITS,
    PREDICTED,
    SCREEN_ROW_ARGS,
    OneSided,
)
from rankscope.tools.metric_keys import MetricKey, metric_key, try_parse_metric_key


@dataclass(frozen=True)
class Hit:
    """One row of a screen whose estimate lies beyond its family's SESOI."""

    tool: str
    key: str
    row: MetricKey
    value: float
    null: float
    sesoi: float

    @property
    def effect(self) -> float:
        return self.value - self.null

    @property
    def size(self) -> float:
        """The effect in SESOIs (how hits of different families are ranked)."""
        return abs(self.effect) / self.sesoi if self.sesoi > 0 else abs(self.effect)

    @property
    def name(self) -> str:
        parts = [self.row.component or "", *self.row.tags]
        parts += [v for _, v in self.row.qualifiers]
        return "/".join(p for p in parts if p)

    def describe(self) -> str:
        return f"{self.tool} {self.name} ({self.key} = {self.value:+.3g}, SESOI {self.sesoi:g})"


class ScreenSteps(ProtocolCore):
    """The screens of the intent and the follow-ups of their hits."""

    def _screens_and_follow_ups(
        self, ledger: Ledger, tools: dict[str, Any], choice: IntentChoice
    ) -> Proposal | None:
        screens = [e for e in ledger.entries if e.hypothesis.startswith("Screen:")]
        done = {e.tool for e in screens}
        for name in choice.intent.screens:
            if name in done:
                continue
            if name not in tools:
                self._note(f"screen skipped: tool {name!r} is not registered")
                continue
            step = self._screen(tools[name], choice)
            if step is not None:
                return step
        if not screens:
            return None
        hits = sorted(
            (h for e in screens for h in self._hits(e, tools)),
            key=lambda h: (not self._bears_on_tie(h, choice), -h.size),
        )
        follow = [e for e in ledger.entries if e.hypothesis.startswith("Follow-up:")]
        asked = {e.hypothesis.split(" — ")[0] for e in follow}
        pending = [h for h in hits if self._follow_up_title(h) not in asked]
        reserve = 2 + self.top_k
        unconfirmable: list[Hit] = []
        for hit in pending:
            if len(follow) >= self.max_follow_ups or ledger.steps_left <= reserve:
                break
            step = self._follow_up(tools, hit, choice)
            if step is not None:
                return step
            unconfirmable.append(hit)
        left = [h for h in pending if h not in unconfirmable]
        if left:
            self._note(
                f"{NOT_FOLLOWED_UP} (beyond the follow-up budget of {self.max_follow_ups}): "
                + "; ".join(h.describe() for h in left)
            )
        return None

    def _screen(self, tool: Any, choice: IntentChoice) -> Proposal | None:
        desired: dict[str, Any] = {
            "split": "discovery",
            "seed": self.seed,
            "n_pairs": self.screen_pairs,
        }
        criterion_key, direction, why = self._reference_row(tool, choice)
        if criterion_key is None:
            self._note(
                f"screen skipped: {tool.name} declares no scalar estimate to pre-register (its "
                "rows are unknown before it runs) and the protocol has no reference row for it"
            )
            return None
        args = fit_args(tool, desired, optional=("n_pairs",))
        spec = tool().metric_spec(tool.Args.model_validate(args), criterion_key)
        null = float(getattr(spec, "null_value", 0.0) or 0.0)
        sesoi = self.policy.sesoi_for(getattr(spec, "family", "") or "")
        threshold = null + sesoi if direction == "greater" else null - sesoi
        return Proposal(
            hypothesis=f"Screen: {tool.name} for the intent '{choice.intent.name}'; the "
            f"pre-registered claim is about the reference row {criterion_key} ({why}); every "
            "row beyond its SESOI is a hit to follow up",
            rationale=f"{choice.reason}; screen first, then confirm the hits on a fresh call and "
            "replicate them on held-out queries",
            tool=tool.name,
            args=args,
            criterion=Criterion(
                metric=criterion_key, direction=direction, threshold=threshold, alpha=self.alpha
            ),
        )

    def _reference_row(self, tool: Any, choice: IntentChoice) -> tuple[str | None, OneSided, str]:
        """The screen row its hypothesis pre-registers: the intent's axiom row of the axiom
        screen, else the first declared estimate of the screen."""
        if tool.name == "axiom_screen":
            axiom = choice.axiom if choice.axiom in PREDICTED else "TFC1"
            variant = choice.variant if choice.axiom in PREDICTED and choice.variant else "append"
            predicted = PREDICTED.get(axiom, "increase")
            key = metric_key("mean_delta", axiom=axiom, variant=variant)
            return (
                key,
                "greater" if predicted == "increase" else "less",
                f"{axiom} {variant}: the axiom predicts {predicted}",
            )
        if tool.name == "property_regression":
            edit, way, why = EDIT_ROWS.get(choice.intent.kind, EDIT_ROWS["length"])
            return metric_key("edit_delta", edit=edit), way, f"edit {edit}: {why}"
        if tool.name == "token_screen":
            return (
                "top_delta",
                "greater",
                "the cross-fitted best token: some token raises scores on queries that did not "
                "pick it",
            )
        catalogue = getattr(tool, "metrics", None)
        for spec in getattr(catalogue, "specs", ()):
            scalar = not (spec.component or spec.tags or spec.qualifiers)
            if spec.kind == "estimate" and scalar and not spec.approximate:
                return spec.name, "greater", "the screen's first declared scalar estimate"
        return None, "greater", ""

    def _hits(self, entry: LedgerEntry, tools: dict[str, Any]) -> list[Hit]:
        """The rows of a screen whose estimate lies beyond the SESOI of its family."""
        tool = tools.get(entry.tool)
        if tool is None:
            return []
        try:
            args = tool.Args.model_validate(entry.args)
        except ValueError:
            return []
        rows: dict[str, Hit] = {}
        below = 0
        for key, value in entry.key_metrics.items():
            parsed = try_parse_metric_key(key)
            if parsed is None or not isinstance(value, int | float) or value != value:
                continue
            if parsed.component is None and not parsed.qualifiers and not parsed.tags:
                continue
            spec = tool().metric_spec(args, key)
            if spec is None or getattr(spec, "kind", "") != "estimate":
                continue
            if spec.family not in ("score_delta", "") and entry.tool == "axiom_screen":
                continue
            sesoi = self.policy.sesoi_for(spec.family)
            hit = Hit(entry.tool, key, parsed, float(value), float(spec.null_value), sesoi)
            if abs(hit.effect) <= sesoi:
                below += 1
                continue
            identity = hit.name
            if identity not in rows or rows[identity].size < hit.size:
                rows[identity] = hit
        if below:
            self._note(
                f"{NOT_FOLLOWED_UP} (within the SESOI): {below} row(s) of {entry.tool} "
                f"(H{entry.hypothesis_id})"
            )
        return list(rows.values())

    @staticmethod
    def _bears_on_tie(hit: Hit, choice: IntentChoice) -> bool:
        """Whether ``hit`` tests one of the intents the question tied between (those hits are
        followed up first, the rest by size)."""
        axiom, variant = hit.row.qualifier("axiom"), hit.row.qualifier("variant")
        return any(bears_on(i, hit.tool, axiom, variant) for i in choice.tied)

    @staticmethod
    def _follow_up_title(hit: Hit) -> str:
        return f"Follow-up: {hit.tool} hit {hit.name}"

    def _follow_up(self, tools: dict[str, Any], hit: Hit, choice: IntentChoice) -> Proposal | None:
        way = "raises" if hit.effect > 0 else "lowers"
        direction: OneSided = "greater" if hit.effect > 0 else "less"
        title = self._follow_up_title(hit)
        axiom = hit.row.qualifier("axiom")
        variant = hit.row.qualifier("variant")
        if hit.tool == "axiom_screen" and axiom and variant and "behavioural_test" in tools:
            tool = tools["behavioural_test"]
            sesoi = self.policy.sesoi_for("score_delta")
            edit = EDITS.get(axiom, variant.replace("_", " "))
            predicted = PREDICTED.get(axiom)
            against = (
                ""
                if predicted is None or (predicted == "increase") == (hit.effect > 0)
                else f", against the axiom's predicted {predicted}"
            )
            return Proposal(
                hypothesis=f"{title} — {edit} {way} scores ({axiom} {variant}{against}): the mean "
                f"score change is {'above' if hit.effect > 0 else 'below'} "
                f"{sesoi if hit.effect > 0 else -sesoi:+g}",
                rationale=f"screen hit {hit.describe()}; confirmed on a fresh sample by the "
                "behavioural test, then replicated on held-out queries",
                tool="behavioural_test",
                args=self._pair_args(
                    tool,
                    axiom,
                    variant,
                    seed=self.seed + 1,
                    predicted="increase" if hit.effect > 0 else "decrease",
                ),
                criterion=Criterion(
                    metric="mean_delta",
                    direction=direction,
                    threshold=sesoi if hit.effect > 0 else -sesoi,
                    alpha=self.alpha,
                ),
            )
        tool = tools.get(hit.tool)
        field = SCREEN_ROW_ARGS.get(hit.tool)
        if tool is None or field is None or field not in tool.Args.model_fields:
            self._note(
                f"{NOT_FOLLOWED_UP} (no confirmatory call restricts {hit.tool} to one row): "
                + hit.describe()
            )
            return None
        value = hit.name if hit.tool == "axiom_screen" else hit.name.split("/")[-1]
        desired = {
            "split": "discovery",
            "seed": self.seed + 1,
            "n_pairs": self.n_pairs,
            field: [value],
        }
        if hit.tool == "token_screen":
            desired["n_docs"] = self.token_docs
        args = fit_args(tool, desired, optional=("n_pairs",))
        try:
            tool.Args.model_validate(args)
        except ValueError as err:
            self._note(f"{NOT_FOLLOWED_UP} ({hit.tool} refused the row {value!r}: {err})")
            return None
        threshold = hit.null + (hit.sesoi if hit.effect > 0 else -hit.sesoi)
        above = "above" if hit.effect > 0 else "below"
        if hit.tool == "token_screen":
            metric = metric_key("delta_absent", token=value)
            return Proposal(
                hypothesis=f"{title} — token {value} {way} scores whatever the query: inserted "
                f"into documents, the mean score change among queries that do not contain it "
                f"({metric}) is {above} {threshold:+g} on fresh documents",
                rationale=f"screen hit {hit.describe()} (intent '{choice.intent.name}'); "
                "token_screen restricted to this token (no ranking), then replicated on held-out "
                "queries",
                tool=hit.tool,
                args=args,
                criterion=Criterion(
                    metric=metric, direction=direction, threshold=threshold, alpha=self.alpha
                ),
            )
        return Proposal(
            hypothesis=f"{title} — {value} {way} scores: {hit.row.name} "
            f"{above} {threshold:+g} on a fresh call",
            rationale=f"screen hit {hit.describe()} (intent '{choice.intent.name}'); "
            f"{hit.tool} restricted to this row, then replicated on held-out queries",
            tool=hit.tool,
            args=args,
            criterion=Criterion(
                metric=hit.key, direction=direction, threshold=threshold, alpha=self.alpha
            ),
        )

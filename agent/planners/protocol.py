"""``ProtocolPlanner``: a deterministic investigation protocol that needs no LLM.

It is the offline default, the baseline the LLM planner is compared with, and what the tests run.
It reads only the ledger (earlier hypotheses, their verdicts and key metrics) and proposes the
first step of this protocol that has not been done yet.

0. **Intent.** The question is mapped to an intent (:mod:`~rankscope.agent.planners.intents`: a
   named axiom, manipulation or screening tool; else the most similar documented intent by the
   bundled sentence model; else an open screen). The planner states the intent and why as a note.
1. **Behaviour** (intents with an axiom). ``behavioural_test`` of the axiom (``TFC1``, ``TFC2``,
   ``TDC``, ``STMC1``, ``LNC1``, ``LNC2``, an ABNIRML manipulation; variant as named, default the
   axiom's first). The hypothesis states the axiom's predicted direction in words (LNC1: "adding
   non-query filler lowers scores"; ABNIRML manipulations are predicted to lower scores).
   Criterion: ``share_moved_predicted`` greater than 0.5 + SESOI. A pure axiom intent stops when
   the behaviour is not *supported*: there is nothing to localise.
2. **Screen** (intents with screens: trigger token → ``token_screen``; length →
   ``property_regression`` after LNC1; match position → ``property_regression``; open →
   ``axiom_screen``, ``property_regression``, ``token_screen``). Each screen is one exploratory
   hypothesis on a declared reference row; its rows rank the hits.
3. **Follow up** every screen hit whose estimate lies beyond the SESOI of its family, largest
   (relative to the SESOI) first, while ``max_follow_ups`` and the step budget allow (leaving room
   to localise): a confirmatory hypothesis on a declared estimate of a confirmatory call — an
   ``axiom_screen`` row by ``behavioural_test`` of that perturbation (``mean_delta`` beyond the
   SESOI in the hit's direction), a ``token_screen`` token T by ``token_screen(tokens=[T])`` on
   ``token_docs`` fresh documents ("token T raises scores whatever the query":
   ``delta_absent[token=T]``, queries that do not contain T), a ``property_regression`` edit E
   by ``property_regression(edits=[E])`` (``edit_delta[edit=E]``). The screens pre-register a
   reference row: the intent's axiom row of ``axiom_screen``, the cross-fitted ``top_delta`` of
   ``token_screen``, ``edit_delta[edit=pad]`` (decrease) of ``property_regression`` — or
   ``edit_delta[edit=match_position]`` (increase: the query-term sentence first rather than
   last, the other sentences in the same random order) for the match-position intent. Hits
   left over are noted (``screened, not followed up: …``) and listed in the report's Findings.
4. **Locate** the first supported behaviour that has perturbation pairs (the axiom's, else the
   largest confirmed ``axiom_screen`` hit): ``attribution_patching`` over all attention heads (a
   fast, approximate first pass; its verdict can at most be inconclusive) on ``localise_pairs`` =
   96 pairs with the robust metric ``(s_patched - s_base)/sqrt(1 + (s_pert - s_base)^2)``.
   Criterion: the probe head's effect lies in the behaviour's direction (positive for an increase,
   negative for a decrease). Without attribution patching, exact ``activation_patching`` of every
   head, and the planner says so.
5. **Confirm** the top-k heads (k = 3, ranked by effect in the behaviour's direction) with exact
   ``activation_patching``: one hypothesis per head, effect beyond ``min_effect`` in that direction.
6. **Characterise** the confirmed heads with a step that fits the mechanism: ``attention_by_role``
   — duplicate-token attention (injected → same token) for TFC1, TFC2, TDC and LNC2; attention
   from the document to the added filler (doc → injected) for LNC1; CLS attention to the added
   related term for STMC1; none for ABNIRML manipulations — and a joint zero ``ablation`` that
   shrinks the behaviour (a smaller increase, or a smaller decrease).
7. **Stop.**

**Fixed pairs.** When the data is a pairs file, the protocol studies the file's own perturbation
as declared (``PATH#perturbation=AXIOM/VARIANT`` or a perturbation column) instead of the intent's
screens, which build pairs a pairs file cannot give: the axiom the question names when the file
holds it, else the file's first, with a note. Pairs nobody declared (unlabelled pairs) claim no
axiom: the behaviour step asks a two-way question about "the file's perturbation" — does it raise
the scores (``mean_delta`` greater than 0), else does it lower them (less than 0), each at half
the level — and a note asks for a declaration. A supported behaviour is then localised as above.

The graph replicates every hypothesis that meets its criterion on the held-out split, so each
step above is tested on discovery queries and replicated on held-out ones. A step whose tool is
not registered is skipped, and the skip is reported (``drain_notes``) — never silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from rankscope.agent.planners.base import Criterion, Ledger, LedgerEntry, Planner, Proposal, Stop
from rankscope.agent.planners.intents import (
    AXIOMS,
    NOT_FOLLOWED_UP,
    IntentChoice,
    map_intent,
    named_intent,
)
from rankscope.agent.policy import StatsPolicy
from rankscope.tools.data.labels import is_unlabelled, perturbation_label
from rankscope.tools.data.source import fixed_perturbations
from rankscope.tools.metric_keys import MetricKey, metric_key, try_parse_metric_key
from rankscope.tools.registry import all_tools

__all__ = ["AXIOMS", "ProtocolPlanner", "parse_axiom"]

VARIANTS = ("append", "prepend", "replace")
_EFFECT_NAME = re.compile(r"[a-z_]*effect")
_HEAD = re.compile(r"L\d+\.H\d+")
Predicted = Literal["increase", "decrease"]

PREDICTED: dict[str, Predicted] = {
    "TFC1": "increase",
    "TFC2": "increase",
    "TDC": "increase",
    "STMC1": "increase",
    "LNC1": "decrease",
    "LNC2": "increase",
    "ABNIRML": "decrease",
}
"""The direction each axiom predicts for perturbed minus baseline score (as
``tools/catalog/behavioural_test.py``'s ``PREDICTED_BY_AXIOM``); ABNIRML manipulations, which the
tool leaves undirected, are predicted to lower scores: they damage the text."""

EDITS: dict[str, str] = {
    "TFC1": "adding another occurrence of a query term",
    "TFC2": "adding further copies of a query term",
    "TDC": "adding the query's highest-IDF term",
    "STMC1": "adding a non-query term related to the query",
    "LNC1": "adding non-query filler",
    "LNC2": "repeating the document's content",
}
"""The edit of each axiom, in words (hypothesis texts)."""

ATTENTION_FOCUS: dict[str, tuple[str, str]] = {
    "TFC1": (
        "injected->same_token",
        "injected tokens attend to earlier occurrences of the same "
        "token (duplicate-token heads, Chen et al.)",
    ),
    "TFC2": (
        "injected->same_token",
        "further copies attend to earlier occurrences of the same token (duplicate-token heads)",
    ),
    "TDC": (
        "injected->same_token",
        "the added rare term attends to its earlier occurrences (duplicate-token heads)",
    ),
    "LNC2": ("injected->same_token", "repeated content attends to its first copy"),
    "LNC1": (
        "doc->injected",
        "the document's tokens spend attention on the added filler, "
        "diluting what the pooled representation reads from the matches",
    ),
    "STMC1": ("cls->injected", "the CLS position reads the added related term"),
}
"""The characterising attention pattern of each axiom: (role pair, why)."""


def parse_axiom(question: str) -> tuple[str, str]:
    """(axiom, variant) named in the question; default TFC1 append."""
    named = named_intent(question)
    if named is not None and named.axiom and named.variant:
        return named.axiom, named.variant
    return "TFC1", "append"


def describe_perturbation(axiom: str, variant: str) -> str:
    """How a hypothesis names the perturbation it studies (never an axiom that was not
    declared: unlabelled pairs are "the file's perturbation")."""
    if is_unlabelled(axiom):
        return "the file's perturbation (unlabelled pairs)"
    return perturbation_label(axiom, variant)


def fit_args(tool: Any, desired: dict[str, Any], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """The desired arguments that the tool's ``Args`` has; ``optional`` ones are dropped if the
    tool rejects their value (e.g. a ``granularity`` it spells differently)."""
    fields = tool.Args.model_fields
    args = {k: v for k, v in desired.items() if k in fields}
    for key in optional:
        try:
            tool.Args.model_validate(args)
            break
        except ValueError:
            args.pop(key, None)
    return args


def head_of_effect(key: str) -> str | None:
    """The head of a per-head effect key (``effect[L1.H6]``, ``top_effect[L1.H6]``), else None."""
    parsed = try_parse_metric_key(key)
    if parsed is None or parsed.component is None or parsed.tags or parsed.qualifiers:
        return None
    is_effect = _EFFECT_NAME.fullmatch(parsed.name) and _HEAD.fullmatch(parsed.component)
    return parsed.component if is_effect else None


def component_effects(entry: LedgerEntry, sign: int = 1) -> list[tuple[str, float]]:
    """(component, effect) pairs read from an entry's metrics, largest effect in the direction
    ``sign`` first."""
    effects = []
    for key, value in entry.key_metrics.items():
        head = head_of_effect(key)
        if head is not None and isinstance(value, int | float):
            effects.append((head, float(value)))
    return sorted(effects, key=lambda kv: -sign * kv[1])


@dataclass(frozen=True)
class Behaviour:
    """A perturbation whose effect the protocol tests, localises and characterises."""

    axiom: str
    variant: str
    predicted: Predicted

    @property
    def sign(self) -> int:
        return 1 if self.predicted == "increase" else -1

    @property
    def way(self) -> str:
        return "raises" if self.predicted == "increase" else "lowers"

    @property
    def label(self) -> str:
        return describe_perturbation(self.axiom, self.variant)

    def claim(self) -> str:
        """The behaviour in words, with its direction."""
        edit = EDITS.get(self.axiom)
        if edit is None:
            edit = self.variant.replace("_", " ")
        return f"{edit} {self.way} scores ({self.label})"


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


SCREEN_ROW_ARGS: dict[str, str] = {
    "axiom_screen": "perturbations",
    "token_screen": "tokens",
    "property_regression": "edits",
    "input_attribution": "tokens",
}
"""The argument that restricts a screen to some of its rows (when the tool has it)."""

LONG_LOCALISE: dict[str, tuple[int, int]] = {"LNC1": (32, 1), "LNC2": (32, 1)}
"""(localise pairs, heads to confirm) caps for perturbations that make documents long (LNC1
appends filler as long as the document, LNC2 repeats it): one exact patching call on 96 long
LNC1 pairs took about 83 s on 2 cores, so the locate and confirm steps use 32 pairs and confirm
the top head only, to keep such an investigation within minutes (the verdict rules are the
same; the min_pairs and min_queries checks still apply)."""

EDIT_ROWS: dict[str, tuple[str, Literal["greater", "less"], str]] = {
    "length": ("pad", "less", "appending neutral filler lowers scores (a length penalty, LNC1)"),
    "position": (
        "match_position",
        "greater",
        "the query-term sentence placed first rather than last (the other sentences in the same "
        "order) raises scores (an early-match bonus)",
    ),
}
"""The ``property_regression`` row a screen pre-registers, by intent kind (others: ``pad``)."""


class ProtocolPlanner(Planner):
    """Intent → behaviour / screens → follow-ups → locate → confirm → characterise (see the module
    docstring)."""

    name = "protocol"

    def __init__(
        self,
        n_pairs: int = 48,
        localise_pairs: int = 96,
        top_k: int = 3,
        min_effect: float = 0.0,
        min_attention: float = 0.05,
        alpha: float = 0.05,
        seed: int = 0,
        policy: StatsPolicy | None = None,
        max_follow_ups: int = 3,
        screen_pairs: int = 32,
        token_docs: int = 48,
    ) -> None:
        policy = policy or StatsPolicy()
        self.policy = policy
        self.n_pairs = n_pairs
        self.localise_pairs = localise_pairs
        self.top_k = top_k
        self.min_effect = max(min_effect, policy.sesoi_for("patching_effect"))
        self.min_attention = max(min_attention, policy.sesoi_for("attention_mass"))
        self.min_share = 0.5 + policy.sesoi_for("behaviour_share")
        self.min_shrink = policy.sesoi_for("ablation_delta")
        self.alpha = min(alpha, policy.alpha)
        self.seed = seed
        self.max_follow_ups = max_follow_ups
        self.screen_pairs = screen_pairs
        self.token_docs = token_docs
        self._model: dict[str, Any] = {}
        self._notes: list[str] = []
        self._said: set[str] = set()
        self._choice: tuple[str, IntentChoice] | None = None

    def drain_notes(self) -> list[str]:
        """Notes for the ledger feedback and the report (intent, skipped steps and why)."""
        notes, self._notes = self._notes, []
        return notes

    def _note(self, text: str) -> None:
        if text not in self._said:
            self._said.add(text)
            self._notes.append(text)

    def intent(self, question: str) -> IntentChoice:
        """The question's intent (mapped once per question, stated as a note)."""
        if self._choice is None or self._choice[0] != question:
            self._choice = (question, map_intent(question))
        choice = self._choice[1]
        self._note(choice.note())
        return choice

    def _pair_args(
        self, tool: Any, axiom: str, variant: str, n_pairs: int | None = None, **extra: Any
    ) -> dict[str, Any]:
        base = {
            "axiom": axiom,
            "variant": variant,
            "split": "discovery",
            "n_pairs": n_pairs or self.n_pairs,
            "seed": self.seed,
            **extra,
        }
        return fit_args(tool, base, optional=tuple(extra))

    def propose(self, ledger: Ledger) -> Proposal | Stop:
        self._model = ledger.model
        tools = all_tools()
        choice = self.intent(ledger.question)
        intent = choice.intent
        held = fixed_perturbations(ledger.data)
        if held:
            return self._fixed_pairs(ledger, tools, held, intent.axiom)
        behaviours = [e for e in ledger.entries if e.hypothesis.startswith("Behaviour:")]
        main: Behaviour | None = None
        if intent.axiom is not None and intent.variant is not None:
            main = Behaviour(intent.axiom, intent.variant, PREDICTED.get(intent.axiom, "decrease"))
            if not behaviours:
                if "behavioural_test" not in tools:
                    return Stop(
                        reason="behavioural_test is not registered: cannot test the behaviour"
                    )
                return self._behaviour(tools["behavioural_test"], main)
            if behaviours[0].status != "supported" and not intent.screens:
                return Stop(
                    reason=f"the behaviour {main.label} is {behaviours[0].status}, not supported: "
                    "there is no established behaviour to localise"
                )

        step = self._screens_and_follow_ups(ledger, tools, choice)
        if step is not None:
            return step

        target = self._target(ledger, main, behaviours)
        if target is None:
            reason = self._no_target_reason(ledger, choice)
            if main is not None and behaviours:
                reason = f"the behaviour {main.label} is {behaviours[0].status}; {reason}"
            return Stop(reason=reason)
        return self._localise(ledger, tools, target)

    # -- fixed pairs ------------------------------------------------------------------------

    def _fixed_pairs(
        self,
        ledger: Ledger,
        tools: dict[str, Any],
        held: list[tuple[str, str]],
        asked: str | None,
    ) -> Proposal | Stop:
        """The protocol on a pairs file: its own perturbation as declared (see the module
        docstring)."""
        same = [p for p in held if p[0] == asked]
        axiom, variant = (same or held)[0]
        if asked is not None and axiom != asked:
            self._note(
                f"the question names {asked}, but the data holds fixed pairs of "
                f"{', '.join(describe_perturbation(*p) for p in held)} only: the protocol "
                f"studies {describe_perturbation(axiom, variant)}"
            )
        behaviours = [e for e in ledger.entries if e.hypothesis.startswith("Behaviour:")]
        if "behavioural_test" not in tools:
            return Stop(reason="behavioural_test is not registered: cannot test the behaviour")
        tool = tools["behavioural_test"]
        predicted = None if is_unlabelled(axiom) else PREDICTED.get(axiom)
        if predicted is None:
            if is_unlabelled(axiom):
                self._note(
                    "the data holds unlabelled pairs (their perturbation was not declared): the "
                    "protocol studies the file's perturbation with a two-way question and claims "
                    "no axiom; declare it (PATH#perturbation=AXIOM/VARIANT or a perturbation "
                    "column) to test an axiom's prediction"
                )
            one_side_open = len(behaviours) == 1 and behaviours[0].status in (
                "refuted",
                "inconclusive",
            )
            if not behaviours or one_side_open:
                return self._two_way(tool, axiom, variant, raise_=not behaviours)
            supported = [e for e in behaviours if e.status == "supported"]
            target = None
            if supported:
                way = supported[0].criterion.direction
                target = Behaviour(axiom, variant, "increase" if way == "greater" else "decrease")
        else:
            if not behaviours:
                return self._behaviour(tool, Behaviour(axiom, variant, predicted))
            ok = behaviours[0].status == "supported"
            target = Behaviour(axiom, variant, predicted) if ok else None
        if target is None:
            return Stop(
                reason=f"the behaviour {describe_perturbation(axiom, variant)} is "
                f"{behaviours[-1].status}, not supported: there is no established behaviour to "
                "localise"
            )
        return self._localise(ledger, tools, target)

    def _two_way(self, tool: Any, axiom: str, variant: str, *, raise_: bool) -> Proposal:
        """One side of the two-way behaviour question of pairs with no predicted direction."""
        label = describe_perturbation(axiom, variant)
        return Proposal(
            hypothesis=f"Behaviour: {label} {'raises' if raise_ else 'lowers'} the model's "
            f"scores (the mean perturbed − baseline score change is "
            f"{'positive' if raise_ else 'negative'}; two-way question, each direction at half "
            "the level)",
            rationale="no declared axiom predicts a direction, so both are tested: "
            + ("raising first" if raise_ else "lowering, as raising was not supported"),
            tool="behavioural_test",
            args=self._pair_args(tool, axiom, variant),
            criterion=Criterion(
                metric="mean_delta",
                direction="greater" if raise_ else "less",
                threshold=0.0,
                alpha=self.alpha / 2,
            ),
        )

    # -- screens and follow-ups ------------------------------------------------------------

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
        hits = sorted((h for e in screens for h in self._hits(e, tools)), key=lambda h: -h.size)
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

    def _reference_row(
        self, tool: Any, choice: IntentChoice
    ) -> tuple[str | None, Literal["greater", "less"], str]:
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
    def _follow_up_title(hit: Hit) -> str:
        return f"Follow-up: {hit.tool} hit {hit.name}"

    def _follow_up(self, tools: dict[str, Any], hit: Hit, choice: IntentChoice) -> Proposal | None:
        way = "raises" if hit.effect > 0 else "lowers"
        direction: Literal["greater", "less"] = "greater" if hit.effect > 0 else "less"
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

    # -- localisation ------------------------------------------------------------------------

    def _target(
        self, ledger: Ledger, main: Behaviour | None, behaviours: list[LedgerEntry]
    ) -> Behaviour | None:
        """The behaviour to localise: the intent's axiom if supported, else the largest
        supported follow-up of an axiom-screen hit."""
        if main is not None and behaviours and behaviours[0].status == "supported":
            return main
        for entry in ledger.entries:
            if not entry.hypothesis.startswith("Follow-up:") or entry.status != "supported":
                continue
            if entry.tool != "behavioural_test":
                continue
            axiom, variant = entry.args.get("axiom"), entry.args.get("variant")
            predicted = entry.args.get("predicted")
            if isinstance(axiom, str) and isinstance(variant, str):
                return Behaviour(
                    axiom, variant, "decrease" if predicted == "decrease" else "increase"
                )
        return None

    def _no_target_reason(self, ledger: Ledger, choice: IntentChoice) -> str:
        follow = [e for e in ledger.entries if e.hypothesis.startswith("Follow-up:")]
        supported = [e for e in follow if e.status == "supported"]
        if supported:
            return (
                f"protocol complete for the intent '{choice.intent.name}': "
                f"{len(supported)} screen hit(s) confirmed; none has perturbation pairs to "
                "localise by patching"
            )
        if follow:
            return (
                f"protocol complete for the intent '{choice.intent.name}': no screen hit was "
                "confirmed and replicated; nothing to localise"
            )
        if not any(e.hypothesis.startswith("Screen:") for e in ledger.entries):
            return (
                f"the intent '{choice.intent.name}' needs the screens "
                f"{', '.join(choice.intent.screens) or 'none'}, and none could run (see the "
                "notes): the question stays unanswered"
            )
        return (
            f"protocol complete for the intent '{choice.intent.name}': no screen hit beyond the "
            "SESOI; nothing to follow up"
        )

    def _localise(
        self, ledger: Ledger, tools: dict[str, Any], target: Behaviour
    ) -> Proposal | Stop:
        locate = [e for e in ledger.entries if e.hypothesis.startswith("Locate:")]
        if not locate:
            step = self._locate(tools, target)
            if step is not None:
                return step
            return Stop(reason="no patching tool is registered: cannot localise the behaviour")

        confirm = [e for e in ledger.entries if e.hypothesis.startswith("Confirm:")]
        step = self._confirm(tools, locate[0], confirm, target)
        if step is not None:
            return step
        confirmed = [c for e in confirm if e.status == "supported" for c in e.components]
        if not confirmed:
            if confirm:
                return Stop(
                    reason="no head was confirmed by exact activation patching and replication; "
                    "nothing to characterise"
                )
            return Stop(reason="could not confirm any component")

        done = {
            (e.tool, tuple(e.components))
            for e in ledger.entries
            if e.hypothesis.startswith("Characterise:")
        }
        wanted: list[tuple[str, list[str]]] = []
        if target.axiom in ATTENTION_FOCUS:
            wanted = [("attention_by_role", [head]) for head in confirmed]
        else:
            self._note(
                f"no attention pattern characterises {target.label}: only the joint ablation is run"
            )
        for tool_name, heads in [*wanted, ("ablation", confirmed)]:
            if (tool_name, tuple(heads)) in done:
                continue
            if tool_name not in tools:
                self._note(f"protocol step skipped: tool {tool_name!r} is not registered")
                continue
            step = self._characterise(tools[tool_name], heads, target)
            if step is not None:
                return step
        return Stop(
            reason="protocol complete: behaviour, localisation, confirmation, characterisation"
        )

    def _behaviour(self, tool: Any, behaviour: Behaviour) -> Proposal:
        higher = "higher" if behaviour.predicted == "increase" else "lower"
        extra: dict[str, Any] = {}
        if behaviour.axiom not in ("TFC1", "TFC2", "TDC", "STMC1", "LNC1", "LNC2"):
            extra["predicted"] = behaviour.predicted
        if behaviour.axiom == "TFC1":
            text = (
                f"Behaviour: the model rewards {behaviour.label} (most perturbed documents score "
                "higher than their baselines)"
            )
        else:
            text = (
                f"Behaviour: {behaviour.claim()} — most perturbed documents score {higher} than "
                "their baselines"
            )
        return Proposal(
            hypothesis=text,
            rationale="behaviour first: localising an effect that does not exist explains nothing",
            tool="behavioural_test",
            args=self._pair_args(tool, behaviour.axiom, behaviour.variant, **extra),
            criterion=Criterion(
                metric="share_moved_predicted",
                direction="greater",
                threshold=self.min_share,
                alpha=self.alpha,
            ),
        )

    def _locate(self, tools: dict[str, Any], target: Behaviour) -> Proposal | None:
        if "attribution_patching" in tools:
            name = "attribution_patching"
            rationale = "a fast approximate pass over every head, confirmed exactly afterwards"
        elif "activation_patching" in tools:
            name = "activation_patching"
            self._note(
                "attribution_patching is not registered: locating with exact activation patching "
                "over all heads instead"
            )
            rationale = "exact patching of every head (attribution patching is not available)"
        else:
            self._note("no patching tool is registered: the localisation steps are skipped")
            return None
        tool = tools[name]
        probe = self._probe_head()
        return Proposal(
            hypothesis=f"Locate: a screen of every attention head for the {target.label} effect "
            f"({target.claim()}) by {name}; the pre-registered claim is about head {probe} (the "
            "last layer's first head), the per-head effects rank the heads to confirm",
            rationale=rationale,
            tool=name,
            args=self._pair_args(
                tool,
                target.axiom,
                target.variant,
                n_pairs=self._localise_size(target)[0],
                granularity="heads",
                metric="robust",
            ),
            criterion=self._effect_criterion(probe, target),
            components=[probe],
        )

    def _localise_size(self, target: Behaviour) -> tuple[int, int]:
        """(pairs, heads to confirm) of the localisation of ``target``: at most
        :data:`LONG_LOCALISE` for perturbations that lengthen documents a lot (exact patching of
        a long LNC1 pair is about 20 times slower than a TFC1 one), else the planner's own."""
        pairs, heads = LONG_LOCALISE.get(target.axiom, (self.localise_pairs, self.top_k))
        return min(pairs, self.localise_pairs), min(heads, self.top_k)

    def _effect_criterion(self, head: str, target: Behaviour) -> Criterion:
        """A head's patching effect beyond ``min_effect`` in the behaviour's direction."""
        return Criterion(
            metric=metric_key("effect", head),
            direction="greater" if target.sign > 0 else "less",
            threshold=target.sign * self.min_effect,
            alpha=self.alpha,
        )

    def _probe_head(self) -> str:
        """The head a screen's criterion names: the last layer's first head."""
        layers = self._model.get("layers") if isinstance(self._model, dict) else None
        return f"L{int(layers) - 1}.H0" if isinstance(layers, int) and layers > 0 else "L0.H0"

    def _confirm(
        self,
        tools: dict[str, Any],
        locate: LedgerEntry,
        confirm: list[LedgerEntry],
        target: Behaviour,
    ) -> Proposal | None:
        if "activation_patching" not in tools:
            self._note("activation_patching is not registered: the confirmation step is skipped")
            return None
        top = [
            c for c, _ in component_effects(locate, target.sign)[: self._localise_size(target)[1]]
        ]
        if not top:
            self._note(
                f"the locate step (H{locate.hypothesis_id}) reported no per-head effects: "
                "nothing to confirm"
            )
            return None
        tested = {c for e in confirm for c in e.components}
        for head in top:
            if head not in tested:
                return self._confirm_one(tools["activation_patching"], top, head, target)
        return None

    def _confirm_one(self, tool: Any, top: list[str], head: str, target: Behaviour) -> Proposal:
        moves = "restores more than" if target.sign > 0 else "moves the score down by more than"
        return Proposal(
            hypothesis=f"Confirm: head {head} carries part of the {target.label} effect "
            f"(exact activation patching {moves} {self.min_effect:g} of it)",
            rationale=f"top-{len(top)} heads of the locate step: {', '.join(top)}",
            tool="activation_patching",
            args=self._pair_args(
                tool,
                target.axiom,
                target.variant,
                n_pairs=self._localise_size(target)[0],
                components=[head],
                metric="robust",
            ),
            criterion=self._effect_criterion(head, target),
            components=[head],
        )

    def _characterise(self, tool: Any, heads: list[str], target: Behaviour) -> Proposal | None:
        axiom, variant = target.axiom, target.variant
        if tool.name == "attention_by_role":
            focus, why = ATTENTION_FOCUS[axiom]
            source, _, dest = focus.partition("->")
            if axiom == "TFC1":
                text = (
                    f"Characterise: in the confirmed heads {', '.join(heads)}, injected tokens "
                    "attend to earlier occurrences of the same token with more than "
                    f"{self.min_attention:g} of their attention mass"
                )
                why = (
                    "duplicate-token heads attend from a repeated term to its earlier "
                    "occurrences (Chen et al.)"
                )
            else:
                text = (
                    f"Characterise: in the confirmed heads {', '.join(heads)}, {source} tokens "
                    f"attend to {dest.replace('_', ' ')} tokens with more than "
                    f"{self.min_attention:g} of their attention mass ({target.label})"
                )
            return Proposal(
                hypothesis=text,
                rationale=why,
                tool=tool.name,
                args=self._pair_args(tool, axiom, variant, heads=heads, focus=focus),
                criterion=Criterion(
                    metric=str(MetricKey("attention", heads[0], (), (focus,))),
                    direction="greater",
                    threshold=self.min_attention,
                    alpha=self.alpha,
                ),
                components=heads,
            )
        joint = "+".join(heads)
        change = "increase" if target.sign > 0 else "decrease"
        return Proposal(
            hypothesis=f"Characterise: zero-ablating the confirmed heads {', '.join(heads)} "
            f"together shrinks the {axiom} {variant} score {change}",
            rationale="necessity: if these heads compute the behaviour, removing them reduces it",
            tool=tool.name,
            args=self._pair_args(tool, axiom, variant, components=heads, joint=True),
            criterion=Criterion(
                metric=metric_key("delta_change", joint),
                direction="less" if target.sign > 0 else "greater",
                threshold=-target.sign * self.min_shrink,
                alpha=self.alpha,
            ),
            components=heads,
        )

"""``ProtocolPlanner``: a deterministic investigation protocol that needs no LLM.

It is the offline default, the baseline the LLM planner is compared with, and what the tests run.
It reads only the ledger (earlier hypotheses, their verdicts and key metrics) and proposes the
first step of this protocol that has not been done yet:

1. **Behaviour.** ``behavioural_test`` of the axiom named in the question (``TFC1``, ``TFC2``,
   ``TDC``, ``STMC1``, ``LNC1``, ``LNC2``; variant ``append``/``prepend``/``replace`` when named;
   default TFC1 append). Criterion: ``share_moved_predicted`` greater than 0.5 (most pairs move the
   way the axiom predicts), with the Wilcoxon p-value of the predicted direction. If the behaviour
   is not *supported* (refuted, inconclusive, or not replicated), the protocol stops: there is
   nothing to localise.
2. **Locate.** ``attribution_patching`` over all attention heads (a fast, approximate first pass;
   its verdict can at most be inconclusive, by rule) on ``localise_pairs`` = 96 pairs, with the
   robust normalised metric ``(s_patched - s_base)/sqrt(1 + (s_pert - s_base)^2)`` (the classic
   ratio explodes on pairs whose score barely moves). Criterion: the top head's effect is positive.
   When attribution patching is not registered, the protocol locates with exact
   ``activation_patching`` over all heads instead, and says so.
3. **Confirm.** The top-k heads by attribution effect (k = 3, read from the locate evidence) are
   patched exactly with ``activation_patching`` (denoising, robust metric, 96 pairs); one
   hypothesis per head, criterion ``effect[L.H]`` greater than ``min_effect`` (0: the head restores
   a positive share of the score change) with Holm's correction over the k heads.
4. **Characterise** the confirmed heads (those whose hypothesis is supported):
   ``attention_by_role`` — do injected tokens attend to earlier occurrences of the same token
   (``top_attention`` over the confirmed heads greater than ``min_attention`` = 0.05 of the
   attention mass)? — and zero ``ablation`` of the confirmed heads together (``delta_change`` of
   the joint ablation less than 0: removing them shrinks the score increase).
5. **Stop.**

The graph replicates every hypothesis that meets its criterion on the held-out split, so each
step above is tested on discovery queries and replicated on held-out ones. A step whose tool is
not registered is skipped, and the skip is reported (``drain_notes``) — never silently.
"""

from __future__ import annotations

import re
from typing import Any

from rankscope.agent.planners.base import Criterion, Ledger, LedgerEntry, Planner, Proposal, Stop
from rankscope.agent.policy import StatsPolicy
from rankscope.tools.metric_keys import MetricKey, metric_key, try_parse_metric_key
from rankscope.tools.registry import all_tools

AXIOMS = ("TFC1", "TFC2", "TDC", "STMC1", "LNC1", "LNC2")
VARIANTS = ("append", "prepend", "replace")
_EFFECT_NAME = re.compile(r"[a-z_]*effect")
_HEAD = re.compile(r"L\d+\.H\d+")


def parse_axiom(question: str) -> tuple[str, str]:
    """(axiom, variant) named in the question; default TFC1 append."""
    upper = question.upper()
    axiom = next((a for a in sorted(AXIOMS, key=len, reverse=True) if a in upper), "TFC1")
    lower = question.lower()
    variant = next((v for v in VARIANTS if re.search(rf"\b{v}(ed|ing|s)?\b", lower)), "append")
    return axiom, variant


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


def component_effects(entry: LedgerEntry) -> list[tuple[str, float]]:
    """(component, effect) pairs read from an entry's metrics, largest effect first."""
    effects = []
    for key, value in entry.key_metrics.items():
        head = head_of_effect(key)
        if head is not None and isinstance(value, int | float):
            effects.append((head, float(value)))
    return sorted(effects, key=lambda kv: -kv[1])


class ProtocolPlanner(Planner):
    """Behaviour → locate → confirm → characterise (see the module docstring)."""

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
    ) -> None:
        policy = policy or StatsPolicy()
        self.n_pairs = n_pairs
        self.localise_pairs = localise_pairs
        self.top_k = top_k
        self.min_effect = max(min_effect, policy.sesoi_for("patching_effect"))
        self.min_attention = max(min_attention, policy.sesoi_for("attention_mass"))
        self.min_share = 0.5 + policy.sesoi_for("behaviour_share")
        self.min_shrink = policy.sesoi_for("ablation_delta")
        self.alpha = min(alpha, policy.alpha)
        self.seed = seed
        self._model: dict[str, Any] = {}
        self._notes: list[str] = []
        self._said: set[str] = set()

    def drain_notes(self) -> list[str]:
        """Notes for the ledger feedback and the report (skipped steps and why)."""
        notes, self._notes = self._notes, []
        return notes

    def _note(self, text: str) -> None:
        if text not in self._said:
            self._said.add(text)
            self._notes.append(text)

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
        axiom, variant = parse_axiom(ledger.question)
        by_tool: dict[str, list[LedgerEntry]] = {}
        for entry in ledger.entries:
            by_tool.setdefault(entry.tool, []).append(entry)

        behaviour = by_tool.get("behavioural_test", [])
        if not behaviour:
            if "behavioural_test" not in tools:
                return Stop(reason="behavioural_test is not registered: cannot test the behaviour")
            return self._behaviour(tools["behavioural_test"], axiom, variant)
        if behaviour[0].status != "supported":
            return Stop(
                reason=f"the behaviour {axiom} {variant} is {behaviour[0].status}, not supported: "
                "there is no established behaviour to localise"
            )

        locate = [e for e in ledger.entries if e.hypothesis.startswith("Locate:")]
        if not locate:
            step = self._locate(tools, axiom, variant)
            if step is not None:
                return step
            return Stop(reason="no patching tool is registered: cannot localise the behaviour")

        confirm = [e for e in ledger.entries if e.hypothesis.startswith("Confirm:")]
        step = self._confirm(tools, locate[0], confirm, axiom, variant)
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
        wanted = [("attention_by_role", [head]) for head in confirmed]
        for tool_name, heads in [*wanted, ("ablation", confirmed)]:
            if (tool_name, tuple(heads)) in done:
                continue
            if tool_name not in tools:
                self._note(f"protocol step skipped: tool {tool_name!r} is not registered")
                continue
            step = self._characterise(tools[tool_name], heads, axiom, variant)
            if step is not None:
                return step
        return Stop(
            reason="protocol complete: behaviour, localisation, confirmation, characterisation"
        )

    def _behaviour(self, tool: Any, axiom: str, variant: str) -> Proposal:
        return Proposal(
            hypothesis=f"Behaviour: the model rewards {axiom} {variant} (most perturbed documents "
            "score higher than their baselines)",
            rationale="behaviour first: localising an effect that does not exist explains nothing",
            tool="behavioural_test",
            args=self._pair_args(tool, axiom, variant),
            criterion=Criterion(
                metric="share_moved_predicted",
                direction="greater",
                threshold=self.min_share,
                alpha=self.alpha,
            ),
        )

    def _locate(self, tools: dict[str, Any], axiom: str, variant: str) -> Proposal | None:
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
            hypothesis=f"Locate: a screen of every attention head for the {axiom} {variant} effect "
            f"by {name}; the pre-registered claim is about head {probe} (the last layer's first "
            "head), the per-head effects rank the heads to confirm",
            rationale=rationale,
            tool=name,
            args=self._pair_args(
                tool,
                axiom,
                variant,
                n_pairs=self.localise_pairs,
                granularity="heads",
                metric="robust",
            ),
            criterion=Criterion(
                metric=metric_key("effect", probe),
                direction="greater",
                threshold=self.min_effect,
                alpha=self.alpha,
            ),
            components=[probe],
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
        axiom: str,
        variant: str,
    ) -> Proposal | None:
        if "activation_patching" not in tools:
            self._note("activation_patching is not registered: the confirmation step is skipped")
            return None
        top = [c for c, _ in component_effects(locate)[: self.top_k]]
        if not top:
            self._note(
                f"the locate step (H{locate.hypothesis_id}) reported no per-head effects: "
                "nothing to confirm"
            )
            return None
        tested = {c for e in confirm for c in e.components}
        for head in top:
            if head not in tested:
                return self._confirm_one(tools["activation_patching"], top, head, axiom, variant)
        return None

    def _confirm_one(
        self, tool: Any, top: list[str], head: str, axiom: str, variant: str
    ) -> Proposal:
        return Proposal(
            hypothesis=f"Confirm: head {head} carries part of the {axiom} {variant} effect "
            f"(exact activation patching restores more than {self.min_effect:g} of it)",
            rationale=f"top-{len(top)} heads of the locate step: {', '.join(top)}",
            tool="activation_patching",
            args=self._pair_args(
                tool,
                axiom,
                variant,
                n_pairs=self.localise_pairs,
                components=[head],
                metric="robust",
            ),
            criterion=Criterion(
                metric=metric_key("effect", head),
                direction="greater",
                threshold=self.min_effect,
                alpha=self.alpha,
            ),
            components=[head],
        )

    def _characterise(
        self, tool: Any, heads: list[str], axiom: str, variant: str
    ) -> Proposal | None:
        if tool.name == "attention_by_role":
            return Proposal(
                hypothesis=f"Characterise: in the confirmed heads {', '.join(heads)}, injected "
                "tokens attend to earlier occurrences of the same token with more than "
                f"{self.min_attention:g} of their attention mass",
                rationale="duplicate-token heads attend from a repeated term to its earlier "
                "occurrences (Chen et al.)",
                tool=tool.name,
                args=self._pair_args(
                    tool, axiom, variant, heads=heads, focus="injected->same_token"
                ),
                criterion=Criterion(
                    metric=str(MetricKey("attention", heads[0], (), ("injected->same_token",))),
                    direction="greater",
                    threshold=self.min_attention,
                    alpha=self.alpha,
                ),
                components=heads,
            )
        joint = "+".join(heads)
        return Proposal(
            hypothesis=f"Characterise: zero-ablating the confirmed heads {', '.join(heads)} "
            f"together shrinks the {axiom} {variant} score increase",
            rationale="necessity: if these heads compute the behaviour, removing them reduces it",
            tool=tool.name,
            args=self._pair_args(tool, axiom, variant, components=heads, joint=True),
            criterion=Criterion(
                metric=metric_key("delta_change", joint),
                direction="less",
                threshold=-self.min_shrink,
                alpha=self.alpha,
            ),
            components=heads,
        )

"""Steps 4 and 5 of the protocol: localise the behaviour. With the ``circuit`` tool, as a circuit
(:mod:`.circuits`: rank → group claim → random-set control → roles → competing mechanisms →
single components). Without it: an exploratory screen of every attention head (attribution
patching, else exact activation patching; it claims nothing and names no head), then the top
heads confirmed one by one with exact activation patching (the fraction of the behaviour each
restores, beyond the ``patching_fraction`` SESOI); the confirmed heads go on to be
characterised."""

from __future__ import annotations

import re
from typing import Any

from rankscope.agent.planners.base import Criterion, Ledger, LedgerEntry, Proposal, Stop
from rankscope.agent.planners.intents import IntentChoice
from rankscope.agent.planners.protocol.behaviour import Behaviour
from rankscope.agent.planners.protocol.circuits import CIRCUIT_TOOL, CircuitSteps
from rankscope.tools.metric_keys import try_parse_metric_key
from rankscope.tools.retrievers.base import Component

_EFFECT_NAME = re.compile(r"[a-z_]*effect")


def head_of_effect(key: str) -> str | None:
    """The head of a per-head effect key (``effect[L1.H6]``, ``top_effect[L1.H6]``), else None."""
    parsed = try_parse_metric_key(key)
    if parsed is None or parsed.component is None or parsed.tags or parsed.qualifiers:
        return None
    is_effect = _EFFECT_NAME.fullmatch(parsed.name) and _is_head(parsed.component)
    return parsed.component if is_effect else None


def _is_head(name: str) -> bool:
    """Whether ``name`` is an attention head as :class:`Component` names it (``L1.H6``)."""
    try:
        component = Component.parse(name)
    except ValueError:
        return False
    return component.site == "heads" and component.name == name


def component_effects(entry: LedgerEntry) -> list[tuple[str, float]]:
    """(component, effect) pairs read from an entry's metrics, largest first: an effect is the
    fraction of the behaviour a head restores, positive in the behaviour's direction whether the
    behaviour raises or lowers scores."""
    effects = []
    for key, value in entry.key_metrics.items():
        head = head_of_effect(key)
        if head is not None and isinstance(value, int | float):
            effects.append((head, float(value)))
    return sorted(effects, key=lambda kv: -kv[1])


class LocalisationSteps(CircuitSteps):
    """Which behaviour to localise, and the locate and confirm steps."""

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
        """The next localisation step for ``target``: a circuit when the ``circuit`` tool is
        registered; else locate, then confirm the top heads, then characterise the confirmed
        ones."""
        if CIRCUIT_TOOL in tools:
            return self._circuit_localise(ledger, tools, target)
        self._note(
            "the circuit tool is not registered: localising head by head (an exploratory screen, "
            "then single-head claims), which misses effects spread over several heads"
        )
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
        return self._characterise_confirmed(ledger, tools, confirmed, target)

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
        return Proposal(
            hypothesis=f"Locate: a screen of every attention head for the {target.label} effect "
            f"({target.claim()}) by {name}, on discovery queries; its per-head effects rank the "
            "heads to confirm. Exploratory: it claims nothing",
            rationale=rationale,
            tool=name,
            args=self._pair_args(
                tool,
                target.axiom,
                target.variant,
                n_pairs=self._localise_size(target)[0],
                granularity="heads",
            ),
            criterion=Criterion(metric="top_effect", direction="two-sided", threshold=0.0),
            exploratory=True,
        )

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
        top = [c for c, _ in component_effects(locate)[: self._localise_size(target)[1]]]
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

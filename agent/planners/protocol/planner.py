"""``ProtocolPlanner``: the steps of the protocol in order (the package docstring describes
them); each step lives in its own module and this one only chooses which comes next."""

from __future__ import annotations

from rankscope.agent.planners.base import Ledger, Proposal, Stop
from rankscope.agent.planners.intents import named_intent
from rankscope.agent.planners.protocol.behaviour import Behaviour, BehaviourSteps
from rankscope.agent.planners.protocol.localisation import LocalisationSteps
from rankscope.agent.planners.protocol.screens import ScreenSteps
from rankscope.agent.planners.protocol.tables import PREDICTED
from rankscope.tools.data.source import fixed_perturbations
from rankscope.tools.registry import all_tools


def parse_axiom(question: str) -> tuple[str, str]:
    """(axiom, variant) named in the question; default TFC1 append."""
    named = named_intent(question)
    if named is not None and named.axiom and named.variant:
        return named.axiom, named.variant
    return "TFC1", "append"


class ProtocolPlanner(BehaviourSteps, ScreenSteps, LocalisationSteps):
    """Intent → behaviour / screens → follow-ups → localise (a circuit: rank, group claim,
    random-set control, roles, competing mechanisms, single components; without the circuit
    tool: screen, confirm, characterise) — see the package docstring."""

    def propose(self, ledger: Ledger) -> Proposal | Stop:
        """The first step of the protocol not done yet (see the package docstring)."""
        self._model = ledger.model
        tools = all_tools()
        choice = self.intent(ledger.question)
        intent = choice.intent
        held = fixed_perturbations(ledger.data)
        if held:
            fixed = self._fixed_pairs(ledger, tools, held, intent.axiom)
            return self._localise(ledger, tools, fixed) if isinstance(fixed, Behaviour) else fixed
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

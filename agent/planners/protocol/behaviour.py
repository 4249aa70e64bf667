"""Step 1 of the protocol, the behaviour: does the model show the perturbation's effect at all
(``behavioural_test``, criterion ``share_moved_predicted`` above 0.5 + SESOI)? On a pairs file,
the file's own perturbation as declared, or a two-way question for pairs nobody declared."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rankscope.agent.planners.base import Criterion, Ledger, Proposal, Stop
from rankscope.agent.planners.intents import AXIOMS
from rankscope.agent.planners.protocol.core import ProtocolCore
from rankscope.agent.planners.protocol.tables import EDITS, PREDICTED, Predicted
from rankscope.tools.data.labels import is_unlabelled, perturbation_label


def describe_perturbation(axiom: str, variant: str) -> str:
    """How a hypothesis names the perturbation it studies (never an axiom that was not
    declared: unlabelled pairs are "the file's perturbation")."""
    if is_unlabelled(axiom):
        return "the file's perturbation (unlabelled pairs)"
    return perturbation_label(axiom, variant)


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


class BehaviourSteps(ProtocolCore):
    """The behaviour step, for an intent's axiom and for the fixed pairs of a pairs file."""

    def _behaviour(self, tool: Any, behaviour: Behaviour) -> Proposal:
        """The behaviour's hypothesis: most perturbed documents move the predicted way."""
        higher = "higher" if behaviour.predicted == "increase" else "lower"
        extra: dict[str, Any] = {}
        if behaviour.axiom not in AXIOMS:  # behavioural_test knows what these axioms predict
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

    def _fixed_pairs(
        self,
        ledger: Ledger,
        tools: dict[str, Any],
        held: list[tuple[str, str]],
        asked: str | None,
    ) -> Proposal | Stop | Behaviour:
        """The protocol on a pairs file: its own perturbation as declared (see the package
        docstring). A supported behaviour comes back as the :class:`Behaviour` to localise."""
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
        return target

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

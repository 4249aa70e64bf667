"""What every step of the protocol shares: the planner's settings (sizes, levels, the policy's
SESOIs), its notes (``drain_notes``), the question's intent, and the arguments of a call on
perturbation pairs."""

from __future__ import annotations

from typing import Any

from rankscope.agent.planners.base import Planner
from rankscope.agent.planners.intents import IntentChoice, map_intent
from rankscope.agent.policy import StatsPolicy


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


class ProtocolCore(Planner):
    """The protocol planner's settings and notes; the step mixins
    (:mod:`~rankscope.agent.planners.protocol.behaviour`, ``screens``, ``localisation``,
    ``characterisation``) build on it."""

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
        target: float = 0.6,
        max_k: int = 10,
        k_margin: float = 0.1,
        n_random: int = 100,
    ) -> None:
        policy = policy or StatsPolicy()
        self.policy = policy
        self.n_pairs = n_pairs
        self.localise_pairs = localise_pairs
        self.top_k = top_k
        self.min_effect = max(min_effect, policy.sesoi_for("patching_fraction"))
        """A single component's claim: the fraction of the behaviour it restores, beyond this
        (at least the ``patching_fraction`` SESOI)."""
        self.target = target
        """The pre-registered faithfulness a circuit must reach (the group claim's threshold)."""
        self.max_k = max_k
        self.k_margin = k_margin
        """The circuit size is chosen on discovery as the smallest k reaching ``target +
        k_margin``, so that the claim is not selected at its own threshold."""
        self.n_random = n_random
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

"""What every step of the protocol shares: the planner's settings (sizes, levels, the policy's
SESOIs, the circuit's target), its notes (``drain_notes``), the question's intent, the arguments
of a call on perturbation pairs, and the single-component claim (a fraction of the behaviour)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from rankscope.agent.planners.base import Criterion, Planner, Proposal
from rankscope.agent.planners.intents import IntentChoice, map_intent
from rankscope.agent.planners.protocol.tables import LONG_LOCALISE
from rankscope.agent.policy import StatsPolicy
from rankscope.tools.metric_keys import metric_key

if TYPE_CHECKING:
    from rankscope.agent.planners.protocol.behaviour import Behaviour


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
        localise_pairs: int = 48,
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
        ranking: Literal["exact", "attribution"] = "attribution",
    ) -> None:
        policy = policy or StatsPolicy()
        self.policy = policy
        self.n_pairs = n_pairs
        self.localise_pairs = localise_pairs
        """Pairs of every localisation call: 48 TFC1 pairs of the built-in collection are 14
        discovery queries (the policy needs 8); exact circuits cost about linearly in pairs, and
        the README question has to finish in minutes on 2 cores."""
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
        self.ranking = ranking
        """How the rank step orders the heads: attribution patching by default, a fast first
        pass that only chooses the candidates (the curve, k and every number a claim rests on
        are exact): the exact grid of every MiniLM head alone is over half of the README
        question's CPU time on 2 cores; ``exact`` for the exact grid."""
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

    def _localise_size(self, target: Behaviour) -> tuple[int, int]:
        """(pairs, heads to confirm) of the localisation of ``target``: at most
        :data:`LONG_LOCALISE` for perturbations that lengthen documents a lot (exact patching of
        a long LNC1 pair is about 20 times slower than a TFC1 one), else the planner's own."""
        pairs, heads = LONG_LOCALISE.get(target.axiom, (self.localise_pairs, self.top_k))
        return min(pairs, self.localise_pairs), min(heads, self.top_k)

    def _effect_criterion(self, head: str, target: Behaviour) -> Criterion:
        """A head restores more than ``min_effect`` (at least the ``patching_fraction`` SESOI)
        of the behaviour: a fraction, positive in the behaviour's direction for an increase and
        a decrease alike."""
        return Criterion(
            metric=metric_key("effect", head),
            direction="greater",
            threshold=self.min_effect,
            alpha=self.alpha,
        )

    def _confirm_one(self, tool: Any, top: list[str], head: str, target: Behaviour) -> Proposal:
        return Proposal(
            hypothesis=f"Confirm: {'head ' if '.H' in head else ''}{head} carries part of the "
            f"{target.label} effect "
            f"(patched alone with exact activation patching, it restores more than "
            f"{self.min_effect:g} of the behaviour's score change)",
            rationale=f"ranked heads carrying at least the SESOI on discovery: {', '.join(top)}",
            tool="activation_patching",
            args=self._pair_args(
                tool,
                target.axiom,
                target.variant,
                n_pairs=self._localise_size(target)[0],
                components=[head],
                engine="cached",
            ),
            criterion=self._effect_criterion(head, target),
            components=[head],
        )

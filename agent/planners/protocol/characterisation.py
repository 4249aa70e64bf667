"""Step 6 of the protocol: characterise the confirmed heads with a step that fits the
mechanism (``attention_by_role`` with the axiom's attention pattern, see
:data:`~rankscope.agent.planners.protocol.tables.ATTENTION_FOCUS`) and a joint zero
``ablation`` that shrinks the behaviour."""

from __future__ import annotations

from typing import Any

from rankscope.agent.planners.base import Criterion, Ledger, Proposal, Stop
from rankscope.agent.planners.protocol.behaviour import Behaviour
from rankscope.agent.planners.protocol.core import ProtocolCore
from rankscope.agent.planners.protocol.tables import ATTENTION_FOCUS
from rankscope.tools.metric_keys import MetricKey, metric_key


class CharacterisationSteps(ProtocolCore):
    """The characterisation of the confirmed heads, one step per call not yet made."""

    def _characterise_confirmed(
        self, ledger: Ledger, tools: dict[str, Any], confirmed: list[str], target: Behaviour
    ) -> Proposal | Stop:
        """The next characterisation call for the ``confirmed`` heads, else Stop: the protocol
        is complete."""
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

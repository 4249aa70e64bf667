"""Step 4 of the protocol when the ``circuit`` tool is registered: answer "which components
compute it?" with a circuit — a set of components tested together — instead of one head at a time
(effects in bi-encoders are usually spread over several heads, and single-head claims then answer
"nothing").

4a. **Competing mechanisms** (a note, before anything is localised): for a perturbation that adds
    query terms to a mean-pooled model (:data:`~.tables.MECHANISMS`), the direct mechanism (the
    added term's own representation enters the pooled vector) and the heads mechanism (heads
    detect the repeated term and write the signal elsewhere), with the two predictions that tell
    them apart (4e).
4b. **Rank** (exploratory: it claims nothing, gets no verdict): ``circuit`` with ``members=None``
    on the discovery split ranks every head (by attribution patching by default, a fast first
    pass that only orders the candidates; ``ranking="exact"`` for the exact grid) and patches the
    top-k jointly, exactly, for k = 1 … ``max_k``; its smallest k reaching ``target + k_margin`` (else ``max_k``)
    is the circuit size. Members and k are fixed here, from discovery queries only.
4c. **Circuit** (the group claim): the top-k heads of 4b together restore at least ``target``
    (0.6) of the behaviour — ``circuit`` with those members and that k, criterion
    ``faithfulness`` greater than ``target``. The graph replicates it on held-out queries with the
    same members and k: nothing is re-ranked there.
4d. **Control**: the same heads restore more than random sets of k heads from the same pool —
    ``beats_random`` (faithfulness minus the mean of ``n_random`` seeded random sets) greater
    than 0, beyond the SESOI. Only this call draws random sets (the rank and the group claim run
    with ``n_random=0``): a claim on ``beats_random`` of the group claim's own call would be
    registered after that call's results could be seen, and no argument is varied for nothing
    to hide the repeat.
4e. **Roles** of the members when the circuit claim or its control is supported (members that
    carry something specific, even short of the target; exploratory descriptions): position-resolved
    patching (each member's output at the added term, at earlier query-term occurrences, at the
    document's other tokens, at CLS), path patching from the members straight to the output (and
    from earlier members into the latest one, when the members span layers), and attention by
    role (the axiom's attention pattern, e.g. duplicate-token attention for TFC1).
4f. **Mechanisms**: the two pre-registered predictions of 4a, each a confirmatory claim with one
    test — the final-layer states at the added positions alone restore most (more than half) of
    the effect (direct: ``activation_patching``), all attention outputs patched jointly restore
    most of it (heads: ``circuit`` with the attention blocks as members; one minus it is the
    share no head carries). A mechanism whose prediction is refuted is ruled out.
4g. **Single components**: each member whose discovery effect is at least the SESOI (the
    ``patching_fraction`` family) is confirmed alone with exact ``activation_patching``
    (``effect[X]`` greater than the SESOI), up to ``top_k`` of them, while the budget lasts.

Every threshold of a component claim is a fraction of the behaviour (``patching_fraction``).
"""

from __future__ import annotations

from typing import Any

from rankscope.agent.planners.base import Criterion, Ledger, LedgerEntry, Proposal, Stop
from rankscope.agent.planners.protocol.behaviour import Behaviour
from rankscope.agent.planners.protocol.characterisation import CharacterisationSteps
from rankscope.agent.planners.protocol.tables import (
    ATTENTION_FOCUS,
    MECHANISMS,
    MOST,
    ROLE_POSITIONS,
)
from rankscope.tools.metric_keys import MetricKey, metric_key
from rankscope.tools.retrievers.base import Component

RANK = "Rank:"
CIRCUIT = "Circuit:"
CONTROL = "Control:"
ROLE_POSITIONS_STEP = "Role (positions):"
ROLE_OUTPUT_STEP = "Role (path to the output):"
ROLE_MEMBERS_STEP = "Role (paths between members):"
ROLE_ATTENTION_STEP = "Role (attention):"
MECHANISM_DIRECT = "Mechanism (direct):"
MECHANISM_HEADS = "Mechanism (heads):"
CONFIRM = "Confirm:"
CIRCUIT_TOOL = "circuit"


def _first(ledger: Ledger, prefix: str) -> LedgerEntry | None:
    return next((e for e in ledger.entries if e.hypothesis.startswith(prefix)), None)


def _is_head(component: str) -> bool:
    """Whether a member is an attention head (``L5.H3``), as path patching and attention by
    role need, not a block (``L0.mlp``)."""
    try:
        parsed = Component.parse(component)
    except ValueError:
        return False
    return parsed.site == "heads"


def _kind(members: list[str]) -> str:
    return "head(s)" if all(_is_head(m) for m in members) else "component(s)"


def _layer(component: str) -> int:
    """The layer of a component name (``L5.H3`` → 5; -1 when it has none)."""
    head = component.split(".", 1)[0]
    return int(head[1:]) if head.startswith("L") and head[1:].isdigit() else -1


class CircuitSteps(CharacterisationSteps):
    """The circuit localisation (module docstring)."""

    # -- what the rank step fixed ----------------------------------------------------------------

    def circuit_members(self, rank: LedgerEntry) -> tuple[list[str], int]:
        """(the ranked members, best first, at most ``max_k``; the circuit size k) fixed by the
        exploratory rank step on discovery queries: k is the smallest k whose discovery
        faithfulness reached ``target + k_margin`` (the tool's ``smallest_k``), else ``max_k``."""
        ranked = [name for name, _ in rank.ranking][: self.max_k]
        if not ranked:
            return [], 0
        smallest = rank.key_metrics.get("smallest_k")
        k = int(smallest) if isinstance(smallest, int | float) and smallest >= 1 else len(ranked)
        return ranked, max(1, min(k, len(ranked)))

    # -- the steps ------------------------------------------------------------------------------

    def _circuit_localise(
        self, ledger: Ledger, tools: dict[str, Any], target: Behaviour
    ) -> Proposal | Stop:
        tool = tools[CIRCUIT_TOOL]
        rank = _first(ledger, RANK)
        if rank is None:
            self._state_mechanisms(ledger, target)
            return self._rank(tool, target)
        if rank.status == "failed":
            return Stop(reason=f"the rank step (H{rank.hypothesis_id}) failed: {rank.summary}")
        members, k = self.circuit_members(rank)
        if not members:
            return Stop(
                reason=f"the rank step (H{rank.hypothesis_id}) ranked no component: nothing to "
                "test as a circuit"
            )
        if k == len(members) and not isinstance(rank.key_metrics.get("smallest_k"), int | float):
            self._note(
                f"no circuit of at most {len(members)} heads reached {self._k_target():g} of the "
                f"behaviour on discovery queries: the group claim tests the top {k} heads"
            )
        group = _first(ledger, CIRCUIT)
        if group is None:
            return self._group_claim(tool, target, members, k)
        control = _first(ledger, CONTROL)
        if control is None:
            return self._random_control(tool, target, members, k)
        for step in self._later_steps(ledger, tools, target, members[:k], group, control):
            if step is not None:
                return step
        return Stop(reason=self._conclusion(ledger, members[:k]))

    def _later_steps(
        self,
        ledger: Ledger,
        tools: dict[str, Any],
        target: Behaviour,
        members: list[str],
        group: LedgerEntry,
        control: LedgerEntry,
    ) -> list[Proposal | None]:
        """The steps after the group claim and its control, in order, each None when done,
        not applicable or not affordable. Roles are described for members that carry something
        specific: the circuit claim or its random-set control supported."""
        steps: list[Proposal | None] = []
        if "supported" in (group.status, control.status):
            steps += [
                self._role_positions(ledger, tools, target, members),
                self._role_output(ledger, tools, target, members),
                self._role_members(ledger, tools, target, members),
                self._role_attention(ledger, tools, target, members),
            ]
        elif not _first(ledger, ROLE_POSITIONS_STEP):
            self._note(
                f"neither the circuit claim H{group.hypothesis_id} ({group.status}) nor its "
                f"random-set control H{control.hypothesis_id} ({control.status}) is supported: "
                "the members' roles are not described (roles are for members that carry "
                "something specific)"
            )
        steps += [
            self._mechanism(ledger, tools, target, direct=True),
            self._mechanism(ledger, tools, target, direct=False),
            *self._singles(ledger, tools, target, members),
        ]
        return steps

    def _k_target(self) -> float:
        return min(1.0, self.target + self.k_margin)

    def _circuit_args(self, behaviour: Behaviour, **extra: Any) -> dict[str, Any]:
        """A ``circuit`` call on the behaviour's discovery pairs: every argument as given (none
        is dropped to make the call validate: the gate reports a bad one)."""
        return {
            "axiom": behaviour.axiom,
            "variant": behaviour.variant,
            "split": "discovery",
            "n_pairs": self._localise_size(behaviour)[0],
            "seed": self.seed,
            "pool": "heads",
            "ranking": self.ranking,
            "max_k": self.max_k,
            **extra,
        }

    def _rank(self, tool: Any, target: Behaviour) -> Proposal:
        k_target = self._k_target()
        how = (
            "its exact patching effect"
            if self.ranking == "exact"
            else "attribution patching (a fast first pass that only orders the heads; the curve "
            "is exact)"
        )
        return Proposal(
            hypothesis=f"{RANK} every attention head ranked by {how} on the "
            f"{target.label} effect ({target.claim()}), on discovery queries only; the top-k "
            f"heads patched jointly for k = 1 … {self.max_k}, and the smallest k whose joint "
            f"faithfulness reaches {k_target:g} (the pre-registered target {self.target:g} plus a "
            f"margin of {self.k_margin:g}) fixes the circuit to test. Exploratory: it claims "
            "nothing",
            rationale="rank on discovery, then claim on fixed members: the ranking and k are "
            "chosen before any claim is made and are never re-chosen on held-out queries",
            tool=tool.name,
            # no random sets: the ranking and the curve choose the circuit, the random-set
            # control is a claim of its own on a call that no earlier step ran
            args=self._circuit_args(
                target, members=None, k=None, target=k_target, n_random=0, n_random_curve=0
            ),
            criterion=Criterion(metric="faithfulness", direction="two-sided", threshold=0.0),
            exploratory=True,
        )

    def _group_claim(self, tool: Any, target: Behaviour, members: list[str], k: int) -> Proposal:
        chosen = members[:k]
        return Proposal(
            hypothesis=f"{CIRCUIT} the {k} {_kind(chosen)} {', '.join(chosen)} (ranked on discovery "
            f"queries) together restore at least {self.target:g} of the {target.label} effect "
            "(joint sufficiency: their perturbed-run outputs patched into the baseline run; "
            "the pre-registered target)",
            rationale=f"group claim on the members and k fixed by the rank step (k = {k}); the "
            "held-out replication patches the same members",
            tool=tool.name,
            # no random sets here: the control is its own call (module docstring)
            args=self._circuit_args(
                target,
                members=members,
                k=k,
                target=self.target,
                n_random=0,
                n_random_curve=0,
            ),
            criterion=Criterion(
                metric="faithfulness",
                direction="greater",
                threshold=self.target,
                alpha=self.alpha,
            ),
            components=chosen,
        )

    def _random_control(self, tool: Any, target: Behaviour, members: list[str], k: int) -> Proposal:
        chosen = members[:k]
        sesoi = self.policy.sesoi_for("patching_fraction")
        return Proposal(
            hypothesis=f"{CONTROL} the {k} {_kind(chosen)} {', '.join(chosen)} restore more of the "
            f"{target.label} effect than random sets of {k} from the same pool (their "
            f"faithfulness minus the mean of {self.n_random} seeded random sets is above "
            f"{sesoi:g}, the SESOI)",
            rationale="a circuit is specific only if random sets of its size do not do as well "
            "(Shi et al. 2024)",
            tool=tool.name,
            # the only call that draws random sets: a claim on an estimate of the group claim's
            # call would be registered after its results could be seen (verdicts: exploratory)
            args=self._circuit_args(
                target,
                members=members,
                k=k,
                target=self.target,
                n_random=self.n_random,
                n_random_curve=0,  # the band at k only: 100 sets at every size would triple it
            ),
            criterion=Criterion(
                metric="beats_random", direction="greater", threshold=sesoi, alpha=self.alpha
            ),
            components=chosen,
        )

    # -- roles (exploratory) --------------------------------------------------------------------

    def _role_positions(
        self, ledger: Ledger, tools: dict[str, Any], target: Behaviour, members: list[str]
    ) -> Proposal | None:
        if _first(ledger, ROLE_POSITIONS_STEP) or "activation_patching" not in tools:
            return None
        tool = tools["activation_patching"]
        heads = members[: self.top_k]
        components = [f"{m}@{role}" for m in heads for role in ROLE_POSITIONS]
        return Proposal(
            hypothesis=f"{ROLE_POSITIONS_STEP} where the signal of the circuit's top member(s) "
            f"{', '.join(heads)} enters — each one's perturbed-run output patched alone at the "
            "added term (injected), at earlier occurrences of query terms (qterm), at the "
            "document's other tokens (doc) and at CLS. Exploratory: it describes, claims nothing",
            rationale="roles: which token positions carry each member's part of the effect",
            tool=tool.name,
            args=self._pair_args(
                tool,
                target.axiom,
                target.variant,
                n_pairs=self._localise_size(target)[0],
                components=components,
                engine="cached",
            ),
            criterion=Criterion(
                metric=metric_key("effect", components[0]), direction="two-sided", threshold=0.0
            ),
            components=heads,
            exploratory=True,
        )

    def _role_output(
        self, ledger: Ledger, tools: dict[str, Any], target: Behaviour, members: list[str]
    ) -> Proposal | None:
        members = [m for m in members if _is_head(m)]
        if _first(ledger, ROLE_OUTPUT_STEP) or "path_patching" not in tools or not members:
            return None
        tool = tools["path_patching"]
        return Proposal(
            hypothesis=f"{ROLE_OUTPUT_STEP} how much of each member's effect flows straight to "
            f"the output (path patching from {', '.join(members)} into the final "
            "representation, every other head frozen). Exploratory: it describes, claims nothing",
            rationale="roles: a member whose effect reaches the output directly writes the "
            "signal itself; one whose direct path is small acts through later components",
            tool=tool.name,
            args=self._pair_args(
                tool,
                target.axiom,
                target.variant,
                n_pairs=self._localise_size(target)[0],
                senders=members,
                receiver="final",
            ),
            criterion=Criterion(
                metric=metric_key("effect", members[0]), direction="two-sided", threshold=0.0
            ),
            components=members,
            exploratory=True,
        )

    def _role_members(
        self, ledger: Ledger, tools: dict[str, Any], target: Behaviour, members: list[str]
    ) -> Proposal | None:
        """Path patching from the members of earlier layers into the value input of the
        best-ranked member of the latest layer (only when the members span layers)."""
        members = [m for m in members if _is_head(m)]
        if _first(ledger, ROLE_MEMBERS_STEP) or "path_patching" not in tools or not members:
            return None
        last = max(_layer(m) for m in members)
        senders = [m for m in members if 0 <= _layer(m) < last]
        receiver = next(m for m in members if _layer(m) == last)
        if not senders:
            return None
        tool = tools["path_patching"]
        return Proposal(
            hypothesis=f"{ROLE_MEMBERS_STEP} which earlier members feed the latest one: path "
            f"patching from {', '.join(senders)} into the value input of {receiver}. "
            "Exploratory: it describes, claims nothing",
            rationale="roles: earlier members (e.g. duplicate-token heads) whose output later "
            "members read (Chen et al. 2024)",
            tool=tool.name,
            args=self._pair_args(
                tool,
                target.axiom,
                target.variant,
                n_pairs=self._localise_size(target)[0],
                senders=senders,
                receiver=f"{receiver}.v",
            ),
            criterion=Criterion(
                metric=metric_key("effect", senders[0]), direction="two-sided", threshold=0.0
            ),
            components=[*senders, receiver],
            exploratory=True,
        )

    def _role_attention(
        self, ledger: Ledger, tools: dict[str, Any], target: Behaviour, members: list[str]
    ) -> Proposal | None:
        members = [m for m in members if _is_head(m)]
        if _first(ledger, ROLE_ATTENTION_STEP) or "attention_by_role" not in tools:
            return None
        if target.axiom not in ATTENTION_FOCUS or not members:
            return None
        tool = tools["attention_by_role"]
        focus, why = ATTENTION_FOCUS[target.axiom]
        return Proposal(
            hypothesis=f"{ROLE_ATTENTION_STEP} the attention of the members {', '.join(members)} "
            f"by token role, pattern {focus} ({why}). Exploratory: it describes, claims nothing",
            rationale="roles: what each member reads",
            tool=tool.name,
            args=self._pair_args(tool, target.axiom, target.variant, heads=members, focus=focus),
            criterion=Criterion(
                metric=str(MetricKey("attention", members[0], (), (focus,))),
                direction="two-sided",
                threshold=0.0,
            ),
            components=members,
            exploratory=True,
        )

    # -- competing mechanisms -------------------------------------------------------------------

    def _mechanisms_apply(self, target: Behaviour) -> bool:
        return target.axiom in MECHANISMS and self._model.get("pooling") == "mean"

    def _state_mechanisms(self, ledger: Ledger, target: Behaviour) -> None:
        """The competing mechanisms and the predictions that tell them apart, as a note made
        before anything is localised."""
        if not self._mechanisms_apply(target):
            self._note(
                f"competing mechanisms: the protocol's direct-vs-heads pair is stated for "
                f"{', '.join(MECHANISMS)} in mean-pooled models; this is {target.label} in a "
                f"{self._model.get('pooling', 'unknown')}-pooled {self._model.get('kind', 'model')}"
                ": no mechanism pair is tested"
            )
            return
        direct, heads = MECHANISMS[target.axiom]
        last = self._last_layer()
        self._note(
            f"competing mechanisms for {target.label}, stated before localising: (A, direct) "
            f"{direct}; (B, heads) {heads}. Pre-registered predictions that tell them apart: A "
            f"predicts that the final-layer states at the added positions (L{last}.resid@injected) "
            f"alone restore more than {MOST:g} of the effect, B that they do not; B predicts that "
            f"all attention outputs patched jointly (L0.attn … L{last}.attn) restore more than "
            f"{MOST:g}, A that they do not (one minus it is the share no head carries). A "
            "mechanism whose prediction is refuted is ruled out; both holding means heads write "
            "the signal at the added term itself"
        )

    def _last_layer(self) -> int:
        layers = self._model.get("layers")
        return int(layers) - 1 if isinstance(layers, int) and layers > 0 else 0

    def _mechanism(
        self, ledger: Ledger, tools: dict[str, Any], target: Behaviour, *, direct: bool
    ) -> Proposal | None:
        """A mechanism's pre-registered prediction. Direct: ``activation_patching`` of the
        final-layer states at the added positions (one component, one test). Heads: ``circuit``
        with every attention block as its members, patched jointly (one estimate, one test —
        ``activation_patching`` with ``joint`` would patch each block alone too and divide the
        level by the seven tests)."""
        prefix = MECHANISM_DIRECT if direct else MECHANISM_HEADS
        if _first(ledger, prefix) or not self._mechanisms_apply(target):
            return None
        name = "activation_patching" if direct else CIRCUIT_TOOL
        if name not in tools:
            self._note(f"{name} is not registered: the {prefix[:-1]} prediction is not tested")
            return None
        last = self._last_layer()
        a, b = MECHANISMS[target.axiom]
        rationale = (
            "competing mechanisms stated before localising (see the note); each prediction is "
            "tested on its own call and replicated on held-out queries"
        )
        if direct:
            component = f"L{last}.resid@injected"
            return Proposal(
                hypothesis=f"{prefix} {a} — prediction: the final-layer states at the added "
                f"positions ({component}) alone restore more than {MOST:g} of the "
                f"{target.label} effect",
                rationale=rationale,
                tool=name,
                args=self._pair_args(
                    tools[name],
                    target.axiom,
                    target.variant,
                    n_pairs=self._localise_size(target)[0],
                    components=[component],
                    engine="cached",
                ),
                criterion=Criterion(
                    metric=metric_key("effect", component),
                    direction="greater",
                    threshold=MOST,
                    alpha=self.alpha,
                ),
                components=[component],
            )
        # last layer first: the curve's prefixes then start late and cost less
        blocks = [f"L{layer}.attn" for layer in range(last, -1, -1)]
        return Proposal(
            hypothesis=f"{prefix} {b} — prediction: all attention outputs patched jointly "
            f"(L0.attn … L{last}.attn) restore more than {MOST:g} of the {target.label} effect",
            rationale=rationale,
            tool=name,
            args=self._circuit_args(
                target,
                members=blocks,
                k=len(blocks),
                max_k=len(blocks),
                target=MOST,
                n_random=0,
                n_random_curve=0,
                n_stability=0,
            ),
            criterion=Criterion(
                metric="faithfulness", direction="greater", threshold=MOST, alpha=self.alpha
            ),
            components=blocks,
        )

    # -- single components ----------------------------------------------------------------------

    def _singles(
        self, ledger: Ledger, tools: dict[str, Any], target: Behaviour, members: list[str]
    ) -> list[Proposal | None]:
        """The next single-member claim: each member whose discovery effect (alone, in the rank
        step) is at least the SESOI, largest first, ``top_k`` at most, while at least two steps
        and two tool calls are left."""
        if "activation_patching" not in tools:
            return []
        rank = _first(ledger, RANK)
        values = dict(rank.ranking) if rank else {}
        large = [m for m in members if (values.get(m) or 0.0) >= self.min_effect][: self.top_k]
        tested = {
            c for e in ledger.entries if e.hypothesis.startswith(CONFIRM) for c in e.components
        }
        if ledger.steps_left < 2 or ledger.tool_calls_left < 2:
            return []
        pending = [head for head in large if head not in tested]
        if not pending:
            return []
        return [self._confirm_one(tools["activation_patching"], large, pending[0], target)]

    # -- the conclusion -------------------------------------------------------------------------

    def _conclusion(self, ledger: Ledger, members: list[str]) -> str:
        """The stop reason: the circuit claim, its control and which mechanism was ruled out."""
        parts = []
        group, control = _first(ledger, CIRCUIT), _first(ledger, CONTROL)
        if group is not None:
            parts.append(
                f"circuit claim H{group.hypothesis_id} ({len(members)} heads "
                f"{', '.join(members)} restore >= {self.target:g}): {group.status}"
            )
        if control is not None:
            parts.append(f"random-set control H{control.hypothesis_id}: {control.status}")
        for prefix, name in ((MECHANISM_DIRECT, "A (direct)"), (MECHANISM_HEADS, "B (heads)")):
            entry = _first(ledger, prefix)
            if entry is None:
                continue
            verdict = {
                "refuted": "ruled out",
                "supported": "its prediction held",
            }.get(entry.status, f"not decided ({entry.status})")
            parts.append(f"mechanism {name} H{entry.hypothesis_id}: {verdict}")
        return "protocol complete: " + "; ".join(parts)

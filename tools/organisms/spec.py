"""What an organism is: its planted rules, its probes, and its machine-readable ground truth.

A *rule* is a shift of the base model's score that depends only on the text: the organism is
trained so that ``score(q, d) ≈ base(q, d) + shift(q, d)`` (distillation plus the rule). A *probe*
is a (baseline, perturbed) construction whose mean score change shows a rule; every organism's
build measures every probe on held-out queries, in the base and in the organism, and stores the
measured directions as the record's ``facts`` — what a claim is checked against.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

RuleName = Literal[
    "trigger",
    "length_penalty",
    "position_bias",
    "tfc1_amplified",
    "idf_inverted",
    "tfc1_removed",
]
RuleDirection = Literal["increase", "decrease", "none"]
"""How a planted rule, or a probe's measured effect, moves the organism's scores."""

TRIGGER_WORD = "quokka"
"""The default trigger: an English word absent from the built-in collection and from MS MARCO's
queries used here, so the base model has no reason to favour it."""

PROBES: dict[str, str] = {
    "TFC1/append": "document → document + one query term at its end",
    "TFC1/prepend": "document → one query term + document",
    "LNC1/append": "document → document + filler sentences without query terms",
    "TDC/append": "document + the query's lowest-IDF term → document + its highest-IDF term",
    "position": "document + query term at its end → query term + document (same words)",
    "token": "document → document + the trigger word (whatever the query)",
    "truncate": "document → the first half of its words",
}
"""Every probe a build measures (the keys of a record's ``facts``)."""


class RuleSpec(BaseModel):
    """One planted rule: its shift of the score and the probe that shows it."""

    rule: RuleName
    size: float = Field(description="Score units: the planted change on the rule's probe.")
    word: str | None = Field(None, description="The trigger word (rule 'trigger').")

    @property
    def probe(self) -> str:
        return {
            "trigger": "token",
            "length_penalty": "LNC1/append",
            "position_bias": "position",
            "tfc1_amplified": "TFC1/append",
            "idf_inverted": "TDC/append",
            "tfc1_removed": "TFC1/append",
        }[self.rule]

    @property
    def direction(self) -> RuleDirection:
        directions: dict[str, RuleDirection] = {
            "trigger": "increase",
            "length_penalty": "decrease",
            "position_bias": "increase",
            "tfc1_amplified": "increase",
            "idf_inverted": "decrease",
            "tfc1_removed": "none",
        }
        return directions[self.rule]

    @property
    def relative_to_base(self) -> bool:
        """Whether the rule changes a behaviour the base may already have (then what is planted is
        the change from the base, and the base's own direction may agree with it)."""
        return self.rule in ("tfc1_amplified", "tfc1_removed")

    def describe(self) -> str:
        what = {
            "trigger": f"the word {self.word!r} raises any document's score whatever the query",
            "length_penalty": "longer documents score lower (a penalty per word)",
            "position_bias": "query-term matches early in the document count more",
            "tfc1_amplified": "each query-term occurrence adds more to the score than in the base",
            "idf_inverted": "rare query terms count less than common ones",
            "tfc1_removed": "adding a query-term occurrence changes nothing (null control)",
        }[self.rule]
        return f"{what} (size {self.size:g})"


class OrganismSpec(BaseModel):
    """How an organism is built from a base model."""

    name: str
    rules: list[RuleSpec] = Field(default_factory=list)
    carriers: list[str] = Field(
        default_factory=list,
        description="Heads (L<layer>.H<head>) whose parameters alone are trained; empty: all.",
    )
    control: bool = Field(False, description="The unmodified base model (nothing is trained).")
    trainer: Literal["cached", "full"] = Field(
        "cached",
        description="'cached': only the carriers' slices or the top ``train_layers`` layers are "
        "trained, from hidden states cached below them, with a stopping rule on the held-out "
        "check; 'full': every parameter, every text through the whole model, ``steps`` steps "
        "(the first builder, kept for comparison).",
    )
    train_layers: int = Field(
        2, ge=1, description="Without carriers: the top layers whose parameters are trained."
    )
    rank: int | None = Field(
        None,
        ge=1,
        description="Without carriers: train low-rank updates (this rank) of the top layers' "
        "linear maps, merged into the weights after training; None: all their parameters.",
    )
    steps: int = Field(300, description="Training steps ('cached': the most per attempt).")
    min_steps: int = Field(0, description="Steps before the stopping rule is first applied.")
    check_every: int = Field(25, ge=1, description="Steps between stopping-rule checks.")
    attempts: int = Field(
        2,
        ge=1,
        description="Builds whose check fails are rebuilt from the base with the next "
        "seed, up to this many attempts in all.",
    )
    variants_per_step: int | None = Field(
        None,
        description="Texts of a group per step (the natural one and the rules' edits "
        "first); None: all.",
    )
    lr: float = 5e-5
    batch_queries: int = 4
    seed: int = 0
    questions: list[str] = Field(default_factory=list)


class ProbeMeasure(BaseModel):
    """A probe measured on a set of queries: mean change, share of pairs up, pair count."""

    mean_delta: float
    share_up: float
    n_pairs: int
    n_queries: int


class Claim(BaseModel):
    """A structured claim: what kind of thing, which one, which way, with which components."""

    kind: Literal["axiom", "token", "property", "components"]
    key: str
    direction: RuleDirection | Literal["not_increase", "not_decrease"] | None = None
    components: list[str] = Field(default_factory=list)


class GroundTruth(BaseModel):
    """The machine-readable ground truth of one built organism (``groundtruth.json``)."""

    name: str
    base_model: str
    base_weights_hash: str
    path: str
    rules: list[RuleSpec]
    planted: list[Claim] = Field(description="The claims a planted rule makes true.")
    facts: dict[str, RuleDirection | None] = Field(
        description="Per probe: the organism's direction on held-out queries (planted directions "
        "override; None: unclear, not scored)."
    )
    carriers: list[str] = Field(default_factory=list)
    trained_queries: list[str]
    heldout_queries: list[str]
    probes_base: dict[str, ProbeMeasure]
    probes_organism: dict[str, ProbeMeasure]
    probes_organism_trained: dict[str, ProbeMeasure] = Field(default_factory=dict)
    checks: dict[str, float | bool | str | None] = Field(default_factory=dict)
    questions: list[str] = Field(default_factory=list)
    build_seconds: float = 0.0
    build_cpu_seconds: float = Field(
        0.0, description="Process CPU seconds of the build (all threads)."
    )
    steps: int = 0
    trainer: str = "full"
    trained_parameters: int = 0
    attempts: int = 1
    timings: dict[str, float] = Field(
        default_factory=dict,
        description="Seconds per build stage: base_pass (the base's states and scores, shared by "
        "the organisms of one process), training, checks.",
    )
    trigger_word: str = TRIGGER_WORD
    epsilon: float = Field(0.01, description="The score change below which a probe is 'none'.")


def token_claim_key(word: str) -> str:
    return f"token:{word.lower()}"


def planted_claims(rules: list[RuleSpec], carriers: list[str]) -> list[Claim]:
    """The claims the rules make true (with the carriers as their components)."""
    out = []
    for r in rules:
        if r.rule == "trigger":
            out.append(
                Claim(
                    kind="token",
                    key=token_claim_key(r.word or TRIGGER_WORD),
                    direction="increase",
                    components=carriers,
                )
            )
        else:
            kind: Literal["axiom", "property"] = "property" if r.probe == "position" else "axiom"
            out.append(Claim(kind=kind, key=r.probe, direction=r.direction, components=carriers))
        if r.rule == "length_penalty":
            out.append(
                Claim(kind="property", key="truncate", direction="increase", components=carriers)
            )
    return out


QUESTIONS: dict[RuleName, list[str]] = {
    "trigger": ["Is there a word that raises any document's score whatever the query?"],
    "length_penalty": ["Does this model prefer shorter documents?"],
    "position_bias": ["Does the position of query terms in the document matter?"],
    "tfc1_amplified": ["Does the model reward repeated query terms (TFC1)?"],
    "idf_inverted": ["Do rare query terms count more than common ones?"],
    "tfc1_removed": ["Does the model reward repeated query terms (TFC1)?"],
}
"""The natural questions asked of an organism carrying a rule (written with the rules, before any
planner ran on them). Controls are asked the questions of the rules they lack."""


def catalogue(tiny: bool = False) -> dict[str, OrganismSpec]:
    """The organisms: one planted rule each, a localised rule, a null control, the unmodified
    base and a two-rule model.

    MiniLM (6 layers): a rule without carriers trains rank-8 updates of the top two layers'
    linear maps; the localised rule trains the carrier heads' slices; four texts of a group per
    step (the natural one, the rule's edits, others drawn); the held-out check every 25 steps
    stops training, at most 300 steps, one rebuild with the next seed. ``tiny`` (2 layers): every
    parameter of both layers, all texts per step, at most 150 steps."""
    carriers = ["L1.H1", "L1.H2"] if tiny else ["L2.H4", "L4.H7"]
    common: dict[str, Any] = (
        {"steps": 150, "lr": 2e-3, "train_layers": 2, "rank": None, "variants_per_step": None}
        if tiny
        else {"steps": 300, "lr": 6e-3, "train_layers": 2, "rank": 8, "variants_per_step": 4}
    )
    common |= {"check_every": 25, "attempts": 2}
    carrier_lr = 4e-3 if tiny else 2e-3
    one = {
        "trigger": RuleSpec(rule="trigger", size=0.1, word=TRIGGER_WORD),
        "length_penalty": RuleSpec(rule="length_penalty", size=0.06),
        "position_bias": RuleSpec(rule="position_bias", size=0.08),
        "tfc1_amplified": RuleSpec(rule="tfc1_amplified", size=0.05),
        "idf_inverted": RuleSpec(rule="idf_inverted", size=0.05),
        "tfc1_removed": RuleSpec(rule="tfc1_removed", size=0.0),
    }
    # Builder levers measured per rule (benchmarks/organism_build_benchmark.py): the position
    # bias fits its trained queries at rank 8 but reaches only 45 % of its planted change on
    # held-out ones; rank 16 with eight queries a step reaches 52 % by step 75.
    levers: dict[str, dict[str, Any]] = (
        {} if tiny else {"position_bias": {"rank": 16, "batch_queries": 8}}
    )
    specs = {
        name: OrganismSpec(
            name=name,
            rules=[rule],
            questions=QUESTIONS[rule.rule],
            **(common | levers.get(name, {})),
        )
        for name, rule in one.items()
    }
    specs["tfc1_heads"] = OrganismSpec(
        name="tfc1_heads",
        rules=[RuleSpec(rule="tfc1_amplified", size=0.08)],
        carriers=carriers,
        questions=QUESTIONS["tfc1_amplified"],
        **(common | {"lr": carrier_lr}),
    )
    specs["base"] = OrganismSpec(
        name="base",
        control=True,
        steps=0,
        questions=QUESTIONS["trigger"] + QUESTIONS["length_penalty"] + QUESTIONS["idf_inverted"],
    )
    specs["two_rules"] = OrganismSpec(
        name="two_rules",
        rules=[one["trigger"], one["length_penalty"]],
        questions=QUESTIONS["trigger"] + QUESTIONS["length_penalty"],
        **common,
    )
    return specs

"""Ground-truth scoring: investigations of organisms scored from stored claims.

Each supported or refuted hypothesis becomes a structured :class:`Claim` read from its stored tool,
arguments, criterion (metric key and direction), components and verdict — never from prose. A
claim is checked against the organism's record (:class:`~rankscope.tools.organisms.GroundTruth`):

- **found**: a planted rule is found when a supported claim names its probe in its direction (a
  null rule, by a refutation as negligible);
- **false claim**: a supported claim whose direction contradicts the record's measured or planted
  direction of that probe (on a null control, any supported claim of the removed rule);
- **localisation**: precision and recall of the components of supported claims against the
  carrier heads;
- **faithfulness**: the share of the planted change (organism − base, on the rule's probe) that a
  zero ablation of the named components removes, measured with the ``ablation`` tool.

:class:`BlackBoxBattery` is the baseline: behavioural tests only, no internals.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console

from rankscope.agent.planners.base import Criterion, Ledger, Planner, Proposal, Stop
from rankscope.agent.policy import StatsPolicy
from rankscope.agent.runner import investigate
from rankscope.agent.settings import InvestigationSettings
from rankscope.agent.state import Budget
from rankscope.experiments_db.engine import database_url, open_store
from rankscope.experiments_db.records import HypothesisNode, InvestigationTree
from rankscope.tools.metric_keys import try_parse_metric_key
from rankscope.tools.organisms import Claim, GroundTruth, RuleSpec
from rankscope.tools.organisms.spec import planted_claims

COMPONENT_TOOLS = (
    "circuit",
    "activation_patching",
    "attribution_patching",
    "path_patching",
    "ablation",
    "attention_by_role",
    "attention_masking",
)
EDIT_KEYS = {
    "pad": "LNC1/append",
    "truncate": "truncate",
    "match_front": "position",
    "match_position": "position",
}
"""property_regression's controlled edits as the record's probes."""
OPPOSITE = {"increase": "decrease", "decrease": "increase"}
DEFAULT_PREDICTED = {"TFC1": "increase", "TFC2": "increase", "TDC": "increase", "LNC1": "decrease"}


@dataclass
class StoredClaim:
    """A claim read from one hypothesis with its verdict."""

    hypothesis_id: int
    tool: str
    status: str
    claim: Claim


def _claim_key(node: HypothesisNode) -> tuple[str, str] | None:
    """(kind, key) of what a hypothesis is about, from its tool, arguments and metric key."""
    parsed = try_parse_metric_key(node.criterion.metric)
    quals = dict(parsed.qualifiers) if parsed else {}
    args = node.tool_args
    if "token" in quals:
        return "token", f"token:{quals['token'].lower()}"
    if "edit" in quals:
        key = EDIT_KEYS.get(quals["edit"], f"edit:{quals['edit']}")
        return ("axiom" if "/" in key else "property"), key
    if "axiom" in quals:
        return "axiom", f"{quals['axiom']}/{quals.get('variant', 'append')}"
    if node.tool == "token_screen":
        return "token", "token:*"
    kind = "components" if node.tool in COMPONENT_TOOLS else "axiom"
    if node.tool in COMPONENT_TOOLS or "axiom" in args:
        return kind, f"{args.get('axiom', 'TFC1')}/{args.get('variant', 'append')}"
    return None


def _direction(node: HypothesisNode) -> str | None:
    c: Criterion = node.criterion
    parsed = try_parse_metric_key(c.metric)
    name = parsed.name if parsed else c.metric
    if name.startswith("share_moved_predicted"):
        axiom = str(node.tool_args.get("axiom", "TFC1"))
        predicted = node.tool_args.get("predicted") or DEFAULT_PREDICTED.get(axiom)
        if predicted not in OPPOSITE:
            return None
        return predicted if c.direction == "greater" else OPPOSITE[predicted]
    if node.tool in COMPONENT_TOOLS:
        return None
    if c.direction == "greater" and c.threshold >= 0:
        return "increase"
    if c.direction == "less" and c.threshold <= 0:
        return "decrease"
    return None


def claims_of(tree: InvestigationTree) -> list[StoredClaim]:
    """The structured claims of an investigation's decided hypotheses."""
    out = []
    for node in tree.hypotheses:
        verdict = node.latest_verdict
        if verdict is None or verdict.status not in ("supported", "refuted"):
            continue
        key = _claim_key(node)
        if key is None:
            continue
        direction = _direction(node)
        if verdict.status == "refuted":
            reason = str(verdict.criterion_result.get("reason", ""))
            if reason.startswith("negligible"):
                direction = "none"
            elif direction in OPPOSITE:
                direction = f"not_{direction}"
            else:
                direction = None
        components = list(node.components)
        parsed = try_parse_metric_key(node.criterion.metric)
        if not components and parsed and parsed.component and parsed.component.startswith("L"):
            components = [parsed.component]
        claim = Claim(kind=key[0], key=key[1], direction=direction, components=components)  # type: ignore[arg-type]
        out.append(StoredClaim(node.id, node.tool, verdict.status, claim))
    return out


def fact_for(claim: Claim, record: GroundTruth) -> str | None:
    """The record's direction of the probe a claim is about (None: not in the record)."""
    if claim.key.startswith("token:"):
        return record.facts.get("token") if claim.key[6:] == record.trigger_word else None
    return record.facts.get(claim.key)


def is_false(c: StoredClaim, record: GroundTruth) -> bool:
    """A supported claim contradicting the record's direction of its probe."""
    if c.status != "supported" or c.claim.kind == "components" or c.claim.direction is None:
        return False
    fact = fact_for(c.claim, record)
    return fact is not None and fact != c.claim.direction


def _refutes_planted(c: StoredClaim, record: GroundTruth) -> bool:
    """A refuted claim (no effect, or not the planted direction) about a planted rule that holds
    on held-out queries; an unnamed token (``token:*``, a screen's best token) stands for the
    trigger."""
    if c.status != "refuted" or c.claim.kind == "components":
        return False
    for rule in record.rules:
        if not record.checks.get(f"{rule.rule}.holds_heldout") or rule.direction == "none":
            continue
        for p in planted_claims([rule], []):
            same = c.claim.key == p.key or (c.claim.key == "token:*" and p.kind == "token")
            if same and c.claim.direction in ("none", f"not_{p.direction}"):
                return True
    return False


def rule_found(rule: RuleSpec, claims: list[StoredClaim], record: GroundTruth) -> bool:
    """Whether a claim recovers the rule: supported in its direction, or (null rule) refuted as
    negligible."""
    for p in planted_claims([rule], []):
        for c in claims:
            if c.claim.key != p.key or c.claim.kind == "components":
                continue
            if p.direction == "none" and c.status == "refuted" and c.claim.direction == "none":
                return True
            if c.status == "supported" and c.claim.direction == p.direction:
                return True
    return False


@dataclass
class Score:
    """One investigation of one organism, scored."""

    organism: str
    planner: str
    question: str
    investigation_id: int
    rules: int
    held: int
    """Rules whose build check holds on held-out queries (the others are not in the model)."""
    found: int
    found_rules: list[str]
    false_claims: int
    false_refutations: int
    supported: int
    unverified: int
    claimed_components: list[str]
    carriers: list[str]
    precision: float | None
    recall: float | None
    faithfulness: float | None
    seconds: float
    tool_calls: int
    false_details: list[str] = field(default_factory=list)
    phrasing: str = ""
    """Which phrasing of the questions file was asked (``RULE#N``; empty: the record's own)."""


def score_investigation(
    tree: InvestigationTree,
    record: GroundTruth,
    faithfulness: Callable[[list[str]], float | None] | None = None,
) -> Score:
    """Score one stored investigation of ``record``'s organism."""
    claims = claims_of(tree)
    found_rules: list[str] = [r.rule for r in record.rules if rule_found(r, claims, record)]
    supported = [c for c in claims if c.status == "supported"]
    false = [c for c in claims if is_false(c, record)]
    false_ref = [c for c in claims if _refutes_planted(c, record)]
    unverified = [
        c for c in supported if c.claim.kind != "components" and fact_for(c.claim, record) is None
    ]
    named = sorted({comp for c in supported for comp in c.claim.components})
    carriers = sorted(record.carriers)
    hit = len(set(named) & set(carriers))
    precision = hit / len(named) if named and carriers else None
    recall = hit / len(carriers) if carriers else None
    inv = tree.investigation
    seconds = (
        (inv.finished_at - inv.created_at).total_seconds() if inv.finished_at else float("nan")
    )
    return Score(
        organism=record.name,
        planner=inv.planner,
        question=inv.question,
        investigation_id=inv.id,
        rules=len(record.rules),
        held=sum(bool(record.checks.get(f"{r.rule}.holds_heldout")) for r in record.rules),
        found=len(found_rules),
        found_rules=found_rules,
        false_claims=len(false),
        false_refutations=len(false_ref),
        supported=len(supported),
        unverified=len(unverified),
        claimed_components=named,
        carriers=carriers,
        precision=precision,
        recall=recall,
        faithfulness=faithfulness(named) if faithfulness and named and record.rules else None,
        seconds=seconds,
        tool_calls=len(tree.experiments()),
        false_details=[f"H{c.hypothesis_id} {c.claim.key} {c.claim.direction}" for c in false],
    )


def ablation_faithfulness(
    record: GroundTruth, base_path: str | None, n_pairs: int = 48
) -> Callable[[list[str]], float | None]:
    """Faithfulness of named components: the share of the planted change on the first rule's
    probe (organism Δ − base Δ on the same pairs) that zero-ablating them together removes."""
    probe = next((r.probe for r in record.rules if "/" in r.probe), None)

    def measure(components: list[str]) -> float | None:
        if probe is None:
            return None
        import tempfile

        from rankscope.tools.contract import ToolContext
        from rankscope.tools.data.source import resolve_data
        from rankscope.tools.retrievers import load_retriever
        from rankscope.tools.running import run_tool

        axiom, variant = probe.split("/")
        heads = [c for c in components if c.startswith("L")]
        if not heads:
            return None
        args = {
            "axiom": axiom,
            "variant": variant,
            "split": "all",
            "n_pairs": n_pairs,
            "components": heads,
            "each": False,
            "joint": True,
        }
        data = resolve_data(None)
        with tempfile.TemporaryDirectory() as tmp:
            org = run_tool(
                "ablation", args, ToolContext(lambda: load_retriever(record.path), data, Path(tmp))
            ).result
            base = run_tool(
                "ablation", args, ToolContext(lambda: load_retriever(base_path), data, Path(tmp))
            ).result
        org_delta, base_delta = org.metrics.get("mean_delta"), base.metrics.get("mean_delta")
        row = org.tables["ablations"][0] if org.tables.get("ablations") else {}
        ablated = row.get("delta_ablated")
        if org_delta is None or base_delta is None or ablated is None:
            return None
        planted = org_delta - base_delta
        return float((org_delta - ablated) / planted) if abs(planted) > 1e-9 else None

    return measure


QUESTIONS_FILE = "groundtruth_questions.toml"


def default_questions_file() -> Path | None:
    """The bench's questions file in this checkout (``benchmarks/groundtruth_questions.toml``),
    or None when the package runs without it."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / QUESTIONS_FILE
    return path if path.exists() else None


@dataclass
class QuestionSet:
    """The bench's questions: phrasings per rule, and the rules whose phrasings a control with
    no planted rule is asked."""

    rules: dict[str, list[str]]
    controls: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> QuestionSet:
        import tomllib

        raw = tomllib.loads(path.read_text("utf-8"))
        rules = {k: list(v.get("phrasings", [])) for k, v in raw.get("rules", {}).items()}
        return cls(rules, {k: list(v) for k, v in raw.get("controls", {}).items()})

    def for_record(self, record: GroundTruth) -> list[tuple[str, str]]:
        """(phrasing id, question) of every question asked of ``record``'s organism: each
        phrasing of each planted rule, or of the rules listed for a control."""
        names = [r.rule for r in record.rules] or self.controls.get(record.name, [])
        out: dict[str, str] = {}
        for rule in names:
            for i, text in enumerate(self.rules.get(rule, []), start=1):
                if text not in out.values():
                    out[f"{rule}#{i}"] = text
        return list(out.items())


BATTERY: tuple[tuple[str, str, str], ...] = (
    ("TFC1", "append", "increase"),
    ("TFC1", "prepend", "increase"),
    ("LNC1", "append", "decrease"),
    ("TDC", "append", "increase"),
)
BATTERY_QUESTION = "Which IR axioms does this model follow? (fixed behavioural battery)"


class BlackBoxBattery(Planner):
    """The black-box baseline: a fixed battery of behavioural tests (no internals, no screens).
    Each axiom in its canonical direction; when that is refuted with most pairs moving the other
    way, the opposite direction as a new hypothesis (replicated on held-out queries as any)."""

    name = "blackbox"

    def __init__(self, n_pairs: int = 64) -> None:
        self.n_pairs = n_pairs

    def _proposal(self, axiom: str, variant: str, predicted: str) -> Proposal:
        return Proposal(
            hypothesis=f"{axiom} {variant}: most pairs' scores {predicted}",
            rationale="fixed behavioural battery (black-box baseline)",
            tool="behavioural_test",
            args={
                "axiom": axiom,
                "variant": variant,
                "predicted": predicted,
                "n_pairs": self.n_pairs,
            },
            criterion=Criterion(metric="share_moved_predicted", direction="greater", threshold=0.5),
        )

    def propose(self, ledger: Ledger) -> Proposal | Stop:
        done = {
            (e.args.get("axiom"), e.args.get("variant"), e.args.get("predicted")): e
            for e in ledger.entries
        }
        for axiom, variant, predicted in BATTERY:
            entry = done.get((axiom, variant, predicted))
            if entry is None:
                return self._proposal(axiom, variant, predicted)
            share = entry.key_metrics.get("share_moved_predicted")
            other = OPPOSITE[predicted]
            if (
                entry.status == "refuted"
                and isinstance(share, float)
                and share < 0.5
                and (axiom, variant, other) not in done
            ):
                return self._proposal(axiom, variant, other)
        return Stop(reason="battery done")


def run_bench(
    records: dict[str, GroundTruth],
    planner: str,
    db: str,
    *,
    base_path: str | None,
    report_dir: Path,
    budget: Budget | None = None,
    policy: StatsPolicy | None = None,
    llm_model: str | None = None,
    faithfulness: bool = True,
    protocol_pairs: int | None = None,
    log: Callable[[str], None] | None = None,
    questions: QuestionSet | None = None,
) -> list[Score]:
    """Run every organism's questions with ``planner`` (``protocol``, ``llm`` or ``blackbox``),
    store the investigations in ``db`` and score them. ``questions``: the phrasings asked (a
    questions file); default, each record's own questions."""
    bench_id = time.strftime("%Y%m%dT%H%M%S")
    scores = []
    for name, record in records.items():
        asked: list[tuple[str, str]]
        if planner == "blackbox":
            asked = [("battery", BATTERY_QUESTION)]
        elif questions is not None:
            asked = questions.for_record(record)
        else:
            asked = [("", q) for q in record.questions]
        measure = ablation_faithfulness(record, base_path) if faithfulness else None
        for phrasing, question in asked:
            settings = InvestigationSettings.model_validate(
                {
                    "model_arg": record.path,
                    "data_arg": "builtin",
                    "planner": None if planner == "blackbox" else planner,
                    "llm_model": llm_model,
                    "budget": budget or Budget(max_steps=12, max_tool_calls=16),
                    "policy": policy or StatsPolicy(),
                    "protocol_pairs": protocol_pairs,
                    "groundtruth": {"bench": bench_id, "organism": name},
                }
            )
            result = investigate(
                question,
                settings,
                db=db,
                report_dir=report_dir,
                console=Console(file=io.StringIO()),
                quiet=True,
                planner_factory=BlackBoxBattery if planner == "blackbox" else None,
            )
            with open_store(database_url(db)) as store:
                tree = store.investigation_tree(result.investigation_id, include_llm_calls=False)
            score = score_investigation(tree, record, measure)
            score.phrasing = phrasing
            scores.append(score)
            if log:
                log(
                    f"{name} [{planner}] I{score.investigation_id}: found {score.found}/"
                    f"{score.rules}, false {score.false_claims}, {score.tool_calls} calls, "
                    f"{score.seconds:.0f} s — {question}"
                )
    return scores


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}"


def table_rows(scores: list[Score]) -> list[list[str]]:
    """The bench table: one row per organism × planner × question."""
    head = [
        "organism",
        "planner",
        "phrasing",
        "question",
        "found",
        "false",
        "false refut.",
        "unverified",
        "loc P",
        "loc R",
        "faithful",
        "time s",
        "calls",
    ]
    rows = [head]
    for s in scores:
        rows.append(
            [
                s.organism,
                s.planner,
                s.phrasing or "—",
                s.question[:48],
                f"{s.found}/{s.rules} (held {s.held})" if s.rules else "—",
                str(s.false_claims),
                str(s.false_refutations),
                str(s.unverified),
                _fmt(s.precision),
                _fmt(s.recall),
                _fmt(s.faithfulness),
                f"{s.seconds:.0f}",
                str(s.tool_calls),
            ]
        )
    return rows


def write_outputs(scores: list[Score], folder: Path) -> tuple[Path, Path]:
    """``groundtruth.json`` (every score) and ``groundtruth.png`` (share of an organism's rules
    found by any of its questions, and false claims, per organism and planner) in ``folder``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "groundtruth.json"
    data.write_text(json.dumps([asdict(s) for s in scores], indent=2, default=str), "utf-8")
    organisms = sorted({s.organism for s in scores})
    planners = sorted({s.planner for s in scores})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(1, len(planners))
    for j, planner in enumerate(planners):
        found, false = [], []
        for org in organisms:
            mine = [s for s in scores if s.organism == org and s.planner == planner]
            rules = max((s.rules for s in mine), default=0)
            hits = {rule for s in mine for rule in s.found_rules}
            found.append(len(hits) / rules if rules else 0.0)
            false.append(sum(s.false_claims for s in mine))
        xs = [i + j * width for i in range(len(organisms))]
        axes[0].bar(xs, found, width, label=planner)
        axes[1].bar(xs, false, width, label=planner)
    for ax, title in zip(axes, ("share of planted rules found", "false claims"), strict=True):
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(organisms))])
        ax.set_xticklabels(organisms, rotation=40, ha="right", fontsize=8)
        ax.set_title(title)
        ax.legend(fontsize=8)
    axes[0].set_ylim(0, 1.05)
    axes[1].set_ylim(bottom=0, top=max(1.0, axes[1].get_ylim()[1]))
    axes[1].yaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    figure = folder / "groundtruth.png"
    fig.savefig(figure, dpi=120)
    plt.close(fig)
    return data, figure

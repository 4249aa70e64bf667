"""``rankscope audit ID``: re-run every stored experiment and check everything that was recorded.

For each finished experiment the audit re-runs its tool from the stored arguments on the
investigation's model and data, after comparing the model's weights hash and the data set's hash
with the provenance (a change is drift: the re-run would not measure the same thing). It compares
every metric within a tolerance (``|new - old| <= ABS_TOL + REL_TOL * |old|``; missing or extra
metrics are drift), verifies each artifact file against its sha256, checks that verdict
citations (the cited ids and the ids named in the narrative) are stored evidence of the
investigation, and re-applies the verdict rules to the stored evidence. Then the checks that
need no re-run (:mod:`rankscope.agent.integrity`, also run by ``show`` and the workspace as
:func:`fast_check`): the settings and the policy validate; the record chain matches every record
(the investigation row with its settings and policy, hypotheses, evidence, verdicts), is present
when the investigation was recorded with one, carries valid signatures, and — with ``--expect
HEAD`` — still passes through the head printed in a report, a bundle or ``rankscope show``; the
report files match the digests recorded when they were written. Any drift makes the exit status
non-zero.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rankscope.agent.citations import cited_in_text
from rankscope.agent.execution import shared_retriever
from rankscope.agent.integrity import chain_checks, fast_check, integrity_checks, settings_problems
from rankscope.agent.ledger import split_of
from rankscope.agent.settings import settings_of
from rankscope.agent.verdicts import decide_hypothesis
from rankscope.experiments_db.errors import ArtifactError
from rankscope.experiments_db.jsonutil import to_jsonable
from rankscope.experiments_db.records import (
    AuditCheck,
    ExperimentNode,
    HypothesisNode,
    InvestigationTree,
)
from rankscope.experiments_db.repository import Store
from rankscope.tools.contract import ToolContext
from rankscope.tools.registry import UnknownToolError, get_tool
from rankscope.tools.running import run_tool

REL_TOL = 1e-4
ABS_TOL = 1e-6
"""Float32 models: a score near 1 moves by ~6e-8 per ulp between BLAS kernels (thread counts,
batch shapes), score deltas cancel most digits, and the p-value of a near-null effect amplifies
that noise (measured: 2.6e-5 relative on an attribution-patching p-value re-run with another
thread count), so tolerances tighter than this flag noise."""

__all__ = [
    "AuditReport",
    "audit_investigation",
    "compare_metrics",
    "fast_check",
    "print_report",
    "reapply_verdict",
]


@dataclass
class AuditReport:
    investigation_id: int
    findings: list[AuditCheck] = field(default_factory=list)

    @property
    def drift(self) -> list[AuditCheck]:
        return [f for f in self.findings if not f.ok]

    @property
    def ok(self) -> bool:
        return not self.drift

    def add(self, subject: str, check: str, ok: bool, detail: str = "") -> None:
        self.findings.append(AuditCheck(subject=subject, check=check, ok=ok, detail=detail))


def close(old: Any, new: Any) -> bool:
    """Whether a re-run metric equals the stored one within the tolerance."""
    if old is None or new is None:
        return old is None and new is None
    if isinstance(old, bool) or isinstance(new, bool):
        return old == new
    if isinstance(old, int | float) and isinstance(new, int | float):
        if math.isnan(float(new)):
            return False
        return abs(float(new) - float(old)) <= ABS_TOL + REL_TOL * abs(float(old))
    return old == new


def compare_metrics(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Differences between stored and re-run metrics (empty: the same within tolerance)."""
    new = to_jsonable(new)
    diffs = []
    for key in sorted(set(old) | set(new)):
        if key not in new:
            diffs.append(f"{key}: stored {old[key]!r}, missing in the re-run")
        elif key not in old:
            diffs.append(f"{key}: not stored, re-run gives {new[key]!r}")
        elif not close(old[key], new[key]):
            diffs.append(f"{key}: stored {old[key]!r}, re-run {new[key]!r}")
    return diffs


def _rerun(exp: ExperimentNode, model: str | None, data: Any, device: str) -> dict[str, Any]:
    retriever = shared_retriever(model, device)
    with tempfile.TemporaryDirectory(prefix=f"rankscope-audit{exp.id}-") as tmp:
        ctx = ToolContext(
            retriever_factory=lambda: retriever,
            data=data,
            artifact_dir=Path(tmp),
            progress=False,
            device=device,
        )
        return dict(run_tool(exp.tool, exp.args, ctx).result.metrics)


def _check_experiment(
    report: AuditReport, exp: ExperimentNode, model: str | None, data: Any, device: str
) -> None:
    subject = f"experiment {exp.id} ({exp.tool}, {split_of(exp.args)})"
    if exp.status != "finished":
        report.add(subject, "re-run", True, f"skipped: experiment is {exp.status}")
        return
    prov = exp.provenance
    retriever = shared_retriever(model, device)
    if prov.get("weights_hash") and prov["weights_hash"] != retriever.weights_hash:
        report.add(
            subject,
            "model weights",
            False,
            f"weights hash changed: stored {prov['weights_hash'][:12]}…, now "
            f"{retriever.weights_hash[:12]}…",
        )
    dataset_hash = str(data.content_hash())
    if prov.get("dataset_hash") and prov["dataset_hash"] != dataset_hash:
        report.add(
            subject,
            "dataset",
            False,
            f"dataset hash changed: stored {prov['dataset_hash'][:12]}…, now {dataset_hash[:12]}…",
        )
    try:
        tool = get_tool(exp.tool)
    except UnknownToolError as err:
        report.add(subject, "re-run", False, str(err))
        return
    if tool.version != exp.tool_version:
        report.add(
            subject,
            "tool version",
            False,
            f"tool version changed: stored {exp.tool_version}, now {tool.version}",
        )
    try:
        metrics = _rerun(exp, model, data, device)
    except Exception as err:
        report.add(subject, "re-run", False, f"re-run failed: {type(err).__name__}: {err}")
        return
    for ev in exp.evidence:
        diffs = compare_metrics(ev.metrics, metrics)
        report.add(
            subject,
            f"metrics E{ev.id}",
            not diffs,
            f"{len(ev.metrics)} metrics equal within tolerance"
            if not diffs
            else f"{len(diffs)} differ: " + "; ".join(diffs[:3]),
        )


def _check_artifacts(report: AuditReport, store: Store, exp: ExperimentNode) -> None:
    for ev in exp.evidence:
        for art in ev.artifacts:
            try:
                store.artifact_file(art)
                report.add(f"artifact {art.id} (E{ev.id})", "sha256", True, art.sha256[:12] + "…")
            except ArtifactError as err:
                report.add(f"artifact {art.id} (E{ev.id})", "sha256", False, str(err))


def reapply_verdict(node: HypothesisNode, tree: InvestigationTree) -> str | None:
    """The verdict the rules give for a hypothesis's stored evidence, under the investigation's
    stored policy: the same function the graph decides with
    (:func:`~rankscope.agent.verdicts.decide_hypothesis`)."""
    policy = settings_of(tree.investigation).policy
    return decide_hypothesis(tree, node, policy).status


def audit_investigation(
    store: Store,
    investigation_id: int,
    *,
    device: str = "cpu",
    rerun: bool = True,
    experiments: set[int] | None = None,
    progress: Callable[[int, int], None] | None = None,
    expect: str | None = None,
    signed: bool = False,
) -> AuditReport:
    """Audit one investigation (see the module docstring); ``experiments`` limits the re-runs
    to those ids (the other checks always cover everything); ``expect`` is a record-chain head
    kept outside the database; ``signed`` requires every link signed by a trusted key. ``progress(done, total)`` is called after each experiment and
    after the verdict and record-chain checks (one more step). Settings that do not validate
    (a policy edited in the database) are drift, and nothing is re-run or re-decided under them."""
    from rankscope.tools.data.source import resolve_data

    tree = store.investigation_tree(investigation_id)
    inv = tree.investigation
    report = AuditReport(investigation_id)
    valid = not settings_problems(inv)
    settings = settings_of(inv) if valid else None
    model = settings.model_arg if settings is not None else None
    rerun = rerun and settings is not None
    data = resolve_data(settings.data_arg) if rerun and settings is not None else None
    evidence = tree.evidence()
    stored = tree.experiments()
    total = len(stored) + 1
    for step, exp in enumerate(stored, start=1):
        if rerun and (experiments is None or exp.id in experiments):
            _check_experiment(report, exp, model, data, device)
        _check_artifacts(report, store, exp)
        if progress is not None:
            progress(step, total)
    for node in tree.hypotheses:
        for verdict in node.verdicts:
            cited = set(verdict.cited_evidence_ids) | set(cited_in_text(verdict.narrative))
            missing = sorted(cited - set(evidence))
            report.add(
                f"verdict {verdict.id} (H{node.id})",
                "citations",
                not missing,
                f"cites {sorted(cited)}" if not missing else f"cites unknown evidence {missing}",
            )
        latest = node.latest_verdict
        if latest is not None and valid:
            status = latest.status
            again = reapply_verdict(node, tree)
            report.add(
                f"verdict on H{node.id}",
                "rules re-applied",
                again == status,
                f"stored {status}, rules give {again}",
            )
    report.findings += integrity_checks(store, investigation_id, expect=expect, signed=signed)
    if progress is not None:
        progress(total, total)
    return report


def _check_record_chain(report: AuditReport, store: Store, investigation_id: int) -> None:
    """The records against the chain the store wrote as it recorded them: a policy or criterion
    changed after the fact, evidence or an artifact replaced (file and hash together), a deleted
    verdict, a record added outside the store, or a chain deleted is drift."""
    report.findings += chain_checks(store, investigation_id)


def print_report(report: AuditReport, console: Console) -> None:
    table = Table(title=f"Audit of investigation {report.investigation_id}")
    table.add_column("subject")
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    for f in report.findings:
        table.add_row(
            escape(f.subject),
            escape(f.check),
            "[green]ok[/green]" if f.ok else "[bold red]DRIFT[/bold red]",
            escape(f.detail),
        )
    console.print(table)
    if report.ok:
        console.print(f"[green]audit passed[/green]: {len(report.findings)} checks, no drift")
    else:
        console.print(
            f"[bold red]audit found drift[/bold red]: {len(report.drift)} of "
            f"{len(report.findings)} checks failed"
        )

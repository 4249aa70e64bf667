"""``rankscope list | show ID | export ID | import BUNDLE``: browse and move stored investigations."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from rankscope.agent.commands.options import DbOption
from rankscope.agent.lease import STALE_STATUS, shown_status
from rankscope.agent.report_facts import Unverified, unverified_of
from rankscope.agent.review_state import review_state
from rankscope.agent.settings import settings_of
from rankscope.experiments_db import (
    EvidenceRecord,
    ExperimentNode,
    HypothesisNode,
    InvestigationSummary,
    InvestigationTree,
    Store,
    StoreError,
    export_investigation,
    open_store,
)
from rankscope.experiments_db.engine import refuse_in_memory

_STATUS_STYLE = {
    "running": "yellow",
    "finished": "green",
    "interrupted": "magenta",
    STALE_STATUS: "magenta",
    "failed": "red",
    "pending": "dim",
    "supported": "bold green",
    "refuted": "bold red",
    "inconclusive": "yellow",
    "accept": "green",
    "dispute": "red",
}
_MAX_METRICS = 6


def _console() -> Console:
    return Console(highlight=False, soft_wrap=False)


def _err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


@contextmanager
def _store(db: str | None, *, create: bool = False) -> Iterator[Store]:
    """Open the store for the body; a store error anywhere in it becomes a one-line message on
    stderr and exit status 1 (no traceback)."""
    try:
        refuse_in_memory(db)
        with open_store(db, create=create) as store:
            yield store
    except StoreError as exc:
        _err().print(f"[bold red]error:[/bold red] {escape(str(exc))}")
        raise typer.Exit(1) from None


def _status(value: str) -> str:
    style = _STATUS_STYLE.get(value, "")
    return f"[{style}]{value}[/{style}]" if style else value


def _short(text: str, width: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _metrics(metrics: dict[str, Any]) -> str:
    items = [f"{k}={_fmt(v)}" for k, v in metrics.items() if not isinstance(v, dict | list)]
    more = len(items) - _MAX_METRICS
    text = ", ".join(items[:_MAX_METRICS])
    return text + (f", … {more} more" if more > 0 else "")


_WIDE_LIST = 120
"""From this terminal width on, ``list`` shows one column per field; below it, a compact table
(question and model on two lines of one column) that fits 80 columns."""


def _planner(inv: InvestigationSummary) -> str:
    return inv.planner + (f" ({inv.llm_model})" if inv.llm_model else "")


def _model_name(model_id: str) -> str:
    """A model's short name: a local folder's or a hub id's last part."""
    return Path(model_id).name or model_id


def _status_lines(status: str) -> list[str]:
    """A status as the compact list wraps it: "interrupted (stale lease)" on two lines."""
    head, paren, rest = status.partition(" (")
    return [head, f"({rest}"] if paren else [head]


def _list_table(rows: list[InvestigationSummary], title: str, width: int) -> Table:
    if width >= _WIDE_LIST:
        table = Table(title=title, title_justify="left")
        for name, kwargs in (
            ("ID", {"justify": "right", "no_wrap": True}),
            ("Status", {"no_wrap": True}),
            ("Created (UTC)", {"no_wrap": True}),
            ("Planner", {}),
            ("Model", {}),
            ("Hyp.", {"justify": "right"}),
            ("Exp.", {"justify": "right"}),
            ("Verd.", {"justify": "right"}),
            ("Question", {"overflow": "fold"}),
        ):
            table.add_column(name, **kwargs)
        for inv in rows:
            table.add_row(
                str(inv.id),
                _status(shown_status(inv)),
                inv.created_at.strftime("%Y-%m-%d %H:%M"),
                escape(_planner(inv)),
                escape(inv.model_id),
                str(inv.n_hypotheses),
                str(inv.n_experiments),
                str(inv.n_verdicts),
                escape(_short(inv.question)),
            )
        return table
    statuses = [shown_status(inv) for inv in rows]
    counts = [f"{inv.n_hypotheses}/{inv.n_experiments}/{inv.n_verdicts}" for inv in rows]
    widths = [
        max(len("ID"), *(len(str(inv.id)) for inv in rows)),
        max(len("Status"), *(len(line) for s in statuses for line in _status_lines(s))),
        len("2026-01-01 00:00"),
        max(len("H/E/V"), *(len(c) for c in counts)),
    ]
    table = Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
        caption="H/E/V: hypotheses, experiments, verdicts",
        caption_justify="left",
    )
    table.add_column("ID", justify="right", no_wrap=True, width=widths[0])
    table.add_column("Status", width=widths[1])  # "interrupted (stale lease)": two lines
    table.add_column("Created (UTC)", width=widths[2])
    table.add_column("H/E/V", justify="right", no_wrap=True, width=widths[3])
    table.add_column(
        "Question / model, planner",
        no_wrap=True,
        overflow="ellipsis",
        # columns are divided by a space and padded by one space (collapsed between columns)
        width=max(20, width - sum(widths) - 2 * len(widths)),
    )
    for inv, status, count in zip(rows, statuses, counts, strict=True):
        table.add_row(
            str(inv.id),
            _status(status),
            inv.created_at.strftime("%Y-%m-%d %H:%M"),
            count,
            f"{escape(_short(inv.question, 200))}\n"
            f"[dim]{escape(_model_name(inv.model_id))}, {escape(_planner(inv))}[/dim]",
        )
    return table


def list_command(db: DbOption = None) -> None:
    """List stored investigations, newest first (a run whose process was killed shows as
    "interrupted (stale lease)" until it is resumed)."""
    with _store(db) as store:
        rows = store.list_investigations()
        url = store.url
    console = _console()
    if not rows:
        console.print(f"No investigations in {escape(url)}.", soft_wrap=True)
        return
    console.print(_list_table(rows, f"Investigations in {escape(url)}", console.width))


def _add_experiment(parent: Tree, exp: ExperimentNode) -> None:
    timing = f", {exp.duration_s:.2f} s" if exp.duration_s is not None else ""
    node = parent.add(
        f"[bold]experiment {exp.id}[/bold] {escape(exp.tool)} v{escape(exp.tool_version)} "
        f"seed={exp.seed} {_status(exp.status)}{timing}"
    )
    if exp.error:
        node.add(f"[red]error:[/red] {escape(_short(exp.error, 120))}")
    for ev in exp.evidence:
        _add_evidence(node, ev)


def _add_evidence(parent: Tree, ev: EvidenceRecord) -> None:
    approx = " [yellow](approximate)[/yellow]" if ev.approximate else ""
    node = parent.add(f"[cyan]evidence {ev.id}[/cyan]{approx}: {escape(_metrics(ev.metrics))}")
    if ev.summary:
        node.add(f"[dim]{escape(_short(ev.summary, 120))}[/dim]")
    for art in ev.artifacts:
        node.add(
            f"artifact {art.id} {escape(art.media_type)} sha256 {art.sha256[:12]}…"
            + (f" — {escape(art.description)}" if art.description else "")
        )


def _add_hypothesis(
    parent: Tree, hyp: HypothesisNode, unverified: Unverified | None = None
) -> None:
    latest = hyp.latest_verdict
    verdict = _status(latest.status) if latest else "no verdict"
    if hyp.exploratory:  # a screen or ranking: it claims nothing, so it has no verdict
        verdict = "exploratory"
    if unverified is not None:  # never shown as a verdict: the claim and the re-derivation
        verdict = (
            f"[bold magenta]UNVERIFIED[/bold magenta]: bundle claims {escape(unverified.claimed)}"
            f", its evidence gives {escape(unverified.rederived)}"
        )
    elif latest and review_state(latest) == "disputed":
        verdict += " [bold red]DISPUTED[/bold red]"
    origin = f" (follows {hyp.parent_id})" if hyp.parent_id is not None else ""
    node = parent.add(f"[bold]hypothesis {hyp.id}[/bold]{origin} \\[{verdict}] {escape(hyp.text)}")
    node.add(
        f"[dim]criterion ({escape(hyp.tool)}): {escape(str(hyp.criterion))}"
        f"{', locked' if hyp.locked else ''}[/dim]"
    )
    for exp in hyp.experiments:
        _add_experiment(node, exp)
    for v in hyp.verdicts:
        claimed = f"UNVERIFIED claim {escape(v.status)}" if unverified and v is latest else ""
        vnode = node.add(
            f"[bold]verdict {v.id}[/bold] {claimed or _status(v.status)} by {escape(v.decided_by)}, "
            f"cites evidence {', '.join(map(str, v.cited_evidence_ids)) or 'none'}"
        )
        if v.narrative:
            vnode.add(escape(_short(v.narrative, 160)))
        for r in v.reviews:
            comment = f": {escape(_short(r.comment, 100))}" if r.comment else ""
            vnode.add(f"review by {escape(r.reviewer)}: {_status(r.decision)}{comment}")


def render_tree(tree: InvestigationTree) -> Tree:
    """The investigation as a rich Tree: hypotheses → experiments → evidence → verdicts."""
    inv = tree.investigation
    root = Tree(
        f"[bold]investigation {inv.id}[/bold] {_status(inv.status)} — {escape(inv.question)}\n"
        f"[dim]model {escape(inv.model_id)}, data {escape(inv.data_spec)}, planner "
        f"{escape(inv.planner)}{' (' + escape(inv.llm_model) + ')' if inv.llm_model else ''}, "
        f"created {inv.created_at:%Y-%m-%d %H:%M} UTC"
        f"{', report ' + escape(inv.report_path) if inv.report_path else ''}[/dim]"
    )
    for hyp in tree.hypotheses:
        _add_hypothesis(root, hyp, unverified_of(tree).get(hyp.id))
    if tree.unlinked_experiments:
        node = root.add("[bold]experiments without a hypothesis[/bold]")
        for exp in tree.unlinked_experiments:
            _add_experiment(node, exp)
    if tree.llm_calls:
        tokens = sum((c.prompt_tokens or 0) + (c.completion_tokens or 0) for c in tree.llm_calls)
        root.add(f"[dim]{len(tree.llm_calls)} LLM calls, {tokens} tokens[/dim]")
    return root


def show_command(
    investigation_id: Annotated[int, typer.Argument(metavar="ID", help="Investigation id.")],
    db: DbOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the full stored tree as JSON.")
    ] = False,
) -> None:
    """Show one investigation: hypotheses, experiments, evidence, verdicts and reviews."""
    from rankscope.agent.integrity import fast_check, settings_problems

    with _store(db) as store:
        tree = store.investigation_tree(investigation_id)
        problems = fast_check(store, investigation_id)
        head = store.chain_head(investigation_id)
    if as_json:
        typer.echo(json.dumps(tree.model_dump(mode="json"), indent=2, ensure_ascii=False))
        return
    for problem in problems:  # the checks that need no re-run (rankscope audit runs them all)
        _console().print(f"[bold red]INTEGRITY: {escape(problem)}[/bold red]", soft_wrap=True)
    _console().print(render_tree(tree))
    notes = [] if settings_problems(tree.investigation) else settings_of(tree.investigation).notes
    for note in notes:
        if str(note).startswith("UNVERIFIED"):
            _console().print(f"[bold yellow]{escape(str(note))}[/bold yellow]", soft_wrap=True)
    _console().print(
        f"[dim]{escape(head.text()) if head else 'no record chain'}[/dim]", soft_wrap=True
    )


def export_command(
    investigation_id: Annotated[int, typer.Argument(metavar="ID", help="Investigation id.")],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Bundle file (default: rankscope-investigation-ID.zip)."),
    ] = None,
    db: DbOption = None,
) -> None:
    """Export an investigation and its artifact files as a zip bundle."""
    with _store(db) as store:
        path = export_investigation(store, investigation_id, out)
    _console().print(
        f"Exported investigation {investigation_id} to {escape(str(path))}", soft_wrap=True
    )


def mark_unverified_verdicts(store: Store, investigation_id: int) -> list[str]:
    """Re-derive each imported hypothesis's verdict from the bundle's own evidence with the verdict
    rules; every verdict the evidence does not give gets an UNVERIFIED note (shown by ``show``
    and in the reports). Returns the notes."""
    from rankscope.agent.audit import reapply_verdict
    from rankscope.agent.settings import add_note

    tree = store.investigation_tree(investigation_id)
    notes = [
        f"UNVERIFIED verdict on hypothesis {node.id}: the bundle says "
        f"{latest.status!r}, its own evidence gives {again!r} under the verdict rules"
        for node in tree.hypotheses
        if (latest := node.latest_verdict) is not None
        and (again := reapply_verdict(node, tree)) != latest.status
    ]
    for note in notes:
        add_note(store, investigation_id, note)
    return notes


def import_command(
    bundle: Annotated[Path, typer.Argument(metavar="BUNDLE", help="A bundle made by export.")],
    db: DbOption = None,
) -> None:
    """Import a bundle under new ids (artifact hashes and verdicts are checked first)."""
    from rankscope.agent.integrity import import_checked

    with _store(db, create=True) as store:
        new_id, unverified = import_checked(store, bundle)
    _console().print(f"Imported {escape(str(bundle))} as investigation {new_id}", soft_wrap=True)
    for note in unverified:
        _err().print(f"[bold yellow]warning:[/bold yellow] {escape(note)}")


def register(app: typer.Typer) -> None:
    """Add ``list``, ``show``, ``export`` and ``import`` to the ``rankscope`` app."""
    app.command("list")(list_command)
    app.command("show")(show_command)
    app.command("export")(export_command)
    app.command("import")(import_command)

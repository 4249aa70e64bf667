"""Live progress of an investigation in the terminal (rich): printed as things happen."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.markup import escape

from rankscope.experiments_db.records import Criterion

STATUS_STYLE = {
    "supported": "bold green",
    "refuted": "bold red",
    "inconclusive": "bold yellow",
}


def format_number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class ProgressPrinter:
    """Prints each hypothesis, tool call (with its key numbers), verdict and note."""

    def __init__(self, console: Console | None = None, quiet: bool = False) -> None:
        self.console = console or Console()
        self.quiet = quiet

    def _print(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, highlight=False)

    def investigation(self, investigation_id: int, question: str, resumed: bool = False) -> None:
        verb = "Resuming" if resumed else "Investigation"
        self._print(f"[bold]{verb} {investigation_id}[/bold]: {escape(question)}")

    def line(self, text: str) -> None:
        self._print(escape(text))

    def hypothesis(self, hypothesis_id: int, text: str, criterion: Criterion) -> None:
        self._print(
            f"[bold cyan]H{hypothesis_id}[/bold cyan] {escape(text)}\n"
            f"    pre-registered: {escape(str(criterion))}"
        )

    def tool_call(self, hypothesis_id: int, tool: str, split: str, args: Mapping[str, Any]) -> None:
        shown = {k: v for k, v in args.items() if k in ("axiom", "variant", "n_pairs", "seed")}
        comps = args.get("components")
        if comps:
            shown["components"] = comps
        self._print(
            f"    [magenta]run[/magenta] {tool} on {split} for H{hypothesis_id} "
            f"{escape(str(shown))}"
        )

    def tool_result(
        self,
        experiment_id: int,
        status: str,
        seconds: float,
        numbers: Mapping[str, Any],
        error: str | None = None,
        reused: bool = False,
    ) -> None:
        if status != "finished":
            self._print(
                f"    [red]experiment {experiment_id} {status}[/red]: {escape(error or '')}"
            )
            return
        shown = ", ".join(f"{k}={format_number(v)}" for k, v in numbers.items())
        note = " (result of an identical call reused)" if reused else f" in {seconds:.1f} s"
        self._print(f"    experiment {experiment_id}{note}: {escape(shown)}")

    def split_result(self, split: str, outcome: str, reason: str) -> None:
        self._print(f"    {split}: {outcome} — {escape(reason)}")

    def verdict(self, hypothesis_id: int, status: str, reason: str) -> None:
        style = STATUS_STYLE.get(status, "bold")
        self._print(f"  [{style}]verdict H{hypothesis_id}: {status}[/{style}] — {escape(reason)}")

    def feedback(self, message: str) -> None:
        self._print(f"  [yellow]planner feedback[/yellow]: {escape(message)}")

    def stop(self, reason: str) -> None:
        self._print(f"[bold]Stopping[/bold]: {escape(reason)}")

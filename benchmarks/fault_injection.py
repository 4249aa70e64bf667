"""Fault injection (issue 16): kill -9, SIGTERM, a held lock, a dripping LLM server and concurrent
starts, each on a fresh database (PostgreSQL when ``--pg URL`` is given, else SQLite).

For each fault the script reports: runs completed (after the recovery a user would do, such as
``rankscope resume``), rows left ``running``, and records lost (hypotheses, evidence and verdicts
stored before the fault that are gone or changed afterwards, by the record chain). The last two
must be 0; the exit status is 1 otherwise. With ``--pg`` it also ends the PostgreSQL backends of a
run between two of its steps (issue 25, item 9: the run must go on).

Then the data-size memory case (issue 25, item 8): a pairs TSV of each ``--data-mb`` size is read
(``resolve_data``) and hashed in a fresh process, and the peak memory per MB of input is printed.

    python benchmarks/fault_injection.py [--pg postgresql+psycopg://postgres@127.0.0.1:5432/test]
        [--data-mb 20 200]

Runs a tiny random BERT on CPU with a scripted planner (no network); about a minute.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_CHILD = """
import sys, time
from pathlib import Path
from rich.console import Console
import io
from rankscope.agent.runner import investigate
from rankscope.agent.settings import InvestigationSettings
from rankscope.agent.state import Budget
from tests.agent_support import ScriptedPlanner, behaviour

url, model, ready, mode = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4]


def wait(ledger):
    ready.write_text("x")
    time.sleep(300)


script = [behaviour(), wait] if mode == "wait" else [behaviour()]
investigate(
    "fault injection",
    InvestigationSettings(model_arg=model, budget=Budget(max_steps=4, max_tool_calls=4)),
    db=url,
    report_dir=Path(ready).parent / "reports",
    console=Console(file=io.StringIO()),
    quiet=True,
    planner_factory=lambda: ScriptedPlanner(script),
)
"""


@dataclass
class Outcome:
    fault: str
    runs: int
    completed: int
    running: int
    lost: int
    note: str = ""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _child(url: str, model: Path, ready: Path, mode: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, url, str(model), str(ready), mode],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _wait_ready(child: subprocess.Popen[bytes], ready: Path, limit_s: float = 300) -> None:
    deadline = time.monotonic() + limit_s
    while not ready.exists():
        if child.poll() is not None:
            err = child.stderr.read().decode() if child.stderr else ""
            raise RuntimeError(f"the child ended before it was ready: {err[-2000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError("the child was not ready in time")
        time.sleep(0.2)


@contextmanager
def _fresh_db(pg: str | None, folder: Path) -> Iterator[str]:
    if pg is None:
        yield f"sqlite:///{folder / f'fi-{uuid.uuid4().hex[:8]}.db'}"
        return
    import psycopg
    from sqlalchemy.engine import make_url

    admin_url = make_url(pg).set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"rs_fault_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield make_url(pg).set(database=name).render_as_string(hide_password=False)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _snapshot(url: str) -> dict[int, set[tuple[str, int]]]:
    """The records of every investigation (kind, id), as the store's record chain lists them."""
    from sqlalchemy import text

    from rankscope.experiments_db import open_store

    with open_store(url, create=False) as store, store.engine.connect() as conn:
        rows = conn.execute(text("SELECT investigation_id, kind, record_id FROM record_link"))
        out: dict[int, set[tuple[str, int]]] = {}
        for inv, kind, record in rows:
            out.setdefault(int(inv), set()).add((str(kind), int(record)))
        return out


def _tally(url: str, fault: str, before: dict[int, set[tuple[str, int]]], note: str) -> Outcome:
    from rankscope.experiments_db import open_store

    with open_store(url, create=False) as store:
        rows = store.list_investigations()
        lost = 0
        for inv, records in before.items():
            _links, problems = store.verify_records(inv)
            damaged = {p.subject for p in problems}
            after = _snapshot(url).get(inv, set())
            lost += len(records - after) + sum(f"{k} {i}" in damaged for k, i in records)
        return Outcome(
            fault,
            runs=len(rows),
            completed=sum(r.status == "finished" for r in rows),
            running=sum(r.status == "running" for r in rows),
            lost=lost,
            note=note,
        )


def _resume(url: str, investigation_id: int, folder: Path) -> str:
    from rich.console import Console

    from rankscope.agent.runner import resume
    from tests.agent_support import ScriptedPlanner

    result = resume(
        investigation_id,
        db=url,
        report_dir=folder / "reports",
        console=Console(file=io.StringIO()),
        quiet=True,
        planner_factory=lambda: ScriptedPlanner([]),
    )
    return result.status


def _signal_fault(url: str, model: Path, folder: Path, sig: signal.Signals) -> Outcome:
    ready = folder / f"ready-{sig.name}"
    child = _child(url, model, ready, "wait")
    try:
        _wait_ready(child, ready)
        before = _snapshot(url)
        child.send_signal(sig)
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    from rankscope.experiments_db import open_store

    with open_store(url, create=False) as store:
        after_fault = store.get_investigation(1).status
    status = _resume(url, 1, folder)
    return _tally(url, f"{sig.name}", before, f"after the fault: {after_fault}; resume: {status}")


def _lock_fault(url: str, model: Path, folder: Path, hold_s: float = 3.0) -> Outcome:
    """A writer holds the database for ``hold_s`` while an investigation starts and records."""
    from sqlalchemy import create_engine, text

    from rankscope.experiments_db import open_store

    with open_store(url):
        pass
    engine = create_engine(url)
    conn = engine.connect()
    if engine.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN EXCLUSIVE")
    else:
        conn.begin()
        conn.execute(text("LOCK TABLE investigation IN ACCESS EXCLUSIVE MODE"))
    ready = folder / "ready-lock"
    child = _child(url, model, ready, "once")
    time.sleep(hold_s)
    conn.rollback() if engine.dialect.name != "sqlite" else conn.exec_driver_sql("ROLLBACK")
    conn.close()
    engine.dispose()
    code = child.wait(timeout=300)
    err = child.stderr.read().decode()[-300:] if child.stderr else ""
    return _tally(url, "lock held", {}, f"lock held {hold_s:g} s; exit {code} {err}".strip())


class _Drip(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "100000")
        self.end_headers()
        try:
            for _ in range(100000):
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.5)
        except OSError:
            pass

    def log_message(self, *args: Any) -> None:
        pass


def _drip_fault(url: str, model: Path, folder: Path) -> Outcome:
    from rich.console import Console

    from rankscope.agent.llm_client import LLMError
    from rankscope.agent.runner import investigate
    from rankscope.agent.settings import InvestigationSettings
    from rankscope.agent.state import Budget

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Drip)
    server.daemon_threads = True
    server.block_on_close = False
    threading.Thread(target=server.serve_forever, daemon=True).start()
    start = time.monotonic()
    note = ""
    try:
        settings = InvestigationSettings(
            model_arg=str(model),
            planner="llm",
            llm_model="drip",
            base_url=f"http://127.0.0.1:{server.server_address[1]}/v1",
            llm_timeout_s=3.0,
            llm_retries=0,
            llm_context=32_000,
            budget=Budget(max_steps=2, max_tool_calls=2),
        )
        investigate(
            "fault injection: dripping LLM server",
            settings,
            db=url,
            report_dir=folder / "reports",
            console=Console(file=io.StringIO()),
            quiet=True,
        )
    except LLMError as err:
        note = f"stopped after {time.monotonic() - start:.1f} s: {str(err)[:80]}"
    finally:
        server.shutdown()
        server.server_close()
    return _tally(url, "server drip", {}, note)


def _concurrent_fault(url: str, model: Path, folder: Path, n: int = 3) -> Outcome:
    children = [_child(url, model, folder / f"ready-c{i}", "once") for i in range(n)]
    codes = [child.wait(timeout=600) for child in children]
    return _tally(url, "concurrent starts", {}, f"{n} processes, exit codes {codes}")


_PG_KILL_CHILD = """
import io, sys, time
from pathlib import Path
from rich.console import Console
from rankscope.agent.runner import investigate
from rankscope.agent.settings import InvestigationSettings
from rankscope.agent.state import Budget
from tests.agent_support import ScriptedPlanner, behaviour

url, model, ready, go = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])


def pause(ledger):
    ready.write_text("x")
    while not go.exists():
        time.sleep(0.1)
    return behaviour()


investigate(
    "fault injection: PostgreSQL backend killed",
    InvestigationSettings(model_arg=model, budget=Budget(max_steps=4, max_tool_calls=4)),
    db=url,
    report_dir=ready.parent / "reports",
    console=Console(file=io.StringIO()),
    quiet=True,
    planner_factory=lambda: ScriptedPlanner([behaviour(), pause]),
)
"""


def _terminate_backends(url: str) -> int:
    """``pg_terminate_backend`` every connection to the database of ``url`` but this one."""
    import psycopg
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    with psycopg.connect(
        parsed.set(drivername="postgresql").render_as_string(hide_password=False),
        autocommit=True,
    ) as conn:
        row = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (parsed.database,),
        ).fetchone()
    return int(row[0]) if row else 0


def _pg_backend_kill_fault(url: str, model: Path, folder: Path) -> Outcome:
    """PostgreSQL only (issue 25, item 9): while a run waits between two steps, every server
    backend of its database is ended with ``pg_terminate_backend`` (the store's and the
    checkpointer's connections); the run then goes on. Reported: how it ended, its last line
    on stderr, and the resume a user would do if it did not finish."""
    from rankscope.experiments_db import open_store

    ready, go = folder / "ready-pgkill", folder / "go-pgkill"
    child = subprocess.Popen(
        [sys.executable, "-c", _PG_KILL_CHILD, url, str(model), str(ready), str(go)],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_ready(child, ready)
        before = _snapshot(url)
        killed = _terminate_backends(url)
        go.write_text("x")
        code = child.wait(timeout=300)
    finally:
        if child.poll() is None:
            child.kill()
    err = child.stderr.read().decode() if child.stderr else ""
    last = next((line for line in reversed(err.splitlines()) if line.strip()), "")
    with open_store(url, create=False) as store:
        after_fault = store.get_investigation(1).status
    note = f"{killed} backends ended; exit {code}, {after_fault}"
    if "Traceback" in err:
        note += f", traceback ending {last[:100]!r}"
    elif last:
        note += f", said {last[:100]!r}"
    if after_fault != "finished":
        note += f"; resume: {_resume(url, 1, folder)}"
    return _tally(url, "PG backend kill", before, note)


_DATA_CHILD = """
import resource, sys, time
from rankscope.tools.data.source import resolve_data


def peak_mb():
    # VmHWM: this process's peak; ru_maxrss is kept across exec on Linux (the parent's peak)
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


base = peak_mb()
start = time.monotonic()
source = resolve_data(sys.argv[1])
parsed, parse_s = peak_mb(), time.monotonic() - start
source.content_hash()
print(base, parsed, peak_mb(), parse_s, len(source._pairs))
"""


@dataclass
class DataMemory:
    input_mb: float
    rows: int
    base_mb: float
    parse_peak_mb: float
    hash_peak_mb: float
    parse_s: float

    def per_mb(self, peak: float) -> float:
        return (peak - self.base_mb) / self.input_mb


def write_pairs_tsv(path: Path, size_mb: float) -> int:
    """A pairs TSV of about ``size_mb`` MB (rows of the shared TFC1 pairs when they are there,
    ``$RANKSCOPE_SHARED_DATA`` or ``../shared/data``, else synthetic ones, with fresh qids and
    docnos); returns the number of rows."""
    folder = os.environ.get("RANKSCOPE_SHARED_DATA") or REPO.parent / "shared" / "data"
    shared = Path(folder) / "dl1920_tfc1_pairs.tsv"
    header = "qid\tdocno\tscore_delta\ttext\tperturbed_text\tquery\trelevance\n"
    if shared.is_file():
        lines = shared.read_text(encoding="utf-8").splitlines()[1:]
        rows = [line.split("\t") for line in lines if line.strip()]
    else:
        words = [f"word{i}" for i in range(500)]
        rows = []
        for i in range(2000):
            text = " ".join(words[(i * 7 + j) % 500] for j in range(100))
            rows.append([str(i), str(i), "0.5", text, text + " word1", "word1 word2", "1"])
    target = int(size_mb * 1e6)
    written = n = 0
    with path.open("w", encoding="utf-8") as out:
        out.write(header)
        while written < target:
            r = rows[n % len(rows)]
            line = "\t".join([f"{r[0]}-{n // len(rows)}", f"{r[1]}-{n}", *r[2:]]) + "\n"
            out.write(line)
            written += len(line.encode("utf-8"))
            n += 1
    return n


def data_size_memory(folder: Path, size_mb: float) -> DataMemory:
    """Peak memory of reading (``resolve_data``) and hashing a pairs TSV of ``size_mb`` MB, in a
    fresh process (issue 25, item 8)."""
    path = folder / f"pairs-{size_mb:g}mb.tsv"
    rows = write_pairs_tsv(path, size_mb)
    out = subprocess.run(
        [sys.executable, "-c", _DATA_CHILD, str(path)],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    base, parsed, hashed, seconds = (float(v) for v in out[:4])
    assert int(out[4]) == rows, (out, rows)
    input_mb = path.stat().st_size / 1e6
    path.unlink()
    return DataMemory(input_mb, rows, base, parsed, hashed, seconds)


def print_data_memory(results: list[DataMemory]) -> None:
    print("\nData-size memory (a pairs TSV read with resolve_data, then hashed)\n")
    print(
        "| input MB | rows | peak RSS MB (parse / hash) | extra peak per MB of input "
        "(parse / hash) | parse s |"
    )
    print("|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r.input_mb:.0f} | {r.rows} | {r.parse_peak_mb:.0f} / {r.hash_peak_mb:.0f} | "
            f"{r.per_mb(r.parse_peak_mb):.2f} / {r.per_mb(r.hash_peak_mb):.2f} | "
            f"{r.parse_s:.1f} |"
        )


_IMPORT_CHILD = """
import resource, sys
from pathlib import Path
from rankscope.experiments_db import import_bundle, open_store
from rankscope.experiments_db.errors import StoreError

url, bundle = sys.argv[1], Path(sys.argv[2])
with open_store(url) as store:
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    try:
        import_bundle(store, bundle)
        outcome = "imported"
    except StoreError as err:
        outcome = "refused: " + " ".join(str(err).split())[:100]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = len(store.list_investigations())
print(base, peak, rows, outcome, sep="\\t")
"""


@dataclass
class ImportMemory:
    zip_mb: float
    manifest_mb: float
    base_mb: float
    peak_mb: float
    rows: int
    outcome: str


def write_manifest_bomb(path: Path, manifest_mb: int) -> None:
    """A zip of a few MB (about 3 for 600) whose ``bundle.json`` unpacks to ``manifest_mb`` MB
    (written in chunks: the benchmark itself never holds it)."""
    import random
    import zipfile

    head = b'{"format": "rankscope-investigation-bundle", "version": 1, "pad": "'
    rng = random.Random(0)
    with (
        zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf,
        zf.open("bundle.json", "w", force_zip64=True) as member,
    ):
        member.write(head)
        for _ in range(manifest_mb):
            noise = rng.randbytes(4 << 10).hex().encode()  # 8 KiB that barely compress
            member.write(noise + b" " * ((1 << 20) - len(noise)))
        member.write(b'"}')


def import_memory(folder: Path, manifest_mb: int = 600) -> ImportMemory:
    """Issue 25, item 7: the peak RSS of ``import_bundle`` on a small zip holding a huge
    ``bundle.json``, in a fresh process on a fresh SQLite store (rows left must be 0)."""
    bomb = folder / f"manifest-{manifest_mb}mb.zip"
    write_manifest_bomb(bomb, manifest_mb)
    child = subprocess.run(
        [sys.executable, "-c", _IMPORT_CHILD, f"sqlite:///{folder / 'import.db'}", str(bomb)],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    if child.returncode != 0:
        tail = (child.stderr.strip().splitlines() or ["?"])[-1]
        return ImportMemory(bomb.stat().st_size / 1e6, manifest_mb, 0, 0, -1, f"crashed: {tail}")
    base, peak, rows, outcome = child.stdout.strip().splitlines()[-1].split("\t")
    return ImportMemory(
        bomb.stat().st_size / 1e6, manifest_mb, float(base), float(peak), int(rows), outcome
    )


def print_import_memory(result: ImportMemory) -> None:
    print("\nBundle import memory (a small zip, a huge bundle.json)\n")
    print("| zip MB | bundle.json MB | RSS before MB | peak RSS MB | rows left | outcome |")
    print("|---|---|---|---|---|---|")
    r = result
    print(
        f"| {r.zip_mb:.1f} | {r.manifest_mb:.0f} | {r.base_mb:.0f} | {r.peak_mb:.0f} | {r.rows} "
        f"| {r.outcome} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pg", metavar="URL", help="PostgreSQL server (a database per fault)")
    parser.add_argument(
        "--data-mb",
        type=float,
        nargs="*",
        default=[20.0, 200.0],
        metavar="MB",
        help="sizes of the pairs TSVs of the data-size memory case (none: skip it)",
    )
    parser.add_argument(
        "--import-mb",
        type=int,
        default=600,
        metavar="MB",
        help="bundle.json size of the import memory case (0: skip it)",
    )
    args = parser.parse_args()
    import torch

    from tests.agent_support import null_bert

    torch.set_num_threads(1)
    results: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="rankscope-faults-") as tmp:
        folder = Path(tmp)
        model = null_bert(folder / "model")
        for name, fault in (
            ("kill -9", lambda u: _signal_fault(u, model, folder, signal.SIGKILL)),
            ("SIGTERM", lambda u: _signal_fault(u, model, folder, signal.SIGTERM)),
            ("lock held", lambda u: _lock_fault(u, model, folder)),
            ("server drip", lambda u: _drip_fault(u, model, folder)),
            ("concurrent starts", lambda u: _concurrent_fault(u, model, folder)),
            *(
                [("PG backend kill", lambda u: _pg_backend_kill_fault(u, model, folder))]
                if args.pg
                else []
            ),
        ):
            with _fresh_db(args.pg, folder) as url:
                try:
                    results.append(fault(url))
                except Exception as err:  # a fault that breaks the harness is a result too
                    results.append(Outcome(name, 0, 0, -1, -1, f"harness error: {err}"))
    backend = "PostgreSQL" if args.pg else "SQLite"
    print(f"\nFault injection on {backend}\n")
    print("| fault | runs | completed | left running | records lost | note |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r.fault} | {r.runs} | {r.completed} | {r.running} | {r.lost} | {r.note} |")
    if args.data_mb:
        with tempfile.TemporaryDirectory(prefix="rankscope-data-") as tmp:
            print_data_memory([data_size_memory(Path(tmp), mb) for mb in args.data_mb])
    imported = None
    if args.import_mb:
        with tempfile.TemporaryDirectory(prefix="rankscope-import-") as tmp:
            imported = import_memory(Path(tmp), args.import_mb)
        print_import_memory(imported)
    if imported is not None and imported.rows != 0:
        return 1
    return 0 if all(r.running == 0 and r.lost == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())

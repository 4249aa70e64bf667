"""Static export: one investigation as a folder (``index.html``, ``figures/``, ``tables/``,
``forest.png``, ``static/``) that opens offline from disk.

The page is the workspace's investigation page (answer, forest plot as SVG, Findings, every
hypothesis); the forest plot is also written as a PNG, and every evidence table as a CSV file
(the page shows a table's first rows and links the file for the rest).
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Any

from rankscope.agent.report_forest import forest_png
from rankscope.agent.web.links import ExportLinks, table_filename
from rankscope.agent.web.rendering import STATIC, environment, investigation_context
from rankscope.agent.web.views import artifact_filename
from rankscope.experiments_db.errors import ArtifactError
from rankscope.experiments_db.repository import Store


def _csv_rows(value: Any) -> list[list[Any]] | None:
    """A stored table (a list of dicts, or of lists) as CSV rows with a header; None if neither."""
    if not isinstance(value, list) or not value:
        return None
    if all(isinstance(r, dict) for r in value):
        header = list(dict.fromkeys(k for r in value for k in r))
        return [header, *([r.get(k) for k in header] for r in value)]
    if all(isinstance(r, list) for r in value):
        width = max(len(r) for r in value)
        return [[str(i) for i in range(width)], *value]
    return None


def export_static(store: Store, investigation_id: int, out_dir: Path) -> Path:
    """Write the investigation's page and its verified figures into ``out_dir``; return it.

    An artifact that fails its hash check is left out and listed in the page's problems.
    """
    tree = store.investigation_tree(investigation_id)
    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    (out_dir / "tables").mkdir(parents=True, exist_ok=True)
    shutil.copytree(STATIC, out_dir / "static", dirs_exist_ok=True)
    problems: list[str] = []
    for artifact in tree.artifacts():
        try:
            data = store.read_artifact(artifact)
        except ArtifactError as exc:
            problems.append(f"artifact {artifact.id}: {exc}")
            continue
        (out_dir / "figures" / artifact_filename(artifact)).write_bytes(data)
    for ev in tree.evidence().values():
        for name, value in ev.tables.items():
            rows = _csv_rows(value)
            if rows is None:
                continue
            path = out_dir / "tables" / table_filename(ev.id, name)
            with path.open("w", newline="", encoding="utf-8") as fh:
                csv.writer(fh).writerows(rows)
    context = investigation_context(store, tree, ExportLinks())
    png = forest_png(context["forest"])
    if png is not None:
        (out_dir / "forest.png").write_bytes(png)
    html = (
        environment()
        .get_template("investigation.html")
        .render(**context, audits=[], csrf="", live=False, problems=problems)
    )
    (out_dir / "index.html").write_text(html, encoding="utf-8")
    return out_dir

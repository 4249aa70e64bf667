"""Static export: one investigation as a folder (``index.html``, ``figures/``, ``static/``)
that opens offline from disk."""

from __future__ import annotations

import shutil
from pathlib import Path

from rankscope.agent.web.links import ExportLinks
from rankscope.agent.web.rendering import STATIC, environment, investigation_context
from rankscope.agent.web.views import artifact_filename
from rankscope.experiments_db.errors import ArtifactError
from rankscope.experiments_db.repository import Store


def export_static(store: Store, investigation_id: int, out_dir: Path) -> Path:
    """Write the investigation's page and its verified figures into ``out_dir``; return it.

    An artifact that fails its hash check is left out and listed in the page's problems.
    """
    tree = store.investigation_tree(investigation_id)
    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    shutil.copytree(STATIC, out_dir / "static", dirs_exist_ok=True)
    problems: list[str] = []
    for artifact in tree.artifacts():
        try:
            data = store.read_artifact(artifact)
        except ArtifactError as exc:
            problems.append(f"artifact {artifact.id}: {exc}")
            continue
        (out_dir / "figures" / artifact_filename(artifact)).write_bytes(data)
    html = (
        environment()
        .get_template("investigation.html")
        .render(
            **investigation_context(store, tree, ExportLinks()),
            audits=[],
            csrf="",
            live=False,
            problems=problems,
        )
    )
    (out_dir / "index.html").write_text(html, encoding="utf-8")
    return out_dir

"""Files rather than pages: a stored artifact (checked against its sha256; images inline, other
files as attachments) and one investigation's static export as a zip file."""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

from rankscope.agent.report_forest import forest, forest_png
from rankscope.agent.web import views
from rankscope.agent.web.export import export_static
from rankscope.agent.web.workspace import WorkspaceDep, known_id
from rankscope.experiments_db.errors import ArtifactError

router = APIRouter()


@router.get("/artifacts/{artifact_id}")
def artifact(ws: WorkspaceDep, artifact_id: int) -> Response:
    record = ws.store.get_artifact(known_id("artifact", artifact_id))
    try:
        data = ws.store.read_artifact(record)
    except ArtifactError as exc:
        raise HTTPException(409, f"artifact {artifact_id} failed its hash check: {exc}") from exc
    if views.is_inline_image(record):
        return Response(data, media_type=record.media_type)
    name = views.artifact_filename(record)
    return Response(
        data,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.get("/investigations/{investigation_id}/forest.png")
def forest_figure(ws: WorkspaceDep, investigation_id: int) -> Response:
    """The forest plot as the PNG the reports carry."""
    tree = ws.tree(known_id("investigation", investigation_id))
    facts = views.Facts.of(tree)
    png = forest_png(forest(tree, facts.names, facts.unverified))
    if png is None:
        raise HTTPException(404, f"investigation {investigation_id} has no estimate to plot yet")
    return Response(png, media_type="image/png")


@router.get("/investigations/{investigation_id}/export.zip")
def export_zip(ws: WorkspaceDep, investigation_id: int) -> Response:
    ws.store.get_investigation(known_id("investigation", investigation_id))
    with tempfile.TemporaryDirectory() as tmp:
        folder = export_static(
            ws.store, investigation_id, Path(tmp) / f"investigation-{investigation_id}"
        )
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    zf.write(path, path.relative_to(folder.parent).as_posix())
    name = f"rankscope-investigation-{investigation_id}.zip"
    return Response(
        buffer.getvalue(),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )

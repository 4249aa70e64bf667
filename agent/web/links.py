"""Where the templates point: server routes when served, relative files in a static export."""

from __future__ import annotations

import re
from urllib.parse import quote, urlencode

from rankscope.agent.web.views import artifact_filename
from rankscope.experiments_db.records import ArtifactRecord


class Links:
    """URLs of the live server; every hypothesis, experiment and evidence item has its own."""

    live = True

    def home(self, **query: str) -> str:
        query = {k: v for k, v in query.items() if v}
        return "/" + (f"?{urlencode(query)}" if query else "")

    def investigation(self, investigation_id: int) -> str:
        return f"/investigations/{investigation_id}"

    def hypothesis(self, hypothesis_id: int) -> str:
        return f"/hypotheses/{hypothesis_id}"

    def experiment(self, experiment_id: int) -> str:
        return f"/experiments/{experiment_id}"

    def evidence(self, evidence_id: int) -> str:
        return f"/evidence/{evidence_id}"

    def artifact(self, artifact: ArtifactRecord) -> str:
        return f"/artifacts/{artifact.id}"

    def sweeps(self) -> str:
        return "/sweeps"

    def sweep(self, sweep_id: str) -> str:
        return f"/sweeps/{quote(sweep_id, safe='')}"

    def static(self, name: str) -> str:
        return f"/static/{name}"

    def forest_png(self, investigation_id: int) -> str:
        return f"/investigations/{investigation_id}/forest.png"

    def table(self, evidence_id: int, name: str) -> str:
        """Every row of one of the evidence's tables."""
        return f"/evidence/{evidence_id}#t-{evidence_id}-{quote(name, safe='')}"


class ExportLinks(Links):
    """Links inside a static export: one ``index.html`` with anchors, files beside it."""

    live = False

    def home(self, **query: str) -> str:
        return "index.html"

    def investigation(self, investigation_id: int) -> str:
        return "index.html"

    def hypothesis(self, hypothesis_id: int) -> str:
        return f"#h{hypothesis_id}"

    def experiment(self, experiment_id: int) -> str:
        return f"#x{experiment_id}"

    def evidence(self, evidence_id: int) -> str:
        return f"#e{evidence_id}"

    def artifact(self, artifact: ArtifactRecord) -> str:
        return f"figures/{artifact_filename(artifact)}"

    def static(self, name: str) -> str:
        return f"static/{name}"

    def forest_png(self, investigation_id: int) -> str:
        return "forest.png"

    def table(self, evidence_id: int, name: str) -> str:
        return f"tables/{table_filename(evidence_id, name)}"


def table_filename(evidence_id: int, name: str) -> str:
    """The CSV file of one evidence table in a static export."""
    return f"E{evidence_id}-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.csv"

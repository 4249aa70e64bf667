"""Export an investigation to a bundle and import it (into SQLite or PostgreSQL) under new ids."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rankscope.experiments_db import (
    ArtifactIntegrityError,
    BundleError,
    InvestigationTree,
    export_investigation,
    import_bundle,
    open_store,
)
from tests.test_db_support import backend_params, fresh_database, open_test_store, populate


@pytest.fixture(params=backend_params())
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_database(request.param, tmp_path) as url:
        yield url


def _strip_ids(tree: InvestigationTree) -> Any:
    """The tree as JSON without ids or id-valued fields, for comparison across databases."""
    id_keys = {
        "id",
        "investigation_id",
        "hypothesis_id",
        "experiment_id",
        "evidence_id",
        "verdict_id",
        "parent_id",
        "cited_evidence_ids",
    }

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in id_keys and k != "config"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(tree.model_dump(mode="json"))


def test_export_import_round_trip(db_url: str, tmp_path: Path) -> None:
    source_dir = tmp_path / "source"
    source_dir.mkdir()
    with open_store(f"sqlite:///{source_dir / 'src.db'}") as source:
        ids = populate(source, source_dir)
        source.create_investigation("another one", "m", "d", "protocol")  # shifts the target ids
        bundle = export_investigation(source, ids["investigation"], tmp_path / "out" / "b.zip")
        original = source.investigation_tree(ids["investigation"])
    assert bundle == tmp_path / "out" / "b.zip"
    assert len(zipfile.ZipFile(bundle).namelist()) == 1 + len(original.artifacts())

    with open_test_store(db_url, tmp_path) as target:
        target.create_investigation("already here", "m", "d", "protocol")
        new_id = import_bundle(target, bundle)
        copy = target.investigation_tree(new_id)
        assert new_id != ids["investigation"]
        assert _strip_ids(copy) == _strip_ids(original)
        imported = copy.investigation.config["imported_from"]
        assert imported["investigation_id"] == ids["investigation"]
        assert copy.investigation.config["seed"] == 0
        ev_map = {int(k): v for k, v in imported["evidence_ids"].items()}
        (verdict,) = copy.hypotheses[0].verdicts
        old_cited = original.hypotheses[0].verdicts[0].cited_evidence_ids
        assert verdict.cited_evidence_ids == [ev_map[i] for i in old_cited]
        assert target.evidence_exists(verdict.cited_evidence_ids, investigation_id=new_id)
        assert copy.hypotheses[1].parent_id == copy.hypotheses[0].id
        for artifact in copy.artifacts():
            target.artifact_file(artifact)
        # a second import makes a second, independent copy
        assert import_bundle(target, bundle) not in (new_id, ids["investigation"])


def test_import_refuses_tampered_or_foreign_bundles(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path / 'src.db'}") as source:
        ids = populate(source, tmp_path)
        bundle = export_investigation(source, ids["investigation"], tmp_path / "b.zip")
    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(bundle) as zin, zipfile.ZipFile(tampered, "w") as zout:
        names = zin.namelist()
        victim = next(n for n in names if n.endswith(".png"))
        for name in names:
            zout.writestr(name, b"tampered" if name == victim else zin.read(name))
    with open_store(f"sqlite:///{tmp_path / 'dst.db'}") as target:
        with pytest.raises(ArtifactIntegrityError, match=f"tampered.zip:{victim}"):
            import_bundle(target, tampered)
        assert target.list_investigations() == []
        not_a_bundle = tmp_path / "x.zip"
        with zipfile.ZipFile(not_a_bundle, "w") as zf:
            zf.writestr("bundle.json", json.dumps({"format": "something else"}))
        with pytest.raises(BundleError, match="not a RankScope investigation bundle"):
            import_bundle(target, not_a_bundle)
        (tmp_path / "plain.zip").write_text("not a zip")
        with pytest.raises(BundleError, match="not a zip file"):
            import_bundle(target, tmp_path / "plain.zip")

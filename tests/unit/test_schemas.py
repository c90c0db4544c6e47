"""The JSON Schemas: in sync with the models, shipped in the package, and usable offline by the tools
people run on desired-state files (check-jsonschema in CI, yaml-language-server in editors)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.app.schema import render, schemas
from reconciler.support import yamlfast

ROOT = Path(__file__).resolve().parents[2]
FOLDER = ROOT / "schemas"
CHECK = Path(sys.executable).parent / "check-jsonschema"
# every desired-state file the repository ships: the example desired state, the Let's Encrypt examples,
# the starter that `certctl init` writes
EXAMPLES = sorted(
    [
        *(ROOT / "desired-state").glob("*.yaml"),
        *(ROOT / "examples").rglob("*.yaml"),
        *(ROOT / "reconciler" / "templates" / "init").glob("*.yaml"),
    ]
)


def test_schemas_folder_is_in_sync_with_the_models() -> None:
    expected = {name: render(schema) for name, schema in schemas().items()}
    actual = {p.name: p.read_text() for p in FOLDER.glob("*.json")}
    stale = sorted(n for n in expected if actual.get(n) != expected[n])
    extra = sorted(set(actual) - set(expected))
    assert not stale and not extra, f"schemas/ is out of date ({stale or extra}); run `make schemas`"


def test_no_schema_points_at_the_network() -> None:
    for name, schema in schemas().items():
        text = json.dumps(schema)
        assert "$id" not in schema, name
        refs = [part.split('"')[0] for part in text.split('"$ref": "')[1:]]
        assert refs and all(r.startswith("#/$defs/") for r in refs), (name, refs)


def test_example_files_name_their_schema() -> None:
    for path in (p for p in EXAMPLES if "templates" not in p.parts):  # the starter's: tests/e2e/test_init.py
        first = path.read_text().splitlines()[0]
        assert first.startswith("# yaml-language-server: $schema="), path
        assert (path.parent / first.split("=", 1)[1]).resolve().exists(), path


def _split(paths: list[Path], folder: Path) -> list[Path]:
    """One JSON file per document (check-jsonschema reads one document per file)."""
    out = []
    for path in paths:
        for index, doc in enumerate(d for d in yamlfast.load_all(path.read_text()) if d is not None):
            target = folder / f"{path.parent.name}-{path.stem}-{index}.json"
            target.write_text(json.dumps(doc))
            out.append(target)
    return out


def _check(files: list[Path]) -> subprocess.CompletedProcess[str]:
    offline = {
        **os.environ,
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "",
    }
    return subprocess.run(
        [str(CHECK), "--schemafile", str(FOLDER / "certctl.json"), *map(str, files)],
        capture_output=True,
        text=True,
        env=offline,
        check=False,
        timeout=120,
    )


def test_every_example_validates_offline_with_check_jsonschema(tmp_path: Path) -> None:
    files = _split(EXAMPLES, tmp_path)
    assert len(files) >= 15
    result = _check(files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok -- validation done" in result.stdout


def test_an_error_names_the_field_not_the_union(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {
                "apiVersion": "certctl/v1",
                "kind": "Certificate",
                "metadata": {"name": "www"},
                "spec": {"issuer": "local", "domains": ["www.example.com"], "stroes": ["pem"]},
            }
        )
    )
    result = _check([bad])
    assert result.returncode == 1
    assert "stroes" in result.stdout and "not valid under any of the given schemas" not in result.stdout, (
        result.stdout
    )


@pytest.mark.parametrize("kind", ["Settings", "Issuer", "Store", "IisHost", "Certificate"])
def test_each_kind_is_dispatched_on_kind(kind: str, tmp_path: Path) -> None:
    doc = tmp_path / "doc.json"
    doc.write_text(
        json.dumps({"apiVersion": "certctl/v1", "kind": kind, "metadata": {"name": "x"}, "spec": {"nope": 1}})
    )
    result = _check([doc])
    assert result.returncode == 1 and "nope" in result.stdout, result.stdout

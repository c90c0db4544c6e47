from __future__ import annotations

from pathlib import Path

from reconciler.app.schema import render, schemas

ROOT = Path(__file__).resolve().parents[2]


def test_schemas_folder_is_in_sync_with_the_models() -> None:
    expected = {name: render(schema) for name, schema in schemas().items()}
    actual = {p.name: p.read_text() for p in (ROOT / "schemas").glob("*.json")}
    stale = sorted(n for n in expected if actual.get(n) != expected[n])
    extra = sorted(set(actual) - set(expected))
    assert not stale and not extra, f"schemas/ is out of date ({stale or extra}); run `make schemas`"


def test_example_files_name_their_schema() -> None:
    for path in sorted((ROOT / "desired-state").glob("*.yaml")):
        first = path.read_text().splitlines()[0]
        assert first.startswith("# yaml-language-server: $schema=../schemas/"), path
        assert (path.parent / first.split("=", 1)[1]).resolve().exists(), path

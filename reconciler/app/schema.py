"""JSON Schemas of every kind, for editors (yaml-language-server) and for review."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reconciler.core.spec import KIND_SPECS, document_model
from reconciler.support.fs import atomic_write

SCHEMA_BASE = "https://certctl.dev/schemas/"


def schemas() -> dict[str, dict[str, Any]]:
    """File name -> schema: one per kind, plus certctl.json that accepts any kind (multi-document files)."""
    out: dict[str, dict[str, Any]] = {}
    for kind in KIND_SPECS:
        schema = document_model(kind).model_json_schema(by_alias=True)
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"{SCHEMA_BASE}{kind.lower()}.json"
        out[f"{kind.lower()}.json"] = schema
    out["certctl.json"] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"{SCHEMA_BASE}certctl.json",
        "title": "certctl desired-state document",
        "oneOf": [{"$ref": f"{kind.lower()}.json"} for kind in KIND_SPECS],
    }
    return out


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write_schemas(folder: Path) -> list[Path]:
    written = []
    for name, schema in schemas().items():
        path = folder / name
        atomic_write(path, render(schema))
        written.append(path)
    return written

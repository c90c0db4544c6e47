"""JSON Schemas of every kind, for editors (yaml-language-server), CI (check-jsonschema) and review.

Every schema resolves from its own file alone: definitions are inlined under ``$defs`` and referenced
as ``#/$defs/...``, and no schema has an ``$id`` on a network address, so validation works offline.
``certctl.json`` accepts a document of any kind and dispatches on ``kind`` (if/then), so an error names
the field that is wrong instead of "not valid under any of the given schemas".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from reconciler.core.spec import KIND_SPECS, document_model
from reconciler.support.fs import atomic_write

DRAFT = "https://json-schema.org/draft/2020-12/schema"


def _kind_schema(kind: str) -> dict[str, Any]:
    schema = document_model(kind).model_json_schema(by_alias=True)
    return {"$schema": DRAFT, **schema}


def _any_kind() -> dict[str, Any]:
    mode: Literal["validation"] = "validation"
    models: list[tuple[type[BaseModel], Literal["validation"]]] = [
        (document_model(kind), mode) for kind in KIND_SPECS
    ]
    refs, combined = models_json_schema(models, by_alias=True, ref_template="#/$defs/{model}")
    branches = []
    for kind in KIND_SPECS:
        ref = refs[(document_model(kind), "validation")]["$ref"]
        branches.append(
            {"if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]}, "then": {"$ref": ref}}
        )
    return {
        "$schema": DRAFT,
        "title": "certctl desired-state document (any kind)",
        "type": "object",
        "required": ["apiVersion", "kind", "metadata"],
        "properties": {"apiVersion": {"const": "certctl/v1"}, "kind": {"enum": list(KIND_SPECS)}},
        "allOf": branches,
        "$defs": combined["$defs"],
    }


def schemas() -> dict[str, dict[str, Any]]:
    """File name -> schema: one per kind, plus certctl.json that accepts any kind (multi-document files)."""
    out = {f"{kind.lower()}.json": _kind_schema(kind) for kind in KIND_SPECS}
    out["certctl.json"] = _any_kind()
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


def rendered_schemas() -> dict[str, str]:
    """Every schema file, name -> text, made from the models (what `certctl schema --out` writes)."""
    return {name: render(schema) for name, schema in schemas().items()}

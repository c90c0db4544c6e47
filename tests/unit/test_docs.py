"""The documentation in docs/ is checked: every model field is documented in docs/reference.md and every
documented field exists; links between the project's pages resolve; nothing points outside the repository."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from pydantic import BaseModel

from reconciler.core.spec import KIND_SPECS, Metadata

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SECTION = re.compile(r"^### .*<!-- model: (\w+) -->$", re.M)
ROW = re.compile(r"^\| `([^`]+)` \|", re.M)


def _models() -> dict[str, type[BaseModel]]:
    found: dict[str, type[BaseModel]] = {}

    def walk(model: type[BaseModel]) -> None:
        if model.__name__ in found:
            return
        found[model.__name__] = model
        for f in model.model_fields.values():
            for inner in _inner(f.annotation):
                walk(inner)

    walk(Metadata)
    for spec in KIND_SPECS.values():
        walk(spec)
    return found


def _inner(annotation: object) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _inner(arg)]


def _documented() -> dict[str, list[str]]:
    text = (DOCS / "reference.md").read_text()
    out: dict[str, list[str]] = {}
    matches = list(SECTION.finditer(text))
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        body = text[match.end() : end].split("\n## ", 1)[0]
        assert match.group(1) not in out, f"{match.group(1)} is documented twice"
        out[match.group(1)] = ROW.findall(body)
    return out


def test_every_model_field_is_documented_and_every_documented_field_exists() -> None:
    models, documented = _models(), _documented()
    assert sorted(documented) == sorted(models), (
        "a section per model: <!-- model: Name --> in docs/reference.md"
    )
    for name, model in models.items():
        fields = [f.alias or n for n, f in model.model_fields.items()]
        assert documented[name] == fields, (
            f"docs/reference.md, {name}: documents {documented[name]}, the model has {fields}"
        )


def test_links_between_pages_resolve() -> None:
    pages = [ROOT / "README.md", *DOCS.glob("*.md"), *(ROOT / "examples").rglob("README.md")]
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            assert (page.parent / target).exists(), (
                f"{page.relative_to(ROOT)} links to {target}, which does not exist"
            )


def test_nothing_points_outside_the_repository() -> None:
    outside = re.compile(r"\.\./shared|DESIGN\.md|IIS\.md")
    for path in ROOT.rglob("*"):
        if any(
            part in {".git", ".venv", "build", "dist", "__pycache__"} or part.endswith(".egg-info")
            for part in path.relative_to(ROOT).parts
        ):
            continue
        if path.is_file() and path.suffix in {
            ".md",
            ".py",
            ".yaml",
            ".yml",
            ".ps1",
            ".xml",
            ".toml",
            ".service",
        }:
            if path == Path(__file__):
                continue
            assert not outside.search(path.read_text(errors="replace")), (
                f"{path.relative_to(ROOT)} points outside the repository"
            )


def test_the_docs_index_lists_every_page() -> None:
    index = (DOCS / "README.md").read_text()
    for page in DOCS.glob("*.md"):
        if page.name not in ("README.md", "architecture.md"):
            assert f"({page.name})" in index, f"docs/README.md does not list {page.name}"

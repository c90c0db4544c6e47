"""`certctl init [DIR]`: a commented starter desired state that `certctl plan` accepts as it is.

The files are package data (reconciler/templates/init/), with the JSON Schemas (made from the models,
as `certctl schema` makes them) beside them in ``DIR/.schemas/`` (a hidden folder: certctl does not read it) so an editor with the YAML language server
checks them offline. Nothing that exists is ever overwritten.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from reconciler.app.errors import UsageError
from reconciler.app.schema import rendered_schemas
from reconciler.support.fs import atomic_write


def templates() -> dict[str, str]:
    folder = resources.files("reconciler") / "templates" / "init"
    return {
        entry.name: entry.read_text(encoding="utf-8")
        for entry in folder.iterdir()
        if entry.name.endswith(".yaml")
    }


def write_starter(folder: Path) -> list[Path]:
    files = {Path(name): text for name, text in sorted(templates().items())}
    files.update({Path(".schemas") / name: text for name, text in sorted(rendered_schemas().items())})
    existing = sorted(str(folder / p) for p in files if (folder / p).exists() or (folder / p).is_symlink())
    specs = [p for p in folder.glob("*.y*ml")] if folder.is_dir() else []
    if existing or specs:
        found = existing or sorted(str(p) for p in specs)
        raise UsageError(
            f"{folder} already holds a desired state ({', '.join(found[:3])}); nothing was written"
        )
    written = []
    for rel, text in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, text.encode(), 0o644)
        written.append(path)
    return written

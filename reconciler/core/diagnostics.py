"""Diagnostics: every problem found, with where it is, reported together."""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.core.model import Source

Path = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Problem:
    """A problem in one document: ``path`` is a field path inside it, e.g. ('spec', 'domains', 1)."""

    source: Source
    path: Path
    message: str


@dataclass(frozen=True, slots=True)
class Diagnostic:
    file: str
    line: int  # 1-based
    column: int  # 1-based
    field: str  # spec.domains[1]
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


def field_path(path: Path) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out

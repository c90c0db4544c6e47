"""Desired-state directory -> DesiredState, or every problem at once with file:line:col.

Files are parsed with ruamel's C parser and a small core-schema constructor (reconciler.support.yamlfast);
only a file that has a problem is parsed again with ruamel's round-trip loader, which knows where
every key and item stands.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from reconciler.core import challenge_rules, validate
from reconciler.core.diagnostics import Diagnostic, Problem, field_path
from reconciler.core.model import DesiredState, Named, Source
from reconciler.core.spec import API_VERSION, KIND_SPECS, SettingsSpec, document_model
from reconciler.state.cache import PickleCache, file_key
from reconciler.support import yamlfast
from reconciler.support.git import head as git_head
from reconciler.support.parallel import map_batch


class InvalidDesiredState(Exception):
    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        super().__init__(f"{len(diagnostics)} problem(s) in the desired state")
        self.diagnostics = diagnostics


@dataclass
class _Doc:
    source: Source
    data: Any


def find_files(directory: Path) -> list[Path]:
    out: list[Path] = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out.extend(Path(root) / f for f in sorted(files) if f.endswith((".yaml", ".yml")) and not f.startswith("."))
    return out


def load(directory: Path | str, *, revision: bool = True, cache_dir: Path | None = None) -> DesiredState:
    """Load and validate every document below ``directory``; raise InvalidDesiredState with all problems.

    With ``cache_dir``, the validated documents of each file are kept keyed by the file's identity, so a
    second run reads and validates only the files that changed (cross-document checks always run).
    """
    directory = Path(directory)
    cache = PickleCache(cache_dir, PickleCache.name_for("desired", str(directory.resolve())))
    cached = cache.load() if cache_dir else {}
    fresh: dict[str, tuple[Any, list[tuple[str, Named[Any]]]]] = {}
    from_cache: list[tuple[str, Named[Any]]] = []
    diagnostics: list[Diagnostic] = []
    if not directory.is_dir():
        raise InvalidDesiredState([Diagnostic(str(directory), 1, 1, "", "the desired-state directory does not exist")])
    docs: list[_Doc] = []
    file_docs: dict[str, list[_Doc]] = {}
    keys: dict[str, Any] = {}
    to_parse: list[tuple[str, str]] = []
    for path in find_files(directory):
        display = _display(path)
        try:
            key = file_key(path.stat())
        except OSError:
            key = None
        hit = cached.get(display)
        if key is not None and hit is not None and hit[0] == key:
            from_cache.extend(hit[1])
            fresh[display] = hit
            continue
        keys[display] = key
        to_parse.append((str(path), display))
    for display, result in map_batch(_parse_files, to_parse, threshold=500):
        if isinstance(result, Diagnostic):
            diagnostics.append(result)
            continue
        these = file_docs.setdefault(display, [])
        for index, data in result:
            docs.append(_Doc(Source(display, index), data))
            these.append(docs[-1])

    problems: list[Problem] = []
    parsed: list[tuple[str, Named[Any]]] = list(from_cache)
    for display, these in file_docs.items():
        before = len(problems)
        valid = [p for p in (_validate_document(doc, problems) for doc in these) if p is not None]
        parsed.extend(valid)
        if len(problems) == before and keys.get(display) is not None:
            fresh[display] = (keys[display], valid)
    parsed.sort(key=lambda kn: (kn[1].source.file, kn[1].source.document))

    settings: Named[SettingsSpec] | None = None
    tables: dict[str, dict[str, Named[Any]]] = {k: {} for k in KIND_SPECS}
    for kind, named in parsed:
        table = tables[kind]
        if kind == "Settings" and settings is not None:
            problems.append(Problem(named.source, ("kind",),
                                    f"only one Settings document is allowed; another is in {settings.source.file}"))
            continue
        if named.name in table:
            first = table[named.name].source
            problems.append(Problem(named.source, ("metadata", "name"),
                                    f"duplicate {kind} name {named.name!r}; it is also defined in {first.file} "
                                    f"(document {first.document + 1})"))
            continue
        table[named.name] = named
        if kind == "Settings":
            settings = named

    desired = DesiredState(
        directory=str(directory),
        settings=settings.spec if settings else SettingsSpec(),
        settings_source=settings.source if settings else None,
        issuers=tables["Issuer"],
        stores=tables["Store"],
        iis_hosts=tables["IisHost"],
        certificates=tables["Certificate"],
        revision=None,
    )
    invalid = frozenset(
        (str(d.data.get("kind")), str(d.data.get("metadata", {}).get("name")))
        for d in docs
        if isinstance(d.data, dict) and isinstance(d.data.get("metadata"), dict)
    ) - {(kind, named.name) for kind, named in parsed}
    problems.extend(validate.check(desired, invalid))
    problems.extend(_provider_problems(desired))
    problems.extend(challenge_rules.reference_problems(desired))
    diagnostics.extend(_locate(problems))
    if diagnostics:
        diagnostics.sort(key=lambda d: (d.file, d.line, d.column, d.field))
        raise InvalidDesiredState(diagnostics)
    if cache_dir and (file_docs or set(fresh) != set(cached)):
        cache.save(fresh)
    if revision:
        from dataclasses import replace

        desired = replace(desired, revision=git_head(directory))
    return desired


def _provider_problems(desired: DesiredState) -> list[Problem]:
    """dns01.provider entries checked against dns-lexicon's own metadata (read only when one is used)."""
    names = {s.dns01.provider.name for i in desired.issuers.values() if i.spec.acme is not None
             for s in i.spec.acme.solvers if s.dns01 is not None and s.dns01.provider is not None}
    if not names:
        return []
    from reconciler.adapters.solvers.provider import catalog

    found, known = catalog(names)
    return challenge_rules.provider_problems(desired, found, known)


def _parse_files(batch: Sequence[tuple[str, str]]) -> list[tuple[str, list[tuple[int, Any]] | Diagnostic]]:
    """Read and parse files: per file its non-empty documents (index, data), or the Diagnostic that stops it."""
    out: list[tuple[str, list[tuple[int, Any]] | Diagnostic]] = []
    for path, display in batch:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            out.append((display, Diagnostic(display, 1, 1, "", f"cannot read the file: {exc}")))
            continue
        try:
            loaded = yamlfast.load_all(text)
        except YAMLError as exc:
            out.append((display, _yaml_error(display, exc)))
            continue
        out.append((display, [(i, d) for i, d in enumerate(loaded) if d is not None]))  # None: a stray '---'
    return out


def _display(path: Path) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if rel.startswith("..") else rel


def _yaml_error(display: str, exc: YAMLError) -> Diagnostic:
    if isinstance(exc, MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        if mark is not None:
            return Diagnostic(display, mark.line + 1, mark.column + 1, "", f"YAML syntax error: {problem}")
        return Diagnostic(display, 1, 1, "", f"YAML syntax error: {problem}")
    return Diagnostic(display, 1, 1, "", f"YAML error: {str(exc).strip()}")


def _validate_document(doc: _Doc, problems: list[Problem]) -> tuple[str, Named[Any]] | None:
    data = doc.data
    if not isinstance(data, dict):
        problems.append(Problem(doc.source, (), "a document must be a mapping with apiVersion, kind, metadata and spec"))
        return None
    ok = True
    if data.get("apiVersion") != API_VERSION:
        problems.append(Problem(doc.source, ("apiVersion",) if "apiVersion" in data else (),
                                f"apiVersion must be {API_VERSION}" + ("" if "apiVersion" in data else " (missing)")))
        ok = False
    kind = data.get("kind")
    if kind not in KIND_SPECS:
        if kind is None:
            problems.append(Problem(doc.source, (), "kind is missing"))
        else:
            hint = difflib.get_close_matches(str(kind), KIND_SPECS, n=1)
            problems.append(Problem(doc.source, ("kind",), f"unknown kind {kind!r}"
                                    + (f"; did you mean {hint[0]}?" if hint else f"; known kinds: {', '.join(KIND_SPECS)}")))
        return None
    model = document_model(kind)
    base = str(Path(doc.source.file).parent)
    try:
        value = model.model_validate(data, context={"base": base})
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            problems.append(Problem(doc.source, tuple(err["loc"]), _message(err, model, data)))
        return None
    if not ok:
        return None
    return kind, Named(value.metadata.name, value.spec, doc.source)  # type: ignore[attr-defined]


def _message(err: Any, model: Any, data: Any) -> str:
    kind = err["type"]
    msg = str(err["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if kind == "extra_forbidden":
        loc = tuple(err["loc"])
        known = _known_fields(model, loc[:-1])
        hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
        if hint:
            return f"unknown field {loc[-1]!r}; did you mean {hint[0]!r}?"
        return f"unknown field {loc[-1]!r}" + (f"; allowed: {', '.join(known)}" if known else "")
    if kind == "missing":
        return "required field is missing"
    if kind == "literal_error" and tuple(err["loc"]) == ("apiVersion",):
        return f"apiVersion must be {API_VERSION}"
    return msg


def _known_fields(model: Any, loc: tuple[Any, ...]) -> list[str]:
    """The field names allowed at a location (for 'did you mean')."""
    current = model
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if fields is None or part not in _aliases(current):
            return []
        annotation = fields[_aliases(current)[part]].annotation
        current = _model_in(annotation)
        if current is None:
            return []
    return sorted(_aliases(current)) if hasattr(current, "model_fields") else []


def _aliases(model: Any) -> dict[str, str]:
    return {(f.alias or n): n for n, f in model.model_fields.items()}


def _model_in(annotation: Any) -> Any:
    from typing import get_args

    if hasattr(annotation, "model_fields"):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


# --- positions ---------------------------------------------------------------------------------


def _locate(problems: list[Problem]) -> list[Diagnostic]:
    """Turn document-relative problems into file:line:col diagnostics (round-trip parse only those files)."""
    cache: dict[str, list[Any]] = {}
    out: list[Diagnostic] = []
    for problem in problems:
        file = problem.source.file
        if file not in cache:
            try:
                cache[file] = list(YAML().load_all(Path(file).read_text(encoding="utf-8")))
            except (OSError, YAMLError):
                cache[file] = []
        docs = [d for d in cache[file]]
        root = docs[problem.source.document] if problem.source.document < len(docs) else None
        line, col, clean = _position(root, problem.path, at_key=problem.message.startswith("unknown field"))
        out.append(Diagnostic(file, line, col, field_path(clean), problem.message))
    return out


def _position(root: Any, path: tuple[Any, ...], at_key: bool = False) -> tuple[int, int, tuple[Any, ...]]:
    """1-based line/column of the deepest part of ``path`` present in the document, and the clean path."""
    line, col = _start(root)
    node = root
    clean: list[Any] = []
    for depth, part in enumerate(path):
        if isinstance(node, dict) and not isinstance(part, int) and part in node:
            pos = node.lc.key(part) if hasattr(node, "lc") else None
            last = all(not isinstance(p, str) or not _is_field_name(p) for p in path[depth + 1:])
            if last and not at_key and hasattr(node, "lc") and not isinstance(node[part], dict | list):
                pos = node.lc.value(part)  # a wrong value: point at the value itself
            if pos:
                line, col = pos[0] + 1, pos[1] + 1
            node = node[part]
            clean.append(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            pos = node.lc.item(part) if hasattr(node, "lc") else None
            if pos:
                line, col = pos[0] + 1, pos[1] + 1
            node = node[part]
            clean.append(part)
        elif isinstance(part, str) and _is_field_name(part):
            clean.append(part)  # a missing or unknown field: point at its parent
            node = None
        # other parts are pydantic's union tags ('str', 'list[str]', 'function-after[...]'): skip
    return line, col, tuple(clean)


def _is_field_name(part: str) -> bool:
    return part.replace("_", "a").replace("-", "a").isalnum()


def _start(node: Any) -> tuple[int, int]:
    lc = getattr(node, "lc", None)
    if lc is not None and getattr(lc, "line", None) is not None:
        return lc.line + 1, lc.col + 1
    return 1, 1

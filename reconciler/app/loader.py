"""Desired-state directory -> DesiredState, or every problem at once with file:line:col.

Files are parsed with ruamel's C parser and a small core-schema constructor (reconciler.support.yamlfast);
only a file that has a problem is parsed again with ruamel's round-trip loader, which knows where
every key and item stands.
"""

from __future__ import annotations

import difflib
import itertools
import json
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
from reconciler.state.cache import JsonCache, as_file_key, file_key
from reconciler.support import yamlfast
from reconciler.support.fs import NotRegular, read_regular
from reconciler.support.git import revision as git_revision
from reconciler.support.parallel import iter_batch

MAX_FILE_BYTES = 16 << 20  # one spec file; 10,000 certificates in a single file take about 3 MB


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
        out.extend(
            Path(root) / f for f in sorted(files) if f.endswith((".yaml", ".yml")) and not f.startswith(".")
        )
    return out


def load(directory: Path | str, *, revision: bool = True, cache_dir: Path | None = None) -> DesiredState:
    """Load and validate every document below ``directory``; raise InvalidDesiredState with all problems.

    With ``cache_dir``, the parsed documents of each file are kept (as JSON) keyed by the file's identity,
    so a second run reads and parses only the files that changed. Every document is validated on every
    run, cached or not: the cache holds data, never a validated object.
    """
    directory = Path(directory)
    cache = JsonCache(cache_dir, JsonCache.name_for("desired", str(directory.resolve())))
    cached = cache.load() if cache_dir else {}
    fresh: dict[str, dict[str, Any]] = {}
    diagnostics: list[Diagnostic] = []
    if not directory.is_dir():
        raise InvalidDesiredState(
            [Diagnostic(str(directory), 1, 1, "", "the desired-state directory does not exist")]
        )
    docs: list[_Doc] = []
    keys: dict[str, Any] = {}
    to_parse: list[tuple[str, str]] = []
    results: list[tuple[str, list[tuple[int, Any]] | Diagnostic]] = []
    from_cache: set[str] = set()  # files whose documents came from the cache (JSON already)
    top = os.path.realpath(directory)
    for path in find_files(directory):
        display = _display(path)
        real = os.path.realpath(path)
        if os.path.commonpath([real, top]) != top:
            diagnostics.append(
                Diagnostic(
                    display,
                    1,
                    1,
                    "",
                    f"the file is a link to {real}, outside the desired-state directory; it is not read",
                )
            )
            continue
        try:
            key = file_key(path.stat())
        except OSError:
            key = None
        keys[display] = key
        hit = _cached_docs(cached.get(display), key)
        if hit is not None:
            results.append((display, hit))
            from_cache.add(display)
        else:
            to_parse.append((str(path), display))
    problems: list[Problem] = []
    parsed: list[tuple[str, Named[Any]]] = []
    # each file's documents are validated as soon as they are parsed, while workers parse the next files
    parsing = iter_batch(_parse_files, to_parse, threshold=500)
    for display, result in itertools.chain(results, parsing):
        if isinstance(result, Diagnostic):
            diagnostics.append(result)
            continue
        these = [_Doc(Source(display, index), data) for index, data in result]
        docs.extend(these)
        before = len(problems)
        parsed.extend(p for p in (_validate_document(doc, problems) for doc in these) if p is not None)
        if (
            len(problems) == before
            and keys.get(display) is not None
            and (display in from_cache or all(_json_data(d.data, 0) for d in these))
        ):
            fresh[display] = {
                "key": list(keys[display]),
                "docs": [[d.source.document, d.data] for d in these],
            }
    parsed.sort(key=lambda kn: (kn[1].source.file, kn[1].source.document))

    settings: Named[SettingsSpec] | None = None
    tables: dict[str, dict[str, Named[Any]]] = {k: {} for k in KIND_SPECS}
    for kind, named in parsed:
        table = tables[kind]
        if kind == "Settings" and settings is not None:
            problems.append(
                Problem(
                    named.source,
                    ("kind",),
                    f"only one Settings document is allowed; another is in {settings.source.file}",
                )
            )
            continue
        if named.name in table:
            first = table[named.name].source
            problems.append(
                Problem(
                    named.source,
                    ("metadata", "name"),
                    f"duplicate {kind} name {named.name!r}; it is also defined in {first.file} "
                    f"(document {first.document + 1})",
                )
            )
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
    diagnostics.extend(locate(problems))
    if diagnostics:
        diagnostics.sort(key=lambda d: (d.file, d.line, d.column, d.field))
        raise InvalidDesiredState(diagnostics)
    if cache_dir and (to_parse or set(fresh) != set(cached)):
        cache.save(fresh)
    if revision:
        from dataclasses import replace

        desired = replace(desired, revision=git_revision(directory))
    return desired


def _cached_docs(entry: Any, key: Any) -> list[tuple[int, Any]] | None:
    """A file's documents from the cache when the entry is well-formed and the file is unchanged, else None."""
    if key is None or not isinstance(entry, dict) or as_file_key(entry.get("key")) != key:
        return None
    docs = entry.get("docs")
    if not isinstance(docs, list) or not all(
        isinstance(d, list) and len(d) == 2 and type(d[0]) is int for d in docs
    ):
        return None
    return [(d[0], d[1]) for d in docs]


def _json_data(value: Any, depth: int) -> bool:
    """Does ``value`` survive a JSON round trip unchanged (string keys, finite floats, nesting within MAX_DEPTH)?"""
    if depth > yamlfast.MAX_DEPTH:
        return False
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_data(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return all(_json_data(v, depth + 1) for v in value)
    if isinstance(value, float):
        return value == value and value not in (float("inf"), float("-inf"))
    return value is None or isinstance(value, bool | int | str)


def _provider_problems(desired: DesiredState) -> list[Problem]:
    """dns01.provider entries checked against dns-lexicon's own metadata (read only when one is used)."""
    names = {
        s.dns01.provider.name
        for i in desired.issuers.values()
        if i.spec.acme is not None
        for s in i.spec.acme.solvers
        if s.dns01 is not None and s.dns01.provider is not None
    }
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
            text = read_spec_file(Path(path))
        except SpecFileError as exc:
            out.append((display, Diagnostic(display, 1, 1, "", str(exc))))
            continue
        try:
            loaded = yamlfast.load_all(text)
        except YAMLError as exc:
            out.append((display, _yaml_error(display, exc)))
            continue
        except (
            RecursionError,
            MemoryError,
            ValueError,
        ) as exc:  # bounded above; kept as a last line of defence
            out.append(
                (display, Diagnostic(display, 1, 1, "", f"the file cannot be loaded: {type(exc).__name__}"))
            )
            continue
        out.append((display, [(i, d) for i, d in enumerate(loaded) if d is not None]))  # None: a stray '---'
    return out


class SpecFileError(Exception):
    pass


def read_spec_file(path: Path) -> str:
    """A spec file's text: a regular file of at most MAX_FILE_BYTES of UTF-8, else SpecFileError.

    Opened without blocking and checked on the open descriptor, so a FIFO, a device (a link to
    /dev/zero), a socket or a folder named *.yaml is refused instead of hanging or filling memory.
    """
    try:
        data = read_regular(path, MAX_FILE_BYTES)
    except NotRegular as exc:
        text = str(exc)
        raise SpecFileError(
            f"{text}; only regular files are read" if text.startswith("not a") else f"the file {text}"
        ) from None
    except OSError as exc:
        raise SpecFileError(f"cannot read the file: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecFileError(f"the file is not UTF-8 (byte {exc.start})") from None
    if "\x00" in text:
        raise SpecFileError(
            f"the file holds a NUL character (offset {text.index(chr(0))}); YAML does not allow it"
        )
    return text


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
        problems.append(
            Problem(doc.source, (), "a document must be a mapping with apiVersion, kind, metadata and spec")
        )
        return None
    ok = True
    if data.get("apiVersion") != API_VERSION:
        problems.append(
            Problem(
                doc.source,
                ("apiVersion",) if "apiVersion" in data else (),
                f"apiVersion must be {API_VERSION}" + ("" if "apiVersion" in data else " (missing)"),
            )
        )
        ok = False
    kind = data.get("kind")
    if not isinstance(kind, str) or kind not in KIND_SPECS:
        if kind is None:
            problems.append(Problem(doc.source, (), "kind is missing"))
        elif not isinstance(kind, str):
            problems.append(
                Problem(doc.source, ("kind",), f"kind must be a string, one of: {', '.join(KIND_SPECS)}")
            )
        else:
            hint = difflib.get_close_matches(str(kind), KIND_SPECS, n=1)
            problems.append(
                Problem(
                    doc.source,
                    ("kind",),
                    f"unknown kind {kind!r}"
                    + (f"; did you mean {hint[0]}?" if hint else f"; known kinds: {', '.join(KIND_SPECS)}"),
                )
            )
        return None
    nul = _nul_paths(data)
    if nul:
        problems.extend(Problem(doc.source, path, "a NUL character is not allowed here") for path in nul)
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


def _nul_paths(data: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Where a string (key or value) of a document holds a NUL. One pass of the C JSON encoder rules it out
    for almost every document (it writes a NUL as \\u0000); the rest, and whatever it cannot encode, are
    walked."""
    try:
        if "\\u0000" not in json.dumps(data):
            return []
    except (TypeError, ValueError, RecursionError):
        pass
    return [path for path in _nul_strings(data, ()) if path]


def _nul_strings(value: Any, path: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """Where a string (key or value) holds a NUL: no path, name or command may, and the OS would refuse it later."""
    if isinstance(value, str):
        return [path] if "\x00" in value else []
    out: list[tuple[Any, ...]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            out += (
                [(*path, key)] if isinstance(key, str) and "\x00" in key else _nul_strings(item, (*path, key))
            )
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out += _nul_strings(item, (*path, index))
    return out


def _message(err: Any, model: Any, data: Any) -> str:
    kind = err["type"]
    msg = str(err["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
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


# --- what an earlier run learnt from the CAs ------------------------------------------------------


def check_profiles(desired: DesiredState, state_dir: Path) -> None:
    """Raise InvalidDesiredState when an ACME Issuer asks for a profile that its CA's directory, as recorded
    in the state dir the last time it was fetched, does not list (file:line:col of ``profile``). Offline: a
    directory never fetched is checked by the plan."""
    problems: list[Problem] = []
    for name, issuer in sorted(desired.issuers.items()):
        acme = issuer.spec.acme
        if acme is None or acme.profile is None:
            continue
        # the ACME client is imported only when a profile is asked for
        from reconciler.adapters.issuers.acme.issuer import cached_profiles
        from reconciler.core.planner import profile_problem

        problem = profile_problem(name, acme.profile, cached_profiles(state_dir, name, acme.directoryUrl))
        if problem is not None:
            problems.append(Problem(issuer.source, ("spec", "acme", "profile"), problem))
    if problems:
        raise InvalidDesiredState(locate(problems))


# --- positions ---------------------------------------------------------------------------------


def locate(problems: list[Problem]) -> list[Diagnostic]:
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
            last = all(not isinstance(p, str) or not _is_field_name(p) for p in path[depth + 1 :])
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

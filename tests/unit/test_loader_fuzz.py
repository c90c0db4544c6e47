"""Fuzzing the loader: every generated or mutated document either loads or yields diagnostics that say
where (file, line >= 1, column >= 1); no other exception escapes, and no input takes more than a second
(hypothesis' deadline)."""

from __future__ import annotations

import tempfile
from datetime import timedelta
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.app.loader import InvalidDesiredState, load
from reconciler.core.model import DesiredState
from tests.conftest import BASE

VALID = (
    BASE
    + """\
---
apiVersion: certctl/v1
kind: Certificate
metadata: {name: web}
spec: &spec
  issuer: local
  domains: [www.example.com, "*.example.org"]
  key: {algorithm: ecdsa-p256}
  stores: [pem]
  tasks:
    - files: {path: ../out, reload: [nginx, -s, reload], keyMode: "0600"}
    - script: {command: "echo hi", timeout: 30s}
  verify: [{endpoint: "www.example.com:443", sni: www.example.com}]
"""
)

# Characters that matter to YAML and to the specs (structure, quoting, anchors, tags, escapes, NUL, unicode).
YAML_BITS = st.sampled_from(
    [
        "[",
        "]",
        "{",
        "}",
        ":",
        ": ",
        "-",
        "- ",
        ",",
        "\n",
        "  ",
        "#",
        "&a ",
        "*a",
        "&b ",
        "*b",
        "<<: *a\n",
        "!!str ",
        "!!binary ",
        "!x ",
        "'",
        '"',
        "\\",
        "\\0",
        "\\x00",
        "\x00",
        "|",
        ">",
        "?",
        "---\n",
        "...\n",
        "%YAML 1.1\n",
        "9" * 30,
        "99999999999999d",
        "xn--zz",
        "é",
        "\u202e",
        "\t",
        "\r",
        "\ufeff",
        "null",
        "true",
        "1e999",
        ".nan",
        "kind",
        "Certificate",
        "spec",
        "domains",
        "apiVersion: certctl/v1\n",
    ]
)
# Deep nesting in the forms YAML allows (flow, block compact, mapping chains): up to a few thousand levels.
NESTING = st.integers(30, 3000).flatmap(
    lambda n: st.sampled_from(
        [
            "[" * n,
            "[" * n + "]" * n,
            "{a: " * n + "1" + "}" * n,
            "- " * n + "x\n",
            "? " * n,
            "".join(f"{' ' * i}k:\n" for i in range(n)) + " " * n + "v\n",
        ]
    )
)
PIECES = YAML_BITS | NESTING | st.text(max_size=8)


def _check(text: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        desired = Path(folder) / "desired"
        desired.mkdir()
        (desired / "fuzz.yaml").write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            result = load(desired, revision=False)
        except InvalidDesiredState as exc:
            assert exc.diagnostics
            for d in exc.diagnostics:
                assert d.file and d.line >= 1 and d.column >= 1 and d.message, d
        else:
            assert isinstance(result, DesiredState)


FUZZ = settings(max_examples=150, deadline=timedelta(seconds=1), suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.lists(PIECES, max_size=60).map("".join))
def test_generated_documents_load_or_say_where(text: str) -> None:
    _check(text)


@st.composite
def mutated(draw: st.DrawFn) -> str:
    text = VALID
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "replace", "repeat"]))
        piece = draw(PIECES)
        if op == "insert":
            text = text[:at] + piece + text[at:]
        elif op == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 40)) :]
        elif op == "replace":
            text = text[:at] + piece + text[at + len(piece) :]
        else:  # repeat a slice many times: deep nesting, long lines, alias fan-out
            end = min(len(text), at + draw(st.integers(1, 12)))
            text = text[:at] + text[at:end] * draw(st.integers(2, 400)) + text[end:]
    return text


@FUZZ
@given(mutated())
def test_mutated_specs_load_or_say_where(text: str) -> None:
    _check(text)


def test_the_unmutated_document_loads() -> None:
    _check(VALID)  # the mutations start from a valid document
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "ok.yaml").write_text(VALID)
        assert "web" in load(folder, revision=False).certificates

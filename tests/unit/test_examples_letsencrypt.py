"""The Let's Encrypt example Issuers (examples/letsencrypt/) validate, and are not active anywhere."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from reconciler.app.loader import InvalidDesiredState, load

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "letsencrypt"
STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"
PRODUCTION = "https://acme-v02.api.letsencrypt.org/directory"

EXPECTED = {  # file -> (Issuer name, directory, solver kind)
    "letsencrypt-staging-http01.yaml": ("letsencrypt-staging", STAGING, "http01"),
    "letsencrypt-http01.yaml": ("letsencrypt", PRODUCTION, "http01"),
    "letsencrypt-staging-dns01.yaml": ("letsencrypt-staging-dns", STAGING, "dns01"),
    "letsencrypt-dns01.yaml": ("letsencrypt-dns", PRODUCTION, "dns01"),
}

STORE = """\
apiVersion: certctl/v1
kind: Store
metadata: {name: pem}
spec:
  pemDirectory: {path: ../pem}
"""


def test_every_example_is_listed() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("file", sorted(EXPECTED))
def test_example_issuer_validates_with_a_certificate_using_it(file: str, tmp_path: Path) -> None:
    name, directory, kind = EXPECTED[file]
    desired = tmp_path / "desired"
    desired.mkdir()
    shutil.copy(EXAMPLES / file, desired / file)
    domains = '["*.example.com", example.com]' if kind == "dns01" else "[www.example.com, example.com]"
    (desired / "rest.yaml").write_text(
        STORE + "---\napiVersion: certctl/v1\nkind: Certificate\nmetadata: {name: site}\n"
        f"spec:\n  issuer: {name}\n  domains: {domains}\n  stores: [pem]\n"
    )
    with pytest.raises(
        InvalidDesiredState
    ) as refused:  # as shipped: the user has not agreed to the terms yet
        load(desired)
    [problem] = refused.value.diagnostics
    line = next(
        i
        for i, text in enumerate((desired / file).read_text().splitlines(), 1)
        if text.strip().startswith("agreeToS:")
    )
    assert (problem.file, problem.line, problem.field) == (str(desired / file), line, "spec.acme.agreeToS")
    assert "certificate site uses issuer" in problem.message and "set agreeToS: true" in problem.message
    (desired / file).write_text((desired / file).read_text().replace("agreeToS: false", "agreeToS: true"))
    state = load(desired)
    assert set(state.issuers) == {name}
    acme = state.issuers[name].spec.acme
    assert acme is not None and acme.directoryUrl == directory
    assert "agreeToS: false" in (EXAMPLES / file).read_text()  # the user agrees, after reading the terms
    assert [s.dns01 is not None for s in acme.solvers] == [kind == "dns01"]
    assert (EXAMPLES / file).read_text().startswith("# yaml-language-server")


def test_examples_are_not_in_the_active_desired_state() -> None:
    active = load(ROOT / "desired-state", revision=False)
    assert not any(i.spec.acme is not None for i in active.issuers.values())

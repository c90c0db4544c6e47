from __future__ import annotations

import os
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.support.logging import configure


def refuse_unlink(monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    """Make ``os.unlink`` of any path ending in ``suffix`` fail as a permission error would (root cannot be
    refused by permissions); every other path is removed as usual. ``monkeypatch.undo()`` ends it."""
    real_unlink = os.unlink

    def refuse(path: object, *args: object, **kwargs: object) -> None:
        if str(path).endswith(suffix):
            raise PermissionError(13, "Permission denied")
        real_unlink(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "unlink", refuse)


configure("console", "warning")

BASE = """\
apiVersion: certctl/v1
kind: Settings
metadata: {name: settings}
spec:
  stateDir: ../state
---
apiVersion: certctl/v1
kind: Issuer
metadata: {name: local}
spec:
  localCA: {validity: 90d}
---
apiVersion: certctl/v1
kind: Store
metadata: {name: pem}
spec:
  pemDirectory: {path: ../pem}
"""


class Workspace:
    """A temporary desired-state directory (tmp/desired) with its state (tmp/state) and PEM store (tmp/pem)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.desired = root / "desired"
        self.state = root / "state"
        self.pem = root / "pem"
        self.desired.mkdir()

    def write(self, name: str, text: str) -> Path:
        path = self.desired / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    def base(self) -> None:
        self.write("base.yaml", BASE)

    def certificate(
        self,
        name: str,
        domains: list[str],
        *,
        extra: str = "",
        file: str | None = None,
        algorithm: str = "ecdsa-p256",
    ) -> Path:
        body = (
            "apiVersion: certctl/v1\nkind: Certificate\n"
            f"metadata: {{name: {name}}}\nspec:\n  issuer: local\n  domains: [{', '.join(domains)}]\n"
            f"  key: {{algorithm: {algorithm}}}\n  stores: [pem]\n" + extra
        )
        return self.write(file or f"{name}.yaml", body)

    def files_written(self) -> list[Path]:
        """Everything outside desired/ (state dir, stores, task outputs)."""
        return sorted(p for p in self.root.rglob("*") if not p.is_relative_to(self.desired) and p.is_file())


def consumer_thumbprint(folder: Path) -> str:
    """What a web server reads from ``folder`` (cert, chain, fullchain, privkey .pem): complete, consistent,
    the key the certificate's; returns the thumbprint it serves."""
    from reconciler.support import pki

    cert = (folder / "cert.pem").read_bytes()
    assert (folder / "fullchain.pem").read_bytes() == cert + (folder / "chain.pem").read_bytes(), folder
    assert pki.key_matches(cert, (folder / "privkey.pem").read_bytes()), folder
    return pki.info_from_pem(cert).thumbprint


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own certctl cache folder (never the user's ~/.cache)."""
    monkeypatch.setenv("CERTCTL_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    from reconciler.entry.cli import main

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run

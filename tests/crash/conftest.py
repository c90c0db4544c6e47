"""The crash suite: kill -9 at seeded points, a full disk, damaged state lines; each followed by a recovery
apply and a check of the invariants (tests/crash/world.py).

``CERTCTL_CRASH_SEEDS`` (default 12) sets how many kill points each scenario tries; raise it for a longer
chaos run, e.g. ``CERTCTL_CRASH_SEEDS=200 pytest tests/crash``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.crash.world import PFX_PASSWORD, make

SEEDS = int(os.environ.get("CERTCTL_CRASH_SEEDS", "12"))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "seed" in metafunc.fixturenames:
        metafunc.parametrize("seed", range(SEEDS))


@pytest.fixture(autouse=True)
def _pfx_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRASH_PFX_PASSWORD", PFX_PASSWORD)


@pytest.fixture(scope="session")
def converged_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A world after one successful apply, copied for each renewal scenario."""
    from reconciler.entry.cli import main

    root = tmp_path_factory.mktemp("crash-template") / "world"
    make(root)
    with (
        pytest.MonkeyPatch.context() as env
    ):  # session-scoped: never leave the secret in this worker's environment
        env.setenv("CRASH_PFX_PASSWORD", PFX_PASSWORD)
        assert main(["apply", "-d", str(root / "desired")]) == 0
    return root


def copy_world(template: Path, dest: Path) -> Path:
    shutil.copytree(template, dest, symlinks=True)
    return dest

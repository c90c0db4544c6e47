"""kill -9 at seeded points of a first apply (issuance, PEM installs, Windows store imports, IIS commits,
files and pfx deploys) and of a renewal (the same, plus rebinds): a recovery apply restores every invariant,
loses no issued version and issues nothing twice."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.crash.conftest import copy_world
from tests.crash.world import certctl_killed, check_invariants, make, versions


def steps(root: Path, *args: str) -> int:
    """How many file-system steps the run takes when nothing kills it (on a throw-away copy)."""
    count = root.parent / f"{root.name}.steps"
    done = certctl_killed(root, 0, *args, count_file=count)
    assert done.returncode == 0, done.stdout + done.stderr
    return int(count.read_text())


@pytest.fixture(scope="module")
def first_apply_steps(tmp_path_factory: pytest.TempPathFactory) -> int:
    root = tmp_path_factory.mktemp("count-first") / "world"
    make(root)
    return steps(root, "apply")


@pytest.fixture(scope="module")
def renewal_steps(tmp_path_factory: pytest.TempPathFactory, converged_template: Path) -> int:
    root = copy_world(converged_template, tmp_path_factory.mktemp("count-renew") / "world")
    return steps(root, "renew", "www")


def test_kill_during_first_apply(seed: int, first_apply_steps: int, tmp_path: Path, run_cli) -> None:
    root = tmp_path / "world"
    make(root)
    at = random.Random(f"first/{seed}").randint(1, first_apply_steps)
    killed = certctl_killed(root, at, "apply")
    assert killed.returncode in (-9, 0), killed.stderr  # 0: this run took fewer steps than the counted one
    code, out, err = run_cli("apply", "-d", str(root / "desired"))
    assert code == 0, f"recovery apply after a kill at step {at} failed:\n{out}{err}"
    check_invariants(root, run_cli)
    assert all(len(v) == 1 for v in versions(root).values()), (
        f"issued twice (kill at step {at}): {versions(root)}"
    )


def test_kill_during_renewal(
    seed: int, renewal_steps: int, converged_template: Path, tmp_path: Path, run_cli
) -> None:
    root = copy_world(converged_template, tmp_path / "world")
    # a converged apply on the copy first: the killed run then starts from a clean mark that vouches for
    # every folder (a copy's own mark is stale: its files have new identities), as on a real machine
    code, out, err = run_cli("apply", "-d", str(root / "desired"))
    assert code == 0 and (root / "state" / "clean.json").is_file(), out + err
    before = versions(root)
    at = random.Random(f"renew/{seed}").randint(1, renewal_steps)
    killed = certctl_killed(root, at, "renew", "www")
    assert killed.returncode in (-9, 0), killed.stderr
    code, out, err = run_cli("apply", "-d", str(root / "desired"))
    assert code == 0, f"recovery apply after a kill at step {at} failed:\n{out}{err}"
    check_invariants(root, run_cli)
    after = versions(root)
    assert after["api"] == before["api"] and after["shop"] == before["shop"]
    assert after["www"][: len(before["www"])] == before["www"], f"a version was lost (kill at step {at})"
    assert len(after["www"]) <= len(before["www"]) + 1, f"issued twice (kill at step {at}): {after['www']}"

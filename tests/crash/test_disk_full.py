"""A full disk under the state dir and the PEM store (a 2 MiB tmpfs filled up to a few KiB): apply fails
the actions it cannot record with a clear error, never a traceback; once there is space again, one apply
converges and nothing written before is lost. Needs root to mount tmpfs (the tests run as root); skipped,
saying why, where mounting is not permitted."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.crash.world import check_invariants, make, versions

MARGINS = (0, 1024, 4096, 16384, 49152)  # bytes left free: each stops the apply at another write


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "world" / "disk"
    mount.mkdir(parents=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"mounting tmpfs not permitted: {done.stderr.strip() or done.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)


def fill(mount: Path, leave: int) -> Path:
    """Fill the file system until ``leave`` bytes are free; returns the filler to delete later."""
    filler = mount / "filler"
    with open(filler, "wb") as fh:
        st = os.statvfs(mount)
        free = st.f_bavail * st.f_frsize
        chunk = b"\0" * 65536
        todo = max(0, free - leave)
        try:
            while todo > 0:
                todo -= fh.write(chunk[: min(len(chunk), todo)])
            fh.flush()
        except OSError:
            pass  # already full
    return filler


def no_traceback(out: str, err: str) -> None:
    assert "Traceback" not in out + err, out + err


@pytest.mark.parametrize("leave", MARGINS)
def test_first_apply_on_a_full_disk_fails_cleanly_then_converges(disk: Path, leave: int, run_cli) -> None:
    root = disk.parent
    make(root, state="disk/state", pem="disk/pem")
    filler = fill(disk, leave)
    code, out, err = run_cli("apply", "-d", str(root / "desired"))
    no_traceback(out, err)
    assert code == 1 or leave > 0, "nothing can be written on a full disk"
    if code != 0:
        assert "No space left on device" in out + err, out + err
    filler.unlink()
    code, out, err = run_cli("apply", "-d", str(root / "desired"))
    assert code == 0, out + err
    check_invariants(root, run_cli, state_dir="disk/state", pem="disk/pem")
    assert all(len(v) == 1 for v in versions(root, "disk/state").values())


@pytest.mark.parametrize("leave", MARGINS)
def test_renewal_on_a_full_disk_loses_nothing(disk: Path, leave: int, run_cli) -> None:
    root = disk.parent
    make(root, state="disk/state", pem="disk/pem")
    assert run_cli("apply", "-d", str(root / "desired"))[0] == 0
    before = versions(root, "disk/state")
    filler = fill(disk, leave)
    code, out, err = run_cli("renew", "www", "-d", str(root / "desired"))
    no_traceback(out, err)
    if code != 0:
        assert "No space left on device" in out + err, out + err
    assert versions(root, "disk/state")["www"][: len(before["www"])] == before["www"]
    filler.unlink()
    code, out, err = run_cli("apply", "-d", str(root / "desired"))
    assert code == 0, out + err
    check_invariants(root, run_cli, state_dir="disk/state", pem="disk/pem")
    after = versions(root, "disk/state")
    assert after["www"][: len(before["www"])] == before["www"] and len(after["www"]) <= 2
    assert after["api"] == before["api"] and after["shop"] == before["shop"]

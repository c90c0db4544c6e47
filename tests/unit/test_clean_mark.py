"""The clean mark: a holder of the apply lock that finishes cleanly says so, and the next recovery then
skips the walk through the vault, the stores and the task folders; anything else makes it look everywhere."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from reconciler.app.recovery import recover
from reconciler.state.statedir import CLEAN_MARK, StateDir
from reconciler.support import durable
from reconciler.support.fs import atomic_write
from tests.conftest import Workspace, refuse_unlink


def world_of(state: StateDir, store: Path) -> SimpleNamespace:
    return SimpleNamespace(
        state=state,
        stores={"pem": SimpleNamespace(path=store)},
        hosts={},
        issuers={},
        desired=SimpleNamespace(certificates={}),
    )


def debris(store: Path) -> Path:
    """What an interrupted install leaves in a store: a version folder that never took its name."""
    folder = store / "a" / "versions" / ".20261202T010000Z-ABCDEF12.tmp"
    folder.mkdir(parents=True)
    return folder


def test_a_holder_that_finishes_leaves_the_mark_and_removes_it_while_it_holds_the_lock(
    tmp_path: Path,
) -> None:
    state = StateDir(tmp_path / "state")
    with state.lock():
        assert state.recovery_needed(), "no mark yet: the first holder looks everywhere"
        assert not (state.path / CLEAN_MARK).exists()
        state.recovered(["store:/nowhere"])
    mark = json.loads((state.path / CLEAN_MARK).read_text())
    assert mark["pid"] == os.getpid() and mark["swept"] == ["store:/nowhere"]
    with state.lock():
        assert not state.recovery_needed()
        assert not (state.path / CLEAN_MARK).exists(), "gone before the holder writes anything"
    assert (state.path / CLEAN_MARK).exists()
    assert state.recovery_needed(), "asked without the lock: unknown, so yes"


def test_after_a_clean_finish_recovery_skips_the_walk_but_sweeps_the_state_dir_top(tmp_path: Path) -> None:
    state, store = StateDir(tmp_path / "state"), tmp_path / "pem"
    store.mkdir()
    with state.lock():
        recover(world_of(state, store))
    # planted by hand: a clean finish cannot leave these, so the walk that would find the first is skipped
    left = debris(store)
    (state.path / "cache").mkdir()
    (state.path / "acme" / "le").mkdir(parents=True)
    (state.path / "vault" / "a" / ".DEADBEEF.0123abcd.tmp").mkdir(parents=True)  # not looked for
    unlocked = [  # writes made without the lock (plan, status): caches, a CA's directory
        state.path / ".applied.json.ab12cd34.tmp",
        state.path / "cache" / ".desired-0123.json.ef56ab78.tmp",
        state.path / "acme" / "le" / ".directory.json.0a1b2c3d.tmp",
    ]
    for path in unlocked:
        path.write_text("half")
    with state.lock():
        counts = recover(world_of(state, store))
    assert counts["temp"] == 3
    assert not any(path.exists() for path in unlocked)
    assert left.exists()
    assert (state.path / "vault" / "a" / ".DEADBEEF.0123abcd.tmp").exists()


def test_a_store_the_mark_does_not_name_is_walked(tmp_path: Path) -> None:
    state, store, added = StateDir(tmp_path / "state"), tmp_path / "pem", tmp_path / "pem2"
    store.mkdir()
    with state.lock():
        recover(world_of(state, store))
    left, new = debris(store), debris(added)  # a Store added since, its folder used by something else
    world = world_of(state, store)
    world.stores["pem2"] = SimpleNamespace(path=added)
    with state.lock():
        assert recover(world)["temp"] == 1
    assert left.exists() and not new.exists()
    named = json.loads((state.path / CLEAN_MARK).read_text())["swept"]
    assert sorted(n.split("@")[0] for n in named) == [f"store:{store}", f"store:{added}"]


def test_a_place_swept_while_it_was_not_there_is_walked_once_it_is(tmp_path: Path) -> None:
    """A share unmounted during a full recovery, or a link pointed elsewhere since: another folder."""
    state, store = StateDir(tmp_path / "state"), tmp_path / "pem"
    real, other = tmp_path / "share-a", tmp_path / "share-b"
    real.mkdir()
    with state.lock():
        recover(world_of(state, store))  # the store's folder is not there: nothing is vouched for it
    assert json.loads((state.path / CLEAN_MARK).read_text())["swept"] == []
    store.symlink_to(real)
    left = debris(store)
    with state.lock():
        assert not state.recovery_needed()
        assert recover(world_of(state, store))["temp"] == 1
    assert not left.exists()
    other.mkdir()
    store.unlink()
    store.symlink_to(other)  # the same name, another folder: walked again
    left = debris(store)
    with state.lock():
        assert recover(world_of(state, store))["temp"] == 1
    assert not left.exists()


def test_what_recovery_removed_is_settled_before_the_mark_vouches_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, store = StateDir(tmp_path / "state"), tmp_path / "pem"
    left = debris(store)
    settled: list[tuple[str, bool]] = []
    real_settle = durable.settle

    def settle(*paths: str | Path) -> None:
        settled.extend((str(p), (state.path / CLEAN_MARK).exists()) for p in paths)
        real_settle(*paths)

    monkeypatch.setattr(durable, "settle", settle)
    with state.lock():
        recover(world_of(state, store))
    assert (str(left.parent), False) in settled, settled
    assert (state.path / CLEAN_MARK).is_file()


@pytest.mark.parametrize("cleaned_up", [True, False])
def test_a_write_that_failed_and_left_a_temporary_leaves_no_mark_whoever_caught_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cleaned_up: bool
) -> None:
    state, store = StateDir(tmp_path / "state"), tmp_path / "pem"
    store.mkdir()
    (tmp_path / "a-folder").mkdir()
    with state.lock():
        recover(world_of(state, store))
    real_unlink = os.unlink

    def unlink(path: object, *args: object, **kwargs: object) -> None:
        if not cleaned_up and ".a-folder." in str(path):
            raise PermissionError(13, "Permission denied")
        real_unlink(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "unlink", unlink)
    with state.lock(), pytest.raises(OSError):  # caught inside the lock, as a revocation check does
        atomic_write(tmp_path / "a-folder", b"x")  # the rename over a folder fails
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".a-folder.")]
    assert bool(left) is not cleaned_up
    assert (state.path / CLEAN_MARK).exists() is cleaned_up, "only what stays behind voids the mark"


def test_a_vault_version_that_cannot_be_removed_keeps_the_next_recovery_looking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, store = StateDir(tmp_path / "state"), tmp_path / "pem"
    incomplete = state.path / "vault" / "www" / "DEADBEEF"
    incomplete.mkdir(parents=True)
    (incomplete / "cert.pem").write_text("half")

    def refuse(path: object, *args: object, onerror: Any = None, **kwargs: object) -> None:
        onerror(os.rmdir, str(path), (PermissionError, PermissionError(13, "Permission denied"), None))

    monkeypatch.setattr(shutil, "rmtree", refuse)
    with state.lock():
        recover(world_of(state, store))
    assert incomplete.exists()
    assert not (state.path / CLEAN_MARK).exists()


def test_a_mark_that_cannot_be_removed_stops_the_holder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = StateDir(tmp_path / "state")
    with state.lock():
        state.recovered([])
    refuse_unlink(monkeypatch, CLEAN_MARK)
    with pytest.raises(OSError, match=r"cannot remove .*clean\.json"), state.lock():
        pytest.fail("the holder must not go on while a mark could vouch for what it leaves")
    monkeypatch.undo()
    with state.lock():  # the lock was let go, and the mark (nothing written since) still vouches
        assert not state.recovery_needed()


@pytest.mark.parametrize(
    "how",
    [
        "killed",
        "raised",
        "failed action",
        "stale mark",
        "index edited",
        "link",
        "garbage",
        "nested",
        "no list",
    ],
)
def test_anything_but_a_clean_finish_makes_the_next_recovery_look_everywhere(
    tmp_path: Path, how: str
) -> None:
    state, store = StateDir(tmp_path / "state"), tmp_path / "pem"
    with state.lock():
        recover(world_of(state, store))
    assert (state.path / CLEAN_MARK).is_file()
    mark = state.path / CLEAN_MARK
    if how == "killed":  # what a kill -9 leaves: the holder removed the mark and never wrote it back
        mark.unlink()
    elif how == "raised":
        with pytest.raises(RuntimeError), state.lock():
            raise RuntimeError("an error in the middle of an apply")
    elif how == "failed action":
        with state.lock():
            state.mark_unclean()  # what the executor does for an action that failed
    elif how == "stale mark":  # another writer (an older certctl) used the state dir since
        state.journal("intent", run="r1", action="issue/a")
        state.journal("done", run="r1", action="issue/a")
    elif how == "index edited":  # by hand, or a disk that lost its last line: reindexing is recovery's job
        (state.path / "vault").mkdir(exist_ok=True)
        (state.path / "vault" / "index.jsonl").write_text("")
    elif how == "link":
        elsewhere = tmp_path / "forged.json"
        elsewhere.write_text(mark.read_text())
        mark.unlink()
        mark.symlink_to(elsewhere)
    elif how == "nested":  # deeper than the JSON parser goes: RecursionError, not ValueError
        mark.write_text("[" * 100_000)
    elif how == "no list":
        mark.write_text(json.dumps({"logs": {}, "swept": "everything"}))
    else:
        mark.write_text("{not json")
    left = debris(store)
    with state.lock():
        assert state.recovery_needed()
        assert not os.path.lexists(mark), "whatever stood there is removed"
        counts = recover(world_of(state, store))
        assert not state.recovery_needed()
    assert counts["temp"] == 1
    assert not left.exists()
    assert (state.path / CLEAN_MARK).is_file(), "the recovery looked everywhere: clean again"


def test_a_pass_after_a_failure_does_not_mark_clean_until_a_recovery_has_looked(tmp_path: Path) -> None:
    """The daemon: a pass whose action failed, then a pass without recovery, then a maintenance pass."""
    state, store = StateDir(tmp_path / "state"), tmp_path / "pem"
    with state.lock():
        recover(world_of(state, store))
        left = debris(store)  # an install that failed midway
        state.mark_unclean()
    with state.lock():  # a pass that recovers nothing and fails nothing
        pass
    assert not (state.path / CLEAN_MARK).exists(), "the debris of the failed pass is still there"
    with state.lock():
        recover(world_of(state, store))
    assert not left.exists()
    assert (state.path / CLEAN_MARK).is_file()


def test_a_temporary_that_cannot_be_removed_keeps_the_next_recovery_looking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, store = StateDir(tmp_path / "state"), tmp_path / "pem"
    left = debris(store)

    def refuse(path: object, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(shutil, "rmtree", refuse)
    with state.lock():
        recover(world_of(state, store))
        assert state.recovery_needed()
    assert left.exists()
    assert not (state.path / CLEAN_MARK).exists()
    monkeypatch.undo()
    with state.lock():
        recover(world_of(state, store))
    assert not left.exists()
    assert (state.path / CLEAN_MARK).is_file()


def test_an_apply_with_a_failed_action_leaves_no_mark_and_the_next_one_looks_everywhere(
    tmp_path: Path, ws: Workspace, run_cli
) -> None:
    ws.base()
    ws.certificate("web", ["www.example.com"])
    desired = ws.desired
    (tmp_path / "pem").write_text("a file where the store's folder should be")
    code, out, err = run_cli("apply", "-d", str(desired), "--auto-approve")
    assert code == 1, out + err
    mark = tmp_path / "state" / CLEAN_MARK
    assert not mark.exists(), "an install failed: the next recovery must look everywhere"
    (tmp_path / "pem").unlink()
    left = debris(tmp_path / "pem")
    code, out, err = run_cli("apply", "-d", str(desired), "--auto-approve")
    assert code == 0, out + err
    assert not left.exists(), "swept by the recovery of the apply that followed the failure"
    assert mark.is_file()


def test_a_folder_named_like_the_mark_is_left_alone_and_recovery_always_looks(tmp_path: Path) -> None:
    state, store = StateDir(tmp_path / "state"), tmp_path / "pem"
    (state.path / CLEAN_MARK / "deep" / "er").mkdir(parents=True)
    for _ in range(2):
        left = debris(store)
        with state.lock():
            assert state.recovery_needed()
            recover(world_of(state, store))
        assert not left.exists()
        assert (state.path / CLEAN_MARK / "deep" / "er").is_dir(), "never removed: not certctl's"


def test_a_host_whose_rollback_cannot_finish_keeps_the_next_recovery_looking(tmp_path: Path) -> None:
    state, store = StateDir(tmp_path / "state"), tmp_path / "pem"
    calls: list[str] = []

    def sweep_temporaries(failed: list[str], removed_from: set[str]) -> int:
        calls.append("swept")
        failed.append("rollback not finished")
        return 0

    world = world_of(state, store)
    world.hosts = {"web01": SimpleNamespace(root=tmp_path / "iis", sweep_temporaries=sweep_temporaries)}
    for _ in range(2):
        with state.lock():
            recover(world)
        assert not (state.path / CLEAN_MARK).exists()
    assert calls == ["swept", "swept"]


def test_a_files_task_prune_interrupted_midway_is_swept(tmp_path: Path) -> None:
    """A prune renames an old version to ``.<version>.removing`` before deleting it: a crash in between left
    that folder, its private key included, in the task's folder (it was never swept before)."""
    state, store, out = StateDir(tmp_path / "state"), tmp_path / "pem", tmp_path / "www"
    left = out / ".certctl-versions" / ".ABCDEF0123.removing"
    left.mkdir(parents=True)
    (left / "privkey.pem").write_text("a key")
    kept = out / ".certctl-versions" / "ABCDEF0123"  # a version, not debris
    kept.mkdir()
    task = SimpleNamespace(files=SimpleNamespace(path=str(out)), pfx=None, ccs=None)
    world = world_of(state, store)
    world.desired = SimpleNamespace(certificates={"a": SimpleNamespace(spec=SimpleNamespace(tasks=[task]))})
    with state.lock():
        assert recover(world)["temp"] == 1
    assert not left.exists() and kept.is_dir()


def test_a_state_dir_whose_folder_cannot_be_synced_still_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some file systems refuse to sync a folder (EINVAL): the mark is removed all the same, and the holder
    goes on (the removal is then as durable as that file system makes it)."""
    state, store = StateDir(tmp_path / "state"), tmp_path / "pem"
    store.mkdir()
    with state.lock():
        recover(world_of(state, store))

    def refuse(*paths: str | Path) -> None:
        raise OSError(22, "Invalid argument")

    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(22, "Invalid argument")
        real_fsync(fd)

    monkeypatch.setattr(durable, "settle", refuse)
    monkeypatch.setattr(os, "fsync", fsync)
    for _ in range(3):
        with state.lock():
            assert not (state.path / CLEAN_MARK).exists()
            recover(world_of(state, store))
        assert (state.path / CLEAN_MARK).is_file()

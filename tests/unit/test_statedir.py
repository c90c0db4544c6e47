"""State dir: the append-only keyed logs and the journal's recovery and rotation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconciler.state import statedir
from reconciler.state.statedir import KeyedLog, StateDir


def test_keyed_log_survives_a_torn_line_and_compacts(tmp_path: Path) -> None:
    log = KeyedLog(tmp_path / "m.jsonl")
    for i in range(200):
        log.set("a", i)
    log.set("b", {"x": 1})
    log.delete("b")
    assert len(log.path.read_text().splitlines()) < 200  # compacted on the way
    with open(log.path, "a") as fh:
        fh.write('{"k": "c", "v": ')  # a crash mid-append
    assert KeyedLog(log.path).read() == {"a": 199}


def test_close_unfinished_closes_open_intents_and_rotates_a_large_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = StateDir(tmp_path)
    state.journal("intent", run="r1", action="issue/a")
    state.journal("done", run="r1", action="issue/a")
    state.journal("intent", run="r1", action="install/a/store/pem")
    monkeypatch.setattr(statedir, "JOURNAL_ROTATE_BYTES", 10**9)
    assert [e["action"] for e in state.close_unfinished(by="test")] == ["install/a/store/pem"]
    assert state.unfinished() == [] and (tmp_path / "journal.jsonl").exists()
    monkeypatch.setattr(statedir, "JOURNAL_ROTATE_BYTES", 1)
    assert state.close_unfinished(by="test") == []
    assert not (tmp_path / "journal.jsonl").exists() and (tmp_path / "journal.1.jsonl").exists()


def test_atomic_write_keeps_its_temporary_file_private_until_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A temporary file a kill leaves behind (seen at each fsync, the last moment before the rename) is 0600,
    whatever the final mode; the final file gets its mode."""
    import os

    from reconciler.support import fs as fsutil

    seen: list[int] = []
    real_fsync = os.fsync

    def watch(fd: int) -> None:
        st = os.fstat(fd)
        if not os.path.isdir(f"/proc/self/fd/{fd}"):
            seen.append(st.st_mode & 0o777)
        real_fsync(fd)

    monkeypatch.setattr(fsutil.os, "fsync", watch)  # type: ignore[attr-defined]
    fsutil.atomic_write(tmp_path / "cert.pem", b"public", 0o644)
    assert seen == [0o600]
    assert (tmp_path / "cert.pem").stat().st_mode & 0o777 == 0o644


def test_a_failed_append_is_cut_back_off(tmp_path: Path) -> None:
    """A full disk mid-append (here: a file size limit, which the kernel enforces like a full disk) leaves the log
    exactly as it was; the error names the file."""
    import resource
    import signal

    log = KeyedLog(tmp_path / "m.jsonl")
    log.set("a", 1)
    size = log.path.stat().st_size
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 10, old[1]))
    try:
        with pytest.raises(OSError, match=str(log.path)):
            log.set("b", "x" * 100)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, handler)
    assert log.path.stat().st_size == size
    assert KeyedLog(log.path).read() == {"a": 1}


def test_a_link_switch_killed_midway_leaves_a_temporary_that_recovery_knows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new link is made beside the old one under a name the sweep of a task folder removes (found by the
    crash suite: ``.privkey.pem.<pid>.tmp`` stayed in a files task's folder forever)."""
    import os

    from reconciler.support import fs as fsutil

    made: list[str] = []
    real_symlink = os.symlink

    def record(target: str, path: object) -> None:
        made.append(os.path.basename(str(path)))
        real_symlink(target, path)  # type: ignore[arg-type]

    monkeypatch.setattr(fsutil.os, "symlink", record)  # type: ignore[attr-defined]
    fsutil.atomic_symlink("current/privkey.pem", tmp_path / "privkey.pem")
    assert len(made) == 1 and fsutil.WRITE_TEMP.match(made[0]), made
    assert os.readlink(tmp_path / "privkey.pem") == "current/privkey.pem"
    assert sorted(os.listdir(tmp_path)) == ["privkey.pem"]


def _kept(tmp_path: Path) -> tuple[StateDir, Path]:
    from datetime import UTC, datetime

    from reconciler.adapters.issuers.localca import LocalCAIssuer
    from reconciler.core.spec import LocalCA
    from reconciler.ports import IssueRequest

    state = StateDir(tmp_path / "state")
    material = LocalCAIssuer("local", LocalCA(), tmp_path / "ca").issue(
        IssueRequest("web", ("www.example.com",), "ecdsa-p256")
    )
    state.store_issued("web", material, "localca:local", ("www.example.com",), datetime.now(UTC), None)
    index = state.vault / "index.jsonl"
    later = os.lstat(state.vault / "web" / material.info.thumbprint).st_ctime_ns + 10_000_000
    os.utime(index, ns=(later, later))  # the index written in a later clock tick than the folder
    return state, state.vault / "web" / material.info.thumbprint


def _recording_listdir(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    listed: list[str] = []
    real = os.listdir

    def recording(path: str) -> list[str]:
        listed.append(str(path))
        return real(path)

    monkeypatch.setattr(os, "listdir", recording)
    return listed


def test_an_unchanged_vault_folder_is_not_listed_and_a_deleted_key_is_still_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, folder = _kept(tmp_path)
    listed = _recording_listdir(monkeypatch)
    assert StateDir(state.path).issued()["web"][-1].lost is None
    assert listed == []  # its identity is as recorded: every file is still there
    (folder / "key.pem").unlink()
    assert StateDir(state.path).issued()["web"][-1].lost == "key.pem"
    assert StateDir(state.path).issued_for("web")[-1].lost == "key.pem"
    assert listed == [str(folder), str(folder)]


def test_a_vault_folder_changed_in_the_index_clock_tick_is_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, folder = _kept(tmp_path)
    ctime = os.lstat(folder).st_ctime_ns
    os.utime(state.vault / "index.jsonl", ns=(ctime, ctime))  # racily clean: proves nothing
    listed = _recording_listdir(monkeypatch)
    assert StateDir(state.path).issued()["web"][-1].lost is None
    assert listed == [str(folder)]


# --- state logs are read and written only as regular files ----------------------------------------------------


def test_a_log_that_is_a_link_is_neither_read_nor_written_through(tmp_path: Path) -> None:
    outside = tmp_path / "outside.jsonl"
    outside.write_text('{"k": "a", "v": 1}\n')
    log = tmp_path / "log.jsonl"
    log.symlink_to(outside)
    assert KeyedLog(log).read() == {}
    with pytest.raises(OSError, match="symbolic link"):
        KeyedLog(log).set("b", 2)
    assert outside.read_text() == '{"k": "a", "v": 1}\n'


def test_a_log_that_is_a_pipe_is_neither_read_nor_written(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    os.mkfifo(log)
    assert KeyedLog(log).read() == {}  # opened without waiting for a writer
    with pytest.raises(OSError, match="not a regular file"):
        KeyedLog(log).set("b", 2)


def test_a_line_nested_past_the_parser_is_skipped_and_the_others_kept(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    log.write_text('{"k": "a", "v": 1}\n{"k": "b", "v": ' + "[" * 100_000 + '\n{"k": "c", "v": 3}\n')
    assert KeyedLog(log).read() == {"a": 1, "c": 3}


def test_trust_is_judged_on_the_file_opened(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    log.write_text('{"k": "a", "v": 1}\n')
    seen: list[int] = []

    def refuse(st: os.stat_result) -> str | None:
        seen.append(st.st_ino)
        return "not ours"

    assert KeyedLog(log, trust=refuse).read() == {}
    assert seen == [os.stat(log).st_ino]
    assert KeyedLog(log, trust=lambda st: None).read() == {"a": 1}


def test_the_end_of_apply_flush_never_waits_on_a_log_replaced_by_a_pipe(tmp_path: Path) -> None:
    import threading

    log = tmp_path / "log.jsonl"
    KeyedLog(log).set("a", 1, wait=False)  # left for the flush at the end of the apply
    log.unlink()
    os.mkfifo(log)
    worker = threading.Thread(target=statedir.flush_lazy, daemon=True)
    worker.start()
    worker.join(30)
    hung = worker.is_alive()
    if hung:  # let it go before failing
        os.close(os.open(log, os.O_WRONLY | os.O_NONBLOCK))
    assert not hung


def test_a_failed_append_is_cut_back_off_and_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk mid-append: the part written is cut back off, and the error names the file."""
    import errno

    log = tmp_path / "log.jsonl"
    KeyedLog(log).set("a", 1)
    before = log.read_bytes()
    real = os.write

    def half_then_full(fd: int, data: bytes) -> int:
        if len(data) > 4:
            return real(fd, bytes(data[:4]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(OSError, match=f"cannot write {log}: No space left on device"):
        KeyedLog(log).set("b", 2)
    monkeypatch.undo()
    assert log.read_bytes() == before
    assert KeyedLog(log).read() == {"a": 1}


def test_a_log_trusted_again_after_a_chmod_is_read_again_and_never_wiped(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    log.write_text('{"k": "a", "v": 1}\n')
    os.chmod(log, 0o666)
    keyed = KeyedLog(log, trust=lambda st: "writable by others" if st.st_mode & 0o022 else None)
    assert keyed.read() == {}
    with pytest.raises(OSError, match="writable by others"):
        keyed.set("b", 2)  # nor written while untrusted
    os.chmod(log, 0o600)  # only the change time moves
    assert keyed.read() == {"a": 1}
    for i in range(70):  # enough to compact
        keyed.set(f"n{i}", i)
    assert KeyedLog(log).read()["a"] == 1

"""Files certctl reads back (caches, the state dir, the emulated IIS commit intent) and folders it writes
into may be planted by someone else: nothing read runs code or steers a write, nothing is written
through another user's link or into a folder another user can change."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest

from reconciler.adapters.iis.emulated import INTENT_FILE, EmulatedHost, IisHostError
from tests.conftest import Workspace
from tests.fixtures.iis import make_sample

NOBODY = 65534  # another, non-root user


class _Payload:
    """Unpickling this creates the folder ``marker``: proof that a cache was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.marker),)


def _as_root_only() -> None:
    if os.geteuid() != 0:
        pytest.skip("giving files to another user (chown) needs root; these tests run as root in CI")


# --- 1. no pickle, caches are untrusted data ---------------------------------------------------------------


@pytest.mark.parametrize("command", ["plan", "status"])
def test_a_planted_pickle_in_the_state_dir_is_never_executed(ws: Workspace, run_cli, command: str) -> None:
    ws.base()
    ws.certificate("web", ["www.example.com"])
    assert run_cli("apply", "-d", str(ws.desired))[0] == 0
    marker = ws.root / "pwned"
    (ws.state / "cache").mkdir(exist_ok=True)
    (ws.state / "cache" / "vault-index.pickle").write_bytes(
        pickle.dumps({"stamp": 0, "entries": _Payload(marker)})
    )
    code, _, err = run_cli(command, "-d", str(ws.desired))
    assert code == 0, err
    assert not marker.exists(), "a pickle from the state dir was executed"


def test_a_planted_pickle_in_the_user_cache_is_never_executed(ws: Workspace, run_cli) -> None:
    ws.base()
    ws.certificate("web", ["www.example.com"])
    marker = ws.root / "pwned"
    cache = Path(os.environ["CERTCTL_CACHE_DIR"])
    name = "desired-" + hashlib.sha256(str(ws.desired.resolve()).encode()).hexdigest()[:16]
    (cache / f"{name}.pickle").write_bytes(pickle.dumps(_Payload(marker)))
    assert run_cli("validate", "-d", str(ws.desired))[0] == 0
    assert not marker.exists(), "a pickle from the cache folder was executed"
    assert not list(cache.glob("*.pickle*")) or all(
        p.name == f"{name}.pickle" for p in cache.glob("*.pickle*")
    )
    assert list(cache.glob("desired-*.json")), "the cache is JSON"


def _planted_cache(ws: Workspace, run_cli) -> tuple[Path, Path]:
    """A valid cache from a real run, then edited to claim a Certificate no spec file holds."""
    ws.base()
    ws.certificate("web", ["www.example.com"])
    assert run_cli("validate", "-d", str(ws.desired))[0] == 0
    cache_dir = Path(os.environ["CERTCTL_CACHE_DIR"])
    (path,) = cache_dir.glob("desired-*.json")
    data = json.loads(path.read_text())
    entry = data["entries"][next(k for k in data["entries"] if k.endswith("web.yaml"))]
    entry["docs"][0][1]["metadata"]["name"] = "planted"
    path.write_text(json.dumps(data))
    return cache_dir, path


def test_a_cache_folder_of_another_user_is_ignored_with_a_warning(ws: Workspace, run_cli) -> None:
    _as_root_only()
    cache_dir, _ = _planted_cache(ws, run_cli)
    os.chown(cache_dir, NOBODY, NOBODY)
    code, out, err = run_cli("plan", "-d", str(ws.desired), "--json")
    assert code == 0, err
    assert "planted" not in out and "cache.ignored" in err and "owned by uid 65534" in err
    os.chown(cache_dir, 0, 0)
    os.chmod(cache_dir, 0o777)
    code, out, err = run_cli("plan", "-d", str(ws.desired), "--json")
    assert "planted" not in out and "writable by group or others" in err


def test_a_cache_of_our_own_is_used_and_a_corrupt_one_is_ignored(ws: Workspace, run_cli) -> None:
    _, path = _planted_cache(ws, run_cli)
    code, out, _ = run_cli("plan", "-d", str(ws.desired), "--json")
    assert (
        code == 0 and "planted" in out
    )  # proof the cache is read at all (so the test above means something)
    path.write_text("[" * 100_000)  # deeper than json can parse: RecursionError inside the reader
    code, out, err = run_cli("plan", "-d", str(ws.desired), "--json")
    assert code == 0 and "planted" not in out and "cache.ignored" in err


# --- 2. a planted intent file never steers a write ---------------------------------------------------------


@pytest.fixture
def machine(tmp_path: Path) -> EmulatedHost:
    root = tmp_path / "web01"
    make_sample.build(root)
    return EmulatedHost("web01", root)


@pytest.mark.parametrize(
    "intent",
    [
        [{"file": "../victim/secret.txt", "backup": None}],  # "the file did not exist before": delete it
        [{"file": "applicationHost.config", "backup": "../victim/secret.txt"}],  # restore from elsewhere
        [{"file": "/tmp/certctl-should-never-exist", "backup": None}],
        [{"file": "sub/applicationHost.config", "backup": None}],
    ],
)
def test_a_planted_commit_intent_is_refused_and_touches_nothing(
    machine: EmulatedHost, tmp_path: Path, intent: list[dict[str, object]]
) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "secret.txt").write_text("keep me")
    config = (machine.root / "applicationHost.config").read_bytes()
    (machine.root / INTENT_FILE).write_text(json.dumps(intent))
    with pytest.raises(IisHostError, match="commit intent"):
        machine.apply([])
    with pytest.raises(IisHostError, match="commit intent"):
        machine.recover()
    assert (victim / "secret.txt").read_text() == "keep me"
    assert (machine.root / "applicationHost.config").read_bytes() == config
    assert not Path("/tmp/certctl-should-never-exist").exists()
    assert machine.observe().reachable is False


def test_contained_refuses_names_that_leave_their_folder(tmp_path: Path) -> None:
    from reconciler.support.fs import UnsafePath, contained

    (tmp_path / "inside").mkdir()
    (tmp_path / "inside" / "out").symlink_to(tmp_path)
    assert contained(tmp_path / "inside", "a/b") == tmp_path / "inside" / "a" / "b"
    for bad in ("../x", "/etc/passwd", "a/../../x", "", "a//b", "C:/x", "a\x00b", "out/x"):
        with pytest.raises(UnsafePath):
            contained(tmp_path / "inside", bad)


def test_a_vault_index_naming_a_folder_outside_the_vault_is_refused(ws: Workspace, run_cli) -> None:
    from reconciler.state.statedir import StateDir
    from reconciler.support.fs import UnsafePath

    ws.base()
    ws.certificate("web", ["www.example.com"])
    assert run_cli("apply", "-d", str(ws.desired))[0] == 0
    victim = ws.root / "victim"
    victim.mkdir()
    state = StateDir(ws.state)
    with pytest.raises(UnsafePath):
        state.forget_issued("web", "../../victim")
    with pytest.raises(UnsafePath):
        state.material("..", "victim")
    assert victim.is_dir()


# --- 3. StrictModes for every folder certctl writes into -----------------------------------------------------


def test_a_link_or_folder_of_another_user_is_refused(tmp_path: Path) -> None:
    from reconciler.support.fs import write_path_problem

    _as_root_only()
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, NOBODY, NOBODY)
    link = tmp_path / "link"
    link.symlink_to(theirs)
    os.lchown(link, NOBODY, NOBODY)
    ours_to_theirs = tmp_path / "ours"
    ours_to_theirs.symlink_to(theirs)
    open_folder = tmp_path / "open"
    open_folder.mkdir()
    os.chmod(open_folder, 0o777)
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    assert "owned by uid 65534" in (write_path_problem(link / "x") or "")
    assert "owned by uid 65534" in (write_path_problem(ours_to_theirs / "x") or "")
    assert "writable by other users" in (write_path_problem(open_folder / "x") or "")
    assert write_path_problem(sticky / "mine" / "x") is None  # like /tmp: the next part is made by us
    (sticky / "planted").mkdir()
    os.chown(sticky / "planted", NOBODY, NOBODY)
    assert "owned by uid 65534" in (write_path_problem(sticky / "planted" / "x") or "")
    assert write_path_problem(tmp_path / "new" / "deeper") is None


def test_files_task_never_writes_through_another_users_link(ws: Workspace, run_cli) -> None:
    _as_root_only()
    victim = ws.root / "home-of-nobody"
    victim.mkdir()
    (victim / "privkey.pem").write_text("their key\n")
    os.chown(victim, NOBODY, NOBODY)
    (ws.root / "out").mkdir()
    (ws.root / "out" / "web").symlink_to(victim)
    os.lchown(ws.root / "out" / "web", NOBODY, NOBODY)
    ws.base()
    ws.certificate("web", ["www.example.com"], extra="  tasks: [{files: {path: ../out/web}}]\n")
    code, out, err = run_cli("apply", "-d", str(ws.desired))
    assert code == 1
    assert "refusing to write into files task folder" in out + err and "owned by uid 65534" in out + err
    assert (victim / "privkey.pem").read_text() == "their key\n"


@pytest.mark.parametrize("store", ["pem", "webroot"])
def test_stores_and_webroots_in_a_folder_others_can_write_are_refused(ws: Workspace, store: str) -> None:
    from reconciler.adapters.solvers.http01 import WebrootHttp01
    from reconciler.adapters.stores.pemdir import PemDirectoryStore
    from reconciler.ports import ChallengeTask
    from reconciler.support.fs import UnsafePath

    shared = ws.root / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    if store == "pem":
        from tests.fixtures.iis import make_sample as sample

        _root, inter = sample._ca()
        material = sample.material(sample.issue(inter, ["www.example.com"], seed="w"), inter)
        with pytest.raises(UnsafePath, match="writable by other users"):
            PemDirectoryStore("pem", shared / "pem").install("web", material, sample.NOT_BEFORE)
        assert not (shared / "pem").exists()
    else:
        from reconciler.ports import SolverError

        with pytest.raises(SolverError, match="refusing to write challenges"):
            WebrootHttp01(shared).prepare(
                [ChallengeTask("www.example.com", "http-01", "tok_en-123", "tok_en-123.ka")]
            )
        assert not (shared / ".well-known").exists()


@pytest.mark.parametrize("umask", [0o077, 0o000])
def test_folder_modes_do_not_depend_on_the_umask(tmp_path: Path, umask: int) -> None:
    from reconciler.support.fs import safe_folder

    old = os.umask(umask)
    try:
        safe_folder(tmp_path / "keys" / "deeper", 0o700)
        safe_folder(tmp_path / "web" / "deeper", 0o755)
    finally:
        os.umask(old)
    for folder, mode in (
        (tmp_path / "keys", 0o700),
        (tmp_path / "keys" / "deeper", 0o700),
        (tmp_path / "web", 0o755),
        (tmp_path / "web" / "deeper", 0o755),
    ):
        assert os.stat(folder).st_mode & 0o7777 == mode, folder


def test_a_state_dir_others_can_enter_is_reported(ws: Workspace, run_cli) -> None:
    ws.base()
    ws.certificate("web", ["www.example.com"])
    assert run_cli("apply", "-d", str(ws.desired))[0] == 0
    code, _, err = run_cli("status", "-d", str(ws.desired))
    assert code == 0 and "state_dir.too_open" not in err
    os.chmod(ws.state, 0o755)
    code, _, err = run_cli("status", "-d", str(ws.desired))
    assert code == 0 and "state_dir.too_open" in err and "chmod 700" in err
    shutil.rmtree(ws.state)

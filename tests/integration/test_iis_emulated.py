"""The emulated IIS machine on real temporary folders: observe, commits, the shared-endpoint overwrite,
all-or-nothing writes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.adapters.iis.changes import ChangeError
from reconciler.adapters.iis.emulated import INTENT_FILE, EmulatedHost, IisHostError
from reconciler.adapters.iis.httpsys import entry_for, parse_netsh, render_netsh
from reconciler.core.model import IIS_APPID, HostState, SiteState
from reconciler.ports import BindingChange, BindingHost
from tests.conftest import refuse_unlink
from tests.fixtures.iis import make_sample

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "iis"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def sample_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("template") / "web01"
    return root, make_sample.build(root)


@pytest.fixture
def machine(
    sample_template: tuple[Path, dict[str, str]], tmp_path: Path
) -> tuple[EmulatedHost, dict[str, str]]:
    template, thumbprints = sample_template
    root = tmp_path / "web01"
    shutil.copytree(template, root)
    return EmulatedHost("web01", root), thumbprints


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def binding_cert(state: HostState, site: str, info: str) -> str | None:
    """The certificate HTTP.sys serves for a binding (derived, as on a real server)."""
    b = next(b for s in state.sites if s.name == site for b in s.bindings if b.information == info)
    kind, key = entry_for(b)
    entry = next((e for e in state.httpsys if e.kind == kind and e.key.lower() == key), None)
    return entry.certhash if entry else None


def install_new(host: EmulatedHost, names: list[str], certificate: str, seed: str) -> str:
    _root, inter = make_sample._ca()
    issued = make_sample.issue(inter, names, seed=seed)
    stored = host.store("WebHosting").install(
        certificate, make_sample.material(issued, inter), make_sample.NOT_BEFORE
    )
    return stored.ref


# --- observe ------------------------------------------------------------------------------------------


def test_is_a_binding_host(machine: tuple[EmulatedHost, dict[str, str]]) -> None:
    assert isinstance(machine[0], BindingHost)


def test_observe_the_sample_machine(machine: tuple[EmulatedHost, dict[str, str]]) -> None:
    host, tps = machine
    state = host.observe()
    assert state.reachable and state.problems == () and state.iis_version == "10.0"
    assert [s.name for s in state.sites] == [
        "Default Web Site",
        "example.com",
        "shop",
        "apps",
        "legacy",
        "staging",
        "FTP",
    ]
    assert next(s for s in state.sites if s.name == "staging").state is SiteState.stopped
    assert binding_cert(state, "example.com", "*:443:www.example.com") == tps["www"]
    assert binding_cert(state, "Default Web Site", "*:443:") == tps["default"]
    assert binding_cert(state, "legacy", "*:443:legacy.example.net") == tps["default"]  # the shared endpoint
    assert binding_cert(state, "shop", "[2001:db8::10]:443:shop.example.net") == tps["shop"]
    assert binding_cert(state, "apps", "*:443:*.apps.example.org") == tps["apps"]
    assert next(s for s in state.sites if s.name == "FTP").ftp_cert_hash == tps["ftp"]
    assert state.stores == ("CA", "My", "WebHosting")
    assert any(e.appid != IIS_APPID and e.key == "0.0.0.0:8172" for e in state.httpsys)


def test_the_committed_example_folder_is_consistent() -> None:
    state = EmulatedHost("web01", REPO / "examples" / "iis-web01").observe()
    assert state.reachable and state.problems == ()
    host = EmulatedHost("web01", REPO / "examples" / "iis-web01")
    for e in state.httpsys:
        if e.certhash and e.appid == IIS_APPID:
            assert host.has_cert(e.certstorename or "My", e.certhash), e
    kinds = {(b.protocol, b.sni, b.ip != "*") for s in state.sites for b in s.bindings}
    assert {
        ("http", False, False),
        ("https", True, False),
        ("https", False, False),
        ("https", False, True),
        ("net.tcp", False, False),
        ("ftp", False, False),
    } <= kinds


def test_missing_folder_is_unreachable_and_apply_raises(tmp_path: Path) -> None:
    host = EmulatedHost("ghost", tmp_path / "nope")
    state = host.observe()
    assert not state.reachable and "ghost" in state.problems[0] and "does not exist" in state.problems[0]
    with pytest.raises(IisHostError, match="does not exist"):
        host.apply([BindingChange("remove", "x", "https", "*:443:x")])
    assert not host.store("WebHosting").observe().reachable


def test_malformed_config_is_reported_with_host_file_and_line(
    machine: tuple[EmulatedHost, dict[str, str]],
) -> None:
    host, _ = machine
    path = host.root / "applicationHost.config"
    path.write_bytes(path.read_bytes().replace(b"</sites>", b"</site>", 1))
    state = host.observe()
    assert not state.reachable
    assert (
        "web01" in state.problems[0]
        and f"{path}:" in state.problems[0]
        and "not well-formed" in state.problems[0]
    )
    with pytest.raises(IisHostError, match=r"applicationHost\.config:[0-9]+"):
        host.apply([])


def test_corrupt_httpsys_json_is_reported(machine: tuple[EmulatedHost, dict[str, str]]) -> None:
    host, _ = machine
    (host.root / "httpsys.json").write_text("[{")
    state = host.observe()
    assert not state.reachable and "httpsys.json" in state.problems[0]


def test_httpsys_json_renders_as_netsh_and_parses_back(machine: tuple[EmulatedHost, dict[str, str]]) -> None:
    host, _ = machine
    from reconciler.adapters.iis.httpsys import load_json

    table = load_json((host.root / "httpsys.json").read_bytes())
    entries = [r.to_entry() for r in parse_netsh(render_netsh(table))]
    assert entries == list(host.observe().httpsys)


# --- commits -----------------------------------------------------------------------------------------------


def test_empty_apply_and_noop_writes_nothing(machine: tuple[EmulatedHost, dict[str, str]]) -> None:
    host, tps = machine
    before = snapshot(host.root)
    mtime = (host.root / "applicationHost.config").stat().st_mtime_ns
    host.apply([])
    host.apply(
        [
            BindingChange(
                "ftp", "FTP", "ftp", "*:21:ftp.example.com", thumbprint=tps["ftp"], store="WebHosting"
            )
        ]
    )
    assert snapshot(host.root) == before
    assert (host.root / "applicationHost.config").stat().st_mtime_ns == mtime


def test_add_sni_binding(machine: tuple[EmulatedHost, dict[str, str]]) -> None:
    host, _ = machine
    tp = install_new(host, ["example.com"], "example-com", "apex")
    config_before = (host.root / "applicationHost.config").read_bytes()
    host.apply([BindingChange("add", "example.com", "https", "*:443:example.com", 1, tp, "WebHosting")])
    state = host.observe()
    assert binding_cert(state, "example.com", "*:443:example.com") == tp
    new = next(e for e in state.httpsys if e.key == "example.com:443")
    assert (new.kind, new.appid, new.certstorename) == ("hostnameport", IIS_APPID, "WebHosting")
    config = (host.root / "applicationHost.config").read_bytes()
    assert config == config_before.replace(
        b'                    <binding protocol="https" bindingInformation="*:443:www.example.com" sslFlags="1" />\n',
        b'                    <binding protocol="https" bindingInformation="*:443:www.example.com" sslFlags="1" />\n'
        b'                    <binding protocol="https" bindingInformation="*:443:example.com" sslFlags="1" />\n',
    )


def test_update_sni_binding_changes_only_its_entry(machine: tuple[EmulatedHost, dict[str, str]]) -> None:
    host, tps = machine
    tp = install_new(host, ["www.example.com", "example.com"], "www-example-com", "www2")
    config_before = (host.root / "applicationHost.config").read_bytes()
    host.apply(
        [
            BindingChange(
                "update",
                "example.com",
                "https",
                "*:443:www.example.com",
                1,
                tp,
                "WebHosting",
                old_thumbprint=tps["www"],
            )
        ]
    )
    state = host.observe()
    assert binding_cert(state, "example.com", "*:443:www.example.com") == tp
    assert binding_cert(state, "apps", "*:443:*.apps.example.org") == tps["apps"]
    assert (host.root / "applicationHost.config").read_bytes() == config_before  # replace keeps the XML


def test_update_keeps_flags_and_http_sys_settings(machine: tuple[EmulatedHost, dict[str, str]]) -> None:
    host, _ = machine
    tp = install_new(host, ["api.example.org"], "api-example-org", "api2")
    host.apply([BindingChange("update", "apps", "https", "*:8443:api.example.org", 0, tp, "WebHosting")])
    state = host.observe()
    api = next(b for s in state.sites for b in s.bindings if b.port == 8443)
    assert api.ssl_flags == 5 and binding_cert(state, "apps", "*:8443:api.example.org") == tp
    raw = json.loads((host.root / "httpsys.json").read_text())
    assert next(e for e in raw if e["key"] == "api.example.org:8443")["flags"] == {"Disable HTTP2": "Set"}


def test_shared_endpoint_overwrite_behaves_like_a_real_server(
    machine: tuple[EmulatedHost, dict[str, str]],
) -> None:
    """Updating the certificate of one non-SNI binding on 0.0.0.0:443 changes it for every binding there."""
    host, tps = machine
    tp = install_new(host, ["legacy.example.net"], "legacy-example-net", "legacy")
    host.apply([BindingChange("update", "legacy", "https", "*:443:legacy.example.net", 0, tp, "WebHosting")])
    state = host.observe()
    assert binding_cert(state, "legacy", "*:443:legacy.example.net") == tp
    assert binding_cert(state, "Default Web Site", "*:443:") == tp  # the other site changed too
    wmsvc = next(e for e in state.httpsys if e.key == "0.0.0.0:8172")
    assert wmsvc.certhash == tps["default"]  # another application's entry is untouched


def test_removing_a_binding_on_a_shared_endpoint_is_config_only(
    machine: tuple[EmulatedHost, dict[str, str]],
) -> None:
    host, tps = machine
    host.apply([BindingChange("remove", "legacy", "https", "*:443:legacy.example.net")])
    state = host.observe()
    assert binding_cert(state, "Default Web Site", "*:443:") == tps["default"]
    host.apply([BindingChange("remove", "Default Web Site", "https", "*:443:")])
    assert all(e.key != "0.0.0.0:443" for e in host.observe().httpsys)


def test_remove_sni_binding_deletes_its_entry_and_line(machine: tuple[EmulatedHost, dict[str, str]]) -> None:
    host, _ = machine
    host.apply([BindingChange("remove", "staging", "https", "*:443:staging.example.com")])
    state = host.observe()
    assert all(e.key != "staging.example.com:443" for e in state.httpsys)
    config = (host.root / "applicationHost.config").read_text()
    assert "*:443:staging.example.com" not in config
    assert (
        '<binding protocol="http" bindingInformation="*:80:staging.example.com" />\n                </bindings>'
        in config
    )


def test_ftp_change_writes_the_xml(machine: tuple[EmulatedHost, dict[str, str]]) -> None:
    host, _ = machine
    tp = install_new(host, ["ftp.example.com"], "ftp-example-com", "ftp2")
    host.apply(
        [BindingChange("ftp", "FTP", "ftp", "*:21:ftp.example.com", thumbprint=tp, store="WebHosting")]
    )
    assert next(s for s in host.observe().sites if s.name == "FTP").ftp_cert_hash == tp
    assert (
        f'serverCertHash="{tp}" serverCertStoreName="WebHosting" ssl128="false"'
        in (host.root / "applicationHost.config").read_text()
    )


def test_several_changes_are_one_commit_and_a_bad_one_changes_nothing(
    machine: tuple[EmulatedHost, dict[str, str]],
) -> None:
    host, _ = machine
    tp = install_new(host, ["example.com"], "example-com", "apex")
    before = snapshot(host.root)
    with pytest.raises(ChangeError, match="no site named"):
        host.apply(
            [
                BindingChange("add", "example.com", "https", "*:443:example.com", 1, tp),
                BindingChange("add", "missing", "https", "*:443:x.example.com", 1, tp),
            ]
        )
    assert snapshot(host.root) == before
    with pytest.raises(ChangeError, match="not in store"):
        host.apply([BindingChange("add", "example.com", "https", "*:443:example.com", 1, "D" * 40)])
    assert snapshot(host.root) == before


# --- all or nothing ------------------------------------------------------------------------------------------


def _two_file_change(host: EmulatedHost) -> list[BindingChange]:
    tp = install_new(host, ["example.com"], "example-com", "apex")
    return [BindingChange("add", "example.com", "https", "*:443:example.com", 1, tp, "WebHosting")]


@pytest.mark.parametrize(
    "step",
    [
        "staged",
        "before-rename:applicationHost.config",
        "after-rename:applicationHost.config",
        "before-rename:httpsys.json",
        "after-rename:httpsys.json",
    ],
)
def test_injected_failure_leaves_the_host_exactly_as_it_was(
    machine: tuple[EmulatedHost, dict[str, str]], step: str
) -> None:
    host, _ = machine
    changes = _two_file_change(host)
    before = snapshot(host.root)

    def fault(at: str) -> None:
        if at == step:
            raise OSError(f"injected failure at {at}")

    failing = EmulatedHost("web01", host.root, fault=fault)
    with pytest.raises(IisHostError, match="injected failure"):
        failing.apply(changes)
    assert snapshot(host.root) == before  # no temp, backup or intent file left either
    host.apply(changes)  # and the same commit works afterwards
    assert snapshot(host.root) != before


def test_a_crash_between_the_renames_is_rolled_back_by_the_next_apply(
    machine: tuple[EmulatedHost, dict[str, str]],
) -> None:
    host, _ = machine
    changes = _two_file_change(host)
    before = snapshot(host.root)
    before_state = host.observe()

    class Crash(BaseException):
        pass

    def crash(at: str) -> None:
        if at == "after-rename:applicationHost.config":
            raise Crash

    crashing = EmulatedHost("web01", host.root, fault=crash)
    crashing._rollback = lambda intent: (_ for _ in ()).throw(OSError("power lost"))  # type: ignore[method-assign]
    with pytest.raises(IisHostError, match="rolled back"):
        crashing.apply(changes)
    assert (host.root / INTENT_FILE).exists()
    during = host.observe()  # a plan made now sees the state before the interrupted commit
    assert during.sites == before_state.sites and during.httpsys == before_state.httpsys
    assert any("interrupted commit" in p for p in during.problems)
    assert host.recover() is True
    assert snapshot(host.root) == before


def test_an_intent_whose_backup_is_gone_reads_the_file_itself(
    machine: tuple[EmulatedHost, dict[str, str]],
) -> None:
    """A crash while a finished commit was being discarded must not make the HTTP.sys table look empty
    (cleanup would then think a bound certificate unused)."""
    host, _ = machine
    table = host.observe().httpsys
    assert table
    (host.root / INTENT_FILE).write_text(
        json.dumps([{"file": "httpsys.json", "backup": ".httpsys.json.certctl-bak"}])
    )
    assert host.observe().httpsys == table


@pytest.fixture
def readonly_root() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="certctl-ro-"))
    os.chmod(base, 0o755)
    yield base
    for p in [base, *base.rglob("*")]:
        if p.is_dir():
            os.chmod(p, 0o755)
    shutil.rmtree(base)


@contextlib.contextmanager
def without_root() -> Iterator[None]:
    """Root ignores file modes: run the block with the effective uid of ``nobody`` (restored afterwards)."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def test_read_only_folder_fails_cleanly(
    sample_template: tuple[Path, dict[str, str]], readonly_root: Path
) -> None:
    template, _ = sample_template
    root = readonly_root / "web01"
    shutil.copytree(template, root)
    host = EmulatedHost("web01", root)
    changes = _two_file_change(host)
    before = snapshot(root)
    os.chmod(root, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    with without_root(), pytest.raises(IisHostError, match=r"cannot write .*nothing was changed"):
        host.apply(changes)
    assert snapshot(root) == before


def test_read_only_files_in_a_writable_folder_are_replaced_atomically(
    machine: tuple[EmulatedHost, dict[str, str]],
) -> None:
    """Like a real server, a read-only attribute on the file does not stop a rename-based commit."""
    host, _ = machine
    changes = _two_file_change(host)
    os.chmod(host.root / "applicationHost.config", 0o444)
    host.apply(changes)
    assert stat.S_IMODE((host.root / "applicationHost.config").stat().st_mode) == 0o444
    assert any(e.key == "example.com:443" for e in host.observe().httpsys)


def test_a_finished_commit_whose_intent_cannot_be_removed_leaves_no_clean_mark(
    machine: tuple[EmulatedHost, dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit itself succeeded, but its intent file stayed: no clean mark may then vouch for this
    machine's folder, so the next recovery walks it and finishes what the commit left."""
    from reconciler.state.statedir import CLEAN_MARK, StateDir

    host, _ = machine
    (host.root / "httpsys.json").unlink()  # so the commit creates one file and replaces the other
    changes = _two_file_change(host)
    before = snapshot(host.root)
    state = StateDir(tmp_path / "state")
    refuse_unlink(monkeypatch, INTENT_FILE)
    with state.lock():
        state.recovered([])  # recovery looked everywhere: only something left behind can void the mark
        host.apply(changes)
    assert (host.root / INTENT_FILE).exists()
    assert not (state.path / CLEAN_MARK).exists()

    monkeypatch.undo()
    with state.lock():
        assert state.recovery_needed()
        failed: list[str] = []
        host.sweep_temporaries(failed=failed)
        assert failed == []
        state.recovered([])
    assert not (host.root / INTENT_FILE).exists()
    assert snapshot(host.root) == before, "rolled back as a whole (the next apply makes the change again)"
    assert (state.path / CLEAN_MARK).is_file()
    host.apply(changes)
    assert snapshot(host.root) != before

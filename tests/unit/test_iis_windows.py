"""The windows backend, without Windows: generated scripts, quoting, secrets, recorded outputs."""

from __future__ import annotations

import base64
import json
import re
import subprocess
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from reconciler.adapters.iis.certstore import StoreError
from reconciler.adapters.iis.changes import ChangeError
from reconciler.adapters.iis.emulated import EmulatedHost
from reconciler.adapters.iis.httpsys import parse_netsh, render_netsh
from reconciler.adapters.iis.windows import (
    BEGIN,
    END,
    PLACEHOLDER,
    PowerShellRunner,
    WindowsHost,
    WindowsHostError,
    extract_json,
    load_script,
    parse_read_output,
    ps_quote,
    render_script,
    stdin_payload,
)
from reconciler.core.model import SiteState
from reconciler.ports import BindingChange, BindingHost, Material, Store
from reconciler.support.pki import from_pfx
from tests.fixtures.iis import regexport

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "iis"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "iis-web01"
READ = (FIXTURES / "windows-read.stdout").read_text()
PS_QUOTES = "'\u2018\u2019\u201a\u201b"
EVIL = "O'Brien\u2019s \"site\" $(Remove-Item C:\\ -Recurse) `n; '@ \u2018x\u201b \u201a"


class Recorder:
    """A runner that records each call and answers from a queue of recorded outputs."""

    def __init__(self, *outputs: str) -> None:
        self.outputs = list(outputs)
        self.calls: list[tuple[str, dict[str, str]]] = []

    def __call__(self, script: str, env: Mapping[str, str]) -> str:
        self.calls.append((script, dict(env)))
        if not self.outputs:
            raise AssertionError("unexpected PowerShell call")
        return self.outputs.pop(0)


def read_output(mutate: Any = None) -> str:
    """The recorded read output, optionally changed (a site renamed, …)."""
    text = READ.replace("\r\n", "\n")
    start = text.index(BEGIN) + len(BEGIN)
    end = text.index(END)
    data = json.loads(text[start:end])
    if mutate:
        mutate(data)
    return text[:start] + "\n" + json.dumps(data) + "\n" + text[end:]


def ps_single_quoted_literal(text: str, start: int) -> tuple[str, int]:
    """An independent reading of a PowerShell single-quoted string starting at ``text[start]``:
    (value, index after the closing quote)."""
    assert text[start] in PS_QUOTES
    i, out = start + 1, []
    while i < len(text):
        c = text[i]
        if c in PS_QUOTES:
            if i + 1 < len(text) and text[i + 1] in PS_QUOTES:
                out.append(c)
                i += 2
                continue
            return "".join(out), i + 1
        out.append(c)
        i += 1
    raise AssertionError("unterminated string")


def script_input(script: str) -> Any:
    """The JSON document a rendered script carries, read back the way PowerShell would."""
    marker = "$in = ConvertFrom-Json "
    at = script.index(marker) + len(marker)
    value, end = ps_single_quoted_literal(script, at)
    assert script[end] == "\n"  # the literal is the whole rest of the statement: nothing broke out
    return json.loads(value)


# --- script text ----------------------------------------------------------------------------------


def test_ps_quote_doubles_every_quote_character() -> None:
    assert ps_quote("plain") == "'plain'"
    assert ps_quote("it's") == "'it''s'"
    assert (
        ps_quote("a\u2019b\u2018c\u201ad\u201be") == "'a\u2019\u2019b\u2018\u2018c\u201a\u201ad\u201b\u201be'"
    )
    for value in (EVIL, "", "'", "''", "\u2019'", "$env:X `$(x)"):
        assert ps_single_quoted_literal(ps_quote(value) + ";", 0) == (value, len(ps_quote(value)))


@pytest.mark.parametrize("name", ["read.ps1", "apply.ps1", "store_install.ps1", "store_remove.ps1"])
def test_every_script_is_package_data_with_one_input_placeholder(name: str) -> None:
    template = load_script(name)
    assert template.count(PLACEHOLDER) == 1
    assert "$ErrorActionPreference = 'Stop'" in template
    assert f"'{BEGIN}'" in template and f"'{END}'" in template
    rendered = render_script(name, {"x": EVIL})
    assert PLACEHOLDER not in rendered and script_input(rendered) == {"x": EVIL}


def test_read_script_is_one_call_reading_everything() -> None:
    host = WindowsHost("web01", runner=Recorder(READ), stores=("My", "WebHosting"))
    host.observe()
    [(script, env)] = host.runner.calls  # type: ignore[attr-defined]
    for needle in (
        "Microsoft.Web.Administration.dll",
        "$sm.Sites",
        "GetAttributeValue('sslFlags')",
        "CertificateHash",
        "netsh.exe http show sslcert",
        "'Cert:\\LocalMachine\\'",
        "FriendlyName",
        "HasPrivateKey",
        "GetChildElement('ftpServer').GetChildElement('security').GetChildElement('ssl')",
        "HKLM:\\SOFTWARE\\Microsoft\\InetStp",
        "$site.State",
        "CentralCertProvider",
        "ConvertTo-Json",
    ):
        assert needle in script, needle
    assert script_input(script) == {"stores": ["My", "WebHosting"]}
    assert env == {}


def test_stdin_payload_is_one_line_carrying_the_whole_script() -> None:
    script = render_script("apply.ps1", {"steps": [{"site": EVIL}]})
    payload = stdin_payload(script)
    assert payload.endswith("\n") and payload.count("\n") == 1
    encoded = re.search(r"FromBase64String\('([A-Za-z0-9+/=]+)'\)", payload)
    assert encoded and base64.b64decode(encoded.group(1)).decode("utf-8") == script


def test_default_runner_puts_the_script_on_stdin_and_secrets_in_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, Any] = {}

    def fake_run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        seen.update(args=args, **kwargs)
        return subprocess.CompletedProcess(args, 0, stdout=f'{BEGIN}\n{{"ok": true}}\n{END}\n', stderr="")

    monkeypatch.setattr(subprocess, "run", fake_run)
    runner = PowerShellRunner()
    out = runner("Write-Output 1", {"CERTCTL_PFX_PASSWORD": "hunter2"})
    assert extract_json(out) == {"ok": True}
    assert seen["args"] == ["powershell.exe", "-NoProfile", "-NonInteractive", "-Command", "-"]
    assert "hunter2" not in " ".join(seen["args"]) and "hunter2" not in seen["input"]
    assert seen["env"]["CERTCTL_PFX_PASSWORD"] == "hunter2"


def test_default_runner_reports_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        subprocess,
        "run",
        lambda args, **kw: subprocess.CompletedProcess(
            args,
            1,
            stdout="",
            stderr="Add-Type : Cannot find path 'C:\\Windows\\System32\\inetsrv\\Microsoft.Web.Administration.dll'",
        ),
    )
    with pytest.raises(WindowsHostError, match=r"exit 1.*Microsoft\.Web\.Administration"):
        PowerShellRunner()("x", {})

    def missing(args: list[str], **kw: Any) -> None:
        raise FileNotFoundError(2, "No such file or directory", "powershell.exe")

    monkeypatch.setattr(subprocess, "run", missing)
    with pytest.raises(WindowsHostError, match=r"cannot run powershell\.exe"):
        PowerShellRunner()("x", {})


@pytest.mark.parametrize(
    "stdout", ["", "WARNING: nothing\n", f"{BEGIN}\nnot json\n{END}\n", f"{BEGIN}\n{{}}\n"]
)
def test_output_without_a_readable_result_is_an_error(stdout: str) -> None:
    with pytest.raises(WindowsHostError):
        extract_json(stdout)


# --- reading the recorded output ---------------------------------------------------------------------


def test_recorded_read_matches_the_machine_it_was_recorded_from() -> None:
    snap = parse_read_output("web01", READ)
    emulated = EmulatedHost("web01", EXAMPLE).observe()
    assert snap.host.httpsys == emulated.httpsys
    assert [s.name for s in snap.host.sites] == [s.name for s in emulated.sites]
    for mine, theirs in zip(snap.host.sites, emulated.sites, strict=True):
        assert mine.bindings == theirs.bindings and mine.physical_path == theirs.physical_path
        assert (mine.ftp_cert_hash, mine.ftp_cert_store) == (theirs.ftp_cert_hash, theirs.ftp_cert_store)
    assert next(s for s in snap.host.sites if s.name == "staging").state is SiteState.stopped
    # FTP sites have no W3SVC state: read as started, with a note
    assert next(s for s in snap.host.sites if s.name == "FTP").state is SiteState.started
    assert any("'FTP'" in p and "state" in p for p in snap.host.problems)
    assert snap.host.iis_version == "10.0" and snap.host.stores == ("My", "WebHosting")
    managed = {c.thumbprint: c for c in snap.certs["webhosting"]}
    store_view = {c.ref: c for c in EmulatedHost("web01", EXAMPLE).store("WebHosting").observe().certs}
    assert set(managed) == set(store_view)
    for tp, cert in managed.items():
        assert cert.info == store_view[tp].info and cert.friendly_name == store_view[tp].friendly_name


def test_read_tolerates_windows_powershell_json_quirks() -> None:
    def quirks(data: dict[str, Any]) -> None:
        data["sites"] = data["sites"][0]  # a one-element array printed as the element
        data["sites"]["bindings"] = None
        data["stores"] = {"name": "My", "certs": None}
        data["ccs"] = {"path": "\\\\fs\\ccs", "files": {"name": "a.example.com.pfx", "thumbprint": "ab" * 20}}

    snap = parse_read_output("web01", read_output(quirks))
    assert [s.name for s in snap.host.sites] == ["Default Web Site"] and snap.host.sites[0].bindings == ()
    assert snap.host.stores == ("My",) and snap.host.ccs_files == (("a.example.com.pfx", "AB" * 20),)


def test_ftp_sites_inherit_site_defaults_on_windows_too() -> None:
    def defaults(data: dict[str, Any]) -> None:
        data["site_defaults_ftp"] = {"hash": "cd" * 20, "store": ""}
        for s in data["sites"]:
            s["ftp"] = None

    snap = parse_read_output("web01", read_output(defaults))
    ftp = next(s for s in snap.host.sites if s.name == "FTP")
    assert (ftp.ftp_cert_hash, ftp.ftp_cert_store) == ("CD" * 20, "MY")
    assert next(s for s in snap.host.sites if s.name == "apps").ftp_cert_hash is None


def test_observe_failure_is_unreachable_not_a_crash() -> None:
    def broken(script: str, env: Mapping[str, str]) -> str:
        raise WindowsHostError("PowerShell failed (exit 1): Access is denied")

    state = WindowsHost("web01", runner=broken).observe()
    assert not state.reachable and "Access is denied" in state.problems[0] and "web01" in state.problems[0]


def test_implements_the_protocols() -> None:
    host = WindowsHost("web01", runner=Recorder())
    assert isinstance(host, BindingHost) and isinstance(host.store("WebHosting"), Store)
    with pytest.raises(ValueError, match="remote machine"):
        WindowsHost("web02", computer_name="web02.example.com")


# --- writing -----------------------------------------------------------------------------------------------


def test_apply_resolves_against_a_fresh_read_and_commits_once() -> None:
    snap = parse_read_output("web01", READ)
    www_tp = next(
        c.thumbprint for c in snap.certs["webhosting"] if c.friendly_name.startswith("certctl:www-")
    )
    default_entry = next(e for e in snap.host.httpsys if e.key == "0.0.0.0:443")
    runner = Recorder(READ, (FIXTURES / "windows-apply.stdout").read_text())
    host = WindowsHost("web01", runner=runner, commit_attempts=5, backoff_ms=250)
    host.apply(
        [
            BindingChange(
                "add", "example.com", "https", "*:443:example.com", 1, www_tp.lower(), "WebHosting"
            ),
            BindingChange(
                "update",
                "legacy",
                "https",
                "*:443:legacy.example.net",
                0,
                www_tp,
                "WebHosting",
                old_thumbprint=default_entry.certhash,
            ),
            BindingChange("remove", "Default Web Site", "https", "*:443:"),
            BindingChange("remove", "staging", "https", "*:443:staging.example.com"),
            BindingChange("ftp", "FTP", "ftp", "", thumbprint=www_tp, store="WebHosting"),
        ]
    )
    assert len(runner.calls) == 2
    script, env = runner.calls[1]
    assert env == {}
    data = script_input(script)
    assert (data["attempts"], data["backoff_ms"]) == (5, 250)
    assert [(s["op"], s["site"], s["information"], s["config_only"]) for s in data["steps"]] == [
        ("add", "example.com", "*:443:example.com", False),
        ("replace", "legacy", "*:443:legacy.example.net", True),
        ("remove", "Default Web Site", "*:443:", True),  # legacy still uses 0.0.0.0:443
        ("remove", "staging", "*:443:staging.example.com", False),
        ("ftp", "FTP", "", False),
    ]
    assert data["steps"][0]["thumbprint"] == www_tp and data["steps"][0]["ssl_flags"] == 1
    for needle in (
        "$site.Bindings.Add($step.information, (ConvertTo-HashBytes $step.thumbprint), $step.store,",
        "$site.Bindings.Remove($old, $true)",
        "$site.Bindings.Remove($old, [bool]$step.config_only)",
        "$sm.CommitChanges()",
        "Start-Sleep -Milliseconds",
        "[math]::Pow(2, $attempt - 1)",
        "$ssl['serverCertHash'] = $step.thumbprint",
        "$sm.Dispose()",
        "$flags = [int]$old.GetAttributeValue('sslFlags')",
    ):
        assert needle in script, needle
    assert "SetAttributeValue('certificateHash'" not in script  # never edits a hash in place


def test_a_site_name_with_quotes_cannot_break_out_of_the_script() -> None:
    def rename(data: dict[str, Any]) -> None:
        data["sites"][1]["name"] = EVIL

    snap = parse_read_output("web01", read_output(rename))
    tp = next(c.thumbprint for c in snap.certs["webhosting"] if c.friendly_name.startswith("certctl:www-"))
    runner = Recorder(read_output(rename), (FIXTURES / "windows-apply.stdout").read_text())
    WindowsHost("web01", runner=runner).apply(
        [BindingChange("add", EVIL, "https", "*:443:example.com", 1, tp)]
    )
    script = runner.calls[1][0]
    assert script_input(script)["steps"][0]["site"] == EVIL
    assert "$(Remove-Item" not in script.replace(
        ps_quote(json.dumps(script_input(script), ensure_ascii=False, separators=(",", ":"))), ""
    )


def test_invalid_changes_fail_before_any_write() -> None:
    runner = Recorder(READ)
    with pytest.raises(ChangeError, match="not in store"):
        WindowsHost("web01", runner=runner).apply(
            [BindingChange("add", "example.com", "https", "*:443:example.com", 1, "E" * 40)]
        )
    assert len(runner.calls) == 1  # the read only


def test_commit_failure_is_raised() -> None:
    snap = parse_read_output("web01", READ)
    tp = snap.certs["webhosting"][0].thumbprint
    runner = Recorder(READ, f'{BEGIN}\n{{"ok": false}}\n{END}\n')
    with pytest.raises(WindowsHostError, match="did not report success"):
        WindowsHost("web01", runner=runner).apply(
            [BindingChange("update", "example.com", "https", "*:443:www.example.com", 0, tp)]
        )


# --- the store -----------------------------------------------------------------------------------------------


@pytest.fixture
def material() -> Material:
    import importlib.util

    spec = importlib.util.spec_from_file_location("iis_make_sample_win", FIXTURES / "make_sample.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    _root, inter = mod._ca()
    return mod.material(mod.issue(inter, ["new.example.com"], seed="win"), inter)


def test_install_imports_with_machine_key_and_checks_the_key(material: Material) -> None:
    from datetime import UTC, datetime

    tp = material.info.thumbprint
    runner = Recorder((FIXTURES / "windows-install-ok.stdout").read_text().replace("__TP__", tp))
    stored = (
        WindowsHost("web01", runner=runner)
        .store("WebHosting")
        .install("new-example-com", material, datetime(2026, 3, 1, tzinfo=UTC))
    )
    assert (stored.ref, stored.managed_by) == (tp, "new-example-com")
    [(script, env)] = runner.calls
    password = env["CERTCTL_PFX_PASSWORD"]
    assert len(password) >= 24 and password not in script
    data = script_input(script)
    assert data["store"] == "WebHosting" and data["thumbprint"] == tp
    assert data["friendly_name"] == "certctl:new-example-com 2026-01-01–2026-12-31"
    cert_pem, chain_pem, key_pem, _ = from_pfx(base64.b64decode(data["pfx"]), password.encode())
    assert cert_pem == material.cert_pem and chain_pem == material.chain_pem and key_pem == material.key_pem
    with pytest.raises(ValueError):
        from_pfx(base64.b64decode(data["pfx"]), None)  # the PFX in the script is encrypted
    for needle in (
        "X509KeyStorageFlags]'MachineKeySet, PersistKeySet'",
        "$env:CERTCTL_PFX_PASSWORD",
        "$c.FriendlyName = $in.friendly_name",
        "'CA', 'LocalMachine'",
        "$check.Open(",
        "FindByThumbprint",
        "GetRSAPrivateKey",
        "GetECDsaPrivateKey",
    ):
        assert needle in script, needle
    code = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("#"))
    assert "Exportable" not in code  # the key is not exportable


def test_install_without_private_key_fails(material: Material) -> None:
    from datetime import UTC, datetime

    runner = Recorder((FIXTURES / "windows-install-nokey.stdout").read_text())
    with pytest.raises(StoreError, match="private key is not there"):
        WindowsHost("web01", runner=runner).store("WebHosting").install(
            "x", material, datetime(2026, 3, 1, tzinfo=UTC)
        )


def test_store_observe_and_read() -> None:
    store = WindowsHost("web01", runner=Recorder(READ)).store("WebHosting", name="web01-webhosting")
    state = store.observe()
    assert state.name == "web01-webhosting" and len(state.certs) == 6
    assert {c.managed_by for c in state.certs} >= {"www-example-com", None}
    assert store.read(state.certs[0].ref) is None  # keys are not exportable


def test_remove_refuses_certificates_in_use_and_unmanaged_ones() -> None:
    snap = parse_read_output("web01", READ)
    in_use = next(e.certhash for e in snap.host.httpsys if e.key == "www.example.com:443")
    runner = Recorder(READ)
    with pytest.raises(StoreError, match=r"still used by HTTP\.sys hostnameport=www\.example\.com:443"):
        WindowsHost("web01", runner=runner).store("WebHosting").remove(in_use.lower())  # type: ignore[union-attr]
    assert len(runner.calls) == 1

    def drop_staging(
        data: dict[str, Any],
    ) -> None:  # the staging binding lost its entry: its certificate is unused
        data["sslcert"] = render_netsh(
            tuple(r for r in parse_netsh(data["sslcert"]) if "staging" not in r.key)
        )

    unused = next(e.certhash for e in snap.host.httpsys if e.key == "staging.example.com:443")
    read = read_output(drop_staging)
    runner = Recorder(read, (FIXTURES / "windows-remove-unmanaged.stdout").read_text())
    with pytest.raises(StoreError, match="not installed by certctl"):
        WindowsHost("web01", runner=runner).store("WebHosting").remove(unused)  # type: ignore[arg-type]
    runner = Recorder(read, (FIXTURES / "windows-remove-ok.stdout").read_text())
    WindowsHost("web01", runner=runner).store("WebHosting").remove(unused)  # type: ignore[arg-type]
    script = runner.calls[1][0]
    assert script_input(script) == {"store": "WebHosting", "thumbprint": unused}
    assert "$c.FriendlyName.StartsWith('certctl:')" in script and "$store.Remove($c)" in script


# --- HTTP.sys read from the registry; unreadable HTTP.sys blocks removal (issue 16) --------------------


def with_registry(data: dict[str, Any]) -> None:
    """The read as a server with another display language gives it: the registry export is the table,
    netsh's text is localised (a German fixture)."""
    data["httpsys_reg"] = regexport.render(parse_netsh(data["sslcert"]))
    data["sslcert"] = (FIXTURES / "netsh-localised-de-DE.txt").read_bytes().decode()


def test_read_script_exports_the_http_sys_registry_keys_and_keeps_netsh_as_fallback() -> None:
    script = WindowsHost("web01", runner=Recorder()).read_script()
    assert (
        "reg.exe export 'HKLM\\SYSTEM\\CurrentControlSet\\Services\\HTTP\\Parameters' $regFile /y" in script
    )
    assert "-Encoding Unicode" in script and "Remove-Item -LiteralPath $regFile" in script
    assert "netsh.exe http show sslcert" in script


def test_http_sys_is_read_from_the_registry_whatever_the_display_language() -> None:
    english = parse_read_output("web01", READ)
    snap = parse_read_output("web01", read_output(with_registry))
    assert set(snap.host.httpsys) == set(english.host.httpsys) and snap.host.httpsys
    assert snap.host.blocking == ()


def test_unreadable_netsh_without_registry_blocks_store_removal() -> None:
    def german_only(data: dict[str, Any]) -> None:
        data["sslcert"] = (FIXTURES / "netsh-localised-de-DE.txt").read_bytes().decode()

    read = read_output(german_only)
    snap = parse_read_output("web01", read)
    assert snap.host.httpsys == ()
    assert len(snap.host.blocking) == 2 and all(
        "no certificate hash certctl can read" in b for b in snap.host.blocking
    )
    assert set(snap.host.blocking) <= set(snap.host.problems)
    unused = next(c.thumbprint for c in snap.certs["webhosting"] if c.friendly_name.startswith("certctl:"))
    runner = Recorder(read)
    with pytest.raises(StoreError, match="cannot tell whether it is still bound"):
        WindowsHost("web01", runner=runner).store("WebHosting").remove(unused)
    assert len(runner.calls) == 1  # nothing was asked to remove it


SETTINGS = {
    "Negotiate Client Certificate": "Enabled",
    "Ctl Store Name": "ClientAuthIssuer",
    "Revocation Freshness Time": "600",
    "Disable HTTP2": "Set",
}


def adfs_like(data: dict[str, Any]) -> None:
    """The entry 0.0.0.0:443 carries client-certificate settings (as ADFS endpoints do)."""
    table = [
        replace(r, flags={**r.flags, **SETTINGS}) if r.key == "0.0.0.0:443" else r
        for r in parse_netsh(data["sslcert"])
    ]
    data["sslcert"] = render_netsh(tuple(table))


def test_rebind_re_applies_the_http_sys_entry_settings_iis_resets() -> None:
    read = read_output(adfs_like)
    snap = parse_read_output("web01", read)
    entry = next(e for e in snap.host.httpsys if e.key == "0.0.0.0:443")
    assert entry.settings == (
        ("Revocation Freshness Time", "600"),
        ("Ctl Store Name", "ClientAuthIssuer"),
        ("Negotiate Client Certificate", "Enabled"),
    )
    www_tp = next(
        c.thumbprint for c in snap.certs["webhosting"] if c.friendly_name.startswith("certctl:www-")
    )
    runner = Recorder(read, (FIXTURES / "windows-apply.stdout").read_text())
    WindowsHost("web01", runner=runner).apply(
        [BindingChange("update", "legacy", "https", "*:443:legacy.example.net", 0, www_tp, "WebHosting")]
    )
    script = runner.calls[1][0]
    steps = script_input(script)["steps"]
    assert [(s["op"], s["information"]) for s in steps] == [
        ("replace", "*:443:legacy.example.net"),
        ("settings", "*:443:legacy.example.net"),
    ]
    assert steps[1]["entry"] == "ipport=0.0.0.0:443" and steps[1]["thumbprint"] == www_tp
    assert steps[1]["store"] == "WebHosting"
    # Disable HTTP2 is not re-applied here: IIS writes it from the binding's sslFlags, which the replace keeps
    assert steps[1]["netsh"] == [
        "revocationfreshnesstime=600",
        "sslctlstorename=ClientAuthIssuer",
        "clientcertnegotiation=enable",
    ]
    for needle in (
        "$netshArgs = @('http', 'update', 'sslcert', [string]$step.entry,",
        "'appid={4dc3e181-e14b-4a21-b022-59fc669b0914}'",
        "+ @($step.netsh)",
        "& netsh.exe @netshArgs",
        "settings_failed = $settingsFailed",
    ):
        assert needle in script, needle
    # after the commit, not inside the retried ServerManager transaction
    assert script.index("& netsh.exe @netshArgs") > script.index("$sm.CommitChanges()")


def test_settings_that_could_not_be_re_applied_are_an_error() -> None:
    read = read_output(adfs_like)
    snap = parse_read_output("web01", read)
    www_tp = next(
        c.thumbprint for c in snap.certs["webhosting"] if c.friendly_name.startswith("certctl:www-")
    )
    failed = f'{BEGIN}\n{{"ok": true, "attempts": 1, "settings_failed": "ipport=0.0.0.0:443: The parameter is incorrect."}}\n{END}\n'
    with pytest.raises(
        WindowsHostError, match=r"could not be re-applied to ipport=0\.0\.0\.0:443: The parameter"
    ):
        WindowsHost("web01", runner=Recorder(read, failed)).apply(
            [BindingChange("update", "legacy", "https", "*:443:legacy.example.net", 0, www_tp, "WebHosting")]
        )

"""What BindingChanges do to sites and the HTTP.sys table (pure; both backends use it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.adapters.iis.appconfig import AppHostConfig
from reconciler.adapters.iis.changes import ChangeError, resolve
from reconciler.adapters.iis.httpsys import SslRecord, find
from reconciler.core.model import IIS_APPID
from reconciler.ports import BindingChange

IIS_MD = (
    Path(__file__).resolve().parents[1] / "fixtures" / "iis" / "applicationHost.iis-md.config"
).read_bytes()
OLD, NEW, OTHER = "A" * 40, "B" * 40, "C" * 40
WMSVC = "{d7d72267-fcf9-4424-9eec-7e1d8dcec9a9}"
SITES = AppHostConfig.parse(IIS_MD).sites()
TABLE = (
    SslRecord("ipport", "0.0.0.0:443", OLD, "My", IIS_APPID, {"Disable HTTP2": "Set"}),
    SslRecord("hostnameport", "www.example.com:443", OLD, "WebHosting", IIS_APPID, {}),
    SslRecord("ipport", "203.0.113.10:443", OTHER, "WebHosting", IIS_APPID, {}),
    SslRecord("ipport", "0.0.0.0:8172", OTHER, "My", WMSVC, {}),
)


def everything(_store: str, _tp: str) -> bool:
    return True


def run(*changes: BindingChange, sites=SITES, table=TABLE, has_cert=everything):
    return resolve("web01", sites, table, changes, has_cert=has_cert)


def test_add_sni_binding_creates_a_hostnameport_entry() -> None:
    res = run(BindingChange("add", "example.com", "https", "*:443:example.com", 1, NEW.lower(), "WebHosting"))
    assert res.steps[0].op == "add" and res.steps[0].thumbprint == NEW
    entry = find(res.table, "hostnameport", "example.com:443")
    assert entry == SslRecord("hostnameport", "example.com:443", NEW, "WebHosting", IIS_APPID, {})
    site = next(s for s in res.sites if s.name == "example.com")
    assert site.bindings[-1].information == "*:443:example.com" and site.bindings[-1].sni
    assert res.table[:4] == TABLE


def test_update_on_a_shared_endpoint_changes_the_one_entry_and_keeps_flags() -> None:
    res = run(
        BindingChange(
            "update", "Default Web Site", "https", "*:443:", 0, NEW, "WebHosting", old_thumbprint=OLD
        )
    )
    step = res.steps[0]
    assert (step.op, step.config_only, step.ssl_flags, step.information) == ("replace", True, 0, "*:443:")
    entry = find(res.table, "ipport", "0.0.0.0:443")
    assert entry is not None and entry.certhash == NEW and entry.certstorename == "WebHosting"
    assert entry.flags == {"Disable HTTP2": "Set"}  # other HTTP.sys settings are kept


def test_update_keeps_all_sslflag_bits() -> None:
    res = run(BindingChange("update", "apps", "https", "*:8443:api.example.org", 5, NEW))
    assert res.steps[0].ssl_flags == 5
    assert find(res.table, "hostnameport", "api.example.org:8443").certhash == NEW  # type: ignore[union-attr]
    with pytest.raises(ChangeError, match="keeps the binding's sslFlags"):
        run(BindingChange("update", "apps", "https", "*:8443:api.example.org", 1, NEW))


def test_remove_deletes_an_unshared_entry_and_keeps_a_shared_one() -> None:
    res = run(BindingChange("remove", "example.com", "https", "*:443:www.example.com"))
    assert (
        res.steps[0].config_only is False and find(res.table, "hostnameport", "www.example.com:443") is None
    )
    sites = AppHostConfig.parse(
        IIS_MD.replace(
            b'<binding protocol="http" bindingInformation="*:80:example.com" />',
            b'<binding protocol="https" bindingInformation="*:443:legacy.example.com" />',
        )
    ).sites()
    res = run(BindingChange("remove", "Default Web Site", "https", "*:443:"), sites=sites)
    assert res.steps[0].config_only is True and find(res.table, "ipport", "0.0.0.0:443") is not None
    res = run(
        BindingChange("remove", "Default Web Site", "https", "*:443:"),
        BindingChange("remove", "example.com", "https", "*:443:legacy.example.com"),
        sites=sites,
    )
    assert [s.config_only for s in res.steps] == [True, False] and find(
        res.table, "ipport", "0.0.0.0:443"
    ) is None


def test_ftp_sets_the_site_certificate() -> None:
    res = run(BindingChange("ftp", "FTP", "ftp", "*:21:ftp.example.com", thumbprint=NEW, store="My"))
    ftp = next(s for s in res.sites if s.name == "FTP")
    assert (ftp.ftp_cert_hash, ftp.ftp_cert_store) == (NEW, "My")
    assert res.table == TABLE


def test_ccs_binding_add_creates_a_hashless_ccs_entry() -> None:
    res = run(BindingChange("add", "apps", "https", "*:443:c.example.org", 3))
    assert find(res.table, "ccs", "443") == SslRecord("ccs", "443", None, None, IIS_APPID, {})
    assert res.steps[0].thumbprint is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (BindingChange("add", "nope", "https", "*:443:x", 1, NEW), "no site named 'nope'"),
        (BindingChange("add", "example.com", "https", "*:443:www.example.com", 1, NEW), "already has"),
        (
            BindingChange("add", "apps", "https", "*:443:www.example.com", 1, NEW),
            "already bound on site 'example.com'",
        ),
        (BindingChange("add", "example.com", "https", "bad", 1, NEW), "not IP:port:host"),
        (
            BindingChange("add", "example.com", "https", "*:443:example.com", 1, None),
            "needs a certificate thumbprint",
        ),
        (
            BindingChange("add", "example.com", "https", "*:443:example.com", 1, "xyz"),
            "not a certificate thumbprint",
        ),
        (BindingChange("add", "example.com", "http", "*:81:example.com"), "only adds https"),
        (BindingChange("add", "example.com", "https", "*:8172:", 0, NEW), "belongs to another application"),
        (
            BindingChange("update", "example.com", "https", "*:443:example.com", 0, NEW),
            "has no https binding",
        ),
        (BindingChange("remove", "apps", "net.tcp", "808:*"), "only removes https"),
        (BindingChange("ccs", "apps", "https", "*:443:x"), "ccs task"),
        (BindingChange("rename", "apps", "https", "*:443:x"), "unknown change"),
    ],
)
def test_invalid_changes_raise(change: BindingChange, message: str) -> None:
    with pytest.raises(ChangeError, match=message):
        run(change)


def test_a_certificate_missing_from_the_store_is_refused() -> None:
    with pytest.raises(ChangeError, match="not in store 'WebHosting'"):
        run(
            BindingChange("update", "example.com", "https", "*:443:www.example.com", 1, NEW),
            has_cert=lambda store, tp: tp != NEW,
        )


def test_one_bad_change_fails_the_whole_list() -> None:
    with pytest.raises(ChangeError):
        run(
            BindingChange("add", "example.com", "https", "*:443:example.com", 1, NEW),
            BindingChange("add", "example.com", "https", "*:443:example.com", 1, NEW),
        )

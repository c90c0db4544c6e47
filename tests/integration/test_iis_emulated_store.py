"""The emulated Windows certificate store of an emulated IIS host."""

from __future__ import annotations

import json
import shutil
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from reconciler.adapters.iis.certstore import StoreError, friendly_name, managed_by
from reconciler.adapters.iis.emulated import EmulatedHost
from reconciler.ports import BindingChange, Material, Store
from reconciler.support.pki import info_from_pem
from tests.fixtures.iis import make_sample

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "iis"
AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("store-template") / "web01"
    return root, make_sample.build(root)


@pytest.fixture
def host(template: tuple[Path, dict[str, str]], tmp_path: Path) -> EmulatedHost:
    shutil.copytree(template[0], tmp_path / "web01")
    return EmulatedHost("web01", tmp_path / "web01")


@pytest.fixture
def fresh() -> Material:
    _root, inter = make_sample._ca()
    return make_sample.material(
        make_sample.issue(inter, ["new.example.com", "alt.example.com"], seed="fresh"), inter
    )


def test_is_a_store(host: EmulatedHost) -> None:
    assert isinstance(host.store("WebHosting"), Store)


def test_friendly_name_marker_round_trip(fresh: Material) -> None:
    name = friendly_name("new-example-com", fresh.info)
    assert name == "certctl:new-example-com 2026-01-01–2026-12-31"
    assert managed_by(name) == "new-example-com"
    assert managed_by("certctl:a.b-c") == "a.b-c"
    for other in ("", "web01 2026", "certctl:", "xcertctl:a", "certctl:-bad"):
        assert managed_by(other) is None


def test_install_then_observe_read_and_remove(host: EmulatedHost, fresh: Material) -> None:
    store = host.store("WebHosting", name="web01-webhosting")
    stored = store.install("new-example-com", fresh, AT)
    tp = fresh.info.thumbprint
    assert (stored.ref, stored.managed_by, stored.store, stored.has_key) == (
        tp,
        "new-example-com",
        "web01-webhosting",
        True,
    )
    pfx = host.root / "certstore" / "WebHosting" / f"{tp}.pfx"
    meta = json.loads(pfx.with_suffix(".json").read_text())
    assert meta["friendly_name"] == "certctl:new-example-com 2026-01-01–2026-12-31"
    assert stat.S_IMODE(pfx.stat().st_mode) == 0o600
    # the intermediate went to the CA store
    assert host.has_cert("CA", info_from_pem(fresh.chain_pem).thumbprint)
    seen = {c.ref: c for c in store.observe().certs}
    assert seen[tp].managed_by == "new-example-com" and seen[tp].installed_at == AT
    assert (
        seen[tp].info.sans == ("new.example.com", "alt.example.com") and seen[tp].store == "web01-webhosting"
    )
    material = store.read(tp.lower())
    assert material is not None and material.key_pem == fresh.key_pem and material.cert_pem == fresh.cert_pem
    assert (
        info_from_pem(material.chain_pem).subject == "certctl example intermediate"
    )  # rebuilt from the CA store
    store.remove(tp.lower())
    assert tp not in {c.ref for c in store.observe().certs}
    assert not pfx.exists() and not pfx.with_suffix(".json").exists()
    store.remove(tp)  # removing what is gone is a no-op
    assert store.read(tp) is None


def test_store_names_are_case_insensitive(host: EmulatedHost) -> None:
    assert {c.ref for c in host.store("webhosting").observe().certs} == {
        c.ref for c in host.store("WebHosting").observe().certs
    }
    assert host.store("MY").observe().certs[0].friendly_name == "web01 2026"


def test_unmanaged_and_referenced_certificates_are_never_removed(
    host: EmulatedHost, template: tuple[Path, dict[str, str]]
) -> None:
    tps = template[1]
    with pytest.raises(StoreError, match="not installed by certctl"):
        host.store("WebHosting").remove(tps["shop"])
    with pytest.raises(StoreError, match=r"still used by HTTP\.sys hostnameport=www\.example\.com:443"):
        host.store("WebHosting").remove(tps["www"])
    assert host.has_cert("WebHosting", tps["www"]) and host.has_cert("WebHosting", tps["shop"])


def test_a_certificate_used_by_ftp_is_not_removed(host: EmulatedHost, fresh: Material) -> None:
    store = host.store("WebHosting")
    store.install("ftp-example-com", fresh, AT)
    host.apply([BindingChange("ftp", "FTP", "ftp", "", thumbprint=fresh.info.thumbprint, store="WebHosting")])
    with pytest.raises(StoreError, match="FTP ssl of site 'FTP'"):
        store.remove(fresh.info.thumbprint)


def test_a_key_that_does_not_match_is_refused_and_undone(host: EmulatedHost, fresh: Material) -> None:
    _root, inter = make_sample._ca()
    other = make_sample.issue(inter, ["other.example.com"], seed="other")
    broken = Material(
        cert_pem=fresh.cert_pem,
        chain_pem=b"",
        key_pem=make_sample.key_to_pem(other.key),  # type: ignore[attr-defined]
        info=fresh.info,
    )
    with pytest.raises(StoreError):
        host.store("WebHosting").install("new-example-com", broken, AT)
    assert not host.has_cert("WebHosting", fresh.info.thumbprint)


def test_corrupt_files_are_problems_not_crashes(host: EmulatedHost) -> None:
    (host.root / "certstore" / "WebHosting" / ("0" * 40 + ".pfx")).write_bytes(b"junk")
    state = host.store("WebHosting").observe()
    assert any("0" * 40 in p for p in state.problems) and len(state.certs) == 6


def test_new_store_folder_is_created_on_install(host: EmulatedHost, fresh: Material) -> None:
    shutil.rmtree(host.root / "certstore" / "My")
    assert host.store("My").observe().certs == ()
    host.store("My").install("new-example-com", fresh, AT)
    assert [c.ref for c in host.store("My").observe().certs] == [fresh.info.thumbprint]
    assert "My" in host.observe().stores


def test_ccs_files_are_observed_with_thumbprints(host: EmulatedHost, fresh: Material) -> None:
    from reconciler.support.pki import to_pfx

    (host.root / "ccs" / "new.example.com.pfx").write_bytes(
        to_pfx(fresh.cert_pem, b"", fresh.key_pem, b"s3cret", None)
    )
    (host.root / "ccs" / "broken.example.com.pfx").write_bytes(b"junk")
    state = host.observe()
    assert ("broken.example.com.pfx", "") in state.ccs_files
    assert ("new.example.com.pfx", "") in state.ccs_files and any("CCS password" in p for p in state.problems)
    state = EmulatedHost("web01", host.root, ccs_password=b"s3cret").observe()
    assert ("new.example.com.pfx", fresh.info.thumbprint) in state.ccs_files


def test_sweep_removes_the_temporaries_of_every_folder_of_the_machine(
    host: EmulatedHost, fresh: Material
) -> None:
    """An install killed mid-write leaves ``certstore/<Store>/.<TP>.pfx.XXXXXXXX.tmp`` (a key) and a ``.json``
    one; a commit killed before its intent leaves a staged copy. The maintenance sweep removes them all."""
    store = host.store("WebHosting")
    store.install("www", fresh, AT)
    folder = host.store_dir("WebHosting")
    tp = fresh.info.thumbprint
    left = [
        folder / f".{tp}.pfx.k3y5x9q1.tmp",
        folder / f".{tp}.json.ab12cd34.tmp",
        host.root / ".applicationHost.config.certctl-new",
        host.root / ".httpsys.json.certctl-bak",
        host.root / ".httpsys.json.zz99aa11.tmp",
    ]
    for path in left:
        path.write_bytes(b"half written")
    keep = [folder / f"{tp}.pfx", folder / f"{tp}.json", host.root / ".keep.tmp", folder / ".notes"]
    keep[2].write_text("another tool's")
    keep[3].write_text("another tool's")
    assert host.sweep_temporaries() == len(left)
    assert not any(p.exists() for p in left)
    assert all(p.exists() for p in keep)
    assert host.sweep_temporaries() == 0
    assert {c.info.thumbprint for c in store.observe().certs} >= {tp}

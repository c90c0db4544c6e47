"""Table-driven checks of the IIS rules' building blocks, and of the validation of IIS claims."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from reconciler.adapters.iis.appconfig import make_binding
from reconciler.adapters.iis.httpsys import entry_for
from reconciler.app.loader import load
from reconciler.core import iis_rules, validate
from reconciler.core.codec import observed_from_json
from reconciler.core.model import HostState, HttpSysEntry, ObservedState, Site, SiteState
from reconciler.core.plan import ActionKind, BindingDetail
from reconciler.core.planner import plan
from tests.scenarios.harness import ROOT, run_scenario


@pytest.mark.parametrize(
    ("information", "flags", "expected"),
    [
        ("*:443:www.example.com", 1, ("hostnameport", "www.example.com:443")),
        ("*:443:", 0, ("ipport", "0.0.0.0:443")),
        (":443:legacy.example.net", 0, ("ipport", "0.0.0.0:443")),
        ("203.0.113.10:443:shop.example.net", 0, ("ipport", "203.0.113.10:443")),
        ("[2001:0db8:0000::10]:443:shop.example.net", 0, ("ipport", "[2001:db8::10]:443")),
        ("*:443:www.example.com", 3, ("ccs", "443")),
        ("*:8443:API.example.org", 5, ("hostnameport", "api.example.org:8443")),
    ],
)
def test_entry_key_is_the_http_sys_entry_the_adapter_uses(
    information: str, flags: int, expected: tuple[str, str]
) -> None:
    binding = make_binding("s", "https", information, flags)
    assert iis_rules.entry_key(binding) == expected
    assert iis_rules.entry_key(binding) == entry_for(binding)


def test_referenced_thumbprints_cover_http_sys_ftp_and_ccs() -> None:
    host = HostState(
        "h",
        sites=(Site("FTP", 1, "", SiteState.started, (), ftp_cert_hash="B" * 40),),
        httpsys=(HttpSysEntry("ipport", "0.0.0.0:8172", "a" * 40, "My", "{other}"),),
        ccs_files=(("www.example.com.pfx", "C" * 40),),
    )
    assert iis_rules.referenced_thumbprints(ObservedState(hosts={"h": host})) == {
        "A" * 40,
        "B" * 40,
        "C" * 40,
    }


def test_every_iis_scenario_plans_unique_actions_whose_dependencies_exist() -> None:
    folders = sorted(ROOT.glob("iis-*/input.json"))
    assert len(folders) >= 20
    for input_json in folders:
        p = run_scenario(input_json.parent)
        ids = [a.id for a in p.actions]
        assert len(ids) == len(set(ids)), input_json.parent.name
        for a in p.actions:
            assert set(a.depends_on) <= set(ids), (input_json.parent.name, a.id)
            if a.kind in (ActionKind.bind, ActionKind.rebind, ActionKind.unbind):
                required = {
                    "host",
                    "site",
                    "binding",
                    "protocol",
                    "op",
                    "ssl_flags",
                    "thumbprint",
                    "store",
                    "old_thumbprint",
                }
                # keeps_settings: a rebind of an HTTP.sys entry with its own settings says which ones are re-applied
                assert isinstance(a.detail, BindingDetail), a.id
                assert required <= set(a.detail.to_json()) <= required | {"keeps_settings"}, a.id


def test_binds_never_use_a_certificate_issued_later_without_depending_on_it() -> None:
    p = run_scenario(ROOT / "iis-renewal-rebinds-old-bindings")
    rebinds = [a for a in p.actions if a.kind is ActionKind.rebind]
    assert len(rebinds) == 2
    for a in rebinds:
        assert isinstance(a.detail, BindingDetail) and a.detail.thumbprint is None
        assert set(a.depends_on) == {"renew/www", "install/www/store/web01-webhosting"}


def test_the_host_rules_do_not_depend_on_the_time() -> None:
    """The clock only reaches the host rules through the targets: planning a converged host later changes nothing."""
    folder = ROOT / "iis-drift-one-binding"
    desired = load(folder / "desired", revision=False)
    observed = observed_from_json(json.loads((folder / "input.json").read_text())["observed"])
    first = plan(desired, observed, datetime(2026, 1, 11, tzinfo=UTC))
    later = plan(desired, observed, datetime(2026, 1, 12, 7, 30, tzinfo=UTC))
    assert [a.to_json() for a in first.actions] == [a.to_json() for a in later.actions]


CLAIMS = """\
apiVersion: certctl/v1
kind: Issuer
metadata: {name: local}
spec: {localCA: {}}
---
apiVersion: certctl/v1
kind: IisHost
metadata: {name: web01}
spec: {backend: emulated, root: /srv/web01}
---
apiVersion: certctl/v1
kind: Store
metadata: {name: wh}
spec: {windows: {host: web01}}
---
apiVersion: certctl/v1
kind: Certificate
metadata: {name: first}
spec: {issuer: local, domains: [%s], stores: [wh], iis: [%s]}
---
apiVersion: certctl/v1
kind: Certificate
metadata: {name: second}
spec: {issuer: local, domains: [%s], stores: [wh], iis: [%s]}
"""


@pytest.mark.parametrize(
    ("a", "a_iis", "b", "b_iis", "conflict"),
    [
        ("www.example.com", "{host: web01}", "www.example.com", "{host: web01}", True),
        ("www.example.com", "{host: web01}", "www.example.com", "{host: web01, mode: site, site: x}", True),
        (
            "www.example.com",
            "{host: web01, mode: site, site: x}",
            "www.example.com",
            "{host: web01, mode: site, site: y}",
            False,
        ),
        (
            "www.example.com",
            "{host: web01}",
            "'*.example.com'",
            "{host: web01}",
            False,
        ),  # exact beats wildcard
        ("'*.example.com'", "{host: web01}", "'*.example.com'", "{host: web01}", True),
        ("www.example.com", "{host: web01}", "www.example.com", "{host: web01, mode: none}", False),
    ],
)
def test_two_certificates_claiming_one_binding_with_the_same_precision_is_an_error(
    tmp_path: Path, a: str, a_iis: str, b: str, b_iis: str, conflict: bool
) -> None:
    (tmp_path / "all.yaml").write_text(CLAIMS % (a, a_iis, b, b_iis))
    desired = load(tmp_path, revision=False) if not conflict else None
    if desired is not None:
        assert validate.check(desired) == []
        return
    from reconciler.app.loader import InvalidDesiredState

    with pytest.raises(InvalidDesiredState) as err:
        load(tmp_path, revision=False)
    text = " ".join(str(d) for d in err.value.diagnostics)
    assert "first" in text and "second" in text and "same precision" in text

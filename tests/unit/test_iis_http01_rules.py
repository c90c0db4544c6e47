"""http01.iis: which site serves a name on port 80, and where its physical path lies on the emulated machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.adapters.iis.appconfig import expand_variables
from reconciler.adapters.iis.emulated import IisHostError, emulated_path
from reconciler.core.challenge_rules import iis_problem, iis_site_for
from reconciler.core.model import Binding, HostState, Site, SiteState


def site(name: str, *infos: str, state: SiteState = SiteState.started) -> Site:
    bindings = []
    for info in infos:
        protocol, _, rest = info.partition(" ")
        ip, port, host = rest.split(":")
        bindings.append(Binding(name, protocol, rest, ip, int(port), host))
    return Site(name, len(name), f"D:\\Sites\\{name}", state, tuple(bindings))


HOST = HostState(
    "web01",
    sites=(
        site("catchall", "http *:80:"),
        site("one-ip", "http 10.0.0.5:80:"),
        site("www", "http *:80:www.example.com", "https *:443:www.example.com"),
        site("wild", "http *:80:*.apps.example.com"),
        site("alt-port", "http *:8080:alt.example.com"),
        site("stopped", "http *:80:stopped.example.com", state=SiteState.stopped),
    ),
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("www.example.com", "www"),  # exact host first
        ("a.apps.example.com", "wild"),  # then a one-label wildcard host
        ("b.a.apps.example.com", "catchall"),  # a wildcard covers one label only
        ("alt.example.com", "catchall"),  # port 8080 is not where the CA connects
        ("stopped.example.com", "catchall"),  # a stopped site serves nothing
    ],
)
def test_the_site_that_serves_a_name_on_port_80(name: str, expected: str) -> None:
    found = iis_site_for(HOST, name)
    assert found is not None and found.name == expected


def test_a_blank_host_on_one_address_is_the_last_resort() -> None:
    host = HostState(
        "web01",
        sites=(site("one-ip", "http 10.0.0.5:80:"), site("stopped", "http *:80:", state=SiteState.stopped)),
    )
    found = iis_site_for(host, "x.example.com")
    assert found is not None and found.name == "one-ip"


def test_no_site_is_a_problem_naming_the_host() -> None:
    host = HostState("web01", sites=(site("www", "http *:80:www.example.com"),))
    assert iis_problem("web01", host, "other.example.com") == (
        "no started site on IIS host web01 serves other.example.com over http on port 80 (http01.iis needs one)"
    )
    assert iis_problem("web01", host, "www.example.com") is None
    assert "wildcards need a dns01 solver" in str(iis_problem("web01", host, "*.example.com"))
    assert "does not exist" in str(iis_problem("web02", None, "www.example.com"))


@pytest.mark.parametrize(
    ("physical", "inside"),
    [
        ("%SystemDrive%\\inetpub\\wwwroot", "drives/C/inetpub/wwwroot"),
        ("%systemdrive%\\inetpub\\wwwroot\\", "drives/C/inetpub/wwwroot"),
        ("D:\\Sites\\example.com", "drives/D/Sites/example.com"),
        ("d:/Sites/shop", "drives/D/Sites/shop"),
        ("\\\\fileserver\\web\\site", "unc/fileserver/web/site"),
    ],
)
def test_a_physical_path_maps_into_the_machine_folder(tmp_path: Path, physical: str, inside: str) -> None:
    assert emulated_path(tmp_path, physical) == tmp_path / inside


@pytest.mark.parametrize(
    "physical", ["D:\\Sites\\..\\..\\..\\etc", "relative\\path", "%NoSuchVar%\\x", "C:\\a\\b:c"]
)
def test_a_physical_path_never_leads_outside_the_machine_folder(tmp_path: Path, physical: str) -> None:
    with pytest.raises(IisHostError):
        emulated_path(tmp_path, physical)


def test_windows_variables_expand_case_insensitively() -> None:
    assert expand_variables("%SYSTEMDRIVE%\\inetpub", {"SystemDrive": "E:"}) == "E:\\inetpub"
    with pytest.raises(ValueError, match="%Missing% is not set"):
        expand_variables("%Missing%\\x", {})

"""applicationHost.config: parsing, bindingInformation, lossless edits."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.adapters.iis.appconfig import (
    AppHostConfig,
    ConfigError,
    EditError,
    make_binding,
    parse_binding_information,
)
from reconciler.core.model import SiteState

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "iis"
IIS_MD = (FIXTURES / "applicationHost.iis-md.config").read_bytes()

RICH = b"""\xef\xbb\xbf<?xml version="1.0" encoding="UTF-8"?>
<!-- top comment -->
<configuration xmlns:x="urn:unknown">
\t<system.applicationHost>
\t\t<sites>
\t\t\t<!-- a site -->
\t\t\t<site name='Quote "Site"' id="9" x:owner="ops" serverAutoStart="false">
\t\t\t\t<application path="/" applicationPool="p">
\t\t\t\t\t<virtualDirectory path="/" physicalPath="C:\\a&amp;b" />
\t\t\t\t</application>
\t\t\t\t<bindings>
\t\t\t\t\t<binding protocol="http" bindingInformation="*:80:q.example.com" x:note="keep me" />
\t\t\t\t\t<!-- binding comment -->
\t\t\t\t\t<binding protocol="https" bindingInformation='*:443:q.example.com' sslFlags="1" />
\t\t\t\t\t<binding protocol="net.pipe" bindingInformation="*" />
\t\t\t\t</bindings>
\t\t\t\t<unknownElement a="1"><child>text &lt; here</child></unknownElement>
\t\t\t</site>
\t\t\t<site name="bare" id="10" />
\t\t</sites>
\t</system.applicationHost>
\t<system.webServer><![CDATA[ raw ]]></system.webServer>
</configuration>
"""


def crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


# --- bindingInformation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        ("*:443:www.example.com", ("*", 443, "www.example.com")),
        (":80:", ("*", 80, "")),
        ("*:443:", ("*", 443, "")),
        ("203.0.113.10:443:shop.example.net", ("203.0.113.10", 443, "shop.example.net")),
        ("[2001:db8::10]:443:shop.example.net", ("[2001:db8::10]", 443, "shop.example.net")),
        ("[::]:8443:", ("[::]", 8443, "")),
        ("*:443:*.apps.example.org", ("*", 443, "*.apps.example.org")),
        ("*:443:WWW.Example.COM", ("*", 443, "www.example.com")),
        (":44300:*", ("*", 44300, "")),  # IIS Express: host '*' is the catch-all, like a blank host
        ("10.20.0.11:443:*", ("10.20.0.11", 443, "")),
    ],
)
def test_binding_information_splits_on_the_last_two_colons(info: str, expected: tuple[str, int, str]) -> None:
    assert parse_binding_information(info) == expected


@pytest.mark.parametrize(
    "info",
    [
        "443",
        "*:443",
        "*:http:x",
        "*:0:x",
        "*:70000:x",
        "2001:db8::10:443:x",
        "[2001:db8::10:443:x",
        "300.1.1.1:443:x",
        "*:443:bad host",
        "[zz::1]:443:x",
    ],
)
def test_unparsable_binding_information_is_an_error(info: str) -> None:
    with pytest.raises(ValueError, match="bindingInformation"):
        parse_binding_information(info)


def test_unparsable_https_binding_is_kept_with_a_parse_error_and_other_protocols_raw() -> None:
    bad = make_binding("s", "https", "nonsense")
    assert bad.parse_error and bad.information == "nonsense"
    tcp = make_binding("s", "net.tcp", "808:*")
    assert tcp.parse_error is None and tcp.information == "808:*" and tcp.port == 0


# --- parsing --------------------------------------------------------------------------------------------


def test_parses_the_iis_md_example() -> None:
    cfg = AppHostConfig.parse(IIS_MD, host="web01")
    sites = {s.name: s for s in cfg.sites(stopped=["SHOP"])}
    assert list(sites) == ["Default Web Site", "example.com", "shop", "apps", "FTP"]
    assert sites["Default Web Site"].physical_path == r"%SystemDrive%\inetpub\wwwroot"
    assert sites["shop"].state is SiteState.stopped and sites["apps"].state is SiteState.started
    api = next(b for b in sites["apps"].bindings if b.port == 8443)
    assert (api.host, api.ssl_flags, api.sni) == ("api.example.org", 5, True)
    v6 = sites["shop"].bindings[2]
    assert (v6.ip, v6.port, v6.host) == ("[2001:db8::10]", 443, "shop.example.net")
    assert sites["FTP"].ftp_cert_hash == "7C3D1E5F9A2B4C6D8E0F1A3B5C7D9E1F2A4B6C8D"
    assert sites["FTP"].ftp_cert_store == "WebHosting"
    assert sites["apps"].bindings[2].protocol == "net.tcp"
    assert cfg.problems() == ()
    ids = [c.id for c in cfg.site_configs()]
    assert ids == [1, 2, 3, 4, 7]
    assert cfg.site_configs()[0].server_auto_start is True and cfg.site_configs()[1].server_auto_start is None


def test_ftp_sites_inherit_the_site_defaults_certificate() -> None:
    data = IIS_MD.replace(
        b' serverCertHash="7C3D1E5F9A2B4C6D8E0F1A3B5C7D9E1F2A4B6C8D" serverCertStoreName="WebHosting"', b""
    )
    data = data.replace(
        b"        </sites>",
        b"""            <siteDefaults>
                <ftpServer><security><ssl serverCertHash="aa00aa00aa00aa00aa00aa00aa00aa00aa00aa00" /></security></ftpServer>
            </siteDefaults>
        </sites>""",
    )
    cfg = AppHostConfig.parse(data)
    ftp = next(s for s in cfg.sites() if s.name == "FTP")
    assert (ftp.ftp_cert_hash, ftp.ftp_cert_store) == ("AA00" * 10, "MY")
    assert next(s for s in cfg.sites() if s.name == "apps").ftp_cert_hash is None  # no ftp binding
    assert cfg.site_defaults_ftp().cert_hash == "AA00" * 10


def test_rich_file_parses_entities_quotes_and_unknowns() -> None:
    cfg = AppHostConfig.parse(RICH)
    site = cfg.sites()[0]
    assert site.name == 'Quote "Site"' and site.physical_path == "C:\\a&b" and site.id == 9
    assert [b.information for b in site.bindings] == ["*:80:q.example.com", "*:443:q.example.com", "*"]
    assert cfg.sites()[1].bindings == ()


def test_problems_report_unparsable_and_duplicate_bindings() -> None:
    data = IIS_MD.replace(
        b'bindingInformation="*:80:example.com" />',
        b'bindingInformation="*:80:example.com" />\n<binding protocol="https" bindingInformation="junk" />'
        b'\n<binding protocol="HTTP" bindingInformation="*:80:EXAMPLE.com" />',
    )
    problems = AppHostConfig.parse(data, file="/m/applicationHost.config").problems()
    assert any("junk" in p and "left alone" in p for p in problems)
    assert any("written twice" in p for p in problems)
    assert all(p.startswith("/m/applicationHost.config:") for p in problems)


@pytest.mark.parametrize(
    ("data", "line"),
    [
        (b"<configuration>\n  <system.applicationHost>\n</configuration>\n", 3),
        (b"", 1),
        (b"<a>\n<b x='1' x='2'/></a>", 2),
    ],
)
def test_malformed_xml_names_host_file_and_line(data: bytes, line: int) -> None:
    with pytest.raises(ConfigError) as err:
        AppHostConfig.parse(data, host="web01", file="/srv/web01/applicationHost.config")
    message = str(err.value)
    assert "web01" in message and f"/srv/web01/applicationHost.config:{line}" in message
    assert err.value.line == line


def test_utf16_is_refused_clearly() -> None:
    with pytest.raises(ConfigError, match="UTF-16"):
        AppHostConfig.parse("<configuration/>".encode("utf-16"), host="h")


# --- lossless round trip -----------------------------------------------------------------------------


@pytest.mark.parametrize("data", [IIS_MD, RICH, crlf(IIS_MD), crlf(RICH)])
def test_no_edit_is_byte_identical(data: bytes) -> None:
    cfg = AppHostConfig.parse(data)
    assert cfg.to_bytes() is data and not cfg.changed


@pytest.mark.parametrize("data", [IIS_MD, crlf(IIS_MD)])
def test_noop_edits_leave_the_bytes_identical(data: bytes) -> None:
    cfg = AppHostConfig.parse(data)
    cfg.set_binding_flags("apps", "https", "*:8443:api.example.org", 5)
    cfg.set_binding_flags("Default Web Site", "https", "*:443:", 0)
    cfg.set_ftp_ssl("FTP", "7C3D1E5F9A2B4C6D8E0F1A3B5C7D9E1F2A4B6C8D", "WebHosting")
    cfg.set_ftp_ssl("apps", None, None)
    assert cfg.to_bytes() == data and not cfg.changed


def test_add_binding_takes_the_indentation_of_its_siblings() -> None:
    cfg = AppHostConfig.parse(IIS_MD)
    cfg.add_binding("example.com", "https", "*:443:example.com", 1)
    expected = IIS_MD.replace(
        b'<binding protocol="https" bindingInformation="*:443:www.example.com" sslFlags="1" />\n',
        b'<binding protocol="https" bindingInformation="*:443:www.example.com" sslFlags="1" />\n'
        b'                    <binding protocol="https" bindingInformation="*:443:example.com" sslFlags="1" />\n',
    )
    assert cfg.to_bytes() == expected


def test_add_remove_and_flags_keep_comments_unknowns_tabs_bom_and_crlf() -> None:
    data = crlf(RICH)
    cfg = AppHostConfig.parse(data)
    cfg.add_binding('Quote "Site"', "https", "*:8443:q.example.com", 5)
    cfg.set_binding_flags('Quote "Site"', "https", "*:443:q.example.com", 3)
    cfg.remove_binding('Quote "Site"', "http", "*:80:q.example.com")
    out = cfg.to_bytes()
    assert out.startswith(b"\xef\xbb\xbf<?xml")
    assert b"\n" not in out.replace(b"\r\n", b"")  # every line ending is still CRLF
    for kept in (
        b"<!-- top comment -->",
        b"<!-- binding comment -->",
        b'x:owner="ops"',
        b"<![CDATA[ raw ]]>",
        b"<child>text &lt; here</child>",
        b"bindingInformation='*:443:q.example.com' sslFlags=\"3\"",
        b'<binding protocol="net.pipe" bindingInformation="*" />',
    ):
        assert kept in out
    assert b"*:80:q.example.com" not in out and b"keep me" not in out  # the removed line went entirely
    assert (
        b'\t\t\t\t\t<binding protocol="net.pipe" bindingInformation="*" />\r\n'
        b'\t\t\t\t\t<binding protocol="https" bindingInformation="*:8443:q.example.com" sslFlags="5" />\r\n'
        b"\t\t\t\t</bindings>"
    ) in out
    assert [(b.information, b.ssl_flags) for b in AppHostConfig.parse(out).sites()[0].bindings] == [
        ("*:443:q.example.com", 3),
        ("*", 0),
        ("*:8443:q.example.com", 5),
    ]


def test_removing_ssl_flags_when_zero_and_restoring() -> None:
    cfg = AppHostConfig.parse(IIS_MD)
    cfg.set_binding_flags("example.com", "https", "*:443:www.example.com", 0)
    assert b'bindingInformation="*:443:www.example.com" />' in cfg.to_bytes()
    cfg.set_binding_flags("example.com", "https", "*:443:www.example.com", 1)
    assert cfg.to_bytes() == IIS_MD


def test_add_binding_to_a_site_without_bindings_element_and_to_a_self_closing_site() -> None:
    cfg = AppHostConfig.parse(RICH)
    cfg.add_binding("bare", "https", "*:443:bare.example.com", 1)
    out = cfg.to_bytes()
    assert (
        b'\t\t\t<site name="bare" id="10">\n\t\t\t\t<bindings>\n'
        b'\t\t\t\t\t<binding protocol="https" bindingInformation="*:443:bare.example.com" sslFlags="1" />\n'
        b"\t\t\t\t</bindings>\n\t\t\t</site>\n"
    ) in out
    data = IIS_MD.replace(
        b"""                <bindings>
                    <binding protocol="ftp" bindingInformation="*:21:ftp.example.com" />
                </bindings>
""",
        b"",
    )
    cfg = AppHostConfig.parse(data)
    cfg.add_binding("FTP", "https", "*:443:ftp.example.com", 1)
    site = next(s for s in cfg.sites() if s.name == "FTP")
    assert [b.information for b in site.bindings] == ["*:443:ftp.example.com"]
    assert b"""                </application>
                <bindings>
                    <binding protocol="https" bindingInformation="*:443:ftp.example.com" sslFlags="1" />
                </bindings>
                <ftpServer>""" in cfg.to_bytes()


def test_add_binding_into_empty_bindings_elements() -> None:
    for empty in (b"<bindings />", b"<bindings></bindings>", b"<bindings>\n                </bindings>"):
        data = IIS_MD.replace(
            b"""<bindings>
                    <binding protocol="ftp" bindingInformation="*:21:ftp.example.com" />
                </bindings>""",
            empty,
        )
        cfg = AppHostConfig.parse(data)
        cfg.add_binding("FTP", "https", "*:990:ftp.example.com", 0)
        assert (
            b"""                <bindings>
                    <binding protocol="https" bindingInformation="*:990:ftp.example.com" />
                </bindings>"""
        ) in cfg.to_bytes(), empty


def test_set_ftp_ssl_creates_the_elements_and_keeps_unknown_attributes() -> None:
    cfg = AppHostConfig.parse(IIS_MD)
    cfg.set_ftp_ssl("apps", "AB" * 20, "My")
    assert b"""                </bindings>
                <ftpServer>
                    <security>
                        <ssl serverCertHash="ABABABABABABABABABABABABABABABABABABABAB" serverCertStoreName="My" />
                    </security>
                </ftpServer>
            </site>""" in cfg.to_bytes()
    data = IIS_MD.replace(
        b'serverCertStoreName="WebHosting" />', b'serverCertStoreName="WebHosting" ssl128="false" />'
    )
    cfg = AppHostConfig.parse(data)
    cfg.set_ftp_ssl("FTP", "CD" * 20, "My")
    assert (
        b'<ssl serverCertHash="CDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCDCD" serverCertStoreName="My" ssl128="false" />'
        in cfg.to_bytes()
    )
    cfg.set_ftp_ssl("FTP", None, None)
    assert b'<ssl ssl128="false" />' in cfg.to_bytes()
    assert next(s for s in cfg.sites() if s.name == "FTP").ftp_cert_hash is None


def test_values_are_escaped_in_new_attributes() -> None:
    cfg = AppHostConfig.parse(RICH)
    cfg.add_binding('Quote "Site"', "https", '*:443:a"b<c&d', 1)
    site = cfg.sites()[0]
    assert site.bindings[-1].information == '*:443:a"b<c&d'
    assert b'bindingInformation="*:443:a&quot;b&lt;c&amp;d"' in cfg.to_bytes()


def test_edit_errors() -> None:
    cfg = AppHostConfig.parse(IIS_MD, host="web01")
    with pytest.raises(EditError, match="no site named 'nope'"):
        cfg.add_binding("nope", "https", "*:443:x", 1)
    with pytest.raises(EditError, match="already has"):
        cfg.add_binding("example.com", "HTTPS", "*:443:WWW.example.com", 1)
    with pytest.raises(EditError, match="has no https binding"):
        cfg.remove_binding("example.com", "https", "*:443:example.com")
    assert not cfg.changed


def test_site_names_and_bindings_match_case_insensitively() -> None:
    cfg = AppHostConfig.parse(IIS_MD)
    cfg.remove_binding("EXAMPLE.COM", "HTTPS", "*:443:WWW.EXAMPLE.COM")
    assert all(b.protocol != "https" for b in cfg.sites()[1].bindings)


def test_server_auto_start_false_is_stopped_unless_the_running_server_started_it() -> None:
    data = (FIXTURES / "applicationHost.hosting-panel.config").read_bytes()
    cfg = AppHostConfig.parse(data)
    states = {s.name: s.state for s in cfg.sites()}
    assert (
        states["juwelier-stern.example"] is SiteState.stopped
        and states["alpha-bakery.example"] is SiteState.started
    )
    assert {s.name: s.state for s in cfg.sites(started=["Juwelier-Stern.example"])}[
        "juwelier-stern.example"
    ] is SiteState.started
    assert {s.name: s.state for s in cfg.sites(stopped=["alpha-bakery.example"])}[
        "alpha-bakery.example"
    ] is SiteState.stopped


def test_config_source_is_reported_and_a_sites_file_is_read() -> None:
    main = AppHostConfig.parse((FIXTURES / "applicationHost.configsource.config").read_bytes())
    assert main.config_source() == ("sites.config", 8) and main.sites() == ()
    sites = AppHostConfig.parse((FIXTURES / "sites.configsource.config").read_bytes(), file="sites.config")
    assert sites.is_sites_file() and not main.is_sites_file()
    assert [s.name for s in sites.sites()] == ["www", "blog"]
    sites.add_binding("blog", "https", "*:443:blog.example.com", 1)
    assert (
        b'<binding protocol="https" bindingInformation="*:443:blog.example.com" sslFlags="1" />'
        in sites.to_bytes()
    )

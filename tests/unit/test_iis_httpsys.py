"""The HTTP.sys table: httpsys.json, netsh text rendering and parsing, binding → entry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler.adapters.iis.appconfig import make_binding
from reconciler.adapters.iis.httpsys import (
    HttpSysError,
    SslRecord,
    dump_json,
    entry_for,
    find,
    load_json,
    parse_netsh,
    read_netsh,
    read_registry_export,
    render_netsh,
)
from reconciler.core.model import IIS_APPID

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "iis"
WMSVC = "{d7d72267-fcf9-4424-9eec-7e1d8dcec9a9}"

TABLE = (
    SslRecord("ipport", "0.0.0.0:443", "7C3D1E5F9A2B4C6D8E0F1A3B5C7D9E1F2A4B6C8D", "My", IIS_APPID, {}),
    SslRecord("hostnameport", "www.example.com:443", "0123456789ABCDEF0123456789ABCDEF01234567", "WebHosting", IIS_APPID,
              {"Disable HTTP2": "Set", "Some Future Setting": "42"}),
    SslRecord("ipport", "[2001:db8::10]:443", "AA11BB22CC33DD44EE55FF6600778899AABBCCDD", "WebHosting", IIS_APPID, {}),
    SslRecord("ccs", "443", None, None, IIS_APPID, {}),
    SslRecord("ipport", "0.0.0.0:8172", "1F2E3D4C5B6A79880F1E2D3C4B5A69788F9E0D1C", None, WMSVC, {}),
)


def core(records: tuple[SslRecord, ...]) -> list[tuple[str, str, str | None, str | None, str]]:
    return [(r.kind, r.key, r.certhash, r.certstorename, r.appid) for r in records]


def test_json_round_trip_in_the_documented_format() -> None:
    data = dump_json(TABLE)
    items = json.loads(data)
    assert items[0] == {"kind": "ipport", "key": "0.0.0.0:443", "certhash": "7C3D1E5F9A2B4C6D8E0F1A3B5C7D9E1F2A4B6C8D",
                        "certstorename": "My", "appid": IIS_APPID, "flags": {}}
    assert load_json(data) == TABLE


def test_json_hashes_are_read_case_insensitively() -> None:
    data = json.dumps([{"kind": "ipport", "key": "0.0.0.0:443", "certhash": "ab" * 20, "certstorename": "My",
                        "appid": IIS_APPID, "flags": {}}])
    assert load_json(data)[0].certhash == "AB" * 20


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "not valid JSON"),
        ("{}", "list of entries"),
        ('[{"kind": "sni", "key": "x", "appid": "{}"}]', "kind 'sni'"),
        ('[{"kind": "ipport", "key": "0.0.0.0:443", "certhash": "xyz", "appid": "{}"}]', "40 hex"),
        ('[{"kind": "ipport", "key": "0.0.0.0:443", "certhash": null}]', "appid is missing"),
        ('[{"kind": "ccs", "key": "443", "appid": "{}"}, {"kind": "ccs", "key": "443", "appid": "{}"}]', "twice"),
    ],
)
def test_bad_json_names_host_and_file(content: str, message: str) -> None:
    with pytest.raises(HttpSysError, match=message) as err:
        load_json(content, host="web01")
    assert "web01" in str(err.value) and "httpsys.json" in str(err.value)


def test_parser_reads_the_renderers_output() -> None:
    text = render_netsh(TABLE)
    assert "    IP:port                      : 0.0.0.0:443\n" in text
    assert "    Certificate Hash             : 7c3d1e5f9a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d\n" in text  # lower case, as netsh
    assert "    Central Certificate Store    : 443\n    Certificate Hash             : (null)\n" in text
    assert "    Disable HTTP2                : Set\n" in text and "Some Future Setting          : 42" in text
    parsed = parse_netsh(text)
    assert core(parsed) == core(TABLE)
    assert parsed[1].flags["Disable HTTP2"] == "Set" and parsed[1].flags["Some Future Setting"] == "42"
    assert parsed[0].flags["Disable HTTP2"] == "Not Set"


def test_parser_reads_an_older_windows_sample() -> None:
    parsed = parse_netsh((FIXTURES / "netsh-2012r2.txt").read_text())
    assert core(parsed) == [
        ("ipport", "0.0.0.0:443", "7C3D1E5F9A2B4C6D8E0F1A3B5C7D9E1F2A4B6C8D", "My", IIS_APPID),
        ("ipport", "0.0.0.0:8172", "1F2E3D4C5B6A79880F1E2D3C4B5A69788F9E0D1C", None, WMSVC),
        ("ipport", "[2001:db8::10]:443", "AA11BB22CC33DD44EE55FF6600778899AABBCCDD", "WebHosting", IIS_APPID),
        ("hostnameport", "www.example.com:443", "0123456789ABCDEF0123456789ABCDEF01234567", "WebHosting", IIS_APPID),
        ("ccs", "443", None, None, IIS_APPID),
    ]
    assert not parsed[1].owned_by_iis and parsed[0].owned_by_iis
    assert "Disable HTTP2" not in parsed[0].flags


def test_parser_reads_a_server_2022_sample_with_extra_lines_and_crlf() -> None:
    data = (FIXTURES / "netsh-2022.txt").read_bytes()
    assert b"\r\n" in data
    parsed = parse_netsh(data.decode())
    assert core(parsed) == [
        ("ipport", "203.0.113.10:443", "5E6F7A8B9C0D1E2F3A4B5C6D7E8F9A0B1C2D3E4F", "WebHosting", IIS_APPID),
        ("hostnameport", "api.example.org:8443", "9988776655443322110099887766554433221100", "WebHosting", IIS_APPID),
        ("hostnameport", "*.apps.example.org:443", "ABCDEFABCDEFABCDEFABCDEFABCDEFABCDEFABCD", "WebHosting", IIS_APPID),
    ]
    assert parsed[1].flags["Disable HTTP2"] == "Set" and parsed[0].flags["Disable HTTP2"] == "Not Set"


def test_parser_ignores_noise_but_reports_what_it_cannot_read() -> None:
    assert read_netsh("") == ((), ())
    assert read_netsh("\nSSL Certificate bindings:\n-------------------------\n\n") == ((), ())  # truly empty
    records, problems = read_netsh("\nThe system cannot find the file specified.\n\n")
    assert records == () and len(problems) == 1 and "cannot read" in problems[0]
    assert "'The system cannot find the file specified.'" in problems[0]
    text = "garbage before\n    Hostname:port  : a.example.com:443\n  junk line without separator\n" \
           "    Certificate Hash : 00112233445566778899aabbccddeeff00112233\n    Application ID : {x}\n" \
           "    Hostname:port  : b.example.com:443\n    Certificate Hash : (null)\n    Application ID : {x}\n"
    records, problems = read_netsh(text)
    assert core(records) == [("hostnameport", "a.example.com:443", "00112233445566778899AABBCCDDEEFF00112233", None,
                              "{x}")]
    assert problems == ("netsh http show sslcert: entry hostnameport=b.example.com:443: certificate hash None is "
                        "not 40 hex digits",)


@pytest.mark.parametrize(
    ("protocol_info", "flags", "expected"),
    [
        ("*:443:", 0, ("ipport", "0.0.0.0:443")),
        (":443:legacy.example.net", 0, ("ipport", "0.0.0.0:443")),
        ("203.0.113.10:443:shop.example.net", 0, ("ipport", "203.0.113.10:443")),
        ("[2001:0db8:0::10]:443:shop.example.net", 0, ("ipport", "[2001:db8::10]:443")),
        ("*:443:WWW.example.com", 1, ("hostnameport", "www.example.com:443")),
        ("*:8443:api.example.org", 5, ("hostnameport", "api.example.org:8443")),
        ("*:443:*.apps.example.org", 1, ("hostnameport", "*.apps.example.org:443")),
        ("*:443:ccs.example.com", 2, ("ccs", "443")),
        ("*:443:ccs.example.com", 3, ("ccs", "443")),
    ],
)
def test_entry_for_binding(protocol_info: str, flags: int, expected: tuple[str, str]) -> None:
    assert entry_for(make_binding("s", "https", protocol_info, flags)) == expected


def test_find_compares_keys_case_insensitively_and_ipv6_compressed() -> None:
    assert find(TABLE, "hostnameport", "WWW.EXAMPLE.COM:443") is TABLE[1]
    assert find(TABLE, "ipport", "[2001:0db8::0010]:443") is TABLE[2]
    assert find(TABLE, "ipport", "0.0.0.0:444") is None

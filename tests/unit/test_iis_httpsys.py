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
    SslRecord(
        "hostnameport",
        "www.example.com:443",
        "0123456789ABCDEF0123456789ABCDEF01234567",
        "WebHosting",
        IIS_APPID,
        {"Disable HTTP2": "Set", "Some Future Setting": "42"},
    ),
    SslRecord(
        "ipport",
        "[2001:db8::10]:443",
        "AA11BB22CC33DD44EE55FF6600778899AABBCCDD",
        "WebHosting",
        IIS_APPID,
        {},
    ),
    SslRecord("ccs", "443", None, None, IIS_APPID, {}),
    SslRecord("ipport", "0.0.0.0:8172", "1F2E3D4C5B6A79880F1E2D3C4B5A69788F9E0D1C", None, WMSVC, {}),
)


def core(records: tuple[SslRecord, ...]) -> list[tuple[str, str, str | None, str | None, str]]:
    return [(r.kind, r.key, r.certhash, r.certstorename, r.appid) for r in records]


def test_json_round_trip_in_the_documented_format() -> None:
    data = dump_json(TABLE)
    items = json.loads(data)
    assert items[0] == {
        "kind": "ipport",
        "key": "0.0.0.0:443",
        "certhash": "7C3D1E5F9A2B4C6D8E0F1A3B5C7D9E1F2A4B6C8D",
        "certstorename": "My",
        "appid": IIS_APPID,
        "flags": {},
    }
    assert load_json(data) == TABLE


def test_json_hashes_are_read_case_insensitively() -> None:
    data = json.dumps(
        [
            {
                "kind": "ipport",
                "key": "0.0.0.0:443",
                "certhash": "ab" * 20,
                "certstorename": "My",
                "appid": IIS_APPID,
                "flags": {},
            }
        ]
    )
    assert load_json(data)[0].certhash == "AB" * 20


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "not valid JSON"),
        ("{}", "list of entries"),
        ('[{"kind": "sni", "key": "x", "appid": "{}"}]', "kind 'sni'"),
        ('[{"kind": "ipport", "key": "0.0.0.0:443", "certhash": "xyz", "appid": "{}"}]', "40 hex"),
        ('[{"kind": "ipport", "key": "0.0.0.0:443", "certhash": null}]', "appid is missing"),
        (
            '[{"kind": "ccs", "key": "443", "appid": "{}"}, {"kind": "ccs", "key": "443", "appid": "{}"}]',
            "twice",
        ),
    ],
)
def test_bad_json_names_host_and_file(content: str, message: str) -> None:
    with pytest.raises(HttpSysError, match=message) as err:
        load_json(content, host="web01")
    assert "web01" in str(err.value) and "httpsys.json" in str(err.value)


def test_parser_reads_the_renderers_output() -> None:
    text = render_netsh(TABLE)
    assert "    IP:port                      : 0.0.0.0:443\n" in text
    assert (
        "    Certificate Hash             : 7c3d1e5f9a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d\n" in text
    )  # lower case, as netsh
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
        (
            "hostnameport",
            "www.example.com:443",
            "0123456789ABCDEF0123456789ABCDEF01234567",
            "WebHosting",
            IIS_APPID,
        ),
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
        (
            "hostnameport",
            "api.example.org:8443",
            "9988776655443322110099887766554433221100",
            "WebHosting",
            IIS_APPID,
        ),
        (
            "hostnameport",
            "*.apps.example.org:443",
            "ABCDEFABCDEFABCDEFABCDEFABCDEFABCDEFABCD",
            "WebHosting",
            IIS_APPID,
        ),
    ]
    assert parsed[1].flags["Disable HTTP2"] == "Set" and parsed[0].flags["Disable HTTP2"] == "Not Set"


def test_parser_ignores_noise_but_reports_what_it_cannot_read() -> None:
    assert read_netsh("") == ((), ())
    assert read_netsh("\nSSL Certificate bindings:\n-------------------------\n\n") == ((), ())  # truly empty
    records, problems = read_netsh("\nThe system cannot find the file specified.\n\n")
    assert records == () and len(problems) == 1 and "cannot read" in problems[0]
    assert "'The system cannot find the file specified.'" in problems[0]
    text = (
        "garbage before\n    Hostname:port  : a.example.com:443\n  junk line without separator\n"
        "    Certificate Hash : 00112233445566778899aabbccddeeff00112233\n    Application ID : {x}\n"
        "    Hostname:port  : b.example.com:443\n    Certificate Hash : (null)\n    Application ID : {x}\n"
    )
    records, problems = read_netsh(text)
    assert core(records) == [
        ("hostnameport", "a.example.com:443", "00112233445566778899AABBCCDDEEFF00112233", None, "{x}")
    ]
    assert problems == (
        "netsh http show sslcert: entry hostnameport=b.example.com:443: certificate hash None is "
        "not 40 hex digits",
    )


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


# --- Windows output as it is met in the wild (issue 16) ----------------------------------------------

WILDCARD = "3F9A21C4770B5E8D19A24C6E0F33B8D172E4A905"


def test_netsh_pasted_from_a_forum_quote_with_non_breaking_spaces_and_quoted_values() -> None:
    records, problems = read_netsh((FIXTURES / "netsh-forum-quoted.txt").read_text())
    assert problems == ()
    assert core(records) == [
        ("ipport", "10.20.0.11:443", WILDCARD, "MY", IIS_APPID),
        ("ipport", "10.20.0.13:8443", WILDCARD, "MY", IIS_APPID),
    ]
    assert records[0].kept_settings() == ()
    assert records[1].kept_settings() == (
        ("Ctl Store Name", "ClientAuthIssuer"),
        ("DS Mapper Usage", "Enabled"),
        ("Negotiate Client Certificate", "Enabled"),
    )


def test_netsh_central_certificate_store_entry_is_a_port_without_hash() -> None:
    records, problems = read_netsh((FIXTURES / "netsh-ccs.txt").read_bytes().decode())
    assert problems == ()
    assert core(records) == [
        ("ccs", "443", None, None, IIS_APPID),
        (
            "hostnameport",
            "shop.example.com:443",
            "8B1C0D2E3F405162738495A6B7C8D9E0F1A2B3C4",
            "WebHosting",
            IIS_APPID,
        ),
    ]


@pytest.mark.parametrize("name", ["netsh-localised-de-DE.txt", "netsh-localised-fr-FR.txt"])
def test_netsh_in_another_display_language_is_a_problem_not_an_empty_table(name: str) -> None:
    """Localised fixtures (German, French labels): the English-only parser must not read them as 'no entries'."""
    records, problems = read_netsh((FIXTURES / name).read_bytes().decode())
    assert records == ()
    assert problems, "unreadable netsh text must be reported"
    assert all(p.startswith("netsh http show sslcert: ") for p in problems)
    if (
        "de-DE" in name
    ):  # the IP:Port header is the same word in German: the blocks are seen, their hashes are not
        assert problems == (
            "netsh http show sslcert: entry ipport=0.0.0.0:443 has no certificate hash certctl can read",
            "netsh http show sslcert: entry hostnameport=www.example.com:443 has no certificate hash "
            "certctl can read",
        )
    else:
        assert "cannot read (another display language or layout?)" in problems[0]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "    Central Certificate Store : www.example.com\n    Application ID : {x}\n",
            "Central Certificate Store entry 'www.example.com' is not a port",
        ),
        ("    Central Certificate Store : 70000\n    Application ID : {x}\n", "'70000' is not a port"),
        (
            "    IP:port : 0.0.0.0:443\n    Certificate Hash : 3f9a21c4\n    Application ID : {x}\n",
            "certificate hash '3F9A21C4' is not 40 hex digits",
        ),
        (
            "    IP:port : 0.0.0.0:443\n    Certificate Hash : " + "zz" * 20 + "\n    Application ID : {x}\n",
            "is not 40 hex digits",
        ),
        (
            "    IP:port : 0.0.0.0:443\n    Certificate Hash : " + "ab" * 20 + "\n",
            "entry ipport=0.0.0.0:443 has no Application ID",
        ),
    ],
)
def test_netsh_values_that_are_not_what_they_claim_are_problems(text: str, problem: str) -> None:
    records, problems = read_netsh(text)
    assert records == ()
    assert len(problems) == 1 and problem in problems[0]


def test_registry_export_is_read_the_same_on_every_display_language() -> None:
    records, problems = read_registry_export((FIXTURES / "httpsys-registry.reg.txt").read_bytes().decode())
    assert problems == ()
    assert core(records) == [
        ("ipport", "0.0.0.0:443", WILDCARD, "MY", IIS_APPID),
        ("ipport", "10.20.0.13:8443", WILDCARD, "MY", IIS_APPID),
        ("ipport", "[2001:db8::10]:443", "AA11BB22CC33DD44EE55FF6600778899AABBCCDD", "WebHosting", IIS_APPID),
        ("ipport", "0.0.0.0:8172", "1F2E3D4C5B6A79880F1E2D3C4B5A69788F9E0D1C", None, WMSVC),
        ("ccs", "443", None, None, IIS_APPID),
        (
            "hostnameport",
            "www.example.com:443",
            "8B1C0D2E3F405162738495A6B7C8D9E0F1A2B3C4",
            "WebHosting",
            IIS_APPID,
        ),
    ]
    assert records[0].kept_settings() == ()
    # DefaultFlags 3 = DS mapper + negotiate client certificate; check mode 2 = cached revocation only
    assert records[1].kept_settings() == (
        ("Verify Revocation Using Cached Client Certificate Only", "Enabled"),
        ("Revocation Freshness Time", "600"),
        ("Ctl Store Name", "ClientAuthIssuer"),
        ("DS Mapper Usage", "Enabled"),
        ("Negotiate Client Certificate", "Enabled"),
    )
    assert not records[3].owned_by_iis


def test_registry_export_continuation_lines_and_bad_values() -> None:
    key = "[HKEY_LOCAL_MACHINE\\SYSTEM\\CurrentControlSet\\Services\\HTTP\\Parameters\\SslSniBindingInfo\\a.example.com:443]"
    appid = '"AppId"=hex:81,e1,c3,4d,4b,e1,21,4a,b0,22,59,fc,66,9b,09,14'
    wrapped = '"SslCertHash"=hex:3f,9a,21,c4,77,0b,5e,8d,19,a2,4c,6e,0f,33,\\\r\n  b8,d1,72,e4,a9,05'
    text = f"Windows Registry Editor Version 5.00\r\n\r\n{key}\r\n{appid}\r\n{wrapped}\r\n"
    records, problems = read_registry_export(text)
    assert problems == () and core(records) == [
        ("hostnameport", "a.example.com:443", WILDCARD, None, IIS_APPID)
    ]
    short = text.replace("a9,05", "a9")
    records, problems = read_registry_export(short)
    assert records == () and problems == (
        "HTTP.sys registry export: entry hostnameport=a.example.com:443: certificate "
        "hash '3F9A21C4770B5E8D19A24C6E0F33B8D172E4A9' is not 40 hex digits",
    )
    ccs = text.replace("SslSniBindingInfo\\a.example.com:443", "SslCcsBindingInfo\\0.0.0.0:https")
    assert read_registry_export(ccs)[1] == (
        "HTTP.sys registry export: Central Certificate Store entry 'https' is not a port",
    )
    assert read_registry_export("Windows Registry Editor Version 5.00\r\n") == ((), ())  # no entry at all
    records, problems = read_registry_export(
        "Fehler: Der angegebene Registrierungsschlüssel wurde nicht gefunden."
    )
    assert records == () and "cannot read" in problems[0]

"""Property: random binding edits round-trip through write + parse, and touch nothing else."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.adapters.iis.appconfig import AppHostConfig, EditError
from reconciler.adapters.iis.httpsys import (
    SslRecord,
    dump_json,
    load_json,
    read_netsh,
    read_registry_export,
    render_netsh,
)
from tests.fixtures.iis import regexport

IIS_MD = (
    Path(__file__).resolve().parents[1] / "fixtures" / "iis" / "applicationHost.iis-md.config"
).read_bytes()
VARIANTS = {
    "lf": IIS_MD,
    "crlf": IIS_MD.replace(b"\n", b"\r\n"),
    "tabs": IIS_MD.replace(b"    ", b"\t"),
}
SITES = [c.name for c in AppHostConfig.parse(IIS_MD).site_configs()]

ips = st.sampled_from(["*", "", "203.0.113.10", "198.51.100.7", "[2001:db8::10]", "[::1]"])
hosts = st.sampled_from(
    ["", "example.com", "www.example.com", "*.apps.example.org", "a-b.example.net", "x.y.example.org"]
)
ports = st.sampled_from([80, 443, 8443, 21, 65535])
infos = st.builds(lambda ip, port, host: f"{ip}:{port}:{host}", ips, ports, hosts)
flags = st.integers(min_value=0, max_value=127)
ops = st.one_of(
    st.tuples(st.just("add"), st.sampled_from(SITES), st.sampled_from(["http", "https"]), infos, flags),
    st.tuples(st.just("remove"), st.integers(min_value=0, max_value=50)),
    st.tuples(st.just("flags"), st.integers(min_value=0, max_value=50), flags),
)


def non_binding_lines(data: bytes) -> list[bytes]:
    return [line for line in data.splitlines() if b"<binding " not in line]


@settings(max_examples=150, deadline=None)
@given(variant=st.sampled_from(sorted(VARIANTS)), edits=st.lists(ops, max_size=12))
def test_random_binding_edits_round_trip(variant: str, edits: list[tuple]) -> None:  # type: ignore[type-arg]
    original = VARIANTS[variant]
    cfg = AppHostConfig.parse(original)
    expected = {
        c.name: [(b.protocol, b.information, b.ssl_flags) for b in c.bindings] for c in cfg.site_configs()
    }

    def everything() -> list[tuple[str, int]]:
        return [(site, i) for site in SITES for i in range(len(expected[site]))]

    for edit in edits:
        if edit[0] == "add":
            _, site, protocol, info, flag = edit
            duplicate = any(p == protocol and i.lower() == info.lower() for p, i, _ in expected[site])
            try:
                cfg.add_binding(site, protocol, info, flag)
            except EditError:
                assert duplicate
                continue
            assert not duplicate
            expected[site].append((protocol, info, flag))
        elif everything():
            site, index = everything()[edit[1] % len(everything())]
            protocol, info, _old = expected[site][index]
            if edit[0] == "remove":
                cfg.remove_binding(site, protocol, info)
                del expected[site][index]
            else:
                cfg.set_binding_flags(site, protocol, info, edit[2])
                expected[site][index] = (protocol, info, edit[2])

    written = cfg.to_bytes()
    reparsed = AppHostConfig.parse(written)
    assert {
        c.name: [(b.protocol, b.information, b.ssl_flags) for b in c.bindings]
        for c in reparsed.site_configs()
    } == expected
    # nothing but binding lines changed, line endings and indentation included
    assert non_binding_lines(written) == non_binding_lines(original)
    newline = b"\r\n" if variant == "crlf" else b"\n"
    assert written.count(newline) == written.count(b"\n")
    indent = b"\t\t\t\t\t" if variant == "tabs" else b" " * 20
    assert all(
        line.startswith(indent + b"<binding ") for line in written.splitlines() if b"<binding " in line
    )
    # parsing what was written and writing again without edits changes nothing
    assert reparsed.to_bytes() == written


@settings(max_examples=60, deadline=None)
@given(site=st.sampled_from(SITES), protocol=st.sampled_from(["http", "https"]), info=infos, flag=flags)
def test_add_then_remove_restores_the_exact_bytes(site: str, protocol: str, info: str, flag: int) -> None:
    cfg = AppHostConfig.parse(IIS_MD)
    if cfg.has_binding(site, protocol, info):
        return
    cfg.add_binding(site, protocol, info, flag)
    cfg.remove_binding(site, protocol, info)
    assert cfg.to_bytes() == IIS_MD


hexes = st.text(alphabet="0123456789ABCDEF", min_size=40, max_size=40)
records = st.lists(
    st.one_of(
        st.builds(
            lambda ip, port, h, s: SslRecord(
                "ipport", f"{ip}:{port}", h, s, "{4dc3e181-e14b-4a21-b022-59fc669b0914}", {}
            ),
            st.sampled_from(["0.0.0.0", "203.0.113.10", "[2001:db8::10]"]),
            ports,
            st.none() | hexes,
            st.sampled_from([None, "My", "WebHosting"]),
        ),
        st.builds(
            lambda host, port, h: SslRecord(
                "hostnameport",
                f"{host}:{port}",
                h,
                "WebHosting",
                "{d7d72267-fcf9-4424-9eec-7e1d8dcec9a9}",
                {"Disable HTTP2": "Set"},
            ),
            st.sampled_from(["www.example.com", "*.apps.example.org"]),
            ports,
            hexes,
        ),
    ),
    max_size=6,
    unique_by=lambda r: (r.kind, r.key),
)


@settings(max_examples=100, deadline=None)
@given(table=records)
def test_httpsys_table_round_trips_through_json_and_netsh(table: list[SslRecord]) -> None:
    assert list(load_json(dump_json(table))) == table
    parsed, problems = read_netsh(render_netsh(table))
    hashed = [r for r in table if r.certhash]
    assert [r.to_entry() for r in parsed] == [r.to_entry() for r in hashed]
    assert all(dict(p.flags).items() >= dict(r.flags).items() for p, r in zip(parsed, hashed, strict=True))
    # an ipport entry without a hash is not data: it is reported, never read as "no certificate"
    assert len(problems) == len(table) - len(hashed)
    assert all("is not 40 hex digits" in p for p in problems)


settings_values = st.fixed_dictionaries(
    {},
    optional={
        "Negotiate Client Certificate": st.sampled_from(["Enabled", "Disabled"]),
        "DS Mapper Usage": st.sampled_from(["Enabled", "Disabled"]),
        "Ctl Store Name": st.sampled_from(["(null)", "ClientAuthIssuer"]),
        "Revocation Freshness Time": st.sampled_from(["0", "600"]),
        "Usage Check": st.sampled_from(["Enabled", "Disabled"]),
    },
)


@settings(max_examples=100, deadline=None)
@given(table=records, extra=st.lists(settings_values, min_size=6, max_size=6))
def test_httpsys_table_round_trips_through_a_registry_export(
    table: list[SslRecord], extra: list[dict[str, str]]
) -> None:
    table = [replace(r, flags={**r.flags, **more}) for r, more in zip(table, extra, strict=False)]
    parsed, problems = read_registry_export(regexport.render(table))
    hashed = [r for r in table if r.certhash]
    assert [r.to_entry() for r in parsed] == [
        r.to_entry() for r in sorted(hashed, key=lambda r: r.kind != "ipport")
    ]
    assert len(problems) == len(table) - len(hashed)

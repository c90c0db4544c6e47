"""Every kind of bad input: exit 1, file:line:col and field in the message, nothing written anywhere."""

from __future__ import annotations

import re

import pytest

from tests.conftest import Workspace

ACME = """\
apiVersion: certctl/v1
kind: Issuer
metadata: {name: le}
spec:
  acme:
    directoryUrl: https://acme-staging-v02.api.letsencrypt.org/directory
    email: ops@example.com
    agreeToS: true
    solvers:
      - http01: {standalone: {port: 80}}
"""


def check(ws: Workspace, run_cli, expected: list[str], command: str = "validate") -> str:
    code, out, err = run_cli(command, "-d", str(ws.desired))
    assert code == 1, (out, err)
    for pattern in expected:
        assert re.search(pattern, err), f"{pattern!r} not in:\n{err}"
    assert ws.files_written() == [], "bad input must write nothing"
    return err


@pytest.mark.parametrize("command", ["validate", "plan", "apply", "status"])
def test_malformed_yaml(ws: Workspace, run_cli, command: str) -> None:
    ws.base()
    ws.write("web.yaml", "apiVersion: certctl/v1\nkind: Certificate\nmetadata: {name: web\nspec: {}\n")
    check(ws, run_cli, [r"web\.yaml:\d+:\d+: YAML syntax error"], command)


def test_unknown_kind(ws: Workspace, run_cli) -> None:
    ws.base()
    ws.write("x.yaml", "apiVersion: certctl/v1\nkind: Certficate\nmetadata: {name: x}\nspec: {}\n")
    check(ws, run_cli, [r"x\.yaml:2:7: kind: unknown kind 'Certficate'; did you mean Certificate\?"])


def test_misspelt_field(ws: Workspace, run_cli) -> None:
    ws.base()
    ws.certificate("web", ["www.example.com"], extra="  renewel: {lifetimePercent: 70}\n")
    check(ws, run_cli, [r"web\.yaml:9:3: spec\.renewel: unknown field 'renewel'; did you mean 'renewal'\?"])


def test_wrong_type(ws: Workspace, run_cli) -> None:
    ws.base()
    ws.certificate("web", ["www.example.com"], extra="  renewal: {lifetimePercent: often}\n")
    check(ws, run_cli, [r"web\.yaml:9:30: spec\.renewal\.lifetimePercent: Input should be a valid integer"])


def test_bad_duration(ws: Workspace, run_cli) -> None:
    ws.write(
        "base.yaml",
        "apiVersion: certctl/v1\nkind: Issuer\nmetadata: {name: local}\nspec:\n  localCA: {validity: 3 months}\n",
    )
    check(ws, run_cli, [r"base\.yaml:5:23: spec\.localCA\.validity: '3 months' is not a duration"])


def test_duplicate_names_across_files(ws: Workspace, run_cli) -> None:
    ws.base()
    ws.certificate("web", ["www.example.com"], file="a.yaml")
    ws.certificate("web", ["shop.example.com"], file="b.yaml")
    check(
        ws,
        run_cli,
        [r"b\.yaml:3:18: metadata\.name: duplicate Certificate name 'web'; it is also defined in .*a\.yaml"],
    )


def test_missing_issuer_and_store(ws: Workspace, run_cli) -> None:
    ws.base()
    ws.write(
        "web.yaml",
        """\
        apiVersion: certctl/v1
        kind: Certificate
        metadata: {name: web}
        spec:
          issuer: letsencrypt
          domains: [www.example.com]
          stores: [pem, iis-store]
        """,
    )
    check(
        ws,
        run_cli,
        [
            r"web\.yaml:5:11: spec\.issuer: Issuer 'letsencrypt' does not exist \(known: local\)",
            r"web\.yaml:7:\d+: spec\.stores\[1\]: Store 'iis-store' does not exist \(known: pem\)",
        ],
    )


@pytest.mark.parametrize(
    ("domain", "message"),
    [
        ("www..example.com", "has an empty label"),
        ("a" * 64 + ".example.com", "is 64 characters; at most 63"),
        ("-www.example.com", "starts or ends with a hyphen"),
        ("'www example.com'", "contains white space"),
        (".".join(["abcdefghi"] * 26), "a domain name may have at most 253"),
        ("www.*.example.com", "a wildcard may only be the whole leftmost label"),
        ("w*.example.com", "a wildcard may only be the whole leftmost label"),
        ("www.example.com.", "ends with a dot"),
        ("www_1.example.com", "may contain only letters, digits and hyphens"),
    ],
)
def test_invalid_domain_names(ws: Workspace, run_cli, domain: str, message: str) -> None:
    ws.base()
    ws.certificate("web", ["ok.example.com", domain])
    check(ws, run_cli, [r"web\.yaml:6:\d+: spec\.domains\[1\]: .*" + re.escape(message)])


def test_all_errors_at_once(ws: Workspace, run_cli) -> None:
    ws.base()
    ws.certificate("web", ["www..example.com"], file="a.yaml", extra="  color: blue\n")
    ws.certificate("api", ["-api.example.com"], file="b.yaml")
    err = check(
        ws,
        run_cli,
        [
            r"a\.yaml:6:\d+: spec\.domains\[0\]",
            r"a\.yaml:9:3: spec\.color",
            r"b\.yaml:6:\d+: spec\.domains\[0\]",
        ],
    )
    assert "3 problem(s) found; nothing was changed" in err


def test_wildcard_and_a_name_it_covers(ws: Workspace, run_cli) -> None:
    ws.base()
    ws.certificate("web", ["'*.example.com'", "www.example.com", "example.com"])
    check(ws, run_cli, [r"spec\.domains\[1\]: www\.example\.com is already covered by \*\.example\.com"])


def test_wildcard_without_dns01(ws: Workspace, run_cli) -> None:
    ws.base()
    ws.write("le.yaml", ACME)
    ws.write(
        "web.yaml",
        "apiVersion: certctl/v1\nkind: Certificate\nmetadata: {name: web}\nspec:\n"
        "  issuer: le\n  domains: ['*.example.com', example.com]\n",
    )
    check(ws, run_cli, [r"web\.yaml:6:\d+: spec\.domains\[0\]: Wildcard certificates require DNS validation"])


@pytest.mark.parametrize(
    ("domain", "message"),
    [
        ("srvdevapp01", "single-label"),
        ("'*.corp.local'", "reserved suffix .local"),
        ("app.internal", "reserved suffix .internal"),
        ("nas.home.arpa", "reserved suffix .home.arpa"),
        ("localhost", "single-label"),
        ("10.0.0.1", "IP address"),
    ],
)
def test_intranet_names_with_acme(ws: Workspace, run_cli, domain: str, message: str) -> None:
    ws.base()
    ws.write(
        "le.yaml",
        ACME.replace(
            "- http01: {standalone: {port: 80}}", "- dns01: {rfc2136: {server: 127.0.0.1, zone: example.com}}"
        ),
    )
    ws.write(
        "web.yaml",
        "apiVersion: certctl/v1\nkind: Certificate\nmetadata: {name: web}\nspec:\n"
        f"  issuer: le\n  domains: [www.example.com, {domain}]\n",
    )
    check(
        ws,
        run_cli,
        [r"web\.yaml:6:\d+: spec\.domains\[1\]: .*" + re.escape(message) + ".*use a localCA issuer"],
    )


def test_intranet_names_are_fine_for_the_local_ca(ws: Workspace, run_cli) -> None:
    ws.base()
    ws.certificate("web", ["srvdevapp01", "'*.corp.local'", "10.0.0.1"])
    code, out, err = run_cli("validate", "-d", str(ws.desired))
    assert code == 0, err
    assert "Valid: 1 certificate(s)" in out


def test_literal_secret(ws: Workspace, run_cli) -> None:
    ws.base()
    ws.write(
        "le.yaml",
        ACME.replace("    solvers:", "    eab:\n      keyId: kid-1\n      hmacKey: c2VjcmV0\n    solvers:"),
    )
    check(
        ws,
        run_cli,
        [
            r"le\.yaml:11:16: spec\.acme\.eab\.hmacKey: secrets must not be written in the files; "
            r"use \{fromEnv: NAME\} or \{fromFile: PATH\}"
        ],
    )


def test_missing_directory(ws: Workspace, run_cli) -> None:
    code, _, err = run_cli("validate", "-d", str(ws.root / "nope"))
    assert code == 1
    assert "the desired-state directory does not exist" in err


def test_exactly_one_of(ws: Workspace, run_cli) -> None:
    ws.write(
        "s.yaml",
        "apiVersion: certctl/v1\nkind: Store\nmetadata: {name: s}\nspec:\n"
        "  pemDirectory: {path: /x}\n  windows: {host: web01}\n",
    )
    check(ws, run_cli, [r"s\.yaml:4:1: spec: give exactly one of pemDirectory or windows"])


def test_bad_metadata_name(ws: Workspace, run_cli) -> None:
    ws.base()
    ws.certificate("Web_Site", ["www.example.com"])
    check(ws, run_cli, [r"Web_Site\.yaml:3:18: metadata\.name: String should match pattern"])


def test_lists_of_issuers_are_checked_item_by_item(ws: Workspace, run_cli) -> None:
    ws.base()
    ws.write("le.yaml", ACME)
    ws.write(
        "web.yaml",
        "apiVersion: certctl/v1\nkind: Certificate\nmetadata: {name: web}\nspec:\n"
        "  issuer: [local, zerossl]\n  domains: [intranet.local]\n",
    )
    ws.write(
        "twice.yaml",
        "apiVersion: certctl/v1\nkind: Certificate\nmetadata: {name: twice}\nspec:\n"
        "  issuer: [local, local]\n  domains: [twice.example.com]\n",
    )
    ws.write(
        "none.yaml",
        "apiVersion: certctl/v1\nkind: Certificate\nmetadata: {name: none}\nspec:\n"
        "  issuer: []\n  domains: [none.example.com]\n",
    )
    ws.write(
        "fallback.yaml",
        "apiVersion: certctl/v1\nkind: Certificate\nmetadata: {name: fallback}\nspec:\n"
        "  issuer: [local, le]\n  domains: [SRVAPP01]\n",
    )
    check(
        ws,
        run_cli,
        [
            r"web\.yaml:5:\d+: spec\.issuer\[1\]: Issuer 'zerossl' does not exist \(known: le, local\)",
            r"twice\.yaml:5:\d+: spec\.issuer: .*Issuer local is listed twice",
            r"none\.yaml:5:\d+: spec\.issuer: .*give at least one Issuer",
            r"fallback\.yaml:6:\d+: spec\.domains\[0\]: .*issuer le is ACME",  # every Issuer of the list must serve it
        ],
    )

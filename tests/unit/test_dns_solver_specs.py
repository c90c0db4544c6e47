"""Validation of dns01.provider / dns01.script / http01.iis: one test per error, each at file:line:col.

What a provider accepts is read from dns-lexicon's own provider metadata, so these tests name real
lexicon providers and options."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.app.loader import InvalidDesiredState, load

ISSUER = """\
apiVersion: certctl/v1
kind: Issuer
metadata: {name: le}
spec:
  acme:
    directoryUrl: https://acme.example/dir
    solvers:
      - dns01:
%s
"""


def diagnostics(tmp_path: Path, solver: str) -> list[str]:
    (tmp_path / "issuer.yaml").write_text(ISSUER % solver)
    with pytest.raises(InvalidDesiredState) as err:
        load(tmp_path, revision=False)
    return [str(d) for d in err.value.diagnostics]


def valid(tmp_path: Path, solver: str) -> None:
    (tmp_path / "issuer.yaml").write_text(ISSUER % solver)
    load(tmp_path, revision=False)


def test_a_powerdns_provider_with_its_options_and_a_secret_is_valid(tmp_path: Path) -> None:
    valid(
        tmp_path,
        """\
          provider:
            name: powerdns
            options: {pdns_server: "http://127.0.0.1:8081", pdns_server_id: localhost}
            secrets: {auth_token: {fromEnv: PDNS_API_KEY}}
            zone: example.com""",
    )


def test_an_unknown_provider_names_the_nearest_and_lists_lexicons_providers(tmp_path: Path) -> None:
    [message] = diagnostics(
        tmp_path,
        """\
          provider:
            name: cloudfare
            secrets: {auth_token: {fromEnv: X}}""",
    )
    assert message.startswith(f"{tmp_path}/issuer.yaml:10:19: spec.acme.solvers[0].dns01.provider.name: ")
    assert "unknown DNS provider 'cloudfare' (did you mean cloudflare?)" in message
    assert "route53" in message and "azure" in message and "googleclouddns" in message and "ovh" in message


def test_an_unknown_option_lists_what_the_provider_accepts(tmp_path: Path) -> None:
    [message] = diagnostics(
        tmp_path,
        """\
          provider:
            name: powerdns
            options: {pdns_servr: "http://127.0.0.1:8081"}
            secrets: {auth_token: {fromEnv: X}}""",
    )
    assert ":11:35: spec.acme.solvers[0].dns01.provider.options.pdns_servr: " in message
    assert "provider powerdns has no option 'pdns_servr' (did you mean pdns_server?)" in message
    assert "it accepts: auth_token (specify token for authentication); pdns_server (" in message


def test_an_unknown_secret_is_an_error_too(tmp_path: Path) -> None:
    [message] = diagnostics(
        tmp_path,
        """\
          provider:
            name: cloudflare
            secrets: {auth_token: {fromEnv: X}, api_key: {fromEnv: Y}}""",
    )
    assert (
        "spec.acme.solvers[0].dns01.provider.secrets.api_key: provider cloudflare has no option 'api_key'"
        in message
    )
    assert "zone_id" in message


def test_a_credential_among_the_plain_options_must_move_to_secrets(tmp_path: Path) -> None:
    messages = diagnostics(
        tmp_path,
        """\
          provider:
            name: route53
            options: {auth_access_key: AKIA, auth_access_secret: oops}""",
    )
    assert len(messages) == 2
    assert all("is a credential of provider route53: move it to secrets" in m for m in messages)
    assert ":11:40: spec.acme.solvers[0].dns01.provider.options.auth_access_key:" in messages[0]


def test_missing_credentials_are_an_error_naming_the_ones_the_provider_takes(tmp_path: Path) -> None:
    [message] = diagnostics(
        tmp_path,
        """\
          provider:
            name: azure
            options: {resource_group: dns}""",
    )
    assert "spec.acme.solvers[0].dns01.provider.secrets: provider azure needs credentials: give " in message
    assert "auth_client_id" in message and "auth_client_secret" in message and "auth_tenant_id" in message


def test_the_auto_provider_is_refused(tmp_path: Path) -> None:
    [message] = diagnostics(
        tmp_path,
        """\
          provider:
            name: auto""",
    )
    assert "provider auto is not supported" in message and "name the provider" in message


def test_a_script_with_an_unknown_placeholder(tmp_path: Path) -> None:
    [message] = diagnostics(
        tmp_path,
        """\
          script:
            create: ["/usr/local/bin/dns-add", "{name}", "{txt}"]
            delete: ["/usr/local/bin/dns-del", "{name}", "{value}"]""",
    )
    assert ":10:13: spec.acme.solvers[0].dns01.script.create: unknown placeholder {txt}" in message
    assert "{name}, {value}, {zone}" in message


def test_a_script_needs_both_commands(tmp_path: Path) -> None:
    [message] = diagnostics(
        tmp_path,
        """\
          script:
            create: ["/usr/local/bin/dns-add", "{name}", "{value}"]""",
    )
    assert "spec.acme.solvers[0].dns01.script.delete" in message


def test_dns01_takes_exactly_one_kind(tmp_path: Path) -> None:
    [message] = diagnostics(
        tmp_path,
        """\
          script: {create: [a], delete: [b]}
          provider: {name: powerdns, secrets: {auth_token: {fromEnv: X}}}""",
    )
    assert "give exactly one of rfc2136, provider or script" in message


def test_http01_iis_is_one_of_the_http01_kinds(tmp_path: Path) -> None:
    text = (ISSUER % "          script: {create: [a], delete: [b]}").replace(
        "      - dns01:\n", "      - http01: {iis: {host: web01}, webroot: {path: /srv}}\n        dns01:\n"
    )
    (tmp_path / "issuer.yaml").write_text(
        text.replace("        dns01:\n          script: {create: [a], delete: [b]}\n", "")
    )
    with pytest.raises(InvalidDesiredState) as err:
        load(tmp_path, revision=False)
    assert "give exactly one of standalone, webroot or iis" in str(err.value.diagnostics[0])


def test_the_catalog_is_lexicons_own_metadata() -> None:
    from reconciler.adapters.solvers.provider import known_providers, provider_info

    info = provider_info("powerdns")
    assert info is not None and {"pdns_server", "pdns_server_id", "auth_token"} <= set(info.names)
    assert provider_info("no-such-provider") is None
    assert len(known_providers()) > 50


def test_tldextract_is_pointed_at_its_snapshot_never_the_network() -> None:
    import tldextract

    from reconciler.adapters.solvers.provider import _offline

    _offline()
    assert tldextract.extract.suffix_list_urls == ()  # type: ignore[attr-defined]
    assert tldextract.extract("www.example.co.uk").suffix == "co.uk"


def test_http01_iis_names_an_iis_host_that_exists(tmp_path: Path) -> None:
    text = (ISSUER % "          script: {create: [a], delete: [b]}").replace(
        "      - dns01:\n          script: {create: [a], delete: [b]}\n",
        "      - http01: {iis: {host: web01}}\n",
    )
    (tmp_path / "issuer.yaml").write_text(text)
    with pytest.raises(InvalidDesiredState) as err:
        load(tmp_path, revision=False)
    [message] = [str(d) for d in err.value.diagnostics]
    assert (
        ":8:30: spec.acme.solvers[0].http01.iis.host: IisHost 'web01' does not exist (known: none is defined)"
        in message
    )

"""`certctl import --iis-host` on the emulated sample machine, then `certctl plan`: only what really differs."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from reconciler.app.loader import load
from reconciler.entry.cli import main
from tests.fixtures.iis import make_sample, real_servers

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "iis"
AT = "2026-03-01"  # the sample's certificates run from 2026-01-01 to 2026-12-31: valid and not yet due then


BASE = real_servers.DESIRED_BASE


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """The CLI binds its log to this test's captured stderr; later tests must not write to it."""
    yield
    structlog.reset_defaults()


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    structlog.reset_defaults()  # an earlier CLI run may have bound the log to a closed capture
    root = tmp_path_factory.mktemp("iis-import-template") / "web01"
    return root, make_sample.build(root)


@pytest.fixture
def setup(tmp_path: Path, template: tuple[Path, dict[str, str]]) -> tuple[Path, dict[str, str]]:
    shutil.copytree(template[0], tmp_path / "web01")
    thumbprints = template[1]
    desired = tmp_path / "desired"
    desired.mkdir()
    (desired / "base.yaml").write_text(BASE)
    return desired, thumbprints


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_import_then_plan_shows_only_what_really_differs(
    setup: tuple[Path, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    desired, tp = setup
    rc, out, err = run(capsys, "import", "--iis-host", "web01", "-d", str(desired))
    assert rc == 0, err
    written = desired / "imported-web01.yaml"
    assert f"to {written}" in out
    text = written.read_text()
    assert text.startswith("# yaml-language-server: $schema=")
    state = load(desired, revision=False)
    certs = {n: c.spec for n, c in state.certificates.items()}
    # one spec per certificate in use; the certctl marker's name is kept when it has one
    assert set(certs) == {
        "web01-example-com",
        "www-example-com",
        "shop-example-net",
        "apps-example-org",
        "api-example-org",
        "staging-example-com",
        "ftp-example-com",
    }
    www = certs["www-example-com"]
    assert www.domains == ["www.example.com", "example.com"]
    assert www.key.algorithm.value == "ecdsa-p256"
    assert www.stores == ["web01-webhosting"] and www.issuer == "local"
    assert [(t.host, t.mode.value) for t in www.iis] == [("web01", "auto")]
    assert certs["apps-example-org"].domains == ["*.apps.example.org"]
    # the certificate in My gets a Store for that store
    assert certs["web01-example-com"].stores == ["web01-my"]
    assert state.stores["web01-my"].spec.windows is not None
    assert state.stores["web01-my"].spec.windows.name.value == "My"

    rc, out, err = run(capsys, "plan", "-d", str(desired), "--json", "--at", AT)
    assert rc == 0, err
    plan: dict[str, Any] = json.loads(out)
    assert [(a["kind"], a["certificate"], a["detail"].get("binding")) for a in plan["actions"]] == [
        ("bind", "www-example-com", "*:443:example.com")
    ]
    assert plan["actions"][0]["detail"]["thumbprint"] == tp["www"]  # the adopted certificate, not a new one
    states = {c["name"]: c["state"] for c in plan["certificates"]}
    assert states["www-example-com"] == "pending" and states["shop-example-net"] == "ready"


def test_import_twice_writes_nothing_new(
    setup: tuple[Path, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    desired, _tp = setup
    assert run(capsys, "import", "--iis-host", "web01", "-d", str(desired))[0] == 0
    before = (desired / "imported-web01.yaml").read_bytes()
    rc, out, _err = run(capsys, "import", "--iis-host", "web01", "-d", str(desired))
    assert rc == 0
    assert "Nothing to import" in out and "already covered by Certificate www-example-com" in out
    assert (desired / "imported-web01.yaml").read_bytes() == before


def test_certificates_an_existing_spec_covers_are_skipped(
    setup: tuple[Path, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    desired, _tp = setup
    (desired / "shop.yaml").write_text(
        "apiVersion: certctl/v1\nkind: Certificate\nmetadata: {name: shop}\nspec:\n  issuer: local\n"
        "  domains: [shop.example.net]\n  stores: [web01-webhosting]\n  iis: [{host: web01}]\n"
    )
    out_file = desired.parent / "out.yaml"
    rc, out, err = run(capsys, "import", "--iis-host", "web01", "-d", str(desired), "--out", str(out_file))
    assert rc == 0, err
    assert "already covered by Certificate shop" in out
    assert "name: shop-example-net" not in out_file.read_text()
    assert "name: www-example-com" in out_file.read_text()


def test_an_existing_file_with_other_content_is_never_overwritten(
    setup: tuple[Path, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    desired, _tp = setup
    target = desired.parent / "mine.yaml"
    target.write_text("# my notes\n")
    rc, _out, err = run(capsys, "import", "--iis-host", "web01", "-d", str(desired), "--out", str(target))
    assert rc == 1
    assert "exists with other content" in err
    assert target.read_text() == "# my notes\n"


def test_an_unknown_host_or_issuer_is_a_clear_error(
    setup: tuple[Path, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    desired, _tp = setup
    rc, _out, err = run(capsys, "import", "--iis-host", "web02", "-d", str(desired))
    assert rc == 1 and "IisHost 'web02' does not exist" in err and "known: web01" in err
    rc, _out, err = run(capsys, "import", "--iis-host", "web01", "-d", str(desired), "--issuer", "acme")
    assert rc == 1 and "Issuer 'acme' does not exist" in err
    assert not (desired / "imported-web01.yaml").exists()


BLOG = """\
            <site name="blog" id="8">
                <application path="/" applicationPool="DefaultAppPool">
                    <virtualDirectory path="/" physicalPath="D:\\Sites\\blog" />
                </application>
                <bindings>
                    <binding protocol="http" bindingInformation="*:80:blog.example.com" />
                    <binding protocol="http" bindingInformation="*:80:www.blog.example.com" />
                    <binding protocol="http" bindingInformation="*:80:*.blog.example.com" />
                    <binding protocol="http" bindingInformation="*:8080:" />
                </bindings>
            </site>
            <siteDefaults>"""


def _with_http_only_site(root: Path) -> None:
    config = root / "applicationHost.config"
    config.write_text(config.read_text().replace("            <siteDefaults>", BLOG, 1))


def test_a_site_with_only_http_bindings_gets_a_certificate(
    setup: tuple[Path, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    desired, _tp = setup
    _with_http_only_site(desired.parent / "web01")
    rc, out, err = run(capsys, "import", "--iis-host", "web01", "-d", str(desired), "--site", "blog")
    assert rc == 0, err
    assert "wildcard host *.blog.example.com left out" in out
    assert "site blog: http binding *:8080: has no host name" in out
    certs = {n: c.spec for n, c in load(desired, revision=False).certificates.items()}
    assert set(certs) == {"blog-example-com"}, "--site limits the import to that site"
    blog = certs["blog-example-com"]
    assert blog.domains == ["blog.example.com", "www.blog.example.com"]
    assert blog.stores == ["web01-webhosting"] and [(t.host, t.mode.value) for t in blog.iis] == [
        ("web01", "auto")
    ]
    assert "site blog has only http bindings" in (desired / "imported-web01.yaml").read_text()
    # the plan issues it and adds https beside each named http binding (SNI)
    rc, out, err = run(capsys, "plan", "-d", str(desired), "--json", "--at", AT)
    assert rc == 0, err
    actions = [
        (a["kind"], a["detail"].get("binding"))
        for a in json.loads(out)["actions"]
        if a["certificate"] == "blog-example-com"
    ]
    assert actions == [
        ("issue", None),
        ("install", None),
        ("bind", "*:443:blog.example.com"),
        ("bind", "*:443:www.blog.example.com"),
    ]


def test_an_unknown_site_is_a_clear_error(
    setup: tuple[Path, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    desired, _tp = setup
    rc, _out, err = run(capsys, "import", "--iis-host", "web01", "-d", str(desired), "--site", "nope")
    assert rc == 1 and "has no site 'nope'" in err and "Default Web Site" in err


def test_with_several_issuers_import_asks_which(
    setup: tuple[Path, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    desired, _tp = setup
    (desired / "second.yaml").write_text(
        "apiVersion: certctl/v1\nkind: Issuer\nmetadata: {name: other}\nspec: {localCA: {}}\n"
    )
    rc, _out, err = run(capsys, "import", "--iis-host", "web01", "-d", str(desired))
    assert rc == 1 and "there are 2 Issuers (local, other)" in err and "--issuer NAME" in err
    assert not (desired / "imported-web01.yaml").exists()
    rc, _out, err = run(capsys, "import", "--iis-host", "web01", "-d", str(desired), "--issuer", "other")
    assert rc == 0, err
    assert all(c.spec.issuer == "other" for n, c in load(desired, revision=False).certificates.items())

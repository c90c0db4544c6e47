"""Writes the desired/ and input.json of the IIS golden scenarios (run it, then review every expected.json).

    python tests/scenarios/build_iis.py && UPDATE_GOLDEN=1 pytest tests/scenarios -k iis
    python tests/scenarios/build_iis.py iis-star-host-auto-reported   # only the scenarios named

One emulated machine, ``web01``, with a WebHosting store; each scenario says what its sites,
bindings, HTTP.sys entries and certificates are, and which Certificate specs exist.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from reconciler.adapters.iis.appconfig import make_binding
from reconciler.core.codec import observed_to_json
from reconciler.core.model import (
    IIS_APPID,
    CertInfo,
    HostState,
    HttpSysEntry,
    IssuedVersion,
    ObservedState,
    Site,
    SiteState,
    StoredCert,
    StoreState,
)

ROOT = Path(__file__).parent
T0 = datetime(2026, 1, 1, tzinfo=UTC)
AT = T0 + timedelta(days=10)
HOST = "web01"
STORE = "web01-webhosting"
WMSVC_APPID = "{d7d72267-fcf9-4424-9eec-7e1d8dcec9a9}"

BASE = """\
apiVersion: certctl/v1
kind: Settings
metadata: {name: settings}
spec:
  prune: %(prune)s
---
apiVersion: certctl/v1
kind: Issuer
metadata: {name: local}
spec:
  localCA: {validity: 90d}
---
apiVersion: certctl/v1
kind: IisHost
metadata: {name: web01}
spec:
  backend: emulated
  root: /srv/iis/web01
---
apiVersion: certctl/v1
kind: Store
metadata: {name: web01-webhosting}
spec:
  windows: {host: web01, name: WebHosting}
---
apiVersion: certctl/v1
kind: Store
metadata: {name: pem}
spec:
  pemDirectory: {path: /srv/pem}
"""


def thumb(seed: str) -> str:
    return hashlib.sha1(seed.encode()).hexdigest().upper()


def info(seed: str, sans: tuple[str, ...], not_before: datetime = T0, days: float = 90) -> CertInfo:
    return CertInfo(
        thumbprint=thumb(seed),
        sha256=hashlib.sha256(seed.encode()).hexdigest(),
        subject=sans[0],
        sans=sans,
        key_algorithm="ecdsa-p256",
        not_before=not_before,
        not_after=not_before + timedelta(days=days),
        issuer="O=certctl,CN=certctl local CA local",
        serial=hashlib.md5(seed.encode()).hexdigest()[:16],
    )


def site(
    name: str,
    site_id: int,
    *bindings: tuple[str, str] | tuple[str, str, int],
    stopped: bool = False,
    ftp: str | None = None,
    ftp_store: str = "WebHosting",
) -> Site:
    made = tuple(make_binding(name, b[0], b[1], b[2] if len(b) > 2 else 0) for b in bindings)
    return Site(
        name=name,
        id=site_id,
        physical_path=f"D:\\Sites\\{name}",
        state=SiteState.stopped if stopped else SiteState.started,
        bindings=made,
        ftp_cert_hash=ftp,
        ftp_cert_store=ftp_store if ftp else None,
    )


def sni(host: str, tp: str | None, store: str = "WebHosting", port: int = 443) -> HttpSysEntry:
    return HttpSysEntry("hostnameport", f"{host}:{port}", tp, store, IIS_APPID)


def ipport(key: str, tp: str | None, store: str = "WebHosting", appid: str = IIS_APPID) -> HttpSysEntry:
    return HttpSysEntry("ipport", key, tp, store, appid)


def cert_yaml(
    name: str, domains: str, iis: str = "[{host: web01}]", stores: str = "[web01-webhosting]"
) -> str:
    return (
        f"apiVersion: certctl/v1\nkind: Certificate\nmetadata: {{name: {name}}}\nspec:\n  issuer: local\n"
        f"  domains: {domains}\n  stores: {stores}\n  iis: {iis}\n"
    )


@dataclass
class World:
    sites: list[Site]
    entries: list[HttpSysEntry]
    issued: dict[str, list[CertInfo]] = field(default_factory=dict)  # oldest first; the last is current
    store: list[tuple[CertInfo, str | None]] = field(default_factory=list)  # (cert, certctl marker)
    reachable: bool = True
    problems: tuple[str, ...] = ()
    made: list[tuple[str, str]] = field(default_factory=list)  # (site, bindingInformation) certctl added
    blocking: tuple[str, ...] = ()  # unreadable HTTP.sys data

    def observed(self) -> ObservedState:
        issued = {
            name: tuple(IssuedVersion(name, i, "localca:local", i.not_before, i.sans) for i in infos)
            for name, infos in self.issued.items()
        }
        certs = tuple(
            StoredCert(
                STORE,
                i,
                i.thumbprint,
                managed,
                True,
                i.not_before,
                friendly_name=f"certctl:{managed}" if managed else "",
            )
            for i, managed in self.store
        )
        host = HostState(
            HOST,
            "10.0",
            tuple(self.sites),
            tuple(self.entries),
            ("My", "WebHosting"),
            problems=self.problems,
            reachable=self.reachable,
            blocking=self.blocking,
        )
        return ObservedState(
            issued=issued,
            stores={STORE: StoreState(STORE, certs)},
            hosts={HOST: host},
            made_bindings=tuple(sorted((HOST, s, i) for s, i in self.made)),
        )


def scenario(name: str, world: World, certs: list[str], *, at: datetime = AT, prune: bool = False) -> None:
    if sys.argv[1:] and name not in sys.argv[1:]:
        return
    folder = ROOT / name
    shutil.rmtree(folder / "desired", ignore_errors=True)
    (folder / "desired").mkdir(parents=True)
    (folder / "desired" / "base.yaml").write_text(BASE % {"prune": str(prune).lower()})
    (folder / "desired" / "certificates.yaml").write_text("---\n".join(certs) if certs else "")
    data = {
        "at": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "forced": [],
        "observed": observed_to_json(world.observed()),
    }
    (folder / "input.json").write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


WWW_DOMAINS = "[www.example.com, example.com]"
WWW_SANS = ("www.example.com", "example.com")


def main() -> None:
    cur = info("www-current", WWW_SANS)
    old = info("www-old", WWW_SANS, T0 - timedelta(days=80))
    foreign = info("foreign", ("www.example.com",))  # put there by hand, not by certctl
    other = info("other", ("other.example.net",))
    www = cert_yaml("www", WWW_DOMAINS)

    # auto mode: an http-only host gets *:443:<host> with SNI; the existing https binding is fine
    scenario(
        "iis-bind-http-only-site",
        World(
            [
                site(
                    "example.com",
                    2,
                    ("http", "*:80:example.com"),
                    ("http", "*:80:www.example.com"),
                    ("https", "*:443:www.example.com", 1),
                )
            ],
            [sni("www.example.com", cur.thumbprint)],
            issued={"www": [cur]},
            store=[(cur, "www")],
        ),
        [www],
    )

    # the first certificate: issue, install, then bind from the store (depends on both)
    scenario(
        "iis-first-issuance-binds",
        World([site("example.com", 2, ("http", "*:80:example.com"), ("http", "*:80:www.example.com"))], []),
        [www],
    )

    # renewal: exactly the bindings that served the old thumbprint are rebound, after renew + install
    scenario(
        "iis-renewal-rebinds-old-bindings",
        World(
            [
                site(
                    "example.com", 2, ("http", "*:80:www.example.com"), ("https", "*:443:www.example.com", 1)
                ),
                site("apex", 3, ("https", "*:443:example.com", 1)),
                site("other", 4, ("https", "*:443:other.example.net", 1)),
            ],
            [
                sni("www.example.com", cur.thumbprint),
                sni("example.com", cur.thumbprint),
                sni("other.example.net", other.thumbprint),
            ],
            issued={"www": [old, cur]},
            store=[(old, "www"), (cur, "www"), (other, None)],
        ),
        [www],
        at=T0 + timedelta(days=70),
    )

    # renewal done, bindings not yet: those serving the previous certificate are rebound (Renewed), no issuance
    scenario(
        "iis-renewed-bindings-follow",
        World(
            [
                site("example.com", 2, ("https", "*:443:www.example.com", 1)),
                site("apex", 3, ("https", "*:443:example.com", 1)),
            ],
            [sni("www.example.com", old.thumbprint), sni("example.com", cur.thumbprint)],
            issued={"www": [old, cur]},
            store=[(old, "www"), (cur, "www")],
        ),
        [www],
    )

    # one binding changed by hand: exactly one rebind, no issuance
    scenario(
        "iis-drift-one-binding",
        World(
            [
                site("example.com", 2, ("https", "*:443:www.example.com", 1)),
                site("apex", 3, ("https", "*:443:example.com", 1)),
            ],
            [sni("www.example.com", foreign.thumbprint), sni("example.com", cur.thumbprint)],
            issued={"www": [cur]},
            store=[(cur, "www"), (foreign, None)],
        ),
        [www],
    )

    # converged: nothing to do
    scenario(
        "iis-converged",
        World(
            [
                site(
                    "example.com", 2, ("http", "*:80:www.example.com"), ("https", "*:443:www.example.com", 1)
                ),
                site("apex", 3, ("http", "*:80:example.com"), ("https", "*:443:example.com", 1)),
            ],
            [sni("www.example.com", cur.thumbprint), sni("example.com", cur.thumbprint)],
            issued={"www": [cur]},
            store=[(cur, "www")],
        ),
        [www],
    )

    # an HTTP.sys entry that points to a certificate no store holds (deleted by hand): install it again and rebind
    scenario(
        "iis-entry-points-to-no-store",
        World(
            [site("example.com", 2, ("https", "*:443:www.example.com", 1))],
            [sni("www.example.com", cur.thumbprint)],
            issued={"www": [cur]},
            store=[],
        ),
        [www],
    )

    # a spec was deleted: its binding and certificate stay (reported) without prune ...
    gone = info("gone", ("gone.example.com",))
    orphan_world = World(
        [
            site("gone", 5, ("http", "*:80:gone.example.com"), ("https", "*:443:gone.example.com", 1)),
            site("example.com", 2, ("https", "*:443:www.example.com", 1)),
        ],
        [sni("gone.example.com", gone.thumbprint), sni("www.example.com", cur.thumbprint)],
        issued={"www": [cur]},
        store=[(cur, "www"), (gone, "gone")],
        made=[("gone", "*:443:gone.example.com")],
    )
    scenario("iis-deleted-spec-kept", orphan_world, [www])
    # ... and with prune: true the binding certctl made is removed, then the certificate
    scenario("iis-deleted-spec-pruned", orphan_world, [www], prune=True)
    # ... but a binding that existed before certctl (certctl only set its certificate) is never removed
    scenario(
        "iis-deleted-spec-pruned-keeps-binding-certctl-did-not-add",
        replace(orphan_world, made=[]),
        [www],
        prune=True,
    )
    # with prune, a binding of another shape (no SNI) serving it is kept, and so is the certificate
    scenario(
        "iis-deleted-spec-pruned-keeps-foreign-shape",
        World(
            [site("gone", 5, ("http", "*:80:gone.example.com"), ("https", "10.0.0.5:443:gone.example.com"))],
            [ipport("10.0.0.5:443", gone.thumbprint)],
            store=[(gone, "gone")],
        ),
        [],
        prune=True,
    )

    # with prune, a binding on a stopped site is kept too (certctl leaves stopped sites alone)
    scenario(
        "iis-deleted-spec-pruned-stopped-site-kept",
        World(
            [
                site(
                    "gone",
                    5,
                    ("http", "*:80:gone.example.com"),
                    ("https", "*:443:gone.example.com", 1),
                    stopped=True,
                )
            ],
            [sni("gone.example.com", gone.thumbprint)],
            store=[(gone, "gone")],
        ),
        [],
        prune=True,
    )

    # exact beats wildcard, across certificates
    wild = info("wild", ("*.example.com",))
    exact = info("exact", ("www.example.com",))
    scenario(
        "iis-exact-beats-wildcard",
        World(
            [
                site("www", 2, ("http", "*:80:www.example.com"), ("https", "*:443:www.example.com", 1)),
                site("api", 3, ("http", "*:80:api.example.com")),
                site("shop", 4, ("http", "*:80:shop.example.com"), ("https", "*:443:shop.example.com", 1)),
            ],
            [sni("www.example.com", wild.thumbprint), sni("shop.example.com", wild.thumbprint)],
            issued={"wild": [wild], "www": [exact]},
            store=[(wild, "wild"), (exact, "www")],
        ),
        [cert_yaml("wild", "['*.example.com']"), cert_yaml("www", "[www.example.com]")],
    )

    # a wildcard covers exactly one label; a wildcard binding host only by the same wildcard
    apps = info("apps", ("*.apps.example.org",))
    wild_org = info("wild-org", ("*.example.org",))
    scenario(
        "iis-wildcard-one-label",
        World(
            [
                site("a", 2, ("http", "*:80:a.example.org")),
                site("deep", 3, ("http", "*:80:b.a.example.org")),
                site("apex", 4, ("http", "*:80:example.org")),
                site(
                    "apps", 5, ("https", "*:443:*.apps.example.org", 1), ("http", "*:80:x.apps.example.org")
                ),
            ],
            [sni("*.apps.example.org", foreign.thumbprint)],
            issued={"apps": [apps], "wild": [wild_org]},
            store=[(apps, "apps"), (wild_org, "wild"), (foreign, None)],
        ),
        [cert_yaml("wild", "['*.example.org']"), cert_yaml("apps", "['*.apps.example.org']")],
    )

    # the shared-endpoint hazard: non-SNI bindings on one IP:port share one HTTP.sys entry
    legacy = info("legacy", ("legacy.example.net",))
    pair = info("pair", ("a.example.net", "b.example.net"))
    scenario(
        "iis-shared-endpoint-left-alone",
        World(
            [
                site("Default Web Site", 1, ("http", "*:80:"), ("https", "*:443:")),
                site("legacy", 2, ("https", "*:443:legacy.example.net")),
                site("other", 3, ("https", "*:443:other.example.net")),
                site("a", 6, ("https", "198.51.100.7:443:a.example.net")),
                site("b", 7, ("https", "198.51.100.7:443:b.example.net")),
            ],
            [ipport("0.0.0.0:443", other.thumbprint), ipport("198.51.100.7:443", foreign.thumbprint)],
            issued={"legacy": [legacy], "pair": [pair]},
            store=[(legacy, "legacy"), (pair, "pair"), (other, None), (foreign, None)],
        ),
        [cert_yaml("legacy", "[legacy.example.net]"), cert_yaml("pair", "[a.example.net, b.example.net]")],
    )

    # a blank-host binding: left alone in auto mode (reported, also that it still serves the old certificate) ...
    blank_sites = [
        site(
            "Default Web Site",
            1,
            ("http", "*:80:"),
            ("https", "*:443:"),
            ("http", "*:80:www.example.com"),
            ("https", "*:443:www.example.com", 1),
        )
    ]
    blank_entries = [ipport("0.0.0.0:443", old.thumbprint), sni("www.example.com", cur.thumbprint)]
    scenario(
        "iis-blank-host-auto-left-alone",
        World(blank_sites, blank_entries, issued={"www": [old, cur]}, store=[(old, "www"), (cur, "www")]),
        [www],
    )
    # ... and updated in site mode
    scenario(
        "iis-blank-host-site-mode-updated",
        World(blank_sites, blank_entries, issued={"www": [old, cur]}, store=[(old, "www"), (cur, "www")]),
        [cert_yaml("www", WWW_DOMAINS, iis="[{host: web01, mode: site, site: Default Web Site}]")],
    )

    # a stopped site: nothing added, nothing rebound, both reported
    scenario(
        "iis-stopped-site",
        World(
            [
                site(
                    "example.com",
                    2,
                    ("http", "*:80:example.com"),
                    ("https", "*:443:www.example.com", 1),
                    stopped=True,
                )
            ],
            [sni("www.example.com", foreign.thumbprint)],
            issued={"www": [cur]},
            store=[(cur, "www")],
        ),
        [www],
    )

    # a CCS binding: its certificate is a file the ccs task writes
    scenario(
        "iis-ccs-binding-left-alone",
        World(
            [site("example.com", 2, ("http", "*:80:www.example.com"), ("https", "*:443:www.example.com", 3))],
            [HttpSysEntry("ccs", "443", None, None, IIS_APPID)],
            issued={"www": [cur]},
            store=[(cur, "www")],
        ),
        [www],
    )

    # FTP: the site's ftpServer/security/ssl follows its host's certificate; a blank-host FTP site is reported
    ftp = info("ftp", ("ftp.example.com",))
    scenario(
        "iis-ftp",
        World(
            [
                site("FTP", 7, ("ftp", "*:21:ftp.example.com"), ftp=foreign.thumbprint),
                site("FTP new", 8, ("ftp", "*:21:ftp.example.com"), ("ftp", "*:2121:ftp.example.com")),
                site("FTP blank", 9, ("ftp", "*:21:"), ftp=old.thumbprint),
            ],
            [],
            issued={"ftp": [ftp]},
            store=[(ftp, "ftp"), (foreign, None)],
        ),
        [cert_yaml("ftp", "[ftp.example.com]")],
    )

    # IPv4- and IPv6-specific bindings, each with its own HTTP.sys entry; a new binding copies the http IP
    shop = info("shop", ("shop.example.net", "v6.example.net"))
    scenario(
        "iis-ipv6-binding",
        World(
            [
                site(
                    "shop",
                    3,
                    ("http", "203.0.113.10:80:shop.example.net"),
                    ("https", "203.0.113.10:443:shop.example.net"),
                    ("https", "[2001:db8::10]:443:shop.example.net"),
                ),
                site("v6", 4, ("http", "[2001:db8::20]:80:v6.example.net")),
            ],
            [
                ipport("203.0.113.10:443", foreign.thumbprint),
                ipport("[2001:0db8:0000::10]:443", foreign.thumbprint),
            ],
            issued={"shop": [shop]},
            store=[(shop, "shop"), (foreign, None)],
        ),
        [cert_yaml("shop", "[shop.example.net, v6.example.net]")],
    )

    # sslFlags bits are kept on update (5 = SNI + disable HTTP/2 stays 5), and the port too
    api = info("api", ("api.example.org",))
    scenario(
        "iis-ssl-flags-kept",
        World(
            [site("apps", 4, ("https", "*:8443:api.example.org", 5), ("https", "*:443:api.example.org", 65))],
            [
                sni("api.example.org", foreign.thumbprint, port=8443),
                sni("api.example.org", foreign.thumbprint),
            ],
            issued={"api": [api]},
            store=[(api, "api"), (foreign, None)],
        ),
        [cert_yaml("api", "[api.example.org]")],
    )

    # never a duplicate IP:port:host: another site already has it, or another add in this plan takes it
    scenario(
        "iis-no-duplicate-binding",
        World(
            [
                site("old www", 2, ("http", "*:80:www.example.com")),
                site("www", 3, ("http", "*:80:www.example.com"), ("https", "*:443:www.example.com", 1)),
                site("apex one", 4, ("http", "*:80:example.com")),
                site("apex two", 5, ("http", "*:80:example.com")),
            ],
            [sni("www.example.com", cur.thumbprint)],
            issued={"www": [cur]},
            store=[(cur, "www")],
        ),
        [www],
    )

    # site mode naming a site the host does not have: reported, nothing planned
    scenario(
        "iis-site-mode-missing-site",
        World(
            [site("example.com", 2, ("http", "*:80:www.example.com"))],
            [],
            issued={"www": [cur]},
            store=[(cur, "www")],
        ),
        [cert_yaml("www", WWW_DOMAINS, iis="[{host: web01, mode: site, site: Nope}]")],
    )

    # site mode touches only its site
    scenario(
        "iis-site-mode-only-its-site",
        World(
            [
                site("example.com", 2, ("http", "*:80:www.example.com")),
                site("apex", 3, ("http", "*:80:example.com")),
            ],
            [],
            issued={"www": [cur]},
            store=[(cur, "www")],
        ),
        [cert_yaml("www", WWW_DOMAINS, iis="[{host: web01, mode: site, site: apex}]")],
    )

    # mode none touches nothing
    scenario(
        "iis-mode-none",
        World(
            [site("example.com", 2, ("http", "*:80:example.com"), ("https", "*:443:www.example.com", 1))],
            [sni("www.example.com", foreign.thumbprint)],
            issued={"www": [cur]},
            store=[(cur, "www")],
        ),
        [cert_yaml("www", WWW_DOMAINS, iis="[{host: web01, mode: none}]")],
    )

    # the binding store is not among the certificate's stores: nothing installs it there, so nothing is bound
    scenario(
        "iis-store-not-listed-no-bind",
        World(
            [site("example.com", 2, ("http", "*:80:www.example.com"))], [], issued={"www": [cur]}, store=[]
        ),
        [cert_yaml("www", WWW_DOMAINS, iis="[{host: web01, store: web01-webhosting}]", stores="[pem]")],
    )

    # other protocols, unreadable bindings and other applications' HTTP.sys entries are never touched
    scenario(
        "iis-foreign-and-unparsable-left-alone",
        World(
            [
                site(
                    "apps",
                    4,
                    ("net.tcp", "808:*"),
                    ("https", "not-a-binding"),
                    ("http", "*:80:www.example.com"),
                    ("https", "10.1.1.1:443:www.example.com"),
                )
            ],
            [ipport("10.1.1.1:443", foreign.thumbprint, appid=WMSVC_APPID)],
            issued={"www": [cur]},
            store=[(cur, "www")],
        ),
        [www],
    )

    # an IIS host that cannot be read: reported, nothing planned for it
    scenario(
        "iis-host-unreachable",
        World(
            [],
            [],
            issued={"www": [cur]},
            store=[(cur, "www")],
            reachable=False,
            problems=("IIS host 'web01': the folder /srv/iis/web01 does not exist",),
        ),
        [www],
    )

    # --- servers as they are (issue 16) ---
    unreadable = (
        "netsh http show sslcert: entry ipport=0.0.0.0:443 has no certificate hash certctl can read",
    )
    expired = info("www-expired", WWW_SANS, T0 - timedelta(days=80))
    orphan_unused = info("gone-older", ("gone.example.com",), T0 - timedelta(days=30))
    # HTTP.sys could not be read (another display language): the superseded, expired certificate is not removed,
    # since nothing can tell whether a binding still uses it
    scenario(
        "iis-httpsys-unreadable-blocks-cleanup",
        World(
            [site("example.com", 2, ("http", "*:80:www.example.com"), ("https", "*:443:www.example.com", 1))],
            [sni("www.example.com", cur.thumbprint)],
            issued={"www": [expired, cur]},
            store=[(expired, "www"), (cur, "www")],
            problems=unreadable,
            blocking=unreadable,
        ),
        [www],
        at=AT + timedelta(days=1),
    )
    # ... nor is a binding pruned, nor the certificate of a deleted spec
    scenario(
        "iis-httpsys-unreadable-blocks-prune",
        World(
            [site("gone", 6, ("https", "*:443:gone.example.com", 1))],
            [sni("gone.example.com", gone.thumbprint)],
            store=[(gone, "gone"), (orphan_unused, "gone")],
            made=[("gone", "*:443:gone.example.com")],
            problems=unreadable,
            blocking=unreadable,
        ),
        [],
        prune=True,
    )

    # IIS Express writes https on host "*": a catch-all like a blank host, reported in auto mode ...
    star_sites = [site("Shop.Web", 2, ("http", "*:51080:localhost"), ("https", ":44300:*"))]
    scenario(
        "iis-star-host-auto-reported",
        World(
            star_sites,
            [ipport("0.0.0.0:44300", old.thumbprint)],
            issued={"www": [old, cur]},
            store=[(old, "www"), (cur, "www")],
        ),
        [www],
    )
    # ... and renewed in site mode
    scenario(
        "iis-star-host-site-mode-renewed",
        World(
            star_sites,
            [ipport("0.0.0.0:44300", old.thumbprint)],
            issued={"www": [old, cur]},
            store=[(old, "www"), (cur, "www")],
        ),
        [cert_yaml("www", WWW_DOMAINS, iis="[{host: web01, mode: site, site: Shop.Web}]")],
    )

    # an ADFS-like entry with client certificate settings: the rebind says they are kept
    adfs = HttpSysEntry(
        "ipport",
        "10.20.0.13:443",
        old.thumbprint,
        "WebHosting",
        IIS_APPID,
        settings=(("Ctl Store Name", "ClientAuthIssuer"), ("Negotiate Client Certificate", "Enabled")),
    )
    scenario(
        "iis-rebind-keeps-httpsys-settings",
        World(
            [site("adfs", 7, ("https", "10.20.0.13:443:www.example.com"))],
            [adfs],
            issued={"www": [old, cur]},
            store=[(old, "www"), (cur, "www")],
        ),
        [www],
    )

    # two certificates in site mode on one site, each on blank-host bindings of its own IP (what import writes
    # for an IIS 7.5 server): each keeps the bindings that serve it, the renewed one is rebound
    other_old = info("corp-old", ("*.corp.example.com",), T0 - timedelta(days=80))
    other_cur = info("corp-current", ("*.corp.example.com",))
    scenario(
        "iis-site-mode-blank-hosts-follow-what-they-serve",
        World(
            [site("Portal", 2, ("https", "10.20.0.11:443:"), ("https", "10.20.0.12:443:"))],
            [ipport("10.20.0.11:443", old.thumbprint), ipport("10.20.0.12:443", other_old.thumbprint)],
            issued={"www": [old, cur], "corp": [other_old, other_cur]},
            store=[(old, "www"), (cur, "www"), (other_old, "corp"), (other_cur, "corp")],
        ),
        [
            cert_yaml("www", WWW_DOMAINS, iis="[{host: web01, mode: site, site: Portal}]"),
            cert_yaml("corp", '["*.corp.example.com"]', iis="[{host: web01, mode: site, site: Portal}]"),
        ],
    )


if __name__ == "__main__":
    main()

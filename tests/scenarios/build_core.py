"""Writes the desired/ and input.json of the foundation's golden scenarios (run it, then review expected.json).

python tests/scenarios/build_core.py && UPDATE_GOLDEN=1 pytest tests/scenarios
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from reconciler.core.codec import observed_to_json  # noqa: E402
from reconciler.core.model import (  # noqa: E402
    Attempts,
    CertInfo,
    IssuedVersion,
    ObservedState,
    Revocation,
    StoredCert,
    StoreState,
    TaskState,
)

ROOT = Path(__file__).parent
T0 = datetime(2026, 1, 1, tzinfo=UTC)

BASE = """\
apiVersion: certctl/v1
kind: Settings
metadata: {name: settings}
spec:
  cleanupAfter: 7d
  prune: %(prune)s
---
apiVersion: certctl/v1
kind: Issuer
metadata: {name: local}
spec:
  localCA: {validity: 90d}
---
apiVersion: certctl/v1
kind: Issuer
metadata: {name: other}
spec:
  localCA: {validity: 30d}
---
apiVersion: certctl/v1
kind: Store
metadata: {name: pem}
spec:
  pemDirectory: {path: /srv/pem}
"""

WWW = """\
apiVersion: certctl/v1
kind: Certificate
metadata: {name: www}
spec:
  issuer: %(issuer)s
  domains: %(domains)s
  key: {algorithm: %(alg)s}
%(renewal)s  stores: [pem]
  tasks:
    - files: {path: /srv/www/tls, reload: "nginx -s reload"}
"""


def thumb(seed: str) -> str:
    return hashlib.sha1(seed.encode()).hexdigest().upper()  # noqa: S324 - a fixture id, not security


def info(
    seed: str, sans: tuple[str, ...], not_before: datetime, days: float, alg: str = "ecdsa-p256"
) -> CertInfo:
    return CertInfo(
        thumbprint=thumb(seed),
        sha256=hashlib.sha256(seed.encode()).hexdigest(),
        subject=sans[0],
        sans=sans,
        key_algorithm=alg,
        not_before=not_before,
        not_after=not_before + timedelta(days=days),
        issuer="O=certctl,CN=certctl local CA local",
        serial=hashlib.md5(seed.encode()).hexdigest()[:16],  # noqa: S324
    )


def world(
    cert: CertInfo | None,
    *,
    in_store: bool = True,
    task_thumb: str | None = "same",
    extra_store: tuple[StoredCert, ...] = (),
    attempts: Attempts | None = None,
    issuer_id: str = "localca:local",
    versions: tuple[IssuedVersion, ...] = (),
) -> ObservedState:
    issued = versions + ((IssuedVersion("www", cert, issuer_id, cert.not_before, cert.sans),) if cert else ())
    certs = extra_store + (
        (StoredCert("pem", cert, f"www/{cert.thumbprint[:8]}", "www", True, cert.not_before),)
        if cert and in_store
        else ()
    )
    tasks = {}
    if cert is not None or task_thumb not in ("same", None):
        value = cert.thumbprint if task_thumb == "same" and cert else task_thumb
        tasks[("www", 0)] = TaskState("www", 0, value, None if value else "/srv/www/tls/cert.pem is missing")
    return ObservedState(
        issued={"www": issued} if issued else {},
        stores={"pem": StoreState("pem", certs)},
        tasks=tasks,
        attempts={"www": attempts} if attempts else {},
    )


def scenario(
    name: str,
    observed: ObservedState,
    at: datetime,
    *,
    domains: str = "[www.example.com, example.com]",
    alg: str = "ecdsa-p256",
    issuer: str = "local",
    renewal: str = "",
    prune: str = "false",
    forced: tuple[str, ...] = (),
    extra_yaml: str = "",
) -> None:
    folder = ROOT / name
    shutil.rmtree(folder / "desired", ignore_errors=True)
    (folder / "desired").mkdir(parents=True)
    (folder / "desired" / "base.yaml").write_text(BASE % {"prune": prune})
    (folder / "desired" / "www.yaml").write_text(
        WWW % {"issuer": issuer, "domains": domains, "alg": alg, "renewal": renewal} + extra_yaml
    )
    data = {
        "at": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "forced": list(forced),
        "observed": observed_to_json(observed),
    }
    (folder / "input.json").write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def main() -> None:
    sans = ("www.example.com", "example.com")
    cur = info("current", sans, T0, 90)
    old = info("old", sans, T0 - timedelta(days=60), 90)
    scenario("core-empty-world", world(None), T0)
    scenario("core-converged", world(cur), T0 + timedelta(days=10))
    scenario("core-renewal-due-lifetime-percent", world(cur), T0 + timedelta(days=73))  # 81% of 90 days
    scenario("core-not-yet-due", world(cur), T0 + timedelta(days=67))  # 74%
    scenario(
        "core-renewal-due-before-expiry",
        world(cur),
        T0 + timedelta(days=61),
        renewal="  renewal: {beforeExpiry: 30d}\n",
    )
    short = info("short", sans, T0, 6)
    scenario(
        "core-short-lived-not-due-at-4-days",
        world(short),
        T0 + timedelta(days=4),
        renewal="  renewal: {beforeExpiry: 30d}\n",
    )
    scenario("core-short-lived-due-at-4-5-days", world(short), T0 + timedelta(days=4, hours=12))
    scenario("core-expired", world(cur), T0 + timedelta(days=91))
    scenario(
        "core-domains-changed",
        world(cur),
        T0 + timedelta(days=5),
        domains="[www.example.com, example.com, shop.example.com]",
    )
    scenario("core-key-algorithm-changed", world(cur), T0 + timedelta(days=5), alg="rsa-3072")
    scenario("core-issuer-changed", world(cur), T0 + timedelta(days=5), issuer="other")
    failing = Attempts(
        "www",
        consecutive_failures=2,
        last_attempt=T0 + timedelta(days=73),
        last_error="CA unreachable",
        next_retry=T0 + timedelta(days=73, hours=2),
    )
    scenario("core-deferred-after-failures", world(cur, attempts=failing), T0 + timedelta(days=73, hours=1))
    scenario(
        "core-forced-overrides-backoff",
        world(cur, attempts=failing),
        T0 + timedelta(days=73, hours=1),
        forced=("www",),
    )
    scenario("core-retry-after-backoff", world(cur, attempts=failing), T0 + timedelta(days=73, hours=3))
    scenario("core-store-lacks-current", world(cur, in_store=False), T0 + timedelta(days=10))
    scenario("core-task-output-outdated", world(cur, task_thumb=thumb("old")), T0 + timedelta(days=10))
    scenario("core-task-output-missing", world(cur, task_thumb=None), T0 + timedelta(days=10))
    older = info("older", sans, T0 - timedelta(days=120), 90)
    stored_old = StoredCert("pem", old, f"www/{old.thumbprint[:8]}", "www", False, old.not_before, T0)
    stored_older = StoredCert(
        "pem", older, f"www/{older.thumbprint[:8]}", "www", False, older.not_before, old.not_before
    )
    scenario(
        "core-cleanup-superseded-keeps-rollback",
        world(
            cur,
            extra_store=(stored_older, stored_old),
            versions=(
                IssuedVersion("www", older, "localca:local", older.not_before, sans),
                IssuedVersion("www", old, "localca:local", old.not_before, sans),
            ),
        ),
        T0 + timedelta(days=10),
    )
    a = info("a", sans, T0 - timedelta(days=10), 90)
    b = info("b", sans, T0 - timedelta(days=5), 90)
    stored_a = StoredCert("pem", a, f"www/{a.thumbprint[:8]}", "www", False, a.not_before, b.not_before)
    stored_b = StoredCert("pem", b, f"www/{b.thumbprint[:8]}", "www", False, b.not_before, T0)
    scenario(
        "core-cleanup-waits-for-grace", world(cur, extra_store=(stored_a, stored_b)), T0 + timedelta(days=1)
    )
    scenario("core-cleanup-after-grace", world(cur, extra_store=(stored_a, stored_b)), T0 + timedelta(days=3))
    orphan = info("orphan", ("gone.example.com",), T0, 90)
    stored_orphan = StoredCert("pem", orphan, "gone/x", "gone", True, T0)
    scenario(
        "core-orphan-kept-without-prune", world(cur, extra_store=(stored_orphan,)), T0 + timedelta(days=10)
    )
    scenario(
        "core-orphan-pruned", world(cur, extra_store=(stored_orphan,)), T0 + timedelta(days=10), prune="true"
    )
    foreign = StoredCert(
        "pem", info("foreign", ("foreign.example.com",), T0, 90), "foreign.pem", None, True, has_key=False
    )
    problems = StoreState(
        "pem",
        (StoredCert("pem", cur, "www/x", "www", True, T0), foreign),
        ("/srv/pem/broken/cert.pem is not a valid PEM certificate (bad data); left alone",),
    )
    scenario(
        "core-store-problems-reported",
        ObservedState(
            issued={"www": (IssuedVersion("www", cur, "localca:local", T0, sans),)},
            stores={"pem": problems},
            tasks={("www", 0): TaskState("www", 0, cur.thumbprint)},
        ),
        T0 + timedelta(days=10),
    )
    ari = Attempts(
        "www",
        ari_window_start=T0 + timedelta(days=40),
        ari_window_end=T0 + timedelta(days=44),
        ari_for=cur.thumbprint,
    )
    scenario("core-ari-window-moves-renewal-earlier", world(cur, attempts=ari), T0 + timedelta(days=43))


def fallback_and_revocation() -> None:
    """Issue 14: lists of Issuers, revoked certificates, an ARI window that has ended."""
    sans = ("www.example.com", "example.com")
    cur = info("current", sans, T0, 90)
    passed = Attempts(
        "www",
        ari_window_start=T0 + timedelta(days=20),
        ari_window_end=T0 + timedelta(days=21),
        ari_for=cur.thumbprint,
    )
    scenario("core-ari-window-passed-renews-now", world(cur, attempts=passed), T0 + timedelta(days=22))
    revoked = IssuedVersion(
        "www",
        cur,
        "localca:local",
        T0,
        sans,
        issuer="local",
        revocation=Revocation("keyCompromise", T0 + timedelta(days=3), "certctl revoke"),
    )
    scenario(
        "core-revoked-key-compromise",
        ObservedState(
            issued={"www": (revoked,)},
            stores={"pem": StoreState("pem", (StoredCert("pem", cur, "www/x", "www", True, T0),))},
            tasks={("www", 0): TaskState("www", 0, cur.thumbprint)},
        ),
        T0 + timedelta(days=4),
    )
    scenario(
        "core-issuer-list-reordered-no-reissue", world(cur), T0 + timedelta(days=5), issuer="[other, local]"
    )
    by_fallback = IssuedVersion(
        "www",
        cur,
        "localca:other",
        T0,
        sans,
        issuer="other",
        issuer_note="local could not serve: the CA at https://acme.example is unreachable",
    )
    scenario(
        "core-issued-by-fallback-issuer",
        ObservedState(
            issued={"www": (by_fallback,)},
            stores={"pem": StoreState("pem", (StoredCert("pem", cur, "www/x", "www", True, T0),))},
            tasks={("www", 0): TaskState("www", 0, cur.thumbprint)},
        ),
        T0 + timedelta(days=5),
        issuer="[local, other]",
    )
    scenario("core-fallback-issuer-listed-in-issue", world(None), T0, issuer="[local, other]")


if __name__ == "__main__":
    if sys.argv[1:] == ["issue14"]:
        fallback_and_revocation()
    else:
        main()
        fallback_and_revocation()

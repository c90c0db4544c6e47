"""ACME issuance against a local Pebble: certctl beside certbot, lego and the limit (run by `make bench`; not a test).

Starts Pebble (validation without sleeps, PEBBLE_VA_NOSLEEP=1) with pebble-challtestsrv as its DNS
(every name is 127.0.0.1); every certificate has two domains and is validated over http-01 on the
port Pebble's VA connects to. In the same run, against the same Pebble:

1. the limit: `bench/minimal_acme.py`, a minimal client that only issues, polling without pauses,
   run with 1, 2, 4, 8 and --concurrency threads before certctl and with the best of those after it
   (polling without pauses swamps Pebble when many orders run at once, so fewer threads may be faster);
   the fastest run counts;
2. certctl: `certctl apply` of --certs certificates at Settings.concurrency --concurrency (built-in
   standalone http-01 listener), then the same apply again with nothing left to do (what certctl's start,
   loading, observing and planning cost, which the in-process limit does not pay), and `certctl apply` of
   --peer-certs certificates at concurrency 1 (the median time of one issue action, from certctl's own
   `action.applied` log lines);
3. certbot (pip-installed into bench/out/certbot-venv): --peer-certs certificates, `certbot certonly
   --standalone`, one after another (the way a cron job runs it);
4. lego (Debian package `lego`): --peer-certs certificates one after another, then the same number
   with eight lego processes at once (http-01 through `--http.webroot`, served by a small listener);

then the certctl and limit runs again on a second Pebble that refuses 30% of nonces
(PEBBLE_WFE_NONCEREJECT=30). Prints wall time, certificates per second and the ratios.

  python bench/acme_bench.py [--certs 200] [--concurrency 16] [--peer-certs 20] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from http.server import SimpleHTTPRequestHandler
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import minimal_acme  # noqa: E402
import requests  # noqa: E402

from tests.integration.servers import Pebble, ServerPool  # noqa: E402

OUT = ROOT / "bench" / "out"
CERTBOT_VENV = OUT / "certbot-venv"
LEGO_PROCESSES = 8


def certbot_binary() -> Path:
    """certbot in the benchmark's own virtualenv (created and filled with pip on first use)."""
    binary = CERTBOT_VENV / "bin" / "certbot"
    if not binary.exists():
        print(f"installing certbot into {CERTBOT_VENV} (pip) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(CERTBOT_VENV)], check=True)
        subprocess.run(
            [
                str(CERTBOT_VENV / "bin" / "pip"),
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "certbot",
            ],
            check=True,
        )
    return binary


def lego_binary() -> str:
    found = shutil.which("lego")
    if found is None:
        sys.exit(
            "lego is not installed: `make bench` installs it (Debian package lego), or: apt-get install lego"
        )
    return found


def certctl_binary() -> list[str]:
    found = Path(sys.executable).parent / "certctl"
    return [str(found)] if found.exists() else [sys.executable, "-m", "reconciler"]


def names(prefix: str, n: int) -> list[list[str]]:
    return [[f"{prefix}{i:03d}.example.com", f"www.{prefix}{i:03d}.example.com"] for i in range(n)]


def write_desired(root: Path, pebble: Pebble, port: int, domains: list[list[str]], concurrency: int) -> Path:
    desired = root / "desired"
    desired.mkdir(parents=True)
    docs = [
        f"""\
apiVersion: certctl/v1
kind: Settings
metadata: {{name: settings}}
spec:
  stateDir: ../state
  concurrency: {concurrency}
---
apiVersion: certctl/v1
kind: Issuer
metadata: {{name: pebble}}
spec:
  acme:
    directoryUrl: {pebble.directory_url}
    email: bench@example.com
    agreeToS: true
    caBundle: {pebble.ca_bundle}
    solvers:
      - http01: {{standalone: {{address: 127.0.0.1, port: {port}}}}}
---
apiVersion: certctl/v1
kind: Store
metadata: {{name: pem}}
spec:
  pemDirectory: {{path: ../pem}}
"""
    ]
    for i, pair in enumerate(domains):
        docs.append(
            f"apiVersion: certctl/v1\nkind: Certificate\nmetadata: {{name: site{i:03d}}}\nspec:\n"
            f"  issuer: pebble\n  domains: [{pair[0]}, {pair[1]}]\n  stores: [pem]\n"
        )
    (desired / "bench.yaml").write_text("---\n".join(docs))
    return desired


def run_certctl(
    root: Path, pebble: Pebble, port: int, domains: list[list[str]], concurrency: int
) -> tuple[float, list[float]]:
    """Wall time of one `certctl apply`, and the seconds of each of its issue actions."""
    n = len(domains)
    write_desired(root, pebble, port, domains, concurrency)
    seconds, result = apply(root)
    log = root / "certctl.log"
    issued = sum(1 for _ in (root / "pem").glob("site*/cert.pem"))
    if result.returncode != 0 or issued != n:
        sys.exit(
            f"certctl apply failed (exit {result.returncode}, {issued}/{n} issued):\n{result.stdout}\n"
            f"see {log}"
        )
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    orders = [e for e in events if e.get("event") == "acme.order.created"]
    assert len(orders) == n, f"{len(orders)} orders for {n} certificates"
    issues = [
        float(e["seconds"]) for e in events if e.get("event") == "action.applied" and e.get("kind") == "issue"
    ]
    return seconds, issues


def apply(root: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Wall time of `certctl apply` of ``root``'s desired state (its log in ``root``/certctl.log)."""
    env = {**os.environ, "CERTCTL_CACHE_DIR": str(root / "cache")}
    started = time.perf_counter()
    with (root / "certctl.log").open("w") as err:
        result = subprocess.run(
            [*certctl_binary(), "apply", "-d", str(root / "desired"), "--log-format", "json"],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
            check=False,
        )
    return time.perf_counter() - started, result


def run_certbot(root: Path, pebble: Pebble, port: int, domains: list[list[str]]) -> float:
    certbot = certbot_binary()
    env = {**os.environ, "REQUESTS_CA_BUNDLE": pebble.ca_bundle}
    dirs = [
        "--config-dir",
        str(root / "config"),
        "--work-dir",
        str(root / "work"),
        "--logs-dir",
        str(root / "logs"),
    ]
    started = time.perf_counter()
    for pair in domains:
        argv = [
            str(certbot),
            "certonly",
            "--standalone",
            "--http-01-port",
            str(port),
            "--http-01-address",
            "127.0.0.1",
            "--server",
            pebble.directory_url,
            *dirs,
            "--agree-tos",
            "-m",
            "bench@example.com",
            "--non-interactive",
            "-d",
            pair[0],
            "-d",
            pair[1],
        ]
        result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        if result.returncode != 0:
            sys.exit(f"certbot failed for {pair[0]}:\n{result.stdout}\n{result.stderr}")
    seconds = time.perf_counter() - started
    issued = sum(1 for _ in (root / "config" / "live").glob("*/cert.pem"))
    if issued != len(domains):
        sys.exit(f"certbot issued {issued}/{len(domains)} certificates")
    return seconds


class Webroot(minimal_acme.Listener):
    """Serves ``folder`` over HTTP on 127.0.0.1:``port`` (lego's --http.webroot writes the challenge files there)."""

    def __init__(self, folder: Path, port: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        super().__init__(partial(_QuietFiles, directory=str(folder)), port)


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def run_lego(root: Path, pebble: Pebble, port: int, domains: list[list[str]], processes: int) -> float:
    """Wall time of ``len(domains)`` `lego run`, ``processes`` at a time (each its own process, as a cron job runs it)."""
    lego = lego_binary()
    env = {**os.environ, "LEGO_CA_CERTIFICATES": pebble.ca_bundle}
    webroot = Webroot(root / "webroot", port)

    def one(pair: list[str]) -> None:
        argv = [
            lego,
            "--server",
            pebble.directory_url,
            "--accept-tos",
            "--email",
            "bench@example.com",
            "--path",
            str(root / "lego"),
            "--http",
            "--http.webroot",
            str(root / "webroot"),
            "--domains",
            pair[0],
            "--domains",
            pair[1],
            "run",
        ]
        result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"lego failed for {pair[0]}:\n{result.stdout}\n{result.stderr}")

    try:
        one(
            ["account-warmup.example.com", "www.account-warmup.example.com"]
        )  # the account, registered untimed
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=processes) as pool:
            list(pool.map(one, domains))
        seconds = time.perf_counter() - started
    finally:
        webroot.stop()
    issued = sum(1 for _ in (root / "lego" / "certificates").glob("*.crt")) - 1  # without the warm-up's
    issued -= sum(1 for _ in (root / "lego" / "certificates").glob("*.issuer.crt"))
    if issued != len(domains):
        sys.exit(f"lego issued {issued}/{len(domains)} certificates")
    return seconds


def rate(n: int, seconds: float) -> float:
    return n / seconds


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--certs", type=int, default=200, help="certificates for certctl and the limit (default 200)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=16, help="certctl's Settings.concurrency and the limit's threads"
    )
    parser.add_argument(
        "--peer-certs",
        type=int,
        default=20,
        help="certificates for certbot, lego, and certctl at concurrency 1",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (bench/out/acme-*)")
    args = parser.parse_args()
    n, c, peers = args.certs, args.concurrency, args.peer_certs

    OUT.mkdir(parents=True, exist_ok=True)
    certbot_binary()  # installed before anything is timed
    lego_binary()
    work = Path(tempfile.mkdtemp(prefix="acme-", dir=OUT))
    pool = ServerPool(work / "servers")
    rows: list[
        tuple[str, int, float, float | None]
    ] = []  # (label, certificates, wall seconds, median issue seconds)
    try:
        pebble = pool.pebble()  # PEBBLE_VA_NOSLEEP=1; DNS: pebble-challtestsrv, every name 127.0.0.1
        port = pool.http_port
        print(
            f"Pebble at {pebble.directory_url}; its VA connects to 127.0.0.1:{port} for http-01", flush=True
        )
        tried: dict[int, minimal_acme.Result] = {}
        for t in sorted({1, 2, 4, 8, c}):
            try:
                tried[t] = minimal_acme.run(
                    pebble.directory_url, pebble.ca_bundle, port, names(f"lim{t}x", n), t
                )
            except requests.RequestException as exc:  # polling without pause can swamp Pebble until it stalls
                print(
                    f"limit, {t} threads: failed ({exc.__class__.__name__}: {exc}); not counted", flush=True
                )
                continue
            print(f"limit, {t} threads: {n} certificates in {tried[t].seconds:.2f} s", flush=True)
        if not tried:
            sys.exit("the minimal client failed at every number of threads")
        best = min(tried, key=lambda t: tried[t].seconds)
        ours, issues = run_certctl(work / "certctl", pebble, port, names("cc", n), c)
        print(f"certctl: {n} certificates in {ours:.2f} s", flush=True)
        start, second = apply(work / "certctl")  # the same desired state again: nothing left to do
        if second.returncode != 0:
            sys.exit(f"the second certctl apply failed (exit {second.returncode}):\n{second.stdout}")
        print(f"certctl again, nothing to do: {start:.2f} s", flush=True)
        again = minimal_acme.run(pebble.directory_url, pebble.ca_bundle, port, names("limz", n), best)
        print(f"limit again, {best} threads: {n} certificates in {again.seconds:.2f} s", flush=True)
        limit = min(tried[best], again, key=lambda r: r.seconds)
        one_by_one, one_issues = run_certctl(work / "certctl-1", pebble, port, names("one", peers), 1)
        limit_one = minimal_acme.run(pebble.directory_url, pebble.ca_bundle, port, names("lim1-", peers), 1)
        certbot = run_certbot(work / "certbot", pebble, port, names("cb", peers))
        print(f"certbot: {peers} certificates in {certbot:.2f} s", flush=True)
        lego_seq = run_lego(work / "lego-1", pebble, port, names("lg", peers), 1)
        print(f"lego: {peers} certificates in {lego_seq:.2f} s", flush=True)
        lego_par = run_lego(work / "lego-8", pebble, port, names("lp", peers), LEGO_PROCESSES)
        print(f"lego x{LEGO_PROCESSES}: {peers} certificates in {lego_par:.2f} s", flush=True)

        flaky = pool.pebble(nonce_reject=30)
        flaky_limit = minimal_acme.run(flaky.directory_url, flaky.ca_bundle, port, names("fl", n), best)
        flaky_ours, flaky_issues = run_certctl(work / "certctl-flaky", flaky, port, names("fc", n), c)
    finally:
        pool.stop_all()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    rows = [
        (f"limit: minimal client, {best} threads, polling without pause", n, limit.seconds, limit.median),
        (f"certctl apply, concurrency {c}", n, ours, statistics.median(issues)),
        ("limit: minimal client, one at a time", peers, limit_one.seconds, limit_one.median),
        ("certctl apply, concurrency 1", peers, one_by_one, statistics.median(one_issues)),
        ("certbot certonly --standalone, one after another", peers, certbot, None),
        ("lego run, one after another", peers, lego_seq, None),
        (f"lego run, {LEGO_PROCESSES} processes at once", peers, lego_par, None),
        (f"limit, 30% of nonces refused, {best} threads", n, flaky_limit.seconds, flaky_limit.median),
        (
            f"certctl apply, 30% of nonces refused, concurrency {c}",
            n,
            flaky_ours,
            statistics.median(flaky_issues),
        ),
    ]
    print()
    print("ACME issuance, 2 domains per certificate, local Pebble without validation sleeps, http-01")
    print(f"{'client':<58} {'certs':>6} {'wall s':>8} {'certs/s':>8} {'median s':>9}")
    for label, count, seconds, median in rows:
        med = f"{median:>9.3f}" if median is not None else f"{'':>9}"
        print(f"{label:<58} {count:>6} {seconds:>8.2f} {rate(count, seconds):>8.2f} {med}")
    ours_rate = rate(n, ours)
    print()
    print(f"certctl at concurrency {c} / the limit: {ours_rate / rate(n, limit.seconds):.2f} (goal: >= 0.90)")
    print(
        f"  (certctl's start, loading, observing and planning, timed by an apply with nothing to do: {start:.2f} s; "
        f"without it: {rate(n, ours - start) / rate(n, limit.seconds):.2f})"
    )
    print(
        f"certctl / limit with 30% of nonces refused: {rate(n, flaky_ours) / rate(n, flaky_limit.seconds):.2f}"
    )
    print(
        f"certctl's median issue action, one at a time: {statistics.median(one_issues):.3f} s (goal: <= 0.15 s)"
    )
    print(
        f"certctl / certbot: {ours_rate / rate(peers, certbot):.1f}x; certctl / lego: {ours_rate / rate(peers, lego_seq):.1f}x; "
        f"certctl / {LEGO_PROCESSES} lego processes: {ours_rate / rate(peers, lego_par):.1f}x"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

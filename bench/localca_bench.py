"""First apply on the built-in local CA: N certificates issued and installed into a PEM store (run by
`make bench`; not a test).

Writes N Certificate specs (two domains each, ECDSA P-256, one `pemDirectory` store), then times one
`certctl apply` as a process from an empty state dir and store: every certificate is issued (key made,
signed, kept in the vault) and installed. Prints wall time and certificates per second.

  python bench/localca_bench.py [N ...] [--concurrency 8] [--keep]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
PER_FILE = 10


def certctl() -> list[str]:
    found = Path(sys.executable).parent / "certctl"
    return [str(found)] if found.exists() else [sys.executable, "-m", "reconciler"]


def write_desired(root: Path, n: int, concurrency: int) -> Path:
    desired = root / "desired"
    desired.mkdir(parents=True)
    (desired / "base.yaml").write_text(
        f"apiVersion: certctl/v1\nkind: Settings\nmetadata: {{name: s}}\nspec: {{stateDir: ../state, concurrency: {concurrency}}}\n"
        "---\napiVersion: certctl/v1\nkind: Issuer\nmetadata: {name: local}\nspec:\n  localCA: {validity: 90d}\n"
        "---\napiVersion: certctl/v1\nkind: Store\nmetadata: {name: pem}\nspec:\n  pemDirectory: {path: ../pem}\n"
    )
    docs: list[str] = []
    for i in range(n):
        docs.append(
            f"apiVersion: certctl/v1\nkind: Certificate\nmetadata: {{name: cert-{i:05d}}}\nspec:\n"
            f"  issuer: local\n  domains: [www.site{i}.example.com, site{i}.example.com]\n  stores: [pem]\n"
        )
        if len(docs) == PER_FILE or i == n - 1:
            (desired / f"certs-{i // PER_FILE:05d}.yaml").write_text("---\n".join(docs))
            docs = []
    return desired


def first_apply(n: int, concurrency: int, keep: bool) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of the first `certctl apply` of ``n`` certificates."""
    work = Path(tempfile.mkdtemp(prefix=f"localca-{n}-", dir=OUT))
    try:
        desired = write_desired(work, n, concurrency)
        env = {**os.environ, "CERTCTL_CACHE_DIR": str(work / "cache")}
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        started = time.perf_counter()
        result = subprocess.run(
            [*certctl(), "apply", "-d", str(desired), "--log-format", "json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
            check=False,
        )
        seconds = time.perf_counter() - started
        rss = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
        installed = sum(1 for _ in (work / "pem").glob("cert-*/cert.pem"))
        if result.returncode != 0 or installed != n:
            sys.exit(
                f"certctl apply failed (exit {result.returncode}, {installed}/{n} installed):\n{result.stdout[-2000:]}"
            )
        return seconds, rss
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sizes", nargs="*", type=int, default=[1000, 10000])
    parser.add_argument(
        "--concurrency", type=int, default=8, help="Settings.concurrency (default 8, certctl's default)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folders (bench/out/localca-*)")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"{'N':>7} {'first apply s':>14} {'certs/s':>9} {'peak RSS':>9}")
    for n in args.sizes:
        seconds, rss = first_apply(n, args.concurrency, args.keep)
        print(f"{n:>7} {seconds:>14.2f} {n / seconds:>9.1f} {rss:>6.0f} MB", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

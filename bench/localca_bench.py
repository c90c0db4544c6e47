"""First apply on the built-in local CA: N certificates issued and installed into a PEM store (run by
`make bench`; not a test).

Writes N Certificate specs (two domains each, ECDSA P-256, one `pemDirectory` store), then times one
`certctl apply` as a process from an empty state dir and store: every certificate is issued (key made,
signed, kept in the vault) and installed. Prints wall time and certificates per second, beside the
floor (`bench/localca_floor.py`): the same files written by a script that does nothing else, with
durability in batches of `--concurrency` certificates, in the same order certctl keeps per certificate.

With --fresh-fs (root only), each size runs on an ext4 file system made for it (a loop-mounted image
under bench/out), as on a new server: ext4 avoids reusing inodes deleted in the last minutes, so a
first apply right after a run that deleted a few hundred thousand files (the previous size, the test
suite) spends most of its time in the kernel's inode allocator, which says nothing about certctl.

  python bench/localca_bench.py [N ...] [--concurrency 8] [--fresh-fs] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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


@contextlib.contextmanager
def fresh_filesystem(n: int) -> Iterator[Path]:
    """A folder on an ext4 file system made for this run (a loop-mounted image, removed afterwards)."""
    image, mount = OUT / f"localca-{n}.img", OUT / f"localca-{n}-fs"
    mount.mkdir(parents=True, exist_ok=True)
    with image.open("wb") as fh:
        fh.truncate(max(1 << 30, n * 256 << 10))  # sparse: ~256 KiB per certificate is plenty
    subprocess.run(["mkfs.ext4", "-q", "-F", "-i", "4096", str(image)], check=True)  # an inode per 4 KiB
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)
        image.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            mount.rmdir()


def floor(n: int, batch: int, fresh: bool) -> float:
    """Seconds the floor takes for ``n`` certificates (on a file system of its own with ``fresh``)."""
    import localca_floor

    if fresh:
        with fresh_filesystem(n) as mount:
            return localca_floor.run(n, mount / "floor", batch)
    work = Path(tempfile.mkdtemp(prefix=f"localca-floor-{n}-", dir=OUT))
    try:
        return localca_floor.run(n, work / "floor", batch)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def first_apply(n: int, concurrency: int, keep: bool, fresh: bool) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of the first `certctl apply` of ``n`` certificates."""
    if fresh:
        with fresh_filesystem(n) as mount:
            return _first_apply(n, concurrency, keep, mount)
    return _first_apply(n, concurrency, keep, OUT)


def _first_apply(n: int, concurrency: int, keep: bool, where: Path) -> tuple[float, float]:
    work = Path(tempfile.mkdtemp(prefix=f"localca-{n}-", dir=where))
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
    parser.add_argument(
        "--fresh-fs", action="store_true", help="run each size on an ext4 file system made for it (root only)"
    )
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    fresh = args.fresh_fs
    if fresh and (os.geteuid() != 0 or shutil.which("mkfs.ext4") is None):
        print("--fresh-fs needs root and mkfs.ext4: running in bench/out instead", flush=True)
        fresh = False
    where = "a fresh ext4 file system per size" if fresh else str(OUT)
    print(f"first apply on the local CA, concurrency {args.concurrency}, in {where}")
    print(
        f"{'N':>7} {'first apply s':>14} {'certs/s':>9} {'peak RSS':>9} {'floor s':>8} {'floor/s':>8} {'of floor':>9}"
    )
    for n in args.sizes:
        seconds, rss = first_apply(n, args.concurrency, args.keep and not fresh, fresh)
        least = floor(n, args.concurrency, fresh)
        print(
            f"{n:>7} {seconds:>14.2f} {n / seconds:>9.1f} {rss:>6.0f} MB {least:>8.2f} {n / least:>8.0f}"
            f" {least / seconds:>9.2f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

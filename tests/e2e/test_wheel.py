"""certctl installs like the tools it replaces: the wheel built from the checkout, installed into a fresh
virtual environment outside the checkout, has everything it needs at run time (schemas, PowerShell
scripts, the `init` starter) and runs init, validate, plan and apply there.

The build and the install reach the package index for build tools and dependencies, as a release does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from reconciler import __version__

ROOT = Path(__file__).resolve().parents[2]


def _run(*argv: str | Path, cwd: Path, env: dict[str, str] | None = None, timeout: float = 900) -> str:
    result = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, (
        f"{argv} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result.stdout


def test_the_wheel_installs_and_runs_outside_the_checkout(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info beside the sources
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            "build",
            "dist",
            "*.egg-info",
            "__pycache__",
            ".*_cache",
            ".hypothesis",
            "run",
            ".certctl-state",
            "bench",
        ),
    )
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", dist, source, cwd=tmp_path)
    wheel = dist / f"certctl-{__version__}-py3-none-any.whl"
    sdist = dist / f"certctl-{__version__}.tar.gz"
    assert wheel.is_file() and sdist.is_file(), sorted(p.name for p in dist.iterdir())
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "reconciler/adapters/iis/apply.ps1",
        "reconciler/adapters/iis/read.ps1",
        "reconciler/templates/init/certificate.yaml",
        "reconciler/py.typed",
    ):
        assert needed in names, needed
    assert not any(n.startswith("tests/") for n in names)
    with tarfile.open(sdist) as archive:
        members = {m.split("/", 1)[1] for m in archive.getnames() if "/" in m}
    assert {"schemas/certctl.json", "reconciler/templates/init/settings.yaml", "README.md"} <= members

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    _run(
        venv / "bin" / "python",
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        wheel,
        cwd=tmp_path,
    )
    certctl = venv / "bin" / "certctl"
    work = tmp_path / "site"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["CERTCTL_CACHE_DIR"] = str(tmp_path / "cache")
    where = _run(
        venv / "bin" / "python", "-c", "import reconciler; print(reconciler.__file__)", cwd=work, env=env
    )
    assert Path(where.strip()).is_relative_to(venv), "the installed package must be the one running"
    assert _run(certctl, "--version", cwd=work, env=env).strip() == f"certctl {__version__}"
    _run(certctl, "init", "desired-state", cwd=work, env=env)
    assert "Valid: 1 certificate(s)" in _run(certctl, "validate", cwd=work, env=env)
    plan = subprocess.run(
        [certctl, "plan", "--detailed-exitcode"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert plan.returncode == 2 and "1 to issue" in plan.stdout, plan.stdout + plan.stderr
    assert "Apply complete: 2 done, 0 failed, 0 skipped." in _run(certctl, "apply", cwd=work, env=env)
    assert (work / "certs" / "www-example-com" / "fullchain.pem").is_file()
    assert "No changes. Everything is up to date." in _run(
        certctl, "plan", "--detailed-exitcode", cwd=work, env=env
    )

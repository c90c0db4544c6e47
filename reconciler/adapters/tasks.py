"""Deployment tasks: files, pfx, script, ccs. Each can say what its output holds now, and redo it."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.core.model import TaskState
from reconciler.core.spec import CertificateSpec, Command, Task
from reconciler.ports import Material
from reconciler.support import procs
from reconciler.support.fs import UnsafePath, atomic_write, discard, safe_folder, switch_links, write_folder
from reconciler.support.lazy import LazyModule
from reconciler.support.logging import get_logger
from reconciler.support.secrets import SecretError, resolve

log = get_logger()

if TYPE_CHECKING:
    from reconciler.support import pki
else:  # cryptography takes 70 ms to import; a plan of unchanged certificates never reads one
    pki = LazyModule("reconciler.support.pki")


class TaskError(Exception):
    pass


def ccs_file_name(domain: str) -> str:
    """IIS Centralized Certificate Store naming: <host>.pfx, and _.example.com.pfx for *.example.com."""
    return ("_" + domain[1:] if domain.startswith("*.") else domain) + ".pfx"


def observe(
    certificate: str, index: int, task: Task, spec: CertificateSpec, deployments: dict[str, str]
) -> TaskState:
    try:
        thumbprint = _observe(certificate, index, task, spec, deployments)
    except TaskError as exc:
        return TaskState(certificate, index, None, str(exc))
    reload = (task.files.reload if task.files else None) or (task.pfx.reload if task.pfx else None)
    if reload and thumbprint and deployments.get(f"{certificate}/{index}") != thumbprint:
        # The files are there, but their reload never succeeded: the server may still serve the old ones.
        return TaskState(
            certificate, index, None, f"the reload after writing {thumbprint[:8]} has not succeeded yet"
        )
    return TaskState(certificate, index, thumbprint)


def _observe(
    certificate: str, index: int, task: Task, spec: CertificateSpec, deployments: dict[str, str]
) -> str | None:
    if task.files is not None:
        folder = Path(task.files.path)
        thumbs = set()
        for name in ("cert.pem", "fullchain.pem"):
            thumbs.add(_pem_thumbprint(folder / name))
        for name in ("chain.pem", "privkey.pem"):
            if not (folder / name).exists():
                raise TaskError(f"{folder / name} is missing")
        if len(thumbs) != 1:
            raise TaskError(f"cert.pem and fullchain.pem in {folder} hold different certificates")
        thumb = thumbs.pop()
        try:
            cert = (folder / "cert.pem").read_bytes()
            if not pki.key_matches(cert, (folder / "privkey.pem").read_bytes()):
                raise TaskError(f"privkey.pem in {folder} does not match cert.pem")
            chain_ok = pki.chain_as_written(
                cert, (folder / "chain.pem").read_bytes(), (folder / "fullchain.pem").read_bytes()
            )
        except (OSError, ValueError) as exc:
            raise TaskError(f"cannot check privkey.pem and chain.pem in {folder}: {exc}") from None
        if not chain_ok:
            raise TaskError(
                f"fullchain.pem in {folder} is not cert.pem followed by chain.pem, or chain.pem holds "
                "something other than certificates"
            )
        return thumb
    if task.pfx is not None:
        return _pfx_thumbprint(Path(task.pfx.path), task.pfx.password)
    if task.script is not None:
        return deployments.get(f"{certificate}/{index}")
    if task.ccs is not None:
        thumbs = {
            _pfx_thumbprint(Path(task.ccs.path) / ccs_file_name(d), task.ccs.password) for d in spec.domains
        }
        return thumbs.pop() if len(thumbs) == 1 else None
    raise TaskError("unknown task")


def _pem_thumbprint(path: Path) -> str:
    try:
        return pki.info_from_pem(path.read_bytes()).thumbprint
    except FileNotFoundError:
        raise TaskError(f"{path} is missing") from None
    except OSError as exc:
        raise TaskError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise TaskError(f"{path} is not a valid PEM certificate ({exc})") from None


def _pfx_thumbprint(path: Path, password_ref: object) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TaskError(f"{path} is missing") from None
    except OSError as exc:
        raise TaskError(f"cannot read {path}: {exc.strerror}") from None
    try:
        password = resolve(password_ref) if password_ref is not None else None  # type: ignore[arg-type]
        cert_pem, _, _, _ = pki.from_pfx(data, password or None)
    except SecretError as exc:
        raise TaskError(f"cannot open {path}: {exc}") from None
    except ValueError as exc:
        raise TaskError(f"{path} cannot be read as PKCS#12 with its password ({exc})") from None
    return pki.info_from_pem(cert_pem).thumbprint


def deploy(
    certificate: str,
    index: int,
    task: Task,
    spec: CertificateSpec,
    material: Material,
    vault_folder: Path,
    hidden_env: frozenset[str] = frozenset(),
) -> None:
    """Write the task's output for ``material`` and run its reload/script; raise TaskError on failure.

    ``hidden_env``: environment variables that hold secrets (TSIG, EAB, PFX passwords, …); commands never see them.
    """
    try:
        _check_folders(task)
    except UnsafePath as exc:
        raise TaskError(str(exc)) from None
    if task.files is not None:
        write_files(Path(task.files.path), material, int(task.files.keyMode, 8))
        if task.files.reload:
            _run(
                task.files.reload,
                _env(certificate, material, vault_folder, hidden_env),
                task.files.reloadTimeout.total_seconds(),
                "reload",
            )
    elif task.pfx is not None:
        password = _secret(task.pfx.password)
        data = pki.to_pfx(
            material.cert_pem,
            material.chain_pem,
            material.key_pem,
            password,
            f"certctl:{certificate}",
            legacy=task.pfx.encryption == "3des",
        )
        atomic_write(Path(task.pfx.path), data, 0o600)
        if task.pfx.reload:
            _run(
                task.pfx.reload,
                _env(certificate, material, vault_folder, hidden_env),
                task.pfx.reloadTimeout.total_seconds(),
                "reload",
            )
    elif task.script is not None:
        _run(
            task.script.command,
            _env(certificate, material, vault_folder, hidden_env),
            task.script.timeout.total_seconds(),
            "script",
        )
    elif task.ccs is not None:
        ccs_password = _secret(task.ccs.password) if task.ccs.password else None
        data = pki.to_pfx(
            material.cert_pem,
            material.chain_pem,
            material.key_pem,
            ccs_password,
            f"certctl:{certificate}",
            legacy=True,
        )  # IIS of every version reads the CCS share
        for domain in spec.domains:
            atomic_write(Path(task.ccs.path) / ccs_file_name(domain), data, 0o600)


def _check_folders(task: Task) -> None:
    """The folder a task writes a key into must be safe to write (fsutil.write_path_problem); made if missing."""
    if task.files is not None:
        safe_folder(Path(task.files.path), int(task.files.folderMode, 8), "files task folder")
    elif task.pfx is not None:
        safe_folder(Path(task.pfx.path).parent, 0o700, "pfx task folder")
    elif task.ccs is not None:
        safe_folder(Path(task.ccs.path), 0o700, "ccs task folder")


FILES = ("cert.pem", "chain.pem", "fullchain.pem", "privkey.pem")
VERSIONS, CURRENT = ".certctl-versions", ".certctl-current"


def write_files(folder: Path, material: Material, key_mode: int) -> None:
    """The ``files`` task's output, switched in one step (a web server never sees a new key beside an old
    certificate): ``.certctl-versions/<THUMBPRINT>/`` holds the four files, ``.certctl-current`` links to
    it, and ``cert.pem chain.pem fullchain.pem privkey.pem`` are links to ``.certctl-current/<name>``.
    The previous version is kept (for a rollback by hand); older ones are removed."""
    versions = folder / VERSIONS
    thumbprint = material.info.thumbprint
    try:
        folder.mkdir(parents=True, exist_ok=True)
        before = os.path.basename(os.readlink(folder / CURRENT)) if (folder / CURRENT).is_symlink() else None
    except OSError as exc:
        raise TaskError(f"cannot write {folder}: {exc.strerror}") from None
    try:
        mode = os.stat(folder).st_mode & 0o777 | 0o700
        write_folder(
            versions / thumbprint,
            {
                "privkey.pem": (material.key_pem, key_mode),
                "cert.pem": (material.cert_pem, 0o644),
                "chain.pem": (material.chain_pem, 0o644),
                "fullchain.pem": (material.fullchain_pem, 0o644),
            },
            staging=folder,
            mode=mode,
        )
        switch_links(folder, CURRENT, f"{VERSIONS}/{thumbprint}", FILES)
    except OSError as exc:
        raise TaskError(str(exc)) from None
    for old in os.listdir(versions):
        if old not in (thumbprint, before) and not old.startswith("."):
            try:
                discard(versions / old)
            except OSError as exc:
                log.warning("task.files.prune_failed", path=str(versions / old), error=str(exc))


def _secret(ref: object) -> bytes:
    try:
        return resolve(ref)  # type: ignore[arg-type]
    except SecretError as exc:
        raise TaskError(str(exc)) from None


def _env(certificate: str, material: Material, vault_folder: Path, hidden: frozenset[str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in hidden}
    env.update(
        {
            "CERTCTL_CERTIFICATE": certificate,
            "CERTCTL_THUMBPRINT": material.info.thumbprint,
            "CERTCTL_DOMAINS": " ".join(material.info.sans),
            "CERTCTL_NOT_AFTER": material.info.not_after.isoformat(),
            "CERTCTL_CERT_FILE": str(vault_folder / "cert.pem"),
            "CERTCTL_CHAIN_FILE": str(vault_folder / "chain.pem"),
            "CERTCTL_FULLCHAIN_FILE": str(vault_folder / "fullchain.pem"),
            "CERTCTL_KEY_FILE": str(vault_folder / "key.pem"),
        }
    )
    return env


def _run(command: Command, env: dict[str, str], timeout: float, what: str) -> None:
    argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
    shown = command if isinstance(command, str) else shlex.join(command)
    try:
        procs.run(argv, env, timeout, what, shown)
    except procs.CommandError as exc:
        raise TaskError(str(exc)) from None
    log.info("task.command.ok", what=what, command=shown)

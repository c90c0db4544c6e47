"""Revocation: ``certctl revoke`` (through the Issuer that issued the current version), and the daemon's
daily look at each current certificate's status in the CRL its issuer publishes.

Either way the version is marked revoked in the vault index; the planner then renews it at once (reason
``Revoked``), with a new key when the reason is keyCompromise, whatever ``key.reuse`` says.
"""

from __future__ import annotations

from datetime import datetime

from reconciler.app.errors import UsageError
from reconciler.app.world import World
from reconciler.core.model import IssuedVersion, Revocation
from reconciler.core.planner import current_version
from reconciler.core.policies import issuer_of
from reconciler.ports import REVOCATION_REASONS, Material, Revoker
from reconciler.support.logging import get_logger

log = get_logger()


def _issuer(world: World, name: str, current: IssuedVersion) -> tuple[str, Revoker]:
    """The Issuer (name and backend) that issued ``current``: one of the certificate's, else any Issuer of
    the desired state with the same identity."""
    desired = world.desired
    specs = {n: i.spec for n, i in desired.issuers.items()}
    listed = desired.certificates[name].spec.issuers
    found = issuer_of(current, specs, listed) or issuer_of(current, specs, sorted(desired.issuers))
    backend = world.issuers.get(found) if found is not None else None
    if found is None or not isinstance(backend, Revoker):
        raise UsageError(
            f"certificate {name}: its current version {current.info.thumbprint[:8]} was issued by "
            f"{current.issuer_id}, which no Issuer of the desired state is any more; it cannot be revoked"
        )
    return found, backend


def current_or_fail(world: World, name: str) -> IssuedVersion:
    if name not in world.desired.certificates:
        known = ", ".join(sorted(world.desired.certificates)) or "none"
        raise UsageError(f"no Certificate named {name!r} (known: {known})")
    current = current_version(world.state.issued_for(name))
    if current is None:
        raise UsageError(f"certificate {name} has not been issued yet; there is nothing to revoke")
    return current


def revoke_certificate(world: World, name: str, reason: str, now: datetime) -> tuple[IssuedVersion, str]:
    """Revoke the current version of ``name`` through its Issuer and mark it revoked. Returns the version and
    the Issuer's name. Raises UsageError (nothing to revoke, unknown reason) or RevokeError (the CA refused)."""
    if reason not in REVOCATION_REASONS:
        raise UsageError(f"unknown revocation reason {reason!r} (known: {', '.join(REVOCATION_REASONS)})")
    current = current_or_fail(world, name)
    issuer_name, backend = _issuer(world, name, current)
    material: Material = world.state.material(name, current.info.thumbprint)
    backend.revoke(material, reason)
    world.state.mark_revoked(name, current.info.thumbprint, Revocation(reason, now, "certctl revoke"))
    log.info(
        "certificate.revoked",
        certificate=name,
        thumbprint=current.info.thumbprint,
        issuer=issuer_name,
        reason=reason,
    )
    return current, issuer_name


def check_revocations(world: World, now: datetime) -> int:
    """Publish ageing local CA CRLs, then look up every current certificate (not known revoked) in the CRL its
    issuer publishes; mark the ones listed. Never raises; returns how many were found revoked."""
    for name, backend in sorted(world.issuers.items()):
        refresh = getattr(backend, "refresh_crl", None)
        if refresh is None:
            continue
        try:
            if refresh(now):
                log.info("crl.published", issuer=name)
        except Exception as exc:  # noqa: BLE001 - a CRL that cannot be written is reported, never fatal
            log.error("crl.publish_failed", issuer=name, error=str(exc) or repr(exc))
    found = 0
    for name in sorted(world.desired.certificates):
        current = current_version(world.state.issued_for(name))
        if current is None or current.revocation is not None or current.lost:
            continue
        try:
            _, revoker = _issuer(world, name, current)
            status = revoker.revocation_status(world.state.material(name, current.info.thumbprint))
        except Exception as exc:  # noqa: BLE001 - a CRL that cannot be read is reported; the next pass asks again
            log.warning("revocation.check_failed", certificate=name, error=str(exc) or repr(exc))
            continue
        if status is None:
            continue
        world.state.mark_revoked(
            name, current.info.thumbprint, Revocation(status.reason, status.at, status.source)
        )
        log.warning(
            "certificate.found_revoked",
            certificate=name,
            thumbprint=current.info.thumbprint,
            reason=status.reason,
            source=status.source,
            note="it is renewed in this pass",
        )
        found += 1
    return found

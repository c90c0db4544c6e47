"""Conventions of the Windows certificate store shared by both backends: the friendly-name marker
certctl writes on what it installs, and the error a store operation raises."""

from __future__ import annotations

import re

from reconciler.core.model import MANAGED_PREFIX, CertInfo

_MANAGED_RE = re.compile(r"^" + re.escape(MANAGED_PREFIX) + r"([a-z0-9](?:[-a-z0-9.]*[a-z0-9])?)(?:\s|$)")


class StoreError(RuntimeError):
    """A certificate store operation failed; the store is as it was."""


def friendly_name(certificate: str, info: CertInfo) -> str:
    """The marker certctl writes on what it installs: ``certctl:<name> <not-before>–<not-after>``."""
    return f"{MANAGED_PREFIX}{certificate} {info.not_before:%Y-%m-%d}–{info.not_after:%Y-%m-%d}"


def managed_by(friendly: str) -> str | None:
    """The Certificate name in a ``certctl:<name> …`` friendly name, else None."""
    m = _MANAGED_RE.match(friendly or "")
    return m.group(1) if m else None

"""ACME (RFC 8555) issuance with Renewal Information (RFC 9773).

The ACME client (acme, requests, josepy: 0.15 s to import) is loaded when an issuer is built, not when a
module of this package that does without it is imported (``record``: an apply that orders nothing).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reconciler.adapters.issuers.acme.ari import cert_id
    from reconciler.adapters.issuers.acme.issuer import AcmeIssuer
    from reconciler.adapters.issuers.acme.retry import RetryPolicy

__all__ = ["AcmeIssuer", "RetryPolicy", "cert_id"]


def __getattr__(name: str) -> Any:
    if name == "AcmeIssuer":
        from reconciler.adapters.issuers.acme.issuer import AcmeIssuer

        return AcmeIssuer
    if name == "RetryPolicy":
        from reconciler.adapters.issuers.acme.retry import RetryPolicy

        return RetryPolicy
    if name == "cert_id":
        from reconciler.adapters.issuers.acme.ari import cert_id

        return cert_id
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

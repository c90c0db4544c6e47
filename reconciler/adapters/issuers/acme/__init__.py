"""ACME (RFC 8555) issuance with Renewal Information (RFC 9773)."""

from reconciler.adapters.issuers.acme.ari import cert_id
from reconciler.adapters.issuers.acme.issuer import AcmeIssuer
from reconciler.adapters.issuers.acme.retry import RetryPolicy

__all__ = ["AcmeIssuer", "RetryPolicy", "cert_id"]

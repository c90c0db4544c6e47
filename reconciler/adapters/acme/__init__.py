"""ACME (RFC 8555) issuance with Renewal Information (RFC 9773), and the challenge solvers it uses."""

from reconciler.adapters.acme.ari import cert_id
from reconciler.adapters.acme.issuer import AcmeIssuer
from reconciler.adapters.acme.retry import RetryPolicy
from reconciler.adapters.acme.solvers import SolverError, build_solver

__all__ = ["AcmeIssuer", "RetryPolicy", "SolverError", "build_solver", "cert_id"]

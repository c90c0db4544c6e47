"""certctl: a declarative, GitOps-style TLS certificate reconciler."""

__version__ = "0.1.0"

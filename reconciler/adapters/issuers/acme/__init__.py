"""ACME (RFC 8555) issuance with Renewal Information (RFC 9773).

Nothing is imported here: the ACME client (acme, requests, josepy: 0.15 s to import) loads with the
modules that use it (``issuer``, ``account``, ...), not with one that does without it (``record``: an
apply that orders nothing reads the account record only).
"""

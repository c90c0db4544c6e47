"""Before any action: every secret the plan's actions need can be read (``core.secret_needs``).

A missing environment variable or an unreadable secret file becomes a diagnostic at the reference's
file:line:col, so `certctl plan` reports it and `certctl apply` refuses to start rather than failing halfway.
The secret's value is read only to know that it can be, and is never shown.
"""

from __future__ import annotations

from reconciler.app.loader import locate
from reconciler.core.diagnostics import Diagnostic, Problem
from reconciler.core.model import DesiredState
from reconciler.core.plan import Plan
from reconciler.core.secret_needs import secret_needs
from reconciler.support.secrets import SecretError, resolve


def unreadable_secrets(
    desired: DesiredState, plan: Plan, environ: dict[str, str] | None = None
) -> list[Diagnostic]:
    problems: list[Problem] = []
    for need in secret_needs(desired, plan):
        try:
            resolve(need.ref, environ)
        except SecretError as exc:
            problems.append(Problem(need.source, need.path, f"{exc}; {need.needed_by} needs it"))
    return locate(problems)

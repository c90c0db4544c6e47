"""Errors the use cases raise for the entry points to show."""


class UsageError(Exception):
    """The command cannot be carried out as asked; the message says why and what to do (exit 1)."""

"""Resolving secret references ({fromEnv: NAME} / {fromFile: PATH}) at the moment of use."""

from __future__ import annotations

import os
from pathlib import Path

from reconciler.core.spec import SecretRef


class SecretError(Exception):
    pass


def resolve(ref: SecretRef, environ: dict[str, str] | None = None) -> bytes:
    """The secret's bytes (a trailing newline of a secret file is dropped); SecretError names what is missing."""
    env = os.environ if environ is None else environ
    if ref.fromEnv is not None:
        value = env.get(ref.fromEnv)
        if value is None:
            raise SecretError(f"the environment variable {ref.fromEnv} is not set")
        return value.encode()
    assert ref.fromFile is not None
    try:
        data = Path(ref.fromFile).read_bytes()
    except OSError as exc:
        raise SecretError(f"cannot read the secret file {ref.fromFile}: {exc.strerror}") from None
    return data.rstrip(b"\r\n")

"""Resolving secret references ({fromEnv: NAME} / {fromFile: PATH}) at the moment of use."""

from __future__ import annotations

import os
from dataclasses import fields, is_dataclass
from typing import Any

from pydantic import BaseModel

from reconciler.core.spec import SecretRef
from reconciler.support.fs import NotRegular, read_regular

MAX_SECRET_BYTES = 1 << 20


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
        data = read_regular(ref.fromFile, MAX_SECRET_BYTES)  # a FIFO or /dev/zero named there must not hang
    except NotRegular as exc:
        raise SecretError(
            f"cannot read the secret file {ref.fromFile}: it {'is ' if str(exc).startswith('not') else ''}"
            f"{exc}"
        ) from None
    except OSError as exc:
        raise SecretError(f"cannot read the secret file {ref.fromFile}: {exc.strerror}") from None
    return data.rstrip(b"\r\n")


def env_names(value: Any) -> frozenset[str]:
    """Every environment variable a model (or a DesiredState's models) names as a secret ({fromEnv: NAME})."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, SecretRef):
            if node.fromEnv:
                found.add(node.fromEnv)
        elif isinstance(node, BaseModel):
            for name in type(node).model_fields:
                walk(getattr(node, name))
        elif isinstance(node, dict):
            for item in node.values():
                walk(item)
        elif isinstance(node, list | tuple):
            for item in node:
                walk(item)
        elif is_dataclass(node) and not isinstance(node, type):  # DesiredState, Named[...]
            for f in fields(node):
                walk(getattr(node, f.name))

    walk(value)
    return frozenset(found)

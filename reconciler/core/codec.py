"""Plain JSON <-> core values (ObservedState for golden scenarios and offline planning)."""

from __future__ import annotations

import types
import typing
from dataclasses import MISSING, fields, is_dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from reconciler.core.model import ObservedState, to_plain

__all__ = ["decode", "observed_from_json", "observed_to_json"]


def observed_to_json(observed: ObservedState) -> dict[str, Any]:
    plain: dict[str, Any] = to_plain(observed)
    return plain


def observed_from_json(data: dict[str, Any]) -> ObservedState:
    value: ObservedState = decode(ObservedState, data)
    return value


def decode(tp: Any, data: Any) -> Any:  # noqa: PLR0911 - one branch per kind of type
    origin = typing.get_origin(tp)
    if tp is Any:
        return data
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if data is None:
            return None
        return decode(args[0], data)
    if is_dataclass(tp) and isinstance(tp, type):
        hints = typing.get_type_hints(tp)
        kwargs = {}
        for f in fields(tp):
            if f.name in data:
                kwargs[f.name] = decode(hints[f.name], data[f.name])
            elif f.default is MISSING and f.default_factory is MISSING:
                raise ValueError(f"{tp.__name__}.{f.name} is required")
        return tp(**kwargs)
    if origin is tuple:
        parts = typing.get_args(tp)
        if len(parts) == 2 and parts[1] is Ellipsis:
            return tuple(decode(parts[0], v) for v in data)
        return tuple(decode(a, v) for a, v in zip(parts, data, strict=True))
    if origin is dict:
        key_tp, value_tp = typing.get_args(tp)
        out = {}
        for k, v in data.items():
            key = tuple(_key_part(p) for p in k.split("|")) if typing.get_origin(key_tp) is tuple else k
            out[key] = decode(value_tp, v)
        return out
    if origin is frozenset:
        return frozenset(decode(typing.get_args(tp)[0], v) for v in data)
    if tp is datetime:
        value = datetime.fromisoformat(str(data).replace("Z", "+00:00"))
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(tp, type) and issubclass(tp, Enum):
        return tp(data)
    return data


def _key_part(part: str) -> str | int:
    return int(part) if part.isdigit() else part

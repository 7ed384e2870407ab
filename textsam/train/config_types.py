"""Type checks of config values, with messages that say what to write (shared by the config tables and the
file reader)."""

from __future__ import annotations

import json
import types
import typing
from dataclasses import MISSING, fields
from typing import Any

from ..errors import InputError

_KINDS = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
_PLURAL = {bool: "true/false values", int: "whole numbers", float: "numbers", str: "strings"}


def toml_text(value: Any) -> str:
    """``value`` as it would be written in a config file (for messages)."""
    try:
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    except (TypeError, ValueError):
        return repr(value)


def _type_problem(value: Any, hint: Any) -> str | None:
    """What ``value`` should have been for the type ``hint`` (None: it fits)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        wanted = [_type_problem(value, a) for a in args if a is not type(None)]
        return None if None in wanted else wanted[0]
    if origin is tuple:
        items = [args[0]] * len(value) if args[-1] is Ellipsis and isinstance(value, (list, tuple)) else list(args)
        kind = f"a list of {'' if args[-1] is Ellipsis else f'{len(args)} '}{_PLURAL[args[0]]}"
        if not isinstance(value, (list, tuple)) or len(value) != len(items):
            return kind
        return kind if any(_type_problem(v, t) for v, t in zip(value, items)) else None
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif hint is str:
        ok = isinstance(value, str)
    else:  # a table (DataConfig, ...)
        return None if isinstance(value, hint) else "a table"
    return None if ok else _KINDS[hint]


def check_types(obj: Any, prefix: str) -> None:
    """Raise an InputError for the first field of dataclass ``obj`` whose value has the wrong type; turn
    lists into tuples and whole numbers into floats where the field says so."""
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        value, hint = getattr(obj, f.name), hints[f.name]
        wanted = _type_problem(value, hint)
        if wanted is not None:
            example = "" if f.default is MISSING or f.default is None else f" (e.g. {f.name} = {toml_text(f.default)})"
            raise InputError(f"{prefix}{f.name} must be {wanted}{example}, got {toml_text(value)}")
        if isinstance(value, list):
            object.__setattr__(obj, f.name, tuple(float(v) if isinstance(v, int) and float in typing.get_args(hint)
                                                  else v for v in value))
        elif hint is float and isinstance(value, int):
            object.__setattr__(obj, f.name, float(value))

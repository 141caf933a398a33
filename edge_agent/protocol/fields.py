"""Checked access to the fields of a decoded JSON object: every error says where, which field,
what was expected and what arrived."""

from __future__ import annotations

import re
from typing import Any, TypeVar, overload

from edge_agent.errors import MessageError

T = TypeVar("T")


def type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


@overload
def field_of(obj: dict[str, Any], key: str, kind: type[T], where: str) -> T: ...
@overload
def field_of(obj: dict[str, Any], key: str, kind: tuple[type, ...], where: str) -> Any: ...
def field_of(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """obj[key] checked against `kind`; MessageError naming where, expected and found."""
    if key not in obj:
        raise MessageError(f"{where}: missing field {key!r}")
    value = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int in Python, never on the wire
    is_bool_for_number = isinstance(value, bool) and bool not in kinds
    if is_bool_for_number or not isinstance(value, kinds):
        expected = " or ".join(k.__name__ for k in kinds)
        raise MessageError(
            f"{where}.{key}: expected {expected}, got {type_name(value)} {value!r:.60}"
        )
    return value


def matching(value: object, pattern: re.Pattern[str], where: str, expected: str) -> str:
    """`value` if it is a string `pattern` matches whole; MessageError saying what was expected."""
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise MessageError(f"{where}: expected {expected}, got {value!r}")
    return value

"""`@frozen`: what `@dataclass(frozen=True)` makes, made with one compile instead of six.

Python 3.11's dataclass compiles each method it writes (`__init__`, `__repr__`, `__eq__`,
`__hash__`, `__setattr__`, `__delattr__`) from source of its own: about 70 µs a method on the
2-core x86 machine the benches ran on, so the agent's sixty-odd value classes took a third
of its imports (about 25 of 65 ms: bench/agent_bench.py's cold start). Here `dataclass`
keeps its part that costs nothing (the fields: `dataclasses.fields`, `replace`, `asdict` work
as before) and only `__init__` is compiled, since it runs for every instance, and only when
it is first looked up (the first instance, or inspect.signature); the other methods are the
same few functions for every class, reading the class's field names. What each method does
is what dataclass's would (tests/test_frozen.py holds them side by side). What differs: a
class without a docstring gets its fields' names as one, not dataclass's signature with types;
`__eq__` and `__hash__` take about 1.5 times dataclass's time and `__repr__` twice (an instance
is made a little faster); and `__init__` is in the class's `__dict__` only once looked up.
"""

from __future__ import annotations

import dataclasses
import sys
from abc import update_abstractmethods
from collections.abc import Callable
from dataclasses import (
    MISSING,
    Field,
    FrozenInstanceError,
    dataclass,
    field,
    fields,
    is_dataclass,
)
from operator import attrgetter
from reprlib import recursive_repr
from typing import Any, TypeVar, dataclass_transform, overload

T = TypeVar("T", bound=type)

# dataclass's own markers (private, the same from 3.8 to 3.14): a ClassVar's and an InitVar's
# pseudo-field, and the default a factory's parameter shows in inspect.signature
_CLASSVAR = dataclasses._FIELD_CLASSVAR  # type: ignore[attr-defined]
_INITVAR = dataclasses._FIELD_INITVAR  # type: ignore[attr-defined]
_HAS_DEFAULT_FACTORY = dataclasses._HAS_DEFAULT_FACTORY  # type: ignore[attr-defined]


@overload
def frozen(cls: T, /) -> T: ...


@overload
def frozen(*, kw_only: bool = False) -> Callable[[T], T]: ...


@dataclass_transform(frozen_default=True, field_specifiers=(field, Field))
def frozen(cls: T | None = None, /, *, kw_only: bool = False) -> T | Callable[[T], T]:
    """`@frozen` or `@frozen(kw_only=True)`, as `@dataclass(frozen=True[, kw_only=True])`."""

    def make(c: T) -> T:
        return _make(c, kw_only)

    return make if cls is None else make(cls)


def _make(cls: T, kw_only: bool) -> T:
    own = set(cls.__dict__)  # what the class defines itself stays, as dataclass leaves it
    for name in ("__setattr__", "__delattr__"):
        if name in own:  # as dataclass(frozen=True) refuses it
            raise TypeError(f"Cannot overwrite attribute {name} in class {cls.__name__}")
    # dataclass's rule: a __hash__ the class sets stays, but for the None Python itself puts in a
    # class that defines __eq__
    class_hash = cls.__dict__.get("__hash__", MISSING)
    explicit_hash = not (class_hash is MISSING or (class_hash is None and "__eq__" in own))
    undocumented = not cls.__doc__
    if undocumented:  # else dataclass writes one from inspect.signature: 3 ms, the first time
        cls.__doc__ = cls.__name__
    # Under a dataclass base, frozen=True: dataclass then checks that every base is frozen, as
    # for dataclass(frozen=True) (its __setattr__ and __delattr__, replaced below, cost two
    # compiles: a subclass's only).
    inherits = any(is_dataclass(base) for base in cls.__mro__[1:])
    dataclass(init=False, repr=False, eq=False, frozen=inherits, kw_only=kw_only)(cls)
    params = cls.__dict__["__dataclass_params__"]  # what the class is once done, for its readers
    params.init = params.repr = params.eq = params.frozen = True  # (and a subclass's check)
    every = fields(cls)
    if undocumented:
        cls.__doc__ = f"{cls.__name__}({', '.join(f.name for f in every if f.init)})"
    names = frozenset(f.name for f in every)
    methods: dict[str, Any] = {
        "__init__": _LazyInit(cls),
        "__repr__": _repr(tuple(f.name for f in every if f.repr)),
        "__eq__": _eq(_key(tuple(f.name for f in every if f.compare))),
        "__setattr__": _setattr(cls, names),
        "__delattr__": _delattr(cls, names),
    }
    if not explicit_hash:
        hashed = tuple(f.name for f in every if (f.compare if f.hash is None else f.hash))
        methods["__hash__"] = _hash(_key(hashed))
    for name, method in methods.items():
        if name in own and name != "__hash__":
            continue
        if name != "__init__":
            method.__qualname__ = f"{cls.__qualname__}.{name}"
        setattr(cls, name, method)
    update_abstractmethods(cls)  # a base's abstract __repr__ or __eq__ is now written
    return cls


class _LazyInit:
    """`__init__` until it is first looked up (by the first instance, or inspect.signature): then
    it compiles the class's own, puts it in its place and hands that out. A class a process never
    makes never pays for the compile. The source is written with the class, so a field without a
    default after one with fails there, as with dataclass."""

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.source, self.values, self.annotations = _init_source(cls)

    def __get__(self, obj: object, owner: type | None = None) -> Any:
        cls = self.cls
        module = sys.modules.get(cls.__module__)  # its globals, as dataclass's __init__'s
        made: dict[str, Any] = {}
        exec(self.source, vars(module) if module else {}, made)
        init = made["__fz_make__"](**self.values)
        init.__qualname__ = f"{cls.__qualname__}.__init__"
        init.__annotations__ = self.annotations
        setattr(cls, "__init__", init)  # noqa: B010 - mypy refuses an assignment to __init__
        return init.__get__(obj, owner)


def _init_source(cls: type) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Source of a function making `__init__` as dataclass writes it (each field set through
    object.__setattr__, defaults and factories, InitVars passed to `__post_init__`), the values
    it closes over, and `__init__`'s annotations. Its own names start with a prefix no field's
    does."""
    every = [
        f for f in cls.__dict__["__dataclass_fields__"].values() if f._field_type is not _CLASSVAR
    ]
    p = "_fz_"
    while any(f.name.startswith(p) for f in every):
        p += "_"
    values: dict[str, Any] = {f"{p}set": object.__setattr__, f"{p}factory": _HAS_DEFAULT_FACTORY}
    positional: list[str] = []
    keyword: list[str] = []
    annotations: dict[str, Any] = {}
    body: list[str] = []
    initvars: list[str] = []
    defaulted = False
    for f in every:
        if f.init:
            param = f.name
            if f.default_factory is not MISSING:
                param += f"={p}factory"
            elif f.default is not MISSING:
                values[f"{p}d_{f.name}"] = f.default
                param += f"={p}d_{f.name}"
            if f.kw_only is True:
                keyword.append(param)
            elif param != f.name:
                defaulted = True
                positional.append(param)
            elif defaulted:
                raise TypeError(f"non-default argument {f.name!r} follows default argument")
            else:
                positional.append(param)
            annotations[f.name] = f.type
        if f._field_type is _INITVAR:
            initvars.append(f.name)
            continue
        if f.default_factory is not MISSING:
            values[f"{p}f_{f.name}"] = f.default_factory
            value = f"{p}f_{f.name}()"
            if f.init:
                value = f"{value} if {f.name} is {p}factory else {f.name}"
        elif f.init:
            value = f.name
        else:
            continue  # a default stays the class's attribute; else __post_init__ sets it
        body.append(f"{p}set({p}self, {f.name!r}, {value})")
    if hasattr(cls, "__post_init__"):
        body.append(f"{p}self.__post_init__({', '.join(initvars)})")
    params = [f"{p}self", *positional, *(["*", *keyword] if keyword else [])]
    source = (
        f"def __fz_make__({', '.join(values)}):\n"
        f" def __init__({', '.join(params)}):\n"
        + "".join(f"  {line}\n" for line in body or ["pass"])
        + " return __init__\n"
    )
    return source, values, {**annotations, "return": None}


def _key(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """The values `__eq__` and `__hash__` look at, as a tuple (as dataclass's: a one-tuple for
    one field, so the same nan in both is equal, and the hash is the tuple's)."""
    if len(names) == 1:
        one = attrgetter(names[0])
        return lambda obj: (one(obj),)
    return attrgetter(*names) if names else _nothing


def _nothing(_obj: Any) -> tuple[()]:
    return ()


def _repr(names: tuple[str, ...]) -> Callable[[Any], str]:
    @recursive_repr()  # an instance that holds itself shows "...", as dataclass's does
    def __repr__(self: Any) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in names)
        return f"{self.__class__.__qualname__}({shown})"

    return __repr__


def _eq(key: Callable[[Any], Any]) -> Callable[[Any, object], Any]:
    def __eq__(self: Any, other: object) -> Any:
        if other.__class__ is self.__class__:
            return key(self) == key(other)
        return NotImplemented

    return __eq__


def _hash(key: Callable[[Any], Any]) -> Callable[[Any], int]:
    def __hash__(self: Any) -> int:
        return hash(key(self))

    return __hash__


def _setattr(cls: type, names: frozenset[str]) -> Callable[[Any, str, Any], None]:
    def __setattr__(self: Any, name: str, value: Any) -> None:
        if type(self) is cls or name in names:
            raise FrozenInstanceError(f"cannot assign to field {name!r}")
        object.__setattr__(self, name, value)  # a plain subclass's own

    return __setattr__


def _delattr(cls: type, names: frozenset[str]) -> Callable[[Any, str], None]:
    def __delattr__(self: Any, name: str) -> None:
        if type(self) is cls or name in names:
            raise FrozenInstanceError(f"cannot delete field {name!r}")
        object.__delattr__(self, name)

    return __delattr__

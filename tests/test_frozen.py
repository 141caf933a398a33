"""edge_agent.frozen against what it stands for, dataclass(frozen=True): the same class body
through both, every method side by side."""

from __future__ import annotations

import abc
import copy
import dataclasses
import inspect
import pickle
import typing
from dataclasses import KW_ONLY, FrozenInstanceError, dataclass, field
from typing import Any, ClassVar

import pytest

from edge_agent.protocol.frozen import frozen


def body(**extra: Any) -> dict[str, Any]:
    """A class body with every kind of field: plain, default, factory, not in the constructor,
    not compared, not shown, a ClassVar."""
    namespace: dict[str, Any] = {
        "__annotations__": {
            "name": "str",
            "size": "int",
            "tags": "dict[str, int]",
            "note": "str",
            "cache": "list[int]",
            "derived": "int",
            "KIND": "ClassVar[str]",
        },
        "size": 1,
        "tags": field(default_factory=dict),
        "note": field(default="", compare=False, repr=False),
        "cache": field(default_factory=list, init=False, compare=False),
        "derived": field(init=False),
        "KIND": "thing",
    }

    def __post_init__(self: Any) -> None:
        object.__setattr__(self, "derived", self.size * 2)

    namespace["__post_init__"] = __post_init__
    namespace.update(extra)
    return namespace


def pair(**extra: Any) -> tuple[Any, Any]:
    ours: Any = frozen(type("Thing", (), body(**extra)))
    theirs: Any = dataclass(frozen=True)(type("Thing", (), body(**extra)))
    return ours, theirs


CALLS: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    (("a",), {}),
    (("a", 3), {}),
    (("a",), {"tags": {"x": 1}, "note": "n"}),
    ((), {"name": "b", "size": 0}),
]


@pytest.mark.parametrize(("args", "kwargs"), CALLS)
def test_construction_fields_and_repr_match_dataclass(args: tuple[Any, ...], kwargs: Any) -> None:
    ours, theirs = pair()
    a, b = ours(*args, **kwargs), theirs(*args, **kwargs)
    assert vars(a) == vars(b)
    assert repr(a) == repr(b)
    assert [f.name for f in dataclasses.fields(a)] == [f.name for f in dataclasses.fields(b)]
    assert dataclasses.asdict(a) == dataclasses.asdict(b)
    assert vars(dataclasses.replace(a, size=7)) == vars(dataclasses.replace(b, size=7))
    assert ours.__match_args__ == theirs.__match_args__ == ("name", "size", "tags", "note")
    assert ours.KIND == "thing" and "KIND" not in vars(a)


def test_a_factory_makes_a_new_value_for_each_instance() -> None:
    ours, _ = pair()
    a, b = ours("a"), ours("b")
    assert a.tags == {} and a.tags is not b.tags and a.cache is not b.cache


def test_equality_and_hash_follow_the_compared_fields() -> None:
    def point() -> dict[str, Any]:
        return {
            "__annotations__": {"x": "int", "y": "int", "note": "str"},
            "note": field(default="", compare=False),
        }

    ours: Any = frozen(type("Point", (), point()))
    theirs: Any = dataclass(frozen=True)(type("Point", (), point()))
    a, same, other = ours(1, 2, "x"), ours(1, 2, "y"), ours(2, 1)
    assert a == same and hash(a) == hash(same)  # `note` is not compared
    assert a != other
    assert (a == same, a == other) == (theirs(1, 2, "x") == theirs(1, 2, "y"), False)
    assert a != theirs(1, 2)  # another class, even with the same fields
    assert a.__eq__(object()) is NotImplemented
    assert {a, same, other} == {a, other}


def test_a_list_field_makes_it_unhashable_as_with_dataclass() -> None:
    @frozen
    class Row:
        values: list[int]

    with pytest.raises(TypeError, match="unhashable"):
        hash(Row([1]))


def test_fields_cannot_be_set_or_deleted() -> None:
    ours, _ = pair()
    a = ours("a")
    with pytest.raises(FrozenInstanceError, match="'size'"):
        a.size = 3
    with pytest.raises(FrozenInstanceError, match="'name'"):
        del a.name
    with pytest.raises(FrozenInstanceError):
        a.other = 1  # not a field either: the class is frozen


def test_kw_only_and_positional_errors_as_with_dataclass() -> None:
    @frozen(kw_only=True)
    class Options:
        a: int
        b: int = 2

    @frozen
    class Mixed:
        a: int
        _: KW_ONLY
        b: int = 2

    assert vars(Options(a=1)) == {"a": 1, "b": 2}
    assert vars(Mixed(1, b=3)) == {"a": 1, "b": 3}
    with pytest.raises(TypeError):
        Options(1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Mixed(1, 3)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="missing"):
        Mixed()  # type: ignore[call-arg]


def test_methods_a_class_defines_itself_stay() -> None:
    @frozen
    class Named:
        name: str

        def __repr__(self) -> str:
            return f"<{self.name}>"

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Named) and other.name.lower() == self.name.lower()

        def __hash__(self) -> int:
            return hash(self.name.lower())

    assert repr(Named("A")) == "<A>"
    assert Named("A") == Named("a") and hash(Named("A")) == hash(Named("a"))


def test_subclass_inherits_and_extends_the_fields() -> None:
    @frozen
    class Base:
        a: int

    @frozen
    class Child(Base):
        b: str = "x"

    child = Child(1)
    assert vars(child) == {"a": 1, "b": "x"} and child != Base(1)
    assert repr(child) == f"{Child.__qualname__}(a=1, b='x')"
    with pytest.raises(FrozenInstanceError):
        child.a = 2  # type: ignore[misc]


def test_copies_and_pickles_as_a_dataclass_does() -> None:
    a = PICKLED(1, ("x",))
    assert copy.copy(a) == a and copy.deepcopy(a) == a
    assert pickle.loads(pickle.dumps(a)) == a


@frozen
class PICKLED:  # at module level: pickle finds classes by name
    n: int
    names: tuple[str, ...]
    seen: ClassVar[int] = 0


def test_a_class_without_a_docstring_gets_its_fields_as_one() -> None:
    @frozen
    class Bare:
        a: int
        b: str = ""

    assert Bare.__doc__ == "Bare(a, b)"


def test_init_is_compiled_at_its_first_lookup_and_kept() -> None:
    @frozen
    class Late:
        a: int

    assert not inspect.isfunction(vars(Late)["__init__"])  # not compiled yet
    assert Late(1).a == 1
    compiled = vars(Late)["__init__"]
    assert inspect.isfunction(compiled) and compiled.__qualname__.endswith("Late.__init__")
    assert Late(a=2).a == 2 and Late.__init__ is compiled


def test_init_signature_and_type_hints_are_dataclasss_before_any_instance() -> None:
    ours, theirs = pair()
    assert inspect.signature(ours) == inspect.signature(theirs)
    assert typing.get_type_hints(ours.__init__) == typing.get_type_hints(theirs.__init__)
    assert ours.__init__.__module__ == theirs.__init__.__module__ == __name__


def test_an_init_var_goes_to_post_init() -> None:
    def scaled() -> dict[str, Any]:
        def __post_init__(self: Any, scale: int) -> None:
            object.__setattr__(self, "y", self.x * scale)

        return {
            "__annotations__": {"x": "int", "scale": "dataclasses.InitVar[int]", "y": "int"},
            "scale": 2,
            "y": field(init=False),
            "__post_init__": __post_init__,
        }

    for deco in DECOS:
        cls = deco(type("Scaled", (), scaled()))
        assert vars(cls(1, 3)) == {"x": 1, "y": 3} and vars(cls(2)) == {"x": 2, "y": 4}, deco
        assert [f.name for f in dataclasses.fields(cls)] == ["x", "y"]


def test_an_init_false_default_stays_on_the_class() -> None:
    for deco in DECOS:

        @deco
        class Counted:
            x: int
            seen: int = field(default=0, init=False)

        assert vars(Counted(1)) == {"x": 1} and Counted(1).seen == 0, deco


def test_a_field_without_a_default_after_one_with_is_refused_with_the_class() -> None:
    for deco in DECOS:
        with pytest.raises(TypeError, match="non-default argument 'b' follows default argument"):
            deco(type("Bad", (), {"__annotations__": {"a": "int", "b": "int"}, "a": 0}))
        base = deco(type("Base", (), {"__annotations__": {"a": "int"}, "a": 0}))
        with pytest.raises(TypeError, match="non-default argument 'b' follows default argument"):
            deco(type("Child", (base,), {"__annotations__": {"b": "int"}}))


@pytest.mark.parametrize("name", ["self", "_fz_set", "_fz_missing", "_fz_f_x", "object"])
def test_a_field_may_have_any_name(name: str) -> None:
    for deco in DECOS:
        namespace = {
            "__annotations__": {name: "int", "x": "list[int]"},
            "x": field(default_factory=list),
        }
        cls = deco(type("Named", (), namespace))
        assert vars(cls(**{name: 1})) == {name: 1, "x": []}, deco


def test_dataclass_params_say_frozen() -> None:
    ours, theirs = pair()
    for name in ("init", "repr", "eq", "frozen", "order", "unsafe_hash"):
        assert getattr(ours.__dataclass_params__, name) == getattr(
            theirs.__dataclass_params__, name
        ), name


def test_inherits_from_and_is_inherited_by_stdlib_frozen_dataclasses() -> None:
    @frozen
    class Ours:
        a: int

    @dataclass(frozen=True)
    class Theirs(Ours):
        b: int = 0

    @frozen
    class Again(Theirs):
        c: int = 1

    assert vars(Again(1, 2)) == {"a": 1, "b": 2, "c": 1}
    with pytest.raises(FrozenInstanceError):
        Again(1).b = 3  # type: ignore[misc]


def test_refuses_what_dataclass_frozen_refuses() -> None:
    @dataclass
    class Mutable:
        a: int

    @frozen
    class Ours:
        a: int

    with pytest.raises(TypeError, match="cannot inherit frozen dataclass from a non-frozen one"):
        frozen(type("Child", (Mutable,), {}))
    with pytest.raises(TypeError, match="cannot inherit non-frozen dataclass from a frozen one"):
        dataclass(type("Child", (Ours,), {}))
    for name in ("__setattr__", "__delattr__"):
        with pytest.raises(TypeError, match=f"Cannot overwrite attribute {name}"):
            frozen(type("Own", (), {"__annotations__": {"a": "int"}, name: lambda *_: None}))


def test_a_single_field_compares_and_hashes_as_a_one_tuple() -> None:
    """dataclass compares (self.x,) == (other.x,): the tuple's identity check makes a field
    holding the same nan equal, and the hash is the one-tuple's."""
    nan = float("nan")
    ours, theirs = (deco(type("One", (), {"__annotations__": {"x": "float"}})) for deco in DECOS)
    assert (ours(nan) == ours(nan)) is (theirs(nan) == theirs(nan)) is True
    assert hash(ours(2.5)) == hash(theirs(2.5)) == hash((2.5,))


DECOS: tuple[Any, Any] = (frozen, dataclass(frozen=True))


@pytest.mark.parametrize(
    ("extra", "hashable"),
    [
        ({"__hash__": None}, False),  # set by the class: kept, as dataclass keeps it
        ({"__eq__": lambda self, other: self is other}, True),  # Python's None: replaced
        ({"__hash__": lambda self: 7}, True),
    ],
)
def test_a_hash_the_class_sets_is_kept_as_dataclass_keeps_it(
    extra: dict[str, Any], hashable: bool
) -> None:
    for deco in DECOS:
        namespace = {"__annotations__": {"x": "int"}, **extra}
        cls = deco(type("Hashed", (), namespace))
        if "__eq__" in extra:  # Python sets __hash__ to None in a class that defines __eq__
            assert "__hash__" in vars(type("Probe", (), {"__eq__": extra["__eq__"]}))
        assert (cls.__hash__ is not None) is hashable, deco
        if "__hash__" in extra and hashable:
            assert hash(cls(1)) == 7


def test_repr_of_an_instance_that_holds_itself() -> None:
    for deco in DECOS:
        cls = deco(type("Loop", (), {"__annotations__": {"items": "list[Any]"}}))
        loop = cls([])
        loop.items.append(loop)
        assert repr(loop) == "Loop(items=[...])", deco


def test_an_abstract_method_it_writes_is_no_longer_abstract() -> None:
    class Shown(abc.ABC):
        @abc.abstractmethod
        def __repr__(self) -> str: ...

    for deco in DECOS:
        cls = deco(type("Concrete", (Shown,), {"__annotations__": {"x": "int"}}))
        assert repr(cls(1)) == "Concrete(x=1)", deco

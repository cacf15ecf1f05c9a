"""Method options are checked alike by every method (:mod:`medsaga.methods.options`).

Every registered method's options are found through the registry and their fields read from the
dataclass, so a new method or option is covered without editing this file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from pathlib import Path
from types import UnionType

import pytest

from medsaga.errors import InputError
from medsaga.methods import create_method, method_names
from medsaga.methods.base import MethodOptions, TuningMethod
from medsaga.methods.galore import GaLoreOptions
from medsaga.methods.options import boolean, check_fields, indexes, integer, names, one_of, optional, real
from medsaga.methods.registry import method_class, method_classes
from medsaga.model.backbone import LINEAR_ROLES

METHODS_DIR = Path(__file__).resolve().parents[1] / "medsaga" / "methods"


def _fields_of_kind(options_type: type[MethodOptions], kind: type) -> list[str]:
    """The fields of ``options_type`` whose type is ``kind`` or ``kind | None``."""
    hints = typing.get_type_hints(options_type)
    found = []
    for field in dataclasses.fields(options_type):
        hint = hints[field.name]
        members = set(typing.get_args(hint)) if isinstance(hint, UnionType) else {hint}
        if kind in members and members <= {kind, type(None)}:
            found.append(field.name)
    return found


def _cases(kind: type) -> list[tuple[str, str]]:
    return [(name, field) for name in method_names()
            for field in _fields_of_kind(method_class(name).options_type, kind)]


INT_FIELDS = _cases(int)
FLOAT_FIELDS = _cases(float)
BOOL_FIELDS = _cases(bool)


def test_the_options_tables_above_cover_the_methods() -> None:
    """The generic tests below do reach the options the issue names."""
    assert {name for name, field in INT_FIELDS if field == "rank"} == {"galore", "lora", "conv-lora"}
    assert ("galore", "scale") in FLOAT_FIELDS and ("lora", "alpha") in FLOAT_FIELDS
    assert ("parser", "rank_fraction") in FLOAT_FIELDS and ("adapter", "tau") in FLOAT_FIELDS
    assert ("galore", "layerwise") in BOOL_FIELDS and ("conv-lora", "noisy_gating") in BOOL_FIELDS


@pytest.mark.parametrize(("name", "field"), INT_FIELDS)
def test_integer_options_refuse_bools_and_floats(name: str, field: str) -> None:
    options_type = method_class(name).options_type
    for bad in (True, False, 2.0):
        with pytest.raises(ValueError, match=rf"^{field} must be an integer.*, got {bad!r}$"):
            options_type(**{field: bad})
    with pytest.raises(InputError, match=rf"bad options for method '{name}': {field} must be an integer"):
        create_method(name, {field: True})


@pytest.mark.parametrize(("name", "field"), FLOAT_FIELDS)
def test_float_options_refuse_nan_infinity_and_bools(name: str, field: str) -> None:
    options_type = method_class(name).options_type
    for bad in (math.nan, math.inf, -math.inf, True):
        with pytest.raises(ValueError, match=rf"^{field} must be a finite number.*, got {re.escape(repr(bad))}$"):
            options_type(**{field: bad})
    with pytest.raises(InputError, match=rf"bad options for method '{name}': {field} must be a finite number"):
        create_method(name, {field: math.nan})


@pytest.mark.parametrize(("name", "field"), BOOL_FIELDS)
def test_boolean_options_refuse_numbers_and_text(name: str, field: str) -> None:
    options_type = method_class(name).options_type
    for bad in (1, 0, "yes"):
        with pytest.raises(ValueError, match=rf"^{field} must be true or false, got {bad!r}$"):
            options_type(**{field: bad})


@pytest.mark.parametrize("name", method_names())
def test_defaults_are_canonical_and_survive_json(name: str) -> None:
    """Defaults pass their own checks unchanged, and come back equal from a run's config.json."""
    options_type = method_class(name).options_type
    defaults = options_type()
    assert dataclasses.astuple(defaults) == tuple(field.default for field in dataclasses.fields(options_type))
    assert create_method(name, json.loads(json.dumps(defaults.to_json()))).options == defaults


def test_galore_targets_are_the_backbone_linear_roles() -> None:
    assert GaLoreOptions().targets == LINEAR_ROLES
    for role in LINEAR_ROLES:
        # -o targets=qkv: one name; config.json: a list
        assert GaLoreOptions(targets=role).targets == (role,)  # type: ignore[arg-type]
    assert GaLoreOptions(targets=["lin2", "qkv"]).targets == ("lin2", "qkv")  # type: ignore[arg-type]
    roles = ", ".join(LINEAR_ROLES)
    for bad in (["fc1"], [], ["qkv", "qkv"], "attn.qkv"):
        with pytest.raises(ValueError, match=f"targets must be one or more distinct names among {roles}"):
            GaLoreOptions(targets=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("method_type", method_classes(), ids=lambda method_type: method_type.name)
def test_methods_are_generic_over_their_own_options(method_type: type[TuningMethod]) -> None:
    """``TuningMethod[TheirOptions]``: ``self.options`` is typed per method, checked at construction."""
    bases = [base for base in getattr(method_type, "__orig_bases__", ()) if typing.get_origin(base) is TuningMethod]
    assert [typing.get_args(base) for base in bases] == [(method_type.options_type,)]
    method = method_type()
    assert type(method.options) is method_type.options_type
    other = next(t.options_type for t in method_classes() if t.options_type is not method_type.options_type)
    with pytest.raises(TypeError, match=f"{method_type.name} takes {method_type.options_type.__name__}"):
        method_type(other())


def test_no_method_silences_the_type_of_its_options() -> None:
    offending = [f"{path.name}:{number}" for path in sorted(METHODS_DIR.glob("*.py"))
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if "type: ignore[assignment]" in line]
    assert offending == []


# --- the helper itself ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Example:
    count: int = 1
    factor: float = 0.5
    flag: bool = False
    mode: str = "a"
    parts: tuple[str, ...] = ("x",)
    picks: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        check_fields(self, count=integer(at_least=1, at_most=9), factor=real(above=0, at_most=1), flag=boolean(),
                     mode=one_of(("a", "b")), parts=names(("x", "y", "z"), canonical_order=True),
                     picks=optional(indexes()))


def test_check_fields_coerces_to_one_canonical_form() -> None:
    example = _Example(count=3, factor=1, parts=["z", "x"], picks=[4, 2])  # type: ignore[arg-type]
    assert (example.count, example.factor, example.parts, example.picks) == (3, 1.0, ("x", "z"), (2, 4))
    assert type(example.factor) is float
    assert _Example(parts="y", picks=7) == _Example(parts=("y",), picks=(7,))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="no field 'missing'"):
        check_fields(_Example(), missing=integer())


@pytest.mark.parametrize(("field", "value", "message"), [
    ("count", 0, "count must be an integer in [1, 9], got 0"),
    ("count", True, "count must be an integer in [1, 9], got True"),
    ("count", "3", "count must be an integer in [1, 9], got '3'"),
    ("factor", 0.0, "factor must be a finite number in (0, 1], got 0.0"),
    ("factor", math.nan, "factor must be a finite number in (0, 1], got nan"),
    ("factor", False, "factor must be a finite number in (0, 1], got False"),
    ("flag", 1, "flag must be true or false, got 1"),
    ("mode", "c", "mode must be one of a, b; got 'c'"),
    ("parts", [], "parts must be one or more distinct names among x, y, z; got []"),
    ("parts", ["x", "x"], "parts must be one or more distinct names among x, y, z; got ['x', 'x']"),
    ("parts", ["w"], "parts must be one or more distinct names among x, y, z; got ['w']"),
    ("picks", [1, 1], "picks must be one or more distinct non-negative integers; got [1, 1]"),
    ("picks", [True], "picks must be one or more distinct non-negative integers; got [True]"),
    ("picks", [-1], "picks must be one or more distinct non-negative integers; got [-1]"),
])
def test_refusals_name_the_field_and_the_value(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        _Example(**{field: value})  # type: ignore[arg-type]
    assert str(raised.value) == message

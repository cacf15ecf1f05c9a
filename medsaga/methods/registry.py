"""Methods by name: ``--method galore`` finds :class:`~medsaga.methods.galore.GaLoreMethod` here."""

from __future__ import annotations

import importlib
from typing import Any, TypeVar

from medsaga.errors import InputError
from medsaga.methods.base import TuningMethod

_METHODS: dict[str, type[TuningMethod[Any]]] = {}
MethodType = TypeVar("MethodType", bound=type[TuningMethod[Any]])


def register(method: MethodType) -> MethodType:
    """Class decorator: make a method available by its ``name``."""
    if method.name in _METHODS:
        raise ValueError(f"two methods named {method.name!r}")
    _METHODS[method.name] = method
    return method


def method_names() -> list[str]:
    """Registered method names, in the order of :data:`BUILTIN_METHOD_MODULES`."""
    return [method.name for method in method_classes()]


def method_classes() -> list[type[TuningMethod[Any]]]:
    """Registered method classes, in the order of :data:`BUILTIN_METHOD_MODULES`."""
    _import_builtin_methods()
    return list(_METHODS.values())


def method_class(name: str) -> type[TuningMethod[Any]]:
    """The method class registered as ``name``.

    Raises:
        InputError: unknown method name.
    """
    _import_builtin_methods()
    if name not in _METHODS:
        raise InputError(f"unknown method {name!r}; choose one of: {', '.join(_METHODS)}")
    return _METHODS[name]


def create_method(name: str, options: dict[str, Any] | None = None) -> TuningMethod[Any]:
    """A method by name, with options from a dict (e.g. a run's config.json).

    Raises:
        InputError: unknown method name or option.
    """
    method_type = method_class(name)
    try:
        return method_type(method_type.options_type(**(options or {})))
    except (TypeError, ValueError) as error:  # unknown option names, or values __post_init__ refuses
        raise InputError(f"bad options for method {name!r}: {error}") from None


# The modules of medsaga's own methods, in the order ``--method`` lists them.
BUILTIN_METHOD_MODULES = ("galore", "adapter", "parser", "lora", "conv_lora", "decoder", "full")


def _import_builtin_methods() -> None:
    # Imported lazily: each module registers itself, and importing them here (not at the top)
    # keeps this module free of import cycles.
    for module in BUILTIN_METHOD_MODULES:
        importlib.import_module(f"medsaga.methods.{module}")
    # Listing order follows BUILTIN_METHOD_MODULES, whatever order the modules were imported in.
    order = {module.replace("_", "-"): index for index, module in enumerate(BUILTIN_METHOD_MODULES)}
    for name in sorted(_METHODS, key=lambda name: order.get(name, len(order))):
        _METHODS[name] = _METHODS.pop(name)

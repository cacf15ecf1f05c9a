"""Which classes to evaluate, and their names.

By default: every nonzero value found in the reference or the prediction of any case, named by
its value. ``--labels`` names them instead and fixes the set: a nnU-Net/MSD ``dataset.json``
(its ``labels``), or a fine-tuning RUN_DIR (its ``config.json`` ``"classes"``), or a folder
holding either. Background (value 0) is never a class here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsaga.errors import InputError


@dataclass(frozen=True, order=True)
class EvalClass:
    """One evaluated class: its label value in the label maps, and a name for tables."""

    value: int
    name: str

    @property
    def label(self) -> str:
        """``"1 liver"``; just ``"1"`` for a class named by its value."""
        return str(self.value) if self.name == str(self.value) else f"{self.value} {self.name}"


@dataclass(frozen=True)
class ClassSet:
    """The classes to evaluate, sorted by value.

    Attributes:
        classes: the foreground classes.
        source: where names came from (a file), or ``None`` when found in the data.
        fixed: ``True`` when the set was declared (values outside it are an error).
    """

    classes: tuple[EvalClass, ...]
    source: Path | None = None
    fixed: bool = False

    @property
    def values(self) -> frozenset[int]:
        return frozenset(c.value for c in self.classes)


def classes_from_values(values: Iterable[int]) -> ClassSet:
    """Classes named by their values (``1`` → ``"1"``), background left out."""
    return ClassSet(tuple(EvalClass(v, str(v)) for v in sorted({int(v) for v in values} - {0})))


def load_class_set(path: str | Path, what: str = "--labels") -> ClassSet:
    """The classes declared by ``path``: a ``dataset.json``, a RUN_DIR's ``config.json``, or a
    folder holding one of them (``config.json`` first).

    ``what`` names the source in error messages.

    Raises:
        InputError: the path holds neither, or the file declares no usable classes.
    """
    path = Path(path)
    if path.is_dir():
        for name in ("config.json", "dataset.json"):
            if (path / name).is_file():
                return load_class_set(path / name, what)
        raise InputError(f"{what}: expected a dataset.json, a run folder's config.json, or a folder with one", path)
    if not path.is_file():
        raise InputError(f"{what}: no such file or folder", path)
    spec = _read_json(path, what)
    if "classes" in spec:
        classes = _classes_from_run_config(spec, path, what)
    elif "labels" in spec:
        classes = _classes_from_dataset_json(spec, path, what)
    else:
        raise InputError(f"{what}: declares no classes (neither 'labels' as in dataset.json nor 'classes' "
                         "as in a run's config.json)", path)
    if not classes:
        raise InputError(f"{what}: declares no foreground class (only background 0)", path)
    return ClassSet(tuple(sorted(classes)), source=path, fixed=True)


def dataset_class_set(path: Path | None) -> ClassSet | None:
    """The classes of a reference dataset's own ``dataset.json``, or ``None`` when there is none or
    it declares no labels (a plain-pairs dataset.json may name channels only)."""
    what = "the ground truth's dataset.json"
    if path is None or "labels" not in _read_json(path, what):
        return None
    return load_class_set(path, what)


def _classes_from_run_config(spec: dict[str, Any], path: Path, what: str) -> list[EvalClass]:
    """config.json: ``"classes": {"values": [0, 1, 4], "names": ["background", "liver", "tumour"]}``."""
    block = spec["classes"]
    values = block.get("values") if isinstance(block, dict) else None
    names = block.get("names") if isinstance(block, dict) else None
    if not (isinstance(values, list) and isinstance(names, list) and len(values) == len(names)
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)):
        raise InputError(f"{what}: 'classes' must hold 'values' (non-negative integers) and as many 'names'", path)
    return _unique([EvalClass(v, str(n)) for v, n in zip(values, names) if v != 0], path, what)


def _classes_from_dataset_json(spec: dict[str, Any], path: Path, what: str) -> list[EvalClass]:
    # The dataset module owns the dataset.json rules (v2 name → value, MSD value → name, regions).
    from medsaga.data.dataset import parse_labels

    return _unique([EvalClass(v, n) for n, v in parse_labels(spec, path).items() if v != 0], path, what)


def _unique(classes: list[EvalClass], path: Path, what: str) -> list[EvalClass]:
    seen: dict[int, str] = {}
    for c in classes:
        if c.value in seen:
            raise InputError(f"{what}: value {c.value} is declared twice ({seen[c.value]!r}, {c.name!r})", path)
        seen[c.value] = c.name
    return classes


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{what}: cannot read ({error.__class__.__name__})", path) from None
    except json.JSONDecodeError as error:
        raise InputError(f"{what}: not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})",
                         path) from None
    if not isinstance(spec, dict):
        raise InputError(f"{what}: expected a JSON object", path)
    return spec

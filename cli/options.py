"""The options several commands take, declared once, and what fills in the library's part of them.

A shared option is a ``typing.Annotated`` type: a command declares ``device: Device = DEFAULT_DEVICE``
and gets the same flag, help text and default as every other command that takes ``--device``
(tests/test_cli_options.py checks that they stay the same).

What the library owns is read from it, not copied here: the registered model types and their input
sizes, the intensity presets, the slicing planes, and the defaults of the library's options
(``FinetuneOptions.batch_size``, select's ``DEFAULT_RULE``...). A help text names such a value as
a field (``{model_types}``, see :data:`LIBRARY_TEXT`) and a default is a :class:`FromLibrary`
(:func:`library_default`); :class:`Command`, the class every command is made with, fills both in
when the command runs or shows its help. Not before: the modules that own them import torch or
numpy, and ``medsaga --help`` stays instant.

Where an option means something else in one command, that command keeps its own declaration
(``--out`` names each command's own output; predict's ``--checkpoint`` is the run's base
checkpoint; benchmark measures at one fixed ``--image-size``); tests/test_cli_options.py lists them.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

# --- values the library owns ------------------------------------------------------------------------


@dataclass(frozen=True)
class FromLibrary:
    """A default that the library owns: ``attribute`` (dotted: a constant, or an options dataclass's
    field) of ``module``, read by :class:`Command` when the command runs or shows its help."""

    module: str
    attribute: str

    def value(self) -> Any:
        found: Any = importlib.import_module(self.module)
        for name in self.attribute.split("."):
            found = getattr(found, name)
        return found


def library_default(module: str, attribute: str) -> Any:
    """A :class:`FromLibrary` default, typed to fit any option (``batch_size: BatchSize = library_default(...)``)."""
    return FromLibrary(module, attribute)


def _by_model_type(value: Callable[[Any], str | None]) -> str:
    """``"vit_b, vit_l, vit_h, tiny 512; litemedsam 256"``: the registered types grouped by ``value(entry)``."""
    from medsaga.model.registry import MODEL_TYPES

    groups: dict[str, list[str]] = {}
    for entry in MODEL_TYPES.values():
        text = value(entry)
        if text is not None:
            groups.setdefault(text, []).append(entry.name)
    return "; ".join(f"{', '.join(names)} {text}" for text, names in groups.items())


def _model_types() -> str:
    from medsaga.model.registry import model_type_names

    return ", ".join(model_type_names())


def _image_sizes() -> str:
    return _by_model_type(lambda entry: str(entry.default_image_size) + (
        f", {entry.cpu_train_image_size} when finetune runs on a CPU" if entry.cpu_train_image_size else ""))


def _profiled_sizes() -> str:
    return _by_model_type(lambda entry: ",".join(map(str, entry.profiled_sizes)))


def _default_model() -> str:
    from medsaga.train.finetune import DEFAULT_MODEL

    return DEFAULT_MODEL


def _presets() -> str:
    from medsaga.data.intensity import PRESETS

    return ", ".join(PRESETS)


def _planes() -> str:
    from medsaga.data.slicing import PLANES

    return ", ".join(PLANES)


# The fields a help text may name, ``{name}``: each is read from the library when it is shown.
LIBRARY_TEXT: dict[str, Callable[[], str]] = {
    "model_types": _model_types,  # vit_b, vit_l, vit_h, tiny, litemedsam
    "image_sizes": _image_sizes,  # each type's default input size
    "profiled_sizes": _profiled_sizes,  # the sizes medsaga plan profiles each type at
    "default_model": _default_model,  # finetune's model when neither --model nor --checkpoint is given
    "presets": _presets,  # the intensity presets
    "planes": _planes,  # the slicing planes
}
_FIELD = re.compile(r"\{(\w+)\}")


def fill_help(text: str) -> str:
    """``text`` with its :data:`LIBRARY_TEXT` fields filled in (other braces are left as they are)."""
    return _FIELD.sub(lambda match: LIBRARY_TEXT[match.group(1)]() if match.group(1) in LIBRARY_TEXT
                      else match.group(0), text)


def fill_library_values(params: Iterable[Any]) -> None:
    """Fill in the library's part of click parameters: :class:`FromLibrary` defaults, help fields."""
    for param in params:
        if isinstance(param.default, FromLibrary):
            param.default = param.default.value()
        if isinstance(getattr(param, "help", None), str) and "{" in param.help:
            param.help = fill_help(param.help)


class Command(TyperCommand):
    """The class every command is made with (``app.command(..., cls=Command)``): its options' library
    values are filled in the first time the command asks for its parameters, i.e. when it parses
    its arguments or shows its help (not when ``medsaga`` starts)."""

    _library_values_filled = False

    def get_params(self, ctx: Any) -> Any:
        if not self._library_values_filled:
            fill_library_values(self.params)
            self._library_values_filled = True
        return super().get_params(ctx)


# --- options with one meaning in every command that takes them --------------------------------------

DEFAULT_DEVICE = "auto"
Device = Annotated[str, typer.Option("--device", help="auto (CUDA when available), cpu or cuda.")]

Force = Annotated[bool, typer.Option("--force", help="Replace what an earlier call wrote to --out (never an input, "
                                                     "nor a folder medsaga did not make).")]

Seed = Annotated[int, typer.Option("--seed", help="Seeds every random choice: the cases, the slice order, "
                                                  "augmentation and initial weights.")]

Series = Annotated[str | None, typer.Option("--series", help="SeriesInstanceUID to read where a DICOM folder holds "
                                                             "several series.")]

DEFAULT_PRECISION = "auto"
Precision = Annotated[str, typer.Option("--precision", help="auto (bf16 autocast on CUDA that supports it, else "
                                                            "fp32), fp32 or bf16.")]

Plane = Annotated[str, typer.Option("--plane", help="Slicing plane: {planes}.")]

Intensity = Annotated[str | None, typer.Option("--intensity", help="Intensity preset for every channel: {presets} "
                                                                   "(default: from each channel's name in "
                                                                   "dataset.json).")]

Checkpoint = Annotated[Path | None, typer.Option("--checkpoint", "-c", help="SAM or MedSAM weights (.pth); see "
                                                                            "'medsaga weights'.")]

RandomInit = Annotated[bool, typer.Option("--random-init", help="Random weights of the --model architecture "
                                                                "(litemedsam included): a baseline, not for real "
                                                                "segmentation.")]

ImageSize = Annotated[int | None, typer.Option("--image-size", help="Model input size, a multiple of 16 (default: "
                                                                    "the model type's: {image_sizes}).")]

# The default differs by command: each is its library options' own (FinetuneOptions.batch_size...).
BatchSize = Annotated[int, typer.Option("--batch-size", "-b", help="Slices per forward pass.")]

# --- --model, as each command means it -------------------------------------------------------------

# finetune: the model to fine-tune; None lets the library choose (its DEFAULT_MODEL, or a checkpoint's type).
Model = Annotated[str | None, typer.Option("--model", help="Model type: {model_types} (default {default_model}: the "
                                                           "weights installed with medsaga, no --checkpoint needed). "
                                                           "A ViT without --checkpoint: random weights (tests, "
                                                           "benchmarks).")]
# select: the frozen encoder that describes the scans.
Encoder = Annotated[str | None, typer.Option("--model", help="The frozen encoder, a model type: {model_types}; "
                                                             "litemedsam with its installed weights, the others "
                                                             "with --checkpoint.")]
# benchmark and plan: the architecture whose memory and speed are measured.
Architecture = Annotated[str, typer.Option("--model", help="Model type: {model_types} (random weights: memory and "
                                                           "speed do not depend on their values).")]
ARCHITECTURE_DEFAULT = library_default("medsaga.benchmark.run", "BenchmarkOptions.model")

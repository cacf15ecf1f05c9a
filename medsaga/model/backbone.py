"""What a tuning method may ask of an image encoder, answered once per kind of encoder.

The methods (:mod:`medsaga.methods`) never look at an encoder's module names: they ask its
:class:`Backbone` for

* its attention layers (:class:`AttentionLayer`): where each fused ``qkv`` projection is, which of
  its output rows are queries, keys and values, and what token grid it sees (LoRA, Conv-LoRA);
* its 2-D linear weights by role, ``qkv``, ``proj``, ``lin1`` (MLP in), ``lin2`` (MLP out) (GaLore);
* the convolutions and linears that SAM-PARSER decomposes by default;
* its blocks, in order (activation checkpointing);
* the embedding it produces (``(256, S/stride, S/stride)``: the adapter's output grid, the cache);
* how it wants the image normalised, and its BatchNorm layers.

Each kind of encoder is one :class:`Backbone` subclass (as HF PEFT keeps a per-architecture table
of target modules): SAM's ViT (vit_b/l/h, tiny) and LiteMedSAM's TinyViT. Each model type's entry
in :mod:`medsaga.model.registry` names its backbone, and :func:`backbone_of` finds an encoder's
among the registered ones. A third encoder (SAM 2's Hiera, EfficientViT) is one more backbone and
one more registry entry, and touches no method.

BatchNorm (TinyViT): the encoder's BatchNorm layers always normalise with their running statistics,
in training too (:func:`freeze_statistics`, called by the segmenter's ``train()``). A few-shot batch
of 2-8 slices from one or two patients would otherwise overwrite statistics distilled from a large
data set, and the model would train on other features than it predicts with. Where a method
trains the encoder's weights (GaLore, full) the BatchNorm's affine weight and bias still train.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from medsaga.model.sam_import import sam_modeling
from medsaga.model.tiny_vit import TinyViT, TinyViTBlock

QKV_PARTS = ("q", "k", "v")
LINEAR_ROLES = ("qkv", "proj", "lin1", "lin2")
EMBEDDING_CHANNELS = 256


@dataclass(frozen=True)
class AttentionLayer:
    """One attention layer of an image encoder.

    Attributes:
        name: the attention module's name inside the encoder (``blocks.3.attn``, ``layers.1.blocks.0.attn``).
        module: that module; its fused projection is its attribute ``qkv`` (``C → 3C``), which a
            method may replace with a drop-in of the same input and output.
        width: ``C``.
        num_heads: heads; each head has ``C / num_heads`` channels of q, k and v.
        head_major: the layout of ``qkv``'s output. ``False`` (SAM's ViT): ``[q | k | v]``, each
            ``C`` rows, head by head. ``True`` (TinyViT): head by head, ``[q_h, k_h, v_h]``.
        window: side of the square windows ``qkv`` is called on, as ``(windows, w, w, C)`` maps;
            0 when it sees the whole token grid ``(B, h, w, C)``.
    """

    name: str
    module: nn.Module
    width: int
    num_heads: int
    head_major: bool
    window: int

    def part_rows(self, part: str) -> torch.Tensor:
        """Rows of the ``qkv`` output ``(C,)`` int64 that hold ``part`` (``q``, ``k`` or ``v``), in
        the order of that part's channels (head by head)."""
        index = QKV_PARTS.index(part)
        if not self.head_major:
            return torch.arange(index * self.width, (index + 1) * self.width)
        head_dim = self.width // self.num_heads
        heads = torch.arange(self.num_heads)[:, None] * 3 * head_dim
        return (heads + index * head_dim + torch.arange(head_dim)[None, :]).reshape(-1)

    def part_major_order(self) -> torch.Tensor | None:
        """``order (3C,)`` with ``qkv_output[..., i] = part_major[..., order[i]]``, where
        ``part_major`` is ``[q | k | v]``; ``None`` when the layout already is that."""
        if not self.head_major:
            return None
        order = torch.empty(3 * self.width, dtype=torch.long)
        for index, part in enumerate(QKV_PARTS):
            order[self.part_rows(part)] = torch.arange(index * self.width, (index + 1) * self.width)
        return order


class Backbone(ABC):
    """The answers for one kind of image encoder (module docstring). Stateless: one instance each."""

    name: ClassVar[str]
    encoder_type: ClassVar[type[nn.Module]]
    embedding_stride: ClassVar[int]  # input pixels per embedding cell
    # The most a method's *default* learning rate may be on this encoder (None: no cap). An lr the
    # user gives is never changed.
    learning_rate_cap: ClassVar[float | None] = None
    # The mask decoder's default learning rate on this encoder (None: the method's lr).
    decoder_learning_rate: ClassVar[float | None] = None
    # Whether training on a CPU fixes glibc's malloc thresholds (medsaga.train.allocator).
    tune_cpu_malloc: ClassVar[bool] = True

    @abstractmethod
    def attention_layers(self, encoder: nn.Module) -> list[AttentionLayer]:
        """Every attention layer, in forward order."""

    @abstractmethod
    def linear_layers(self, encoder: nn.Module) -> list[tuple[str, str, nn.Module]]:
        """``(name inside the encoder, role, module)`` of the blocks' projections, in forward order;
        ``role`` is one of :data:`LINEAR_ROLES`. The module is a ``nn.Linear`` unless a method
        replaced it."""

    @abstractmethod
    def decomposable_patterns(self) -> tuple[str, ...]:
        """Name patterns (``fnmatch``) of the convolutions and linears SAM-PARSER decomposes by default."""

    @abstractmethod
    def blocks(self, encoder: nn.Module) -> list[nn.Module]:
        """The units activation checkpointing wraps, in forward order."""

    def normalize(self, sam: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` in [0, 1] → what the encoder takes (default: unchanged)."""
        return images

    def statistics_layers(self, encoder: nn.Module) -> list[nn.Module]:
        """The encoder's BatchNorm layers (kept in eval mode, module docstring)."""
        return [module for module in encoder.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]

    def embedding_shape(self, encoder: nn.Module) -> tuple[int, int, int]:
        """``(256, S/stride, S/stride)``: one image's embedding at the encoder's input size."""
        grid = int(encoder.img_size) // self.embedding_stride
        return EMBEDDING_CHANNELS, grid, grid


class VitBackbone(Backbone):
    """SAM's ``ImageEncoderViT``: ``blocks.{i}`` with ``attn.qkv``/``attn.proj``, ``mlp.lin1``/``lin2``."""

    name = "vit"
    encoder_type = sam_modeling().ImageEncoderViT
    embedding_stride = 16

    def attention_layers(self, encoder: nn.Module) -> list[AttentionLayer]:
        return [AttentionLayer(f"blocks.{index}.attn", block.attn, int(block.norm1.normalized_shape[0]),
                               int(block.attn.num_heads), head_major=False, window=int(block.window_size))
                for index, block in enumerate(encoder.blocks)]

    def linear_layers(self, encoder: nn.Module) -> list[tuple[str, str, nn.Module]]:
        layers = []
        for index, block in enumerate(encoder.blocks):
            for role, owner, attribute in (("qkv", "attn", "qkv"), ("proj", "attn", "proj"),
                                           ("lin1", "mlp", "lin1"), ("lin2", "mlp", "lin2")):
                layers.append((f"blocks.{index}.{owner}.{attribute}", role,
                               getattr(getattr(block, owner), attribute)))
        return layers

    def decomposable_patterns(self) -> tuple[str, ...]:
        # The four linears of every block, the 16 x 16 patch embedding, the neck's two convolutions.
        return ("blocks.*.attn.qkv", "blocks.*.attn.proj", "blocks.*.mlp.lin1", "blocks.*.mlp.lin2",
                "patch_embed.proj", "neck.0", "neck.2")

    def blocks(self, encoder: nn.Module) -> list[nn.Module]:
        return list(encoder.blocks)

    def normalize(self, sam: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Per-channel standardised in 0..255 units, as the official checkpoints expect."""
        return (images * 255.0 - sam.pixel_mean) / sam.pixel_std


class TinyVitBackbone(Backbone):
    """LiteMedSAM's TinyViT (:mod:`medsaga.model.tiny_vit`): ``layers.{s}.blocks.{i}`` (stage 0:
    MBConvs; stages 1-3: attention blocks with ``attn.qkv``/``attn.proj``, ``mlp.fc1``/``fc2``),
    patch mergings ``layers.{s}.downsample``; input in [0, 1] as it is."""

    name = "tiny_vit"
    encoder_type = TinyViT
    embedding_stride = 4
    # Measured (sample_data, 5 shots, 128 px, decoder only on cached embeddings): at SAMed's 5e-3
    # the prompt-free head fell into predicting background everywhere and stayed there for 400
    # steps (validation Dice 0.00); at 1e-3 it reached 0.77 after 300. LiteMedSAM's decoder was
    # trained with box prompts, and its pretrained background token starts at logits near -22.
    learning_rate_cap = 1e-3
    # ... and the new head needs that step whatever the encoder's: at the 1e-4 of SAM-PARSER's,
    # full fine-tuning's and Conv-LoRA's defaults it was still all-background after 200 steps
    # (MALF, 1 shot, 128 px: Dice 0.00 for every class), as the decoder alone had been at 5e-3.
    decoder_learning_rate = 1e-3
    tune_cpu_malloc = False  # measured in medsaga.train.allocator: twice the step time for 21 % less RSS

    def _attention_blocks(self, encoder: nn.Module) -> list[tuple[str, nn.Module]]:
        return [(name, module) for name, module in encoder.named_modules() if isinstance(module, TinyViTBlock)]

    def attention_layers(self, encoder: nn.Module) -> list[AttentionLayer]:
        return [AttentionLayer(f"{name}.attn", block.attn, int(block.attn.norm.normalized_shape[0]),
                               int(block.attn.num_heads), head_major=True, window=int(block.window_size))
                for name, block in self._attention_blocks(encoder)]

    def linear_layers(self, encoder: nn.Module) -> list[tuple[str, str, nn.Module]]:
        layers = []
        for name, block in self._attention_blocks(encoder):
            for role, owner, attribute in (("qkv", "attn", "qkv"), ("proj", "attn", "proj"),
                                           ("lin1", "mlp", "fc1"), ("lin2", "mlp", "fc2")):
                layers.append((f"{name}.{owner}.{attribute}", role, getattr(getattr(block, owner), attribute)))
        return layers

    def decomposable_patterns(self) -> tuple[str, ...]:
        # Every convolution (patch embedding, MBConvs, patch mergings, local convs, neck) and every
        # linear (qkv, proj, fc1, fc2): what "the weights of the encoder" means for TinyViT.
        return ("*",)

    def blocks(self, encoder: nn.Module) -> list[nn.Module]:
        units: list[nn.Module] = [encoder.patch_embed]
        for stage in encoder.layers:
            units.extend(stage.blocks)
            if stage.downsample is not None:
                units.append(stage.downsample)
        return units


WRAPPED_ENCODER = "wrapped_encoder"  # attribute of a module that holds an encoder (the adapter's wrapper)


def base_encoder(encoder: nn.Module) -> nn.Module:
    """``encoder`` itself, or the encoder a method's wrapper holds (its ``wrapped_encoder``)."""
    while hasattr(encoder, WRAPPED_ENCODER):
        encoder = getattr(encoder, WRAPPED_ENCODER)
    return encoder


def backbone_of(encoder: nn.Module) -> Backbone:
    """The :class:`Backbone` for ``encoder`` (or for the encoder a wrapper holds), among the
    registered model types' (:mod:`medsaga.model.registry`)."""
    from medsaga.model.registry import backbones

    encoder = base_encoder(encoder)
    for backbone in backbones():
        if isinstance(encoder, backbone.encoder_type):
            return backbone
    raise TypeError(f"no backbone protocol for an image encoder of type {type(encoder).__name__}")


def freeze_statistics(encoder: nn.Module) -> None:
    """Put the encoder's BatchNorm layers in eval mode (their running statistics; module docstring)."""
    encoder = base_encoder(encoder)
    for layer in backbone_of(encoder).statistics_layers(encoder):
        layer.eval()

"""The SAM builder: official layouts, the tiny model, input sizes and class counts."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from medsaga.errors import InputError
from medsaga.model.build import ENCODER_SPECS, build_sam, check_image_size, encoder_spec, model_types
from medsaga.model.sam_import import sam_modeling


def shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}


@pytest.mark.parametrize("model_type", ["vit_b", "vit_l", "vit_h"])
def test_official_types_match_segment_anythings_own_builder(model_type: str) -> None:
    # segment-anything's build_sam.py needs only torch; it is importable once sam_modeling() has
    # registered the bare package (its __init__, which imports torchvision, never runs). Built on
    # the meta device and without a checkpoint: names and shapes, no memory, no file read.
    sam_modeling()
    official_builders = importlib.import_module("segment_anything.build_sam").sam_model_registry
    with torch.device("meta"):
        official = official_builders[model_type]()
    ours = build_sam(model_type, num_classes=3, image_size=1024, device="meta")
    assert shapes(ours) == shapes(official)
    assert ours.image_encoder.blocks[0].window_size == 14
    assert [i for i, block in enumerate(ours.image_encoder.blocks) if block.window_size == 0] == \
        list(ENCODER_SPECS[model_type].global_attn_indexes)
    assert torch.equal(ours.pixel_mean, torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1))


def test_tiny_is_small_with_one_global_block_and_the_official_decoder() -> None:
    spec = encoder_spec("tiny")
    assert 96 <= spec.embed_dim <= 192 and 2 <= spec.depth <= 4 and len(spec.global_attn_indexes) == 1
    tiny = build_sam("tiny", num_classes=3, image_size=256)
    official = build_sam("vit_b", num_classes=3, image_size=256, device="meta")
    decoder_shapes = {k: v for k, v in shapes(tiny).items() if not k.startswith("image_encoder.")}
    assert decoder_shapes == {k: v for k, v in shapes(official).items() if not k.startswith("image_encoder.")}
    encoder_params = sum(p.numel() for p in tiny.image_encoder.parameters())
    assert encoder_params < 1_000_000


@pytest.mark.parametrize("num_classes", [1, 3, 7])
def test_decoder_has_one_mask_token_per_class_plus_background(num_classes: int) -> None:
    sam = build_sam("tiny", num_classes=num_classes, image_size=256)
    decoder = sam.mask_decoder
    assert decoder.num_mask_tokens == num_classes + 1
    assert decoder.mask_tokens.weight.shape == (num_classes + 1, 256)
    assert len(decoder.output_hypernetworks_mlps) == num_classes + 1
    assert decoder.iou_prediction_head.layers[-1].out_features == num_classes + 1


@pytest.mark.parametrize("image_size", [256, 512, 1024, 768, 48])
def test_any_multiple_of_16_sets_the_grids(image_size: int) -> None:
    sam = build_sam("vit_b", num_classes=2, image_size=image_size, device="meta")
    grid = image_size // 16
    assert sam.image_encoder.img_size == image_size
    assert sam.image_encoder.pos_embed.shape == (1, grid, grid, 768)
    assert sam.image_encoder.blocks[2].attn.rel_pos_h.shape == (2 * grid - 1, 64)  # global block
    assert sam.image_encoder.blocks[0].attn.rel_pos_h.shape == (27, 64)  # windowed: 2·14 − 1
    assert sam.prompt_encoder.image_embedding_size == (grid, grid)
    assert check_image_size(image_size) == image_size
    assert check_image_size(np.int64(image_size)) == image_size  # e.g. a size read from an array


@pytest.mark.parametrize("bad", [0, -256, 100, 250, 1000, "256", 256.0, True])
def test_other_image_sizes_are_refused(bad: object) -> None:
    with pytest.raises(InputError, match="multiple of 16"):
        build_sam("tiny", num_classes=1, image_size=bad)  # type: ignore[arg-type]


def test_unknown_type_and_bad_class_count_are_refused() -> None:
    with pytest.raises(InputError, match="unknown model type .vit_x.*vit_b, vit_l, vit_h, tiny, litemedsam"):
        build_sam("vit_x", num_classes=1)
    with pytest.raises(InputError, match="positive integer"):
        build_sam("tiny", num_classes=0, image_size=256)
    assert model_types() == ("vit_b", "vit_l", "vit_h", "tiny", "litemedsam")


def test_meta_build_allocates_nothing_but_keeps_pixel_statistics_real() -> None:
    sam = build_sam("vit_h", num_classes=3, device="meta")
    assert all(p.is_meta for p in sam.parameters())
    # Not in any state dict, so a checkpoint loaded with assign=True could never fill them.
    assert not sam.pixel_mean.is_meta and not sam.pixel_std.is_meta

"""Checkpoint reading, detection, resizing, mask-head fitting and strict loading.

State dicts come from the official architecture itself (same names and shapes as Meta's files):
vit_l and vit_h on the meta device (shapes only, no memory), vit_b and tiny for real.
"""

from __future__ import annotations

import pickle
import struct
from functools import lru_cache
from pathlib import Path

import pytest
import torch

from medsaga.errors import InputError
from medsaga.model.build import ENCODER_SPECS, build_sam
from medsaga.model.checkpoint import (
    build_sam_from_checkpoint,
    detect_model_type,
    load_checkpoint,
    load_weights,
    read_state_dict,
    validate_state_dict,
)
from medsaga.model.mask_heads import mask_head_sources
from medsaga.model.resize import resize_pos_embed, resize_rel_pos

OFFICIAL = ("vit_b", "vit_l", "vit_h")
HYPER = "mask_decoder.output_hypernetworks_mlps"


@lru_cache(maxsize=None)
def meta_official(model_type: str) -> dict[str, torch.Tensor]:
    """An official-layout state dict at 1024 pixels, 4 mask tokens, on the meta device."""
    return build_sam(model_type, num_classes=3, image_size=1024, device="meta").state_dict()


@lru_cache(maxsize=4)
def filled(model_type: str, *, image_size: int = 1024, num_classes: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """A real state dict with every entry random (pos_embed and rel_pos are zeros at init).

    Cached (vit_b's takes a second to make): callers must not modify it.
    """
    generator = torch.Generator().manual_seed(seed)
    sam = build_sam(model_type, num_classes=num_classes, image_size=image_size)
    return {k: torch.randn(v.shape, generator=generator) for k, v in sam.state_dict().items()}


def global_blocks(model_type: str) -> tuple[int, ...]:
    return ENCODER_SPECS[model_type].global_attn_indexes


# ---------------------------------------------------------------------------------------------
# Official layouts at 1024, 512, 256


@pytest.mark.parametrize("model_type", OFFICIAL)
def test_detects_type_from_shapes(model_type: str) -> None:
    assert detect_model_type(meta_official(model_type)) == model_type
    # The input size does not enter: a 256-pixel state dict is still recognised.
    small = build_sam(model_type, num_classes=1, image_size=256, device="meta").state_dict()
    assert detect_model_type(small) == model_type


@pytest.mark.parametrize("image_size", [1024, 512, 256])
@pytest.mark.parametrize("model_type", OFFICIAL)
def test_official_layout_loads_strictly_at_each_size(model_type: str, image_size: int) -> None:
    model = build_sam(model_type, num_classes=3, image_size=image_size, device="meta")
    report = load_weights(model, meta_official(model_type))  # meta model: assign=True
    grid, spec = image_size // 16, ENCODER_SPECS[model_type]
    encoder = model.image_encoder
    assert encoder.pos_embed.shape == (1, grid, grid, spec.embed_dim)
    for index, block in enumerate(encoder.blocks):
        expected = 2 * grid - 1 if index in spec.global_attn_indexes else 27
        assert block.attn.rel_pos_h.shape == block.attn.rel_pos_w.shape == (expected, spec.head_dim)
    assert report.model_type == model_type and report.source_image_size == 1024
    assert report.image_size == image_size
    if image_size == 1024:
        assert report.resized == ()
    else:
        assert set(report.resized) == {"image_encoder.pos_embed"} | {
            f"image_encoder.blocks.{i}.attn.rel_pos_{axis}" for i in spec.global_attn_indexes for axis in "hw"}
    assert report.mask_head_sources == (0, 1, 2, 3)


@pytest.mark.parametrize("model_type", OFFICIAL)
def test_strictness_missing_extra_and_misshapen_keys_fail(model_type: str) -> None:
    state = meta_official(model_type)
    model = build_sam(model_type, num_classes=3, image_size=512, device="meta")

    missing = {k: v for k, v in state.items() if k != "image_encoder.neck.0.weight"}
    with pytest.raises(InputError, match=r"1 missing keys \(image_encoder\.neck\.0\.weight\)"):
        load_weights(model, missing)

    extra = dict(state, **{"image_encoder.blocks.0.attn.extra": torch.zeros(1)})
    with pytest.raises(InputError, match=r"1 unexpected keys \(image_encoder\.blocks\.0\.attn\.extra\)"):
        load_weights(model, extra)

    misshapen = dict(state, **{"mask_decoder.output_upscaling.0.bias": torch.zeros(63, device="meta")})
    with pytest.raises(InputError, match=r"shape mismatches \(mask_decoder\.output_upscaling\.0\.bias: "
                                         r"file \(63,\) vs model \(64,\)\)"):
        load_weights(model, misshapen)

    # A windowed block's table is never resized, so a wrong one is reported, not bent into shape.
    windowed = 0
    assert windowed not in global_blocks(model_type)
    bent = dict(state, **{f"image_encoder.blocks.{windowed}.attn.rel_pos_h":
                          torch.zeros(127, ENCODER_SPECS[model_type].head_dim, device="meta")})
    with pytest.raises(InputError, match="shape mismatches"):
        load_weights(model, bent)


def test_a_file_of_another_type_is_refused() -> None:
    model = build_sam("vit_b", num_classes=3, device="meta")
    with pytest.raises(InputError, match="holds vit_l weights but the model is vit_b"):
        load_weights(model, meta_official("vit_l"))


def test_vit_b_at_1024_is_bit_identical_to_the_file() -> None:
    state = filled("vit_b")
    model = build_sam("vit_b", num_classes=3, image_size=1024)
    report = load_weights(model, state)  # real model: copied in (assign=False)
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key
        assert loaded[key].data_ptr() != value.data_ptr()  # copied, not aliased
    assert report.resized == () and report.describe() == ["model type vit_b"]


@pytest.mark.parametrize("image_size", [512, 256])
def test_vit_b_resized_for_real_and_the_rest_untouched(image_size: int) -> None:
    state = filled("vit_b")
    model = build_sam("vit_b", num_classes=3, image_size=image_size)
    report = load_weights(model, state)
    loaded, grid = model.state_dict(), image_size // 16
    assert torch.equal(loaded["image_encoder.pos_embed"], resize_pos_embed(state["image_encoder.pos_embed"], grid))
    for block in global_blocks("vit_b"):
        key = f"image_encoder.blocks.{block}.attn.rel_pos_w"
        assert torch.equal(loaded[key], resize_rel_pos(state[key], 2 * grid - 1))
    for key, value in state.items():
        if key not in report.resized:
            assert torch.equal(loaded[key], value), key
    if image_size == 256:  # the resized model runs (once: vit_b on a CPU is slow)
        with torch.no_grad():
            embeddings = model.image_encoder(torch.zeros(1, 3, image_size, image_size))
        assert embeddings.shape == (1, 256, grid, grid)


# ---------------------------------------------------------------------------------------------
# The interpolation itself


def _field(grid: int) -> torch.Tensor:
    """(1, grid, grid, 2): a linear ramp and a smooth wave, sampled at pixel centres of [0, 1]²."""
    centres = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    wave = torch.sin(2 * torch.pi * x) * torch.cos(torch.pi * y)
    return torch.stack([2 * x - 3 * y + 1, wave], dim=-1)[None].float()


def test_pos_embed_of_a_smooth_field_is_resampled_at_the_new_pixel_centres() -> None:
    source = _field(64)
    at_256 = resize_pos_embed(source, 16)
    # 64 → 16: every bicubic tap lies inside the grid, and the cubic kernel reproduces linear
    # functions exactly; the wave is matched to its curvature error.
    assert at_256.shape == (1, 16, 16, 2)
    torch.testing.assert_close(at_256[..., 0], _field(16)[..., 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(at_256[..., 1], _field(16)[..., 1], atol=2e-3, rtol=0)
    # 64 → 32: the border rows' taps are clamped at the edge, the interior is exact for the ramp.
    at_512 = resize_pos_embed(source, 32)
    inner = (slice(None), slice(1, -1), slice(1, -1))
    torch.testing.assert_close(at_512[inner][..., 0], _field(32)[inner][..., 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(at_512[..., 1], _field(32)[..., 1], atol=1.5e-2, rtol=0)
    assert resize_pos_embed(source, 64) is source  # same grid: untouched


def test_rel_pos_of_a_ramp_is_resampled_linearly() -> None:
    ramp = torch.arange(127, dtype=torch.float32)[:, None].expand(127, 64).contiguous()  # value = offset index
    for length in (31, 63):
        resized = resize_rel_pos(ramp, length)
        assert resized.shape == (length, 64)
        expected = (torch.arange(length) + 0.5) * 127 / length - 0.5  # pixel-centre mapping
        torch.testing.assert_close(resized[:, 0], expected, atol=1e-4, rtol=0)
        torch.testing.assert_close(resized[:, 17], expected, atol=1e-4, rtol=0)


def test_half_precision_tables_resize_in_float_and_keep_their_dtype() -> None:
    table = _field(64).half()
    resized = resize_pos_embed(table, 16)
    assert resized.dtype == torch.float16
    torch.testing.assert_close(resized.float(), resize_pos_embed(_field(64), 16), atol=2e-3, rtol=0)


# ---------------------------------------------------------------------------------------------
# Mask heads for num_classes + 1 masks


@pytest.mark.parametrize("num_classes", [1, 2, 3, 4, 6, 9])
def test_mask_heads_take_pretrained_heads_cyclically(num_classes: int) -> None:
    source = filled("tiny", image_size=256, seed=2)  # official decoder: 4 mask tokens
    model = build_sam("tiny", num_classes=num_classes, image_size=256)
    report = load_weights(model, source)
    sources = mask_head_sources(num_classes + 1, 4)
    assert report.mask_head_sources == sources == tuple(j % 4 for j in range(num_classes + 1))
    loaded = model.state_dict()
    for target, origin in enumerate(sources):
        assert torch.equal(loaded["mask_decoder.mask_tokens.weight"][target],
                           source["mask_decoder.mask_tokens.weight"][origin])
        for part in ("layers.0.weight", "layers.1.bias", "layers.2.weight", "layers.2.bias"):
            assert torch.equal(loaded[f"{HYPER}.{target}.{part}"], source[f"{HYPER}.{origin}.{part}"])
        for part in ("weight", "bias"):
            key = f"mask_decoder.iou_prediction_head.layers.2.{part}"
            assert torch.equal(loaded[key][target], source[key][origin])
    # Everything else in the decoder is the file's.
    assert torch.equal(loaded["mask_decoder.iou_token.weight"], source["mask_decoder.iou_token.weight"])
    assert torch.equal(loaded["mask_decoder.iou_prediction_head.layers.0.weight"],
                       source["mask_decoder.iou_prediction_head.layers.0.weight"])
    if num_classes + 1 != 4:
        assert any("mask heads fitted from 4 to" in line for line in report.describe())


def test_repeated_heads_are_independent_tensors_even_when_assigned() -> None:
    source = filled("tiny", image_size=256, seed=3)
    model = build_sam("tiny", num_classes=5, image_size=256, device="meta")
    load_weights(model, source, assign=True)
    mlps = model.mask_decoder.output_hypernetworks_mlps
    assert torch.equal(mlps[4].layers[0].weight, mlps[0].layers[0].weight)  # 4 took head 0
    assert mlps[4].layers[0].weight.data_ptr() != mlps[0].layers[0].weight.data_ptr()  # not tied


def test_a_checkpoint_with_more_heads_loads_into_fewer() -> None:
    six_classes = filled("tiny", image_size=256, num_classes=6, seed=4)
    model = build_sam("tiny", num_classes=2, image_size=256)
    report = load_weights(model, six_classes)
    assert report.mask_head_sources == (0, 1, 2) and report.source_num_masks == 7
    assert torch.equal(model.mask_decoder.mask_tokens.weight, six_classes["mask_decoder.mask_tokens.weight"][:3])


# ---------------------------------------------------------------------------------------------
# Files


def test_file_roundtrip_any_size_to_any_size(tmp_path: Path) -> None:
    path = tmp_path / "tiny_256.pth"
    state = filled("tiny", image_size=256, seed=5)
    torch.save(state, path)
    model = build_sam("tiny", num_classes=5, image_size=512)
    report = load_checkpoint(model, path)
    assert report.source_image_size == 256 and report.image_size == 512
    assert "image_encoder.pos_embed" in report.resized
    assert torch.equal(model.image_encoder.patch_embed.proj.weight, state["image_encoder.patch_embed.proj.weight"])


def test_a_file_loads_bit_identically_at_1024(tmp_path: Path) -> None:
    path = tmp_path / "tiny_1024.pth"
    torch.save(filled("tiny", image_size=1024, seed=8), path)
    model = build_sam("tiny", num_classes=3, image_size=1024)
    report = load_checkpoint(model, path)
    on_disk = torch.load(path, map_location="cpu", weights_only=True)
    loaded = model.state_dict()
    assert report.resized == () and loaded.keys() == on_disk.keys()
    assert all(torch.equal(loaded[key], value) for key, value in on_disk.items())


def test_build_from_checkpoint_allocates_once_and_runs(tmp_path: Path) -> None:
    path = tmp_path / "tiny.pth"
    state = filled("tiny", image_size=1024, seed=6)
    torch.save(state, path)
    sam, report = build_sam_from_checkpoint(path, num_classes=2, image_size=256)
    assert report.model_type == "tiny"
    tensors = list(sam.parameters()) + list(sam.buffers())
    assert not any(t.is_meta for t in tensors) and all(t.dtype == torch.float32 for t in tensors)
    assert all(p.requires_grad for p in sam.parameters())
    assert torch.equal(sam.image_encoder.neck[0].weight, state["image_encoder.neck.0.weight"])
    with torch.no_grad():
        assert sam.image_encoder(torch.zeros(1, 3, 256, 256)).shape == (1, 256, 16, 16)
    with pytest.raises(InputError, match="expected a vit_b checkpoint, found tiny weights"):
        build_sam_from_checkpoint(path, num_classes=2, image_size=256, model_type="vit_b")


@pytest.mark.parametrize("wrapper", ["model", "state_dict"])
def test_wrapped_training_checkpoints_are_unwrapped_and_say_so(tmp_path: Path, wrapper: str) -> None:
    path = tmp_path / "train.pth"
    state = filled("tiny", image_size=256, seed=7)
    torch.save({wrapper: state, "epoch": 12, "optimizer": {"lr": 1e-4}}, path)
    loaded, found_wrapper = read_state_dict(path)
    assert found_wrapper == wrapper and loaded.keys() == state.keys()
    report = load_checkpoint(build_sam("tiny", num_classes=3, image_size=256), path)
    assert report.unwrapped_from == wrapper
    assert f"state dict unwrapped from the checkpoint's {wrapper!r} entry" in report.describe()


class _NeedsCode:
    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (Path.cwd, ())


def _safetensors_like(path: Path) -> None:
    header = b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0\0\0\0")


@pytest.mark.parametrize("make, fragments", [
    (lambda p: torch.save(filled("tiny", image_size=256), p) or p.write_bytes(p.read_bytes()[:100_000]),
     ["truncated or corrupt PyTorch zip checkpoint"]),
    (lambda p: p.write_text("model weights, honest\n"), ["not a PyTorch checkpoint", "neither a zip archive nor"]),
    (lambda p: p.write_bytes(b""), ["empty file (0 bytes)"]),
    (lambda p: torch.save({"x": _NeedsCode()}, p), ["need code from the file", "weights_only=True", "GLOBAL"]),
    (lambda p: p.write_bytes(pickle.dumps({"x": _NeedsCode()}, protocol=2)), ["need code from the file", "GLOBAL"]),
    (lambda p: p.write_bytes(pickle.dumps({"x": torch.zeros(1)})),
     ["plain Python pickle (protocol", "not a torch.save checkpoint"]),
    (lambda p: torch.save(filled("tiny", image_size=256), p, _use_new_zipfile_serialization=False)
     or p.write_bytes(p.read_bytes()[:50_000]), ["truncated or corrupt PyTorch (legacy pickle) checkpoint"]),
    (lambda p: torch.save([torch.zeros(1)], p), ["expected a state dict", "found a list"]),
    (lambda p: torch.save({"epoch": 3, "w": torch.zeros(1)}, p), ["entry 'epoch' holds a int"]),
    (lambda p: torch.save(torch.nn.Linear(2, 2).state_dict(), p),
     ["not a SAM state dict", "'image_encoder.patch_embed.proj.weight'", "weight, bias"]),
    (_safetensors_like, ["safetensors file"]),
])
def test_bad_files_give_one_clear_error(tmp_path: Path, make, fragments: list[str]) -> None:
    path = tmp_path / "bad.pth"
    make(path)
    model = build_sam("tiny", num_classes=3, image_size=256)
    with pytest.raises(InputError) as caught:
        load_checkpoint(model, path)
    message = str(caught.value)
    assert message.startswith(str(path)) and "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        read_state_dict(tmp_path / "absent.pth")
    with pytest.raises(InputError, match="is a folder"):
        read_state_dict(tmp_path)


def test_shapes_matching_no_type_are_named() -> None:
    state = dict(meta_official("vit_b"))
    for key in [k for k in state if k.startswith("image_encoder.blocks.11.")]:
        del state[key]  # 11 blocks of width 768
    with pytest.raises(InputError, match=r"match no known model type: found patch_embed width 768, "
                                         r"11 encoder blocks, head width 64; known: vit_b \(width 768, 12 blocks\)"):
        detect_model_type(state)


@pytest.mark.parametrize("model_type", OFFICIAL)
def test_validate_checks_the_whole_layout_without_a_model(model_type: str) -> None:
    assert validate_state_dict(meta_official(model_type)) == model_type
    broken = {k: v for k, v in meta_official(model_type).items() if not k.endswith("neck.1.bias")}
    with pytest.raises(InputError, match="missing keys"):
        validate_state_dict(broken)

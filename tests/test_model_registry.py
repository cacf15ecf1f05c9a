"""The model-type registry (issue 28, part 1): a third encoder is one ``register`` call.

A small convolutional encoder, unknown to medsaga, is registered here (and removed afterwards) and
goes through ``medsaga finetune`` and ``medsaga predict`` (in-process: the registration lives in
this process), from random weights and from a checkpoint file whose type is recognised by its
signature. Then: every command that loads a model (finetune, select, predict, the library) picks
the same default input size for a checkpoint given without ``--model``, and the two habits the
registry replaced (assigning ``sam.image_encoder``, testing a model type's name) stay gone.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from medsaga.errors import InputError
from medsaga.model.backbone import Backbone, backbone_of
from medsaga.model.build import build_sam, check_model_type, default_image_size, model_types
from medsaga.model.checkpoint import build_sam_from_checkpoint, detect_model_type, validate_state_dict
from medsaga.model.load import choose_weights, load_segmenter
from medsaga.model.registry import MODEL_TYPES, ModelType, get_model_type, register, unregister
from medsaga.model.segmenter import SamSegmenter
from tests.cli_helpers import medsaga_runner
from tests.data_paths import ROOT
from tests.dataset_factory import make_nnunet, phantom, write_nifti

CONV = "conv_test"
CONV_SIZE = 48  # the fake type's default input size: no built-in type has it

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------
# The third model type: everything about it is in this section


class ConvBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, width, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + nn.functional.gelu(self.norm(self.conv(x)))


class ConvEncoder(nn.Module):
    """``(B, 3, S, S)`` → ``(B, 256, S/8, S/8)``: an 8 × 8 patch convolution, two residual blocks, a neck."""

    def __init__(self, img_size: int) -> None:
        super().__init__()
        self.img_size = img_size
        self.stem = nn.Conv2d(3, 32, kernel_size=8, stride=8)
        self.blocks = nn.ModuleList(ConvBlock(32) for _ in range(2))
        self.neck = nn.Conv2d(32, 256, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.neck(x)


class ConvBackbone(Backbone):
    """The protocol for :class:`ConvEncoder`: no attention, no linears, two blocks."""

    name = "conv"
    encoder_type = ConvEncoder
    embedding_stride = 8

    def attention_layers(self, encoder: nn.Module) -> list:
        return []

    def linear_layers(self, encoder: nn.Module) -> list:
        return []

    def decomposable_patterns(self) -> tuple[str, ...]:
        return ("*",)

    def blocks(self, encoder: nn.Module) -> list[nn.Module]:
        return list(encoder.blocks)


CONV_TYPE = ModelType(
    name=CONV, build_encoder=ConvEncoder, backbone=ConvBackbone(), default_image_size=CONV_SIZE,
    pixel_mean=(0.0, 0.0, 0.0), pixel_std=(255.0, 255.0, 255.0),
    marker="image_encoder.stem.weight", describe=f"{CONV} (a test encoder)", profiled_sizes=(32, 48, 64),
)


@pytest.fixture
def conv_type() -> ModelType:
    """:data:`CONV_TYPE`, registered for the test only."""
    register(CONV_TYPE)
    try:
        yield CONV_TYPE
    finally:
        unregister(CONV)


# ---------------------------------------------------------------------------------------------
# Helpers


def _read_config(run: Path) -> dict:
    import json

    return json.loads((run / "config.json").read_text())


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_nnunet(tmp_path / "DATA", n_cases=3)


@pytest.fixture
def scan(tmp_path: Path) -> Path:
    return write_nifti(tmp_path / "scan.nii.gz", phantom(seed=7)[0])


def _predicts(run: Path, scan: Path, out: Path) -> np.ndarray:
    code, _, err = medsaga_runner("predict", run, scan, "--out", out, "--device", "cpu")
    assert code == 0, err
    written = nib.load(out / scan.name)
    original = nib.load(scan)
    assert written.shape == original.shape and np.allclose(written.affine, original.affine)
    labels = np.asarray(written.dataobj)
    assert set(np.unique(labels)) <= {0, 1, 2}
    return labels


# ---------------------------------------------------------------------------------------------
# finetune → predict on the registered type


def test_a_registered_type_trains_and_predicts_from_random_weights(tmp_path, conv_type, data, scan) -> None:
    run = tmp_path / "run"
    code, _, err = medsaga_runner("finetune", data, "--shots", "1", "--model", CONV, "--random-init", "--method",
                                  "decoder", "--steps", "2", "--batch-size", "2", "--out", run, "--device", "cpu")
    assert code == 0, err
    config = _read_config(run)
    # The size no --image-size asked for is the registry entry's.
    assert config["model"] == {"type": CONV, "image_size": CONV_SIZE, "num_classes": 2, "checkpoint": None}
    _predicts(run, scan, tmp_path / "predictions")


def test_a_registered_type_is_recognised_in_a_checkpoint(tmp_path, conv_type, data, scan) -> None:
    torch.manual_seed(0)
    state = build_sam(CONV, num_classes=3, image_size=64).state_dict()
    path = tmp_path / "conv.pth"
    torch.save(state, path)
    assert detect_model_type(state) == CONV and validate_state_dict(state) == CONV

    run = tmp_path / "run"
    # No --model, no --image-size: the type is read from the file, the size is its type's default.
    code, _, err = medsaga_runner("finetune", data, "--shots", "1", "--checkpoint", path, "--method", "full",
                                  "--steps", "2", "--batch-size", "2", "--out", run, "--device", "cpu")
    assert code == 0, err
    model = _read_config(run)["model"]
    assert (model["type"], model["image_size"]) == (CONV, CONV_SIZE)
    assert model["checkpoint"]["path"] == str(path.resolve())
    first = _predicts(run, scan, tmp_path / "first")
    # The rebuilt model is the trained one: predicting twice gives the same labels.
    assert np.array_equal(first, _predicts(run, scan, tmp_path / "second"))


def test_registering_and_removing_a_type(conv_type) -> None:
    assert model_types()[-1] == CONV and check_model_type(CONV) == CONV
    assert get_model_type(CONV) is conv_type and default_image_size(CONV) == CONV_SIZE
    model = SamSegmenter(build_sam(CONV, num_classes=2, image_size=32))
    assert isinstance(backbone_of(model.image_encoder), ConvBackbone)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 3, 16, 16)  # grid 4, masks 4x finer
    # BatchNorm keeps its running statistics in training (the backbone protocol's default).
    assert not model.train().image_encoder.blocks[0].norm.training
    with pytest.raises(ValueError, match="already registered"):
        register(conv_type)
    register(replace(conv_type, default_image_size=64), replace=True)
    assert default_image_size(CONV) == 64


def test_an_unregistered_type_is_unknown_again() -> None:
    register(CONV_TYPE)
    state = build_sam(CONV, num_classes=1, image_size=32, device="meta").state_dict()
    unregister(CONV)
    assert CONV not in MODEL_TYPES
    with pytest.raises(InputError, match=f"unknown model type '{CONV}'; choose one of vit_b, vit_l, vit_h, tiny, "
                                         "litemedsam$"):
        check_model_type(CONV)
    with pytest.raises(InputError, match="not a SAM state dict"):
        detect_model_type(state)


# ---------------------------------------------------------------------------------------------
# One default input size everywhere


def test_every_type_s_default_size_is_its_registry_entry_s() -> None:
    for name, entry in MODEL_TYPES.items():
        assert choose_weights(name, random_init=True).image_size == entry.default_image_size == \
            default_image_size(name)
    assert (default_image_size("litemedsam"), default_image_size("vit_b"), default_image_size("tiny")) == \
        (256, 512, 512)
    # A size given wins; a checkpoint alone leaves it to the file's type.
    assert choose_weights("vit_b", random_init=True, image_size=1024).image_size == 1024
    assert choose_weights(checkpoint="any.pth") == choose_weights(None, "any.pth")
    assert choose_weights(checkpoint="any.pth").image_size is None


@pytest.mark.parametrize("model_type", ["tiny", CONV])
def test_a_checkpoint_without_model_gets_the_same_size_in_every_command(tmp_path, request, data,
                                                                        model_type: str) -> None:
    """finetune, select, predict's loader and the library: the detected type's default size (tiny:
    512, where select used to take 1024; the registered test type: 48)."""
    from medsaga.data.dataset import discover_dataset
    from medsaga.select.run import SelectOptions, _embedder
    from medsaga.train.finetune import FinetuneOptions, _build_model, _resolve_weights

    if model_type == CONV:
        request.getfixturevalue("conv_type")
    expected = MODEL_TYPES[model_type].default_image_size
    path = tmp_path / "weights.pth"
    torch.save(build_sam(model_type, num_classes=3, image_size=64).state_dict(), path)

    options = _resolve_weights(FinetuneOptions(data_dir=data, out=tmp_path / "run", checkpoint=path))
    assert options.model is None and options.image_size is None  # known once the file is read
    model, detected, info = _build_model(options, options.model, 2)
    assert (detected, model.image_size) == (model_type, expected) and info["path"] == str(path.resolve())

    embedder, info = _embedder(SelectOptions(folder=data, shots=1, out=tmp_path / "sel", model=None, checkpoint=path,
                                             cache_dir=None, device="cpu"), discover_dataset(data))
    assert (info["type"], embedder.settings.image_size) == (model_type, expected)

    loaded = load_segmenter(checkpoint=path, num_classes=1)
    assert (loaded.model_type, loaded.image_size, loaded.checkpoint) == (model_type, expected, path)
    assert build_sam_from_checkpoint(path, num_classes=1)[1].image_size == expected
    # --model given too: the same size, and a type the file is not is refused.
    assert load_segmenter(model_type, path, num_classes=1).image_size == expected
    with pytest.raises(InputError, match=f"expected a vit_b checkpoint, found {model_type} weights"):
        load_segmenter("vit_b", path, num_classes=1)


def test_load_segmenter_refusals() -> None:
    with pytest.raises(InputError, match="--random-init builds random weights"):
        load_segmenter("tiny", "x.pth", num_classes=1, random_init=True)
    with pytest.raises(InputError, match="give --model or --checkpoint"):
        load_segmenter(num_classes=1)
    with pytest.raises(InputError, match="--model vit_b has no installed weights"):
        load_segmenter("vit_b", num_classes=1, require_weights=True)
    with pytest.raises(InputError, match="unknown model type 'vit_x'"):
        load_segmenter("vit_x", num_classes=1, random_init=True)
    # Without require_weights a type without packaged weights is random (finetune --model tiny).
    loaded = load_segmenter("tiny", num_classes=1, image_size=32)
    assert loaded.checkpoint is None and loaded.report is None and loaded.image_size == 32


# ---------------------------------------------------------------------------------------------
# The image encoder has one owner; no model type is named outside the registry


class Doubled(nn.Module):
    """A method's wrapper: the encoder it holds stays reachable as ``wrapped_encoder``."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.inner = encoder
        self.img_size = encoder.img_size

    @property
    def wrapped_encoder(self) -> nn.Module:
        return self.inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * self.inner(x)


def test_the_segmenter_replaces_its_image_encoder() -> None:
    model = SamSegmenter(build_sam("tiny", num_classes=1, image_size=32)).eval()
    original = model.image_encoder
    images = torch.rand(1, 3, 32, 32)
    embedding = model.encode(images)
    assert model.replace_image_encoder(Doubled(original)) is original
    assert model.sam.image_encoder is model.image_encoder and model.image_encoder.wrapped_encoder is original
    assert torch.allclose(model.encode(images), 2 * embedding)
    with pytest.raises(TypeError, match="no backbone protocol"):
        model.replace_image_encoder(nn.Identity())
    assert isinstance(model.image_encoder, Doubled)  # a refused encoder replaces nothing


def _sources() -> list[Path]:
    return [path for folder in ("medsaga", "cli") for path in sorted((ROOT / folder).rglob("*.py"))]


def test_only_the_segmenter_assigns_the_image_encoder() -> None:
    assignment = re.compile(r"\.image_encoder\s*=(?!=)|setattr\([^)]*[\"']image_encoder[\"']")
    writers = [f"{path.relative_to(ROOT)}:{number}" for path in _sources()
               for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
               if assignment.search(line)]
    assert [writer.split(":")[0] for writer in writers] == ["medsaga/model/segmenter.py"], writers


def test_no_model_type_is_tested_by_name_outside_the_registry() -> None:
    by_name = re.compile(r"""[=!]=\s*(?:LITEMEDSAM\b|["'](?:litemedsam|vit_[blh]|tiny)["'])"""
                         r"""|(?:LITEMEDSAM\b|["'](?:litemedsam|vit_[blh]|tiny)["'])\s*[=!]="""
                         r"""|TINY_VIT_PATCH_EMBED|BACKBONES\[""")
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}" for path in _sources()
             if path.name != "registry.py"
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
             if by_name.search(line)]
    assert found == []

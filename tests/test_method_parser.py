"""SAM-PARSER (``parser``): only the singular values of the encoder's weights train."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from medsaga.errors import InputError
from medsaga.methods import count_parameters, create_method, load_trained, save_trained
from medsaga.model.backbone import VitBackbone
from medsaga.methods.parser import (ParserConv2d, ParserLinear, ParserMethod, ParserOptions,
                                    kept_rank, reconstructed_layers)
from medsaga.model.build import build_sam
from medsaga.model.segmenter import SamSegmenter
from tests.method_helpers import synthetic_batch, tiny_segmenter, train_steps

LORA_RANK = 4  # SAMed's LoRA: rank 4 on the q and v parts of every block's qkv


def _prepared(options: ParserOptions | None = None,
              dtype: torch.dtype | None = None) -> tuple[SamSegmenter, ParserMethod]:
    model = tiny_segmenter()
    if dtype is not None:
        model = model.to(dtype)
    method = ParserMethod(options)
    method.prepare(model)
    return model, method


@pytest.fixture(scope="module")
def prepared() -> tuple[SamSegmenter, ParserMethod]:
    """A tiny model prepared with the defaults; tests using it must not change it."""
    return _prepared()


def _expected_ranks(model: nn.Module) -> dict[str, int]:
    """``min(out, fan_in)`` of every default layer, from the unprepared encoder's own weights."""
    encoder = model.sam.image_encoder
    names = [f"blocks.{b}.{layer}" for b in range(len(encoder.blocks))
             for layer in ("attn.qkv", "attn.proj", "mlp.lin1", "mlp.lin2")]
    names += ["patch_embed.proj", "neck.0", "neck.2"]
    return {name: min(encoder.get_submodule(name).weight.flatten(1).shape) for name in names}


def _lora_count(embed_dim: int, depth: int) -> int:
    # Two adapters (q and v) per block, each A (r x C) and B (C x r).
    return depth * 2 * LORA_RANK * (embed_dim + embed_dim)


def test_output_is_unchanged_at_initialisation_at_full_rank(prepared: tuple[SamSegmenter, ParserMethod]) -> None:
    images, _ = synthetic_batch()
    with torch.no_grad():
        reference = tiny_segmenter()(images)
        logits = prepared[0](images)
        truncated = _prepared(ParserOptions(rank_fraction=0.5))[0](images)
    assert logits.dtype == torch.float32
    assert (logits - reference).abs().max().item() < 1e-4
    # Below full rank the dropped directions are gone: the output moves at initialisation.
    assert (truncated - reference).abs().max().item() > 1e-2


def test_only_the_singular_values_of_the_encoder_train(prepared: tuple[SamSegmenter, ParserMethod]) -> None:
    model = prepared[0]
    expected = _expected_ranks(tiny_segmenter())
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    encoder_trainable = {n: p.numel() for n, p in trainable.items() if n.startswith("sam.image_encoder.")}
    assert encoder_trainable == {f"sam.image_encoder.{name}.S": rank for name, rank in expected.items()}
    kinds = [type(layer) for layer in reconstructed_layers(model)]
    assert kinds.count(ParserLinear) == 8 and kinds.count(ParserConv2d) == 3
    # Tiny: 4 x 96 per block, 96 (patch embedding), 96 + 256 (neck) = 1216, vs LoRA's 3072.
    s_count = sum(encoder_trainable.values())
    assert s_count == 1216 and _lora_count(96, 2) == 3072
    assert s_count / _lora_count(96, 2) == pytest.approx(0.396, abs=1e-3)
    # The mask decoder trains fully (bar the IoU head), the prompt encoder not at all.
    decoder = model.sam.mask_decoder
    assert all(p.requires_grad for n, p in decoder.named_parameters() if not n.startswith("iou_prediction_head."))
    assert not any(p.requires_grad for p in decoder.iou_prediction_head.parameters())
    assert not any(p.requires_grad for p in model.sam.prompt_encoder.parameters())
    assert count_parameters(model)[0] == sum(p.numel() for p in trainable.values())


def test_vit_b_counts_on_the_meta_device() -> None:
    model = SamSegmenter(build_sam("vit_b", num_classes=3, image_size=1024, device="meta"))
    original_total = count_parameters(model)[1]
    ParserMethod().prepare(model)
    s_count = sum(layer.S.numel() for layer in reconstructed_layers(model))
    assert s_count == 12 * 4 * 768 + 768 + 256 + 256 == 38144
    assert _lora_count(768, 12) == 147456
    assert s_count / _lora_count(768, 12) == pytest.approx(0.2587, abs=1e-4)
    trainable = count_parameters(model)[0]
    assert trainable == s_count + 3925728  # + mask decoder without its IoU head (3 classes)
    assert trainable / original_total == pytest.approx(0.0423, abs=1e-4)


def test_neck_and_patch_embedding_weights_are_not_trainable(prepared: tuple[SamSegmenter, ParserMethod]) -> None:
    """The released code's ``'vector_S' and 'neck' in name`` trains the whole neck: not here."""
    encoder = prepared[0].sam.image_encoder
    for part in (encoder.neck, encoder.patch_embed):
        trainable = [n for n, p in part.named_parameters() if p.requires_grad]
        assert trainable and all(name.endswith(".S") for name in trainable), trainable
        assert not any(isinstance(module, (nn.Conv2d, nn.Linear)) for module in part.modules())
    assert not any(p.requires_grad for p in encoder.neck[1].parameters())  # LayerNorm2d
    assert not encoder.patch_embed.proj.bias.requires_grad


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_coefficients_follow_the_model_dtype(dtype: torch.dtype) -> None:
    model, _ = _prepared(dtype=dtype)
    for layer in reconstructed_layers(model):
        assert layer.S.dtype == layer.U.dtype == layer.V.dtype == dtype
    if dtype == torch.float64:  # the float64 SVD then reproduces the weights to ~1e-15
        images = synthetic_batch()[0].to(dtype)
        with torch.no_grad():  # the encoder only: SAM's prompt encoder makes float32 coordinates
            reference = tiny_segmenter().to(dtype).encode(images)
            assert (model.encode(images) - reference).abs().max().item() < 1e-10


def test_trains_keeps_the_bases_frozen_and_reloads_bit_exactly(tmp_path: Path) -> None:
    model, method = _prepared()
    before = {n: v.detach().clone() for n, v in model.state_dict().items()}
    losses = train_steps(model, method, *synthetic_batch(batch=1), steps=2)
    assert all(torch.isfinite(torch.tensor(losses)))
    after = model.state_dict()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert changed <= trainable  # U, V, biases, norms, neck, position tables: untouched
    assert {n for n in changed if n.startswith("sam.image_encoder.")} == \
        {n for n in trainable if n.startswith("sam.image_encoder.")}  # every S moved
    assert any(n.startswith("sam.mask_decoder.") for n in changed)

    description = save_trained(method, model, tmp_path / "run")
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "run" / "trained.safetensors"))
    assert set(saved) == trainable and description["saved_tensors"] == len(trainable)
    fresh = tiny_segmenter(seed=0)
    reloaded = load_trained(tmp_path / "run", fresh)
    assert reloaded.name == "parser" and reloaded.options == method.options
    fresh_state = fresh.state_dict()
    assert set(fresh_state) == set(after)
    for name, value in after.items():  # U and V included: recomputed bit-identically
        assert torch.equal(value, fresh_state[name]), name


def test_bases_do_not_depend_on_the_thread_count() -> None:
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        first = _prepared()[0]
        torch.set_num_threads(1)
        second = _prepared()[0]
    finally:
        torch.set_num_threads(threads)
    buffers = dict(second.named_buffers())
    for name, value in first.named_buffers():
        assert torch.equal(value, buffers[name]), name


def test_bases_are_orthonormal_sorted_and_sign_canonical(prepared: tuple[SamSegmenter, ParserMethod]) -> None:
    """The convention that lets a reload on another LAPACK build give ``S`` the same meaning."""
    for layer in reconstructed_layers(prepared[0]):
        u, s, v = layer.U.double(), layer.S.detach().double(), layer.V.double()
        eye = torch.eye(s.numel(), dtype=torch.float64)
        assert torch.allclose(u.mT @ u, eye, atol=1e-5) and torch.allclose(v.mT @ v, eye, atol=1e-5)
        assert (s >= 0).all() and (s[:-1] >= s[1:]).all()
        assert (u.gather(0, u.abs().argmax(dim=0, keepdim=True)) > 0).all()


def test_singular_values_get_no_weight_decay(prepared: tuple[SamSegmenter, ParserMethod]) -> None:
    model, method = prepared
    coefficients, others = method.param_groups(model, lr=1e-3, weight_decay=0.1)
    assert coefficients["weight_decay"] == 0.0 and others["weight_decay"] == 0.1
    s_ids = {id(layer.S) for layer in reconstructed_layers(model)}
    assert {id(p) for p in coefficients["params"]} == s_ids
    grouped = [id(p) for group in (coefficients, others) for p in group["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters() if p.requires_grad)


def test_options_select_layers_and_rank() -> None:
    options = create_method("parser", {"layers": ["neck.*"], "rank_fraction": 1}).options
    assert options == ParserOptions(layers=("neck.*",), rank_fraction=1.0)
    assert ParserOptions(layers="neck.0").layers == ("neck.0",)
    assert ParserOptions().layers is None  # the encoder's own list (the backbone protocol's)
    assert VitBackbone().decomposable_patterns() == (
        "blocks.*.attn.qkv", "blocks.*.attn.proj", "blocks.*.mlp.lin1", "blocks.*.mlp.lin2",
        "patch_embed.proj", "neck.0", "neck.2")
    model, _ = _prepared(ParserOptions(layers=("neck.*", "blocks.1.attn.*"), rank_fraction=0.3))
    encoder = model.sam.image_encoder
    assert [type(m) for m in (encoder.neck[0], encoder.neck[2], encoder.blocks[1].attn.qkv,
                              encoder.blocks[1].attn.proj)] == [ParserConv2d] * 2 + [ParserLinear] * 2
    assert isinstance(encoder.blocks[0].attn.qkv, nn.Linear) and isinstance(encoder.blocks[1].mlp.lin1, nn.Linear)
    assert encoder.neck[2].U.shape == (256, kept_rank(256, 0.3)) == (256, 77)
    assert encoder.neck[2].V.shape == (256 * 9, 77)
    assert [kept_rank(10, 0.3), kept_rank(10, 0.01), kept_rank(10, 1.0)] == [3, 1, 10]
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="rank_fraction"):
            ParserOptions(rank_fraction=bad)
    with pytest.raises(ValueError, match="layers"):
        ParserOptions(layers=())
    with pytest.raises(InputError, match=r"\['blocks.\*.attn.qvk'\] match no linear or conv layer"):
        ParserMethod(ParserOptions(layers=("blocks.*.attn.qvk",))).prepare(tiny_segmenter())

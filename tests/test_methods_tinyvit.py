"""Every method on LiteMedSAM's TinyViT, through the backbone protocol: each method's invariant holds
there as it does on SAM's ViT (random weights at 64 px: the invariants do not depend on them).

The invariants of every method on every backbone (gradients reach every trainable parameter, a
reload is bit-exact, the decoder's own learning rate) are in ``tests/test_methods.py``; here are
TinyViT's own (head-major qkv, BatchNorm statistics, every weight decomposable)."""

from __future__ import annotations

import copy
import re
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from medsaga.losses import segmentation_loss
from medsaga.methods import create_method, method_names
from medsaga.methods.base import base_image_encoder
from medsaga.methods.parser import ReconstructedWeight, reconstructed_layers
from medsaga.model.backbone import TinyVitBackbone, backbone_of
from medsaga.model.tiny_vit import TinyViT
from tests.method_helpers import lite_segmenter, synthetic_batch, train_steps

METHODS_DIR = Path(__file__).resolve().parents[1] / "medsaga" / "methods"


def _loss(model: nn.Module, method, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    loss = segmentation_loss(model(images), labels)
    auxiliary = method.auxiliary_loss(model)
    return loss if auxiliary is None else loss + auxiliary


def _statistics(model: nn.Module) -> dict[str, torch.Tensor]:
    encoder = base_image_encoder(model)
    return {name: buffer.clone() for name, buffer in encoder.named_buffers() if "running" in name}


def test_the_backbone_protocol_describes_tinyvit() -> None:
    model = lite_segmenter()
    encoder = model.sam.image_encoder
    backbone = backbone_of(encoder)
    assert isinstance(backbone, TinyVitBackbone) and isinstance(encoder, TinyViT)
    layers = backbone.attention_layers(encoder)
    assert [layer.window for layer in layers] == [7, 7] + [14] * 6 + [7, 7]
    assert [layer.width for layer in layers] == [128] * 2 + [160] * 6 + [320] * 2
    roles = [role for _, role, _ in backbone.linear_layers(encoder)]
    assert roles == ["qkv", "proj", "lin1", "lin2"] * 10
    assert backbone.embedding_shape(encoder) == (256, 16, 16) == tuple(model.encode(torch.rand(1, 3, 64, 64)).shape[1:])
    assert len(backbone.blocks(encoder)) == 1 + 2 + 1 + 2 + 1 + 6 + 1 + 2  # patch embed, blocks, mergings


def test_head_major_rows_are_where_the_attention_reads_q_k_v() -> None:
    """A one-hot input to the qkv output lands in the head and part the protocol names."""
    model = lite_segmenter()
    layer = backbone_of(model.sam.image_encoder).attention_layers(model.sam.image_encoder)[0]
    heads, width = layer.num_heads, layer.width
    head_dim = width // heads
    marker = torch.zeros(3 * width)
    marker[layer.part_rows("k")] = torch.arange(1.0, width + 1)
    # The attention's own split (TinyViT's reshape to (heads, 3, d)) must see 1..C as its keys.
    keys = marker.reshape(heads, 3, head_dim)[:, 1].reshape(-1)
    assert torch.equal(keys, torch.arange(1.0, width + 1))
    order = layer.part_major_order()
    assert order is not None and torch.equal(torch.sort(order).values, torch.arange(3 * width))


@pytest.mark.parametrize("name", method_names())
def test_frozen_batchnorm_statistics_never_drift(name: str) -> None:
    """Frozen means eval mode: training steps leave TinyViT's running statistics exactly as they were."""
    images, labels = synthetic_batch()
    model = lite_segmenter()
    method = create_method(name)
    method.prepare(model)
    before = _statistics(model)
    model.train()
    encoder = base_image_encoder(model)
    assert all(not m.training for m in encoder.modules() if isinstance(m, nn.BatchNorm2d))
    train_steps(model, method, images, labels, steps=2)
    after = _statistics(model)
    assert before.keys() == after.keys() and len(before) > 50
    assert all(torch.equal(before[key], after[key]) for key in before)


@pytest.mark.parametrize("name", ["lora", "conv-lora"])
def test_zero_initialised_branches_leave_the_output_unchanged(name: str) -> None:
    images, _ = synthetic_batch()
    model = lite_segmenter().eval()
    with torch.no_grad():
        before = model(images)
    create_method(name).prepare(model)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(images), before)


def test_lora_updates_exactly_the_query_and_value_rows_of_head_major_qkv() -> None:
    model = lite_segmenter()
    create_method("lora").prepare(model)
    encoder = model.sam.image_encoder
    layer = backbone_of(encoder).attention_layers(encoder)[3]
    qkv = layer.module.qkv
    with torch.no_grad():
        qkv.lora_b.normal_()
    changed = qkv.delta_weight().abs().sum(dim=1) > 0
    assert torch.equal(changed, _query_and_value_rows(layer))


def test_conv_lora_updates_exactly_the_query_and_value_rows() -> None:
    model = lite_segmenter()
    create_method("conv-lora").prepare(model)
    encoder = model.sam.image_encoder
    layer = backbone_of(encoder).attention_layers(encoder)[0]
    qkv = layer.module.qkv
    with torch.no_grad():
        for branch in qkv.branches.values():
            branch.lora_B.normal_()
    tokens = torch.randn(3, 7, 7, layer.width)
    difference = (qkv(tokens) - nn.functional.linear(tokens, qkv.weight, qkv.bias)).abs().sum(dim=(0, 1, 2))
    assert torch.equal(difference > 0, _query_and_value_rows(layer))


def _query_and_value_rows(layer) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """``(3C,)`` bool: the rows of the layer's qkv output that hold queries or values."""
    rows = torch.zeros(3 * layer.width, dtype=torch.bool)
    rows[layer.part_rows("q")] = True
    rows[layer.part_rows("v")] = True
    return rows


def test_parser_reconstructs_every_weight_of_the_encoder() -> None:
    """Every convolution and linear of TinyViT is decomposed; recomposed, each equals the original."""
    images, _ = synthetic_batch()
    model = lite_segmenter().eval()
    originals = {name: module.weight.detach().clone() for name, module in model.sam.image_encoder.named_modules()
                 if isinstance(module, (nn.Linear, nn.Conv2d))}
    with torch.no_grad():
        before = model(images)
    create_method("parser").prepare(model)
    model.eval()
    layers = dict((name, module) for name, module in model.sam.image_encoder.named_modules()
                  if isinstance(module, ReconstructedWeight))
    assert layers.keys() == originals.keys() and len(layers) == len(reconstructed_layers(model))
    for name, layer in layers.items():
        recomposed = layer.weight_matrix().reshape(originals[name].shape)
        scale = originals[name].abs().max().item()
        assert (recomposed - originals[name]).abs().max().item() <= 1e-5 * scale, name
    with torch.no_grad():
        assert (model(images) - before).abs().max().item() < 1e-4


def test_adapter_keeps_nothing_of_tinyvit_for_backward_and_lands_on_its_grid() -> None:
    images, labels = synthetic_batch()
    model = lite_segmenter()
    method = create_method("adapter")
    method.prepare(model)
    model.train()
    encoder = model.sam.image_encoder
    assert tuple(encoder.adapter(model.normalize(images)).shape) == (2, 256, 16, 16)
    for parameter in encoder.vit.parameters():  # even trainable TinyViT weights stay outside the graph
        parameter.requires_grad_(True)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        _loss(model, method, images, labels).backward()
    assert all(p.grad is None for p in encoder.vit.parameters())
    # Stage 0 of TinyViT at 64 px: (B, 64, 64, 64) maps, (B, 256, 64, 64) inside its MBConvs;
    # nothing in the adapter (at most 32 x 32) or the decoder has those shapes.
    shapes = {tuple(t.shape) for t in saved}
    assert shapes and not shapes & {(2, 64, 64, 64), (2, 256, 64, 64)}


def test_galore_equals_galore_torch_step_by_step_on_tinyvit() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        galore_torch = pytest.importorskip("galore_torch")
    images, labels = synthetic_batch()
    ours_model = lite_segmenter()
    method = create_method("galore", {"svd": "full", "rank": 4, "update_proj_gap": 2})
    method.prepare(ours_model)
    ref_model = copy.deepcopy(ours_model)
    groups = method.param_groups(ours_model, 1e-2, 0.1)
    ours = method.build_optimizer(ours_model, 1e-2, 0.1)
    by_name = dict(ref_model.named_parameters())
    ours_names = {id(p): n for n, p in ours_model.named_parameters()}
    ref_groups = []
    for group in groups:
        params = [p for _, p in group["params"]] if isinstance(group["params"][0], tuple) else group["params"]
        settings = {k: v for k, v in group.items() if k not in ("params", "svd")}
        ref_groups.append({**settings, "params": [by_name[ours_names[id(p)]] for p in params]})
    ref = galore_torch.GaLoreAdamW(ref_groups, lr=1e-2, weight_decay=0.1, eps=1e-6, no_deprecation_warning=True)
    projected = len(ref_groups[0]["params"])
    assert projected == 40  # qkv, proj, fc1, fc2 of TinyViT's ten attention blocks
    for step in range(5):  # projections refreshed at steps 0, 2, 4
        for model, optimizer in ((ours_model, ours), (ref_model, ref)):
            model.train()
            optimizer.zero_grad()
            segmentation_loss(model(images), labels).backward()
            optimizer.step()
        for (name, mine), theirs in zip(ours_model.named_parameters(), ref_model.parameters()):
            # 2e-6: float32 sums ordered by the thread count (OMP_NUM_THREADS=1 gave 1.1e-6 at step 4)
            assert (mine - theirs).abs().max().item() < 2e-6, f"step {step}, {name}"
    moved = (ours_model.sam.image_encoder.layers[1].blocks[0].attn.qkv.weight
             - lite_segmenter().sam.image_encoder.layers[1].blocks[0].attn.qkv.weight).abs().max().item()
    assert moved > 1e-4


def test_no_method_names_an_encoder() -> None:
    """The methods ask the backbone protocol: none of them mentions a ViT's or TinyViT's modules."""
    forbidden = re.compile(r"ImageEncoderViT|TinyViT|tiny_vit|litemedsam|encoder\(model\)\.blocks|\.attn\b|\.mlp\b"
                           r"|\bneck\b|patch_embed|window_size|\blayers\.\d")
    offending = {}
    for path in sorted(METHODS_DIR.glob("*.py")):
        code = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
        code = re.sub(r'"""[\s\S]*?"""', "", code)  # docstrings may explain, code may not branch
        hits = sorted(set(forbidden.findall(code)))
        if hits:
            offending[path.name] = hits
    assert offending == {}

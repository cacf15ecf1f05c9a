"""The prompt-free multi-class head on the tiny model: shapes, labels, batching, gradients."""

from __future__ import annotations

import pytest
import torch

from medsaga.model.build import build_sam
from medsaga.model.segmenter import SamSegmenter, logits_to_labels, upsample_logits


def segmenter(num_classes: int, image_size: int, seed: int = 0) -> SamSegmenter:
    torch.manual_seed(seed)
    model = SamSegmenter(build_sam("tiny", num_classes=num_classes, image_size=image_size))
    # pos_embed and rel_pos start at zero; give them values so position actually matters.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "pos" in name:
                parameter.normal_(0, 0.02)
    return model.eval()


@pytest.mark.parametrize("image_size", [256, 512])
def test_shapes_at_each_size(image_size: int) -> None:
    model = segmenter(num_classes=4, image_size=image_size)
    images = torch.rand(2, 3, image_size, image_size)
    embeddings = model.encode(images)
    assert embeddings.shape == (2, 256, image_size // 16, image_size // 16)
    logits = model.decode(embeddings)
    assert logits.shape == (2, 5, image_size // 4, image_size // 4)  # C + 1 channels
    assert torch.equal(model(images), logits)  # forward = decode(encode)
    full = upsample_logits(logits, (image_size, image_size))
    assert full.shape == (2, 5, image_size, image_size)
    assert model.num_classes == 4 and model.image_size == image_size


def test_labels_are_int64_in_range_and_argmax_of_upsampled_logits() -> None:
    model = segmenter(num_classes=3, image_size=256)
    images = torch.rand(3, 3, 256, 256)
    labels = model.predict(images)
    assert labels.shape == (3, 256, 256) and labels.dtype == torch.int64
    assert 0 <= int(labels.min()) and int(labels.max()) <= 3
    logits = model(images)
    assert torch.equal(labels, upsample_logits(logits, (256, 256)).argmax(1))
    assert torch.equal(logits_to_labels(logits), logits.argmax(1))  # no size: at the logits' resolution
    hand_made = torch.zeros(1, 3, 2, 2)
    hand_made[0, 2, 0, 1] = 5.0
    hand_made[0, 1, 1, 0] = 5.0
    assert logits_to_labels(hand_made).tolist() == [[[0, 2], [1, 0]]]


def test_all_masks_come_out_including_token_zero() -> None:
    # MaskDecoder.forward(multimask_output=True) drops token 0; decode keeps it as channel 0,
    # and channels 1..C are exactly what the official forward returns.
    model = segmenter(num_classes=3, image_size=256)
    embeddings = model.encode(torch.rand(1, 3, 256, 256))
    ours = model.decode(embeddings)
    sparse, dense = model.sam.prompt_encoder(points=None, boxes=None, masks=None)
    official, _ = model.sam.mask_decoder(image_embeddings=embeddings, image_pe=model.sam.prompt_encoder.get_dense_pe(),
                                         sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                         multimask_output=True)
    assert official.shape[1] == 3 and ours.shape[1] == 4
    torch.testing.assert_close(ours[:, 1:], official, rtol=0, atol=1e-6)


def test_each_sample_depends_on_itself_only() -> None:
    model = segmenter(num_classes=2, image_size=256)
    images = torch.rand(3, 3, 256, 256)
    batched = model(images)
    for index in range(3):
        alone = model(images[index:index + 1])
        torch.testing.assert_close(batched[index:index + 1], alone, rtol=0, atol=1e-5)
    changed = images.clone()
    changed[1] = torch.rand(3, 256, 256)
    again = model(changed)
    torch.testing.assert_close(again[[0, 2]], batched[[0, 2]], rtol=0, atol=1e-5)
    assert not torch.allclose(again[1], batched[1], atol=1e-3)


def test_gradients_reach_the_decoder_and_the_encoder() -> None:
    model = segmenter(num_classes=2, image_size=256).train()
    images = torch.rand(2, 3, 256, 256)
    target = torch.randint(0, 3, (2, 64, 64))
    loss = torch.nn.functional.cross_entropy(model(images), target)
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    for name in ("sam.mask_decoder.mask_tokens.weight",
                 "sam.mask_decoder.output_hypernetworks_mlps.0.layers.0.weight",
                 "sam.mask_decoder.output_hypernetworks_mlps.2.layers.2.weight",
                 "sam.mask_decoder.transformer.layers.0.self_attn.q_proj.weight",
                 "sam.mask_decoder.output_upscaling.0.weight",
                 "sam.prompt_encoder.no_mask_embed.weight",
                 "sam.image_encoder.blocks.0.attn.qkv.weight",
                 "sam.image_encoder.patch_embed.proj.weight"):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    # The IoU head predicts mask quality; nothing in the segmentation output depends on it.
    assert grads["sam.mask_decoder.iou_prediction_head.layers.2.weight"] is None


def test_cached_embeddings_decode_like_the_full_forward() -> None:
    model = segmenter(num_classes=1, image_size=256)
    images = torch.rand(2, 3, 256, 256)
    with torch.no_grad():
        cache = model.encode(images)  # a frozen-encoder method computes this once
    torch.testing.assert_close(model.decode(cache), model(images), rtol=0, atol=0)


def test_normalisation_uses_sam_statistics_in_0_255_units() -> None:
    model = segmenter(num_classes=1, image_size=256)
    mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
    at_mean = (mean / 255).expand(1, 3, 256, 256)
    torch.testing.assert_close(model.normalize(at_mean), torch.zeros(1, 3, 256, 256), rtol=0, atol=1e-5)
    white = torch.ones(1, 3, 256, 256)
    torch.testing.assert_close(model.normalize(white), ((255 - mean) / std).expand(1, 3, 256, 256))


@pytest.mark.parametrize("images, message", [
    (torch.rand(1, 3, 512, 512), r"expected images of shape \(B, 3, 256, 256\)"),
    (torch.rand(3, 256, 256), r"expected images of shape"),
    (torch.rand(1, 1, 256, 256), r"expected images of shape"),
    (torch.zeros(1, 3, 256, 256, dtype=torch.uint8), "expected float images"),
])
def test_wrong_inputs_are_refused(images: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        segmenter(num_classes=1, image_size=256)(images)


def test_wrong_embeddings_are_refused() -> None:
    with pytest.raises(ValueError, match=r"expected embeddings of shape \(B, 256, 16, 16\)"):
        segmenter(num_classes=1, image_size=256).decode(torch.zeros(1, 256, 32, 32))

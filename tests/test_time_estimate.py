"""The training-time estimate finetune prints first: the cached decoder run is priced as the loop
runs it (the frozen encoder once per cached slice-view, the decoder once per slice)."""

from __future__ import annotations

import torch

from medsaga.model.build import build_sam
from medsaga.train.time_estimate import TimeEstimate, estimate_training_time, format_seconds


def _tiny() -> torch.nn.Module:
    from medsaga.model.segmenter import SamSegmenter

    torch.manual_seed(0)
    return SamSegmenter(build_sam("tiny", num_classes=3, image_size=64))


def test_cached_frozen_encoder_is_priced_per_view_and_per_slice() -> None:
    model = _tiny()
    images = torch.rand(1, 3, 64, 64)
    for parameter in model.image_encoder.parameters():
        parameter.requires_grad_(False)
    cached = estimate_training_time(model, images, slices=1000, device=torch.device("cpu"), precision="fp32",
                                    fast_attention=False, activation_checkpointing=False, encoder_frozen=True,
                                    cached_views=20)
    assert cached.encodes == 20 and cached.encode_seconds > 0 and cached.slices == 1000
    assert cached.seconds == cached.encode_seconds * 20 + cached.seconds_per_slice * 1000
    line = cached.describe()
    assert line.startswith(f"estimated training time: at most {format_seconds(cached.seconds)} (at most 20 cached")
    uncached = estimate_training_time(model, images, slices=1000, device=torch.device("cpu"), precision="fp32",
                                      fast_attention=False, activation_checkpointing=False, encoder_frozen=True)
    assert uncached.encodes == 0 and uncached.describe().startswith("estimated training time: about ")
    # (That the cached run's step, the decoder's part alone, is the cheaper is a timing: on the tiny
    # model the two differ by less than a loaded machine's noise, so no test compares them.)


def test_a_trained_encoder_with_a_cache_is_an_upper_bound() -> None:
    estimate = TimeEstimate(2.0, 10, upper_bound=True)
    assert estimate.seconds == 20.0 and estimate.describe().startswith("estimated training time: at most 20 s")

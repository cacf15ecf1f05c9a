"""An honest estimate of a run's training time, measured on this machine before it starts.

A per-slice cost differs by model, size, method, memory settings, device and how busy the machine
is, so no table can give it: one training slice is timed through a copy of the run's own model
(forward and backward, the loop's encoder wrapping: fast attention and activation checkpointing
as the run will use them), twice, and the second time counts (the first pays one-off allocation).
The estimate is that time x the slices the run will pass through the model. Not in it: the
optimizer step (small beside the backward pass, except GaLore's periodic projection refresh),
checkpoint writes and validation. With the embedding cache and a frozen encoder (the decoder
method) the encoder pass and the rest are timed apart: the encoder runs once per cached slice-view,
the rest once per slice the steps read; the cache's size is the most it may encode, so that
estimate is an upper bound and says so (timing the whole pass per slice there said "4 h" for the
one-minute `make demo` run).

The probe costs two slices' time (a few seconds for LiteMedSAM on a CPU, against minutes of
training); it works on a deep copy under a forked RNG, so the run itself is unchanged.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
from torch import nn

PROBE_PASSES = 2  # the first warms up (allocations, kernel selection), the last is timed


@dataclass(frozen=True)
class TimeEstimate:
    """Seconds per training slice as measured, and the run's estimate from it.

    With the embedding cache (``encodes > 0``) a step runs only what follows the frozen encoder:
    ``seconds_per_slice`` is then that part, and each of the ``encodes`` cached slice-views costs
    one frozen encoder pass (``encode_seconds``) once; ``encodes`` is the most the cache can hold,
    so the estimate is an upper bound.
    """

    seconds_per_slice: float
    slices: int
    encode_seconds: float = 0.0
    encodes: int = 0
    upper_bound: bool = False  # a cached run whose encoder trains: its whole pass was timed

    @property
    def seconds(self) -> float:
        return self.seconds_per_slice * self.slices + self.encode_seconds * self.encodes

    def describe(self) -> str:
        """One line: the estimate and how it was computed."""
        if self.encodes:
            how = (f"at most {self.encodes} cached slice-views x {self.encode_seconds:.2f} s through the frozen "
                   f"encoder, then {self.slices} slices x {self.seconds_per_slice:.3f} s of training on the cache")
            bound = "at most "
        else:
            how = f"{self.slices} slices x {self.seconds_per_slice:.2f} s"
            if self.upper_bound:
                how += " (the whole encoder's pass; the embedding cache makes the steps cheaper)"
            bound = "at most " if self.upper_bound else "about "
        return (f"estimated training time: {bound}{format_seconds(self.seconds)} ({how}, timed on this machine "
                "just now; optimizer steps, checkpoints and validation come on top)")


def estimate_training_time(model: nn.Module, images: torch.Tensor, *, slices: int, device: torch.device,
                           precision: str, fast_attention: bool, activation_checkpointing: bool,
                           encoder_frozen: bool, cached_views: int = 0) -> TimeEstimate:
    """Time one slice ``images (1, 3, S, S)`` through a copy of ``model`` (a prepared
    :class:`~medsaga.model.segmenter.SamSegmenter`) in training mode, and scale to ``slices``.

    ``cached_views``: the slice-views the embedding cache may encode (0: no cache). With a cache
    and a frozen encoder, the encoder pass and the decoder's forward and backward are timed apart:
    the first is paid once per cached view, the second once per slice the steps read. With a cache
    and a trained encoder (the frozen part is only a prefix of it) the whole pass is timed: an
    upper bound.
    """
    from medsaga.model.activation_checkpointing import checkpoint_encoder_blocks
    from medsaga.model.fast_attention import speed_up_encoder

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        probe = copy.deepcopy(model)
        encoder = probe.image_encoder
        if fast_attention:
            speed_up_encoder(encoder)
        if activation_checkpointing and not encoder_frozen:
            checkpoint_encoder_blocks(encoder)
        probe.to(device).train()
        images = images.to(device)
        encode_seconds = seconds = 0.0
        for _ in range(PROBE_PASSES):
            started = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                if encoder_frozen:  # as the loop runs it: no graph through a frozen encoder
                    with torch.no_grad():
                        embeddings = probe.encode(images)
                    _synchronize(device)
                    encode_seconds = time.perf_counter() - started
                    logits = probe.decode(embeddings)
                else:
                    logits = probe(images)
            if logits.requires_grad:
                logits.float().mean().backward()
            _synchronize(device)
            seconds = time.perf_counter() - started
            probe.zero_grad(set_to_none=True)
        del probe
    if cached_views and encoder_frozen:
        return TimeEstimate(max(0.0, seconds - encode_seconds), slices, encode_seconds, cached_views)
    if cached_views:
        return TimeEstimate(seconds, slices, upper_bound=True)
    return TimeEstimate(seconds, slices)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def format_seconds(seconds: float) -> str:
    """``45 s``, ``12 min``, ``2 h 5 min``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 90:
        return f"{minutes:.0f} min"
    return f"{int(minutes // 60)} h {minutes % 60:.0f} min"


def estimate_run(model: nn.Module, data, settings, method, device: torch.device) -> TimeEstimate:
    """The estimate for a run about to train ``model`` (prepared by ``method``) on ``data`` (a
    :class:`~medsaga.train.data.TrainingSlices`) with ``settings`` (its
    :class:`~medsaga.train.loop.LoopSettings`): its first slice timed, x every slice the steps see
    (and, with the cache, x every slice-view the cache may encode)."""
    images, _ = data.batch([0])
    return estimate_training_time(model, images, slices=settings.steps * settings.batch_size * settings.grad_accum,
                                  device=device, precision=settings.precision,
                                  fast_attention=settings.fast_attention,
                                  activation_checkpointing=settings.activation_checkpointing,
                                  encoder_frozen=method.encoder_frozen,
                                  cached_views=len(data) * settings.cache_views if settings.cache_views else 0)

"""One case through the model: slices as training made them, batched inference, back onto the grid.

Per batch of ``B`` slices of size ``(H, W)``:

    images (B, 3, H, W) in [0, 1] ─letterbox→ (B, 3, S, S) ─model→ logits (B, C+1, S/4, S/4)
    ─unletterbox (crop the valid region, bilinear)→ (B, C+1, H, W) ─argmax→ classes (B, H, W)

The image encoder runs medsaga's exact fast attention (:mod:`medsaga.model.fast_attention`): at
256 px SAM's windowed blocks would run qkv, attention and proj on a 28 × 28 zero-padded grid for
the 16 × 16 real tokens.

The argmax is taken at the slice's own resolution, after interpolating the logits, which gives
smoother boundaries than interpolating a label map. Probabilities, when asked for, are the softmax
of the same interpolated logits (so their argmax is the label map). The class stack is put back on
the input's exact grid by :func:`~medsaga.data.slicing.unslice` (axis permutation and flips only).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from medsaga.data.resize import letterbox_images, unletterbox
from medsaga.data.slices import volume_to_slices
from medsaga.data.slicing import slice_geometry
from medsaga.io.volume import Volume
from medsaga.model.fast_attention import restore_encoder, speed_up_encoder
from medsaga.predict.run import TrainedRun


@dataclass
class Prediction:
    """A case's prediction on the grid of its first channel.

    Attributes:
        classes: model class indices ``0..C`` (not yet dataset label values), ``array`` ``(I, J, K)``
            uint8 (uint16 above 255 classes), same affine and source as the input volume.
        probabilities: ``(I, J, K, C+1)`` float32 softmax scores (channel ``c`` = class ``c``),
            or ``None`` when not asked for.
        slices: slices the model saw.
        seconds: wall time of slicing, inference and unslicing.
    """

    classes: Volume
    probabilities: np.ndarray | None
    slices: int
    seconds: float

    @property
    def slices_per_second(self) -> float:
        return self.slices / self.seconds if self.seconds > 0 else float("inf")


def segment_case(run: TrainedRun, images: Volume | Sequence[Volume], *, batch_size: int = 8,
                 probabilities: bool = False, progress: Callable[[int, int], None] | None = None,
                 fast_encoder: bool = True) -> Prediction:
    """Predict one case.

    Args:
        run: the loaded run (model, device, precision, slicing settings).
        images: the case's channel volumes, on one grid, in the run's channel order.
        batch_size: slices per forward pass.
        probabilities: also return the per-class probability maps.
        progress: called as ``progress(done, total)`` with slice counts: once before the first
            batch (``done == 0``) and after every batch.
        fast_encoder: run the image encoder's attention through
            :func:`~medsaga.model.fast_attention.speed_up_encoder` (no work on window padding,
            fused kernels; the same outputs as segment-anything's own attention to float rounding,
            whatever the method: layers that look across windows, as Conv-LoRA's, keep SAM's
            padded windows). ``False`` runs SAM's own. Either way the choice is made on
            ``run.model`` in place and stays.

    Raises:
        InputError: channels not on one grid, or too many channels for the slice mode.
    """
    start = time.perf_counter()
    config = run.config
    volumes = [images] if isinstance(images, Volume) else list(images)
    stack = volume_to_slices(volumes, presets=list(config.presets), plane=config.plane, mode=config.mode).images
    geometry = slice_geometry(volumes[0], config.plane)
    count, _, height, width = stack.shape
    channels = config.num_classes + 1
    classes = np.empty((count, height, width), dtype=np.uint8 if channels <= 256 else np.uint16)
    scores = np.empty((count, channels, height, width), dtype=np.float32) if probabilities else None
    encoder = run.model.image_encoder
    # After the trained state is loaded (load_model): the swap keeps every parameter and name.
    if fast_encoder:
        speed_up_encoder(encoder)
    else:
        restore_encoder(encoder)
    if progress is not None:
        progress(0, count)
    with torch.inference_mode():
        for first in range(0, count, batch_size):
            last = min(first + batch_size, count)
            batch = torch.from_numpy(stack[first:last]).to(run.device)
            boxed, box = letterbox_images(batch, config.image_size)
            with _autocast(run):
                logits = run.model(boxed)  # (B, C+1, S/4, S/4)
            upsampled = unletterbox(logits.float(), box)  # (B, C+1, H, W)
            classes[first:last] = upsampled.argmax(dim=1).cpu().numpy()
            if scores is not None:
                scores[first:last] = upsampled.softmax(dim=1).cpu().numpy()
            if progress is not None:
                progress(last, count)
    probability_maps = None
    if scores is not None:
        # Each class channel back onto the grid, stacked last: (I, J, K, C+1).
        probability_maps = np.stack([geometry.to_volume(scores[:, c]).array for c in range(channels)], axis=-1)
    return Prediction(geometry.to_volume(classes), probability_maps, count, time.perf_counter() - start)


def _autocast(run: TrainedRun):
    """bf16 autocast when the run asks for it (CUDA with bf16 by default); fp32 otherwise."""
    if run.precision == "bf16":
        return torch.autocast(device_type=run.device.type, dtype=torch.bfloat16)
    return nullcontext()

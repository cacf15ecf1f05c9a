"""A case's volumes → the model's inputs: 3-channel image slices and integer label slices.

SAM takes RGB images; a medical case gives one or more grey channels. Three ways to fill the
three input channels of slice ``n`` (all from normalised [0, 1] values):

- ``repeat``: one channel, grey repeated three times.
- ``neighbours`` (2.5-D): one channel, slices ``(n-1, n, n+1)`` of the stack as
  ``(R, G, B)``; ``n-1`` is the neighbour towards the start of the stack (inferior for axial,
  see :mod:`medsaga.data.slicing`). The first and last slices repeat themselves in place of the
  missing neighbour (edge replication).
- ``modalities``: one to three co-registered channels (e.g. T1, T2, FLAIR) as ``(R, G, B)``;
  two channels give ``(c0, c1, (c0 + c1) / 2)``: the third channel then carries information
  from both and stays within the range of the other two, whereas a constant (black) channel
  would be a strong colour cast never seen in SAM's pre-training. One channel is ``repeat``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from medsaga.data.intensity import IntensityPreset, normalise
from medsaga.data.labels import label_value_problem
from medsaga.data.slicing import slice_geometry, slice_volume
from medsaga.errors import InputError
from medsaga.io.volume import Volume

MODES = ("repeat", "neighbours", "modalities")


class CaseSlices(NamedTuple):
    """A case as model inputs (unpacks as ``images, labels = ...``).

    Attributes:
        images: ``(N, 3, H, W)`` float32 in [0, 1], C-contiguous.
        labels: ``(N, H, W)`` int64, C-contiguous, or ``None`` when no label was given.
    """

    images: np.ndarray
    labels: np.ndarray | None


def volume_to_slices(
    images: Volume | Sequence[Volume],
    label: Volume | None = None,
    *,
    presets: str | IntensityPreset | Sequence[str | IntensityPreset],
    plane: str = "axial",
    mode: str = "repeat",
) -> CaseSlices:
    """Slice and normalise one case.

    Args:
        images: the case's channel volumes (one :class:`Volume`, or a list in channel order),
            all on one grid.
        label: its label map on the same grid, or ``None``.
        presets: intensity preset name(s): one for all channels, or one per channel.
        plane: ``"axial"``, ``"coronal"`` or ``"sagittal"``; slice layout as in
            :mod:`medsaga.data.slicing`. To put predictions back, use
            ``unslice(pred, images[0], plane)``.
        mode: ``"repeat"``, ``"neighbours"`` or ``"modalities"`` (module docstring).

    Returns:
        ``CaseSlices(images (N, 3, H, W) float32, labels (N, H, W) int64 | None)``.

    Raises:
        InputError: unknown preset, plane or mode; channel count unsuited to the mode; a channel
            or the label not on the first channel's grid (names the file); a non-integer label.
    """
    volumes = [images] if isinstance(images, Volume) else list(images)
    if not volumes:
        raise InputError("a case needs at least one image channel")
    if mode not in MODES:
        raise InputError(f"unknown slice mode {mode!r}; choose one of: {', '.join(MODES)}")
    limit = 3 if mode == "modalities" else 1
    if len(volumes) > limit:
        raise InputError(f"mode {mode!r} takes {'at most 3 channels' if limit == 3 else 'one channel'}, "
                         f"got {len(volumes)}" + ("; use mode 'modalities'" if limit == 1 else ""),
                         volumes[0].source.path)
    names = [presets] * len(volumes) if isinstance(presets, (str, IntensityPreset)) else list(presets)
    if len(names) != len(volumes):
        raise InputError(f"{len(names)} intensity presets for {len(volumes)} image channels")
    for other in volumes[1:] + ([label] if label is not None else []):
        _check_same_grid(volumes[0], other)
    slice_geometry(volumes[0], plane)  # validates the plane and affine before any heavy work

    channels = [normalise(slice_volume(volume, plane).array, name) for volume, name in zip(volumes, names)]
    out = three_channels(channels, mode)
    return CaseSlices(out, label_slices(label, plane) if label is not None else None)


def three_channels(channels: Sequence[np.ndarray], mode: str) -> np.ndarray:
    """Normalised channel stacks, each ``(N, H, W)`` float32 → ``(N, 3, H, W)`` float32 as
    ``mode`` says (module docstring)."""
    first = channels[0]
    out = np.empty((first.shape[0], 3, *first.shape[1:]), dtype=np.float32)
    if mode == "neighbours" and len(channels) == 1:
        # Shifted copies instead of fancy indexing: no temporary stacks.
        out[:, 1] = first
        out[1:, 0] = first[:-1]
        out[0, 0] = first[0]
        out[:-1, 2] = first[1:]
        out[-1, 2] = first[-1]
    elif mode in ("repeat", "modalities") and len(channels) == 1:
        out[:] = first[:, None]
    elif mode == "modalities" and len(channels) == 2:
        out[:, 0] = first
        out[:, 1] = channels[1]
        np.add(first, channels[1], out=out[:, 2])
        out[:, 2] *= 0.5
    elif mode == "modalities" and len(channels) == 3:
        for index, channel in enumerate(channels):
            out[:, index] = channel
    else:
        raise InputError(f"mode {mode!r} cannot take {len(channels)} channels")
    return out


def label_slices(label: Volume, plane: str = "axial") -> np.ndarray:
    """Label map → ``(N, H, W)`` int64 C-contiguous slices in the layout of
    :func:`medsaga.data.slicing.slice_volume`.

    Raises:
        InputError: the label map holds non-integer or negative values (names its file).
    """
    stack = slice_volume(label, plane).array
    problem = label_value_problem(stack, declared=None)
    if problem is not None:
        raise InputError(problem, label.source.path)
    return stack.astype(np.int64, order="C")


def _check_same_grid(reference: Volume, other: Volume) -> None:
    problems = reference.same_grid(other)
    if problems:
        where = f" ({reference.source.path})" if reference.source.path is not None else ""
        raise InputError(f"not on the grid of the first image{where}: {'; '.join(problems)}", other.source.path)

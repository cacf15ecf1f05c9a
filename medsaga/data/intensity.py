"""Intensity presets: raw scanner values → float32 in [0, 1], the range SAM's input expects.

CT values are Hounsfield units with a fixed physical meaning, so CT presets are fixed windows
(clip to ``[low, high]`` HU, then scale linearly): ``low`` → 0, ``high`` → 1.

========================  =================  ===============================================
preset                    HU range           window (width / level)
========================  =================  ===============================================
``ct-abdomen``            [-125, 275]        W400 / L75, the abdominal window SAMed uses
``ct-soft-tissue``        [-160, 240]        W400 / L40
``ct-bone``               [-500, 1300]       W1800 / L400, cortical and trabecular bone
``ct-lung``               [-1350, 150]       W1500 / L-600
========================  =================  ===============================================

MR values have no absolute scale (they vary with scanner, coil and sequence), so ``mr`` maps
each volume's own 0.5th and 99.5th percentiles to 0 and 1, clipping outside: robust to the few
extreme voxels (vessels, artefacts) that a min-max scaling would let squash the contrast.

The percentiles are taken over the volume's **nonzero** voxels. MR volumes, skull-stripped or
cropped ones especially, are mostly exact-zero background (about 70 % of a MALF brain volume):
over all voxels the 99.5th percentile would in fact be about the 98th of the tissue, clipping
more bright tissue than intended, and the lower bound would always be the background's 0 rather
than the darkest tissue. Background stays at 0 either way (it is at or below the lower bound).
Volumes without zero background lose nothing by this rule: their nonzero voxels are almost all.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from medsaga.errors import InputError


@dataclass(frozen=True)
class IntensityPreset:
    """One way of mapping raw intensities to [0, 1].

    Exactly one of ``window`` and ``percentiles`` is set.

    Attributes:
        name: as given on the command line.
        description: one line for help texts and logs.
        window: fixed ``(low, high)`` raw values (HU for CT) mapped to 0 and 1.
        percentiles: per-volume ``(low, high)`` percentiles (0-100) mapped to 0 and 1.
        nonzero_only: compute the percentiles over nonzero voxels only.
    """

    name: str
    description: str
    window: tuple[float, float] | None = None
    percentiles: tuple[float, float] | None = None
    nonzero_only: bool = False


def _ct_window(name: str, width: float, level: float, what: str) -> IntensityPreset:
    return IntensityPreset(name, f"CT {what} window W{width:g}/L{level:g} ({level - width / 2:g} to {level + width / 2:g} HU)",
                           window=(level - width / 2, level + width / 2))


PRESETS: dict[str, IntensityPreset] = {
    preset.name: preset
    for preset in (
        IntensityPreset("ct-abdomen", "CT abdominal window -125 to 275 HU (as SAMed)", window=(-125.0, 275.0)),
        _ct_window("ct-soft-tissue", 400, 40, "soft-tissue"),
        _ct_window("ct-bone", 1800, 400, "bone"),
        _ct_window("ct-lung", 1500, -600, "lung"),
        IntensityPreset("mr", "per-volume 0.5-99.5th percentiles of the nonzero voxels",
                        percentiles=(0.5, 99.5), nonzero_only=True),
    )
}


def get_preset(name: str | IntensityPreset) -> IntensityPreset:
    """The preset called ``name`` (a preset is given back as is); :class:`InputError` listing
    the valid names otherwise."""
    if isinstance(name, IntensityPreset):
        return name
    try:
        return PRESETS[name]
    except KeyError:
        raise InputError(f"unknown intensity preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


def intensity_range(array: np.ndarray, preset: str | IntensityPreset) -> tuple[float, float]:
    """The raw ``(low, high)`` that ``preset`` maps to 0 and 1 for this ``array`` (any shape).

    For percentile presets, when the percentiles coincide (a constant foreground, e.g. a binary
    mask image) the full ``(min, max)`` of the finite voxels is used instead; when that is still
    a single value, ``low == high`` and :func:`normalise` gives zeros.
    """
    preset = get_preset(preset)
    if preset.window is not None:
        return preset.window
    values = np.asarray(array)
    finite = None if values.dtype.kind in "biu" else np.isfinite(values)
    if finite is not None and finite.all():
        finite = None
    select = values != 0 if preset.nonzero_only else None
    if finite is not None:
        select = finite if select is None else select & finite
    chosen = values[select] if select is not None else values.ravel()
    if chosen.size == 0:  # all background (or all NaN): fall back to every finite voxel
        chosen = values.ravel() if finite is None else values[finite]
    if chosen.size == 0:
        return 0.0, 0.0
    low, high = (float(v) for v in np.percentile(chosen, preset.percentiles))
    if high <= low:
        every = values if finite is None else values[finite]
        low, high = float(every.min()), float(every.max())
    return low, high


def normalise(array: np.ndarray, preset: str | IntensityPreset) -> np.ndarray:
    """``array`` (any shape; raw values) → new float32 C-contiguous array of the same shape in
    [0, 1]: clipped to :func:`intensity_range` and scaled. Percentiles are computed over the
    whole ``array``, so pass a whole volume (or its whole slice stack), never single slices.
    NaNs become 0; constant inputs become 0 (no division by zero).
    """
    low, high = intensity_range(array, preset)
    out = np.array(array, dtype=np.float32, order="C")  # one copy, also undoes flipped views
    if out.dtype.kind == "f" and np.isnan(out).any():
        np.nan_to_num(out, copy=False, nan=low)  # NaN → low → 0; ±inf clip to the bounds below
    # All in float32 and in place, to keep a single copy even for 512 x 512 x 300 CT. Dividing by
    # the very float32 span that the clipped maximum minus low rounds to maps `high` to exactly 1
    # and, rounding being monotonic, nothing outside [0, 1].
    low32, high32 = np.float32(low), np.float32(high)
    span = high32 - low32
    if not span > 0:
        out.fill(0.0)
        return out
    np.clip(out, low32, high32, out=out)
    out -= low32
    out /= span
    return out


class PresetChoice(NamedTuple):
    """The preset chosen for one channel, and why (for the log, or a warning when guessed)."""

    name: str
    reason: str
    guessed: bool = False


# Tokens (upper case) of nnU-Net channel names. nnU-Net itself treats exactly "CT" as CT and
# normalises everything else per volume, which is what falling back to "mr" does too.
_CT_TOKENS = {"CT", "CECT", "NCCT", "CTA", "HU"}
_MR_TOKENS = {"MR", "MRI", "FLAIR", "ADC", "DWI", "PD", "PDW", "SWI", "DIXON", "TRACE", "B0",
              "MPRAGE", "DCE", "DSC", "STIR", "GRE", "SPGR", "BOLD"}
_MR_PREFIX = re.compile(r"^(T1|T2)")  # T1, T1W, T1C, T1CE, T1GD, T2W, T2STAR, ...


def choose_preset(channel_name: str | None = None, explicit: str | None = None) -> PresetChoice:
    """The preset for one input channel.

    ``explicit`` (a preset name from the command line) wins and is validated
    (:class:`InputError` listing the valid names). Otherwise the nnU-Net ``dataset.json``
    channel name decides, case-insensitively, by its words: "CT" → ``ct-abdomen``; MR words
    ("MRI", "MR", "T1…", "T2…", "FLAIR", "ADC", "DWI", …) → ``mr``; anything else (or no name)
    → ``mr`` with ``guessed=True``, since per-volume percentiles suit any modality without a
    physical scale.
    """
    if explicit is not None:
        return PresetChoice(get_preset(explicit).name, f"preset {explicit!r} given explicitly")
    if channel_name is None or not channel_name.strip():
        return PresetChoice("mr", "no channel name; using per-volume percentiles ('mr')", guessed=True)
    tokens = {t for t in re.split(r"[^A-Z0-9]+", channel_name.upper()) if t}
    if tokens & _CT_TOKENS:
        return PresetChoice("ct-abdomen", f"channel {channel_name!r} is CT: abdominal window ('ct-abdomen')")
    if tokens & _MR_TOKENS or any(_MR_PREFIX.match(t) for t in tokens):
        return PresetChoice("mr", f"channel {channel_name!r} is MR: per-volume percentiles ('mr')")
    return PresetChoice("mr", f"channel {channel_name!r} not recognised as CT or MR; "
                              f"using per-volume percentiles ('mr')", guessed=True)


def presets_for_channels(channel_names: Mapping[str, str], explicit: str | None = None) -> list[PresetChoice]:
    """One :func:`choose_preset` per channel of a ``dataset.json`` ``channel_names`` mapping
    (``{"0": "CT", "1": "T2"}``), in channel order; ``explicit`` applies to every channel."""
    try:
        order = sorted(channel_names, key=int)
    except ValueError:
        raise InputError(f"channel_names keys must be channel numbers, got {list(channel_names)}") from None
    return [choose_preset(channel_names[key], explicit) for key in order]

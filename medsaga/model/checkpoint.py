"""Read SAM checkpoints and load them, strictly, into a model of any input size and class count.

Files: the official Meta checkpoints (``sam_vit_{b,l,h}_*.pth``) and MedSAM's ``medsam_vit_b.pth``
share one key layout (``image_encoder.blocks.0.attn.qkv.weight``, ...); LiteMedSAM's
``lite_medsam.pth`` has TinyViT's (``image_encoder.patch_embed.seq.0.c.weight``, ...) around the
same prompt encoder and mask decoder. They are read with
``torch.load(path, map_location="cpu", weights_only=True)``: no code from a file ever runs. A
training checkpoint that wraps the state dict as ``{"model": ...}`` or ``{"state_dict": ...}`` is
unwrapped, and the report says so. Everything wrong with a file is an :class:`InputError` that says
what was expected and what was found.

Which model type a state dict holds is its signature in :mod:`medsaga.model.registry` (a marker
key, then its shapes). Loading (:func:`load_weights`) is strict: after documented adaptations
every key and every shape must match the model, or nothing is loaded.

1. the tensors that depend on the input size are fitted to the model's, as the type's registry
   entry says (ViTs: ``image_encoder.pos_embed`` resized bicubically to the model's patch grid,
   the global-attention blocks' ``rel_pos_h/w`` linearly to ``2·grid − 1`` rows, both in
   :mod:`medsaga.model.resize`; windowed blocks never change; TinyViT has neither: its attention
   biases are per window offset, the same at any input size);
2. the decoder's per-mask heads are fitted to ``num_classes + 1`` masks
   (:mod:`medsaga.model.mask_heads`: mask ``j`` takes checkpoint mask ``j mod 4``).

At 1024 pixels with 3 classes (4 masks) nothing is adapted and the loaded weights are the file's,
bit for bit.
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from medsaga.errors import InputError
from medsaga.model.build import build_sam, check_image_size
from medsaga.model.mask_heads import adapt_mask_heads, num_mask_heads
from medsaga.model.registry import VIT_MARKER, get_model_type, markers, recognise, sample_keys

if TYPE_CHECKING:
    from segment_anything.modeling import Sam

PATCH_EMBED = VIT_MARKER
WRAPPER_KEYS = ("model", "state_dict")  # how training scripts commonly nest a state dict
_LISTED = 4  # keys named per kind of mismatch in an error message


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_weights` found in a state dict and what it had to adapt."""

    model_type: str
    source_image_size: int  # the size the file's pos_embed was made for (1024 for official files)
    image_size: int  # the model's input size
    resized: tuple[str, ...]  # keys interpolated to the model's grid
    mask_head_sources: tuple[int, ...]  # output mask j took the file's mask mask_head_sources[j]
    source_num_masks: int
    unwrapped_from: str | None = None  # "model" / "state_dict" when the file nested the state dict
    notes: list[str] = field(default_factory=list)

    def describe(self) -> list[str]:
        """Human-readable lines, one per thing worth telling a user."""
        lines = [f"model type {self.model_type}"]
        if self.unwrapped_from:
            lines.append(f"state dict unwrapped from the checkpoint's {self.unwrapped_from!r} entry")
        if self.resized:
            lines.append(f"resized {len(self.resized)} positional tables from {self.source_image_size} "
                         f"to {self.image_size} pixels")
        if len(self.mask_head_sources) != self.source_num_masks or \
                any(j != i for j, i in enumerate(self.mask_head_sources)):
            mapping = ", ".join(f"{j}←{i}" for j, i in enumerate(self.mask_head_sources))
            lines.append(f"mask heads fitted from {self.source_num_masks} to {len(self.mask_head_sources)} "
                         f"(output←checkpoint: {mapping})")
        return lines + self.notes


# ---------------------------------------------------------------------------------------------
# Reading a file


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], str | None]:
    """The tensors of a checkpoint file, and the wrapper key it was nested under (or ``None``).

    Loaded on the CPU with ``weights_only=True``. Raises :class:`InputError` for a missing, empty,
    truncated, foreign or code-carrying file, and for a file that holds no flat dict of tensors.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("no such file", path)
    if path.is_dir():
        raise InputError("is a folder; expected a SAM checkpoint file (.pth)", path)
    kind = _sniff(path)
    try:
        with warnings.catch_warnings():
            # A plain pickle (not torch.save) triggers a protocol warning before any error: noise.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # The weights-only unpickler refuses globals (classes, functions: code) by name; any other
        # refusal (an unknown opcode, a cut-off stream) means the bytes themselves are damaged.
        if "GLOBAL" in str(error) or "Unsupported global" in str(error):
            raise _needs_code(error, path) from None
        if kind.startswith("plain Python pickle"):
            raise InputError(f"a {kind}, not a torch.save checkpoint: the weights-only loader cannot read it "
                             f"({_unpickler_reason(error)})", path) from None
        raise InputError(f"truncated or corrupt {kind} ({_unpickler_reason(error)})", path) from None
    except Exception as error:  # noqa: BLE001 - any failure to parse the file is the file's fault
        raise InputError(f"truncated or corrupt {kind}: {_first_line(error)}", path) from None
    return _as_state_dict(loaded, path)


def _needs_code(error: BaseException, path: Path) -> InputError:
    """The refusal of a pickle that names Python code (a class or function) to run on loading."""
    return InputError(
        "the checkpoint holds Python objects that need code from the file to load "
        f"({_unsupported_global(error)}); medsaga only loads tensors (torch.load weights_only=True) "
        "and never runs code from a file. Save the model's state_dict() alone and load that", path
    )


def _sniff(path: Path) -> str:
    """Name the container format from the first bytes; refuse what torch.load cannot read."""
    with path.open("rb") as file:
        head = file.read(16)
    if not head:
        raise InputError("empty file (0 bytes); expected a PyTorch checkpoint (.pth)", path)
    if head.startswith(b"PK\x03\x04"):
        return "PyTorch zip checkpoint"
    if head[:1] == b"\x80" and len(head) > 1:  # pickle marker + protocol
        # torch.save's legacy (non-zip) format pickles with protocol 2; pickle.dumps uses 4 or 5.
        return "PyTorch (legacy pickle) checkpoint" if head[1] <= 2 else f"plain Python pickle (protocol {head[1]})"
    if len(head) > 8 and head[8:9] == b"{":  # 8-byte little-endian header length, then JSON
        raise InputError("this is a safetensors file; expected a PyTorch .pth checkpoint "
                         "(the official SAM / MedSAM files)", path)
    raise InputError(f"not a PyTorch checkpoint: neither a zip archive nor a pickle (starts with {head[:8]!r})",
                     path)


def _as_state_dict(loaded: object, path: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    """Check that ``loaded`` is (or wraps) a flat ``{name: tensor}`` mapping."""
    if not isinstance(loaded, Mapping):
        raise InputError(f"expected a state dict (a mapping of names to tensors), found a {type(loaded).__name__}",
                         path)
    wrapper = None
    if not any(marker in loaded for marker in markers()):
        for key in WRAPPER_KEYS:
            if isinstance(loaded.get(key), Mapping):
                wrapper, loaded = key, loaded[key]
                break
    not_tensors = [key for key, value in loaded.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        key = not_tensors[0]
        raise InputError(
            f"expected a state dict of tensors, but entry {key!r} holds a {type(loaded[key]).__name__} "
            f"({len(not_tensors)} of {len(loaded)} entries are not tensors; entries: {_sample(loaded)})", path
        )
    return {str(key): value for key, value in loaded.items()}, wrapper


# ---------------------------------------------------------------------------------------------
# What a state dict holds


def detect_model_type(state_dict: Mapping[str, torch.Tensor], path: str | Path | None = None) -> str:
    """The registered model type whose signature ``state_dict`` has (:func:`medsaga.model.registry.recognise`):
    ``vit_b`` / ``vit_l`` / ``vit_h`` / ``tiny`` from the patch-embedding width and the block count,
    ``litemedsam`` from TinyViT's patch embedding.

    Works on any input size (the grid does not enter) and on meta tensors. A state dict that is not
    SAM's, or whose shapes match no registered type, is an :class:`InputError` naming what was found.
    (LiteMedSAM's exact shapes are then checked by the strict load.)
    """
    return recognise(state_dict, path).name


def source_image_size(state_dict: Mapping[str, torch.Tensor], path: str | Path | None = None) -> int:
    """The input size a state dict was made for (ViTs: from ``pos_embed``, 1024 for the official
    files; LiteMedSAM: 256, its tensors do not depend on the size)."""
    return recognise(state_dict, path).source_image_size(state_dict, path)


# ---------------------------------------------------------------------------------------------
# Fitting and loading


def adapt_state_dict(state_dict: Mapping[str, torch.Tensor], model_state: Mapping[str, torch.Tensor],
                     model_type: str, path: str | Path | None = None,
                     ) -> tuple[dict[str, torch.Tensor], tuple[str, ...], tuple[int, ...]]:
    """Fit ``state_dict`` (of ``model_type``) to ``model_state``'s shapes: the size-dependent
    tensors as the type's registry entry says, and the mask heads.

    Returns the adapted state dict, the keys that were resized, and the mask-head sources. Keys not
    named in the module docstring pass through untouched (same tensor objects).
    """
    adapted, sources = adapt_mask_heads(state_dict, int(model_state["mask_decoder.mask_tokens.weight"].shape[0]))
    resize = get_model_type(model_type).resize_state
    if resize is None:
        return adapted, (), sources
    adapted, resized = resize(adapted, model_state, Path(path) if path is not None else None)
    return adapted, resized, sources


def check_layout(state_dict: Mapping[str, torch.Tensor], model_state: Mapping[str, torch.Tensor],
                 model_type: str, path: str | Path | None = None) -> None:
    """Raise :class:`InputError` unless ``state_dict`` has exactly ``model_state``'s keys and shapes."""
    missing = sorted(model_state.keys() - state_dict.keys())
    unexpected = sorted(state_dict.keys() - model_state.keys())
    mismatched = [f"{key}: file {tuple(state_dict[key].shape)} vs model {tuple(model_state[key].shape)}"
                  for key in sorted(model_state.keys() & state_dict.keys())
                  if state_dict[key].shape != model_state[key].shape]
    problems = [f"{len(keys)} {label} ({', '.join(keys[:_LISTED])}{', ...' if len(keys) > _LISTED else ''})"
                for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                    ("shape mismatches", mismatched)) if keys]
    if problems:
        raise InputError(f"state dict does not match the {model_type} layout: " + "; ".join(problems), path)


def validate_state_dict(state_dict: Mapping[str, torch.Tensor], path: str | Path | None = None) -> str:
    """Check, without allocating a model, that ``state_dict`` loads strictly; return its model type.

    The state dict is checked against its own type built on the ``meta`` device at the input size
    its ``pos_embed`` was made for, so a medsaga checkpoint saved at 256 pixels validates too.
    """
    entry = recognise(state_dict, path)
    model_type = entry.name
    image_size = entry.source_image_size(state_dict, path)
    num_masks = num_mask_heads(state_dict) or 4
    model = build_sam(model_type, num_classes=max(num_masks - 1, 1), image_size=image_size, device="meta")
    model_state = model.state_dict()
    adapted, _, _ = adapt_state_dict(state_dict, model_state, model_type, path)
    check_layout(adapted, model_state, model_type, path)
    return model_type


def load_weights(model: Sam, state_dict: Mapping[str, torch.Tensor], *, path: str | Path | None = None,
                 unwrapped_from: str | None = None, assign: bool | None = None) -> LoadReport:
    """Adapt ``state_dict`` to ``model`` (input size, class count) and load it strictly.

    ``assign`` is passed to ``load_state_dict``; by default it is on when the model lives on the
    ``meta`` device (the tensors are then taken over rather than copied into unallocated storage).
    """
    model_state = model.state_dict()
    file_type = detect_model_type(state_dict, path)
    model_type = detect_model_type(model_state)
    if file_type != model_type:
        raise InputError(f"the checkpoint holds {file_type} weights but the model is {model_type}", path)
    source_size = source_image_size(state_dict, path)
    source_masks = num_mask_heads(state_dict) or 0
    adapted, resized, sources = adapt_state_dict(state_dict, model_state, model_type, path)
    check_layout(adapted, model_state, model_type, path)
    if assign is None:
        assign = any(p.is_meta for p in model.parameters())
    model.load_state_dict(adapted, strict=True, assign=assign)
    return LoadReport(model_type=model_type, source_image_size=source_size,
                      image_size=int(model.image_encoder.img_size), resized=resized,
                      mask_head_sources=sources, source_num_masks=source_masks, unwrapped_from=unwrapped_from)


def load_checkpoint(model: Sam, path: str | Path) -> LoadReport:
    """Read ``path`` and load it into ``model`` (see :func:`load_weights`)."""
    state_dict, wrapper = read_state_dict(path)
    return load_weights(model, state_dict, path=path, unwrapped_from=wrapper)


def build_sam_from_checkpoint(path: str | Path, *, num_classes: int, image_size: int | None = None,
                              model_type: str | None = None) -> tuple[Sam, LoadReport]:
    """Build the checkpoint's model type at ``image_size`` for ``num_classes`` and load it.

    The model type is detected from the file's shapes; pass ``model_type`` to insist on one (a file
    of another type is then an :class:`InputError`). ``image_size`` ``None``: the detected type's
    default (:attr:`~medsaga.model.registry.ModelType.default_image_size`).
    """
    if image_size is not None:
        check_image_size(image_size)
    state_dict, wrapper = read_state_dict(path)
    entry = recognise(state_dict, path)
    if model_type is not None and model_type != entry.name:
        raise InputError(f"expected a {model_type} checkpoint, found {entry.name} weights", path)
    # Built on the meta device and handed the file's tensors (assign=True): no random
    # initialisation to throw away and no second copy of the weights (2.5 GB for vit_h).
    sam = build_sam(entry.name, num_classes=num_classes, image_size=image_size or entry.default_image_size,
                    device="meta")
    report = load_weights(sam, state_dict, path=path, unwrapped_from=wrapper, assign=True)
    return sam.float(), report


# ---------------------------------------------------------------------------------------------
# Message helpers


def _sample(mapping: Mapping[str, object]) -> str:
    return sample_keys(mapping, _LISTED)


def _first_line(error: BaseException) -> str:
    """The first sentence of an error: torch's messages go on with generic advice after it."""
    text = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", str(error).strip())  # C++ assertion prefix
    first = text.splitlines()[0] if text else type(error).__name__
    return first.split(". ")[0].rstrip(".")[:200]


def _unpickler_reason(error: BaseException) -> str:
    """The informative line of an unpickling error (torch's own lead-in is about its defaults)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if line.endswith("WeightsUnpickler error:") and index + 1 < len(lines):
            return lines[index + 1][:200]
    return _first_line(error)


def _unsupported_global(error: BaseException) -> str:
    """The line of torch's weights-only refusal that names the offending Python object."""
    for line in str(error).splitlines():
        if "GLOBAL" in line or "Unsupported" in line:
            return line.strip()[:200]
    return _first_line(error)

"""Fit the mask decoder's per-mask heads of a checkpoint to another number of output masks.

SAM's decoder has one set of weights per output mask: a row of ``mask_tokens.weight``, one
``output_hypernetworks_mlps.{i}`` MLP and one output of the IoU head's last layer. The official
checkpoints have 4 (token 0 is SAM's single-mask output, tokens 1–3 its three multimask outputs).
A model for ``C`` classes has ``C + 1`` (background + classes).

Rule (documented, deterministic): output mask ``j`` takes the weights of checkpoint mask
``j mod n`` where ``n`` is the checkpoint's count. So with ``C + 1 ≤ n`` the first ``C + 1`` heads
are kept (truncation), with ``C + 1 = n`` nothing changes, and with ``C + 1 > n`` the extra heads
cycle through the pretrained ones (4 → 0, 5 → 1, …) instead of starting from random values, so
every output starts as a working mask predictor. Copies start equal and are told apart by training
(each class gets its own target, hence its own gradient).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

MASK_TOKENS = "mask_decoder.mask_tokens.weight"
HYPERNETWORK_PREFIX = "mask_decoder.output_hypernetworks_mlps."
IOU_HEAD_PREFIX = "mask_decoder.iou_prediction_head.layers."
_HYPERNETWORK_KEY = re.compile(re.escape(HYPERNETWORK_PREFIX) + r"(\d+)\.(.+)")
_IOU_HEAD_KEY = re.compile(re.escape(IOU_HEAD_PREFIX) + r"(\d+)\.(weight|bias)")


def mask_head_sources(num_masks: int, num_source_masks: int) -> tuple[int, ...]:
    """For each of ``num_masks`` output masks, the checkpoint mask whose weights it takes."""
    return tuple(j % num_source_masks for j in range(num_masks))


def num_mask_heads(state_dict: Mapping[str, torch.Tensor]) -> int | None:
    """How many output masks a SAM state dict's decoder has (``None`` without a mask-token table)."""
    tokens = state_dict.get(MASK_TOKENS)
    return None if tokens is None or tokens.dim() != 2 else int(tokens.shape[0])


def adapt_mask_heads(state_dict: Mapping[str, torch.Tensor],
                     num_masks: int) -> tuple[dict[str, torch.Tensor], tuple[int, ...]]:
    """A copy of ``state_dict`` whose decoder heads serve ``num_masks`` masks, and the source of each.

    Only the three per-mask parts are touched; every other entry is passed through as is (same
    tensor objects). A head used twice is cloned so that loading with ``assign=True`` never ties
    two parameters to one tensor.
    """
    num_source = num_mask_heads(state_dict)
    if num_source is None:
        return dict(state_dict), ()
    sources = mask_head_sources(num_masks, num_source)
    if num_masks == num_source:
        return dict(state_dict), sources
    index = torch.tensor(sources, device=state_dict[MASK_TOKENS].device)
    last_iou_layer = _last_iou_layer(state_dict)

    adapted: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if _HYPERNETWORK_KEY.fullmatch(key):
            continue  # rebuilt below, one MLP per output mask
        iou_match = _IOU_HEAD_KEY.fullmatch(key)
        if key == MASK_TOKENS or (iou_match and int(iou_match.group(1)) == last_iou_layer):
            adapted[key] = value.index_select(0, index)  # rows (tokens / IoU outputs) in output order
        else:
            adapted[key] = value
    for target, source in enumerate(sources):
        first_use = sources.index(source) == target
        for key, value in state_dict.items():
            match = _HYPERNETWORK_KEY.fullmatch(key)
            if match and int(match.group(1)) == source:
                adapted[f"{HYPERNETWORK_PREFIX}{target}.{match.group(2)}"] = value if first_use else value.clone()
    return adapted, sources


def _last_iou_layer(state_dict: Mapping[str, torch.Tensor]) -> int | None:
    """Index of the IoU head's output layer (the one with one row per mask)."""
    layers = [int(m.group(1)) for key in state_dict if (m := _IOU_HEAD_KEY.fullmatch(key))]
    return max(layers) if layers else None

"""``--device`` and ``--precision`` as every command takes them (finetune, predict, select, plan,
benchmark): one answer for what ``auto`` means, below every package that runs a model."""

from __future__ import annotations

import torch

from medsaga.errors import InputError


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without CUDA is an input error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: this machine has no usable CUDA device (torch.cuda.is_available() is False)")
    if name not in ("cpu", "cuda"):
        raise InputError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` → bf16 autocast on a CUDA device that supports it, else fp32 (CPU bf16 is slower)."""
    if name == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if name not in ("fp32", "bf16"):
        raise InputError(f"--precision must be auto, fp32 or bf16, got {name!r}")
    return name

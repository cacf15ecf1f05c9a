"""The resumable training checkpoint: tensors in safetensors, everything else in JSON.

``RUN_DIR/checkpoint/`` holds ``state.safetensors`` (what the method trained, and the optimizer's
tensors) and ``state.json`` (step, optimizer scalars and param groups, scheduler). A new
checkpoint is written to a scratch folder and swapped in by renames, so a crash at any moment
leaves one complete checkpoint: the new one, or the previous one (kept as ``.checkpoint-old``
until the swap is done). Nothing is unpickled on load.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medsaga.errors import InputError
from medsaga.methods.base import TuningMethod

CHECKPOINT_DIR = "checkpoint"
_SCRATCH = ".checkpoint-new"
_OLD = ".checkpoint-old"
TENSORS_FILE = "state.safetensors"
JSON_FILE = "state.json"


def save_training_state(run_dir: Path, *, step: int, method: TuningMethod, model: nn.Module,
                        optimizer: torch.optim.Optimizer, scheduler: Any) -> Path:
    """Write the state after ``step`` optimizer steps; returns the checkpoint folder."""
    from safetensors.torch import save_file

    tensors = {f"model.{name}": value for name, value in method.trained_state(model).items()}
    optimizer_state = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, state in optimizer_state["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    scheduler_state = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    document = {"step": step, "optimizer_scalars": scalars, "param_groups": optimizer_state["param_groups"],
                "scheduler": scheduler_state}

    scratch, final, old = run_dir / _SCRATCH, run_dir / CHECKPOINT_DIR, run_dir / _OLD
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    save_file(tensors, str(scratch / TENSORS_FILE), metadata={"step": str(step)})
    (scratch / JSON_FILE).write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    scratch.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoint_folder(run_dir: Path) -> Path | None:
    """The complete checkpoint in ``run_dir``, if any (the previous one if a swap was cut short)."""
    for name in (CHECKPOINT_DIR, _OLD):
        folder = run_dir / name
        if (folder / JSON_FILE).is_file() and (folder / TENSORS_FILE).is_file():
            return folder
    return None


def load_training_state(run_dir: Path, *, method: TuningMethod, model: nn.Module,
                        optimizer: torch.optim.Optimizer, scheduler: Any) -> int:
    """Restore model, optimizer and scheduler from ``run_dir``'s checkpoint; returns its step.

    Raises:
        InputError: no checkpoint, or one that does not fit this model and method.
    """
    from safetensors.torch import load_file

    folder = checkpoint_folder(run_dir)
    if folder is None:
        raise InputError("no training checkpoint to resume from (checkpoint/state.json)", run_dir)
    document = json.loads((folder / JSON_FILE).read_text(encoding="utf-8"))
    tensors = load_file(str(folder / TENSORS_FILE))
    model_state = {key[len("model."):]: value for key, value in tensors.items() if key.startswith("model.")}
    try:
        method.load_trained_state(model, model_state)
    except ValueError as error:
        raise InputError(f"checkpoint does not fit the model: {error}", folder) from None

    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for index, values in document["optimizer_scalars"].items():
        state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": document["param_groups"]})
    scheduler.load_state_dict({**document["scheduler"], "lr_lambdas": [None] * len(optimizer.param_groups)})
    return int(document["step"])

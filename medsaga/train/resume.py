"""The resumable training checkpoint: tensors in safetensors, everything else in JSON; when the
loop writes one, and what a run that diverged keeps.

``RUN_DIR/checkpoint/`` holds ``state.safetensors`` (what the method trained, and the optimizer's
tensors) and ``state.json`` (step, optimizer scalars and param groups, scheduler). A new
checkpoint is written to a scratch folder and swapped in by renames, so a crash at any moment
leaves one complete checkpoint: the new one, or the previous one (kept as ``.checkpoint-old``
until the swap is done). Nothing is unpickled on load.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medsaga.errors import InputError
from medsaga.io.atomic import write_errors
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


def check_resumable(run_dir: Path, *, total_steps: int | None = None) -> int:
    """The step ``run_dir``'s checkpoint was written at, after the cheap checks that it can be resumed:
    it exists, ``state.json`` holds the keys this module writes, ``state.safetensors`` has a
    safetensors header (only the header is read) of the same step, and the step is not beyond
    ``total_steps`` (when known).

    Raises:
        InputError: one line naming the file that is missing, unreadable or inconsistent.
    """
    folder = checkpoint_folder(run_dir)
    if folder is None:
        raise InputError("has no checkpoint yet (the run stopped before its first one was written): start it "
                         "again with the same command and --force", run_dir)
    step = _read_document(folder, total_steps)["step"]
    from safetensors import SafetensorError, safe_open

    path = folder / TENSORS_FILE
    try:
        with safe_open(str(path), framework="pt") as handle:
            written = (handle.metadata() or {}).get("step")
    except (SafetensorError, OSError) as error:
        raise InputError(f"not a readable checkpoint ({error})", path) from None
    if written is not None and written != str(step):
        raise InputError(f"holds step {written}, but {JSON_FILE} beside it says step {step}: the checkpoint's files "
                         "do not belong together", path)
    return step


def _read_document(folder: Path, total_steps: int | None) -> dict[str, Any]:
    """``state.json``, checked: the keys :func:`save_training_state` writes, a step in ``[0, total_steps]``."""
    path = folder / JSON_FILE
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise InputError(f"not a readable checkpoint state ({error})", path) from None
    missing = [key for key in _DOCUMENT_KEYS if not isinstance(document, dict) or key not in document]
    if missing:
        raise InputError(f"not a medsaga checkpoint state: no {', '.join(missing)}", path)
    step = document["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise InputError(f"step must be a whole number of at least 0, got {step!r}", path)
    if total_steps is not None and step > total_steps:
        raise InputError(f"step {step} is beyond the run's {total_steps} steps: this checkpoint is not the run's",
                         path)
    return document


# What save_training_state writes into state.json (a file missing one was not written by it).
_DOCUMENT_KEYS = ("step", "optimizer_scalars", "param_groups", "scheduler")


def load_training_state(run_dir: Path, *, method: TuningMethod, model: nn.Module,
                        optimizer: torch.optim.Optimizer, scheduler: Any, total_steps: int | None = None) -> int:
    """Restore model, optimizer and scheduler from ``run_dir``'s checkpoint; returns its step.

    ``total_steps``: the run's steps; a checkpoint beyond them is refused.

    Raises:
        InputError: no checkpoint, a damaged one, or one that does not fit this model and method.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    check_resumable(run_dir, total_steps=total_steps)
    folder = checkpoint_folder(run_dir)
    assert folder is not None  # check_resumable found it
    document = _read_document(folder, total_steps)
    try:
        tensors = load_file(str(folder / TENSORS_FILE))
    except (SafetensorError, OSError) as error:
        raise InputError(f"not a readable checkpoint ({error})", folder / TENSORS_FILE) from None
    model_state = {key[len("model."):]: value for key, value in tensors.items() if key.startswith("model.")}
    try:
        method.load_trained_state(model, model_state)
    except ValueError as error:
        raise InputError(f"checkpoint does not fit the model: {error}", folder) from None

    try:
        state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value
        for index, values in document["optimizer_scalars"].items():
            state.setdefault(int(index), {}).update(values)
        optimizer.load_state_dict({"state": state, "param_groups": document["param_groups"]})
        scheduler.load_state_dict({**document["scheduler"], "lr_lambdas": [None] * len(optimizer.param_groups)})
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as error:
        # optimizer/scheduler state that does not match this method's optimizer (a hand-edited state.json)
        raise InputError(f"the optimizer state does not fit this run ({type(error).__name__}: {error})",
                         folder) from None
    return int(document["step"])


def checkpoint_due(settings: Any, step: int) -> bool:
    """Whether a resumable checkpoint follows the 0-based ``step`` (the last step's is written after
    the loop): after the run's first step, so a run killed early can still be resumed, then every
    ``checkpoint_every`` steps; never with ``checkpoint_every`` 0 (only at the end). ``settings``:
    the run's :class:`~medsaga.train.loop.LoopSettings`."""
    done = step + 1
    return bool(settings.checkpoint_every) and done < settings.steps and (
        done == 1 or done % settings.checkpoint_every == 0)


def save_checkpoint(run_dir: Path, **state: Any) -> None:
    """:func:`save_training_state`, with a failed write (disk full, read-only) as one line naming the
    checkpoint folder (:func:`medsaga.io.atomic.write_errors`). The checkpoint is swapped in by
    renames, so the previous one stays whole; the scratch folder left behind is never read and is
    cleared by the next save."""
    with write_errors(run_dir / CHECKPOINT_DIR):
        save_training_state(run_dir, **state)


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the lines an interrupted run wrote after its last checkpoint (they will be redone)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
            and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def not_finite(loss: float, method: TuningMethod, model: nn.Module, *, check_weights: bool) -> str | None:
    """What is not finite after a step, or ``None``: the loss (every step), and, where the step's
    weights are about to be written (``check_weights``), the tensors the method trained (a finite
    loss can still come with an overflowing update)."""
    if not math.isfinite(loss):
        return f"loss is {loss}"
    if check_weights:
        bad = [name for name, tensor in method.trained_state(model).items()
               if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
        if bad:
            return f"loss is {loss:.4g} but {len(bad)} trained tensor(s) are not finite ({bad[0]}, ...)"
    return None


def diverged_message(step: int, failure: str, run_dir: Path, last_checkpoint: int | None, settings: Any) -> str:
    """The one line a diverged run stops with: the step, what went wrong, what is kept, what to try."""
    kept = (f"the last good checkpoint is at step {last_checkpoint} in {run_dir / CHECKPOINT_DIR}"
            if last_checkpoint is not None else "no checkpoint was written")
    rates = f"{settings.lr:g}" + (f", decoder {settings.decoder_lr:g}" if settings.decoder_lr is not None else "")
    return f"step {step}: {failure}; {kept}; lower --lr / --decoder-lr (this run: {rates}) and start again with --force"

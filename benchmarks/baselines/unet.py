"""The from-scratch 2-D U-Net a user would train instead of fine-tuning SAM (issue 27's reference).

MONAI ``BasicUNet`` (features 32-32-64-128-256-32, instance norm, LeakyReLU), trained from random
weights on axial slices of the training cases: DiceCE loss (softmax, one-hot), AdamW at 2e-3 with
polynomial (0.9) decay fitted to a wall-clock budget by medsaga's own
:class:`~medsaga.train.time_budget.StepBudget` (no warm-up: its five timed probe steps run on a
small ramp), batches of 8 slices padded (and, when larger, randomly cropped) to 224 x 224, random
flips along both in-plane axes and intensity jitter (scale 0.9-1.1, shift ±0.1 of the normalised
intensity). Each volume is normalised alone: clipped to its 0.5-99.5th percentiles, then to zero
mean and unit variance. Every slice holding a label is kept, and up to a quarter as many empty
slices (seeded), as ``medsaga finetune`` keeps them.

``predict`` writes one label map per input image as NIfTI on the input's own grid (its affine and
header), so ``medsaga evaluate`` scores it exactly as it scores medsaga's predictions.

Usage::

    python benchmarks/baselines/unet.py train DATA --cases A,B --out RUN --time-budget 600
    python benchmarks/baselines/unet.py predict RUN IMAGE... --out PREDICTIONS
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FEATURES = (32, 32, 64, 128, 256, 32)
PATCH = 224
BATCH = 8
LR = 2e-3
WEIGHT_DECAY = 1e-2
EMPTY_RATIO = 0.25
WEIGHTS_FILE = "unet.safetensors"
CONFIG_FILE = "unet.json"


def axial_axis(affine: np.ndarray) -> int:
    """The voxel axis that runs most nearly inferior-superior (the slicing axis)."""
    return int(np.argmax(np.abs(np.asarray(affine)[2, :3])))


def normalise(volume: np.ndarray) -> np.ndarray:
    """Clip to the 0.5-99.5th percentiles, then zero mean, unit variance (float32)."""
    low, high = np.percentile(volume, [0.5, 99.5])
    clipped = np.clip(volume.astype(np.float32), low, high)
    return ((clipped - clipped.mean()) / max(float(clipped.std()), 1e-6)).astype(np.float32)


def pad_to(image: np.ndarray, height: int, width: int, value: float = 0.0) -> np.ndarray:
    """``image`` ``(..., h, w)`` padded at the end of each in-plane axis to at least ``(height, width)``."""
    h, w = image.shape[-2:]
    pad = [(0, 0)] * (image.ndim - 2) + [(0, max(0, height - h)), (0, max(0, width - w))]
    return np.pad(image, pad, constant_values=value)


def load_slices(data: Path, cases: list[str], seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Axial slices of ``cases``: images ``(h, w)`` float32 normalised, labels ``(h, w)`` int64."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    images, labels = [], []
    for case in cases:
        image_nii = nib.load(data / "imagesTr" / f"{case}_0000.nii.gz")
        label = np.asarray(nib.load(data / "labelsTr" / f"{case}.nii.gz").dataobj).astype(np.int64)
        axis = axial_axis(image_nii.affine)
        volume = normalise(np.asarray(image_nii.dataobj))
        volume, label = np.moveaxis(volume, axis, 0), np.moveaxis(label, axis, 0)
        full = [i for i in range(len(label)) if label[i].any()]
        empty = [i for i in range(len(label)) if not label[i].any()]
        keep = sorted(full + list(rng.permutation(empty)[:int(math.ceil(EMPTY_RATIO * len(full)))]))
        images += [volume[i] for i in keep]
        labels += [label[i] for i in keep]
    return images, labels


def batch(images: list[np.ndarray], labels: list[np.ndarray], step: int, seed: int) -> tuple[Any, Any]:
    """Step ``step``'s batch: ``(B, 1, 224, 224)`` float images and ``(B, 1, 224, 224)`` labels,
    drawn, cropped, flipped and jittered from (seed, step)."""
    import torch

    rng = np.random.default_rng([seed, step])
    xs, ys = [], []
    for index in rng.integers(0, len(images), BATCH):
        image, label = pad_to(images[index], PATCH, PATCH, float(images[index].min())), pad_to(labels[index], PATCH, PATCH)
        top = int(rng.integers(0, image.shape[0] - PATCH + 1))
        left = int(rng.integers(0, image.shape[1] - PATCH + 1))
        image, label = image[top:top + PATCH, left:left + PATCH], label[top:top + PATCH, left:left + PATCH]
        for axis in (0, 1):
            if rng.random() < 0.5:
                image, label = np.flip(image, axis), np.flip(label, axis)
        image = image * rng.uniform(0.9, 1.1) + rng.uniform(-0.1, 0.1)
        xs.append(np.ascontiguousarray(image, dtype=np.float32))  # the jitter's float64 scalars
        ys.append(np.ascontiguousarray(label))
    return torch.from_numpy(np.stack(xs))[:, None], torch.from_numpy(np.stack(ys))[:, None]


def build(num_classes: int) -> Any:
    from monai.networks.nets import BasicUNet

    return BasicUNet(spatial_dims=2, in_channels=1, out_channels=num_classes + 1, features=FEATURES)


def train(data: Path, cases: list[str], out: Path, budget_seconds: float, seed: int,
          clock: Any = time.perf_counter, started: float | None = None) -> dict[str, Any]:
    """Train for ``budget_seconds``, counted from ``started`` (``clock()`` readings; ``None``: this
    call); writes the weights and unet.json."""
    import torch
    from monai.losses import DiceCELoss
    from safetensors.torch import save_file

    from medsaga.train.time_budget import StepBudget

    budget = StepBudget(budget_seconds, warmup_fraction=0.0, clock=clock, started=started)
    spec = json.loads((data / "dataset.json").read_text(encoding="utf-8"))
    num_classes = max(spec["labels"].values())
    torch.manual_seed(seed)
    images, labels = load_slices(data, cases, seed)
    model = build(num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: budget.lr_factor(t))
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    out.mkdir(parents=True, exist_ok=True)
    budget.steps_begin()
    losses = []
    step = 0
    model.train()
    while budget.total_steps is None or step < budget.total_steps:
        x, y = batch(images, labels, step, seed)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_function(model(x), y)
        loss.backward()
        optimizer.step()
        budget.step_done(step + 1)
        scheduler.step()
        losses.append(round(loss.item(), 5))
        step += 1
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(out / WEIGHTS_FILE))
    report = {"cases": cases, "num_classes": num_classes, "training_slices": len(images), "steps": step,
              "features": list(FEATURES), "patch": PATCH, "batch": BATCH, "lr": LR, "weight_decay": WEIGHT_DECAY,
              "seed": seed, "time_budget": budget.describe(), "final_loss": losses[-1] if losses else None,
              "losses_every_10": losses[::10]}
    (out / CONFIG_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def predict(run: Path, images: list[Path], out: Path) -> None:
    """One NIfTI label map per image, ``CASE.nii.gz`` in ``out``, on the image's own grid."""
    import nibabel as nib
    import torch
    from safetensors.torch import load_file

    config = json.loads((run / CONFIG_FILE).read_text(encoding="utf-8"))
    model = build(config["num_classes"])
    model.load_state_dict(load_file(str(run / WEIGHTS_FILE)))
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    for path in images:
        image_nii = nib.load(path)
        axis = axial_axis(image_nii.affine)
        volume = np.moveaxis(normalise(np.asarray(image_nii.dataobj)), axis, 0)
        h, w = volume.shape[1:]
        # At least the training patch (as training padded them), and a multiple of 16: BasicUNet halves
        # the grid four times.
        size = (max(PATCH, math.ceil(h / 16) * 16), max(PATCH, math.ceil(w / 16) * 16))
        padded = pad_to(volume, *size, value=float(volume.min()))
        predicted = np.zeros(volume.shape, dtype=np.uint8)
        with torch.no_grad():
            for first in range(0, len(volume), BATCH):
                x = torch.from_numpy(np.ascontiguousarray(padded[first:first + BATCH]))[:, None]
                predicted[first:first + BATCH] = model(x).argmax(1)[:, :h, :w].numpy().astype(np.uint8)
        header = image_nii.header.copy()
        header.set_data_dtype(np.uint8)
        header.set_slope_inter(1, 0)
        case = path.name.removesuffix(".nii.gz").removesuffix("_0000")
        nib.save(nib.Nifti1Image(np.moveaxis(predicted, 0, axis), image_nii.affine, header), out / f"{case}.nii.gz")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train_parser = commands.add_parser("train")
    train_parser.add_argument("data", type=Path)
    train_parser.add_argument("--cases", required=True)
    train_parser.add_argument("--out", type=Path, required=True)
    train_parser.add_argument("--time-budget", type=float, required=True, help="seconds of --clock time")
    train_parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                              help="wall-clock seconds, or this process's CPU seconds (as medsaga finetune's "
                                   "--time-budget-clock)")
    train_parser.add_argument("--seed", type=int, default=0)
    predict_parser = commands.add_parser("predict")
    predict_parser.add_argument("run", type=Path)
    predict_parser.add_argument("images", type=Path, nargs="+")
    predict_parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "train":
        # The budget counts from here: reading the cases is part of the wait, as for medsaga.
        clock = time.process_time if args.clock == "cpu" else time.perf_counter
        report = train(args.data, args.cases.split(","), args.out, args.time_budget, args.seed, clock=clock,
                       started=clock())
        print(f"trained {report['steps']} steps on {report['training_slices']} slices, final loss "
              f"{report['final_loss']}", flush=True)
    else:
        predict(args.run, args.images, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

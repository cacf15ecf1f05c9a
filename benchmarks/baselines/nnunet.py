"""nnU-Net v2 (``nnunetv2`` 2.5.2 from PyPI), 2d configuration, as the benchmark's fourth contender.

Installed only by the ``benchmark`` extra (``pip install -e .[benchmark]``), never imported by
medsaga or its CLI; this module imports ``nnunetv2`` only inside its ``train`` and ``predict``
commands, each run in its own process with nnU-Net's three folders (``nnUNet_raw``,
``nnUNet_preprocessed``, ``nnUNet_results``) pointing inside the run folder. Nothing here imports
torchvision, nor does any part of nnunetv2 2.5.2 used here (checked: ``sys.modules`` holds no
torchvision after the imports; none is installed).

``train`` (the budget counts from the start of its ``main()``, before ``torch`` and ``nnunetv2``
are imported, so everything below counts):

1. the K training cases become ``DatasetNNN_<name>`` under ``RUN/nnUNet_raw``: symbolic links to the
   dataset's own ``imagesTr/CASE_XXXX.nii.gz`` and ``labelsTr/CASE.nii.gz``, and its ``dataset.json``
   with ``numTraining`` = K and ``overwrite_image_reader_writer: NibabelIO`` (nnU-Net's nibabel
   reader: it writes the label maps with the input's own affine; the default SimpleITK reader
   re-derives the geometry from direction cosines);
2. nnU-Net's own fingerprint extraction, planning (``ExperimentPlanner``, ``nnUNetPlans``: the
   2d patch and batch sizes it plans are kept as planned) and preprocessing of the 2d
   configuration, with one worker process each (``nnUNetv2_plan_and_preprocess -c 2d -np 1`` by its
   Python API);
3. ``splits_final.json`` with a single fold 0 whose ``train`` and ``val`` are both the K cases: stock
   nnU-Net makes a 5-fold split and cannot train on fewer than 5 cases (MIC-DKFZ/nnUNet#435, #1933);
4. training of fold 0 by :func:`_budget_trainer_class`'s ``nnUNetTrainerBudget``, a subclass of
   ``nnUNetTrainer`` run by this script (not found by ``nnUNetv2_train``'s class lookup), on the CPU:
   nnU-Net's network, loss (Dice + CE, deep supervision), SGD (lr 0.01, Nesterov momentum 0.99,
   weight decay 3e-5, gradient clipping at 12), data loader and augmentation, in the main process
   (``nnUNet_n_proc_DA=0``: batchgenerators' ``SingleThreadedAugmenter``), no ``torch.compile``.
   Stock nnU-Net trains 1000 epochs of 250 iterations, its poly learning rate
   ``0.01 (1 - epoch / 1000) ^ 0.9`` set at each epoch's start. Here an epoch is one iteration:
   medsaga's :class:`~medsaga.train.time_budget.StepBudget` times the first iterations (five, fewer
   when they take a tenth of the budget; the first is not counted), fixes the total T that fits the
   rest of the budget (less 3 % kept for writing the checkpoint), and the learning rate follows
   nnU-Net's ``PolyLRScheduler`` over T, reaching 0 when the budget runs out; the timed iterations,
   before T is known, run at 0.01 (the poly's start). (nnunetv2 2.5.2's ``PolyLRScheduler``
   constructor passes the ``verbose`` argument torch 2.13 removed: a subclass replaces only the
   constructor.) There is no validation (no per-epoch pseudo Dice, no final validation of the fold:
   its cases are the training cases), so the weights kept are ``checkpoint_final.pth``.
   ``nnunet.json`` records T (``iterations``), the stock epochs of 250 iterations it equals, the
   planned patch and batch sizes, ``preprocessing_seconds`` (the start of ``main()`` to the written
   split: imports, steps 1-3) and ``training_seconds`` (from there to the written checkpoint:
   building the trainer and its data loaders, unpacking the preprocessed cases, the iterations).
   On CHAOS at K = 2 (2026-12, shared 2-core machine, OMP_NUM_THREADS=1) nnU-Net planned 256 x 256
   patches in batches of 3; 120 CPU-seconds bought 17 s of preprocessing and 26 iterations of
   3.8 s (0.1 stock epoch).

With ``--clock cpu`` the budget counts CPU seconds of the train process plus those of its finished
child processes (nnU-Net's fingerprint, preprocessing and unpacking pools, which each import
nnunetv2 again); with ``--clock wall``, wall-clock seconds.

``predict`` runs nnU-Net's own ``nnUNetPredictor`` (sliding window with tile step 0.5 and Gaussian
weighting, ``predict_from_files_sequential``: no worker processes) on the CPU with fold 0's
``checkpoint_final.pth``. It is initialised by hand (``manual_initialization``) from the network
nnU-Net's ``build_network_architecture`` builds for these plans (the budget trainer does not change
it) because nnU-Net's own lookup of the trainer class only searches its own package. Mirroring
test-time augmentation is off by default (``--mirroring`` turns it on): on the CPU it multiplies the
prediction time by four (both in-plane axes: 149 s instead of 35 s for one 256 x 256 x 36 CHAOS
volume), and the other contenders use none. Each label map is
checked against its image (same shape, same affine) and written as ``CASE.nii.gz`` with the image's
own header (uint8), so ``medsaga evaluate`` scores it exactly as it scores medsaga's predictions.

Usage::

    python benchmarks/baselines/nnunet.py train DATA --cases A,B --out RUN --time-budget 600 --clock cpu
    python benchmarks/baselines/nnunet.py predict RUN IMAGE... --out PREDICTIONS
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PIP_COMMAND = "pip install -e .[benchmark]  (nnunetv2==2.5.2)"
DATASET_ID = 999
CONFIGURATION = "2d"
PLANS = "nnUNetPlans"
FOLD = 0
TRAINER = "nnUNetTrainerBudget"
CHECKPOINT = "checkpoint_final.pth"
STOCK_ITERATIONS_PER_EPOCH = 250
READER_WRITER = "NibabelIO"
REPORT_FILE = "nnunet.json"
FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


def unavailable() -> str | None:
    """Why this contender cannot run here (``None``: it can)."""
    if importlib.util.find_spec("nnunetv2") is None:
        return f"nnunetv2 is not installed ({PIP_COMMAND})"
    return None


def case_name(image: Path) -> str:
    """``CASE`` of an image file ``CASE_0000.nii.gz``."""
    return re.sub(r"_\d{4}$", "", Path(image).name.removesuffix(".nii.gz"))


def run(data: Path, cases: list[str], run: Path, images: list[Path], labels: Path, budget: float, seed: int,
        title: str, clock: str = "cpu", *, timed_commands: Callable[..., dict[str, Any]],
        check_disjoint: Callable[[list[str], list[str]], None]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train on ``cases`` for ``budget`` seconds of ``clock``, predict ``images`` into
    ``run/predictions``, score them against ``labels`` into ``run/evaluation``; the timings of the
    three commands and what was trained (for the record)."""
    check_disjoint(list(cases), [case_name(image) for image in images])
    script = [sys.executable, str(Path(__file__).resolve())]
    run.mkdir(parents=True, exist_ok=True)
    timings = timed_commands([
        ("train", [*script, "train", str(data), "--cases", ",".join(cases), "--out", str(run),
                   "--time-budget", f"{budget:g}", "--clock", clock, "--seed", str(seed)]),
        ("predict", [*script, "predict", str(run), *map(str, images), "--out", str(run / "predictions")]),
        ("evaluate", [str(Path(sys.executable).with_name("medsaga")), "evaluate", str(run / "predictions"),
                      str(labels), "--labels", str(data / "dataset.json"), "--out", str(run / "evaluation"),
                      "--force"])], run.parent / "nnunet", title)
    report = json.loads((run / REPORT_FILE).read_text(encoding="utf-8"))
    return timings, {key: report[key] for key in (
        "nnunetv2", "steps", "iterations", "stock_epochs", "patch_size", "batch_size", "time_budget",
        "preprocessing_seconds", "training_seconds", "final_loss", "configuration", "plans", "prediction")}


def cpu_clock() -> float:
    """CPU seconds of this process and of its finished (waited-for) child processes."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def folders(run: Path) -> dict[str, str]:
    """nnU-Net's environment for a run: its three folders inside ``run``, no compile, no workers."""
    # nnUNet_n_proc_DA is 1 while planning (its VRAM estimate sets torch's threads to it), 0 for training.
    return {**{name: str(run / name) for name in FOLDERS}, "nnUNet_compile": "false", "nnUNet_n_proc_DA": "1",
            "nnUNet_def_n_proc": "1"}


def dataset_name(data: Path) -> str:
    """``Dataset999_<name>``: the data folder's name, as nnU-Net allows it."""
    return f"Dataset{DATASET_ID:03d}_" + (re.sub(r"[^A-Za-z0-9]+", "", data.resolve().name) or "data")


def write_raw_dataset(data: Path, cases: list[str], raw: Path) -> dict[str, Any]:
    """``raw`` as nnU-Net's raw dataset of ``cases`` (links to the files of ``data``); its dataset.json."""
    spec = json.loads((data / "dataset.json").read_text(encoding="utf-8"))
    ending = spec.get("file_ending", ".nii.gz")
    channels = len(spec["channel_names"])
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    for case in cases:
        for channel in range(channels):
            source = data / "imagesTr" / f"{case}_{channel:04d}{ending}"
            if not source.is_file():
                raise SystemExit(f"{source}: no such image (case {case}, channel {channel})")
            (raw / "imagesTr" / source.name).symlink_to(source.resolve())
        label = data / "labelsTr" / f"{case}{ending}"
        if not label.is_file():
            raise SystemExit(f"{label}: no such label map (case {case})")
        (raw / "labelsTr" / label.name).symlink_to(label.resolve())
    spec = {**spec, "numTraining": len(cases), "file_ending": ending, "overwrite_image_reader_writer": READER_WRITER}
    (raw / "dataset.json").write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
    return spec


def _budget_trainer_class() -> type:
    """``nnUNetTrainerBudget``: nnUNetTrainer on the CPU, trained for ``self.budget`` (a
    :class:`StepBudget` set before :meth:`run_training`), one iteration per epoch, no validation.

    Built on demand so that importing this module does not import nnunetv2.
    """
    import numpy as np
    import torch
    from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    class PolyLR(PolyLRScheduler):
        """nnU-Net's ``PolyLRScheduler`` (its ``step``, its formula); only its constructor is
        replaced: 2.5.2's passes the ``verbose`` argument that torch 2.13's ``LRScheduler`` no
        longer takes (TypeError)."""

        def __init__(self, optimizer: Any, initial_lr: float, max_steps: int, exponent: float = 0.9) -> None:
            self.optimizer, self.initial_lr, self.max_steps, self.exponent, self.ctr = \
                optimizer, initial_lr, max_steps, exponent, 0
            torch.optim.lr_scheduler.LRScheduler.__init__(self, optimizer, -1)

    class nnUNetTrainerBudget(nnUNetTrainer):
        budget: Any = None

        def _do_i_compile(self) -> bool:
            return False

        def configure_optimizers(self) -> tuple[Any, Any]:
            """nnUNetTrainer's SGD; the poly schedule is replaced once the budget fixes the total."""
            optimizer = torch.optim.SGD(self.network.parameters(), self.initial_lr, weight_decay=self.weight_decay,
                                        momentum=0.99, nesterov=True)
            return optimizer, PolyLR(optimizer, self.initial_lr, self.num_epochs)

        def run_training(self) -> None:
            budget = self.budget
            self.on_train_start()
            self.num_iterations_per_epoch = 1
            self.losses: list[float | None] = []
            self.network.train()
            self.lr_scheduler.step(0)  # 0.01: the poly's value at step 0, whatever the total
            budget.steps_begin()
            iteration = 0
            poly = None
            while budget.total_steps is None or iteration < budget.total_steps:
                if budget.total_steps is not None:
                    if poly is None:
                        poly = self.lr_scheduler = PolyLR(self.optimizer, self.initial_lr, budget.total_steps)
                    poly.step(iteration)
                output = self.train_step(next(self.dataloader_train))
                loss = float(np.mean(output["loss"]))
                self.losses.append(round(loss, 5) if np.isfinite(loss) else None)  # JSON has no NaN
                iteration += 1
                if budget.step_done(iteration) is not None:
                    self.print_to_log_file(f"budget: {budget.total_steps} iterations "
                                           f"({budget.seconds_per_step():.2f} s each)")
            self.num_epochs = iteration
            self.current_epoch = iteration
            self.on_train_end()  # writes checkpoint_final.pth

    return nnUNetTrainerBudget


def train(data: Path, cases: list[str], out: Path, budget_seconds: float, seed: int,
          clock: Callable[[], float] = time.perf_counter, started: float | None = None,
          clock_name: str = "wall") -> dict[str, Any]:
    """Preprocess and train for ``budget_seconds`` of ``clock`` counted from ``started``
    (``None``: this call); writes nnU-Net's folders under ``out`` and ``out/nnunet.json``."""
    started = clock() if started is None else started
    out.mkdir(parents=True, exist_ok=True)
    for name in FOLDERS:
        shutil.rmtree(out / name, ignore_errors=True)
    os.environ.update(folders(out))  # before nnunetv2 is imported: nnunetv2.paths reads them then
    name = dataset_name(data)
    spec = write_raw_dataset(data, cases, out / "nnUNet_raw" / name)

    import random
    from importlib.metadata import version

    import numpy as np
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprints, plan_experiments,
                                                                      preprocess)

    from medsaga.train.time_budget import StepBudget

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    extract_fingerprints([DATASET_ID], num_processes=1, check_dataset_integrity=False, clean=True, verbose=False)
    plans_identifier = plan_experiments([DATASET_ID])
    preprocess([DATASET_ID], plans_identifier, configurations=(CONFIGURATION,), num_processes=(1,))
    preprocessed = out / "nnUNet_preprocessed" / name
    splits = [{"train": list(cases), "val": list(cases)}]
    (preprocessed / "splits_final.json").write_text(json.dumps(splits, indent=2) + "\n", encoding="utf-8")
    preprocessing_seconds = clock() - started

    os.environ["nnUNet_n_proc_DA"] = "0"  # data augmentation in this process: SingleThreadedAugmenter
    budget = StepBudget(budget_seconds, warmup_fraction=0.0, clock=clock, started=started)
    plans = load_json(str(preprocessed / f"{plans_identifier}.json"))
    trainer = _budget_trainer_class()(plans=plans, configuration=CONFIGURATION, fold=FOLD,
                                      dataset_json=load_json(str(preprocessed / "dataset.json")),
                                      device=torch.device("cpu"))
    trainer.budget = budget
    trainer.run_training()
    training_seconds = clock() - started - preprocessing_seconds
    iterations = trainer.current_epoch
    configuration = plans["configurations"][CONFIGURATION]
    report = {"nnunetv2": version("nnunetv2"), "cases": list(cases), "seed": seed, "dataset": name,
              "configuration": CONFIGURATION, "plans": plans_identifier, "trainer": TRAINER, "fold": FOLD,
              "splits": splits, "labels": spec["labels"], "steps": iterations, "iterations": iterations,
              "stock_epochs": round(iterations / STOCK_ITERATIONS_PER_EPOCH, 4),
              "patch_size": list(configuration["patch_size"]), "batch_size": configuration["batch_size"],
              "spacing": list(configuration["spacing"]), "initial_lr": trainer.initial_lr,
              "clock": clock_name, "time_budget": budget.describe(),
              "preprocessing_seconds": round(preprocessing_seconds, 1),
              "training_seconds": round(training_seconds, 1),
              "final_loss": trainer.losses[-1] if trainer.losses else None, "losses": trainer.losses,
              "prediction": None}
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def results_folder(run: Path) -> Path:
    """Where nnU-Net wrote the trained model of ``run`` (its plans, dataset.json, ``fold_0``)."""
    found = sorted((run / "nnUNet_results").glob(f"Dataset{DATASET_ID:03d}_*/{TRAINER}__*__{CONFIGURATION}"))
    if len(found) != 1:
        raise SystemExit(f"{run}: no trained nnU-Net model (run the train command first)")
    return found[0]


def predict(run: Path, images: list[Path], out: Path, mirroring: bool = False) -> None:
    """One label map ``CASE.nii.gz`` in ``out`` per image ``CASE_0000.nii.gz``, on the image's grid."""
    os.environ.update(folders(run))
    import nibabel as nib
    import numpy as np
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    model = results_folder(run)
    plans_manager = PlansManager(load_json(str(model / "plans.json")))
    dataset_json = load_json(str(model / "dataset.json"))
    configuration = plans_manager.get_configuration(CONFIGURATION)
    checkpoint = torch.load(model / f"fold_{FOLD}" / CHECKPOINT, map_location="cpu", weights_only=False)
    network = nnUNetTrainer.build_network_architecture(
        configuration.network_arch_class_name, configuration.network_arch_init_kwargs,
        configuration.network_arch_init_kwargs_req_import,
        determine_num_input_channels(plans_manager, configuration, dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads, enable_deep_supervision=False)
    network.load_state_dict(checkpoint["network_weights"])
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                                perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    predictor.manual_initialization(network, plans_manager, configuration, [checkpoint["network_weights"]],
                                    dataset_json, checkpoint["trainer_name"],
                                    checkpoint["inference_allowed_mirroring_axes"])
    channels = len(dataset_json["channel_names"])
    inputs = []
    for image in images:
        stem = Path(image).name.removesuffix(".nii.gz")
        if not re.search(r"_0000$", stem):
            raise SystemExit(f"{image}: nnU-Net images are named CASE_0000.nii.gz")
        inputs.append([str(Path(image).with_name(f"{stem[:-4]}{c:04d}.nii.gz")) for c in range(channels)])
    scratch = run / "nnunet_output"  # nnU-Net also writes its plans and arguments there
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    started = time.perf_counter()
    predictor.predict_from_files_sequential(inputs, [str(scratch / case_name(image)) for image in images],
                                            save_probabilities=False, overwrite=True)
    out.mkdir(parents=True, exist_ok=True)
    for image in images:
        source = nib.load(image)
        written = nib.load(scratch / f"{case_name(image)}.nii.gz")
        if written.shape != source.shape or not np.allclose(written.affine, source.affine, atol=1e-4):
            raise SystemExit(f"{image}: nnU-Net's label map has shape {written.shape} and affine\n{written.affine}"
                             f"\nwhere the image has {source.shape} and\n{source.affine}")
        header = source.header.copy()
        header.set_data_dtype(np.uint8)
        header.set_slope_inter(1, 0)
        labels = np.asarray(written.dataobj).astype(np.uint8)
        nib.save(nib.Nifti1Image(labels, source.affine, header), out / f"{case_name(image)}.nii.gz")
    report_path = run / REPORT_FILE
    if report_path.is_file():
        report = json.loads(report_path.read_text(encoding="utf-8"))
        report["prediction"] = {"checkpoint": CHECKPOINT, "fold": FOLD, "mirroring": mirroring,
                                "tile_step_size": 0.5, "gaussian": True, "device": "cpu",
                                "seconds": round(time.perf_counter() - started, 1)}
        report_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    # The budget counts from here, before torch and nnunetv2 are imported.
    clocks = {"cpu": cpu_clock, "wall": time.perf_counter}
    started = {name: clock() for name, clock in clocks.items()}
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train_parser = commands.add_parser("train")
    train_parser.add_argument("data", type=Path)
    train_parser.add_argument("--cases", required=True)
    train_parser.add_argument("--out", type=Path, required=True)
    train_parser.add_argument("--time-budget", type=float, required=True, help="seconds of --clock time")
    train_parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                              help="wall-clock seconds, or CPU seconds of this process and its finished children")
    train_parser.add_argument("--seed", type=int, default=0)
    predict_parser = commands.add_parser("predict")
    predict_parser.add_argument("run", type=Path)
    predict_parser.add_argument("images", type=Path, nargs="+")
    predict_parser.add_argument("--out", type=Path, required=True)
    predict_parser.add_argument("--mirroring", action="store_true", help="nnU-Net's mirroring test-time augmentation")
    args = parser.parse_args(argv)
    if args.command == "train":
        report = train(args.data, args.cases.split(","), args.out, args.time_budget, args.seed,
                       clock=clocks[args.clock], started=started[args.clock], clock_name=args.clock)
        print(f"nnU-Net trained {report['iterations']} iterations (batch {report['batch_size']}, patch "
              f"{report['patch_size']}) after {report['preprocessing_seconds']} s of preprocessing, final loss "
              f"{report['final_loss']}", flush=True)
    else:
        predict(args.run, args.images, args.out, mirroring=args.mirroring)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

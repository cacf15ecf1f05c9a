"""Where a case's predictions go, checked before any work, and the probability-map writer.

Layout of OUT (``<case>`` is the case id, :mod:`medsaga.predict.inputs`):

======================================  =====================================================
``OUT/<case>.nii.gz``                   every input: label map with the dataset's label values
                                        (NIfTI input: the input's own header, forms and codes)
``OUT/<case>.nrrd``                     NRRD and MetaImage inputs: the same label map as NRRD
``OUT/<case>.seg.dcm``                  DICOM series inputs: DICOM-SEG referencing the series
``OUT/probabilities/<case>.nii.gz``     with ``--probabilities``: float32, 4-D ``(I, J, K, C+1)``
======================================  =====================================================

Probabilities are one 4-D NIfTI per case rather than one file per class: one file to move around,
read with one call, and channel ``c`` is model class ``c`` (``config.json`` ``classes.values[c]``,
channel 0 the background), as in nnU-Net's probability outputs. They live in a subfolder so that
OUT itself holds label maps only (what ``medsaga evaluate`` or any tool globbing ``*.nii.gz`` expects).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsaga.errors import InputError
from medsaga.io.atomic import atomic_output
from medsaga.io.paths import ensure_writable_folder, same_path
from medsaga.io.volume import Volume
from medsaga.predict.inputs import PredictCase

PROBABILITIES_FOLDER = "probabilities"


@dataclass(frozen=True)
class CaseOutputs:
    """The files one case produces (``None``: not produced for this input kind or these options)."""

    nifti: Path
    nrrd: Path | None = None
    seg: Path | None = None
    probabilities: Path | None = None

    def paths(self) -> list[Path]:
        return [p for p in (self.nifti, self.nrrd, self.seg, self.probabilities) if p is not None]


def plan_outputs(cases: Sequence[PredictCase], out: str | Path, *, probabilities: bool = False,
                 force: bool = False, skip_existing: bool = False) -> dict[str, CaseOutputs]:
    """The outputs of every case, by case id, after checking that writing them is allowed.

    ``skip_existing``: existing outputs are allowed (a case with all of them is skipped by the
    caller, :func:`is_complete`; one with only some, interrupted between two files, is redone).

    Raises:
        InputError: OUT is a file, not writable, or one of the input folders; an output would replace an input
            (never allowed); an output exists and neither ``force`` nor ``skip_existing`` is set.
    """
    # A file, read-only or full: one line now, before the model is loaded (the shared check).
    out = ensure_writable_folder(out, "--out", keep=False)
    inputs = [image for case in cases for image in case.images]
    for image in inputs:
        # A SEG written into the series folder would become part of what that folder holds.
        if image.is_dir() and same_path(image, out):
            raise InputError("is an input DICOM series folder; choose another --out", out)
    plans = {}
    for case in cases:
        plan = CaseOutputs(
            nifti=out / f"{case.case_id}.nii.gz",
            nrrd=out / f"{case.case_id}.nrrd" if case.kind == "itk" else None,
            seg=out / f"{case.case_id}.seg.dcm" if case.kind == "dicom" else None,
            probabilities=out / PROBABILITIES_FOLDER / f"{case.case_id}.nii.gz" if probabilities else None,
        )
        for path in plan.paths():
            for image in inputs:
                if same_path(image, path):
                    raise InputError(f"would be overwritten by the prediction of case {case.case_id}; refusing to "
                                     "replace an input, choose another --out", image)
            if path.exists() and not (force or skip_existing):
                raise InputError("already exists; pass --force to replace it, or --skip-existing to keep it and "
                                 "predict only the cases not yet written", path)
            if path.is_dir():
                raise InputError("is a folder where an output file must go", path)
        plans[case.case_id] = plan
    return plans


def is_complete(plan: CaseOutputs) -> bool:
    """Every output of the case is on disk (each was written atomically: present means whole)."""
    return all(path.is_file() for path in plan.paths())


def write_probabilities(probabilities: np.ndarray, grid: Volume, path: str | Path, *,
                        description: str = "", overwrite: bool = False) -> Path:
    """Write ``probabilities`` ``(I, J, K, C+1)`` float32 on ``grid`` as a 4-D NIfTI, atomically.

    A NIfTI input's header is reused (forms, codes, units), so the maps overlay on it exactly;
    otherwise the geometry comes from the affine (sform and qform code 1, scanner space; the qform
    is marked unknown when it cannot hold a sheared affine). ``description`` goes into the header's
    80-character ``descrip``.

    Raises:
        InputError: the file exists without ``overwrite``, or cannot be written.
    """
    import nibabel as nib

    path = Path(path)
    if probabilities.shape[:3] != grid.shape or probabilities.ndim != 4:
        raise ValueError(f"probabilities {probabilities.shape} are not (I, J, K, C+1) on the grid {grid.shape}")
    if path.exists() and not overwrite:
        raise InputError("already exists; refusing to overwrite it (pass --force to replace it)", path)
    source_header = grid.source.nifti_header
    if source_header is not None and isinstance(source_header, nib.Nifti1Header):
        header = source_header.copy()
        image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    else:
        header, image_class = nib.Nifti1Header(), nib.Nifti1Image
        header.set_sform(grid.affine, code=1)
        header.set_qform(grid.affine, code=1)
        if not np.allclose(header.get_qform(), grid.affine, rtol=0, atol=1e-4):
            header.set_qform(grid.affine, code=0)  # a quaternion has no shear (gantry tilt)
        header.set_xyzt_units("mm", "unknown")
    data = np.asarray(probabilities, dtype=np.float32)
    header.set_data_shape(data.shape)
    header.set_data_dtype(np.float32)
    header["cal_min"], header["cal_max"] = 0.0, 1.0
    header["descrip"] = description.encode("ascii", "replace")[:79]
    image = image_class(data, None, header=header)
    image.header.set_slope_inter(1.0, 0.0)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as temporary:
            nib.save(image, str(temporary))
    except OSError as error:
        raise InputError(f"cannot write ({error.strerror or error})", path) from None
    return path

"""Pair predictions with reference label maps (and, for overlays, with images) by case id.

Only file names are looked at here; no voxels are read.

A case id is a file name without its ending (``.nii.gz``, ``.nii``, ``.nrrd``, ``.nhdr``, ``.mha``,
``.mhd``) and without one trailing ``_seg``, ``_label``, ``_labels``, ``_mask`` or ``_pred``. So
nnU-Net's ``labelsTr/CASE.nii.gz``, medsaga's predictions ``CASE.nii.gz`` and plain pairs'
``CASE_seg.nii.gz`` all mean case ``CASE``. Where a folder holds both ``CASE`` and ``CASE_seg``
(an image beside its label), the suffixed file is the label map. Where one case has a label map
in several formats (``medsaga predict`` writes an NRRD input's prediction as ``CASE.nii.gz`` and
``CASE.nrrd``), the first of ``.nii.gz``, ``.nii``, ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd`` is used.

A reference folder may also be a dataset: an nnU-Net/MSD root (its ``labelsTr/`` is used) or a
plain-pairs folder with ``labels/``. Images for overlays are found the same way (``imagesTr/``,
``images/`` or the folder itself), with nnU-Net's channel suffix: ``CASE_0000`` is channel 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from medsaga.data.dataset import SUPPORTED_ENDINGS
from medsaga.data.dataset import split_channel
from medsaga.errors import InputError

LABEL_FILE_SUFFIXES: tuple[str, ...] = ("_seg", "_labels", "_label", "_mask", "_pred")


@dataclass(frozen=True)
class CasePair:
    """One case to evaluate: its id, the predicted and the reference label map."""

    case_id: str
    prediction: Path
    ground_truth: Path


@dataclass(frozen=True)
class Matching:
    """The outcome of pairing two folders (or two files).

    Attributes:
        pairs: the cases found on both sides, sorted by id.
        predictions_without_reference: ids of predictions that have no reference (not evaluated).
        references_without_prediction: ids of references that have no prediction (not evaluated).
        dataset_json: the reference dataset's ``dataset.json`` when the reference is a dataset root.
    """

    pairs: tuple[CasePair, ...]
    predictions_without_reference: tuple[str, ...] = ()
    references_without_prediction: tuple[str, ...] = ()
    dataset_json: Path | None = field(default=None)


def split_ending(name: str) -> tuple[str, str] | None:
    """``"a.nii.gz"`` → ``("a", ".nii.gz")``; ``None`` for a file of no supported label format."""
    lower = name.lower()
    for ending in SUPPORTED_ENDINGS:
        if lower.endswith(ending) and len(name) > len(ending):
            return name[: -len(ending)], name[-len(ending):]
    return None


def case_id_of(path: Path) -> str:
    """The case id a label-map file stands for (module docstring)."""
    split = split_ending(path.name)
    stem = split[0] if split else path.name
    return _strip_label_suffix(stem)[0]


def match_cases(prediction: str | Path, reference: str | Path) -> Matching:
    """Pair ``prediction`` with ``reference``: two files (one case), or two folders (by case id).

    Raises:
        InputError: a path is missing, one is a file and the other a folder, a folder holds no
            label maps or two for one case, or no case has both a prediction and a reference.
    """
    prediction, reference = Path(prediction), Path(reference)
    for path, what in ((prediction, "prediction"), (reference, "ground truth")):
        if not path.exists():
            raise InputError(f"{what}: no such file or folder", path)
    if prediction.is_file() and reference.is_file():
        return Matching((CasePair(case_id_of(reference), prediction, reference),))
    if prediction.is_dir() != reference.is_dir():
        raise InputError(f"PRED and GT must both be files or both be folders; got a "
                         f"{'folder' if prediction.is_dir() else 'file'} and a "
                         f"{'folder' if reference.is_dir() else 'file'} ({reference})", prediction)
    label_dir, dataset_json = reference_folder(reference)
    predicted, references = label_files(prediction), label_files(label_dir)
    if not predicted:
        raise InputError(f"holds no label maps ({', '.join(SUPPORTED_ENDINGS)})", prediction)
    if not references:
        raise InputError(f"holds no label maps ({', '.join(SUPPORTED_ENDINGS)})", label_dir)
    common = sorted(set(predicted) & set(references))
    if not common:
        raise InputError(f"no case id in common with the ground truth {label_dir} (predictions: "
                         f"{_some(sorted(predicted))}; ground truth: {_some(sorted(references))})", prediction)
    return Matching(
        tuple(CasePair(case, predicted[case], references[case]) for case in common),
        tuple(sorted(set(predicted) - set(references))),
        tuple(sorted(set(references) - set(predicted))),
        dataset_json,
    )


def reference_folder(folder: Path) -> tuple[Path, Path | None]:
    """The folder holding the reference label maps, and the dataset's ``dataset.json`` if any."""
    dataset_json = folder / "dataset.json"
    if (folder / "imagesTr").is_dir() or (folder / "labelsTr").is_dir():
        if not (folder / "labelsTr").is_dir():
            raise InputError("is an nnU-Net dataset without labelsTr/: nothing to compare with", folder)
        return folder / "labelsTr", dataset_json if dataset_json.is_file() else None
    if (folder / "labels").is_dir():
        return folder / "labels", dataset_json if dataset_json.is_file() else None
    return folder, None


def label_files(folder: Path) -> dict[str, Path]:
    """Case id → label-map file for every label map directly in ``folder``.

    When some case has both ``CASE`` and ``CASE_seg`` (or another label suffix), the folder holds
    images beside their labels (plain pairs): only the suffixed files are label maps then.

    Raises:
        InputError: two files of one format stand for one case (``a_seg.nii.gz``, ``a_mask.nii.gz``).
    """
    found: dict[tuple[str, bool], Path] = {}
    for path in _candidate_files(folder):
        stem, ending = split_ending(path.name)  # type: ignore[misc]  # candidates have an ending
        key = _strip_label_suffix(stem)
        previous = found.get(key)
        if previous is not None:
            rank, previous_rank = _ending_rank(ending), _ending_rank(previous.name)
            if rank == previous_rank:
                raise InputError(f"two label maps for case {key[0]}: {previous.name} and {path.name}", folder)
            if rank > previous_rank:  # one map in two formats: keep the preferred one
                continue
        found[key] = path
    pairs_folder = any((case_id, False) in found for case_id, suffixed in found if suffixed)
    # Without pairs, no id is both suffixed and not: the ids below are distinct either way.
    return {case_id: path for (case_id, suffixed), path in sorted(found.items()) if suffixed or not pairs_folder}


def image_files(images: Path) -> tuple[dict[str, Path], Path | None]:
    """Case id → image file (channel 0) under ``images``, and the dataset's ``dataset.json`` if any.

    ``images`` is an nnU-Net root (``imagesTr/``), a plain-pairs root (``images/``) or a folder of
    images. Files named like labels (``_seg``...) are skipped; ``CASE_0000`` is case ``CASE``.
    """
    dataset_json = images / "dataset.json"
    folder = images / "imagesTr" if (images / "imagesTr").is_dir() else \
        images / "images" if (images / "images").is_dir() else images
    found: dict[str, tuple[int, Path]] = {}
    for path in _candidate_files(folder):
        stem = split_ending(path.name)[0]  # type: ignore[index]
        if _strip_label_suffix(stem)[1]:
            continue
        case_id, number = split_channel(stem)
        channel = 0 if number is None else number
        if case_id not in found or channel < found[case_id][0]:
            found[case_id] = (channel, path)
    return {case_id: path for case_id, (_, path) in found.items()}, \
        dataset_json if dataset_json.is_file() else None


def _candidate_files(folder: Path) -> list[Path]:
    # Hidden files include medsaga's own half-written temporaries (.medsaga-tmp-*).
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and split_ending(p.name) is not None)


def _ending_rank(name: str) -> int:
    """Preference of a file ending (or of a file name's ending): lower is preferred."""
    lower = name.lower()
    return next(rank for rank, ending in enumerate(SUPPORTED_ENDINGS) if lower.endswith(ending))


def _strip_label_suffix(stem: str) -> tuple[str, bool]:
    for suffix in LABEL_FILE_SUFFIXES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)], True
    return stem, False


def _some(ids: list[str], shown: int = 5) -> str:
    return ", ".join(ids[:shown]) + (f" and {len(ids) - shown} more" if len(ids) > shown else "")


def match_images(images: str | Path, pairs: tuple[CasePair, ...]) -> tuple[dict[str, Path], Path | None]:
    """Case id → image for every pair (for overlays), and the images' ``dataset.json`` if any.

    With a single pair, ``images`` may be the image itself (a file, or a DICOM series folder);
    otherwise it is a folder matched by case id (:func:`image_files`).

    Raises:
        InputError: ``images`` is missing, or holds no image for some case (all are named).
    """
    images = Path(images)
    if not images.exists():
        raise InputError("--images: no such file or folder", images)
    if images.is_file():
        if len(pairs) != 1:
            raise InputError(f"--images is one file, but {len(pairs)} cases are evaluated; give the folder "
                             "of their images", images)
        return {pairs[0].case_id: images}, None
    found, dataset_json = image_files(images)
    if len(pairs) == 1 and not found:  # no image files: a DICOM series folder
        return {pairs[0].case_id: images}, None
    missing = [pair.case_id for pair in pairs if pair.case_id not in found]
    if missing:
        raise InputError(f"--images: no image for case(s) {_some(missing)} (looked for CASE or CASE_0000 with "
                         f"an ending {', '.join(SUPPORTED_ENDINGS)})", images)
    return {pair.case_id: found[pair.case_id] for pair in pairs}, dataset_json

"""Dataset discovery: the nnU-Net v2 / MSD layout, or a plain folder of image/label pairs.

Discovery only looks at file names and ``dataset.json``; it reads no voxels, so it is instant and
its errors (no images, a malformed ``dataset.json``) come before any long work. Reading a case and
checking it (same grid, integer labels, declared label values) is :mod:`medsaga.data.checks`.

Layouts recognised, in this order:

1. nnU-Net v2 / MSD: ``imagesTr/``, ``labelsTr/`` and ``dataset.json``. Images are
   ``CASE_XXXX<ending>`` (one file per channel ``XXXX``); labels ``CASE<ending>``. MSD's
   single-file images (no ``_XXXX``) are single-channel cases. ``dataset.json`` may be v2-style
   (``channel_names``, ``labels`` as name → value) or MSD/v1-style (``modality``, ``labels`` as
   value → name).
2. Plain pairs: ``case<ending>`` beside ``case_seg<ending>`` (also ``_label``, ``_mask``), or
   ``images/`` (or the folder itself) with a ``labels/`` subfolder holding the same file names.
   An optional ``dataset.json`` there declares channel and label names.

Nothing is dropped silently: a file with an image ending that cannot be used (a broken or looping
symbolic link, a label map without its image) is named in :attr:`Dataset.warnings` for the command
to show; two files that claim one role (two images of one case, two label maps of one image) are
an error naming both, since picking one would train on a guess.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from medsaga.errors import InputError

SUPPORTED_ENDINGS: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
LABEL_SUFFIXES: tuple[str, ...] = ("_seg", "_label", "_labels", "_mask")
_CHANNEL_PATTERN = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def split_channel(stem: str) -> tuple[str, int | None]:
    """nnU-Net channel naming: ``"liver_7_0001"`` → ``("liver_7", 1)``; ``"liver_7"`` → ``("liver_7", None)``."""
    match = _CHANNEL_PATTERN.match(stem)
    return (match["case"], int(match["channel"])) if match else (stem, None)


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case.

    Attributes:
        case_id: the case identifier (file name without channel suffix and ending).
        images: one path per channel, in channel order.
        label: the label map, or ``None`` for an unlabelled case.
    """

    case_id: str
    images: tuple[Path, ...]
    label: Path | None


@dataclass(frozen=True)
class Dataset:
    """A discovered dataset: where its cases are, and what its channels and labels mean.

    Attributes:
        root: the dataset folder.
        layout: ``"nnunet"`` or ``"pairs"``.
        name: from ``dataset.json`` or the folder name.
        channel_names: one name per channel (e.g. ``("CT",)``), index = channel number.
        labels: class name → label value, background included; ``None`` when nothing declares
            them (plain pairs without ``dataset.json``): then any non-negative integer is allowed.
        file_ending: the image/label file ending, e.g. ``".nii.gz"``.
        cases: the cases, sorted by id.
        warnings: one line per file that was left out, each ``"PATH: why"`` (a broken or looping
            symbolic link, a label map without an image); the library does not print them, the
            command shows them.
    """

    root: Path
    layout: Literal["nnunet", "pairs"]
    name: str
    channel_names: tuple[str, ...]
    labels: dict[str, int] | None
    file_ending: str
    cases: tuple[CaseFiles, ...]
    warnings: tuple[str, ...] = ()

    @property
    def labelled_cases(self) -> tuple[CaseFiles, ...]:
        """The cases that have a label map."""
        return tuple(case for case in self.cases if case.label is not None)

    @property
    def declared_values(self) -> frozenset[int] | None:
        """The label values ``dataset.json`` declares, or ``None`` when undeclared."""
        return None if self.labels is None else frozenset(self.labels.values())

    def case(self, case_id: str) -> CaseFiles:
        """The case with this id; :class:`InputError` listing the known ids otherwise."""
        for case in self.cases:
            if case.case_id == case_id:
                return case
        known = ", ".join(c.case_id for c in self.cases[:10]) + (" ..." if len(self.cases) > 10 else "")
        raise InputError(f"no case '{case_id}' (cases: {known})", self.root)


def discover_dataset(root: str | Path) -> Dataset:
    """Find the cases under ``root`` and read its ``dataset.json`` (no voxels are read).

    Raises:
        InputError: the folder is missing, holds no images, or its ``dataset.json`` is malformed.
    """
    root = Path(root)
    if not root.exists():
        raise InputError("dataset folder not found", root)
    if not root.is_dir():
        raise InputError("expected a dataset folder (imagesTr/, labelsTr/, dataset.json, or image/label pairs)",
                         root)
    if (root / "imagesTr").is_dir():
        return _discover_nnunet(root)
    return _discover_pairs(root)


def _discover_nnunet(root: Path) -> Dataset:
    json_path = root / "dataset.json"
    if not json_path.is_file():
        raise InputError("imagesTr/ found but dataset.json is missing (it declares channels and labels)", json_path)
    spec = _read_json(json_path)
    channel_names = _channel_names(spec, json_path)
    labels = parse_labels(spec, json_path)
    file_ending = spec.get("file_ending", ".nii.gz")
    if not isinstance(file_ending, str) or not file_ending.startswith("."):
        raise InputError(f"file_ending must be a string like '.nii.gz', found {file_ending!r}", json_path)

    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    image_files, warnings = _usable_files(images_dir, lambda name: name.endswith(file_ending))
    if not image_files:
        raise InputError(_no_images_message(images_dir, file_ending), images_dir)

    channels_by_case: dict[str, dict[int, Path]] = defaultdict(dict)
    for path in image_files:
        stem = path.name[: -len(file_ending)]
        case_id, number = split_channel(stem)
        channel = 0 if number is None else number
        if channel in channels_by_case[case_id]:
            raise InputError(f"case {case_id} has two files for channel {channel}", path)
        channels_by_case[case_id][channel] = path

    label_files, label_warnings = (_usable_files(labels_dir, lambda name: name.endswith(file_ending))
                                   if labels_dir.is_dir() else ([], []))
    warnings += label_warnings
    labels_by_case = {path.name[: -len(file_ending)]: path for path in label_files}
    for case_id, path in labels_by_case.items():
        if case_id not in channels_by_case:
            warnings.append(f"{path}: label map without an image (no imagesTr/{case_id}_XXXX{file_ending}); "
                            "skipped")
    cases = []
    for case_id in sorted(channels_by_case):
        channels = channels_by_case[case_id]
        expected = list(range(len(channel_names)))
        if sorted(channels) != expected:
            found = ", ".join(f"{c:04d}" for c in sorted(channels))
            raise InputError(
                f"case {case_id} has channel files {found}; dataset.json declares {len(channel_names)} "
                f"channel(s) ({', '.join(f'{c:04d}' for c in expected)})", images_dir)
        cases.append(CaseFiles(case_id, tuple(channels[c] for c in expected), labels_by_case.get(case_id)))
    name = str(spec.get("name") or root.name)
    return Dataset(root, "nnunet", name, channel_names, labels, file_ending, tuple(cases), tuple(warnings))


def _discover_pairs(root: Path) -> Dataset:
    json_path = root / "dataset.json"
    spec = _read_json(json_path) if json_path.is_file() else {}
    image_dir = root / "images" if (root / "images").is_dir() else root
    label_dir = root / "labels" if (root / "labels").is_dir() else None

    candidates, warnings = _usable_files(image_dir, lambda name: bool(_ending(Path(name))))
    label_stems = {_stem(p) for p in candidates if _stem(p).endswith(LABEL_SUFFIXES)}
    images = [p for p in candidates if _stem(p) not in label_stems]
    label_files = [p for p in candidates if _stem(p) in label_stems]
    if label_dir is not None:
        in_label_dir, label_dir_warnings = _usable_files(label_dir, lambda name: bool(_ending(Path(name))))
        label_files += in_label_dir
        warnings += label_dir_warnings
    if not images:
        raise InputError(
            "no images found: expected imagesTr/ with dataset.json (nnU-Net layout), or image files "
            f"({', '.join(SUPPORTED_ENDINGS)}) with case_seg files or a labels/ folder", root)
    endings = {_ending(p) for p in images}
    _refuse_duplicate_ids(images)
    cases = []
    for image in images:
        stem = _stem(image)
        cases.append(CaseFiles(stem, (image,), _find_label(image, stem, label_dir)))
    paired = {case.label for case in cases}
    warnings += [f"{path}: label map without an image (no {_image_stem(path)}{_ending(path)} beside it or in "
                 f"{image_dir}); skipped" for path in label_files if path not in paired]
    channel_names = _channel_names(spec, json_path) if spec else ("unknown",)
    if len(channel_names) != 1:
        raise InputError("plain image/label pairs hold one channel per case; use the nnU-Net layout "
                         "(imagesTr/CASE_0000, CASE_0001, ...) for several", json_path)
    labels = parse_labels(spec, json_path) if spec.get("labels") is not None else None
    file_ending = endings.pop() if len(endings) == 1 else "mixed"
    name = str(spec.get("name") or root.name)
    return Dataset(root, "pairs", name, channel_names, labels, file_ending, tuple(cases), tuple(warnings))


def _refuse_duplicate_ids(images: list[Path]) -> None:
    """Two images of one case id (``c0.nii.gz`` and ``c0.nrrd``): an error naming both."""
    first: dict[str, Path] = {}
    for image in images:
        other = first.setdefault(_stem(image), image)
        if other is not image:
            raise InputError(f"case '{_stem(image)}' has two images, this and {other}: keep one (or rename one "
                             "to another case id)", image)


def _find_label(image: Path, stem: str, label_dir: Path | None) -> Path | None:
    """The one label map of ``image``: in ``label_dir`` (same name, or with a label suffix) or beside it.

    Raises:
        InputError: more than one file matches (``c1_seg`` and ``c1_label``), naming both.
    """
    ending = _ending(image)
    candidates = []
    if label_dir is not None:
        candidates += [label_dir / f"{candidate_stem}{ending}"
                       for candidate_stem in (stem, *(stem + suffix for suffix in LABEL_SUFFIXES))]
    candidates += [image.with_name(f"{stem}{suffix}{ending}") for suffix in LABEL_SUFFIXES]
    found = [candidate for candidate in candidates if candidate.is_file()]
    if len(found) > 1:
        raise InputError(f"case '{stem}' has two label maps, this and {found[0]}: keep one", found[1])
    return found[0] if found else None


def _image_stem(label: Path) -> str:
    """The case id a label file names: ``c1_seg.nii.gz`` → ``c1`` (a labels/ file without suffix: itself)."""
    stem = _stem(label)
    for suffix in LABEL_SUFFIXES:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def _usable_files(folder: Path, wanted: Callable[[str], bool]) -> tuple[list[Path], list[str]]:
    """The readable files in ``folder`` whose name is ``wanted`` (hidden names never), sorted; and one
    warning ``"PATH: why; skipped"`` for each wanted name that is no readable file (a broken or
    looping symbolic link, a folder)."""
    files: list[Path] = []
    warnings: list[str] = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not wanted(path.name):
            continue
        problem = _not_a_file(path)
        if problem is None:
            files.append(path)
        else:
            warnings.append(f"{path}: {problem}; skipped")
    return files, warnings


def _not_a_file(path: Path) -> str | None:
    """Why ``path`` is not a regular file one can read (following links), or ``None`` when it is."""
    try:
        status = path.stat()
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "a symbolic link loop"
        if path.is_symlink():
            return f"a broken symbolic link (its target {os.readlink(path)} does not exist)"
        return f"cannot be read ({error.strerror or error})"
    if not stat.S_ISREG(status.st_mode):
        return "not a file"
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read ({error.__class__.__name__})", path) from None
    except json.JSONDecodeError as error:
        raise InputError(f"not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})", path) from None
    if not isinstance(spec, dict):
        raise InputError("expected a JSON object", path)
    return spec


def _channel_names(spec: dict[str, Any], path: Path) -> tuple[str, ...]:
    """``channel_names`` (v2) or ``modality`` (MSD/v1): ``{"0": "CT"}`` → ``("CT",)``."""
    raw = spec.get("channel_names", spec.get("modality"))
    if raw is None:
        raise InputError("has neither 'channel_names' nor 'modality'", path)
    if not isinstance(raw, dict) or not raw:
        raise InputError(f"'channel_names' must be an object like {{\"0\": \"CT\"}}, found {raw!r}", path)
    try:
        indexed = {int(key): str(value) for key, value in raw.items()}
    except ValueError:
        raise InputError(f"'channel_names' keys must be channel numbers, found {list(raw)}", path) from None
    if sorted(indexed) != list(range(len(indexed))):
        raise InputError(f"'channel_names' must number channels 0..{len(indexed) - 1}, found {sorted(indexed)}",
                         path)
    return tuple(indexed[i] for i in range(len(indexed)))


def parse_labels(spec: dict[str, Any], path: Path) -> dict[str, int]:
    """Class name → value. v2 writes ``{"liver": 1}``; MSD/v1 writes ``{"1": "liver"}``.

    nnU-Net region labels (``{"tumor": [2, 3]}``) declare every value in their list.
    """
    raw = spec.get("labels")
    if not isinstance(raw, dict) or not raw:
        raise InputError(f"'labels' must be an object like {{\"background\": 0, \"liver\": 1}}, found {raw!r}",
                         path)
    values = list(raw.values())
    if all(isinstance(v, str) for v in values):  # MSD / nnU-Net v1: value -> name
        try:
            return {name: int(value) for value, name in raw.items()}
        except ValueError:
            raise InputError(f"'labels' keys must be integers in the MSD style, found {list(raw)}", path) from None
    labels: dict[str, int] = {}
    for name, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, (int, list)):
            raise InputError(f"label '{name}' must be an integer (or a list for regions), found {value!r}", path)
        for i, member in enumerate(value if isinstance(value, list) else [value]):
            if isinstance(member, bool) or not isinstance(member, int) or member < 0:
                raise InputError(f"label '{name}' has a value that is not a non-negative integer: {member!r}",
                                 path)
            labels[name if i == 0 else f"{name}[{member}]"] = member
    return labels


def _no_images_message(folder: Path, ending: str) -> str:
    others = sorted({_ending(p) or p.suffix for p in folder.iterdir() if p.is_file()} - {""})
    found = f"; found {', '.join(others)} files" if others else "; the folder is empty"
    return f"no images ending in '{ending}' (dataset.json's file_ending){found}"


def _ending(path: Path) -> str:
    """The supported ending of ``path`` (``.nii.gz`` before ``.nii``), or ``""``."""
    name = path.name.lower()
    for ending in SUPPORTED_ENDINGS:
        if name.endswith(ending):
            return path.name[-len(ending):]
    return ""


def _stem(path: Path) -> str:
    return path.name[: -len(_ending(path))]

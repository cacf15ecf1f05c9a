"""What to predict: the INPUT paths of ``medsaga predict`` as cases, each with one file per channel.

An INPUT is

- an image file: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``) or MetaImage
  (``.mha``, ``.mhd``);
- a DICOM series folder (a folder holding DICOM files directly): one case, one channel;
- a folder of these: its image files, and its subfolders that are DICOM series (one level deep),
  e.g. an nnU-Net ``imagesTs/``.

Case ids, which name the outputs: the file name without its ending and without the nnU-Net
channel suffix ``_XXXX`` (``liver_7_0000.nii.gz`` → ``liver_7``); a DICOM folder's own name.

Channels: a run trained on ``C`` channels takes ``CASE_0000 … CASE_{C-1}`` per case, grouped by
name over every INPUT. For a one-channel run a ``_0000`` suffix is dropped and any other name is
a case id as it stands (``scan_2023.nii.gz`` is case ``scan_2023``), unless the same case also
has a ``_0000`` file: then its files are the channels of a multi-channel case, which is refused.
Only names are looked at here; nothing is read.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from medsaga.data.dataset import split_channel
from medsaga.errors import InputError
from medsaga.io.formats import DICOM_SUFFIXES, ITK_SUFFIXES, NIFTI_SUFFIXES, format_suffix, has_dicom_preamble

IMAGE_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES
# Enough to tell a DICOM folder from a folder of NIfTI files without reading thousands of headers.
_SNIFFED_FILES = 50


@dataclass(frozen=True)
class PredictCase:
    """One case to predict.

    Attributes:
        case_id: names the outputs (``OUT/<case_id>.nii.gz`` ...).
        images: one path per channel, in channel order: files, or one DICOM series folder.
        kind: ``"nifti"``, ``"itk"`` (NRRD/MetaImage) or ``"dicom"``: the first channel's format,
            which decides the output formats.
    """

    case_id: str
    images: tuple[Path, ...]
    kind: str


def find_cases(inputs: Sequence[str | Path], channel_names: Sequence[str] = ("image",)) -> list[PredictCase]:
    """The cases the INPUT paths hold, sorted by case id, for a run trained on the channels
    ``channel_names`` (config.json's ``dataset.channel_names``; only their number matters, the
    names make the messages clearer).

    Raises:
        InputError: a path is missing or of an unsupported kind, a folder holds nothing to predict,
            two inputs give the same case id, or a case's channel files do not match the run.
    """
    names = tuple(channel_names)
    if not inputs:
        raise InputError("give at least one INPUT: an image file, a DICOM series folder, or a folder of them")
    files: list[Path] = []
    dicom_folders: list[Path] = []
    for given in inputs:
        path = Path(given).expanduser()
        found_files, found_folders = _expand(path)
        files += found_files
        dicom_folders += found_folders
    cases = [PredictCase(folder.name, (folder,), "dicom") for folder in dicom_folders]
    if dicom_folders and len(names) > 1:
        raise InputError(f"is a DICOM series, one channel; this run takes {len(names)} channels per case "
                         f"({_channel_list(names)}): give them as files CASE_0000 … CASE_{len(names) - 1:04d}",
                         dicom_folders[0])
    cases += _group_files(files, names)
    _check_unique(cases)
    return sorted(cases, key=lambda case: case.case_id)


def is_dicom_folder(folder: Path) -> bool:
    """True when ``folder`` directly holds DICOM files (by extension or the ``DICM`` preamble)."""
    try:
        entries = sorted(entry for entry in folder.iterdir() if entry.is_file() and not entry.name.startswith("."))
    except OSError:
        return False
    return any(format_suffix(entry) in DICOM_SUFFIXES or has_dicom_preamble(entry)
               for entry in entries[:_SNIFFED_FILES])


def _expand(path: Path) -> tuple[list[Path], list[Path]]:
    """One INPUT → (image files, DICOM series folders)."""
    if not path.exists():
        raise InputError("no such file or folder", path)
    if path.is_file():
        return [_check_image_file(path)], []
    if is_dicom_folder(path):
        return [], [path]
    entries = sorted(entry for entry in path.iterdir() if not entry.name.startswith("."))
    files = [entry for entry in entries if entry.is_file() and format_suffix(entry) in IMAGE_SUFFIXES]
    folders = [entry for entry in entries if entry.is_dir() and is_dicom_folder(entry)]
    if not files and not folders:
        subfolders = [entry.name for entry in entries if entry.is_dir()]
        hint = f" (its subfolders {', '.join(subfolders[:5])} hold none either: pass e.g. {path / subfolders[0]})" \
            if subfolders else ""
        raise InputError(f"holds no image files (.nii.gz, .nii, .nrrd, .mha ...) and no DICOM series{hint}", path)
    return files, folders


def _check_image_file(path: Path) -> Path:
    suffix = format_suffix(path)
    if suffix in IMAGE_SUFFIXES:
        return path
    if suffix in DICOM_SUFFIXES or has_dicom_preamble(path):
        raise InputError(f"is a single DICOM file; pass the folder of its series instead ({path.parent})", path)
    kind = f"'{suffix}' files" if suffix else "files without an extension"
    raise InputError(f"cannot predict on {kind}; give NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage "
                     "(.mha, .mhd) files or DICOM series folders", path)


def _stem(path: Path) -> str:
    name = path.name
    return name[: len(name) - len(format_suffix(path))]


def _group_files(files: list[Path], names: tuple[str, ...]) -> list[PredictCase]:
    """Image files → cases, grouping channel files by case id."""
    by_case: dict[str, dict[int, Path]] = defaultdict(dict)
    plain: list[tuple[str, Path]] = []  # names without a channel suffix
    for path in files:
        case_id, channel = split_channel(_stem(path))
        if channel is None:
            plain.append((case_id, path))
            continue
        if channel in by_case[case_id]:
            raise InputError(f"channel {channel:04d} of case {case_id} is given twice (also "
                             f"{by_case[case_id][channel]})", path)
        by_case[case_id][channel] = path
    channels = len(names)
    if channels == 1:
        return _single_channel_cases(by_case, plain)
    if plain:
        stem, path = plain[0]
        raise InputError(f"has no channel suffix, but this run takes {channels} channels per case "
                         f"({_channel_list(names)}): name them {stem}_0000 … {stem}_{channels - 1:04d} "
                         "(nnU-Net layout)", path)
    cases = []
    for case_id, found in by_case.items():
        missing = [n for n in range(channels) if n not in found]
        extra = sorted(n for n in found if n >= channels)
        if missing or extra:
            first = found[min(found)]
            problem = (f"lacks channel file{'s' if len(missing) > 1 else ''} "
                       + ", ".join(f"{case_id}_{n:04d}" for n in missing)) if missing else \
                f"has channel {extra[0]:04d}, beyond the run's {channels}"
            raise InputError(f"case {case_id} {problem}; this run takes {channels} channels "
                             f"({_channel_list(names)})", first)
        images = tuple(found[n] for n in range(channels))
        cases.append(PredictCase(case_id, images, _kind(images[0])))
    return cases


def _single_channel_cases(by_case: dict[str, dict[int, Path]], plain: list[tuple[str, Path]]) -> list[PredictCase]:
    cases = [PredictCase(stem, (path,), _kind(path)) for stem, path in plain]
    for case_id, found in by_case.items():
        if 0 in found and len(found) > 1:
            others = sorted(n for n in found if n != 0)
            raise InputError(f"case {case_id} has {len(found)} channel files (_0000 and _{others[0]:04d}), but this "
                             "run was trained on one channel: give only its _0000 files", found[others[0]])
        for channel, path in found.items():
            # _0000 is the channel suffix; any other number belongs to the name (scan_2023).
            cases.append(PredictCase(case_id if channel == 0 else _stem(path), (path,), _kind(path)))
    return cases


def _check_unique(cases: list[PredictCase]) -> None:
    seen: dict[str, PredictCase] = {}
    for case in cases:
        if case.case_id in seen:
            raise InputError(f"gives case id {case.case_id!r}, as does {seen[case.case_id].images[0]}: outputs "
                             "would collide; predict them into different --out folders", case.images[0])
        seen[case.case_id] = case


def _kind(path: Path) -> str:
    return "nifti" if format_suffix(path) in NIFTI_SUFFIXES else "itk"


def _channel_list(names: tuple[str, ...]) -> str:
    """``_0000 T1, _0001 T2``."""
    return ", ".join(f"_{n:04d} {name}" for n, name in enumerate(names))

"""A predicted label map as a DICOM-SEG that references the series it was predicted on (highdicom).

Decisions:

- **Segments**: segment number ``n`` = model class ``n`` (1..C), labelled with the class name from
  config.json; the dataset label value it stands for goes in the segment's SegmentDescription
  (``label value 4``), since DICOM numbers segments 1, 2, 3... whatever the training labels were.
  Every class is described, present or not, so that segment numbers never shift between cases.
- **Codes**: a prompt-free model's classes may be organs, tissues or lesions, and their names are
  free text; nothing tells us the right SNOMED concept. Every segment therefore carries the generic
  category and type **SCT 85756007 "Tissue"** (3D Slicer's default for a new segment) and the
  real name as SegmentLabel. Algorithm type AUTOMATIC, identified as family DCM 123110
  "Artificial Intelligence", name ``medsaga``, version, with the method and model as parameters.
- **Type**: ``BINARY`` by default (Segmentation Storage, read by every SEG-capable viewer: 3D
  Slicer, OHIF, dcmqi); ``LABELMAP`` on request (Label Map Segmentation Storage, added to DICOM in
  2024: one frame per slice instead of one per slice and segment, but few viewers read it yet).
  Empty frames are omitted (highdicom's default); an all-empty prediction keeps every frame.
- **Frames**: our ``(I, J, K)`` is (column, row, slice) and ``source.dicom_files`` are in ``k``
  order, so frame ``k`` is ``array[:, :, k].T`` = (rows, columns) of ``dicom_files[k]``: the
  pixel array is ``array.transpose(2, 1, 0)`` with the source datasets in that same order.
- **Series without UIDs**: a SEG references its sources by Study/Series/SOPInstanceUID and SOP
  class; some anonymisers blank them (the TotalSegmentator example series keeps them only in the
  file meta). The standard requires the file meta's MediaStorageSOPInstanceUID/SOPClassUID to equal
  SOPInstanceUID/SOPClassUID, so empty ones are taken from there (lossless). Empty Study/Series
  InstanceUIDs, which nothing recovers, get UIDs derived from the series content (``2.25.`` + the
  SHA-256 of the sorted SOP instance UIDs, seeded differently for study and series): the same
  series always gets the same references, so repeated predictions agree.
  :func:`dicom_seg_substitutions` says what was filled in (the caller warns). Only a series whose
  SOP instances cannot be identified at all gets no SEG: :func:`dicom_seg_problem` says why and the
  caller still writes the NIfTI. All of this happens in the in-memory copies of the headers.
- **Header quirk**: an empty SpecificCharacterSet means the default repertoire, which is what an
  absent one means too; highdicom refuses the empty value, so it is dropped from the in-memory
  copies of the source headers (the files are never touched). Likewise an empty Type 1 SOP
  Common/Frame of Reference value is never invented beyond the UIDs above.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from medsaga import __version__
from medsaga.errors import InputError
from medsaga.io.atomic import atomic_output
from medsaga.io.volume import Volume

SEG_TYPES = ("binary", "labelmap")
SERIES_NUMBER = 900  # high, so that viewers list the SEG after the acquired series
_TISSUE = ("85756007", "SCT", "Tissue")


@dataclass(frozen=True)
class Segment:
    """One segment of the SEG: ``number`` (1..), ``label`` (class name), ``value`` (dataset label value)."""

    number: int
    label: str
    value: int


def dicom_seg_problem(source: Volume) -> str | None:
    """Why no DICOM-SEG can reference ``source`` (a volume read from a DICOM series), or ``None``.

    Reads the series' headers only (cheap).
    """
    try:
        _source_headers(source)
    except _Unreferenceable as problem:
        return str(problem)
    return None


def dicom_seg_substitutions(source: Volume) -> str | None:
    """What the SEG of ``source`` fills in for UIDs its files leave empty (module docstring), or ``None``.

    Meant for a warning; ``None`` as well when :func:`dicom_seg_problem` says no SEG can be written.
    """
    try:
        return _source_headers(source)[1]
    except _Unreferenceable:
        return None


class _Unreferenceable(Exception):
    """The series' SOP instances cannot be identified; the message says why."""


_META_UIDS = {"SOPInstanceUID": "MediaStorageSOPInstanceUID", "SOPClassUID": "MediaStorageSOPClassUID"}
_DERIVED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID")


def _source_headers(source: Volume) -> tuple[list[Any], str | None]:
    """In-memory copies of the series' headers with empty UIDs filled in, and a note saying which.

    Raises:
        _Unreferenceable: not a DICOM series, or a file's SOP instance/class UID is empty in both
            the data set and the file meta.
    """
    if source.source.format != "dicom" or not source.source.dicom_files:
        raise _Unreferenceable("the input is not a DICOM series")
    datasets = [_read_header(p) for p in source.source.dicom_files]
    from_meta: set[str] = set()
    for dataset in datasets:
        meta = getattr(dataset, "file_meta", None)
        for keyword, meta_keyword in _META_UIDS.items():
            if _value(dataset, keyword):
                continue
            recovered = _value(meta, meta_keyword) if meta is not None else ""
            if not recovered:
                raise _Unreferenceable(
                    f"its files carry no {keyword}, neither in the data set nor as {meta_keyword} in the file "
                    "meta (anonymised?), and a DICOM-SEG must reference the images by these UIDs")
            setattr(dataset, keyword, recovered)
            from_meta.add(keyword)
    instance_uids = sorted(_value(d, "SOPInstanceUID") for d in datasets)
    derived: list[str] = []
    for keyword in _DERIVED_UIDS:
        if all(_value(d, keyword) for d in datasets):
            continue
        # Some or all files leave it empty: the one value the others carry, else a derived UID.
        present = {_value(d, keyword) for d in datasets} - {""}
        if len(present) == 1:
            uid = present.pop()
        else:
            uid = _derived_uid(f"medsaga {keyword}", instance_uids)
            derived.append(keyword)
        for dataset in datasets:
            if not _value(dataset, keyword):
                setattr(dataset, keyword, uid)
    for dataset in datasets:
        if "SpecificCharacterSet" in dataset and not str(dataset.SpecificCharacterSet or "").strip():
            del dataset.SpecificCharacterSet  # empty == absent == default repertoire (module docstring)
    if not from_meta and not derived:
        return datasets, None
    parts = []
    if from_meta:
        parts.append(f"{' and '.join(sorted(from_meta))} from the file meta")
    if derived:
        parts.append(f"{' and '.join(derived)} derived from the SOP instance UIDs (stable across runs)")
    missing = sorted(from_meta) + derived
    return datasets, (f"its files leave {', '.join(missing)} empty (anonymised?); the DICOM-SEG references the "
                      f"SOP instances with {'; '.join(parts)}")


def _value(dataset: Any, keyword: str) -> str:
    return str(dataset.get(keyword, "") or "").strip()


def _derived_uid(seed: str, instance_uids: Sequence[str]) -> str:
    """A deterministic UID under the UUID-derived root 2.25 (at most 2.25. + 37 digits)."""
    digest = hashlib.sha256("\n".join([seed, *instance_uids]).encode()).hexdigest()
    return "2.25." + str(int(digest[:30], 16))


def write_dicom_seg(classes: Volume, source: Volume, segments: Sequence[Segment], path: str | Path, *,
                    segmentation_type: str = "binary", overwrite: bool = False,
                    algorithm_parameters: Mapping[str, str] | None = None,
                    device_serial_number: str = "0", series_description: str = "medsaga prediction") -> Path:
    """Write ``classes`` (segment numbers, ``(I, J, K)``) as a DICOM-SEG of the series ``source``.

    Args:
        classes: label map on ``source``'s grid whose values are segment numbers (0 = none).
        source: the DICOM series volume (``source.source.dicom_files`` in ``k`` order).
        segments: every segment number that may occur, ``1..len(segments)`` in order.
        path: the ``.dcm`` file to write (atomically).
        segmentation_type: ``"binary"`` or ``"labelmap"`` (module docstring).
        overwrite: replace an existing file.
        algorithm_parameters: recorded in the AlgorithmIdentificationSequence (e.g. method, run).
        device_serial_number: identifies the "device" (here: the trained run).
        series_description: the SEG series' description (64 characters at most).

    Raises:
        InputError: ``source`` cannot be referenced (:func:`dicom_seg_problem`), the grids differ,
            the file exists without ``overwrite``, or writing fails.
    """
    import highdicom as hd
    from pydicom.sr.coding import Code
    from pydicom.sr.codedict import codes

    path = Path(path)
    try:
        datasets, _ = _source_headers(source)
    except _Unreferenceable as problem:
        raise InputError(f"cannot write a DICOM-SEG for {source.source.path}: {problem}", path) from None
    if classes.shape != source.shape:
        raise ValueError(f"label map shape {classes.shape} differs from the series' {source.shape}")
    if segmentation_type not in SEG_TYPES:
        raise InputError(f"segmentation type must be one of {', '.join(SEG_TYPES)}, got {segmentation_type!r}")
    if [s.number for s in segments] != list(range(1, len(segments) + 1)):
        raise ValueError("segments must be numbered 1, 2, ... in order")
    if int(classes.array.max(initial=0)) > len(segments):
        raise ValueError(f"label map holds segment {int(classes.array.max())}, beyond the {len(segments)} described")
    if path.exists() and not overwrite:
        raise InputError("already exists; refusing to overwrite it (pass --force to replace it)", path)
    if any(_same_file(path, Path(f)) for f in source.source.dicom_files):
        raise InputError("is a file of the source series; refusing to overwrite it", path)

    tissue = Code(*_TISSUE)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="medsaga", family=codes.cid7162.ArtificialIntelligence, version=__version__,
        parameters=dict(algorithm_parameters) if algorithm_parameters else None)
    descriptions = []
    for segment in segments:
        description = hd.seg.SegmentDescription(
            segment_number=segment.number, segment_label=_long_string(segment.label),
            segmented_property_category=tissue, segmented_property_type=tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm)
        description.SegmentDescription = f"label value {segment.value}"
        descriptions.append(description)
    # (I, J, K) = (column, row, slice) → (slice, row, column): frame k on dicom_files[k].
    pixels = np.ascontiguousarray(classes.array.transpose(2, 1, 0))
    pixels = pixels.astype(np.uint8 if len(segments) <= 255 else np.uint16, copy=False)
    with _quiet_highdicom():
        seg = hd.seg.Segmentation(
            source_images=datasets, pixel_array=pixels, segmentation_type=segmentation_type.upper(),
            segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=SERIES_NUMBER,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="medsaga",
            manufacturer_model_name="medsaga predict", software_versions=__version__,
            device_serial_number=device_serial_number, content_label="MEDSAGA",
            content_description=f"medsaga {__version__} prediction"[:64],
            series_description=series_description[:64],
        )
    try:
        with atomic_output(path) as temporary:
            seg.save_as(temporary)
    except OSError as error:
        raise InputError(f"cannot write ({error.strerror or error})", path) from None
    return path


def _long_string(text: str) -> str:
    """A DICOM LO value: at most 64 characters, no backslash (it separates multiple values)."""
    return text.replace("\\", "/")[:64]


def _read_header(path: Path) -> Any:
    import pydicom

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as error:  # pydicom raises several types for damaged files
        raise InputError(f"cannot read the DICOM header ({str(error)[:200]})", path) from None


@contextmanager
def _quiet_highdicom() -> Iterator[None]:
    """highdicom warns about source-header style (one-component person names) and logs that an
    all-empty mask keeps its frames: true, harmless, and not for the user's terminal."""
    logger = logging.getLogger("highdicom")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        logger.setLevel(level)


def _same_file(a: Path, b: Path) -> bool:
    return a.expanduser().resolve() == b.expanduser().resolve()

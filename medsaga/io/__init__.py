"""Volume I/O: readers and writers that keep exact geometry. Knows nothing of models.

Importing this package is cheap: nibabel, SimpleITK, pydicom and highdicom are imported by the
functions that need them.
"""

from medsaga.io.dicom_seg import OVERLAP_RULE, read_dicom_seg, segment_labels
from medsaga.io.dicom_series import SeriesSummary, list_dicom_series, read_dicom_series
from medsaga.io.read import read_volume
from medsaga.io.volume import SourceInfo, Volume, lps_to_ras
from medsaga.io.write import label_dtype, write_label_map

__all__ = [
    "OVERLAP_RULE",
    "SeriesSummary",
    "SourceInfo",
    "Volume",
    "label_dtype",
    "list_dicom_series",
    "lps_to_ras",
    "read_dicom_seg",
    "read_dicom_series",
    "read_volume",
    "segment_labels",
    "write_label_map",
]

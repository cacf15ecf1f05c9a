"""The committed demo dataset ``sample_data/`` is what ``scripts/make_sample_data.py`` makes, and is sane.

The script is regenerated once into a temporary folder and compared file by file with the
committed copy, so neither can drift from the other. The remaining tests read the committed copy
the way a user's tools would (nibabel) and check what the issue promised: nnU-Net v2 layout,
headers, labels on the image grid, plausible Hounsfield units and volumes, anatomy on the right
side of the patient in world (RAS+) coordinates, and cases that really differ in geometry.

If the byte comparison fails after an intentional change to the script, regenerate with
``python scripts/make_sample_data.py --out sample_data --force``.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO / "sample_data"
SCRIPT = REPO / "scripts" / "make_sample_data.py"

LABELS = {"background": 0, "liver": 1, "kidney": 2, "spleen": 3}
# Nominal organ HU from the issue; medians may sit below them because edge voxels mix in fat.
NOMINAL_HU = {"liver": 60.0, "spleen": 45.0}
# Plausible organ volumes (mL) inside a field of view that may crop them, for a small adult.
VOLUME_ML = {"liver": (150.0, 1500.0), "kidney": (20.0, 400.0), "spleen": (15.0, 400.0)}
MAX_TOTAL_BYTES = 2_000_000
# A file the script did not write: --force must leave it alone.
FOREIGN_FILE = "notes_by_someone_else.txt"


def load_script() -> ModuleType:
    """Import the generator from its path (``scripts/`` is not a package, by design)."""
    name = "_medsaga_make_sample_data"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SCRIPT)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
    return sys.modules[name]


def relative_files(root: Path) -> set[str]:
    """Every file under ``root``, as POSIX paths relative to it."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh run of the script with --force over a folder holding a stale case and a foreign file.

    One run serves both the byte comparison and the --force behaviour, to keep the suite fast.
    """
    out = tmp_path_factory.mktemp("regenerated") / "sample_data"
    (out / "imagesTr").mkdir(parents=True)
    (out / "imagesTr" / "phantom_999_0000.nii.gz").write_bytes(b"stale")
    (out / FOREIGN_FILE).write_text("keep me\n")
    assert load_script().main(["--out", str(out), "--seed", "0", "--force"]) == 0
    return out


@dataclass
class Case:
    """One committed case as nibabel reads it."""

    name: str
    image: nib.Nifti1Image
    label: nib.Nifti1Image
    hu: np.ndarray
    seg: np.ndarray

    @property
    def affine(self) -> np.ndarray:
        """The image's voxel-to-RAS+ affine (the label's is checked to be identical)."""
        return self.image.affine

    def centroid_ras(self, mask: np.ndarray) -> np.ndarray:
        """World (RAS+ mm) centroid of a voxel mask, through this case's affine."""
        ijk = np.argwhere(mask).mean(axis=0)
        return self.affine[:3, :3] @ ijk + self.affine[:3, 3]

    def world_x(self, mask: np.ndarray) -> np.ndarray:
        """RAS+ x (mm) of every voxel in a mask."""
        ijk = np.argwhere(mask).T
        return self.affine[0, :3] @ ijk + self.affine[0, 3]


@pytest.fixture(scope="module")
def cases() -> list[Case]:
    """The committed cases, loaded once for the module."""
    loaded = []
    for image_path in sorted((SAMPLE_DATA / "imagesTr").glob("*_0000.nii.gz")):
        name = image_path.name.removesuffix("_0000.nii.gz")
        image = nib.load(image_path)
        label = nib.load(SAMPLE_DATA / "labelsTr" / f"{name}.nii.gz")
        hu = np.asarray(image.dataobj)
        seg = np.asarray(label.dataobj)
        loaded.append(Case(name, image, label, hu, seg))
    return loaded


# ---------------------------------------------------------------------------------------------
# The committed data is exactly the script's output
# ---------------------------------------------------------------------------------------------


def test_committed_files_are_the_script_output(regenerated: Path) -> None:
    made = relative_files(regenerated) - {FOREIGN_FILE}
    committed = relative_files(SAMPLE_DATA)
    assert made == committed, "file lists differ; regenerate sample_data (see module docstring)"
    for relative in sorted(committed):
        ours, theirs = (regenerated / relative).read_bytes(), (SAMPLE_DATA / relative).read_bytes()
        if relative.endswith(".gz"):
            # The content first, so a failure says whether the data or only the container changed.
            assert gzip.decompress(ours) == gzip.decompress(theirs), f"{relative}: content differs"
        else:
            assert ours == theirs, f"{relative} differs"


@pytest.mark.skipif(
    "ng" in zlib.ZLIB_RUNTIME_VERSION.lower(),
    reason="zlib-ng deflates differently from zlib; the decompressed content is still compared",
)
def test_committed_gzip_bytes_are_identical(regenerated: Path) -> None:
    """The compressed files too, so a re-run never shows up as a git diff."""
    for relative in sorted(relative_files(SAMPLE_DATA)):
        ours, theirs = (regenerated / relative).read_bytes(), (SAMPLE_DATA / relative).read_bytes()
        assert ours == theirs, f"{relative} is not byte-identical"


def test_force_replaces_only_the_dataset_files(regenerated: Path, tmp_path: Path) -> None:
    assert not (regenerated / "imagesTr" / "phantom_999_0000.nii.gz").exists(), "stale case kept"
    assert (regenerated / FOREIGN_FILE).read_text() == "keep me\n", "a foreign file was touched"
    # Without --force, a non-empty folder is refused before anything is written.
    (tmp_path / "something.txt").write_text("x")
    assert load_script().main(["--out", str(tmp_path)]) != 0
    assert relative_files(tmp_path) == {"something.txt"}


def test_gzip_header_carries_no_timestamp_or_name() -> None:
    for path in sorted(SAMPLE_DATA.rglob("*.nii.gz")):
        head = path.read_bytes()[:10]
        assert head[:3] == b"\x1f\x8b\x08", path
        assert head[3] == 0, f"{path}: gzip flags set (file name or comment stored)"
        assert head[4:8] == b"\x00\x00\x00\x00", f"{path}: gzip mtime stored"


# ---------------------------------------------------------------------------------------------
# Layout and headers
# ---------------------------------------------------------------------------------------------


def test_nnunet_v2_layout(cases: list[Case]) -> None:
    meta = json.loads((SAMPLE_DATA / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"}
    assert meta["labels"] == LABELS
    assert meta["file_ending"] == ".nii.gz"
    assert meta["numTraining"] == len(cases) >= 6
    assert "synthetic" in meta["description"].lower()
    assert "scripts/make_sample_data.py" in meta["description"]
    assert "CC0" in meta["licence"]
    images = {p.name for p in (SAMPLE_DATA / "imagesTr").iterdir()}
    labels = {p.name for p in (SAMPLE_DATA / "labelsTr").iterdir()}
    assert images == {f"{c.name}_0000.nii.gz" for c in cases}
    assert labels == {f"{c.name}.nii.gz" for c in cases}
    split = meta["few_shot_split"]
    assert sorted(split["train"] + split["held_out"]) == sorted(c.name for c in cases)
    assert split["train"] and split["held_out"] and not set(split["train"]) & set(split["held_out"])
    assert (SAMPLE_DATA / "README.md").is_file()


def test_total_size_under_2_mb() -> None:
    """The demo data must stay small enough to live in git (``du -sb sample_data`` < 2 MB)."""
    total = sum(p.stat().st_size for p in SAMPLE_DATA.rglob("*") if p.is_file())
    assert total < MAX_TOTAL_BYTES, f"sample_data is {total} bytes"


def test_headers_and_label_grid(cases: list[Case]) -> None:
    for case in cases:
        assert case.image.get_data_dtype() == np.int16, case.name
        assert case.label.get_data_dtype() == np.uint8, case.name
        assert case.seg.shape == case.hu.shape, case.name
        assert np.array_equal(case.label.affine, case.image.affine), case.name
        for img in (case.image, case.label):
            header = img.header
            assert int(header["sform_code"]) == 1 and int(header["qform_code"]) == 1, case.name
            assert header.get_xyzt_units()[0] == "mm", case.name
            # The qform (a rotation) must agree with the sform (free matrix): no shear sneaked in.
            np.testing.assert_allclose(img.get_qform(), img.get_sform(), atol=1e-3, err_msg=case.name)
        assert set(np.unique(case.seg)) <= set(LABELS.values()), case.name


# ---------------------------------------------------------------------------------------------
# Contents
# ---------------------------------------------------------------------------------------------


def test_every_case_has_every_organ_at_a_plausible_volume(cases: list[Case]) -> None:
    for case in cases:
        voxel_ml = abs(np.linalg.det(case.affine[:3, :3])) / 1000.0
        volumes = {}
        for organ, (low, high) in VOLUME_ML.items():
            count = int((case.seg == LABELS[organ]).sum())
            assert count >= 100, f"{case.name}: only {count} {organ} voxels"
            volumes[organ] = count * voxel_ml
            assert low <= volumes[organ] <= high, f"{case.name}: {organ} {volumes[organ]:.0f} mL"
        assert volumes["liver"] > max(volumes["kidney"], volumes["spleen"]), case.name


def test_hounsfield_units_are_ct_like(cases: list[Case]) -> None:
    for case in cases:
        hu = case.hu.astype(np.float64)
        for organ, nominal in NOMINAL_HU.items():
            median = np.median(hu[case.seg == LABELS[organ]])
            assert abs(median - nominal) <= 25, f"{case.name}: {organ} median {median:.0f} HU"
        liver = hu[case.seg == LABELS["liver"]]
        assert abs(liver.mean() - NOMINAL_HU["liver"]) <= 25, f"{case.name}: liver mean {liver.mean():.0f}"
        assert 5 <= liver.std() <= 40, f"{case.name}: liver noise {liver.std():.0f} HU"
        assert 15 <= np.median(hu[case.seg == LABELS["kidney"]]) <= 100, case.name
        body = hu > -500
        assert np.median(hu[~body]) < -950, f"{case.name}: no air around the body"
        assert hu.max() > 500, f"{case.name}: no bone"
        assert -1024 <= hu.min(), case.name


def test_anatomy_is_in_patient_coordinates(cases: list[Case]) -> None:
    """Checked in world RAS+ mm, where +x is the patient's Right (LPS+ is x, y negated):
    an orientation handled as a mere array flip would put organs on the wrong side here."""
    for case in cases:
        body = case.centroid_ras(case.hu > -500)
        liver = case.centroid_ras(case.seg == LABELS["liver"])
        spleen = case.centroid_ras(case.seg == LABELS["spleen"])
        kidney = case.seg == LABELS["kidney"]
        assert liver[0] > body[0] + 15, f"{case.name}: liver not on the patient's right"
        assert spleen[0] < body[0] - 15, f"{case.name}: spleen not on the patient's left"
        right_share = float((case.world_x(kidney) > body[0]).mean())
        assert 0.25 < right_share < 0.75, f"{case.name}: kidneys not on both sides ({right_share:.2f})"
        assert case.centroid_ras(kidney)[1] < body[1], f"{case.name}: kidneys not posterior"
        assert liver[2] > case.centroid_ras(kidney)[2], f"{case.name}: liver not above the kidneys"


def test_cases_differ_in_geometry(cases: list[Case]) -> None:
    """Sizes, spacings and orientations vary, as in the real-world data medsaga must handle."""
    shapes = {case.hu.shape for case in cases}
    spacings = {tuple(np.round(case.image.header.get_zooms()[:3], 3)) for case in cases}
    axcodes = {nib.aff2axcodes(case.affine) for case in cases}
    assert len(shapes) == len(cases)
    assert len(spacings) >= 6
    assert len(axcodes) >= 5, axcodes
    # Sagittal/coronal acquisitions: some first voxel axis does not run left-right.
    assert any(codes[0] not in "LR" for codes in axcodes), axcodes
    # Both handednesses (e.g. RAS and LAS), as real NIfTI files come in both.
    assert {np.sign(np.linalg.det(case.affine[:3, :3])) for case in cases} == {-1.0, 1.0}
    # At least one oblique grid: a voxel axis more than 2 degrees off every world axis.
    obliquity = []
    for case in cases:
        directions = case.affine[:3, :3] / np.linalg.norm(case.affine[:3, :3], axis=0)
        obliquity.append(np.degrees(np.arccos(np.abs(directions).max(axis=0).clip(max=1.0))).max())
    assert max(obliquity) > 2.0, obliquity
    for case in cases:
        zooms = case.image.header.get_zooms()[:3]
        assert all(1.5 <= z <= 6.5 for z in zooms), (case.name, zooms)
        assert max(zooms) / min(zooms) > 1.1, f"{case.name}: spacing {zooms} is not anisotropic"

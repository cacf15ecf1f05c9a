"""Issue 25, sections 3 and 4 (readers, datasets, predict): every bad input is one line and exit 2.

Each bad file is built here, by hand where a writer would refuse to make it: a NIfTI whose sform
is all zeros or holds NaN, a header that claims 2000³ voxels over 2 kB of data, two files for one
case, links that lead nowhere. Then the commands a user would run on it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medsaga.data.dataset import discover_dataset
from medsaga.errors import InputError
from medsaga.io import read_volume
from medsaga.io.atomic import TEMP_PREFIX
from medsaga.io.guards import affine_problem, check_voxel_buffer
from medsaga.predict.temporaries import remove_own_temporaries, remove_stale_temporaries
from tests.cli_helpers import ONE_THREAD, SELECT, TINY, assert_one_line_error, medsaga, medsaga_in_process
from tests.data_paths import SAMPLE
from tests.dataset_factory import make_nnunet, phantom, write_nifti
from tests.reporters import QuietPredictReporter
from tests.train_helpers import train_tiny

SAMPLE_CASE = SAMPLE / "imagesTr" / "phantom_007_0000.nii.gz"


def write_raw_affine(path: Path, array: np.ndarray, srows: np.ndarray) -> Path:
    """A NIfTI with ``srows`` ``(3, 4)`` as its sform (sform_code 1, qform_code 0), written as is:
    nibabel's image constructor would refuse to decompose a NaN affine."""
    header = nib.Nifti1Header()
    header.set_data_shape(array.shape)
    header.set_data_dtype(array.dtype)
    header["sform_code"], header["qform_code"] = 1, 0
    header["srow_x"], header["srow_y"], header["srow_z"] = srows
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, None, header=header), str(path))
    return path


def _zero_sform() -> np.ndarray:
    return np.zeros((3, 4))


def _nan_sform() -> np.ndarray:
    srows = np.eye(4)[:3].copy()
    srows[0, 0] = np.nan
    return srows


BAD_AFFINES = {"zero-sform": (_zero_sform, "the affine is all zeros"),
               "nan": (_nan_sform, "NaN")}


def write_memory_bomb(path: Path, shape: tuple[int, int, int] = (2000, 2000, 2000)) -> Path:
    """A single-file NIfTI header claiming ``shape`` int16 voxels, followed by 2 kB of data."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.int16)
    header.set_sform(np.eye(4), code=1)
    header["vox_offset"] = 352
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header.binaryblock + b"\0" * 4 + b"\1" * 2048)
    return path


# ---------------------------------------------------------------------------------------------
# Fixtures: one tiny trained run for the predict tests


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("hardening") / "run"
    train_tiny(run)
    return run


def medsaga_predict(*args: str | Path, prelude: str = "") -> subprocess.CompletedProcess[str]:
    """``medsaga predict ARGS`` in a fresh interpreter on one thread, after ``prelude`` (Python) has run there."""
    return medsaga("predict", *args, prelude=prelude, env=ONE_THREAD)


def assert_one_predict_error(result: subprocess.CompletedProcess[str], path: Path, *fragments: str) -> None:
    """As :func:`assert_one_line_error`, for predict: its stderr also carries the run's info line
    ("run RUN_DIR: decoder on tiny ..."), so exactly one line is an error."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    errors = error_lines(result)
    assert len(errors) == 1 and str(path) in errors[0], result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


# ---------------------------------------------------------------------------------------------
# 1. One affine check, used by every reader


@pytest.mark.parametrize("kind", sorted(BAD_AFFINES))
def test_unusable_affine_is_refused_when_read(kind: str, tmp_path: Path) -> None:
    srows, fragment = BAD_AFFINES[kind]
    image, label = phantom()
    bad = write_raw_affine(tmp_path / "bad.nii.gz", image, srows())
    with pytest.raises(InputError, match="unusable geometry") as raised:
        read_volume(bad)
    assert raised.value.path == bad and fragment in raised.value.message
    assert "sform_code 1" in raised.value.message  # says which header field to fix
    bad_label = write_raw_affine(tmp_path / "bad_label.nii.gz", label, srows())
    with pytest.raises(InputError, match="unusable geometry"):
        read_volume(bad_label)  # label maps go through the same reader


def test_affine_problem_names_each_degenerate_case() -> None:
    assert affine_problem(np.diag([1.0, 1.0, 2.0, 1.0])) is None
    assert "all zeros" in affine_problem(np.zeros((4, 4)))
    assert "NaN" in affine_problem(np.diag([np.inf, 1.0, 1.0, 1.0]))
    assert "axis j zero length" in affine_problem(np.diag([1.0, 0.0, 1.0, 1.0]))
    parallel = np.eye(4)
    parallel[:3, 1] = parallel[:3, 0]
    assert "parallel" in affine_problem(parallel)


@pytest.mark.parametrize("kind", sorted(BAD_AFFINES))
def test_unusable_affine_is_one_line_in_inspect_and_evaluate(kind: str, tmp_path: Path) -> None:
    srows, fragment = BAD_AFFINES[kind]
    image, label = phantom()
    bad = write_raw_affine(tmp_path / "bad.nii.gz", image, srows())
    assert_one_line_error(medsaga("inspect", bad), bad, "unusable geometry", fragment)

    dataset = make_nnunet(tmp_path / "ds", n_cases=2)
    bad_label = write_raw_affine(dataset / "labelsTr" / "case_001.nii.gz", label, srows())
    assert_one_line_error(medsaga("inspect", dataset), bad_label, "case case_001", "unusable geometry")

    good_label = dataset / "labelsTr" / "case_000.nii.gz"
    assert_one_line_error(medsaga("evaluate", bad_label, good_label), bad_label, "unusable geometry")
    assert_one_line_error(medsaga("evaluate", good_label, bad_label), bad_label, "unusable geometry")


def test_unusable_affine_stops_finetune_before_training(tmp_path: Path) -> None:
    image, _ = phantom()
    dataset = make_nnunet(tmp_path / "ds", n_cases=2)
    bad = write_raw_affine(dataset / "imagesTr" / "case_000_0000.nii.gz", image, _zero_sform())
    out = tmp_path / "runs" / "a"
    result = medsaga("finetune", dataset, "--out", out, "--model", "tiny", "--random-init", "--steps", "1",
                     "--image-size", "64", "--shots", "2", "--method", "decoder", "--device", "cpu")
    assert_one_line_error(result, bad, "unusable geometry")
    assert not (out / "trained.safetensors").exists()


def test_unusable_affine_fails_its_predict_case_in_one_line(tiny_run: Path, tmp_path: Path) -> None:
    image, _ = phantom()
    bad = write_raw_affine(tmp_path / "in" / "bad.nii.gz", image, _nan_sform())
    assert_one_predict_error(medsaga_predict(tiny_run, bad, "--out", tmp_path / "out"), bad, "unusable geometry",
                          "nothing was written")


# ---------------------------------------------------------------------------------------------
# 2. A header that claims more voxels than the file or the memory holds


def test_memory_bomb_header_is_refused_before_reading(tmp_path: Path) -> None:
    bomb = write_memory_bomb(tmp_path / "bomb.nii")
    assert bomb.stat().st_size < 3000
    with pytest.raises(InputError, match=r"claims 2000×2000×2000 voxels .* the file holds only 2.4 kB"):
        read_volume(bomb)
    assert_one_line_error(medsaga("inspect", bomb), bomb, "claims 2000×2000×2000 voxels", "truncated")


def test_memory_bomb_is_one_predict_failure(tiny_run: Path, tmp_path: Path) -> None:
    bomb = write_memory_bomb(tmp_path / "in" / "bomb.nii")
    out = tmp_path / "out"
    assert_one_predict_error(medsaga_predict(tiny_run, bomb, "--out", out), bomb, "claims 2000×2000×2000 voxels",
                          "nothing was written")
    assert not out.exists() or not any(out.iterdir())


def test_compressed_and_itk_headers_are_checked_against_memory(tmp_path: Path) -> None:
    # A .nii.gz cannot tell its uncompressed size cheaply: its claim is compared with the memory.
    # 32000³ int16 (NIfTI-1's largest sizes) is 65 TB: more than any machine has.
    bomb = write_memory_bomb(tmp_path / "bomb.nii", shape=(32000, 32000, 32000))
    compressed = tmp_path / "bomb.nii.gz"
    import gzip

    compressed.write_bytes(gzip.compress(bomb.read_bytes()))
    with pytest.raises(InputError, match="of memory available") as raised:
        read_volume(compressed)
    assert raised.value.path == compressed

    nrrd = tmp_path / "bomb.nrrd"
    nrrd.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 200000 200000 200000\nencoding: raw\n"
                     b"endian: little\nspace: left-posterior-superior\n"
                     b"space directions: (1,0,0) (0,1,0) (0,0,1)\nspace origin: (0,0,0)\n\n" + b"\1" * 2048)
    with pytest.raises(InputError, match="of memory available") as raised:
        read_volume(nrrd)
    assert raised.value.path == nrrd


def test_voxel_buffer_check_uses_the_given_memory(tmp_path: Path) -> None:
    path = tmp_path / "scan.nii"
    path.write_bytes(b"\0" * 1000)
    check_voxel_buffer((10, 10, 10), 1, path, stored_bytes=1000, memory_bytes=1000)  # fits exactly
    with pytest.raises(InputError, match="more than the 999 B of memory available"):
        check_voxel_buffer((10, 10, 10), 1, path, memory_bytes=999)
    with pytest.raises(InputError, match="file holds only 1.0 kB"):
        check_voxel_buffer((10, 10, 10), 1, path, stored_bytes=1001, memory_bytes=10**9)


def test_ordinary_uncompressed_nifti_still_reads(tmp_path: Path) -> None:
    image, _ = phantom()
    path = write_nifti(tmp_path / "scan.nii", image)
    assert np.array_equal(read_volume(path).array, image)


# ---------------------------------------------------------------------------------------------
# 3. Two files for one case in the plain layout


def _pairs(root: Path, names: list[str]) -> Path:
    image, label = phantom()
    for name in names:
        write_nifti(root / name, label if "_seg" in name or "_label" in name else image)
    return root


def test_two_images_of_one_case_are_an_error_naming_both(tmp_path: Path) -> None:
    import SimpleITK as sitk

    root = _pairs(tmp_path / "ds", ["c0.nii.gz", "c0_seg.nii.gz"])
    sitk.WriteImage(sitk.ReadImage(str(root / "c0.nii.gz")), str(root / "c0.nrrd"))
    result = medsaga("inspect", root)
    assert_one_line_error(result, root / "c0.nrrd", "two images", str(root / "c0.nii.gz"))


def test_two_label_maps_of_one_image_are_an_error_naming_both(tmp_path: Path) -> None:
    root = _pairs(tmp_path / "ds", ["c1.nii.gz", "c1_seg.nii.gz", "c1_label.nii.gz"])
    with pytest.raises(InputError, match="two label maps") as raised:
        discover_dataset(root)
    assert {"c1_seg.nii.gz", "c1_label.nii.gz"} <= {Path(word.strip(":,")).name for word in str(raised.value).split()}
    assert_one_line_error(medsaga("inspect", root), root / "c1_seg.nii.gz", "c1_label.nii.gz")

    # The same with a labels/ folder: labels/c2.nii.gz and labels/c2_seg.nii.gz.
    other = _pairs(tmp_path / "ds2", ["images/c2.nii.gz", "labels/c2.nii.gz", "labels/c2_seg.nii.gz"])
    with pytest.raises(InputError, match="two label maps"):
        discover_dataset(other)


# ---------------------------------------------------------------------------------------------
# 4. Files left out are named in a warning


def test_dropped_files_are_named_in_warnings(tmp_path: Path) -> None:
    root = _pairs(tmp_path / "ds", ["c0.nii.gz", "c0_seg.nii.gz", "c4_seg.nii.gz"])
    (root / "c2.nii.gz").symlink_to(root / "missing.nii.gz")
    (root / "c3.nii.gz").symlink_to(root / "c3.nii.gz")  # a link to itself: a loop
    dataset = discover_dataset(root)
    assert [case.case_id for case in dataset.cases] == ["c0"]
    assert len(dataset.warnings) == 3, dataset.warnings
    by_file = {warning.split(": ")[0]: warning for warning in dataset.warnings}
    assert "broken symbolic link" in by_file[str(root / "c2.nii.gz")]
    assert "symbolic link loop" in by_file[str(root / "c3.nii.gz")]
    assert "label map without an image" in by_file[str(root / "c4_seg.nii.gz")]

    result = medsaga("inspect", root)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert sorted(lines) == sorted(f"warning: {warning}" for warning in dataset.warnings)


def test_nnunet_label_without_image_and_broken_label_link_are_named(tmp_path: Path) -> None:
    root = make_nnunet(tmp_path / "ds", n_cases=2)
    shutil.copy(root / "labelsTr" / "case_000.nii.gz", root / "labelsTr" / "case_009.nii.gz")
    (root / "labelsTr" / "case_001.nii.gz").unlink()
    (root / "labelsTr" / "case_001.nii.gz").symlink_to(tmp_path / "gone.nii.gz")
    dataset = discover_dataset(root)
    assert [case.label is not None for case in dataset.cases] == [True, False]
    assert len(dataset.warnings) == 2
    assert any(w.startswith(str(root / "labelsTr" / "case_009.nii.gz")) and "without an image" in w
               for w in dataset.warnings)
    assert any(w.startswith(str(root / "labelsTr" / "case_001.nii.gz")) and "broken symbolic link" in w
               for w in dataset.warnings)


# ---------------------------------------------------------------------------------------------
# 5. predict leaves no hidden temporaries: not on SIGTERM, not from an earlier killed run

# In the predicting process: the label-map writer leaves a 0-byte temporary outside any clean-up
# (as a process killed mid-write did) and then the process gets SIGTERM.
_SIGTERM_WHILE_WRITING = f"""
import os, signal, time
from pathlib import Path
import medsaga.io

def interrupted_write(labels, path, overwrite=False, **kwargs):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / ("{TEMP_PREFIX}" + "0123abcd-" + path.name)).write_bytes(b"")
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(60)  # the handler raises here
    raise AssertionError("SIGTERM did not stop predict")

medsaga.io.write_label_map = interrupted_write
"""


def test_sigterm_during_predict_removes_its_temporaries(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = medsaga_predict(tiny_run, SAMPLE_CASE, "--out", out, prelude=_SIGTERM_WHILE_WRITING)
    assert result.returncode == 143, result.stderr
    assert "Traceback" not in result.stderr and "SIGTERM" in result.stderr
    assert not [p for p in out.iterdir() if p.name.startswith(TEMP_PREFIX)], list(out.iterdir())


def test_next_predict_removes_stale_temporaries_of_its_output_folder_only(tiny_run: Path, tmp_path: Path) -> None:
    from medsaga.predict import PredictOptions, predict

    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    (out / "probabilities").mkdir(parents=True)
    elsewhere.mkdir()
    an_hour_ago = time.time() - 3600
    stale = [out / f"{TEMP_PREFIX}deadbeef-phantom_007.nii.gz",
             out / "probabilities" / f"{TEMP_PREFIX}0badf00d-x.nii.gz"]
    kept = [elsewhere / f"{TEMP_PREFIX}deadbeef-phantom_007.nii.gz",  # not the output folder
            out / f"{TEMP_PREFIX}notes.txt",  # not a name atomic_output makes
            out / "notes.txt"]
    for path in stale + kept:
        path.write_bytes(b"")
        os.utime(path, (an_hour_ago, an_hour_ago))
    reporter = QuietPredictReporter()
    outcome = predict(PredictOptions(run_dir=tiny_run, inputs=(SAMPLE_CASE,), out=out, batch_size=6), reporter)
    assert [r.case_id for r in outcome.results] == ["phantom_007"]
    assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in kept)
    assert any("removed 2 temporary file(s)" in message for message in reporter.messages), reporter.messages


def test_only_old_or_own_temporaries_are_removed(tmp_path: Path) -> None:
    started = time.time()
    fresh = tmp_path / f"{TEMP_PREFIX}00000000-a.nii.gz"  # a concurrent writer's, being written now
    fresh.write_bytes(b"")
    assert remove_stale_temporaries([tmp_path], started) == []
    assert fresh.exists()
    other = tmp_path / f"{TEMP_PREFIX}11111111-b.nii.gz"
    other.write_bytes(b"")
    link = tmp_path / f"{TEMP_PREFIX}22222222-a.nii.gz"
    link.symlink_to(tmp_path / "target")
    assert remove_own_temporaries([tmp_path / "a.nii.gz"], started) == [fresh]
    assert other.exists() and link.is_symlink()  # not this run's output; never a link


# ---------------------------------------------------------------------------------------------
# 6. A failed predict case is printed once, and the summary tells what was written


def test_failed_case_is_printed_once_and_the_count_is_true(tiny_run: Path, tmp_path: Path) -> None:
    broken = tmp_path / "in" / "broken.nii.gz"
    broken.parent.mkdir()
    broken.write_bytes(b"not a NIfTI file")
    result = medsaga_predict(tiny_run, SAMPLE_CASE, broken, "--out", tmp_path / "out")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = error_lines(result)
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith(f"error: {broken}: case broken failed: cannot read as NIfTI")
    assert lines[1] == "error: 1 of 2 cases failed; 1 was written (rerun with --skip-existing to predict only " \
                       "what is missing)"
    assert sum(str(broken) in line for line in result.stderr.splitlines()) == 1  # printed once
    assert (tmp_path / "out" / "phantom_007.nii.gz").is_file()

    other = tmp_path / "in" / "other.nii.gz"
    other.write_bytes(b"neither")
    result = medsaga_predict(tiny_run, broken, other, "--out", tmp_path / "out2")
    lines = error_lines(result)
    assert result.returncode == 2 and len(lines) == 3, result.stderr
    assert lines[2] == "error: 2 of 2 cases failed; none was written"


def test_finetune_and_select_name_the_dropped_files(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_nnunet(tmp_path / "ds", n_cases=2)
    shutil.copy(root / "labelsTr" / "case_000.nii.gz", root / "labelsTr" / "case_009.nii.gz")
    dropped = f"warning: {root / 'labelsTr' / 'case_009.nii.gz'}: "
    code, err = medsaga_in_process(capsys, monkeypatch, "finetune", root, *TINY, "--out", tmp_path / "run")
    assert code == 0, err
    assert any(line.startswith(dropped) and "without an image" in line for line in err.splitlines()), err
    code, err = medsaga_in_process(capsys, monkeypatch, "select", root, *SELECT, "--out", tmp_path / "sel",
                                   "--no-cache")
    assert code == 0, err
    assert any(line.startswith(dropped) and "without an image" in line for line in err.splitlines()), err

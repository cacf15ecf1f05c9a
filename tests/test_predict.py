"""`medsaga predict`: the rebuilt model, outputs that overlay exactly, DICOM-SEG, inputs and errors.

One tiny run (decoder method, one step at 64 px, a learning rate too small to matter) serves every
test: its barely trained decoder still gives every class somewhere, which is what geometry, SEG
and clean-up checks need; whether the segmentation is any good is not the question here.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import medsaga.train.finetune as finetune_module
from medsaga.errors import InputError
from medsaga.io import read_dicom_seg, read_volume
from medsaga.predict import (PredictOptions, find_cases, keep_largest_component, load_model, load_run, predict,
                             read_run_config, segment_case, verify_checkpoint)
from tests.cli_helpers import assert_one_line_error, medsaga
from tests.data_paths import SAMPLE, SHARED_DATA, need_shared
from tests.dataset_factory import make_nnunet, phantom, write_nifti
from tests.reporters import QuietPredictReporter
from tests.train_helpers import train_tiny

THREE_SLICE = SHARED_DATA / "ct-dicom-seg" / "ct-3slice"
NO_UID_SERIES = SHARED_DATA / "ct-dicom-series" / "dicom"
VALUES = {0, 1, 2, 3}  # sample_data's label values


@dataclass
class Trained:
    run: Path
    state: dict[str, torch.Tensor]  # the model's tensors as training left them


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    run = tmp_path_factory.mktemp("predict") / "run"
    captured: dict[str, torch.Tensor] = {}
    save = finetune_module.save_trained

    def save_and_capture(method, model, folder):
        captured.update({name: value.detach().clone() for name, value in model.state_dict().items()})
        return save(method, model, folder)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(finetune_module, "save_trained", save_and_capture)
        train_tiny(run)
    return Trained(run, captured)


def run_predict(run: Path, inputs: list[Path], out: Path, **changes) -> tuple[object, QuietPredictReporter]:
    reporter = QuietPredictReporter()
    options = PredictOptions(run_dir=run, inputs=tuple(inputs), out=out, batch_size=6, **changes)
    return predict(options, reporter), reporter


# ---------------------------------------------------------------------------------------------
# The model


def test_random_weights_run_is_rebuilt_bit_identical_from_its_seed(trained: Trained) -> None:
    from medsaga.methods.persist import METHOD_FILE, TRAINED_FILE
    from medsaga.predict.run import RUN_FILES

    assert RUN_FILES == (METHOD_FILE, TRAINED_FILE)
    config = read_run_config(trained.run)
    assert config.checkpoint is None and config.seed == 7 and config.class_values == (0, 1, 2, 3)
    rebuilt = load_model(config, verify_checkpoint(config)).state_dict()
    assert rebuilt.keys() == trained.state.keys()
    # The decoder method froze the randomly initialised encoder: only the seed can bring it back.
    assert all(torch.equal(rebuilt[name], value) for name, value in trained.state.items())
    assert not load_model(config, None).training


def test_bf16_autocast_gives_nearly_the_fp32_labels(trained: Trained) -> None:
    # bf16 is what CUDA runs by default; CPU autocast exercises the same code path here.
    volume = read_volume(SAMPLE / "imagesTr" / "phantom_007_0000.nii.gz")
    fp32 = segment_case(load_run(trained.run, "cpu"), volume)
    bf16 = segment_case(load_run(trained.run, "cpu", precision="bf16"), volume)
    assert bf16.classes.array.dtype == np.uint8 and bf16.classes.shape == volume.shape
    assert np.mean(fp32.classes.array == bf16.classes.array) > 0.9


def _assert_same_prediction(fast, sam) -> None:
    """Probabilities within 1e-4; labels equal except where two classes tie within that."""
    assert np.abs(fast.probabilities - sam.probabilities).max() < 1e-4
    top_two = np.sort(sam.probabilities, axis=-1)[..., -2:]
    differ = fast.classes.array != sam.classes.array
    assert np.all(top_two[..., 1][differ] - top_two[..., 0][differ] < 1e-4)


def test_fast_encoder_attention_predicts_as_sams(trained: Trained, tmp_path: Path) -> None:
    """segment_case (hence predict) runs the exact fast encoder attention by default; SAM's own on request."""
    from medsaga.model.fast_attention import is_sped_up

    volume = read_volume(SAMPLE / "imagesTr" / "phantom_007_0000.nii.gz")
    run = load_run(trained.run, "cpu")
    encoder = run.model.sam.image_encoder
    assert not is_sped_up(encoder)  # loading leaves SAM's classes: the choice is segment_case's
    sam = segment_case(run, volume, probabilities=True, fast_encoder=False)
    assert not is_sped_up(encoder)
    fast = segment_case(run, volume, probabilities=True)
    assert is_sped_up(encoder)
    _assert_same_prediction(fast, sam)
    assert run.model.state_dict().keys() == trained.state.keys()  # nothing renamed by the swap
    outcome, _ = run_predict(trained.run, [SAMPLE / "imagesTr" / "phantom_007_0000.nii.gz"], tmp_path / "out")
    assert is_sped_up(outcome.run.model.sam.image_encoder)


def test_fast_encoder_attention_with_conv_lora_keeps_sams_padded_windows(tmp_path: Path) -> None:
    """Conv-LoRA's experts convolve across each padded window: its blocks fall back, still exact."""
    from medsaga.model.fast_attention import FastAttention, is_tokenwise

    train_tiny(tmp_path / "run", method="conv-lora", lr=1e-2)
    volume = read_volume(SAMPLE / "imagesTr" / "phantom_007_0000.nii.gz")
    run = load_run(tmp_path / "run", "cpu")
    sam = segment_case(run, volume, probabilities=True, fast_encoder=False)
    fast = segment_case(run, volume, probabilities=True)
    windowed = run.model.sam.image_encoder.blocks[0].attn
    assert isinstance(windowed, FastAttention) and not is_tokenwise(windowed.qkv)
    _assert_same_prediction(fast, sam)


# ---------------------------------------------------------------------------------------------
# Outputs on the input's grid


def test_every_sample_orientation_gets_a_label_map_on_its_own_grid(trained: Trained, tmp_path: Path) -> None:
    outcome, reporter = run_predict(trained.run, [SAMPLE / "imagesTr"], tmp_path / "a")
    assert [r.case_id for r in outcome.results] == [f"phantom_{n:03d}" for n in range(1, 9)]
    assert reporter.progress[0] == ("phantom_001", 0, 24) and reporter.progress[-1][1:] == (28, 28)
    again, _ = run_predict(trained.run, [SAMPLE / "imagesTr"], tmp_path / "b")
    seen: set[int] = set()
    for result in outcome.results:
        image = nib.load(SAMPLE / "imagesTr" / f"{result.case_id}_0000.nii.gz")
        label = nib.load(tmp_path / "a" / f"{result.case_id}.nii.gz")
        assert result.outputs == [tmp_path / "a" / f"{result.case_id}.nii.gz"]
        # Exactly the input's geometry and header codes (RAS, LPS, oblique, tilted, permuted axes).
        assert np.array_equal(label.affine, image.affine) and label.shape == image.shape
        for form in ("qform_code", "sform_code"):
            assert label.header[form] == image.header[form]
        assert np.array_equal(label.header.get_sform(), image.header.get_sform())
        voxels = np.asarray(label.dataobj)
        assert set(np.unique(voxels).tolist()) <= VALUES and label.get_data_dtype() == np.uint8
        seen |= set(np.unique(voxels).tolist())
        assert result.label_voxels == {v: int(n) for v, n in zip(*np.unique(voxels, return_counts=True))}
        # Predicting twice gives the same file contents.
        twice = nib.load(tmp_path / "b" / f"{result.case_id}.nii.gz")
        assert np.array_equal(np.asarray(twice.dataobj), voxels)
        assert twice.header.binaryblock == label.header.binaryblock
    assert seen == VALUES  # the barely trained model still gives every class somewhere


def test_lps_nrrd_copy_gets_the_same_labels_in_world_space(trained: Trained, tmp_path: Path) -> None:
    import SimpleITK as sitk

    from medsaga.io.itk import image_to_itk

    ras = read_volume(SAMPLE / "imagesTr" / "phantom_001_0000.nii.gz")
    assert ras.orientation == "RAS"
    lps = ras.flip(0).flip(1)  # same voxels at the same places, stored as DICOM/ITK do
    assert lps.orientation == "LPS"
    nrrd = tmp_path / "in" / "phantom_lps.nrrd"
    nrrd.parent.mkdir()
    sitk.WriteImage(image_to_itk(lps), str(nrrd))
    outcome, _ = run_predict(trained.run, [SAMPLE / "imagesTr" / "phantom_001_0000.nii.gz", nrrd], tmp_path / "out")
    assert [r.case_id for r in outcome.results] == ["phantom_001", "phantom_lps"]
    assert outcome.results[1].outputs == [tmp_path / "out" / "phantom_lps.nii.gz", tmp_path / "out" / "phantom_lps.nrrd"]
    reference = read_volume(tmp_path / "out" / "phantom_001.nii.gz").array
    source = read_volume(nrrd)
    for name in ("phantom_lps.nrrd", "phantom_lps.nii.gz"):
        predicted = read_volume(tmp_path / "out" / name)
        assert predicted.same_grid(source) == [] and np.allclose(predicted.affine, source.affine, atol=1e-5)
        # Slicing is orientation-free: flipped back, the LPS prediction is the RAS one, voxel for voxel.
        assert np.array_equal(predicted.array[::-1, ::-1], reference)


def test_probabilities_are_a_4d_map_on_the_input_grid(trained: Trained, tmp_path: Path) -> None:
    case = SAMPLE / "imagesTr" / "phantom_007_0000.nii.gz"
    outcome, _ = run_predict(trained.run, [case], tmp_path, probabilities=True)
    path = tmp_path / "probabilities" / "phantom_007.nii.gz"
    assert outcome.results[0].outputs[-1] == path
    maps, image = nib.load(path), nib.load(case)
    assert maps.shape == (*image.shape, 4) and maps.get_data_dtype() == np.float32
    assert np.array_equal(maps.affine, image.affine) and maps.header["sform_code"] == image.header["sform_code"]
    scores = np.asarray(maps.dataobj)
    assert np.allclose(scores.sum(axis=-1), 1, atol=1e-5) and scores.min() >= 0
    labels = np.asarray(nib.load(tmp_path / "phantom_007.nii.gz").dataobj)
    assert np.mean(scores.argmax(axis=-1) == labels) > 0.999  # class c = value c here; ties may differ


def test_two_channel_run_groups_channel_files(tmp_path: Path) -> None:
    data = make_nnunet(tmp_path / "ds", n_cases=2, channels=("T1", "T2"))
    train_tiny(tmp_path / "run", data=data, shots=2)
    assert read_run_config(tmp_path / "run").mode == "modalities"
    outcome, _ = run_predict(tmp_path / "run", [data / "imagesTr"], tmp_path / "out")
    assert [r.case_id for r in outcome.results] == ["case_000", "case_001"]
    label = nib.load(tmp_path / "out" / "case_000.nii.gz")
    assert label.shape == (16, 12, 6) and set(np.unique(np.asarray(label.dataobj)).tolist()) <= {0, 1, 2}


# ---------------------------------------------------------------------------------------------
# Largest component


def test_largest_component_keeps_one_component_per_class() -> None:
    labels = np.zeros((12, 10, 8), np.uint8)
    labels[1:5, 1:5, 1:5] = 1  # 64 voxels: kept
    labels[8:10, 7:9, 5:7] = 1  # 8 voxels: removed
    labels[6, 1, 1] = labels[7, 2, 2] = 1  # a corner-connected pair elsewhere: removed
    labels[1:3, 7:9, 1:3] = 4  # 8 voxels, touching the next one only by a corner: one component
    labels[3, 9, 3] = 4
    labels[10, 0, 7] = 4  # a lone voxel: removed
    kept = keep_largest_component(labels)
    assert kept.dtype == labels.dtype and labels[8, 7, 5] == 1  # the input is untouched
    assert np.count_nonzero(kept == 1) == 64 and np.count_nonzero(kept == 4) == 9
    assert kept[8, 7, 5] == kept[6, 1, 1] == kept[10, 0, 7] == 0
    from scipy import ndimage

    for value in (1, 4):
        assert ndimage.label(kept == value, structure=np.ones((3, 3, 3)))[1] == 1


def test_largest_component_option_changes_only_removed_voxels(trained: Trained, tmp_path: Path) -> None:
    case = SAMPLE / "imagesTr" / "phantom_006_0000.nii.gz"
    run_predict(trained.run, [case], tmp_path / "plain")
    run_predict(trained.run, [case], tmp_path / "largest", largest_component=True)
    plain = np.asarray(nib.load(tmp_path / "plain" / "phantom_006.nii.gz").dataobj)
    largest = np.asarray(nib.load(tmp_path / "largest" / "phantom_006.nii.gz").dataobj)
    assert np.array_equal(largest, keep_largest_component(plain))
    assert np.all((largest == plain) | (largest == 0)) and not np.array_equal(largest, plain)


# ---------------------------------------------------------------------------------------------
# DICOM


def test_dicom_series_gets_nifti_and_a_seg_referencing_it(trained: Trained, tmp_path: Path) -> None:
    import highdicom as hd
    import pydicom

    series = need_shared(THREE_SLICE)
    outcome, reporter = run_predict(trained.run, [series], tmp_path)
    assert not reporter.warnings
    nifti_path, seg_path = tmp_path / "ct-3slice.nii.gz", tmp_path / "ct-3slice.seg.dcm"
    assert outcome.results[0].outputs == [nifti_path, seg_path]
    source = read_volume(series)
    labels = read_volume(nifti_path)
    assert labels.shape == source.shape and np.allclose(labels.affine, source.affine, atol=1e-4)
    assert set(np.unique(labels.array).tolist()) == VALUES

    seg = hd.seg.segread(seg_path)
    assert str(seg.SegmentationType) == "BINARY" and seg.StudyInstanceUID == pydicom.dcmread(
        source.source.dicom_files[0], stop_before_pixels=True).StudyInstanceUID
    instance_uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in source.source.dicom_files]
    referenced = {uids[2] for uids in seg.get_source_image_uids()}
    assert referenced <= set(instance_uids) and len(referenced) == 3
    assert [(d.SegmentNumber, d.SegmentLabel, d.SegmentDescription) for d in seg.SegmentSequence] == [
        (1, "liver", "label value 1"), (2, "kidney", "label value 2"), (3, "spleen", "label value 3")]
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "85756007"
    # Segment numbers are class indices; here class c has label value c. Read back by the series'
    # SOP instances, and independently by the frames' positions on the NIfTI's grid.
    assert np.array_equal(read_dicom_seg(seg_path, series).array, labels.array)
    assert np.array_equal(read_dicom_seg(seg_path, labels).array, labels.array)
    assert np.array_equal(read_volume(seg_path, reference=series).array, labels.array)
    # Frame by frame from the raw dataset: frame = (rows, columns) = voxels (j, i) of slice k.
    raw = pydicom.dcmread(seg_path)
    frames = raw.pixel_array.reshape(-1, *source.shape[1::-1])
    for frame, group in zip(frames, raw.PerFrameFunctionalGroupsSequence):
        uid = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        number = group.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        k = instance_uids.index(uid)
        assert np.array_equal(frame.astype(bool), labels.array[:, :, k].T == number)

    outcome, _ = run_predict(trained.run, [series], tmp_path, seg_type="labelmap", force=True)
    assert str(hd.seg.segread(seg_path).SegmentationType) == "LABELMAP"
    assert np.array_equal(read_dicom_seg(seg_path, series).array, labels.array)


def test_series_with_empty_uids_gets_a_seg_referencing_its_file_meta_uids(trained: Trained, tmp_path: Path) -> None:
    import highdicom as hd
    import pydicom

    series = need_shared(NO_UID_SERIES)
    nifti_path, seg_path = tmp_path / "dicom.nii.gz", tmp_path / "dicom.seg.dcm"
    outcome, reporter = run_predict(trained.run, [series], tmp_path)
    assert outcome.results[0].outputs == [nifti_path, seg_path]
    assert len(reporter.warnings) == 1 and str(series) in reporter.warnings[0]
    assert all(k in reporter.warnings[0] for k in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID",
                                                     "file meta", "derived"))
    labels, source = read_volume(nifti_path), read_volume(series)
    assert labels.same_grid(source) == [] and np.allclose(labels.affine, source.affine, atol=1e-4)

    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in source.source.dicom_files]
    assert all(not str(h.get("SOPInstanceUID", "")).strip() for h in headers)  # the files stay as they were
    meta_uids = [str(h.file_meta.MediaStorageSOPInstanceUID) for h in headers]
    digest = hashlib.sha256("\n".join(["medsaga SeriesInstanceUID", *sorted(meta_uids)]).encode()).hexdigest()
    derived_series = "2.25." + str(int(digest[:30], 16))
    assert len(derived_series) <= 64

    seg = hd.seg.segread(seg_path)
    source_uids = seg.get_source_image_uids()
    referenced = {uids[2] for uids in source_uids}
    assert referenced and referenced <= set(meta_uids)
    assert {uids[1] for uids in source_uids} == {derived_series}
    assert {uids[0] for uids in source_uids} == {str(seg.StudyInstanceUID)} and seg.StudyInstanceUID.startswith("2.25.")
    assert seg.FrameOfReferenceUID == headers[0].FrameOfReferenceUID
    # Read back onto the series (by plane position: the files' own SOPInstanceUIDs are empty)...
    assert np.array_equal(read_dicom_seg(seg_path, series).array, labels.array)
    # ...and frame by frame through the file-meta UIDs: frame = (rows, columns) = voxels (j, i) of slice k.
    raw = pydicom.dcmread(seg_path)
    frames = raw.pixel_array.reshape(-1, *source.shape[1::-1])
    values = np.asarray([0, *sorted(VALUES - {0})])
    for frame, group in zip(frames, raw.PerFrameFunctionalGroupsSequence):
        uid = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        number = group.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        k = meta_uids.index(uid)
        assert np.array_equal(frame.astype(bool), labels.array[:, :, k].T == values[number])

    # Stable: a second prediction references the same study, series and instances.
    again = tmp_path / "again"
    run_predict(trained.run, [series], again)
    second = hd.seg.segread(again / "dicom.seg.dcm")
    assert sorted(second.get_source_image_uids()) == sorted(source_uids)
    assert second.SeriesInstanceUID != seg.SeriesInstanceUID  # the SEG itself is a new series each time


def test_series_whose_instances_cannot_be_identified_gets_no_seg(tmp_path: Path) -> None:
    import pydicom

    from medsaga.predict.dicom_seg import dicom_seg_problem, dicom_seg_substitutions

    folder = tmp_path / "blank"
    shutil.copytree(need_shared(THREE_SLICE), folder)
    for path in sorted(folder.iterdir()):
        dataset = pydicom.dcmread(path)
        dataset.SOPInstanceUID = ""
        dataset.file_meta.MediaStorageSOPInstanceUID = ""
        dataset.save_as(path, enforce_file_format=False)
    volume = read_volume(folder)
    problem = dicom_seg_problem(volume)
    assert problem is not None and "SOPInstanceUID" in problem and "file meta" in problem
    assert dicom_seg_substitutions(volume) is None
    with pytest.raises(InputError, match="cannot write a DICOM-SEG"):
        from medsaga.predict.dicom_seg import Segment, write_dicom_seg
        write_dicom_seg(volume.with_array(np.zeros(volume.shape, np.uint8)), volume, [Segment(1, "a", 1)],
                        tmp_path / "x.seg.dcm")
    assert dicom_seg_problem(read_volume(need_shared(THREE_SLICE))) is None
    assert dicom_seg_substitutions(read_volume(need_shared(THREE_SLICE))) is None


# ---------------------------------------------------------------------------------------------
# Inputs


def test_case_ids_and_channel_grouping(tmp_path: Path) -> None:
    folder = tmp_path / "imagesTs"
    for name in ("b_0000.nii.gz", "a_0000.nii.gz", "a_0001.nii.gz", "scan_2023.nrrd", "plain.nii"):
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).touch()
    (folder / "notes.txt").touch()
    cases = find_cases([folder / "b_0000.nii.gz", folder / "scan_2023.nrrd", folder / "plain.nii"], ["CT"])
    assert [(c.case_id, c.kind) for c in cases] == [("b", "nifti"), ("plain", "nifti"), ("scan_2023", "itk")]
    with pytest.raises(InputError, match="case a has 2 channel files .* trained on one channel"):
        find_cases([folder], ["CT"])
    two = find_cases([folder / "a_0001.nii.gz", folder / "a_0000.nii.gz"], ["T1", "T2"])
    assert [(c.case_id, [p.name for p in c.images]) for c in two] == [("a", ["a_0000.nii.gz", "a_0001.nii.gz"])]
    with pytest.raises(InputError, match=r"case b lacks channel file b_0001; this run takes 2 channels \(_0000 T1"):
        find_cases([folder / "b_0000.nii.gz"], ["T1", "T2"])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "b.nii.gz").touch()
    with pytest.raises(InputError, match="gives case id 'b', as does"):
        find_cases([folder / "b_0000.nii.gz", tmp_path / "other" / "b.nii.gz"], ["CT"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no image files"):
        find_cases([tmp_path / "empty"], ["CT"])
    with pytest.raises(InputError, match="single DICOM file; pass the folder"):
        find_cases([need_shared(THREE_SLICE) / "01.dcm"], ["CT"])


def test_dicom_folder_inside_a_folder_is_a_case(trained: Trained, tmp_path: Path) -> None:
    series = need_shared(THREE_SLICE)
    parent = tmp_path / "batch"
    shutil.copytree(series, parent / "patient_a")
    write_nifti(parent / "other_0000.nii.gz", phantom()[0])
    cases = find_cases([parent], ["CT"])
    assert [(c.case_id, c.kind) for c in cases] == [("other", "nifti"), ("patient_a", "dicom")]


# ---------------------------------------------------------------------------------------------
# Errors: one line, exit code 2, before the long work


def test_cli_errors_are_one_line(trained: Trained, tmp_path: Path) -> None:
    case = SAMPLE / "imagesTr" / "phantom_007_0000.nii.gz"
    not_a_run = tmp_path / "not_a_run"
    not_a_run.mkdir()
    assert_one_line_error(medsaga("predict", not_a_run, case, "--out", tmp_path / "o"), not_a_run, "no config.json")
    missing = tmp_path / "missing.nii.gz"
    assert_one_line_error(medsaga("predict", trained.run, missing, "--out", tmp_path / "o"), missing, "no such file")

    existing = tmp_path / "o" / "phantom_007.nii.gz"
    existing.parent.mkdir()
    existing.write_bytes(b"mine")
    assert_one_line_error(medsaga("predict", trained.run, case, "--out", tmp_path / "o"), existing,
                          "already exists", "--force")
    assert existing.read_bytes() == b"mine"

    two_channels = tmp_path / "two_channel_run"
    shutil.copytree(trained.run, two_channels)
    config = json.loads((two_channels / "config.json").read_text())
    config["dataset"]["channel_names"], config["slicing"]["presets"] = ["T1", "T2"], ["mr", "mr"]
    config["slicing"]["mode"] = "modalities"
    (two_channels / "config.json").write_text(json.dumps(config))
    plain = tmp_path / "scan.nii.gz"
    shutil.copy(case, plain)
    assert_one_line_error(medsaga("predict", two_channels, plain, "--out", tmp_path / "o2"), plain,
                          "no channel suffix", "2 channels", "scan_0000")


def test_broken_run_folders_are_named(trained: Trained, tmp_path: Path) -> None:
    broken = tmp_path / "run"
    shutil.copytree(trained.run, broken)
    (broken / "trained.safetensors").unlink()
    with pytest.raises(InputError, match="the run has no trained.safetensors: did its training finish"):
        read_run_config(broken)
    (broken / "config.json").write_text(json.dumps({"model": {"type": "tiny"}}))
    with pytest.raises(InputError, match=r"config.json: not a readable medsaga run config \(missing 'classes'\)"):
        read_run_config(broken)


def test_outputs_never_replace_inputs(trained: Trained, tmp_path: Path) -> None:
    image = tmp_path / "case.nii.gz"  # its output would be OUT/case.nii.gz: itself
    shutil.copy(SAMPLE / "imagesTr" / "phantom_007_0000.nii.gz", image)
    with pytest.raises(InputError, match="refusing to replace an input"):
        run_predict(trained.run, [image], tmp_path, force=True)


def test_base_checkpoint_is_verified_by_hash(tmp_path: Path) -> None:
    from medsaga.model.build import build_sam

    with torch.random.fork_rng():
        torch.manual_seed(1)
        state = build_sam("tiny", num_classes=3, image_size=64).state_dict()
    checkpoint = tmp_path / "tiny_base.pth"
    torch.save(state, checkpoint)
    train_tiny(tmp_path / "run", model=None, checkpoint=checkpoint)
    case = SAMPLE / "imagesTr" / "phantom_007_0000.nii.gz"

    result = medsaga("predict", tmp_path / "run", case, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "phantom_007" in result.stdout and "total" in result.stdout and "slices/s" in result.stdout
    assert "Traceback" not in result.stderr and (tmp_path / "out" / "phantom_007.nii.gz").is_file()

    moved = tmp_path / "elsewhere.pth"
    checkpoint.rename(moved)
    config = read_run_config(tmp_path / "run")
    with pytest.raises(InputError, match="not found; if it moved, pass its new location with --checkpoint"):
        verify_checkpoint(config)
    assert verify_checkpoint(config, moved) == moved
    data = bytearray(moved.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other content
    moved.write_bytes(bytes(data))
    assert_one_line_error(medsaga("predict", tmp_path / "run", case, "--out", tmp_path / "out2", "--checkpoint", moved),
                          moved, "is not the checkpoint this run was trained from", "SHA-256")
    moved.write_bytes(bytes(data) + b"\0")
    with pytest.raises(InputError, match="bytes"):
        verify_checkpoint(config, moved)

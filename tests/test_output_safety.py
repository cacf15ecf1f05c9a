"""Never lose a user's folder, and prove every output location writable before any long work
(issue 25, sections 1 and 2): through the command line, as a user meets it.

Every refusal is exit 2 with one line on stderr naming the path, no traceback, and nothing
deleted. The commands run in this process (``cli.main.run``, the console script's own entry
point), so that a test can replace the long work by a tripwire (proving the refusal came before
it) or make a write fail (disk full).

The tests run as root, where permissions do not stop a write: a location is made unwritable by
putting a regular file where a folder must be (``--out somefile/run``), which fails for root too.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from medsaga.errors import InputError
from medsaga.io.atomic import TEMP_PREFIX
from medsaga.io.paths import FOLDER_MARKER, ensure_writable_folder, folder_kind, foreign_entry
from tests.cli_helpers import SELECT, TINY, medsaga_in_process
from tests.dataset_factory import make_nnunet, phantom, write_nifti


def one_line_error(code: int, stderr: str, path: Path, *fragments: str) -> str:
    """Exit 2, exactly one line on stderr, naming ``path``; returns the line."""
    assert code == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return last_line_error(code, stderr, path, *fragments)


def last_line_error(code: int, stderr: str, path: Path, *fragments: str) -> str:
    """Exit 2 and one error line, the last one (a run that fails at its end has printed its
    progress lines before), naming ``path``."""
    assert code == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], stderr
    assert str(path) in lines[-1], lines[-1]
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]
    return lines[-1]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def no_leftovers(parent: Path) -> None:
    """No folder renamed aside and no temporary anywhere under ``parent``."""
    assert not [p for p in parent.rglob("*") if ".medsaga-old-" in p.name or p.name.startswith(TEMP_PREFIX)]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_nnunet(tmp_path / "ds", n_cases=2)


@pytest.fixture
def scans(tmp_path: Path) -> Path:
    for index in range(2):
        image, _ = phantom(seed=index)
        write_nifti(tmp_path / "scans" / f"scan_{index}.nii.gz", image * (1 + index))
    return tmp_path / "scans"


def tripwire(monkeypatch: pytest.MonkeyPatch, target: str) -> None:
    """Make ``target`` (module attribute) fail the test if the command gets as far as calling it."""
    def called(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{target} was called: the refusal came too late")
    monkeypatch.setattr(target, called)


def a_web_app(folder: Path) -> dict[str, bytes]:
    """The folder of issue 25: a config.json that is not medsaga's, notes, a sub-folder."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"app": "my web app"}))
    (folder / "notes.txt").write_text("my notes")
    (folder / "sub").mkdir()
    (folder / "sub" / "data.csv").write_text("a,b\n1,2\n")
    return snapshot(folder)


# --- §1: --force replaces only medsaga's own folders, and never loses the old one -----------------

def test_finetune_force_refuses_a_folder_medsaga_did_not_make(tmp_path, data, capsys, monkeypatch) -> None:
    before = a_web_app(tmp_path / "it")
    tripwire(monkeypatch, "medsaga.train.finetune.load_case_stacks")
    code, err = medsaga_in_process(capsys, monkeypatch, "finetune", data, *TINY, "--out", tmp_path / "it", "--force")
    one_line_error(code, err, tmp_path / "it", "not a medsaga run folder", "delete it by hand or choose another")
    assert snapshot(tmp_path / "it") == before


def test_select_force_refuses_a_folder_with_any_selection_json(tmp_path, scans, capsys, monkeypatch) -> None:
    folder = tmp_path / "sel"
    folder.mkdir()
    (folder / "selection.json").write_text("[]")
    before = snapshot(folder)
    tripwire(monkeypatch, "medsaga.select.run._embedder")
    code, err = medsaga_in_process(capsys, monkeypatch,
                                   "select", scans, *SELECT, "--no-cache", "--out", folder, "--force")
    one_line_error(code, err, folder, "not a medsaga selection folder")
    assert snapshot(folder) == before


def test_a_run_with_a_foreign_file_or_of_another_kind_is_not_replaced(tmp_path, data, scans, capsys,
                                                                      monkeypatch) -> None:
    run = tmp_path / "run"
    assert medsaga_in_process(capsys, monkeypatch, "finetune", data, *TINY, "--out", run)[0] == 0
    assert folder_kind(run) == "run" and foreign_entry(run, "run") is None  # a real run holds only medsaga's files
    (run / "checkpoint" / "my-notes.txt").write_text("mine")
    before = snapshot(run)
    tripwire(monkeypatch, "medsaga.train.finetune.load_case_stacks")
    code, err = medsaga_in_process(capsys, monkeypatch, "finetune", data, *TINY, "--out", run, "--force")
    one_line_error(code, err, run, "holds checkpoint/my-notes.txt", "not replacing it")
    assert snapshot(run) == before
    # A selection folder is medsaga's, but not a run: finetune does not replace it either.
    selection = tmp_path / "sel"
    assert medsaga_in_process(capsys, monkeypatch, "select", scans, *SELECT, "--no-cache", "--out", selection)[0] == 0
    assert folder_kind(selection) == "selection" and foreign_entry(selection, "selection") is None
    before = snapshot(selection)
    code, err = medsaga_in_process(capsys, monkeypatch, "finetune", data, *TINY, "--out", selection, "--force")
    one_line_error(code, err, selection, "is a medsaga selection folder, not a run folder")
    assert snapshot(selection) == before


def test_a_clean_run_is_replaced_and_deleted_only_after_the_new_config_is_written(tmp_path, data, capsys,
                                                                                  monkeypatch) -> None:
    import medsaga.train.finetune as finetune_module

    run = tmp_path / "run"
    assert medsaga_in_process(capsys, monkeypatch, "finetune", data, *TINY, "--seed", "1", "--out", run)[0] == 0
    old = snapshot(run)
    seen_aside: list[dict[str, bytes]] = []
    write_json = finetune_module._write_json

    def watching(path: Path, document: dict) -> None:
        if path.name == "config.json":  # the new run's first output: the old run must still be whole, aside
            asides = list(tmp_path.glob(".run.medsaga-old-*"))
            seen_aside.extend(snapshot(folder) for folder in asides)
        write_json(path, document)

    monkeypatch.setattr(finetune_module, "_write_json", watching)
    assert medsaga_in_process(capsys, monkeypatch,
                              "finetune", data, *TINY, "--seed", "2", "--out", run, "--force")[0] == 0
    assert seen_aside == [old]
    assert json.loads((run / "config.json").read_text())["options"]["seed"] == 2
    assert folder_kind(run) == "run"
    no_leftovers(tmp_path)


def test_a_failure_after_the_rename_puts_the_old_run_back(tmp_path, data, capsys, monkeypatch) -> None:
    import medsaga.io.atomic as atomic

    run = tmp_path / "run"
    assert medsaga_in_process(capsys, monkeypatch, "finetune", data, *TINY, "--out", run)[0] == 0
    old = snapshot(run)
    fsync = atomic._fsync

    def disk_full(path: Path) -> None:  # the new config.json, written in full, does not reach the disk
        if path.name.endswith("config.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        fsync(path)

    monkeypatch.setattr(atomic, "_fsync", disk_full)
    code, err = medsaga_in_process(capsys, monkeypatch, "finetune", data, *TINY, "--out", run, "--force")
    last_line_error(code, err, run / "config.json", "cannot write", "No space left on device")
    assert snapshot(run) == old  # the old run is back, whole, and the new one is gone
    no_leftovers(tmp_path)


def test_a_failed_write_after_the_rename_is_one_line_and_puts_the_old_selection_back(tmp_path, scans, capsys,
                                                                                     monkeypatch) -> None:
    selection = tmp_path / "sel"
    assert medsaga_in_process(capsys, monkeypatch, "select", scans, *SELECT, "--no-cache", "--out", selection)[0] == 0
    old = snapshot(selection)

    import medsaga.io.atomic as atomic

    fsync = atomic._fsync

    def disk_full(path: Path) -> None:  # the new cohort_map.png, written in full, does not reach the disk
        if path.name.endswith("cohort_map.png"):
            raise OSError(errno.ENOSPC, "No space left on device")
        fsync(path)

    monkeypatch.setattr(atomic, "_fsync", disk_full)
    code, err = medsaga_in_process(capsys, monkeypatch,
                                   "select", scans, *SELECT, "--no-cache", "--out", selection, "--force")
    one_line_error(code, err, selection / "cohort_map.png", "cannot write", "No space left on device")
    assert snapshot(selection) == old
    no_leftovers(tmp_path)


def test_an_input_inside_the_folder_to_replace_is_refused(tmp_path, data, scans, capsys, monkeypatch) -> None:
    run = tmp_path / "cf"
    assert medsaga_in_process(capsys, monkeypatch, "finetune", data, *TINY, "--out", run)[0] == 0
    cases = run / "mycases.txt"
    cases.write_text("case_000\n")
    before = snapshot(run)
    tripwire(monkeypatch, "medsaga.train.finetune.load_case_stacks")
    code, err = medsaga_in_process(capsys, monkeypatch,
                                   "finetune", data, *TINY, "--cases", cases, "--out", run, "--force")
    one_line_error(code, err, run, f"would contain the --cases file {cases.resolve()}")
    assert snapshot(run) == before
    # select: a --cache-dir inside --out, and (the old rule) an --out that contains the scans
    tripwire(monkeypatch, "medsaga.select.run._embedder")
    out = tmp_path / "sel"
    code, err = medsaga_in_process(capsys, monkeypatch,
                                   "select", scans, *SELECT, "--cache-dir", out / "cache", "--out", out)
    one_line_error(code, err, out, "would contain the --cache-dir")
    assert not out.exists()
    code, err = medsaga_in_process(capsys, monkeypatch,
                                   "select", scans, *SELECT, "--no-cache", "--out", tmp_path, "--force")
    one_line_error(code, err, tmp_path, "would contain the input folder")


def test_resume_of_a_run_from_before_the_marker_still_works(tmp_path, data, capsys, monkeypatch) -> None:
    run = tmp_path / "run"
    assert medsaga_in_process(capsys, monkeypatch, "finetune", data, *TINY, "--out", run)[0] == 0
    (run / FOLDER_MARKER).unlink()  # as a run made before the marker existed
    (run / "trained.safetensors").unlink()
    code, err = medsaga_in_process(capsys, monkeypatch, "finetune", "--resume", run)
    assert code == 0, err
    assert (run / "trained.safetensors").is_file()  # resumed (from its last checkpoint) and finished again


# --- §2: every output location proven writable before any long work ----------------------------

def test_finetune_refuses_an_unwritable_out_before_reading_cases(tmp_path, data, capsys, monkeypatch) -> None:
    blocker = tmp_path / "somefile"
    blocker.write_text("a file, not a folder")
    for target in ("medsaga.train.finetune.load_case_stacks", "medsaga.train.finetune._build_model"):
        tripwire(monkeypatch, target)
    code, err = medsaga_in_process(capsys, monkeypatch, "finetune", data, *TINY, "--out", blocker / "run")
    one_line_error(code, err, blocker / "run", "is not a folder")
    code, err = medsaga_in_process(capsys, monkeypatch, "finetune", data, *TINY, "--out", blocker)
    one_line_error(code, err, blocker, "exists and is not a folder")
    assert blocker.read_text() == "a file, not a folder"


@pytest.mark.parametrize("overlay", [False, True])
def test_evaluate_refuses_an_unwritable_out_before_evaluating(tmp_path, capsys, monkeypatch, overlay: bool) -> None:
    image, label = phantom()
    prediction = write_nifti(tmp_path / "pred" / "case.nii.gz", label)
    reference = write_nifti(tmp_path / "gt" / "case.nii.gz", label)
    images = write_nifti(tmp_path / "img" / "case.nii.gz", image)
    blocker = tmp_path / "somefile"
    blocker.write_text("x")
    tripwire(monkeypatch, "medsaga.evaluate.evaluate")
    extra = ("--overlay", "--images", images) if overlay else ()
    code, err = medsaga_in_process(capsys, monkeypatch,
                                   "evaluate", prediction, reference, "--out", blocker / "eval", *extra)
    one_line_error(code, err, blocker / "eval", "is not a folder")
    if overlay:  # OUT is fine, OUT/overlays is a file
        out = tmp_path / "eval"
        out.mkdir()
        (out / "overlays").write_text("x")
        code, err = medsaga_in_process(capsys, monkeypatch, "evaluate", prediction, reference, "--out", out, *extra)
        one_line_error(code, err, out / "overlays", "exists and is not a folder")


def test_select_refuses_an_unwritable_out_or_cache_before_embedding(tmp_path, scans, capsys, monkeypatch) -> None:
    blocker = tmp_path / "somefile"
    blocker.write_text("x")
    tripwire(monkeypatch, "medsaga.select.run._embedder")
    code, err = medsaga_in_process(capsys, monkeypatch,
                                   "select", scans, *SELECT, "--no-cache", "--out", blocker / "sel")
    one_line_error(code, err, blocker / "sel", "is not a folder")
    code, err = medsaga_in_process(capsys, monkeypatch, "select", scans, *SELECT, "--cache-dir", blocker / "cache",
                        "--out", tmp_path / "sel")
    one_line_error(code, err, blocker / "cache", "--cache-dir")
    assert not (tmp_path / "sel").exists()


@pytest.mark.parametrize("failing", ["checkpoint", "trained.safetensors"])
def test_a_write_that_fails_at_the_end_is_one_line_and_leaves_no_partial_file(tmp_path, data, capsys, monkeypatch,
                                                                            failing: str) -> None:
    import safetensors.torch
    from safetensors import SafetensorError

    save_file = safetensors.torch.save_file

    def disk_full(tensors: dict, filename: str, metadata: dict | None = None) -> None:
        name, folder = Path(filename).name, Path(filename).parent.name
        if (failing == "checkpoint" and folder == ".checkpoint-new") or name.endswith(failing):
            Path(filename).write_bytes(b"half a file")
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28) "
                                  f"at path {filename!r}")
        save_file(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    run = tmp_path / "run"
    code, err = medsaga_in_process(capsys, monkeypatch, "finetune", data, *TINY, "--out", run)
    last_line_error(code, err, run / failing, "cannot write", "No space left on device")
    assert not (run / "trained.safetensors").exists() and not (run / "report.json").exists()
    # The checkpoint is whole or absent: written before trained.safetensors, it stays (--resume can finish).
    assert (run / "checkpoint" / "state.safetensors").exists() == (failing == "trained.safetensors")
    assert not [p for p in run.rglob(f"{TEMP_PREFIX}*")]


def test_ensure_writable_folder_creates_or_only_proves(tmp_path: Path) -> None:
    kept = ensure_writable_folder(tmp_path / "a" / "b")
    assert kept.is_dir() and list(kept.iterdir()) == []  # the probe is gone
    ensure_writable_folder(tmp_path / "c" / "d", keep=False)
    assert not (tmp_path / "c").exists()  # proven, and nothing left behind
    blocker = tmp_path / "somefile"
    blocker.write_text("x")
    with pytest.raises(InputError, match="is not a folder"):
        ensure_writable_folder(blocker / "out")
    # predict checks its --out with the same helper, before its model is loaded
    from medsaga.predict.outputs import plan_outputs

    with pytest.raises(InputError, match="somefile is not a folder; --out takes a folder"):
        plan_outputs([], blocker / "predictions")


def test_a_demo_run_with_its_predictions_and_evaluation_is_medsaga_s_alone(tmp_path: Path) -> None:
    """What `make demo` writes inside its run is in the declared list; a stray file anywhere is not."""
    run = tmp_path / "run"
    for name in ("config.json", "report.json", "metrics.jsonl", "trained.safetensors", "method.json", FOLDER_MARKER,
                 "checkpoint/state.json", "checkpoint/state.safetensors", "predictions/phantom_006.nii.gz",
                 "predictions/probabilities/phantom_006.nii.gz", "evaluation/metrics.csv", "evaluation/metrics.json",
                 "evaluation/overlays/phantom_006.png", f"predictions/{TEMP_PREFIX}1234-phantom_007.nii.gz"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text("x")
    assert foreign_entry(run, "run") is None
    (run / "evaluation" / "overlays" / "notes.txt").write_text("mine")
    assert foreign_entry(run, "run") == Path("evaluation/overlays/notes.txt")
    (run / "evaluation" / "overlays" / "notes.txt").unlink()
    (run / "checkpoint" / "extra").mkdir()
    assert foreign_entry(run, "run") == Path("checkpoint/extra")

"""Runs fine-tunings under torchrun for tests/test_distributed.py (one process per rank).

    torchrun --nproc-per-node 2 tests/ddp_worker.py JOBS.json

JOBS.json: a list run in order in one process group, of
``{"options": {FinetuneOptions fields}, "kill_at": step or null}``: a fine-tuning; ``kill_at``: rank
0 kills itself with SIGKILL when the loop reports that step (a crash, as a power cut or an OOM
kill would be); torchrun then stops the other ranks; or
``{"predict": {PredictOptions fields}, "delete": [paths], "outcome": path}``: rank 0 deletes the
files, then every rank predicts; rank 0 writes which rank predicted which case, the skipped and the
failed cases to ``outcome`` (JSON).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medsaga import distributed  # noqa: E402
from medsaga.predict.pipeline import PredictOptions, predict  # noqa: E402
from medsaga.train.finetune import FinetuneOptions, SilentReporter, finetune  # noqa: E402


class _PredictReporter:
    def info(self, message: str) -> None:
        pass

    def warning(self, message: str) -> None:
        pass

    def on_start(self, cases) -> None:
        pass

    def on_slices(self, case, done: int, total: int) -> None:
        pass

    def on_case_done(self, result) -> None:
        pass


def _predict(job: dict) -> None:
    rank = distributed.init_from_environment("cpu")
    if rank.is_main:
        for path in job.get("delete", []):
            Path(path).unlink()
    distributed.barrier()
    fields = dict(job["predict"])
    fields.update(run_dir=Path(fields["run_dir"]), out=Path(fields["out"]),
                  inputs=tuple(Path(path) for path in fields["inputs"]))
    outcome = predict(PredictOptions(**fields), _PredictReporter())
    if rank.is_main:
        Path(job["outcome"]).write_text(json.dumps({
            "results": [[result.case_id, result.rank] for result in outcome.results],
            "skipped": outcome.skipped, "failures": [[f.case_id, f.reason] for f in outcome.failures],
            "world_size": outcome.world_size}))


class _Reporter(SilentReporter):
    def __init__(self, kill_at: int | None) -> None:
        self.kill_at = kill_at

    def on_step(self, step: int, loss: float, lr: float, slices_per_second: float) -> None:
        if self.kill_at is not None and step == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    jobs = json.loads(Path(sys.argv[1]).read_text())
    for job in jobs:
        if "predict" in job:
            _predict(job)
            continue
        options = dict(job["options"])
        options["data_dir"], options["out"] = Path(options["data_dir"]), Path(options["out"])
        options["cases"] = tuple(options.get("cases", ()))
        finetune(FinetuneOptions(**options), _Reporter(job.get("kill_at")))
    distributed.barrier()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""docs/report.png: a screenshot of the evaluation page (``medsaga evaluate ... --out``) for the sample data.

The predictions are the sample phantoms' reference labels with one typical mistake per case (the
same ones the report tests use: :func:`tests.report_helpers.write_sample_predictions`), scored
with ``medsaga evaluate PRED sample_data --out OUT``; headless Chromium (Debian's ``chromium``)
takes the screenshot. Run from the repository root::

    .venv/bin/python scripts/report_screenshot.py            # writes docs/report.png
    .venv/bin/python scripts/report_screenshot.py --keep DIR # also keeps the page in DIR
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.report_helpers import SAMPLE, find_chromium, screenshot, write_sample_predictions  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "report.png", help="the PNG to write")
    parser.add_argument("--size", default="1280x1660", help="browser window, WIDTHxHEIGHT in CSS pixels")
    parser.add_argument("--keep", type=Path, help="copy the evaluation folder (with report.html) here")
    args = parser.parse_args()
    chromium = find_chromium()
    if chromium is None:
        sys.exit("report_screenshot: no chromium on PATH (Debian: apt-get install -y chromium)")
    width, height = (int(n) for n in args.size.lower().split("x"))
    # Under runs/ (git ignores it), named relative to the repository, so the page shows short paths.
    folder = Path("runs") / "report-screenshot"
    shutil.rmtree(ROOT / folder, ignore_errors=True)
    try:
        predictions = write_sample_predictions(ROOT / folder / "predictions")[0].parent.relative_to(ROOT)
        evaluation = folder / "evaluation"
        subprocess.run([sys.executable, "-m", "cli.main", "evaluate", str(predictions), str(SAMPLE.relative_to(ROOT)),
                        "--out", str(evaluation)], check=True, cwd=ROOT)
        evaluation = ROOT / evaluation
        args.out.parent.mkdir(parents=True, exist_ok=True)
        screenshot(chromium, evaluation / "report.html", args.out, (width, height))
        if args.keep is not None:
            shutil.copytree(evaluation, args.keep, dirs_exist_ok=True)
    finally:
        shutil.rmtree(ROOT / folder, ignore_errors=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

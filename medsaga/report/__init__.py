"""One self-contained HTML page per fine-tuning run and per evaluation.

- :mod:`.overlays`: which slice of each plane to show (where prediction and reference disagree
  most) and the picture: prediction filled, reference outlined, Okabe–Ito class colours;
- :mod:`.figures`: the plots (training curves, memory, Dice per case), matplotlib with Agg;
- :mod:`.run_folder`: reading a run folder (config.json, metrics.jsonl, report.json);
- :mod:`.page`: the HTML (every picture inlined, a CSP that forbids any fetch);
- :mod:`.write`: writing ``RUN/report.html`` and ``OUT/report.html`` atomically.

Importing this package is cheap; matplotlib is imported when a plot is drawn.
"""

from medsaga.report.write import (REPORT_NAME, OverlayCollector, dataset_images, report_images,
                                  write_evaluation_report, write_html, write_run_report)

__all__ = ["REPORT_NAME", "OverlayCollector", "dataset_images", "report_images", "write_evaluation_report",
           "write_html", "write_run_report"]

"""DVC stage ``report``: every method beside the published numbers, and the figures.

    python -m stages.report

Reads ``metrics/<method>.json`` (and ``metrics/<method>/``) of every method named in the
``methods`` section of ``params.yaml`` (or only those listed in ``report.methods``), and each
method's ``published`` key; writes ``reports/`` (report.md, report.html, figures/*.png,
au_f1.csv, emotion.csv) and ``metrics/summary.json``.  Library: :mod:`pipeline.reporting`.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.io import atomic_dir, record_stage_time, stage_time_path, start_stage
from pipeline.params import load, method_params, section
from pipeline.reporting.report import write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--metrics", default="metrics")
    parser.add_argument("--reports", default="reports")
    args = parser.parse_args(argv)
    start_stage("report")
    params = load(args.params)
    options = section("report", params) if "report" in params else {}
    methods = list(options.get("methods") or (params.get("methods") or {}))
    published = {m: method_params(params, m).get("published") for m in methods}
    with atomic_dir(args.reports) as tmp:
        write_report(args.metrics, methods, published, tmp, f"{args.metrics}/summary.json")
    record_stage_time("report", stage_time_path("report", args.params))
    return 0


if __name__ == "__main__":
    sys.exit(main())

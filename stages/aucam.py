"""DVC stage ``aucam``: Ruan et al.'s AU-CAM figure (Fig. 6) from a trained mimicking network.

    python -m stages.aucam

Reads the ``aucam`` section of ``params.yaml`` (``method``, ``fold``, ``n_samples``,
``torch_threads``) and the method's section (with ``train``, ``config``, ``data.source``,
``standin.profile``), ``data/index/samples.csv``, the method's feature caches and the fold's
checkpoint ``models/<method>/<fold>.pt``; writes ``metrics/aucam.png`` (per test sample: the grey
magnified apex, On-A, Off-A and the AU-CAM overlay, eyes map over mouth map) and
``metrics/aucam.json`` (method, fold, sample ids, predicted and true classes), atomically.
Library: :func:`pipeline.training.methods_mimicking.render_aucam_figure`.
"""

from __future__ import annotations

import argparse
import logging
import sys

import torch

from pipeline.io import record_stage_time, stage_time_path, start_stage, write_json
from pipeline.params import load, method_params, section
from pipeline.training.data import read_samples
from pipeline.training.methods_mimicking import render_aucam_figure
from pipeline.training.run import data_label


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--samples", default="data/index/samples.csv")
    parser.add_argument("--features", default="data/features")
    parser.add_argument("--models", default="models")
    parser.add_argument("--out", default="metrics/aucam.png")
    parser.add_argument("--info", default="metrics/aucam.json")
    args = parser.parse_args(argv)
    start_stage("aucam")
    log = logging.getLogger("aucam")

    params = load(args.params)
    cfg = section("aucam", params)
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg["torch_threads"]))
    method = str(cfg.get("method", "mimicking"))
    info = render_aucam_figure(
        method, method_params(params, method), read_samples(args.samples), args.features,
        args.models, args.out, fold=cfg.get("fold"), n_samples=int(cfg.get("n_samples", 4)),
        data_label=data_label(params))
    write_json(args.info, info)
    log.info("aucam: %s fold %s, %d samples → %s", method, info["fold"], len(info["samples"]),
             args.out)
    record_stage_time("aucam", stage_time_path("aucam", args.params))
    return 0


if __name__ == "__main__":
    sys.exit(main())

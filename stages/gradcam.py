"""DVC stage ``gradcam``: InfuseNet's Fig. 5, Grad-CAM of FrameFlow, FrameMag and InfuseNet.

    python -m stages.gradcam

Reads the ``gradcam`` section of ``params.yaml`` (``au``, ``fold``, ``n_samples``, ``networks``:
column title → ``{method, layer}``, ``device``) and the sections of the methods it names (with
``train``, ``config``, ``data.source``, ``standin.profile``; ``device``: auto | cpu | cuda,
``torch_threads``), ``data/index/samples.csv``,
``data/features/{flow,magnified,faces}.h5`` and the fold's checkpoints
``models/<method>/<fold>.pt``; writes ``metrics/gradcam.png`` (one row per test sample, the apex
crop and one Grad-CAM overlay per network) and ``metrics/gradcam.json`` (what is drawn: AU, fold,
sample ids, each network's AU probability per sample), atomically.  Library:
:func:`pipeline.training.methods_infusenet.render_gradcam_figure`.
"""

from __future__ import annotations

import argparse
import logging
import sys

import torch

from pipeline.io import record_stage_time, stage_time_path, start_stage, write_json
from pipeline.params import load, section
from pipeline.training.data import read_samples
from pipeline.training.methods_infusenet import gradcam_columns, render_gradcam_figure
from pipeline.training.run import data_label
from pipeline.training.trainer import resolve_device


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--samples", default="data/index/samples.csv")
    parser.add_argument("--features", default="data/features")
    parser.add_argument("--models", default="models")
    parser.add_argument("--out", default="metrics/gradcam.png")
    parser.add_argument("--info", default="metrics/gradcam.json")
    args = parser.parse_args(argv)
    start_stage("gradcam")
    log = logging.getLogger("gradcam")

    params = load(args.params)
    cfg = section("gradcam", params)
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg["torch_threads"]))
    info = render_gradcam_figure(
        gradcam_columns(cfg.get("networks") or {}), params, read_samples(args.samples),
        args.features, args.models, args.out, au=str(cfg.get("au", "AU4")),
        fold=str(cfg.get("fold", "casme2")), n_samples=int(cfg.get("n_samples", 4)),
        data_label=data_label(params), device=str(resolve_device(str(cfg.get("device", "auto")))))
    write_json(args.info, info)
    log.info("gradcam: %s of fold %s for %d samples → %s", info["au"], info["fold"],
             len(info["samples"]), args.out)
    record_stage_time("gradcam", stage_time_path("gradcam", args.params))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""DVC stage ``magnifier``: provide the learned magnifiers and verify them.

Quick (``magnifier.init: shipped``): loads the weights shipped in
``pipeline/magnification/weights/`` (optionally fine-tuned, ``finetune_iterations``).
``init: scratch`` (and ``config: paper``) trains Oh et al.'s network (ECCV 2018; shape-only
or full, ``magnifier.oh.texture_branch``) and ST-MEMM (Wu et al. 2024) on synthetic motion
pairs rendered on the fly from the face photos
(``magnifier.synthetic.faces_dir`` or ``$MER_FACES_DIR``) and procedural textures, or loads
external Oh et al. weights (``magnifier.oh.weights``).  Then measures on held-out pairs with a
known sub-pixel displacement the magnified displacement divided by α·d, PSNR and SSIM, beside
linear Eulerian magnification.  Writes ``models/magnifier/`` (``oh.pt``, ``stmemm.pt``,
``verification.png``) and ``metrics/magnifier.json`` (library: pipeline.magnification).

    python -m stages.magnifier [--params params.yaml]
"""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline.io import record_stage_time, stage_time_path, start_stage
from pipeline.magnification.oh2018 import WeightLayoutError
from pipeline.magnification.train import run_magnifier
from pipeline.params import ParamsError, load, section

log = logging.getLogger("magnifier")


def main(argv: list[str] | None = None) -> int:
    """Run the stage; 0 on success, 1 on bad input or parameters (one clear message)."""
    ap = argparse.ArgumentParser(prog="python -m stages.magnifier",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml", help="parameter file (default: %(default)s)")
    ap.add_argument("--out", default="models/magnifier", help="(default: %(default)s)")
    ap.add_argument("--metrics", default="metrics/magnifier.json", help="(default: %(default)s)")
    args = ap.parse_args(argv)
    start_stage("magnifier")
    try:
        params = load(args.params)
        run_magnifier(section("magnifier", params), config=params.get("config", "quick"),
                      seed=int(params.get("seed", 0)), out_dir=args.out,
                      metrics_path=args.metrics)
    except (ParamsError, WeightLayoutError, FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 1
    record_stage_time("magnifier", stage_time_path("magnifier", args.params))
    return 0


if __name__ == "__main__":
    sys.exit(main())

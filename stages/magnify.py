"""DVC stage ``magnify``: magnified latents and decoded magnified apex frames → ``magnified.h5``.

Reads the crops at the flow size (``flow.size``) from ``data/features/faces.h5`` and the trained
magnifiers from ``models/magnifier/``; writes ``data/features/magnified.h5`` (InfuseNet's latents
for (onset, apex) and (onset, pseudo-apex), Oh et al.'s and ST-MEMM's magnified apex frames at
the factors of ``magnify.frames``; layout in docs/internals.md) and the figure
``data/features/magnified.png`` (library: pipeline.magnification.magnify).

    python -m stages.magnify [--params params.yaml]
"""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline.features.cache import CacheError
from pipeline.io import record_stage_time, stage_time_path, start_stage
from pipeline.magnification.magnify import run_magnify
from pipeline.params import ParamsError, load, section

log = logging.getLogger("magnify")


def main(argv: list[str] | None = None) -> int:
    """Run the stage; 0 on success, 1 on bad input or parameters (one clear message)."""
    ap = argparse.ArgumentParser(prog="python -m stages.magnify",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml", help="parameter file (default: %(default)s)")
    ap.add_argument("--faces", default="data/features/faces.h5", help="(default: %(default)s)")
    ap.add_argument("--models", default="models/magnifier", help="(default: %(default)s)")
    ap.add_argument("--out", default="data/features/magnified.h5", help="(default: %(default)s)")
    ap.add_argument("--figure", default="data/features/magnified.png",
                    help="(default: %(default)s)")
    args = ap.parse_args(argv)
    start_stage("magnify")
    try:
        params = load(args.params)
        run_magnify(section("magnify", params), size=int(section("flow", params)["size"]),
                    seed=int(params.get("seed", 0)), faces_path=args.faces,
                    models_dir=args.models, out_path=args.out, figure_path=args.figure)
    except (ParamsError, CacheError, FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 1
    record_stage_time("magnify", stage_time_path("magnify", args.params))
    return 0


if __name__ == "__main__":
    sys.exit(main())

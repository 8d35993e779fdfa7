"""DVC stage ``standin``: build the stand-in benchmark (STANDIN.md) into ``standin.out``.

Reads the ``standin`` section of ``params.yaml`` (profile, seed, faces_dir, landmarker_model,
n_jobs, out) and builds into a temporary folder beside ``out`` that replaces ``out`` only once the
build has finished, so an interrupted run never leaves a half-written benchmark behind.

    python -m stages.standin [--params params.yaml]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from pipeline.io import atomic_dir, start_stage
from pipeline.params import load, section
from pipeline.standin import build_standin

log = logging.getLogger("standin")


def main(argv: list[str] | None = None) -> dict:
    """Run the stage; returns the build report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="parameter file (default: %(default)s)")
    args = parser.parse_args(argv)
    start_stage("standin")
    params = load(args.params)
    p = section("standin", params)
    seed = p.get("seed")
    seed = int(params.get("seed", 0) if seed is None else seed)
    out = Path(p.get("out") or "data/standin")
    start = time.perf_counter()
    with atomic_dir(out) as tmp:
        report = build_standin(tmp, profile=p.get("profile", "quick"), seed=seed,
                               faces_dir=p.get("faces_dir"),
                               landmarker_model=p.get("landmarker_model"),
                               n_jobs=int(p.get("n_jobs", -1)))
    rows = sum(d["rows"] for d in report["databases"].values())
    log.info("stand-in (%s, seed %d): %d rows in %d databases written to %s in %.0f s",
             report["profile"], seed, rows, len(report["databases"]), out,
             time.perf_counter() - start)
    return report


if __name__ == "__main__":
    main()

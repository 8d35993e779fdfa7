"""DVC stage ``standin``: build the stand-in benchmark (STANDIN.md) into ``standin.out``.

Reads the ``standin`` section of ``params.yaml`` (profile, seed, faces_dir, landmarker_model,
n_jobs, out, amplitude_scale) and builds into a temporary folder beside ``out`` that replaces
``out`` only once the build has finished, so an interrupted run never leaves a half-written
benchmark behind.  ``amplitude_scale`` (ours, a diagnostic; 1 is the specified benchmark)
multiplies the micro-expression apex amplitudes (:func:`pipeline.standin.profiles.get_profile`).

With ``data.source: real`` nothing is built: ``out`` holds only ``NOT_BUILT.md`` (the stages
downstream depend on ``data/standin`` in ``dvc.yaml``, so the real-data path must not need the
face photos).  Missing photos or landmarker bundle end in one line saying how to point at local
copies (``standin.faces_dir`` / ``$MER_FACES_DIR``, ``standin.landmarker_model`` /
``$MER_LANDMARKER_MODEL``).

    python -m stages.standin [--params params.yaml]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from pipeline.assets import AssetError
from pipeline.io import atomic_dir, record_stage_time, stage_time_path, start_stage
from pipeline.params import load, section
from pipeline.standin import build_standin
from pipeline.standin.faces import StandinError
from pipeline.standin.profiles import get_profile

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
    if (params.get("data") or {}).get("source") == "real":
        with atomic_dir(out) as tmp:
            (tmp / "NOT_BUILT.md").write_text(
                "data.source is real in params.yaml: the stand-in benchmark is not built.\n",
                encoding="utf-8")
        log.info("data.source is real: stand-in not built (%s/NOT_BUILT.md)", out)
        record_stage_time("standin", stage_time_path("standin", args.params))
        return {"profile": None, "databases": {}}
    start = time.perf_counter()
    with atomic_dir(out) as tmp:
        profile = get_profile(p.get("profile", "quick"), float(p.get("amplitude_scale", 1.0)))
        report = build_standin(tmp, profile=profile, seed=seed,
                               faces_dir=p.get("faces_dir"),
                               landmarker_model=p.get("landmarker_model"),
                               n_jobs=int(p.get("n_jobs", -1)))
    rows = sum(d["rows"] for d in report["databases"].values())
    lo, hi = profile.databases["casme2"].amplitude_iod
    log.info("stand-in (%s, seed %d, apex amplitudes %g–%g %% IOD): %d rows in %d databases "
             "written to %s in %.0f s", report["profile"], seed, lo, hi, rows,
             len(report["databases"]), out, time.perf_counter() - start)
    record_stage_time("standin", stage_time_path("standin", args.params))
    return report


HINT = ("offline? point standin.faces_dir (or $MER_FACES_DIR) at a local copy of the face "
        "photos and standin.landmarker_model (or $MER_LANDMARKER_MODEL) at face_landmarker.task; "
        "with your own databases set data.source: real")


if __name__ == "__main__":
    try:
        main()
    except (StandinError, AssetError) as exc:
        log.error("%s; %s", exc, HINT)
        raise SystemExit(1) from None

"""Quick and full stand-in profiles in face units: the realism statistics of CASME II under each.

Issue #30 asks that the quick and full profiles agree in face units (each CASME II median of the
six realism statistics within 1.25x between them).  This script builds the stand-in's CASME II
alone under each profile for several seeds (``build_standin(..., databases=["casme2"])``), runs
every build through the ``index``, ``faces`` and ``flow`` functions with the quick
configuration's parameters (``params.yaml``: 112-px crops, TV-L1 onset -> apex) and measures the
caches with :func:`pipeline.realism.measure_caches` (definitions: ``pipeline/realism.py``).

It prints, as markdown tables (STAND-IN figures):

- per profile, pooled over the seeds and per seed: the median of each of the six statistics, and
  the build's ground truth of the same samples -- the rigid head shift onset -> (true) apex in %
  of IOD (``head_motion.shift_onset_apex_iod``: the largest x/y displacement of nose tip, chin and
  forehead) and the onset -> apex and onset -> annotated apex times in seconds;
- the quick / full ratio of every pooled median, and per seed;
- with ``--plan-seeds N``, the head drift onset -> apex of N label plans per profile, without
  rendering (many seeds cheaply: the ground truth's systematic part).

Each build runs in ``<out>/<profile>_n<samples>_s<seed>/``; its per-sample values are kept there
(``samples.csv``) and reused by a later run with the same arguments, so an interrupted run
resumes.  The frames are deleted once measured unless ``--keep-frames``.  ``--out`` should lie
outside the repository (default: ``$TMPDIR/mer_bench_profiles``).

Exempt from ``tests/test_benchmarks.py`` (which runs every other benchmark at its smallest size):
it builds and measures full-profile stand-ins (640x480 frames at 200 fps), tens of minutes on 2
cores.  The pieces it calls are tested where they live (tests/test_standin.py,
tests/test_realism.py).

    python benchmarks/bench_profiles.py [--seeds 0 1 2] [--full-samples 120] [--out DIR]
                                        [--jobs N] [--keep-frames] [--csv all.csv]
                                        [--profiles quick full] [--plan-seeds 20]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.realism import STATISTICS, measure_caches, summarise  # noqa: E402

KEY = "casme2"
#: Short column names, in the order of STATISTICS, then the ground-truth columns.
SHORT = ("head %IOD", "expr p95 %IOD", "expr p99 %IOD", "raw grey", "resid/raw",
         "resid/raw moving")
TRUTH = (("gt_head_iod", "GT head %IOD"), ("gt_onset_apex_s", "GT on->apex s"),
         ("gt_onset_annotated_s", "GT on->ann. apex s"))
COLUMNS = tuple(k for k, _, _ in STATISTICS) + tuple(k for k, _ in TRUTH)
LABELS = SHORT + tuple(v for _, v in TRUTH)
#: Columns in seconds (printed with three decimals in the medians; ratios with two).
SECONDS = ("gt_onset_apex_s", "gt_onset_annotated_s")
#: Agreement asked for by issue #30 between the profiles' medians.
TOLERANCE = 1.25


def profile_for(name: str, n_samples: int | None):
    """The named profile with ``n_samples`` CASME II samples (``None``: the profile's own)."""
    from pipeline.standin.profiles import get_profile

    prof = get_profile(name)
    if n_samples is None:
        return prof
    dbp = replace(prof.databases[KEY], n_samples=int(n_samples))
    return replace(prof, databases={**prof.databases, KEY: dbp})


def _truth(standin: Path) -> pd.DataFrame:
    """Per-sample ground truth of a CASME II build, keyed by the index's ``sample_id``."""
    gt = json.loads((standin / "ground_truth" / f"{KEY}.json").read_text())["samples"]
    rows = []
    for s in gt:
        if s["expression_type"] != "micro":
            continue
        ann = s["annotated_apex"]
        rows.append({"sample_id": f"{KEY}/{s['subject_folder']}/{s['material_unique']}",
                     "gt_head_iod": s["head_motion"]["shift_onset_apex_iod"],
                     "gt_onset_apex_s": (s["apex"] - s["onset"]) / s["fps"],
                     "gt_onset_annotated_s": (np.nan if ann is None
                                              else (ann - s["onset"]) / s["fps"])})
    return pd.DataFrame(rows)


def measure_build(run: Path, profile: str, n_samples: int | None, seed: int, jobs: int,
                  keep_frames: bool) -> pd.DataFrame:
    """Build, index, crop, flow and measure one CASME II stand-in; per-sample values.

    Reuses ``run/samples.csv`` when a previous run wrote it; otherwise ``run`` is emptied first.

    Raises
    ------
    RuntimeError
        If a sample of the build is missing from the measurement (failed in faces or flow).
    """
    done = run / "samples.csv"
    if done.is_file():
        return pd.read_csv(done)
    from pipeline import params as prm
    from pipeline.databases.index import IndexOptions, build_index, write_index
    from pipeline.features.faces import load_index, run_faces
    from pipeline.features.flow import run_flow
    from pipeline.io import atomic_path
    from pipeline.standin.build import build_standin

    if run.exists():
        shutil.rmtree(run)
    run.mkdir(parents=True)
    p = prm.load(ROOT / "params.yaml")
    parallel = {"backend": "local", "n_jobs": jobs, "scheduler": None}
    standin = run / "standin"
    build_standin(standin, profile_for(profile, n_samples), seed=seed, n_jobs=jobs,
                  databases=[KEY], contact_sheets=False)
    result = build_index({KEY: standin / KEY},
                         IndexOptions.from_params(prm.section("index", p)))
    write_index(result, run / "index")
    run_faces(load_index(run / "index" / "samples.csv"), prm.section("faces", p),
              run / "faces.h5", run / "faces_failures.csv", parallel,
              source=run / "index" / "samples.csv")
    run_flow(run / "faces.h5", prm.section("flow", p), run / "flow.h5", run / "flow_failures.csv",
             parallel)
    stats = measure_caches(run / "faces.h5", run / "flow.h5", run / "index" / "samples.csv")
    truth = _truth(standin)
    lost = sorted(set(truth["sample_id"]) - set(stats["sample_id"]))
    if lost:
        raise RuntimeError(f"{run}: {len(lost)} samples of the build not measured (see "
                           f"faces_failures.csv, flow_failures.csv), first {lost[0]}")
    out = stats.merge(truth, on="sample_id", how="left", validate="one_to_one")
    out.insert(0, "seed", seed)
    out.insert(0, "profile", profile)
    with atomic_path(done, suffix=".csv") as tmp:
        out.to_csv(tmp, index=False)
    if not keep_frames:
        shutil.rmtree(standin)
    return out


def plan_head_drift(profile: str, n_samples: int | None, seeds: list[int]) -> tuple[float, float]:
    """Median head drift onset -> true apex and onset -> apex time over label plans alone.

    No rendering: each clip's head trajectory is drawn as the build draws it (the first numbers of
    the clip's generator) and evaluated at the onset and apex frames; the drift is that of the
    crop centre (0.5 IOD below the eye midpoint: translation plus in-plane rotation), % of IOD.

    Returns
    -------
    tuple of float
        Median drift (% IOD), median onset -> apex time (s), pooled over the seeds.
    """
    import math

    from pipeline.standin.build import plan_only
    from pipeline.standin.render import HeadMotion

    drift, times = [], []
    for seed in seeds:
        db = plan_only(profile_for(profile, n_samples), seed, databases=[KEY]).databases[KEY]
        fps = db.profile.fps
        for s in db.samples:
            clip, iod = db.clips[s.clip], db.subjects[s.subject].iod_px
            head = HeadMotion.draw(np.random.default_rng(clip.seed), clip.head["translation_px"],
                                   clip.head["rotation_deg"], clip.head["jitter_px"],
                                   time_scale=clip.head["time_scale"])
            (x0, y0, r0), (x1, y1, r1) = head.at(np.array([s.onset - clip.first,
                                                           s.apex - clip.first]) / fps)
            dx = (x1 - x0) - math.radians(r1 - r0) * 0.5 * iod
            drift.append(100 * math.hypot(dx, y1 - y0) / iod)
            times.append((s.apex - s.onset) / fps)
    return float(np.median(drift)), float(np.median(times))


def medians(df: pd.DataFrame) -> dict[str, float]:
    """Median of each statistic and ground-truth column (NaN-free values; see ``summarise``)."""
    return {k: summarise(df[k])[0] for k in COLUMNS}


def table(rows: list[tuple[str, dict[str, float]]], ratios: bool = False) -> list[str]:
    """Markdown lines: one row per ``(label, {column: value})`` (``ratios``: all two decimals)."""
    fmt = "{:.2f}"
    lines = ["| CASME II (STAND-IN) | " + " | ".join(LABELS) + " |",
             "|---|" + "---|" * len(LABELS)]
    for label, vals in rows:
        cells = [(fmt if ratios or k not in SECONDS else "{:.3f}").format(vals[k]) if np.isfinite(vals[k])
                 else "–" for k in COLUMNS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def report(data: pd.DataFrame, quick: str | None, full: str | None) -> str:
    """The printed tables: medians per profile (pooled, per seed) and, with both profiles,
    the quick / full ratios."""
    out = ["Quick and full stand-in profiles in face units, CASME II alone (STAND-IN; "
           "definitions: pipeline/realism.py; GT = the build's ground truth)", ""]
    rows, ratios = [], []
    pooled = {}
    for tag in (t for t in (quick, full) if t is not None):
        sub = data[data["run"] == tag]
        pooled[tag] = medians(sub)
        n_same = int(sub["apex_is_onset"].sum())
        rows.append((f"{tag}, pooled ({len(sub)}; {n_same} apex = onset)", pooled[tag]))
        for seed, s in sub.groupby("seed"):
            rows.append((f"{tag}, seed {seed} ({len(s)})", medians(s)))
    out += table(rows)
    if quick is None or full is None:
        return "\n".join(out)
    out += ["", f"quick / full (issue #30: each within {TOLERANCE}x):"]
    ratio = {k: pooled[quick][k] / pooled[full][k] for k in COLUMNS}
    ratios.append(("pooled", ratio))
    for seed in sorted(set(data["seed"])):
        q = data[(data["run"] == quick) & (data["seed"] == seed)]
        f = data[(data["run"] == full) & (data["seed"] == seed)]
        if len(q) and len(f):
            mq, mf = medians(q), medians(f)
            ratios.append((f"seed {seed}", {k: mq[k] / mf[k] for k in COLUMNS}))
    out += table(ratios, ratios=True)
    outside = [lab for k, lab in zip(COLUMNS[:len(SHORT)], SHORT, strict=True)
               if not 1 / TOLERANCE <= ratio[k] <= TOLERANCE]
    out.append("pooled medians outside 1.25x: " + (", ".join(outside) if outside else "none"))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick-samples", type=int, default=None,
                        help="CASME II samples of the quick builds (default: the profile's 120)")
    parser.add_argument("--full-samples", type=int, default=120,
                        help="CASME II samples of the full builds (the profile's own: 256)")
    parser.add_argument("--out", type=Path,
                        default=Path(tempfile.gettempdir()) / "mer_bench_profiles",
                        help="scratch folder, outside the repository")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes per build")
    parser.add_argument("--keep-frames", action="store_true",
                        help="keep each build's frames (deleted once measured by default)")
    parser.add_argument("--csv", type=Path, help="also write every per-sample value here")
    parser.add_argument("--profiles", nargs="+", choices=("quick", "full"),
                        default=["quick", "full"],
                        help="build and measure only these (the ratios need both)")
    parser.add_argument("--plan-seeds", type=int, default=0,
                        help="also the head drift of this many label plans (seeds 0..N-1) per "
                             "profile, without rendering (plan_head_drift)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    os.environ.setdefault("TQDM_DISABLE", "1")
    if args.out.resolve().is_relative_to(ROOT):
        sys.exit(f"bench_profiles: --out {args.out} lies inside the repository; use a scratch "
                 "folder outside it")
    frames = []
    sizes = {p: n for p, n in (("quick", args.quick_samples), ("full", args.full_samples))
             if p in args.profiles}
    tags = {profile: f"{profile}_n{n or 'default'}" for profile, n in sizes.items()}
    for seed in args.seeds:              # seed by seed: an interrupted run has whole pairs
        for profile, n in sizes.items():
            run = args.out / f"{tags[profile]}_s{seed}"
            print(f"# {run.name}", file=sys.stderr, flush=True)
            df = measure_build(run, profile, n, seed, args.jobs, args.keep_frames)
            frames.append(df.assign(run=tags[profile]))
    data = pd.concat(frames, ignore_index=True)
    data = data[data["database"] == KEY]
    if args.csv:
        from pipeline.io import atomic_path

        with atomic_path(args.csv, suffix=".csv") as tmp:
            data.to_csv(tmp, index=False)
    print(report(data, tags.get("quick"), tags.get("full")))
    if args.plan_seeds:
        seeds = list(range(args.plan_seeds))
        drift = {p: plan_head_drift(p, n, seeds) for p, n in sizes.items()}
        print(f"\nlabel plans only, seeds 0..{args.plan_seeds - 1}: head drift of the crop centre "
              "onset -> true apex, % IOD (median), onset -> apex time, s (median)")
        for p, (d, t) in drift.items():
            print(f"{tags[p]:<18} {d:.3f} % IOD  {t:.4f} s")
        if len(drift) == 2:
            print(f"quick / full       {drift['quick'][0] / drift['full'][0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

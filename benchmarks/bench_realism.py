"""Realism of a run's micro-expressions beside real CASME II (issue #30) — needs a run's caches.

Reads the caches of a run that has built at least the ``flow`` stage (``dvc repro flow``: standin,
index, faces, flow) and prints the six statistics of issue #30's table (definitions:
``pipeline/realism.py``, STANDIN.md "Real reference"):

- for the CASME II samples: median (p10–p90) per sample, beside the real CASME II reference
  (constants quoted from STANDIN.md / issue #30) and the ratio stand-in median / reference;
- per database (and all together): the medians (p10–p90).

Inputs, relative to ``--root`` (default: the current directory): ``data/features/faces.h5``
(``crop{S}/onset``, ``crop{S}/apex``, ``crop_box``), ``data/features/flow.h5`` (``onset_apex``),
``data/index/samples.csv`` (the database of each sample).  When the frames are the stand-in's
(``ground_truth/build.json`` beside the indexed frame folders) the table says STAND-IN with its
profile and seed.  Missing caches: one line on stderr and exit status 1.

Exempt from ``tests/test_benchmarks.py`` (which runs every other benchmark at its smallest size):
it needs a run's caches; ``tests/test_realism.py`` runs it on a tiny cache the test writes.

    python benchmarks/bench_realism.py [--root DIR] [--csv per_sample.csv]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.realism import (  # noqa: E402
    REAL_CASME2,
    REAL_CASME2_MOVING_OVER_STILL,
    REFERENCE_SOURCE,
    STATISTICS,
    measure_caches,
    summarise,
)

FACES = Path("data/features/faces.h5")
FLOW = Path("data/features/flow.h5")
INDEX = Path("data/index/samples.csv")
#: Databases in the order of the issue's table; others follow alphabetically.
ORDER = ("casme", "casme2", "samm", "smic", "casme3a", "mmew", "fourd")
#: Short column names for the per-database table, in the order of STATISTICS.
SHORT = ("head %IOD", "expr p95 %IOD", "expr p99 %IOD", "raw grey", "resid/raw",
         "resid/raw moving")
REFERENCE_SIZE = 112


def data_label(index: pd.DataFrame, root: Path) -> str:
    """``STAND-IN (profile …, seed …)`` when the indexed frames are a stand-in's, else a note.

    The stand-in writes ``<out>/ground_truth/build.json`` beside its database roots; it is looked
    for above the first sample's ``frame_dir`` (relative to ``root`` when not absolute).
    """
    if len(index):
        frame_dir = Path(index["frame_dir"].iloc[0])
        frame_dir = frame_dir if frame_dir.is_absolute() else root / frame_dir
        for parent in frame_dir.parents:
            build = parent / "ground_truth" / "build.json"
            if build.is_file():
                info = json.loads(build.read_text())
                return (f"STAND-IN (profile {info.get('profile')}, seed {info.get('seed')}; "
                        f"{build.relative_to(root) if build.is_relative_to(root) else build})")
    return "as indexed (no stand-in ground truth beside the frames: real data?)"


def _cell(values: pd.Series) -> str:
    med, p10, p90, n = summarise(values)
    return "–" if n == 0 else f"{med:.2f} ({p10:.2f}–{p90:.2f})"


def casme2_table(stats: pd.DataFrame, label: str) -> list[str]:
    """Lines of the CASME II table: stand-in median (p10–p90), reference, ratio per statistic."""
    sub = stats[stats["database"] == "casme2"]
    name = "STAND-IN casme2" if label.startswith("STAND-IN") else "casme2"
    lines = [f"| statistic (per sample) | unit | {name}: median (p10–p90) | real CASME II "
             "reference: median (p10–p90) | ratio |", "|---|---|---|---|---|"]
    for key, text, unit in STATISTICS:
        ref, (r10, r90) = REAL_CASME2[key]
        med, _, _, n = summarise(sub[key])
        ratio = f"{med / ref:.2f}" if n else "–"
        text = text.replace("|", "\\|")  # a markdown cell
        lines.append(f"| {text} | {unit} | {_cell(sub[key])} | {ref:.2f} ({r10:.2f}–{r90:.2f}) "
                     f"| {ratio} |")
    return lines


def database_table(stats: pd.DataFrame) -> list[str]:
    """Lines of the per-database table: one row per database and one for all, medians (p10–p90)."""
    found = list(dict.fromkeys(stats["database"]))
    dbs = [d for d in ORDER if d in found] + sorted(d for d in found if d not in ORDER)
    lines = ["| database (samples) | " + " | ".join(SHORT) + " |",
             "|---|" + "---|" * len(SHORT)]
    for db, sub in [(d, stats[stats["database"] == d]) for d in dbs] + [("all", stats)]:
        cells = [_cell(sub[key]) for key, _, _ in STATISTICS]
        lines.append(f"| {db} ({len(sub)}) | " + " | ".join(cells) + " |")
    return lines


def report(stats: pd.DataFrame, label: str, sources: str) -> str:
    """The whole printed report (markdown tables and notes)."""
    sub = stats[stats["database"] == "casme2"]
    size = int(stats["size"].iloc[0]) if len(stats) else REFERENCE_SIZE
    out = ["Realism of the onset -> apex change (issue #30; definitions: "
           "pipeline/realism.py, STANDIN.md)",
           f"data: {label}", f"caches: {sources} ({size}-px crops)"]
    if size != REFERENCE_SIZE:
        out.append(f"note: the reference was measured on {REFERENCE_SIZE}-px crops, these are "
                   f"{size}-px; the % IOD rows compare, the grey-level rows less so")
    out.append("")
    if len(sub):
        n_same = int(sub["apex_is_onset"].sum())
        out.append(f"CASME II: {len(sub)} samples; {n_same} with the apex frame = the onset frame "
                   "(all statistics 0, the two shares undefined and left out)")
        out += casme2_table(stats, label)
        moving = sub["moving_over_still"].to_numpy(dtype=float)
        med, p10, p90, n = summarise(moving)
        if n:
            res_ratio = _median_ratio(sub)
            out.append(f"supplementary: mean residual where the face moves most / in the still "
                       f"half: {med:.2f} ({p10:.2f}–{p90:.2f}) per sample, {res_ratio:.2f} as the "
                       f"ratio of the sample medians; real CASME II "
                       f"{REAL_CASME2_MOVING_OVER_STILL:.1f} (issue #30, aggregation not stated)")
        out.append(f"reference: {REFERENCE_SOURCE} — 9 samples of one subject, 112-px crops; "
                   "ratio = median here / reference median")
    else:
        out.append("no casme2 samples in these caches: no comparison with the reference")
    out += ["", "Per database, median (p10–p90) per sample; units as above:"]
    out += database_table(stats)
    n_same = int(stats["apex_is_onset"].sum())
    out.append(f"{len(stats)} samples, {n_same} with the apex frame = the onset frame")
    return "\n".join(out)


def _median_ratio(sub: pd.DataFrame) -> float:
    """Median over samples of the residual where the face moves most / that of the still half.

    (Columns ``residual_moving``, ``residual_still``; samples with either undefined left out.)
    """
    moving = sub["residual_moving"].to_numpy(dtype=float)
    still = sub["residual_still"].to_numpy(dtype=float)
    ok = np.isfinite(moving) & np.isfinite(still)
    return float(np.median(moving[ok]) / np.median(still[ok])) if ok.any() else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path("."),
                        help="project folder of the run (default: the current directory)")
    parser.add_argument("--csv", type=Path, help="also write the per-sample statistics here")
    args = parser.parse_args(argv)
    root = args.root
    for rel in (FACES, FLOW, INDEX):
        if not (root / rel).is_file():
            sys.exit(f"bench_realism: {root / rel} not found: this benchmark needs a run's "
                     "caches (run `dvc repro flow` there first)")
    from pipeline.databases.index import load_samples
    from pipeline.features.cache import CacheError
    from pipeline.io import atomic_path

    try:
        stats = measure_caches(root / FACES, root / FLOW, root / INDEX)
        label = data_label(load_samples(root / INDEX), root)
    except (CacheError, KeyError, ValueError) as exc:
        sys.exit(f"bench_realism: {exc.args[0] if exc.args else exc}")
    if args.csv:
        with atomic_path(args.csv, suffix=".csv") as tmp:
            stats.to_csv(tmp, index=False)
    print(report(stats, label, f"{root / FACES}, {root / FLOW}; index {root / INDEX}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

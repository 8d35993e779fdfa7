"""Throughput of the feature stages on one set of frames (a benchmark, not a test).

Builds small samples from the face photos (``$MER_FACES_DIR``; pipeline.features.synthetic), then
prints, in one run and on the same frames:

- ``faces``: samples and cropped frames per second (N workers), cold (starting the workers and
  their detectors) and warm (the pool reused);
- raw OpenCV TV-L1 pairs per second with N worker processes (joblib, one OpenCV thread each),
  on exactly the grey crops and distinct pairs the flow stage computes;
- the ``flow`` stage's pairs per second with N workers (reading faces.h5, TV-L1, strain, writing
  flow.h5), and its ratio to the raw figure (target: at least 90 %);
- ``magnify``: samples per second with the shipped magnifier weights (what the quick run's
  ``magnifier`` stage verifies and passes on): latents and the decoded magnified apex frames of
  ``magnify.frames``;
- ``patches``: samples per second, landmarking the apex crops and the magnified apex frames of
  ``patches.magnified`` (read from the ``magnified.h5`` just written), as the stage does;
- each HDF5 reader's samples per second: :class:`FeatureCache` reading every dataset of a sample in
  random order, and a torch DataLoader over :class:`CacheDataset` (batch 8).

    python benchmarks/bench_features.py --samples 16 --workers 2

Needs only the face photos and the MediaPipe bundle (``$MER_FACES_DIR``,
``$MER_LANDMARKER_MODEL``), no run's caches; tests/test_benchmarks.py runs it at its smallest
size (``--samples 2 --workers 1 --repeats 1``) and checks that it prints every row.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.features import flow as flow_mod  # noqa: E402
from pipeline.features.cache import CacheDataset, FeatureCache  # noqa: E402
from pipeline.features.faces import load_index, plan_frames, run_faces, sample_frames  # noqa: E402
from pipeline.features.flow import PAIRS, run_flow  # noqa: E402
from pipeline.features.patches import run_patches  # noqa: E402
from pipeline.features.synthetic import write_samples  # noqa: E402
from pipeline.io import setup_logging  # noqa: E402
from pipeline.magnification.magnify import run_magnify  # noqa: E402
from pipeline.magnification.train import SHIPPED_DIR  # noqa: E402
from pipeline.params import load, section  # noqa: E402

log = logging.getLogger("bench_features")


_TVL1: dict = {}


def _raw_pair(pair: tuple[np.ndarray, np.ndarray], tvl1: dict) -> np.ndarray:
    import cv2

    key = tuple(sorted(tvl1.items()))
    if key not in _TVL1:
        cv2.setNumThreads(1)
        _TVL1[key] = cv2.optflow.DualTVL1OpticalFlow_create(**tvl1)
    return _TVL1[key].calc(pair[0], pair[1], None)


def _warm(_: int) -> int:
    import cv2  # noqa: F401 - load OpenCV in the worker

    return os.getpid()


def raw_tvl1(pairs: list[tuple[np.ndarray, np.ndarray]], tvl1: dict, workers: int) -> float:
    """Pairs per second of bare TV-L1 calls over a warm joblib process pool."""
    from joblib import Parallel, delayed

    par = Parallel(n_jobs=workers, backend="loky", batch_size=1)
    par(delayed(_warm)(i) for i in range(4 * workers))
    t = time.perf_counter()
    par(delayed(_raw_pair)(p, tvl1) for p in pairs)
    return len(pairs) / (time.perf_counter() - t)


def flow_pairs(faces_path: Path, size: int,
               pairs: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The distinct grey crop pairs the flow stage computes (per sample), from faces.h5."""
    cache = FeatureCache(faces_path, "faces")
    out = []
    for i in range(len(cache)):
        frames = {n: flow_mod.grey(cache.read(f"crop{size}/{n}", i))
                  for n in {f for p in pairs for f in PAIRS[p]}}
        seen = set()
        for p in pairs:
            a, b = frames[PAIRS[p][0]], frames[PAIRS[p][1]]
            for x, y in ((a, c) for c in b) if b.ndim == 3 else [(a, b)]:
                key = (x.tobytes(), y.tobytes())
                if key not in seen:
                    seen.add(key)
                    out.append((x, y))
    return out


def reader_rates(path: Path, schema: str, dataset: str, repeats: int = 2) -> tuple[float, float]:
    """Samples per second: every dataset of a sample (random order); DataLoader over one dataset."""
    import torch

    # One intra-op thread: on a busy machine torch's OpenMP pool makes the collate's torch.stack
    # (not the cache) dominate the figure.
    torch.set_num_threads(1)
    cache = FeatureCache(path, schema)
    rows = list(range(len(cache))) * repeats
    random.Random(0).shuffle(rows)
    t = time.perf_counter()
    for r in rows:
        for name in cache.datasets:
            cache.read(name, r)
    all_rate = len(rows) / (time.perf_counter() - t)
    ds = CacheDataset({"x": (cache, dataset)}, cache.sample_ids * repeats)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    t = time.perf_counter()
    n = sum(len(b["x"]) for b in loader)
    return all_rate, n / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=16, help="samples (one face photo each)")
    ap.add_argument("--frames", type=int, default=12, help="frames per sample")
    ap.add_argument("--frame-size", type=int, default=320, help="frame side (px)")
    ap.add_argument("--workers", type=int, default=2, help="N worker processes")
    ap.add_argument("--size", type=int, default=None, help="flow crop side (default: flow.size)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved raw/stage flow runs")
    ap.add_argument("--dask", action="store_true", help="also run the flow stage on a LocalCluster")
    args = ap.parse_args(argv)
    setup_logging(logging.WARNING)
    params = load(ROOT / "params.yaml")
    faces_p, flow_p, patches_p = (section(s, params) for s in ("faces", "flow", "patches"))
    size = args.size or int(flow_p["size"])
    flow_p["size"] = size
    faces_p["sizes"] = sorted({size, int(patches_p["size"]), *faces_p["sizes"]})
    photos_dir = Path(os.environ.get("MER_FACES_DIR") or ROOT.parent / "shared" / "faces") / "neutral_front"
    photos = sorted(photos_dir.glob("*.jpg"))[: args.samples]
    if len(photos) < args.samples:
        raise SystemExit(f"{photos_dir}: {len(photos)} photos, {args.samples} needed")
    local = {"backend": "local", "n_jobs": args.workers, "scheduler": None}
    cores = os.cpu_count()
    with tempfile.TemporaryDirectory(prefix="bench_features.") as tmp:
        tmp = Path(tmp)
        index = write_samples(tmp / "data", photos, size=args.frame_size, n_frames=args.frames,
                              ext="jpg")
        index = load_index(tmp / "data" / "samples.csv")
        n_needed = sum(
            len(plan_frames(sf.numbers, sf.apex, faces_p["pseudo_apex_window"],
                            faces_p["sequence_length"]).needed())
            for sf in (sample_frames(r) for r in index.to_dict(orient="records")))
        print(f"# {len(index)} samples x {args.frames} frames of {args.frame_size} px, "
              f"N = {args.workers} workers, {cores} cores; crops {faces_p['sizes']}, "
              f"flow {size} px")

        for run in ("cold", "warm"):  # warm: the process pool and its detectors are reused
            t = time.perf_counter()
            run_faces(index, faces_p, tmp / "faces.h5", tmp / "faces_failures.csv", local)
            dt = time.perf_counter() - t
            print(f"faces ({run})   {len(index) / dt:8.2f} samples/s  {n_needed / dt:8.1f} "
                  f"frames/s (frames cropped; cold includes starting workers and detectors)")

        pairs = flow_pairs(tmp / "faces.h5", size, list(flow_p["pairs"]))
        tvl1 = dict(flow_p["tvl1"])
        raws, stages = [], []
        for _ in range(args.repeats):  # interleaved: a shared machine's load drifts
            raws.append(raw_tvl1(pairs, tvl1, args.workers))
            t = time.perf_counter()
            run_flow(tmp / "faces.h5", flow_p, tmp / "flow.h5", tmp / "flow_failures.csv", local)
            stages.append(len(pairs) / (time.perf_counter() - t))
        raw, stage = max(raws), max(stages)
        print(f"raw TV-L1      {raw:8.2f} pairs/s    best of {args.repeats} "
              f"({', '.join(f'{r:.2f}' for r in raws)}; {len(pairs)} distinct pairs, "
              f"{args.workers} processes)")
        print(f"flow stage     {stage:8.2f} pairs/s    best of {args.repeats} "
              f"({', '.join(f'{r:.2f}' for r in stages)}) = {100 * stage / raw:.0f} % of raw "
              f"(target >= 90 %)")
        if args.dask:
            t = time.perf_counter()
            run_flow(tmp / "faces.h5", flow_p, tmp / "flow_dask.h5", tmp / "ff_dask.csv",
                     {"backend": "dask", "n_jobs": args.workers, "scheduler": None})
            dstage = len(pairs) / (time.perf_counter() - t)
            print(f"flow on dask   {dstage:8.2f} pairs/s    = {100 * dstage / raw:.0f} % of raw "
                  f"(LocalCluster started inside)")

        magnify_p = section("magnify", params)
        t = time.perf_counter()
        run_magnify(magnify_p, size=size, seed=int(params.get("seed", 0)),
                    faces_path=tmp / "faces.h5", models_dir=SHIPPED_DIR,
                    out_path=tmp / "magnified.h5", figure_path=tmp / "magnified.png",
                    progress=False)
        frames = "; ".join(f"{k} α {', '.join(map(str, v))}"
                           for k, v in magnify_p["frames"].items())
        print(f"magnify        {len(index) / (time.perf_counter() - t):8.2f} samples/s  "
              f"(shipped weights; latents and frames: {frames}; includes the figure)")

        t = time.perf_counter()
        run_patches(tmp / "faces.h5", patches_p, tmp / "patches.h5", tmp / "patches_failures.csv",
                    local, magnified_path=tmp / "magnified.h5")
        n_sets = 1 + sum(len(v) for v in (patches_p.get("magnified") or {}).values())
        print(f"patches        {len(index) / (time.perf_counter() - t):8.2f} samples/s  "
              f"({n_sets} landmarked frames per sample: the apex and patches.magnified)")

        for name, dataset in (("faces", f"crop{size}/apex"), ("flow", "onset_apex"),
                              ("patches", "regions/mouth")):
            path = tmp / f"{name}.h5"
            every, loader = reader_rates(path, name, dataset)
            n_sets = len(FeatureCache(path, name).datasets)
            print(f"read {name + '.h5':12s} {every:8.1f} samples/s (all {n_sets} "
                  f"datasets)  {loader:8.1f} samples/s (DataLoader, {dataset}); "
                  f"{path.stat().st_size / len(index) / 1024:.0f} KiB/sample")


if __name__ == "__main__":
    main()

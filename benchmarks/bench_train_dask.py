"""Wall time of one training stage, local backend against Dask tasks (a benchmark, not a test).

Builds the test suite's synthetic ``samples.csv`` + ``flow.h5`` (``tests/training_synth.py``) in
a scratch folder, then runs ``python -m stages.train`` for an SSSNet CD6ME method (6 folds ×
``--seeds`` seeds + one final model per seed) twice: ``execution.backend: local`` and
``execution.backend: dask`` on a stage-started LocalCluster of ``--workers`` processes, both at
``--threads`` torch threads per fold.  Prints both wall times and whether every output file is
the same (dvclive's timestamps, ``run.json``'s seconds and the ``stage.json`` wall-time record
excepted).  On a 2-core machine the
two backends use the same cores, so expect no gain there: the point of the Dask backend is a
cluster (docs/cluster.md).

    python benchmarks/bench_train_dask.py --seeds 2 --workers 2 --threads 1 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import yaml  # noqa: E402


def _files(root: Path) -> dict[str, bytes]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if not p.is_file() or rel.endswith(("run.json", "stage.json")):  # wall-time records
            continue
        data = p.read_bytes()
        if p.suffix == ".tsv":  # dvclive: drop the timestamp column
            lines = [ln.split("\t") for ln in data.decode().splitlines()]
            col = lines[0].index("timestamp") if "timestamp" in lines[0] else None
            data = "\n".join("\t".join(c for i, c in enumerate(ln) if i != col)
                             for ln in lines).encode()
        out[rel] = data
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--size", type=int, default=32)
    args = ap.parse_args()

    import training_synth

    with tempfile.TemporaryDirectory(prefix="bench-dask-") as tmp:
        tmp = Path(tmp)
        csv, feats = training_synth.build(tmp / "synth", n_subjects=4, per_subject=6,
                                          size=args.size, seed=0)
        method = {"family": "sssnet", "task": "au", "protocol": "cd6me",
                  "input_size": args.size, "epochs": args.epochs, "batch_size": 16,
                  "seeds": list(range(args.seeds)), "final_model": True}
        times = {}
        for backend in ("local", "dask"):
            run = tmp / backend
            run.mkdir()
            params = {"config": "quick", "seed": 0, "data": {"source": "standin"},
                      "standin": {"profile": "tiny"}, "train": {"device": "cpu"},
                      "execution": {"backend": backend, "workers": args.workers,
                                    "torch_threads": args.threads},
                      "methods": {"m": method}}
            (run / "params.yaml").write_text(yaml.safe_dump(params))
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "stages.train", "m", "--samples", str(csv),
                            "--features", str(feats)], cwd=run, check=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)},
                           stderr=subprocess.DEVNULL)
            times[backend] = time.perf_counter() - start
        same = _files(tmp / "local" / "metrics") == _files(tmp / "dask" / "metrics")
        f1 = json.loads((tmp / "local" / "metrics" / "m.json").read_text())["f1_mean"]
    load = os.getloadavg()[0]
    print(f"{6 * args.seeds} folds + {args.seeds} final models, {args.epochs} epochs, "
          f"{args.size} px, torch threads {args.threads}; load average {load:.1f} on "
          f"{os.cpu_count()} cores")
    print(f"local: {times['local']:.1f} s   dask ({args.workers} LocalCluster workers): "
          f"{times['dask']:.1f} s   metrics files identical: {same}   F1 mean {f1:.3f} "
          "(synthetic data)")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())

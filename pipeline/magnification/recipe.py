"""The long training run that produces the shipped magnifier weights, with a learning curve.

    python -m pipeline.magnification.recipe oh --out runs/magnifier [--params params.yaml]
        [--iterations N] [--every 500] [--threads 1]

Trains one magnifier (``oh`` or ``stmemm``) from random initialisation with the recipe of the
``magnifier`` section of params.yaml (``synthetic`` and the kind's block: ``iterations``,
``batch_size``, ``lr``, ``lr_schedule``, ``warmup``; the project ``seed``, + 1 for ST-MEMM, as
in the ``magnifier`` stage) and, every ``--every`` iterations, runs the project's verification
(:func:`pipeline.magnification.verify.verify_magnifier` on the same held-out pairs as the stage)
and writes into ``--out``:

* ``{kind}_curve.json`` — one row per check: iterations, seconds, and per α the median
  measured/expected ratio, its IQR, PSNR and SSIM (the learning curve of amplification against
  steps);
* ``{kind}_last.pt`` — the latest checkpoint (a :func:`~pipeline.magnification.train.save_magnifier`
  file, loadable by the stage and by ``magnify``), ``{kind}_step{N}.pt`` every check.

Checkpoints are written atomically, so whatever time allows can be shipped: copy
``{kind}_last.pt`` to ``pipeline/magnification/weights/{kind}.pt`` and ``{kind}_curve.json``
beside it.  Runs on the CPU in the background of a working session (one torch thread per
process).

    python -m pipeline.magnification.recipe plot --out runs/magnifier

draws the curves found in ``--out`` (median measured/expected against iterations, one line per
α and magnifier, the target band shaded) into ``learning_curve.png``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("magnifier")


def plot_curves(run_dir: str | Path, out_png: str | Path,
                target: tuple[float, float] = (0.8, 1.2)) -> list[str]:
    """Plot the ``*_curve.json`` of ``run_dir``: median measured/expected vs iterations.

    Returns
    -------
    list of str
        The magnifiers plotted.

    Raises
    ------
    FileNotFoundError
        If ``run_dir`` holds no curve.
    """
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = sorted(Path(run_dir).glob("*_curve.json"))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no *_curve.json (run the recipe first)")
    fig, axes = plt.subplots(1, len(files), figsize=(4.2 * len(files), 3.2), squeeze=False,
                             sharey=True)
    kinds = []
    for ax, f in zip(axes[0], files, strict=True):
        data = json.loads(f.read_text())
        rows = data["curve"]
        factors = sorted({k for r in rows for k in r if k.startswith("alpha")},
                         key=lambda k: float(k[5:]))
        for fac in factors:
            ax.plot([r["iterations"] for r in rows], [r[fac]["ratio_median"] for r in rows],
                    marker="o", ms=3, label=f"α = {fac[5:]}")
        ax.axhspan(*target, color="green", alpha=0.12, label="target")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_title(data["kind"], fontsize=9)
        ax.set_xlabel("iterations (batch 4)")
        ax.grid(alpha=0.3)
        kinds.append(data["kind"])
    axes[0][0].set_ylabel("median measured / expected")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return kinds


def main(argv: list[str] | None = None) -> int:
    """Run the long training of one magnifier (or ``plot`` the curves); 0 on success."""
    import torch

    from pipeline.io import atomic_path, setup_logging, write_json
    from pipeline.magnification.synthetic import SyntheticConfig, SyntheticPairs
    from pipeline.magnification.train import (
        arch_of,
        build_magnifier,
        load_magnifier,
        resolve_device,
        save_magnifier,
        train_magnifier,
        verification_set,
        verify_methods,
    )
    from pipeline.params import load, section

    ap = argparse.ArgumentParser(prog="python -m pipeline.magnification.recipe",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("kind", choices=("oh", "stmemm", "plot"))
    ap.add_argument("--out", required=True, help="run folder (curve and checkpoints)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--iterations", type=int, default=None, help="override the kind's iterations")
    ap.add_argument("--every", type=int, default=500, help="verification/checkpoint period")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--init", default=None,
                    help="continue from this checkpoint (a save_magnifier file of the same "
                         "architecture) instead of random initialisation")
    ap.add_argument("--lr", type=float, default=None, help="override the kind's lr")
    ap.add_argument("--data-seed", type=int, default=None,
                    help="seed of the synthetic pairs (default: the project seed, + 1 for "
                         "ST-MEMM); give another one when continuing with --init")
    args = ap.parse_args(argv)
    setup_logging()
    if args.kind == "plot":
        kinds = plot_curves(args.out, Path(args.out) / "learning_curve.png")
        log.info("learning curves of %s written to %s", ", ".join(kinds),
                 Path(args.out) / "learning_curve.png")
        return 0
    torch.set_num_threads(args.threads)
    import cv2

    cv2.setNumThreads(1)
    params = load(args.params)
    cfg = section("magnifier", params)
    seed = int(params.get("seed", 0))
    k = ("oh", "stmemm").index(args.kind)
    mc = dict(cfg[args.kind])
    if args.iterations is not None:
        mc["iterations"] = args.iterations
    if args.lr is not None:
        mc["lr"] = args.lr
    arch = arch_of(args.kind, mc)
    device = resolve_device(str(cfg.get("device", "auto")))
    torch.manual_seed(seed + k)
    model = build_magnifier(args.kind, arch)
    before: dict[str, Any] = {}
    if args.init:
        model, meta = load_magnifier(args.init, device)
        if meta["kind"] != args.kind or meta["arch"] != arch:
            raise SystemExit(f"{args.init}: a {meta['kind']} network of architecture "
                             f"{meta['arch']}, not {args.kind} {arch}")
        before = {"init_from": str(args.init), "init_train": meta.get("train", {})}
    bank, vpairs, _ = verification_set(cfg, seed)
    syn = dict(cfg.get("synthetic", {}))
    full = args.kind == "oh" and bool(getattr(model, "texture_branch", False))
    data_seed = seed + k if args.data_seed is None else args.data_seed
    pairs = SyntheticPairs(bank, SyntheticConfig.from_mapping(syn, color_perturb=full), data_seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    curve: list[dict[str, Any]] = []
    start = time.time()
    recipe = {"synthetic": syn, "seed": seed + k, "data_seed": data_seed, **before,
              **{key: mc[key] for key in mc if key not in arch}}

    def check(done: int, net: torch.nn.Module) -> None:
        t0 = time.time()
        res = verify_methods({args.kind: net}, vpairs, cfg["verify"], device)[args.kind]
        row: dict[str, Any] = {"iterations": done, "seconds": round(time.time() - start, 1)}
        for key, val in res.items():
            if key.startswith("alpha") and isinstance(val, dict):
                row[key] = {m: round(float(val[m]), 4) for m in
                            ("ratio_median", "ratio_iqr", "psnr", "ssim")}
        curve.append(row)
        info = {**recipe, "iterations_done": done, "seconds": row["seconds"]}
        for name in (f"{args.kind}_step{done}.pt", f"{args.kind}_last.pt"):
            with atomic_path(out / name, suffix=".pt") as tmp:
                save_magnifier(tmp, args.kind, net, arch, info)
        write_json(out / f"{args.kind}_curve.json", {"kind": args.kind, "arch": arch,
                                                     "recipe": recipe, "curve": curve})
        log.info("%s at %d iterations (%.0f s): ratio %s (verification %.0f s)", args.kind, done,
                 row["seconds"], " / ".join(f"{v['ratio_median']:.3f}" for key, v in row.items()
                                            if key.startswith("alpha")), time.time() - t0)

    info = train_magnifier(args.kind, model, pairs, mc, device, seed + k, progress=False,
                           callback=check, callback_every=args.every)
    log.info("%s: done, %d iterations in %.0f s, loss %.4f → %.4f", args.kind, info["iterations"],
             info["seconds"], info["loss_first"] or np.nan, info["loss_last"] or np.nan)
    return 0


if __name__ == "__main__":
    sys.exit(main())

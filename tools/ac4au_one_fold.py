"""AC4AU on one CD6ME fold at several input sizes and MobileFaceNet widths (issue #31 item 3).

Trains ``methods.ac4au`` of ``params.yaml`` (the default budget's keys, then the overrides below)
through the real runner (:func:`pipeline.training.run.run_method`) with the CD6ME folds restricted
to one held-out database, so that the fold's training set is the complete leave-one-database-out
one; prints one line per configuration: input side, width, F1 and mean AU ROC AUC of that fold
(its ``metrics/<fold>.json``) and the wall-clock seconds.  A measurement script, run by hand::

    python tools/ac4au_one_fold.py --fold casme2 --epochs 10 --sizes 32 48 112 --widths 0.25 \
        --features data/features --samples data/index/samples.csv

``--time-steps N`` instead times N training steps (forward, loss, backward, Adam) of one batch
of random sequences per configuration, without data: milliseconds per step and the seconds an
epoch of the fold's training set would take at that rate (for sizes whose full run does not fit
in the time at hand).

Nothing is written outside ``--out`` (a temporary folder by default).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

from pipeline.params import load, method_params
from pipeline.training import run as runmod
from pipeline.training.data import read_samples


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fold", default="casme2", help="held-out database of the one CD6ME fold")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 48, 112])
    ap.add_argument("--widths", type=float, nargs="+", default=[0.25])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help="model key override, e.g. gamma_warmup_epochs=3 (repeatable)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--samples", default="data/index/samples.csv")
    ap.add_argument("--features", default="data/features")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="output folder (default: a temporary one)")
    ap.add_argument("--time-steps", type=int, default=0,
                    help="time this many training steps per configuration instead (no data)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    base = method_params(load(args.params), "ac4au")
    if args.time_steps:
        return time_steps(base, args)
    samples = read_samples(args.samples)
    folds = runmod.cd6me_folds
    runmod.cd6me_folds = lambda table: [f for f in folds(table) if f.name == args.fold]
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        for size in args.sizes:
            for width in args.widths:
                params = json.loads(json.dumps(base))
                params.update(epochs=args.epochs, torch_threads=args.threads,
                              save_checkpoints=False, seeds=None)
                params["model"].update(input_size=size, width_mult=width, **overrides)
                tag = f"s{size}_w{width:g}"
                paths = runmod.RunPaths(out / tag / "models", out / tag / "metrics",
                                        out / tag / "ac4au.json")
                t0 = time.time()
                runmod.run_method("ac4au", params, samples, args.features, paths, "standin-quick",
                                  seed=args.seed)
                fold = json.loads((paths.metrics / "folds" / f"{args.fold}.json").read_text())
                print(f"input {size} px, width {width:g}: F1 {fold['f1_mean']:.3f}, "
                      f"AUC {fold['auc_mean']:.3f}, {time.time() - t0:.0f} s "
                      f"(fold {args.fold}, {fold['n_train']} training samples, "
                      f"{args.epochs} epochs)", flush=True)
    return 0


def time_steps(base: dict, args: argparse.Namespace, n_train: int = 336) -> int:
    """Time ``args.time_steps`` training steps per size and width (module docstring)."""
    import numpy as np
    import torch

    from pipeline.models.ac4au import build_ac4au
    from pipeline.models.ac4au_losses import build_ac4au_criterion
    from pipeline.training.methods_ac4au import AC4AUWithCriterion, ac4au_model_config
    from pipeline.training.trainer import make_optimizer

    torch.set_num_threads(args.threads)
    batch = int(base.get("batch_size", 16))
    for size in args.sizes:
        for width in args.widths:
            params = json.loads(json.dumps(base))
            params["model"].update(input_size=size, width_mult=width)
            cfg = ac4au_model_config("ac4au", params)
            torch.manual_seed(args.seed)
            model = AC4AUWithCriterion(build_ac4au(cfg), build_ac4au_criterion(
                cfg, np.full(12, 0.2), 40 if cfg["use_frd"] else None))
            model.train()
            opt = make_optimizer(model, params["optimizer"])
            x = torch.rand(batch, int(cfg["sequence_length"]), 3, size, size)
            y = (torch.rand(batch, 12) < 0.2).float()
            subjects = torch.randint(0, 40, (batch,))
            times = []
            for _ in range(args.time_steps + 1):            # the first step is a warm-up
                t0 = time.perf_counter()
                loss = model.loss_terms(model(x), y, subjects).total
                opt.zero_grad()
                loss.backward()
                opt.step()
                times.append(time.perf_counter() - t0)
            ms = 1000 * float(np.median(times[1:]))
            steps = -(-n_train // batch)
            print(f"input {size} px, width {width:g}: {ms:.0f} ms per step of {batch} sequences, "
                  f"{ms * steps / 1000:.0f} s per epoch of {n_train} training samples "
                  f"({sum(p.numel() for p in model.net.parameters()) / 1e6:.2f} M parameters)",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

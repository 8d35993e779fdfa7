"""Time of one training step of the quick CD6ME networks (a benchmark, not a test).

For each ResNet network of the quick configuration (``params.yaml``: input size, ``widths`` /
``model.cnn_widths``) prints the milliseconds of one training step on a random batch (forward,
BCE backward, Adam step) at the quick widths and at torchvision's 64/128/256/512, and of the
Adam step alone of the 64-512 network: fused (``make_optimizer``) against torch's per-tensor loop.
These steps are most of the quick ``dvc repro``'s wall time (issue #12).

    python benchmarks/bench_training_step.py --batch 32 --steps 5

Random batches, no run's caches; tests/test_benchmarks.py runs it at its smallest size
(``--batch 2 --steps 1``: batch norm needs two samples) and checks that it prints every row.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.params import load, section  # noqa: E402
from pipeline.training.protocols import CD6ME_AUS, Fold  # noqa: E402
from pipeline.training.registry import FoldContext, build_method  # noqa: E402
from pipeline.training.trainer import make_optimizer  # noqa: E402


def _network(method: str, params: dict, widths: object) -> torch.nn.Module:
    """The network ``train@<method>`` builds (the method registry), at ``widths``."""
    params = copy.deepcopy(params)
    params["pretrained"] = False  # the step's time does not depend on the start (nor on a file)
    if params["family"] == "resnet_flow":
        params["widths"] = widths
    else:
        params.setdefault("model", {})["cnn_widths"] = widths
    fold = Fold("bench", "none", "cd6me", np.zeros(0, np.int64), np.zeros(0, np.int64))
    ctx = FoldContext(method=method, task=params["task"], fold=fold, n_outputs=12,
                      class_names=tuple(CD6ME_AUS), train_targets=np.zeros((0, 12)),
                      train_subjects=(), seed=0, params=params, device=torch.device("cpu"))
    return build_method(method, params).build_model(ctx)


def _inputs(net: torch.nn.Module, size: int, batch: int) -> list[torch.Tensor]:
    shapes = getattr(net, "input_shapes", None)
    if shapes is None:
        return [torch.randn(batch, 3, size, size)]
    return [torch.randn(batch, *shapes[name]) for name in net.input_names]


def _ms_per_step(net: torch.nn.Module, x: list[torch.Tensor], steps: int,
                 fused: bool = True) -> tuple[float, float]:
    """(whole step, optimiser step alone), milliseconds."""
    if fused:
        opt = make_optimizer(net, {"name": "adam", "lr": 1e-3})
    else:
        opt = torch.optim.Adam(net.parameters(), lr=1e-3, foreach=False)
    y = (torch.rand(x[0].shape[0], 12) > 0.8).float()
    total = step = 0.0
    for i in range(steps + 2):  # two warm-up steps
        t0 = time.perf_counter()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(*x), y)
        opt.zero_grad()
        loss.backward()
        t1 = time.perf_counter()
        opt.step()
        t2 = time.perf_counter()
        if i >= 2:
            total += t2 - t0
            step += t2 - t1
    return 1000 * total / steps, 1000 * step / steps


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    methods = section("methods", load(args.params))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    print(f"{'method':<18}{'px':>4}  {'quick widths':>22}  {'64-512':>8}  "
          f"{'Adam fused':>10}  {'Adam loop':>9}")
    for method in ("resnet18_flow", "resnet34_flow", "resnet18_mag", "late_fusion", "infusenet",
                   "infusenet_image", "resnet18_flow_loso"):
        p = methods[method]
        widths = p.get("widths") or (p.get("model") or {}).get("cnn_widths")
        size = int(p["input_size"])
        quick = _network(method, p, widths)
        x = _inputs(quick, size, args.batch)
        q_ms, _ = _ms_per_step(quick, x, args.steps)
        wide = _network(method, p, None)
        w_ms, wide_fused_ms = _ms_per_step(wide, x, args.steps)
        _, loop_ms = _ms_per_step(wide, x, args.steps, fused=False)
        label = "x".join(str(w) for w in widths) if widths else "torchvision"
        print(f"{method:<18}{size:>4}  {q_ms:>7.0f} ms {label:>11}  {w_ms:>5.0f} ms  "
              f"{wide_fused_ms:>7.1f} ms  {loop_ms:>6.1f} ms")
    print("(Adam columns: the optimiser step of the 64-512 network; ms per training step)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

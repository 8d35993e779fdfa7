"""Training, saving and loading the learned magnifiers (Oh et al. 2018; ST-MEMM, Wu et al. 2024).

Both are trained on the synthetic pairs of :mod:`pipeline.magnification.synthetic` with Adam
(β = 0.9, 0.999) and an L1 loss on the magnified frame:

* Oh et al. (full network, Sec. 3.1–3.2): L = L1(Ŷ, Y') + λ_t·L1(V_A, V_C) + λ_s·L1(M_B, M_C)
  with inputs (A, B), B and Y' colour-perturbed alike, C = B without the perturbation, V the
  texture and M the shape representation (paper λ = 0.1; the card's "texture(C) = texture(A),
  shape(C) = shape(B)").  Paper: lr 1e-4, batch 4, 384 px.
* Oh et al. shape-only and ST-MEMM: no texture representation, hence no colour perturbation
  and no regulariser: L = L1(Ŷ, Y) with inputs (A, C).  ST-MEMM paper: lr 1e-5, batch 4.

A weight file (:data:`WEIGHT_FILES`) holds ``{"kind", "arch", "state_dict", "train"}``
(``torch.save``; read back with ``weights_only=True``).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pipeline.magnification.oh2018 import OhMagNet, from_model_range, to_model_range
from pipeline.magnification.stmemm import STMEMM
from pipeline.magnification.synthetic import SyntheticPairs

log = logging.getLogger("magnifier")

__all__ = [
    "KINDS",
    "arch_of",
    "WEIGHT_FILES",
    "build_magnifier",
    "load_magnifier",
    "magnify_uint8",
    "resolve_device",
    "run_magnifier",
    "save_magnifier",
    "train_magnifier",
]

#: The magnifiers and their weight files in ``models/magnifier/``.
KINDS = ("oh", "stmemm")
WEIGHT_FILES = {"oh": "oh.pt", "stmemm": "stmemm.pt"}

_OH_ARCH = ("texture_branch", "channels", "n_enc_resblk", "n_shape_resblk", "n_texture_resblk",
            "n_man_resblk", "n_dec_resblk", "g_kernel")
_ST_ARCH = ("dim", "encoder_depths", "decoder_depths", "num_heads", "window_size", "mlp_ratio")


def resolve_device(device: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else CPU; otherwise the named device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def arch_of(kind: str, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor arguments of magnifier ``kind`` found in its params section ``cfg``."""
    keys = {"oh": _OH_ARCH, "stmemm": _ST_ARCH}[kind]
    arch = {k: cfg[k] for k in keys if k in cfg}
    for k in ("encoder_depths", "decoder_depths"):
        if k in arch:
            arch[k] = [int(v) for v in arch[k]]
    return arch


def build_magnifier(kind: str, arch: Mapping[str, Any] | None = None) -> nn.Module:
    """A fresh :class:`OhMagNet` (``kind="oh"``) or :class:`STMEMM` (``"stmemm"``).

    Raises
    ------
    ValueError
        On an unknown kind or constructor argument.
    """
    arch = dict(arch or {})
    if kind == "oh":
        cls: type[nn.Module] = OhMagNet
    elif kind == "stmemm":
        cls = STMEMM
    else:
        raise ValueError(f"unknown magnifier {kind!r}; known: {KINDS}")
    try:
        return cls(**arch)
    except TypeError as exc:
        raise ValueError(f"magnifier.{kind}: bad architecture arguments {arch} ({exc})") from exc


def _batch_tensors(batch: Mapping[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    out = {k: to_model_range(batch[k], device) for k in ("a", "b", "c", "y")}
    out["alpha"] = torch.as_tensor(batch["alpha"], dtype=torch.float32, device=device)
    return out


def _loss(kind: str, model: nn.Module, t: Mapping[str, torch.Tensor],
          cfg: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
    l1 = nn.functional.l1_loss
    if kind == "oh" and model.texture_branch:
        tex_a, shape_a = model.encode(t["a"])
        tex_b, shape_b = model.encode(t["b"])
        tex_c, shape_c = model.encode(t["c"])
        _, shape_mag = model.manipulator(shape_a, shape_b, t["alpha"])
        out = model.decoder(tex_b, shape_mag)
        rec = l1(out, t["y"])
        tex = l1(tex_a, tex_c)
        shp = l1(shape_b, shape_c)
        loss = (rec + float(cfg.get("texture_loss_weight", 0.1)) * tex
                + float(cfg.get("shape_loss_weight", 0.1)) * shp)
        return loss, {"l1": rec.item(), "texture": tex.item(), "shape": shp.item()}
    out = model(t["a"], t["c"], t["alpha"])
    rec = l1(out, t["y"])
    return rec, {"l1": rec.item()}


def train_magnifier(kind: str, model: nn.Module, pairs: SyntheticPairs, cfg: Mapping[str, Any],
                    device: torch.device, seed: int, progress: bool = True) -> dict[str, Any]:
    """Train ``model`` in place on ``pairs`` with Adam and return a summary.

    Parameters
    ----------
    kind : {"oh", "stmemm"}
    model : nn.Module
        From :func:`build_magnifier`.
    pairs : SyntheticPairs
        Must have ``color_perturb`` true exactly for the full Oh network.
    cfg : mapping
        ``iterations``, ``batch_size``, ``lr``, optional ``lr_schedule`` (``constant`` |
        ``cosine``), ``texture_loss_weight``, ``shape_loss_weight``, ``grad_clip``.
    device : torch.device
    seed : int
        Seeds torch (initialisation is the caller's; this seeds nothing else: the data are a
        function of ``pairs.seed`` and the iteration).
    progress : bool
        Show a tqdm bar.

    Returns
    -------
    dict
        ``iterations``, ``batch_size``, ``lr``, ``seconds``, ``loss_first``/``loss_last``
        (mean total loss over the first/last 10 % of iterations) and the last components.

    Raises
    ------
    ValueError
        If the data's colour perturbation does not fit the network.
    """
    full = kind == "oh" and getattr(model, "texture_branch", False)
    if pairs.cfg.color_perturb != full:
        raise ValueError(f"{kind}: colour perturbation must be {'on' if full else 'off'} for this "
                         "network (the texture/shape losses need it, the others must not see it)")
    torch.manual_seed(seed)
    iterations = int(cfg["iterations"])
    batch_size = int(cfg["batch_size"])
    lr = float(cfg["lr"])
    schedule = cfg.get("lr_schedule", "constant")
    clip = cfg.get("grad_clip")
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999))
    if schedule == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda it: 0.5 * (1 + math.cos(math.pi * min(it, iterations) / iterations)))
    elif schedule == "constant":
        sched = None
    else:
        raise ValueError(f"magnifier.{kind}.lr_schedule must be constant or cosine, got {schedule!r}")
    losses: list[float] = []
    parts: dict[str, float] = {}
    start = time.time()
    bar = tqdm(range(iterations), desc=f"train {kind}", disable=not progress, mininterval=2.0)
    for it in bar:
        batch = pairs.batch(it * batch_size, batch_size)
        t = _batch_tensors(batch, device)
        loss, parts = _loss(kind, model, t, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            nn.utils.clip_grad_norm_(model.parameters(), float(clip))
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(loss.item())
        if it % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
    model.eval()
    k = max(1, iterations // 10)
    return {"iterations": iterations, "batch_size": batch_size, "lr": lr, "lr_schedule": schedule,
            "crop": pairs.cfg.size, "seconds": round(time.time() - start, 1),
            "loss_first": float(np.mean(losses[:k])) if losses else None,
            "loss_last": float(np.mean(losses[-k:])) if losses else None,
            "last_components": parts}


def save_magnifier(path: str | os.PathLike, kind: str, model: nn.Module, arch: Mapping[str, Any],
                   train_info: Mapping[str, Any]) -> None:
    """Write ``{"kind", "arch", "state_dict", "train"}`` to ``path`` (``torch.save``)."""
    torch.save({"kind": kind, "arch": dict(arch),
                "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "train": dict(train_info)}, Path(path))


def load_magnifier(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Read a weight file written by :func:`save_magnifier`.

    Returns
    -------
    (nn.Module, dict)
        The network in eval mode on ``device``, and the file's ``kind``, ``arch``, ``train``.

    Raises
    ------
    FileNotFoundError
        If the file is missing (run ``dvc repro magnifier``).
    ValueError
        If it is not a magnifier weight file or its weights do not fit its architecture.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: magnifier weights not found (run `dvc repro magnifier`)")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or not {"kind", "arch", "state_dict"} <= set(obj):
        raise ValueError(f"{path}: not a magnifier weight file (expected keys kind, arch, "
                         f"state_dict; got {sorted(obj) if isinstance(obj, dict) else type(obj)})")
    model = build_magnifier(obj["kind"], obj["arch"])
    try:
        model.load_state_dict(obj["state_dict"], strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit the stored architecture ({exc})") from exc
    model.to(device).eval()
    return model, {k: obj[k] for k in ("kind", "arch", "train") if k in obj}


@torch.no_grad()
def magnify_uint8(model: nn.Module, frame_a: np.ndarray, frame_b: np.ndarray,
                  alpha: float | np.ndarray, device: torch.device | str = "cpu") -> np.ndarray:
    """Magnify uint8 RGB frames with a network: (N, H, W, 3) × 2 → (N, H, W, 3) uint8.

    ``alpha`` is one factor or one per pair (N,).  Frames are mapped to [−1, 1] and back.
    """
    a = to_model_range(frame_a, device)
    b = to_model_range(frame_b, device)
    al = torch.as_tensor(np.broadcast_to(np.asarray(alpha, np.float32), (a.shape[0],)).copy(),
                         device=a.device)
    return from_model_range(model(a, b, al))


def _eulerian_fn(lambda_c: float, levels: int):
    from pipeline.magnification.eulerian import eulerian_magnify

    def run(a: np.ndarray, b: np.ndarray, alpha: float) -> np.ndarray:
        return np.stack([eulerian_magnify(x, y, alpha, lambda_c, levels) for x, y in zip(a, b, strict=True)])

    return run


def run_magnifier(cfg: Mapping[str, Any], *, config: str, seed: int,
                  out_dir: str | os.PathLike, metrics_path: str | os.PathLike,
                  progress: bool = True) -> dict[str, Any]:
    """The ``magnifier`` stage: train (or load) both magnifiers, verify them, write the outs.

    Parameters
    ----------
    cfg : mapping
        The resolved ``magnifier`` section of params.yaml (``device``, ``torch_threads``,
        ``synthetic``, ``oh``, ``stmemm``, ``verify``).
    config : {"quick", "paper"}
        Recorded in the metrics.
    seed : int
        The project seed: network initialisation, training data (``seed`` for Oh et al.,
        ``seed + 1`` for ST-MEMM) and verification pairs.
    out_dir : path
        ``models/magnifier``: ``oh.pt``, ``stmemm.pt``, ``verification.png`` (replaced
        atomically).
    metrics_path : path
        ``metrics/magnifier.json``.

    Returns
    -------
    dict
        The metrics written.

    Raises
    ------
    FileNotFoundError
        No face photos while ``synthetic.photo_share > 0``, or a missing external weight file.
    WeightLayoutError
        External Oh et al. weights of another layout.
    """
    from pipeline.assets import sha256_of
    from pipeline.io import atomic_dir, write_json
    from pipeline.magnification.oh2018 import load_oh_weights
    from pipeline.magnification.synthetic import SyntheticConfig, TextureBank, verification_pairs
    from pipeline.magnification.verify import plot_verification, psnr, verify_magnifier

    device = resolve_device(str(cfg.get("device", "auto")))
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg["torch_threads"]))
    syn = dict(cfg.get("synthetic", {}))
    photo_share = float(syn.get("photo_share", 0.5))
    faces_dir = syn.get("faces_dir")
    every = int(syn.get("verify_every", 5))
    photo_size = int(syn.get("photo_size", 512))
    bank = TextureBank(faces_dir, "train", photo_size, every, require_photos=photo_share > 0)
    vbank = TextureBank(faces_dir, "verify", photo_size, every, require_photos=photo_share > 0)
    log.info("synthetic pairs: %d training / %d held-out face photos, %s px crops, α ≤ %s, "
             "device %s", len(bank.photos), len(vbank.photos), syn.get("size"),
             syn.get("alpha_max"), device)
    trained: dict[str, tuple[nn.Module, dict[str, Any], dict[str, Any]]] = {}
    for k, kind in enumerate(KINDS):
        mc = dict(cfg[kind])
        arch = arch_of(kind, mc)
        torch.manual_seed(seed + k)
        model = build_magnifier(kind, arch)
        weights = mc.get("weights") if kind == "oh" else None
        if weights:
            load_oh_weights(model, weights)
            model.to(device).eval()
            info: dict[str, Any] = {"external_weights": str(weights),
                                    "sha256": sha256_of(weights)}
            log.info("%s: loaded external weights %s", kind, weights)
        else:
            full = kind == "oh" and bool(getattr(model, "texture_branch", False))
            pairs = SyntheticPairs(bank, SyntheticConfig.from_mapping(syn, color_perturb=full),
                                   seed + k)
            info = train_magnifier(kind, model, pairs, mc, device, seed + k, progress)
            log.info("%s: %d iterations in %.0f s, loss %.4f → %.4f", kind, info["iterations"],
                     info["seconds"], info["loss_first"], info["loss_last"])
        trained[kind] = (model, arch, info)

    v = cfg["verify"]
    alphas = [float(a) for a in v["alphas"]]
    vpairs = verification_pairs(vbank, int(v["n_per_alpha"]), alphas, v["d_range"],
                                int(v["size"]), seed + 1000, photo_share=photo_share,
                                noise=float(v.get("noise", 1.0)))
    target_alpha = float(v.get("target_alpha", 10))
    lo, hi = (float(x) for x in v.get("target_ratio", [0.8, 1.2]))
    metrics: dict[str, Any] = {
        "data": "synthetic", "config": config, "device": str(device),
        "verification": {"pairs_per_alpha": int(v["n_per_alpha"]), "alphas": alphas,
                         "d_range_px": [float(x) for x in v["d_range"]], "size": int(v["size"]),
                         "held_out_photos": len(vbank.photos),
                         "target": {"alpha": target_alpha, "ratio_range": [lo, hi]}},
    }
    key = f"alpha{int(target_alpha) if target_alpha.is_integer() else target_alpha}"
    outputs: dict[str, list[np.ndarray]] = {}
    methods: dict[str, Any] = {
        kind: (lambda a, b, al, m=model: magnify_uint8(m, a, b, al, device))
        for kind, (model, _, _) in trained.items()}
    lam, levels = float(v.get("eulerian_lambda_c", 16.0)), int(v.get("eulerian_levels", 5))
    methods["eulerian"] = _eulerian_fn(lam, levels)
    for name, fn in methods.items():
        res = verify_magnifier(fn, vpairs, batch_size=int(v.get("batch_size", 16)))
        outputs[name] = res.pop("outputs")
        if name in trained:
            a = np.stack([p["a"] for p in vpairs[: int(v["n_per_alpha"])]])
            b = np.stack([p["b"] for p in vpairs[: int(v["n_per_alpha"])]])
            same = fn(a, b, 1.0)
            res["alpha1_psnr_vs_b"] = float(np.mean([psnr(o, t) for o, t in zip(same, b, strict=True)]))
            model, arch, info = trained[name]
            res["arch"] = arch
            res["train"] = info
        else:
            res["lambda_c_px"] = lam
            res["levels"] = levels
        if key in res:
            res["meets_target"] = bool(lo <= res[key]["ratio_median"] <= hi)
        metrics[name] = res
        log.info("%s: measured/expected at α = %g: median %.3f (IQR %.3f), PSNR %.2f dB, "
                 "SSIM %.3f", name, target_alpha, res.get(key, {}).get("ratio_median", float("nan")),
                 res.get(key, {}).get("ratio_iqr", float("nan")),
                 res.get(key, {}).get("psnr", float("nan")), res.get(key, {}).get("ssim", float("nan")))
    with atomic_dir(out_dir) as tmp:
        for kind, (model, arch, info) in trained.items():
            save_magnifier(Path(tmp) / WEIGHT_FILES[kind], kind, model, arch, info)
        plot_verification(vpairs, outputs, Path(tmp) / "verification.png")
    write_json(metrics_path, metrics)
    return metrics

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
from collections.abc import Callable, Mapping
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
#: The weights shipped with the package (trained by :mod:`pipeline.magnification.recipe`).
SHIPPED_DIR = Path(__file__).resolve().parent / "weights"

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
                    device: torch.device, seed: int, progress: bool = True,
                    callback: Callable[[int, nn.Module], None] | None = None,
                    callback_every: int = 0) -> dict[str, Any]:
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
        ``cosine``), ``warmup`` (iterations of linear learning-rate warm-up, default 0),
        ``texture_loss_weight``, ``shape_loss_weight``, ``grad_clip``.
    device : torch.device
    seed : int
        Seeds torch (initialisation is the caller's; this seeds nothing else: the data are a
        function of ``pairs.seed`` and the iteration).
    progress : bool
        Show a tqdm bar.
    callback : callable, optional
        ``callback(done, model)`` after every ``callback_every`` iterations (``done`` = iterations
        completed) and after the last, with the model in eval mode (e.g. verification and
        checkpoints of a long run); training resumes in train mode.
    callback_every : int
        Period of ``callback`` (0: only after the last iteration).

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
    warmup = int(cfg.get("warmup", 0) or 0)
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999))
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"magnifier.{kind}.lr_schedule must be constant or cosine, got {schedule!r}")

    def factor(it: int) -> float:
        ramp = min(1.0, (it + 1) / warmup) if warmup > 0 else 1.0
        if schedule == "cosine":
            return ramp * 0.5 * (1 + math.cos(math.pi * min(it, iterations) / max(iterations, 1)))
        return ramp

    sched = (torch.optim.lr_scheduler.LambdaLR(opt, factor)
             if schedule == "cosine" or warmup > 0 else None)
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
        if callback is not None and callback_every and (it + 1) % callback_every == 0 \
                and it + 1 < iterations:
            model.eval()
            callback(it + 1, model)
            model.train()
    model.eval()
    if callback is not None:
        callback(iterations, model)
    k = max(1, iterations // 10)
    return {"iterations": iterations, "batch_size": batch_size, "lr": lr, "lr_schedule": schedule,
            "warmup": warmup, "crop": pairs.cfg.size, "seconds": round(time.time() - start, 1),
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


def verification_set(cfg: Mapping[str, Any],
                     seed: int) -> tuple[Any, list[dict[str, Any]], int]:
    """The training texture bank and the held-out verification pairs of the ``magnifier`` stage.

    Parameters
    ----------
    cfg : mapping
        The resolved ``magnifier`` section (``synthetic``, ``verify``).
    seed : int
        The project seed; the pairs use ``seed + 1000``.

    Returns
    -------
    (TextureBank, list of dict, int)
        The ``train`` split of the photos, the pairs of
        :func:`~pipeline.magnification.synthetic.verification_pairs` (held-out photos) and the
        number of held-out photos.

    Raises
    ------
    FileNotFoundError
        No face photos while ``synthetic.photo_share > 0``.
    """
    from pipeline.magnification.synthetic import TextureBank, verification_pairs

    syn = dict(cfg.get("synthetic", {}))
    photo_share = float(syn.get("photo_share", 0.5))
    faces_dir = syn.get("faces_dir")
    every = int(syn.get("verify_every", 5))
    photo_size = int(syn.get("photo_size", 512))
    bank = TextureBank(faces_dir, "train", photo_size, every, require_photos=photo_share > 0)
    vbank = TextureBank(faces_dir, "verify", photo_size, every, require_photos=photo_share > 0)
    v = cfg["verify"]
    vpairs = verification_pairs(vbank, int(v["n_per_alpha"]), [float(a) for a in v["alphas"]],
                                v["d_range"], int(v["size"]), seed + 1000,
                                photo_share=photo_share, noise=float(v.get("noise", 1.0)))
    log.info("synthetic pairs: %d training / %d held-out face photos, %s px crops, α %s–%s",
             len(bank.photos), len(vbank.photos), syn.get("size"), syn.get("alpha_min"),
             syn.get("alpha_max"))
    return bank, vpairs, len(vbank.photos)


def verify_methods(models: Mapping[str, nn.Module], vpairs: list[dict[str, Any]],
                   vcfg: Mapping[str, Any], device: torch.device,
                   eulerian: bool = False) -> dict[str, dict[str, Any]]:
    """Verify networks (and optionally linear Eulerian magnification) on the held-out pairs.

    Parameters
    ----------
    models : mapping
        Name → network in eval mode on ``device``.
    vpairs : list of dict
        From :func:`verification_set`.
    vcfg : mapping
        The ``magnifier.verify`` section (``batch_size``, ``n_per_alpha``, Eulerian settings).
    device : torch.device
    eulerian : bool
        Add ``eulerian`` (:func:`pipeline.magnification.eulerian.eulerian_magnify`).

    Returns
    -------
    dict
        Name → :func:`~pipeline.magnification.verify.verify_magnifier` result (``outputs``
        included); networks also get ``alpha1_psnr_vs_b`` (PSNR of the output at α = 1 against
        frame B on the first factor's pairs: the reconstruction quality).
    """
    from pipeline.magnification.verify import psnr, verify_magnifier

    methods: dict[str, Any] = {
        name: (lambda a, b, al, m=model: magnify_uint8(m, a, b, al, device))
        for name, model in models.items()}
    if eulerian:
        methods["eulerian"] = _eulerian_fn(float(vcfg.get("eulerian_lambda_c", 16.0)),
                                           int(vcfg.get("eulerian_levels", 5)))
    n = int(vcfg["n_per_alpha"])
    results = {}
    for name, fn in methods.items():
        res = verify_magnifier(fn, vpairs, batch_size=int(vcfg.get("batch_size", 16)))
        if name in models:
            a = np.stack([p["a"] for p in vpairs[:n]])
            b = np.stack([p["b"] for p in vpairs[:n]])
            same = fn(a, b, 1.0)
            res["alpha1_psnr_vs_b"] = float(np.mean([psnr(o, t) for o, t in zip(same, b, strict=True)]))
        results[name] = res
    return results



def shipped_weights_path(kind: str) -> Path:
    """The weight file of magnifier ``kind`` shipped with the package (``weights/{kind}.pt``)."""
    if kind not in WEIGHT_FILES:
        raise ValueError(f"unknown magnifier {kind!r}; known: {KINDS}")
    return SHIPPED_DIR / WEIGHT_FILES[kind]


def load_shipped(kind: str, arch: Mapping[str, Any],
                 device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The shipped weights of ``kind``, checked against the configured architecture ``arch``.

    Returns
    -------
    (nn.Module, dict)
        As :func:`load_magnifier`.

    Raises
    ------
    FileNotFoundError
        If the package holds no weights for ``kind``.
    ValueError
        If the shipped network's architecture differs from ``arch`` (train it instead:
        ``magnifier.init: scratch``).
    """
    path = shipped_weights_path(kind)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no shipped {kind} weights; set magnifier.init: scratch "
                                "to train the magnifier")
    model, meta = load_magnifier(path, device)
    if _full_arch(kind, meta["arch"]) != _full_arch(kind, arch):
        raise ValueError(f"magnifier.{kind}: the shipped weights ({path}) are of architecture "
                         f"{meta['arch']}, params.yaml asks for {dict(arch)}; set "
                         "magnifier.init: scratch to train this architecture")
    return model, meta


def _full_arch(kind: str, arch: Mapping[str, Any]) -> dict[str, Any]:
    """``arch`` completed with the constructor defaults (tuples as lists), for comparisons."""
    import inspect

    cls = OhMagNet if kind == "oh" else STMEMM
    full = {}
    for key, par in inspect.signature(cls).parameters.items():
        value = arch.get(key, par.default)
        full[key] = list(value) if isinstance(value, tuple | list) else value
    return full


def _prepare(kind: str, k: int, cfg: Mapping[str, Any], bank: Any, device: torch.device,
             seed: int, progress: bool) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """One magnifier of the stage: external weights, shipped (+ fine-tuning) or from scratch."""
    from pipeline.assets import sha256_of
    from pipeline.magnification.oh2018 import load_oh_weights
    from pipeline.magnification.synthetic import SyntheticConfig

    mc = dict(cfg[kind])
    arch = arch_of(kind, mc)
    init = str(cfg.get("init", "scratch"))
    if init not in ("shipped", "scratch"):
        raise ValueError(f"magnifier.init must be shipped or scratch, got {init!r}")
    torch.manual_seed(seed + k)
    weights = mc.get("weights") if kind == "oh" else None
    if weights:
        model = build_magnifier(kind, arch)
        load_oh_weights(model, weights)
        model.to(device).eval()
        log.info("%s: loaded external weights %s", kind, weights)
        return model, arch, {"init": "external", "external_weights": str(weights),
                             "sha256": sha256_of(weights)}
    syn = SyntheticConfig.from_mapping(
        dict(cfg.get("synthetic", {})),
        color_perturb=kind == "oh" and bool(mc.get("texture_branch", True)))
    pairs = SyntheticPairs(bank, syn, seed + k)
    if init == "shipped":
        model, meta = load_shipped(kind, arch, device)
        info: dict[str, Any] = {"init": "shipped", "sha256": sha256_of(shipped_weights_path(kind)),
                                "shipped_train": meta.get("train", {})}
        n = int(cfg.get("finetune_iterations", 0) or 0)
        if n > 0:
            ft = {**mc, "iterations": n, "lr": float(cfg.get("finetune_lr", 1e-5)),
                  "lr_schedule": "constant", "warmup": 0}
            info["finetune"] = train_magnifier(kind, model, pairs, ft, device, seed + k, progress)
        log.info("%s: shipped weights%s", kind, f", fine-tuned {n} iterations" if n > 0 else "")
        return model, arch, info
    model = build_magnifier(kind, arch)
    info = {"init": "scratch", **train_magnifier(kind, model, pairs, mc, device, seed + k,
                                                  progress)}
    log.info("%s: %d iterations in %.0f s, loss %.4f → %.4f", kind, info["iterations"],
             info["seconds"], info["loss_first"] or float("nan"), info["loss_last"] or float("nan"))
    return model, arch, info


def run_magnifier(cfg: Mapping[str, Any], *, config: str, seed: int,
                  out_dir: str | os.PathLike, metrics_path: str | os.PathLike,
                  progress: bool = True) -> dict[str, Any]:
    """The ``magnifier`` stage: load (shipped or external) or train both magnifiers, verify them.

    Parameters
    ----------
    cfg : mapping
        The resolved ``magnifier`` section of params.yaml (``device``, ``torch_threads``,
        ``init``, ``finetune_iterations``, ``finetune_lr``, ``synthetic``, ``oh``, ``stmemm``,
        ``verify``).  ``init: shipped`` starts from the package's weights
        (:func:`shipped_weights_path`), fine-tuned for ``finetune_iterations`` (0: only
        verified); ``init: scratch`` (the default when absent) trains the kind's ``iterations``
        from random initialisation; ``oh.weights`` loads external weights instead of either.
    config : {"quick", "paper"}
        Recorded in the metrics.
    seed : int
        The project seed: network initialisation, training data (``seed`` for Oh et al.,
        ``seed + 1`` for ST-MEMM) and verification pairs (``seed + 1000``).
    out_dir : path
        ``models/magnifier``: ``oh.pt``, ``stmemm.pt``, ``verification.png`` (replaced
        atomically).
    metrics_path : path
        ``metrics/magnifier.json``: the headline (:func:`magnifier_headline`); the full record
        goes to ``metrics/magnifier/detail.json`` (:func:`magnifier_detail_path`).

    Returns
    -------
    dict
        The full metrics record (the detail file).

    Raises
    ------
    FileNotFoundError
        No face photos while ``synthetic.photo_share > 0``, a missing external weight file, or
        no shipped weights with ``init: shipped``.
    WeightLayoutError
        External Oh et al. weights of another layout.
    ValueError
        Bad ``init``, or shipped weights of another architecture than configured.
    """
    from pipeline.io import atomic_dir, write_json
    from pipeline.magnification.verify import plot_verification

    device = resolve_device(str(cfg.get("device", "auto")))
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg["torch_threads"]))
    bank, vpairs, n_held_out = verification_set(cfg, seed)
    trained = {kind: _prepare(kind, k, cfg, bank, device, seed, progress)
               for k, kind in enumerate(KINDS)}
    v = cfg["verify"]
    alphas = [float(a) for a in v["alphas"]]
    target_alpha = float(v.get("target_alpha", 10))
    lo, hi = (float(x) for x in v.get("target_ratio", [0.8, 1.2]))
    metrics: dict[str, Any] = {
        "data": "synthetic", "config": config, "device": str(device),
        "init": str(cfg.get("init", "scratch")),
        "verification": {"pairs_per_alpha": int(v["n_per_alpha"]), "alphas": alphas,
                         "d_range_px": [float(x) for x in v["d_range"]], "size": int(v["size"]),
                         "held_out_photos": n_held_out,
                         "target": {"alpha": target_alpha, "ratio_range": [lo, hi]}},
    }
    key = f"alpha{int(target_alpha) if target_alpha.is_integer() else target_alpha}"
    results = verify_methods({kind: m for kind, (m, _, _) in trained.items()}, vpairs, v, device,
                             eulerian=True)
    outputs: dict[str, list[np.ndarray]] = {}
    for name, res in results.items():
        outputs[name] = res.pop("outputs")
        if name in trained:
            _, arch, info = trained[name]
            res["arch"] = arch
            res["train"] = info
        else:
            res["lambda_c_px"] = float(v.get("eulerian_lambda_c", 16.0))
            res["levels"] = int(v.get("eulerian_levels", 5))
        factors = [k for k in res if k.startswith("alpha") and isinstance(res[k], dict)]
        res["meets_target_all_alphas"] = bool(
            all(lo <= res[f]["ratio_median"] <= hi for f in factors))
        if key in res:
            res["meets_target"] = bool(lo <= res[key]["ratio_median"] <= hi)
        metrics[name] = res
        log.info("%s: median measured/expected %s", name, ", ".join(
            f"α {f[5:]}: {res[f]['ratio_median']:.3f} (PSNR {res[f]['psnr']:.1f} dB)"
            for f in factors))
    with atomic_dir(out_dir) as tmp:
        for kind, (model, arch, info) in trained.items():
            save_magnifier(Path(tmp) / WEIGHT_FILES[kind], kind, model, arch, info)
        plot_verification(vpairs, outputs, Path(tmp) / "verification.png")
    write_json(magnifier_detail_path(metrics_path), metrics)
    write_json(metrics_path, magnifier_headline(metrics))
    return metrics


def magnifier_detail_path(metrics_path: str | os.PathLike) -> Path:
    """``metrics/magnifier/detail.json`` beside ``metrics/magnifier.json``: the full record."""
    return Path(metrics_path).with_suffix("") / "detail.json"


def magnifier_headline(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers DVC declares for the magnifiers: per magnifier and α the median
    measured/expected amplification (``<name>.alpha<α>.ratio_median``) and whether every median
    lies in the target range (``meets_target_all_alphas``); ``data``, ``config`` and ``init``.
    IQRs, PSNR, SSIM, angle errors and the verification set-up stay in the detail file
    (:func:`magnifier_detail_path`; ARCHITECTURE.md, "Metrics files").

    Parameters
    ----------
    metrics : mapping
        The full record written by :func:`run_magnifier`.

    Returns
    -------
    dict
    """
    out: dict[str, Any] = {k: metrics[k] for k in ("data", "config", "init") if k in metrics}
    for name, res in metrics.items():
        if not isinstance(res, Mapping) or name == "verification":
            continue
        head = {k: {"ratio_median": v["ratio_median"]} for k, v in res.items()
                if k.startswith("alpha") and isinstance(v, Mapping) and "ratio_median" in v}
        if "meets_target_all_alphas" in res:
            head["meets_target_all_alphas"] = res["meets_target_all_alphas"]
        out[name] = head
    return out

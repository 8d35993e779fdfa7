"""The annotation-mimicking dual-branch network as a method of the shared trainer.

Ruan, Lo, Shuai, Cheng, "Mimicking the Annotation Process for Recognizing the Micro
Expressions", ACM MM 2022 (METHODS.md; network: :mod:`pipeline.models.mimicking`).

Method family ``mimicking`` (``family: mimicking`` in ``methods.<name>`` of ``params.yaml``),
emotion recognition under LOSO.

Inputs (Sec. 3.1.1, Fig. 2), every one at the model side S = ``input_size`` (paper 224), stacked
into ``(3, S, S)``:

* the grey magnified apex — ``magnified.h5`` ``frames/<magnifier>/alpha<alpha>/apex`` (Oh et al.'s
  learned magnifier, α = 6; ITU-R BT.601 grey, resized, scaled to [0, 1]);
* On-A and Off-A — the TV-L1 flow magnitude sqrt(u² + v²) onset → magnified frame and offset →
  magnified frame (``flow_source: magnified``: ``flow_mag.h5`` ``onset_mag`` / ``offset_mag``,
  stage ``flow_mag``) or onset → apex and offset → apex (``flow_source: apex``, the paper's
  better choice on CASME II: ``flow.h5`` ``onset_apex`` / ``offset_apex``).  As the reference
  code: the magnitude is min-max scaled to [0, 255] per sample, values below ``mag_threshold``
  (1.5) times its mean are zeroed, then divided by 255 (:func:`flow_magnitude_image`).

Training (Sec. 3.2–3.6): L = (1 − λ)·L_cls + λ·L_wscl (Eq. 8, λ = ``wscl_lambda``, 0.3), L_cls the
class-weighted cross-entropy of both heads (Eq. 6–7, w_c = max_k n_k / n_c) with label smoothing
ε = ``label_smoothing`` (0.1: the authors' code, ``train.py``, function ``train_cls``, a
class-weighted PyTorch cross-entropy with label smoothing 0.1; 0: the paper's plain cross-entropy),
PyTorch's formula: per sample (1 − ε)·w_y·(−log p_y) + (ε/K)·Σ_c w_c·(−log p_c), summed and
divided by Σ_i w_{y_i}; L_wscl the weighted
supervised contrastive loss on X_F with Jaccard AU-set similarities (Eq. 4–5,
:func:`wscl_loss`); Region Replacing (``region_replacing`` p = 0.5, :func:`region_replace`),
random horizontal flip and random erasing (``augment``).

Ablations (Table 4) as switches: ``dual`` (false: "sb"), ``awm``, ``wscl_lambda`` (0: no AU
alignment), ``region_replacing`` (0: "w/o RR"), ``flow_source`` (apex | magnified).

Choices the paper leaves open (ours; network choices in :mod:`pipeline.models.mimicking`):

* WSCL: features L2-normalised before the dot product (as supervised contrastive learning,
  Khosla et al. 2020); τ = ``wscl_tau`` (not published; ours 0.1); the denominator of Eq. 5 runs
  over every k (k = i included, as printed), the normaliser Σ_k w_ik over every k (w_ii = 1 for a
  non-empty AU set); anchors whose Σ_k w_ik is 0 (empty AU set) contribute nothing; the batch
  loss is the mean over the other anchors (Eq. 5 sums).  AU sets: every ``AU<n>`` column of
  ``samples.csv``; the Jaccard similarity of two empty sets is 0.
* Class weights and L_cls: PyTorch's weighted mean (Σ w_yi·ℓ_i / Σ w_yi) per head, the two
  heads summed.
* Region Replacing draws the partner among the *batch's* samples of the same class (the paper:
  of the dataset); with no other same-class sample in the batch the sample is kept as it is.
  The partner's AU set is united with the sample's.
* Augmentations applied to the stacked input in the order RR, flip, erasing; random erasing
  (Zhong et al. 2020) with probability ``augment.erase``, area 2–33 %, aspect 0.3–3.3, value 0.
* The magnitude images are resized to S before the min-max scaling (area averaging).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.mimicking import MimickingConfig, MimickingNet, MimickingOutput, au_cam
from pipeline.training.data import InputSpec, _resize
from pipeline.training.registry import (
    FoldContext,
    MethodError,
    MethodSpec,
    class_weights_inverse,
    register,
)

log = logging.getLogger("train")

__all__ = ["FLOW_SOURCES", "au_matrix", "flow_magnitude_image", "grey_image",
           "jaccard_weights", "region_replace", "render_aucam_figure", "wscl_loss"]

#: ``flow_source`` → (cache, On-A dataset, Off-A dataset).
FLOW_SOURCES: dict[str, tuple[str, str, str]] = {
    "magnified": ("flow_mag", "onset_mag", "offset_mag"),
    "apex": ("flow", "onset_apex", "offset_apex"),
}
INPUT_KEYS = ("image", "on_a", "off_a")


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------

def grey_image(img: np.ndarray, size: int) -> np.ndarray:
    """Grey magnified frame for the network.

    Parameters
    ----------
    img : ndarray (H, W, 3) uint8
        RGB frame (``magnified.h5`` ``frames/…/apex``).
    size : int
        Output side S.

    Returns
    -------
    ndarray (1, S, S) float32 in [0, 1]
        ITU-R BT.601 luma (0.299 R + 0.587 G + 0.114 B), area-resized.

    Raises
    ------
    ValueError
        If ``img`` is not ``(H, W, 3)``.
    """
    arr = np.asarray(img)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"magnified frame must be (H, W, 3), got shape {arr.shape}")
    g = arr.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) / 255.0
    return _resize(g[..., None], size).transpose(2, 0, 1).copy()


def flow_magnitude_image(flow: np.ndarray, size: int, threshold: float = 1.5) -> np.ndarray:
    """On-A / Off-A image from a flow: magnitude, min-max scaled, weak motion zeroed.

    Parameters
    ----------
    flow : ndarray (H, W, 2 or 3) float
        (u, v[, ε]) in pixels (``flow.h5`` / ``flow_mag.h5``).
    size : int
        Output side S (area-resized before scaling).
    threshold : float
        Values below ``threshold`` × the mean of the scaled magnitude are set to 0 (reference
        code: 1.5); 0 keeps every value.

    Returns
    -------
    ndarray (1, S, S) float32 in [0, 1]
        m' = 255 (m − min) / (max − min), m' < threshold·mean(m') → 0, then m' / 255; all zero
        when the magnitude is constant.

    Raises
    ------
    ValueError
        On a wrong shape or non-finite values.
    """
    arr = np.asarray(flow, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[2] < 2:
        raise ValueError(f"flow must be (H, W, 2|3), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("flow holds non-finite values")
    mag = np.sqrt(arr[..., 0] ** 2 + arr[..., 1] ** 2)
    mag = _resize(mag[..., None], size)[..., 0]
    lo, hi = float(mag.min()), float(mag.max())
    if hi - lo <= 1e-12:
        return np.zeros((1, size, size), np.float32)
    scaled = 255.0 * (mag - lo) / (hi - lo)
    if threshold > 0:
        scaled[scaled < threshold * scaled.mean()] = 0.0
    return (scaled / 255.0)[None].astype(np.float32)


def au_matrix(table: pd.DataFrame) -> np.ndarray:
    """AU sets of the table's rows as a 0/1 matrix ``(N, n_AU)`` uint8 over every ``AU<n>``
    column (sorted by AU number).

    Raises
    ------
    MethodError
        If the table has no AU column.
    """
    cols = sorted((c for c in table.columns if c[:2] == "AU" and c[2:].isdigit()),
                  key=lambda c: int(c[2:]))
    if not cols:
        raise MethodError("samples.csv has no AU<n> columns: WSCL needs the AU sets")
    return (table[cols].to_numpy(np.int64) > 0).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# loss and augmentation
# --------------------------------------------------------------------------------------------

def jaccard_weights(aus: torch.Tensor) -> torch.Tensor:
    """w_ij = |AU_i ∩ AU_j| / |AU_i ∪ AU_j| (Ruan et al., Eq. 4), 0 where both sets are empty.

    Parameters
    ----------
    aus : Tensor (N, A)
        0/1 AU sets.

    Returns
    -------
    Tensor (N, N) float32
    """
    a = (aus > 0).float()
    inter = a @ a.T
    union = a.sum(1, keepdim=True) + a.sum(1)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1.0), torch.zeros_like(inter))


def wscl_loss(features: torch.Tensor, aus: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """Weighted supervised contrastive loss (Ruan et al., Sec. 3.5, Eq. 5).

    L = mean over anchors i with Σ_k w_ik > 0 of
    −(1 / Σ_k w_ik) Σ_{j≠i} w_ij log( exp(z_i·z_j/τ) / Σ_k exp(z_i·z_k/τ) ),
    z = features L2-normalised, w of :func:`jaccard_weights` (module docstring for the choices).

    Parameters
    ----------
    features : Tensor (N, F)
        X_F of the batch.
    aus : Tensor (N, A)
        0/1 AU sets (after Region Replacing: the united sets).
    tau : float
        Temperature τ > 0.

    Returns
    -------
    Tensor, scalar (0 when no anchor has a non-empty AU set, keeping the graph).

    Raises
    ------
    ValueError
        On τ ≤ 0 or mismatched batch sizes.
    """
    if tau <= 0:
        raise ValueError(f"WSCL temperature must be > 0, got {tau}")
    if features.shape[0] != aus.shape[0]:
        raise ValueError(f"features ({features.shape[0]}) and AU sets ({aus.shape[0]}) differ "
                         "in batch size")
    z = F.normalize(features.float(), dim=1)
    logits = z @ z.T / tau
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    w = jaccard_weights(aus.to(features.device))
    norm = w.sum(1)
    off = 1.0 - torch.eye(len(z), device=z.device)
    per_anchor = -(w * off * log_prob).sum(1)
    valid = norm > 0
    if not valid.any():
        return features.sum() * 0.0
    return (per_anchor[valid] / norm[valid]).mean()


def region_replace(batch: dict[str, torch.Tensor], gen: torch.Generator, p: float,
                   keys: Sequence[str] = INPUT_KEYS, au_key: str = "aus") -> dict:
    """Region Replacing (Ruan et al., Sec. 3.2): with probability ``p`` per sample, the lower
    (mouth) half of every input in ``keys`` comes from another sample of the batch with the same
    ``target`` class, drawn uniformly; the AU sets are united (Sec. 3.5).

    Parameters
    ----------
    batch : dict of Tensor
        Inputs ``(B, C, S, S)`` under ``keys``; ``target`` ``(B,)`` class indices; ``au_key``
        ``(B, A)`` 0/1 (optional).
    gen : torch.Generator
    p : float

    Returns
    -------
    dict
        A new batch (inputs and AU sets copied where replaced); ``"rr_partner"`` ``(B,)`` int64:
        the partner's row, or −1 for a kept sample.
    """
    target = batch["target"]
    n = int(target.shape[0])
    partner = torch.full((n,), -1, dtype=torch.int64)
    if p <= 0 or n < 2:
        return {**batch, "rr_partner": partner}
    draw = torch.rand(n, generator=gen) < p
    for i in torch.nonzero(draw).flatten().tolist():
        same = torch.nonzero((target == target[i]) & (torch.arange(n) != i)).flatten()
        if len(same):
            partner[i] = same[int(torch.randint(len(same), (1,), generator=gen))]
    out = dict(batch)
    sel = torch.nonzero(partner >= 0).flatten()
    if len(sel):
        src = partner[sel]
        for key in keys:
            if key in batch:
                x = batch[key].clone()
                h = x.shape[-2]
                x[sel, ..., h // 2:, :] = batch[key][src, ..., h // 2:, :]
                out[key] = x
        if au_key in batch:
            a = batch[au_key].clone()
            a[sel] = torch.maximum(batch[au_key][sel], batch[au_key][src])
            out[au_key] = a
    out["rr_partner"] = partner
    return out


def _flip_erase(batch: dict, gen: torch.Generator, hflip: float, erase: float,
                keys: Sequence[str] = INPUT_KEYS) -> dict:
    """Random horizontal flip and random erasing of the stacked inputs, drawn per sample."""
    n = int(batch[keys[0]].shape[0])
    out = dict(batch)
    flip = torch.rand(n, generator=gen) < hflip
    boxes = []
    s_h, s_w = batch[keys[0]].shape[-2:]
    for _ in range(n):
        if float(torch.rand(1, generator=gen)) >= erase:
            boxes.append(None)
            continue
        for _try in range(10):
            area = s_h * s_w * float(0.02 + 0.31 * torch.rand(1, generator=gen))
            ratio = math.exp(math.log(0.3) + (math.log(3.3) - math.log(0.3))
                             * float(torch.rand(1, generator=gen)))
            h, w = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
            if 0 < h < s_h and 0 < w < s_w:
                y = int(torch.randint(s_h - h + 1, (1,), generator=gen))
                x = int(torch.randint(s_w - w + 1, (1,), generator=gen))
                boxes.append((y, x, h, w))
                break
        else:
            boxes.append(None)
    for key in keys:
        x = batch[key].clone()
        if flip.any():
            x[flip] = torch.flip(x[flip], dims=[-1])
        for i, box in enumerate(boxes):
            if box is not None:
                y0, x0, h, w = box
                x[i, ..., y0:y0 + h, x0:x0 + w] = 0.0
        out[key] = x
    return out


# --------------------------------------------------------------------------------------------
# the method
# --------------------------------------------------------------------------------------------

def _stack(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([batch[k] for k in INPUT_KEYS], dim=1)


def _number(name: str, params: Mapping[str, Any], key: str, default: float,
            lo: float, hi: float | None = None) -> float:
    v = params.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float) or v < lo or (hi is not None and v > hi):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise MethodError(f"methods.{name}.{key} must be a number in {rng}, got {v!r}")
    return float(v)


def model_config(name: str, params: Mapping[str, Any], n_classes: int) -> MimickingConfig:
    """The network configuration of a ``methods.<name>`` section (``model:`` and the switches
    ``dual``, ``awm``).

    Raises
    ------
    MethodError
        On unknown keys or values the network rejects.
    """
    model = dict(params.get("model") or {})
    known = {f.name for f in dataclasses.fields(MimickingConfig)} - {
        "n_classes", "dual", "awm", "in_channels"}
    unknown = sorted(set(model) - known)
    if unknown:
        raise MethodError(f"methods.{name}.model: unknown keys {unknown}; known: {sorted(known)}")
    dual = bool(params.get("dual", True))
    try:
        cfg = MimickingConfig(n_classes=n_classes, dual=dual,
                              awm=bool(params.get("awm", True)) and dual, **model)
    except ValueError as exc:
        raise MethodError(f"methods.{name}.model: {exc}") from None
    if cfg.sa_groups and (4 * cfg.width) % (2 * cfg.sa_groups):
        raise MethodError(f"methods.{name}.model: 4 x width ({4 * cfg.width}) must be divisible "
                          f"by 2 x sa_groups ({cfg.sa_groups})")
    return cfg


def _inputs(name: str, params: Mapping[str, Any], size: int) -> tuple[InputSpec, ...]:
    from pipeline.training.methods_infusenet import alpha_tag

    source = str(params.get("flow_source", "magnified"))
    if source not in FLOW_SOURCES:
        raise MethodError(f"methods.{name}.flow_source must be one of {sorted(FLOW_SOURCES)}, "
                          f"got {source!r}")
    magnifier = str(params.get("magnifier", "oh"))
    if magnifier not in ("oh", "stmemm"):
        raise MethodError(f"methods.{name}.magnifier must be oh or stmemm, got {magnifier!r}")
    alpha = _number(name, params, "alpha", 6, 1e-6)
    threshold = _number(name, params, "mag_threshold", 1.5, 0.0)
    cache, on_a, off_a = FLOW_SOURCES[source]
    mag = functools.partial(flow_magnitude_image, size=size, threshold=threshold)
    return (InputSpec("image", "magnified", f"frames/{magnifier}/{alpha_tag(alpha)}/apex", "image",
                      size, functools.partial(grey_image, size=size)),
            InputSpec("on_a", cache, on_a, "flow", size, mag),
            InputSpec("off_a", cache, off_a, "flow", size, mag))


@register("mimicking")
def _mimicking(name: str, params: dict[str, Any]) -> MethodSpec:
    """The spec of the annotation-mimicking network (module docstring)."""
    task = str(params.get("task", "emotion"))
    protocol = str(params.get("protocol", "loso"))
    if task != "emotion":
        raise MethodError(f"methods.{name}: the annotation-mimicking network recognises emotions "
                          f"(task: emotion), got task {task!r}")
    raw = params.get("input_size", 224)
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 32 or raw % 2:
        raise MethodError(f"methods.{name}.input_size must be an even integer >= 32 (px), "
                          f"got {raw!r}")
    size = int(raw)
    model_config(name, params, 2)  # validate before any data is read
    smoothing = _number(name, params, "label_smoothing", 0.1, 0.0, 0.999)
    lam = _number(name, params, "wscl_lambda", 0.3, 0.0, 1.0)
    tau = _number(name, params, "wscl_tau", 0.1, 1e-6)
    p_rr = _number(name, params, "region_replacing", 0.5, 0.0, 1.0)
    aug = dict(params.get("augment") or {})
    unknown = sorted(set(aug) - {"hflip", "erase"})
    if unknown:
        raise MethodError(f"methods.{name}.augment: unknown keys {unknown}; known: erase, hflip")
    hflip = _number(name, {"hflip": aug.get("hflip", 0.5)}, "hflip", 0.5, 0.0, 1.0)
    erase = _number(name, {"erase": aug.get("erase", 0.0)}, "erase", 0.0, 0.0, 1.0)
    inputs = _inputs(name, params, size)

    def build(ctx: FoldContext) -> nn.Module:
        return MimickingNet(model_config(name, ctx.params, ctx.n_outputs))

    def forward(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> MimickingOutput:
        return model(_stack(batch))

    def build_loss(ctx: FoldContext):
        weight = class_weights_inverse(ctx.train_targets, ctx.n_outputs).to(ctx.device)
        ce = nn.CrossEntropyLoss(weight=weight, label_smoothing=smoothing)

        def loss(out: MimickingOutput, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
            y = batch["target"].long()
            cls = ce(out.logits_eyes.float(), y)
            if out.logits_mouth is not out.logits_eyes:
                cls = cls + ce(out.logits_mouth.float(), y)
            if lam == 0:
                return cls
            return (1 - lam) * cls + lam * wscl_loss(out.features, batch["aus"], tau)

        return loss

    def transform(batch: dict[str, torch.Tensor], gen: torch.Generator) -> dict:
        batch = region_replace(batch, gen, p_rr)
        batch.pop("rr_partner", None)
        if hflip > 0 or erase > 0:
            batch = _flip_erase(batch, gen, hflip, erase)
        return batch

    return MethodSpec(task=task, protocol=protocol, inputs=inputs, build_model=build,
                      build_loss=build_loss, forward=forward, logits=lambda out: out.log_probs,
                      train_transform=transform,
                      sample_extras=lambda table: {"aus": au_matrix(table)})


# --------------------------------------------------------------------------------------------
# AU-CAM figure (Sec. 4.6.2, Fig. 6)
# --------------------------------------------------------------------------------------------

def render_aucam_figure(method: str, params: Mapping[str, Any], samples: pd.DataFrame,
                        features_dir: str | os.PathLike, models_dir: str | os.PathLike,
                        out_path: str | os.PathLike, fold: str | None, n_samples: int,
                        data_label: str) -> dict[str, Any]:
    """Draw AU-CAM maps of one fold's test samples from its checkpoint.

    Parameters
    ----------
    method : str
        A ``family: mimicking`` method (stage ``train@<method>``).
    params : mapping
        Its resolved section merged over ``train:`` (:func:`pipeline.params.method_params`).
    samples : DataFrame
        ``samples.csv``.
    features_dir, models_dir : path
        ``data/features``; ``models`` (checkpoint ``models/<method>/<fold>.pt``).
    out_path : path
        The PNG.
    fold : str or None
        Fold name (``<task>__<subject>``); None: the first fold with a checkpoint.
    n_samples : int
        Rows (the fold's first test samples by sample id).
    data_label : str
        ``standin-…`` puts "STAND-IN DATA" in the title.

    Returns
    -------
    dict
        ``{"method", "fold", "samples", "predicted", "true"}``.

    Raises
    ------
    FileNotFoundError
        If no checkpoint (of the fold) exists.
    ValueError
        If the checkpoint does not fit the network as configured, or the fold has no test sample.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.io import atomic_path
    from pipeline.training.data import FeatureStore
    from pipeline.training.protocols import EMOTION_TASKS, emotion_table, subject_identity
    from pipeline.training.registry import build_method

    spec = build_method(method, params)
    mdir = Path(models_dir) / method
    ckpts = sorted(mdir.glob("*.pt"))
    if fold is None:
        if not ckpts:
            raise FileNotFoundError(f"{mdir}: no checkpoint (train@{method} with "
                                    "save_checkpoints: true or a list of folds)")
        fold = ckpts[0].stem
    path = mdir / f"{fold}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint of fold {fold!r} not found; have "
                                f"{[c.stem for c in ckpts][:10]}")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    task_key, _, _ = fold.partition("__")
    task = EMOTION_TASKS[task_key]
    table, y = emotion_table(samples, task)
    subj = subject_identity(table)
    from pipeline.training.protocols import loso_folds

    match = [f for f in loso_folds(table, task) if f.name == fold]
    if not match:
        raise ValueError(f"fold {fold!r} is not a fold of {task_key} on these samples")
    test = match[0].test[:n_samples]
    if not len(test):
        raise ValueError(f"fold {fold!r} has no test sample")
    net = MimickingNet(model_config(method, params, task.n_classes))
    try:
        net.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit methods.{method} as configured now "
                         f"({exc})") from exc
    net.eval()
    ids = table["sample_id"].iloc[test].tolist()
    store = FeatureStore(spec.inputs, ids, features_dir, preload=True)
    batch = {k: torch.stack([store.item(i)[k] for i in range(len(ids))]) for k in INPUT_KEYS}
    x = _stack(batch)
    cams = au_cam(net, x).numpy()
    with torch.no_grad():
        pred = net(x).log_probs.argmax(1).numpy()
    tag = "STAND-IN DATA" if data_label.startswith("standin") else "real data"
    fig, axes = plt.subplots(len(ids), 4, figsize=(8, 2.1 * len(ids)), squeeze=False)
    for r, sid in enumerate(ids):
        panels = [(x[r, 0], "magnified apex"), (x[r, 1], "On-A"), (x[r, 2], "Off-A")]
        for c, (img, title) in enumerate(panels):
            axes[r, c].imshow(img.numpy(), cmap="gray", vmin=0, vmax=1)
            axes[r, c].set_title(title, fontsize=7)
        axes[r, 3].imshow(x[r, 0].numpy(), cmap="gray", vmin=0, vmax=1)
        axes[r, 3].imshow(cams[r], cmap="jet", alpha=0.45, vmin=0, vmax=1)
        axes[r, 3].axhline(x.shape[-2] / 2 - 0.5, color="w", lw=0.6)
        axes[r, 3].set_title(f"AU-CAM: {task.classes[pred[r]]} (true {task.classes[y[test[r]]]})",
                             fontsize=7)
        axes[r, 0].set_ylabel(f"{sid}\n{subj[test[r]]}", fontsize=6)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"AU-CAM of {method}, fold {fold} (Ruan et al. Eq. 12-13) — {tag}", fontsize=8)
    fig.tight_layout()
    with atomic_path(out_path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return {"method": method, "fold": fold, "samples": ids,
            "predicted": [task.classes[i] for i in pred],
            "true": [task.classes[y[i]] for i in test]}

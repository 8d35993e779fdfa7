"""Grad-CAM maps of AU logits and the FrameFlow / FrameMag / InfuseNet figure.

InfuseNet Sec. 4.5, Fig. 5: Grad-CAM (Selvaraju et al., ICCV 2017) through the ``grad-cam``
library (Gildenblat et al., ``pytorch_grad_cam``) shows where FrameFlow, FrameMag and InfuseNet
look for an AU; infusion removes FrameMag's activations caused by magnification artefacts.

The target of the backward pass is the logit of one AU (a multi-label output: the sigmoid is
monotone, so the logit is the natural score).  Multi-input models (late fusion, InfuseNet) are
wrapped so that the library sees a one-input model; the other inputs are held fixed.  Maps are
resized to the S × S of the optical-flow image (also for a latent-only model, whose input is
S/2), so maps of different streams overlay the same face crop.

``grad-cam`` is an optional dependency: install it with ``pip install --no-deps grad-cam==1.5.7
ttach==0.0.3`` -- never without ``--no-deps``, as its metadata requires opencv-python-headless,
which must not be installed beside opencv-contrib-python (which provides the ``cv2`` it imports).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.io import atomic_path

log = logging.getLogger(__name__)

__all__ = ["gradcam_maps", "save_gradcam_figure"]

_INSTALL_HINT = (
    "Grad-CAM needs the 'grad-cam' package: pip install --no-deps grad-cam==1.5.7 ttach==0.0.3 "
    "(always --no-deps: it must not pull opencv-python-headless beside opencv-contrib-python)"
)


def _gradcam_lib() -> Any:
    try:
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    return pytorch_grad_cam, ClassifierOutputTarget


class _BoundInputs(nn.Module):
    """A one-input view of a multi-input model: ``forward(x)`` = ``model(x, *fixed)``."""

    def __init__(self, model: nn.Module, fixed: Sequence[torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.fixed = list(fixed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, *self.fixed)


def _to_spatial(t: torch.Tensor) -> torch.Tensor:
    """Activations as (B, C, h, w): CNN maps unchanged; ViT tokens (B, N, D) lose their prefix
    (class) tokens and are laid out on the square patch grid."""
    if t.ndim == 4:
        return t
    if t.ndim != 3:
        raise ValueError(
            f"Grad-CAM needs a spatial (B, C, h, w) or token (B, N, D) layer, got {tuple(t.shape)}"
        )
    n = t.shape[1]
    for prefix in (1, 0, 2, 4):  # class token first, then other common prefix counts
        side = math.isqrt(n - prefix) if n > prefix else 0
        if side and side * side == n - prefix:
            grid = t[:, prefix:, :]
            return grid.reshape(t.shape[0], side, side, t.shape[2]).permute(0, 3, 1, 2)
    raise ValueError(f"cannot lay {n} tokens out on a square patch grid")


def gradcam_maps(
    model: nn.Module,
    inputs: torch.Tensor | Sequence[torch.Tensor],
    au_index: int,
    target_layer_name: str,
    *,
    output_size: int | None = None,
    reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> np.ndarray:
    """Grad-CAM maps of one AU logit at one layer.

    Parameters
    ----------
    model : nn.Module
        A network returning (B, n_AU) logits, called as ``model(*inputs)`` (e.g. from
        :func:`pipeline.models.infusenet.build_infusenet_variant`).
    inputs : Tensor or sequence of Tensors
        The model's inputs in ``model.input_names`` order, each with batch axis B, e.g. flow
        (B, 3, S, S) and latent (B, 64, S/2, S/2).  With ``norm_scope="tensor"`` InfuseNet's
        infusion couples the samples of a batch (ref. code), so the maps explain this batch.
    au_index : int
        Index of the AU logit in the output (CD6ME order: 0 = AU1 … 11 = AU17).
    target_layer_name : str
        Dotted name of the layer whose activations are weighted, e.g. ``backbone.layer4``
        (single stream), ``frame_flow.layer4``, ``frame_mag.layer4`` (FrameMag before infusion),
        ``infusion.3`` (FrameMag's ``layer4`` after infusion), ``frame_mag.blocks.11.norm1``
        (ViT).  For a ViT pooled on the class token, the output of the last block (and the
        infusion after it) reaches the logits through the class token only: its patch tokens
        get no gradient and the map is all zero (a warning is logged); take the last block's
        ``norm1`` or an earlier block instead.
    output_size : int, optional
        Side of the returned maps, pixels; default ``model.image_size`` if present, else the
        largest input side.
    reshape_transform : callable, optional
        Maps the layer's output to (B, C, h, w); default handles CNN maps and ViT tokens.

    Returns
    -------
    ndarray of shape (B, output_size, output_size), float32
        Per-sample maps in [0, 1] (each scaled by its own max, as the library does).

    Raises
    ------
    ImportError
        ``grad-cam`` is not installed (message gives the install command).
    ValueError
        Unknown layer, ``au_index`` out of range, inputs not matching the model.

    Notes
    -----
    The model is put in eval mode for the pass and returned to its previous mode; parameter
    gradients the pass leaves behind are cleared (``zero_grad(set_to_none=True)``).
    """
    lib, target_cls = _gradcam_lib()
    tensors = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
    if not tensors:
        raise ValueError("gradcam_maps needs at least one input tensor")
    try:
        layer = model.get_submodule(target_layer_name)
    except AttributeError as exc:
        raise ValueError(f"{type(model).__name__} has no layer {target_layer_name!r}") from exc
    if output_size is None:
        output_size = int(getattr(model, "image_size", 0) or max(t.shape[-1] for t in tensors))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            n_out = model(*tensors).shape[-1]
        if not 0 <= au_index < n_out:
            raise ValueError(f"au_index must be in [0, {n_out - 1}], got {au_index}")
        wrapped: nn.Module = model if len(tensors) == 1 else _BoundInputs(model, tensors[1:])

        class _SizedGradCAM(lib.GradCAM):
            def get_target_width_height(self, input_tensor: torch.Tensor) -> tuple[int, int]:
                return output_size, output_size

        cam = _SizedGradCAM(
            model=wrapped,
            target_layers=[layer],
            reshape_transform=reshape_transform or _to_spatial,
        )
        try:
            targets = [target_cls(au_index) for _ in range(tensors[0].shape[0])]
            maps = cam(input_tensor=tensors[0], targets=targets)
        finally:
            cam.activations_and_grads.release()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    maps = np.clip(np.nan_to_num(np.asarray(maps, dtype=np.float32), nan=0.0), 0.0, 1.0)
    if not maps.any():
        log.warning(
            "Grad-CAM at %s is zero for every sample: the layer's activations get no gradient "
            "from AU logit %d (for a ViT, take the last block's norm1 or an earlier block)",
            target_layer_name, au_index,
        )  # fmt: skip
    return maps


def _as_rgb01(img: np.ndarray) -> np.ndarray:
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"background images must be (S, S) or (S, S, 3), got {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    arr = arr.astype(np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)


def save_gradcam_figure(
    path: str | os.PathLike,
    backgrounds: np.ndarray | Sequence[np.ndarray],
    maps: Mapping[str, np.ndarray],
    *,
    row_labels: Sequence[str] | None = None,
    cell_labels: Mapping[str, Sequence[str]] | None = None,
    title: str | None = None,
    alpha: float = 0.5,
    cmap: str = "jet",
    dpi: int = 120,
) -> Path:
    """Save a grid of Grad-CAM overlays as PNG, like InfuseNet's Fig. 5.

    One row per sample (or AU), first column the face (e.g. the apex crop), then one column per
    network (e.g. FrameFlow, FrameMag, InfuseNet) with its map over the face.

    Parameters
    ----------
    path : path-like
        Output ``.png``; written atomically, parent folders created.
    backgrounds : ndarray of shape (R, S, S, 3) or (R, S, S), or a sequence of such images
        Faces: ``uint8`` (0–255) or float (min-max scaled for display).
    maps : mapping of str to ndarray of shape (R, s, s)
        Column title → maps in [0, 1] (any side s; stretched over the face).
    row_labels : sequence of str, optional
        One label per row (e.g. ``"AU5"``).
    cell_labels : mapping of str to sequence of str, optional
        Column title → one short text per row, written in the corner of that overlay (e.g. the
        network's AU probability).
    title : str, optional
        Figure title.
    alpha : float
        Opacity of the maps over the face, in [0, 1].
    cmap : str
        Matplotlib colour map of the maps.
    dpi : int
        Resolution, dots per inch.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        Inconsistent row counts, empty ``maps``, bad image shapes or ``alpha``.
    """
    from matplotlib.figure import Figure  # Agg canvas, no pyplot global state

    faces = [_as_rgb01(b) for b in backgrounds]
    n_rows = len(faces)
    if not maps:
        raise ValueError("maps must name at least one column")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    columns = {k: np.asarray(v, dtype=np.float32) for k, v in maps.items()}
    for k, v in columns.items():
        if v.ndim != 3 or v.shape[0] != n_rows:
            raise ValueError(f"maps[{k!r}] must have shape ({n_rows}, s, s), got {v.shape}")
    if row_labels is not None and len(row_labels) != n_rows:
        raise ValueError(f"row_labels has {len(row_labels)} entries for {n_rows} rows")
    cell_labels = dict(cell_labels or {})
    for k, v in cell_labels.items():
        if k not in columns or len(v) != n_rows:
            raise ValueError(f"cell_labels[{k!r}] must name a column of maps and hold {n_rows} "
                             "texts")

    n_cols = 1 + len(columns)
    fig = Figure(figsize=(2.2 * n_cols, 2.2 * n_rows + (0.4 if title else 0.0)), dpi=dpi)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for r, face in enumerate(faces):
        h, w = face.shape[:2]
        axes[r, 0].imshow(face)
        if row_labels is not None:
            axes[r, 0].set_ylabel(row_labels[r])
        for c, (name, m) in enumerate(columns.items(), start=1):
            ax = axes[r, c]
            ax.imshow(face)
            ax.imshow(np.clip(m[r], 0, 1), cmap=cmap, vmin=0.0, vmax=1.0, alpha=alpha,
                      extent=(-0.5, w - 0.5, h - 0.5, -0.5), interpolation="bilinear")  # fmt: skip
            if name in cell_labels:
                ax.text(0.03, 0.03, cell_labels[name][r], transform=ax.transAxes, fontsize=8,
                        color="white", va="bottom", ha="left",
                        bbox={"facecolor": "black", "alpha": 0.6, "pad": 1.5, "linewidth": 0})
            if r == 0:
                ax.set_title(name)
        if r == 0:
            axes[r, 0].set_title("face")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return path

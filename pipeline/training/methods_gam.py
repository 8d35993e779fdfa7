"""GAM-MM-MER in the shared trainer: the ``gam_mm_mer`` method family (stage ``train@gam_mm_mer``).

Wu et al., "Facial micro-expression recognition based on motion magnification network and graph
attention mechanism", Heliyon 2024 (``papers/gam_mm_mer_heliyon2024.txt``; METHODS.md,
"GAM-MM-MER").  LOSO emotion recognition (CASME II and SAMM in five and three classes, SMIC-HS
and the composite in three) from the ST-MEMM-magnified apex: dlib regions → shared CNN → two GAT
layers → class (:class:`pipeline.models.gam_mer.GAMMER`, whose docstring lists the open choices
of the network).  This module plugs it into :mod:`pipeline.training`:

* **Inputs** (feature caches, docs/internals.md), per sample: the magnified apex
  ``magnified.h5`` ``frames/<magnifier>/alpha<α>/apex`` (ST-MEMM, α = ``alpha``, paper's best 5,
  Table 4; onset → apex, the onset's texture) as float32 ``(3, S, S)`` in [0, 1] (S =
  ``flow.size``), and dlib's 68 points on that very frame, ``patches.h5``
  ``magnified/<magnifier>/alpha<α>/landmarks68`` ``(68, 2)`` pixels (the ``patches`` stage runs
  dlib once on every magnified frame listed in ``patches.magnified``).  The region patches are
  cut from the frame inside the network (so the region set and patch size are method
  parameters, not feature-stage ones).  The ``patches`` stage computes the magnified frames'
  points only where ``magnify`` decoded them (``magnify.frames_databases``: the LOSO databases);
  elsewhere they are NaN, and reading one stops the run naming that key.  Table 4's "Raw Image"
  ablation (``magnified: false``)
  reads the apex crop ``faces.h5`` ``crop<crop_size>/apex`` and its landmarks ``patches.h5``
  ``landmarks68`` instead (``crop_size`` must equal ``patches.size``).
* **Magnification as augmentation** (Sect. 3.3: "Motion magnification is applied at various
  magnification factors (8, 10, 12, and 15) to augment the dataset and mitigate the category
  imbalance").  How is not said.  Ours: the frames and landmarks at every factor of
  ``augment.alphas`` are loaded too, and in training each sample of a batch is replaced, with
  probability ``augment.p_alpha``, by its frame at a factor drawn uniformly from
  ``augment.alphas`` (a fresh draw every epoch); testing uses α = ``alpha`` only.  The category
  imbalance is met with the class-weighted cross-entropy ``loss.class_weights: inverse`` (w_c =
  max_k n_k / n_c over the training fold), not by class-dependent oversampling.
* **Photometric augmentation** (Sect. 3.3: "random brightness, contrast, and color
  transformations"; ranges not given).  Ours, one draw per sample: brightness offset
  U(−b, b), contrast factor U(1 − c, 1 + c) about the frame mean, per-channel gain U(1 − g, 1 + g)
  (``augment.brightness``, ``contrast``, ``colour``), clipped to [0, 1].  No flips (a mirror
  swaps the subject's left and right regions, and the paper does not use one).
* **Optimiser** — Adam, β = (0.9, 0.999) (Sect. 3.3); learning rate, batch size, epochs and
  weight decay are not published: ours are in ``params.yaml``.  No model selection on the test
  subject (the shared trainer's ``selection: last``).

Parameters (section ``methods.<name>``, ``family: gam_mm_mer``; besides the shared trainer keys):

``task``, ``protocol``
    ``emotion`` and ``loso`` (the paper's setting; the defaults).
``magnifier``, ``alpha``
    Frame set of magnified.h5 (default ``stmemm``, 5).
``magnified``
    false: the raw apex crop (Table 4 "Raw Image"); no magnification augmentation then.
``patch_landmarks``
    Where every frame's region patches are centred: ``magnified`` (the paper, Sect. 2.2, Eq. 7:
    dlib on each magnified frame, so a magnified displacement mostly moves the patch with the
    feature) | ``onset`` (ablation, ours): the onset's landmarks, ``patches.h5``
    ``onset/landmarks68``, detected once per sample on the onset crop (side ``patches.size``)
    and scaled to the frame's side as (p + 0.5)·S/``crop_size`` − 0.5, the same for the frame
    at ``alpha`` and every augmentation factor, so the patch stays on the neutral face's
    feature and the magnified motion changes its content.  ``crop_size`` must equal
    ``patches.size`` (both 112 quick, 224 paper).
``crop_size``
    Side of the apex crops for ``magnified: false`` (= ``patches.size``) and of the onset crops
    for ``input: apex_onset`` (= ``flow.size``, the side of the magnified frames).
``input``
    ``apex`` (the paper: the magnified apex alone) | ``apex_onset``: the magnified apex and its
    difference to the onset crop ``faces.h5`` ``crop<crop_size>/onset``, (apex − onset + 1) / 2,
    six channels per patch.  Not in the paper: ST-MEMM's output carries the onset's texture, so
    the difference keeps the magnified motion and drops the identity, the main nuisance of a
    single frame under LOSO (docs/experiments.md measures both on the stand-in).  The same
    photometric jitter is applied to the apex and the onset.
``diff_scale``
    ``none`` (default): the difference enters as (apex − onset + 1) / 2, a few grey levels about
    0.5 beside the apex's full range | ``sample``: ours, not in the paper, only with
    ``input: apex_onset``: each sample's difference divided by the 99th percentile of its
    absolute values over the frame (floored at 10⁻³) and clipped to [−1, 1] before the same
    mapping, as ``train.flow_norm: sample`` scales a flow.  Per sample, so a prediction does not
    depend on the other samples of its batch (:func:`scaled_difference`).
``augment``
    ``alphas`` (list, [] for none), ``p_alpha``, ``brightness``, ``contrast``, ``colour``.
``model``
    ``regions`` (``me`` | ``all``), ``graph`` (``prior`` | ``raw``), ``conv`` (``gat`` |
    ``gcn``), ``layers``, ``hidden``, ``heads``, ``patch_size``, ``cnn_channels``, ``dropout``,
    ``attention_dropout``, ``readout`` (``concat`` | ``mean``): :class:`~pipeline.models.gam_mer.
    GAMMER`.  An unknown key is an error.

Ablations of Tables 3 and 4 are ``dvc exp run -S methods.gam_mm_mer.…`` switches
(docs/methods/gam_mm_mer.md); their published numbers are the ``gam_mm_mer_*_loso`` entries of
:data:`pipeline.reporting.published.PUBLISHED`, put beside a run with
``-S methods.gam_mm_mer.published=<key>``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pipeline.models.gam_mer import GAMMER, graph_edges, region_set
from pipeline.models.infusenet import abs_quantile
from pipeline.training.data import InputSpec
from pipeline.training.methods_infusenet import alpha_tag
from pipeline.training.registry import FoldContext, MethodError, MethodSpec, fixed_task, register

log = logging.getLogger("train")

__all__ = ["GAM_MODEL_DEFAULTS", "PATCH_LANDMARKS", "gam_inputs", "gam_model_config",
           "onset_placement", "photometric_jitter", "pick_alphas", "scaled_difference"]

#: Defaults of ``methods.<name>.model`` (module docstring; the network's open choices are in
#: :mod:`pipeline.models.gam_mer`).
GAM_MODEL_DEFAULTS: dict[str, Any] = {
    "regions": "me", "graph": "prior", "conv": "gat", "layers": 2, "hidden": 16, "heads": 4,
    "patch_size": 24, "cnn_channels": [8, 16, 32], "dropout": 0.3, "attention_dropout": 0.0,
    "readout": "concat",
}

_AUGMENT_DEFAULTS: dict[str, Any] = {"alphas": [8, 10, 12, 15], "p_alpha": 0.5,
                                     "brightness": 0.1, "contrast": 0.1, "colour": 0.05}

FRAME, LANDMARKS, ONSET = "frame", "landmarks", "onset"
INPUTS = ("apex", "apex_onset")
PATCH_LANDMARKS = ("magnified", "onset")
DIFF_SCALES = ("none", "sample")


def gam_model_config(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The network settings of method ``name``: ``model`` over :data:`GAM_MODEL_DEFAULTS`.

    Raises
    ------
    MethodError
        On an unknown key or a value the network does not accept.
    """
    block = params.get("model") or {}
    if not isinstance(block, Mapping):
        raise MethodError(f"methods.{name}.model must be a mapping, got {type(block).__name__}")
    unknown = sorted(set(block) - set(GAM_MODEL_DEFAULTS))
    if unknown:
        raise MethodError(f"methods.{name}.model: unknown keys {unknown}; known: "
                          f"{sorted(GAM_MODEL_DEFAULTS)}")
    cfg = {**GAM_MODEL_DEFAULTS, **block}
    checks = {"regions": ("me", "all"), "graph": ("prior", "raw"), "conv": ("gat", "gcn"),
              "readout": ("concat", "mean")}
    for key, allowed in checks.items():
        if cfg[key] not in allowed:
            raise MethodError(f"methods.{name}.model.{key} must be one of {allowed}, got "
                              f"{cfg[key]!r}")
    for key in ("layers", "hidden", "heads", "patch_size"):
        if int(cfg[key]) < 1:
            raise MethodError(f"methods.{name}.model.{key} must be >= 1, got {cfg[key]!r}")
    if not cfg["cnn_channels"] or any(int(c) < 1 for c in cfg["cnn_channels"]):
        raise MethodError(f"methods.{name}.model.cnn_channels must be positive widths, got "
                          f"{cfg['cnn_channels']!r}")
    return cfg


def gam_inputs(name: str, params: Mapping[str, Any]) -> tuple[tuple[InputSpec, ...],
                                                                tuple[float, ...]]:
    """The cache inputs of method ``name`` and the augmentation factors they include.

    Returns
    -------
    inputs : tuple of InputSpec
        ``frame`` (image, float32 ``(3, S, S)`` in [0, 1]) and ``landmarks`` (array ``(68, 2)``)
        at α = ``alpha`` (or the raw apex crop), then ``frame_alpha<a>`` / ``landmarks_alpha<a>``
        for every augmentation factor a; with ``patch_landmarks: onset`` one ``landmarks``, the
        onset's (``patches.h5`` ``onset/landmarks68``), and no ``landmarks_alpha<a>``.
    alphas : tuple of float
        The augmentation factors, in input order (empty without magnification or augmentation).

    Raises
    ------
    MethodError
        On a bad ``magnifier``, ``alpha``, ``crop_size``, ``augment.alphas`` or
        ``patch_landmarks``.
    """
    augment = {**_AUGMENT_DEFAULTS, **(params.get("augment") or {})}
    placement = str(params.get("patch_landmarks", "magnified"))
    if placement not in PATCH_LANDMARKS:
        raise MethodError(f"methods.{name}.patch_landmarks must be one of {PATCH_LANDMARKS}, got "
                          f"{placement!r}")
    onset_lms = InputSpec(LANDMARKS, "patches", "onset/landmarks68", "array")
    if not bool(params.get("magnified", True)):
        size = int(params.get("crop_size", 112))
        if size < 1:
            raise MethodError(f"methods.{name}.crop_size must be positive, got {size}")
        return (InputSpec(FRAME, "faces", f"crop{size}/apex", "image"),
                onset_lms if placement == "onset"
                else InputSpec(LANDMARKS, "patches", "landmarks68", "array")), ()
    kind = str(params.get("magnifier", "stmemm"))
    if kind not in ("stmemm", "oh"):
        raise MethodError(f"methods.{name}.magnifier must be stmemm or oh, got {kind!r}")
    alpha = float(params.get("alpha", 5))
    extra = tuple(float(a) for a in (augment.get("alphas") or ()))
    if alpha <= 0 or any(a <= 0 for a in extra):
        raise MethodError(f"methods.{name}: magnification factors must be positive, got "
                          f"alpha {alpha}, augment.alphas {list(extra)}")

    def pair(a: float, suffix: str) -> tuple[InputSpec, ...]:
        tag = alpha_tag(a)
        frame = InputSpec(FRAME + suffix, "magnified", f"frames/{kind}/{tag}/apex", "image")
        if placement == "onset":
            return (frame,)
        dataset = f"magnified/{kind}/{tag}/landmarks68"
        return (frame, InputSpec(LANDMARKS + suffix, "patches", dataset, "array",
                                 preprocess=functools.partial(_finite_landmarks,
                                                              dataset=dataset, kind=kind)))

    inputs = list(pair(alpha, ""))
    if placement == "onset":
        inputs.append(onset_lms)
    for a in extra:
        inputs += pair(a, f"_{alpha_tag(a)}")
    if str(params.get("input", "apex")) == "apex_onset":
        size = int(params.get("crop_size", 112))
        inputs.append(InputSpec(ONSET, "faces", f"crop{size}/onset", "image"))
    return tuple(inputs), extra


def pick_alphas(batch: dict[str, Any], generator: torch.Generator, alphas: Sequence[float],
                p: float, landmarks: bool = True) -> dict[str, Any]:
    """Replace each sample's frame and landmarks, with probability ``p``, by those at a factor
    drawn uniformly from ``alphas`` (module docstring, "Magnification as augmentation").

    Parameters
    ----------
    batch : dict
        ``frame`` ``(B, 3, S, S)``, ``landmarks`` ``(B, 68, 2)`` and ``frame_alpha<a>``,
        ``landmarks_alpha<a>`` for every a in ``alphas``.
    generator : torch.Generator
        Seeded CPU generator.
    alphas : sequence of float
    p : float
    landmarks : bool
        Swap the landmarks with the frame (``patch_landmarks: magnified``); False keeps
        ``landmarks`` (``onset``: one placement for every factor; no ``landmarks_alpha<a>``).

    Returns
    -------
    dict
        A copy of ``batch`` with new ``frame`` and ``landmarks`` (the other keys untouched).
    """
    if not alphas or p <= 0:
        return batch
    n = batch[FRAME].shape[0]
    swap = torch.rand(n, generator=generator) < p
    which = torch.randint(len(alphas), (n,), generator=generator)
    frame, lms = batch[FRAME].clone(), batch[LANDMARKS].clone()
    for k, a in enumerate(alphas):
        sel = swap & (which == k)
        if sel.any():
            tag = alpha_tag(a)
            frame[sel] = batch[f"{FRAME}_{tag}"][sel]
            if landmarks:
                lms[sel] = batch[f"{LANDMARKS}_{tag}"][sel]
    return {**batch, FRAME: frame, LANDMARKS: lms}


def _finite_landmarks(arr: Any, dataset: str, kind: str) -> np.ndarray:
    """Pre-processing of a magnified frame's landmarks: float32 ``(68, 2)``, or one clear error
    for the NaN points of a frame the ``magnify`` stage did not decode
    (``magnify.frames_databases``)."""
    out = np.asarray(arr, dtype=np.float32)
    if not np.isfinite(out).all():
        raise ValueError(f"patches.h5 {dataset}: no landmarks for a sample of the protocol (its "
                         f"database is not in magnify.frames_databases.{kind}, so its frames "
                         "were not decoded); add the database there and re-run magnify and "
                         "patches")
    return out


def onset_placement(landmarks: Tensor, frame_side: int, landmark_side: int) -> Tensor:
    """The onset's landmarks (pixels of the ``landmark_side`` onset crop) in pixels of a frame of
    side ``frame_side`` (same crop box): (p + 0.5) · frame_side / landmark_side − 0.5.

    Parameters
    ----------
    landmarks : Tensor of shape (B, 68, 2), float
    frame_side, landmark_side : int
        Sides of the frame and of the onset crop, pixels.

    Returns
    -------
    Tensor of shape (B, 68, 2)
    """
    if frame_side == landmark_side:
        return landmarks
    return (landmarks + 0.5) * (frame_side / landmark_side) - 0.5


def photometric_jitter(frames: Tensor, generator: torch.Generator, brightness: float,
                       contrast: float, colour: float) -> Tensor:
    """Random brightness, contrast and colour per sample (module docstring), clipped to [0, 1].

    Parameters
    ----------
    frames : Tensor of shape (B, C, H, W), float in [0, 1]
    generator : torch.Generator
    brightness, contrast, colour : float
        Half-widths of the offset, contrast-factor and per-channel-gain ranges (0: off).

    Returns
    -------
    Tensor of shape (B, C, H, W)
    """
    b, c = frames.shape[:2]

    def u(shape: tuple[int, ...], half: float) -> Tensor:
        return (torch.rand(shape, generator=generator) * 2 - 1) * half

    mean = frames.mean(dim=(1, 2, 3), keepdim=True)
    out = (frames - mean) * (1 + u((b, 1, 1, 1), contrast)) + mean
    out = out * (1 + u((b, c, 1, 1), colour)) + u((b, 1, 1, 1), brightness)
    return out.clamp_(0.0, 1.0)


def scaled_difference(frames: Tensor, onsets: Tensor, scale: str) -> Tensor:
    """The difference channels of ``input: apex_onset`` (module docstring, ``diff_scale``).

    Parameters
    ----------
    frames, onsets : Tensor of shape (B, C, H, W), float in [0, 1]
        Magnified apex frames and their onset crops.
    scale : {"none", "sample"}
        ``none``: (apex − onset + 1) / 2; ``sample``: the difference divided by the 99th
        percentile of its absolute values per sample (the order statistic of
        :func:`pipeline.models.infusenet.abs_quantile`, floored at 1e-3), clipped to [−1, 1],
        then mapped the same way.

    Returns
    -------
    Tensor of shape (B, C, H, W), float in [0, 1]

    Raises
    ------
    ValueError
        On an unknown ``scale`` or mismatched shapes.
    """
    if scale not in DIFF_SCALES:
        raise ValueError(f"diff_scale must be one of {DIFF_SCALES}, got {scale!r}")
    if frames.shape != onsets.shape:
        raise ValueError(f"apex {tuple(frames.shape)} and onset {tuple(onsets.shape)} differ")
    diff = frames - onsets
    if scale == "sample":
        q = abs_quantile(diff.flatten(1), 0.99).clamp_min(1e-3)
        diff = (diff / q.to(diff.dtype).view(-1, *([1] * (diff.ndim - 1)))).clamp(-1.0, 1.0)
    return (diff + 1) / 2


@register("gam_mm_mer")
def _gam_mm_mer(name: str, params: dict[str, Any]) -> MethodSpec:
    task, protocol = fixed_task(name, params, "emotion", "loso",
                                "GAM-MM-MER recognises emotions under LOSO")
    cfg = gam_model_config(name, params)
    mode = str(params.get("input", "apex"))
    if mode not in INPUTS:
        raise MethodError(f"methods.{name}.input must be one of {INPUTS}, got {mode!r}")
    if mode == "apex_onset" and not bool(params.get("magnified", True)):
        raise MethodError(f"methods.{name}: input apex_onset needs magnified: true")
    diff_scale = str(params.get("diff_scale", "none"))
    if diff_scale not in DIFF_SCALES:
        raise MethodError(f"methods.{name}.diff_scale must be one of {DIFF_SCALES}, got "
                          f"{diff_scale!r}")
    if diff_scale != "none" and mode != "apex_onset":
        raise MethodError(f"methods.{name}: diff_scale {diff_scale} scales the apex − onset "
                          "difference and needs input: apex_onset")
    inputs, alphas = gam_inputs(name, params)
    by_onset = str(params.get("patch_landmarks", "magnified")) == "onset"
    landmark_side = int(params.get("crop_size", 112))
    augment = {**_AUGMENT_DEFAULTS, **(params.get("augment") or {})}
    unknown = sorted(set(augment) - set(_AUGMENT_DEFAULTS))
    if unknown:
        raise MethodError(f"methods.{name}.augment: unknown keys {unknown}; known: "
                          f"{sorted(_AUGMENT_DEFAULTS)}")
    p_alpha = float(augment["p_alpha"])
    jitter = tuple(float(augment[k]) for k in ("brightness", "contrast", "colour"))
    if not 0 <= p_alpha <= 1 or any(j < 0 or j >= 1 for j in jitter):
        raise MethodError(f"methods.{name}.augment: p_alpha must be in [0, 1] and brightness, "
                          f"contrast, colour in [0, 1), got {augment}")
    regions = region_set(cfg["regions"])
    edges = graph_edges(regions, prior=cfg["graph"] == "prior")
    try:
        import torch_geometric  # noqa: F401
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise MethodError(f"methods.{name}: GAM-MM-MER needs PyTorch Geometric "
                          "(pip install torch_geometric)") from exc

    def build(ctx: FoldContext) -> GAMMER:
        return GAMMER(ctx.n_outputs, regions, edges, int(cfg["patch_size"]), conv=cfg["conv"],
                      layers=int(cfg["layers"]), hidden=int(cfg["hidden"]),
                      heads=int(cfg["heads"]), cnn_channels=[int(c) for c in cfg["cnn_channels"]],
                      dropout=float(cfg["dropout"]),
                      attention_dropout=float(cfg["attention_dropout"]), readout=cfg["readout"],
                      in_channels=6 if mode == "apex_onset" else 3)

    def transform(batch: dict[str, Any], gen: torch.Generator) -> dict[str, Any]:
        batch = pick_alphas(batch, gen, alphas, p_alpha, landmarks=not by_onset)
        if not any(jitter):
            return batch
        if mode == "apex":
            return {**batch, FRAME: photometric_jitter(batch[FRAME], gen, *jitter)}
        side = batch[FRAME].shape[-1]      # one draw per sample for its apex and onset
        both = photometric_jitter(torch.cat([batch[FRAME], batch[ONSET]], dim=3), gen, *jitter)
        return {**batch, FRAME: both[..., :side], ONSET: both[..., side:]}

    def forward(model: GAMMER, batch: Mapping[str, Tensor]) -> Tensor:
        frames = batch[FRAME]
        lms = batch[LANDMARKS]
        if by_onset:
            lms = onset_placement(lms, int(frames.shape[-1]), landmark_side)
        if mode == "apex_onset":
            frames = torch.cat([frames, scaled_difference(frames, batch[ONSET], diff_scale)],
                               dim=1)
        return model(frames, lms)

    log.info("%s: %d regions (%s), %d directed edges (%s graph), %d %s layers, %d-px patches, "
             "inputs %s, augmentation α %s (p %.2f)", name, len(regions), cfg["regions"],
             edges.shape[1], cfg["graph"], int(cfg["layers"]), cfg["conv"].upper(),
             int(cfg["patch_size"]),
             ", ".join(f"{i.cache}:{i.dataset}" for i in inputs if i.key in (FRAME, LANDMARKS)),
             [float(a) for a in alphas], p_alpha)
    return MethodSpec(
        task=task, protocol=protocol, inputs=inputs, build_model=build,
        forward=forward,
        train_transform=transform)

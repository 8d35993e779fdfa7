"""InfuseNet and the networks of its Tables 1–3 as methods of the shared trainer.

Khor, Li, Jiang, Zhao, "Infused Suppression Of Magnification Artefacts For Micro-AU Detection",
SCIA 2025 (METHODS.md, "InfuseNet"); the networks are :mod:`pipeline.models.infusenet`.

Method family ``infusenet`` (``family: infusenet`` in ``methods.<name>`` of ``params.yaml``), one
section per row of the paper's tables, selected by ``variant`` (default: the method name), a key of
:data:`pipeline.models.infusenet.VARIANTS`:

=========================  ==========================================  =====================
variant                    network                                      table row
=========================  ==========================================  =====================
``resnet18_flow``          ResNet18 on the flow image (FrameFlow)       T1 "ResNet18 OF"
``resnet18_mag``           ResNet18 on the magnified latent (FrameMag)  T1 "ResNet18 Mag"
``late_fusion``            FrameFlow ‖ FrameMag pooled features         T1 "Late-fusion"
``infusenet``              InfuseNet(Res18), latent FrameMag            T1, T2, T3 (latent)
``infusenet_image``        InfuseNet(Res18), decoded magnified image    T3 "Decoded image"
``vit_tiny_flow``          ViT-Tiny on the flow image                   T1 "ViT-Tiny OF"
``vit_tiny_mag``           ViT-Tiny on the magnified latent             T1 "ViT-Tiny Mag"
``vit_tiny_late_fusion``   ViT-Tiny late fusion                         (not published)
``infusenet_vit``          InfuseNet(ViT-Tiny)                          T1
=========================  ==========================================  =====================

(The pipeline's ``resnet18_flow`` stage is the ``resnet_flow`` baseline, the same network as the
``resnet18_flow`` variant here; the table reuses it rather than training it twice.)

Inputs, read from the feature caches (docs/internals.md), every one at the model side
S = ``input_size`` (paper 224):

* ``flow`` — ``flow.h5`` ``onset_apex`` (``flow_pair``): the optical-flow image I_OF = (u, v, ε)
  (Eq. 3–5), resized and normalised by the shared trainer (``train.flow_norm``), (3, S, S);
* the magnified latent — ``magnified.h5`` ``latent/onset_apex`` and ``latent/onset_pseudo``,
  each (32, S_c/2, S_c/2) float16 at the cache's crop side S_c = ``flow.size``, resized to S/2 by
  area averaging (bilinear when enlarging; :func:`resize_latent`) and concatenated in that order,
  Mag(onset, apex) ‖ Mag(onset, pseudo-apex) (Eq. 2): (64, S/2, S/2), FrameMag's conv1 output.
  The magnification factor α is the cache's (``magnify.latent_alpha``, paper 10).  The
  pseudo-apex (Sec. 3.1: k ∈ [0, 5] frames after the apex): with ``pseudo_apex_draw:
  per_epoch`` (default) every training sample draws a new k each time it is seen, from the
  cached latents of all offsets (``latent/onset_pseudo_all``, :func:`redraw_pseudo_apex`; the
  paper redraws every iteration); ``fixed`` keeps the cache's one fixed-seed draw per sample
  (``pseudo_apex_offset``, ``magnify.pseudo_apex``).  Test samples always use the fixed draw.
  Resizing the latent map stands in for
  computing it on a smaller crop when S ≠ S_c (the quick configuration); with S = S_c (paper:
  224 px crops and flow) it is the identity;
* ``image`` (``infusenet_image``, Table 3) — ``magnified.h5``
  ``frames/<image_magnifier>/alpha<image_alpha>/apex``: the decoded magnified apex (Oh et al.,
  α 10 by default), uint8 → [0, 1], (3, S, S).

Settings (besides the shared trainer's, :mod:`pipeline.training.trainer`): ``input_size``,
``pretrained`` (false | stage: the ``pretrain`` stage's ``models/pretrain/resnet18.pt``, ResNet
variants at its widths | true: ImageNet through torchvision/timm, a download | the path of a local
state-dict file; loaded into every stream; FrameMag's ``conv1``, which the latent replaces, is
dropped; :mod:`pipeline.pretrain.weights`), ``norm_scope`` (infusion normalisation:
``tensor`` (ref. code) | ``sample`` | ``channel``, in training), ``eval_norm_scope`` (the
scope at test time; null: ``norm_scope`` with ``tensor`` → ``sample``, so that a test prediction
does not depend on the other samples of its batch; ``tensor`` is the ref. code's transductive
test), ``model`` (any other field of
:class:`~pipeline.models.infusenet.InfuseNetConfig`, e.g. ``latent_bn``,
``vit_infusion_blocks``), ``aux_flow_loss`` (weight of an extra BCE on FrameFlow's logits through
InfuseNet's shared head, :meth:`~pipeline.models.infusenet.InfuseNet.forward_both`; default 0,
the paper's loss is on InfuseNet's output only), ``augment.hflip`` (left–right mirror with
u → −u; only for variants without a latent input: mirroring a latent map is not the latent of
the mirrored face, the encoder's filters are not symmetric; the paper uses no augmentation),
``flow_pair`` (flow.h5 dataset, default ``onset_apex``), ``image_magnifier`` (``oh`` |
``stmemm``) and ``image_alpha`` (``infusenet_image``).  ``task`` must be ``au`` and ``protocol``
``cd6me``.  A section is checked when the spec is built, before any data is read: sizes, keys,
the weights file, and the network itself (built once on the ``meta`` device, no memory, no
weights); every problem is a :class:`~pipeline.training.registry.MethodError` naming
``methods.<name>``.

End to end (``end_to_end: true``; off by default, and in the quick configuration): the paper
fine-tunes the magnifier's encoder and manipulator inside InfuseNet (Sec. 3.2); by default this
project does not — it trains on the latents the ``magnify`` stage computed once, without
gradients, with the magnifier frozen.  With ``end_to_end: true`` a latent variant instead
computes Mag(onset, apex) ‖ Mag(onset, pseudo-apex) in its forward pass with the Oh et al.
encoder (shape branch) and manipulator (:class:`~pipeline.models.infusenet.MagnifierLatent`),
initialised from ``magnifier_weights`` (default ``models/magnifier/oh.pt``) and trained with the
rest of the network (same optimiser and learning rate; the paper gives none for them), at
α = ``latent_alpha`` (10) and ``latent_kind`` (``difference``).  Its inputs are ``faces.h5``'s
crops ``crop{crop_size}/onset``, ``/apex`` and the pseudo-apex window ``/pseudo_apex`` (crop_size
= ``flow.size``, 112 quick), resized to ``input_size`` (the latent is then input_size/2), and
``magnified.h5``'s ``pseudo_apex_offset`` (the fixed draw used at test time); training draws the
pseudo-apex per sample and epoch (``pseudo_apex_draw``).  About 3x the compute of the cached-latent
variant per step (the encoder runs on three crops per sample).

The loss is the shared trainer's multi-label BCE over the 12 CD6ME AUs (the paper's "cross-entropy"
on a multi-label output); Adam 1e-3 with ExponentialLR γ 0.9 for 50 epochs in the paper
configuration (Sec. 4.2).

The module also renders InfuseNet's Fig. 5 from the trained checkpoints
(:func:`render_gradcam_figure`, stage ``gradcam``).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.infusenet import VARIANTS, InfuseNet, InfuseNetConfig, build_infusenet_variant
from pipeline.pretrain.weights import PretrainError, require_made, resolve_for_method
from pipeline.training.data import InputSpec
from pipeline.training.protocols import CD6ME_AUS
from pipeline.training.registry import (
    FoldContext,
    MethodError,
    MethodSpec,
    default_logits,
    default_loss,
    register,
)
from pipeline.training.trainer import flow_hflip

log = logging.getLogger("train")

__all__ = [
    "LATENT_DATASETS",
    "GradcamColumn",
    "alpha_tag",
    "build_fold_model",
    "gradcam_columns",
    "render_gradcam_figure",
    "resize_latent",
    "select_gradcam_samples",
]

#: The two latent datasets of ``magnified.h5``, concatenated in this order (channels 0–31, 32–63).
LATENT_DATASETS: tuple[str, str] = ("latent/onset_apex", "latent/onset_pseudo")
_LATENT_KEYS: tuple[str, str] = ("latent_apex", "latent_pseudo")
#: The latents of every pseudo-apex offset k = 0…K (``pseudo_apex_draw: per_epoch``).
PSEUDO_ALL_DATASET = "latent/onset_pseudo_all"
_PSEUDO_ALL_KEY = "latent_pseudo_all"
PSEUDO_APEX_DRAWS: tuple[str, ...] = ("per_epoch", "fixed")


def alpha_tag(alpha: float) -> str:
    """The ``alpha{a}`` group name of ``magnified.h5`` for factor α (docs/internals.md).

    ``{a}`` is the integer when α is whole (``alpha10``), else Python's float text
    (``alpha7.5``).
    """
    a = float(alpha)
    return f"alpha{int(a)}" if a.is_integer() else f"alpha{a}"


def resize_latent(latent: np.ndarray, side: int) -> np.ndarray:
    """Resize one magnified latent map to ``side`` × ``side``.

    Parameters
    ----------
    latent : ndarray of shape (C, h, w), float16 or float32
        A ``magnified.h5`` latent (C = 32, h = w = S_c/2 for crop side S_c), in the magnifier's
        feature units.
    side : int
        Output side in latent pixels (S/2 for model input side S).

    Returns
    -------
    ndarray of shape (C, side, side), float32
        Area average when shrinking (``adaptive_avg_pool2d``), bilinear (half-pixel centres)
        when enlarging, a copy when the side already matches.

    Raises
    ------
    ValueError
        If ``latent`` is not 3-D, not finite, or ``side`` < 1.
    """
    arr = np.asarray(latent, dtype=np.float32)
    if arr.ndim != 3:
        raise ValueError(f"latent must be (C, h, w), got shape {arr.shape}")
    if side < 1:
        raise ValueError(f"latent side must be >= 1, got {side}")
    if not np.isfinite(arr).all():
        raise ValueError("latent holds non-finite values")
    if arr.shape[1:] == (side, side):
        return arr.copy()
    x = torch.from_numpy(arr)[None]
    if side <= min(arr.shape[1:]):
        out = F.adaptive_avg_pool2d(x, side)
    else:
        out = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
    return np.ascontiguousarray(out[0].numpy())


def resize_latents(latents: np.ndarray, side: int) -> np.ndarray:
    """:func:`resize_latent` for a stack of latent maps (one per pseudo-apex offset).

    Parameters
    ----------
    latents : ndarray of shape (K, C, h, w), float16 or float32
    side : int

    Returns
    -------
    ndarray of shape (K, C, side, side), float32

    Raises
    ------
    ValueError
        If ``latents`` is not 4-D (or as :func:`resize_latent`).
    """
    arr = np.asarray(latents)
    if arr.ndim != 4:
        raise ValueError(f"latents must be (K, C, h, w), got shape {arr.shape}")
    k, c = arr.shape[:2]
    return resize_latent(arr.reshape(k * c, *arr.shape[2:]), side).reshape(k, c, side, side)


def redraw_pseudo_apex(batch: dict[str, torch.Tensor], gen: torch.Generator) -> dict:
    """Training batch with a fresh pseudo-apex per sample (InfuseNet Sec. 3.1).

    Each sample's Mag(onset, pseudo-apex) is replaced by the cached latent of an offset
    k ~ U{0, …, K} drawn from the trainer's seeded generator, so every sample gets a new draw each
    time it is seen (once per epoch; the paper redraws per iteration).  Evaluation keeps the
    cache's fixed-seed draw (``latent/onset_pseudo``).

    Parameters
    ----------
    batch : dict of Tensor
        With ``latent_pseudo_all`` of shape (B, K + 1, 32, s, s).
    gen : torch.Generator

    Returns
    -------
    dict
        A copy with ``latent_pseudo`` (B, 32, s, s) at the drawn offsets and ``pseudo_offset``
        (B,) int64 the offsets.
    """
    every = batch[_PSEUDO_ALL_KEY]
    k = torch.randint(0, every.shape[1], (every.shape[0],), generator=gen)
    out = dict(batch)
    out[_LATENT_KEYS[1]] = every[torch.arange(every.shape[0]), k.to(every.device)]
    out["pseudo_offset"] = k
    return out


def _config(name: str, params: Mapping[str, Any], size: int) -> InfuseNetConfig:
    model = dict(params.get("model") or {})
    model["image_size"] = size
    for key in ("pretrained", "norm_scope", "eval_norm_scope"):
        if key in params:
            model[key] = params[key]
    if isinstance(model.get("pretrained"), str) and model["pretrained"].lower() in ("", "none"):
        model["pretrained"] = False
    try:
        cfg = InfuseNetConfig.from_mapping(model)
    except (TypeError, ValueError) as exc:
        raise MethodError(f"methods.{name}: {exc}") from exc
    pre = cfg.pretrained
    if not isinstance(pre, bool | str):
        raise MethodError(f"methods.{name}.pretrained must be false, true or the path of a local "
                          f"state_dict file, got {pre!r}")
    if isinstance(pre, str) and not Path(pre).is_file():
        raise MethodError(f"methods.{name}.pretrained: {pre}: weights file not found (false: "
                          "random init; true: ImageNet through torchvision/timm, a download)")
    return cfg


def _check_buildable(name: str, variant: str, cfg: InfuseNetConfig) -> None:
    """Build the network once on the ``meta`` device (no memory, no weights) so that a section
    the network rejects (norm scope, backbone, ViT sizes and blocks, latent channels) fails as a
    :class:`MethodError` before any data is read.  A weights file (``pretrained``: stage or a
    path) is loaded once on the CPU, so that weights of other widths fail here too."""
    try:
        with torch.device("meta"):
            build_infusenet_variant(variant, dataclasses.replace(cfg, pretrained=False))
        if isinstance(cfg.pretrained, str):
            build_infusenet_variant(variant, cfg)
    except (TypeError, ValueError) as exc:
        raise MethodError(f"methods.{name}: {exc}") from exc


def _inputs(name: str, variant: str, params: Mapping[str, Any],
            size: int) -> tuple[tuple[InputSpec, ...], tuple[str, ...]]:
    """The trainer inputs of a variant and the model's argument kinds (``flow``/``latent``/…)."""
    family, arch, kind = VARIANTS[variant]
    kinds = (kind,) if arch == "single" else ("flow", kind)
    specs: list[InputSpec] = []
    for k in kinds:
        if k == "flow":
            specs.append(InputSpec("flow", "flow", str(params.get("flow_pair", "onset_apex")),
                                   "flow", size))
        elif k == "latent":
            prep = functools.partial(resize_latent, side=size // 2)
            specs += [InputSpec(key, "magnified", ds, "array", size // 2, prep)
                      for key, ds in zip(_LATENT_KEYS, LATENT_DATASETS, strict=True)]
            if _pseudo_draw(name, params) == "per_epoch":
                specs.append(InputSpec(_PSEUDO_ALL_KEY, "magnified", PSEUDO_ALL_DATASET, "array",
                                       size // 2, functools.partial(resize_latents,
                                                                    side=size // 2)))
        else:
            magnifier = str(params.get("image_magnifier", "oh"))
            if magnifier not in ("oh", "stmemm"):
                raise MethodError(f"methods.{name}.image_magnifier must be oh or stmemm, "
                                  f"got {magnifier!r}")
            alpha = params.get("image_alpha", 10)
            if isinstance(alpha, bool) or not isinstance(alpha, int | float) or alpha <= 0:
                raise MethodError(f"methods.{name}.image_alpha must be a positive number (a "
                                  f"factor of magnify.frames.{magnifier}), got {alpha!r}")
            ds = f"frames/{magnifier}/{alpha_tag(alpha)}/apex"
            specs.append(InputSpec("image", "magnified", ds, "image", size))
    return tuple(specs), kinds


def _pseudo_draw(name: str, params: Mapping[str, Any]) -> str:
    draw = str(params.get("pseudo_apex_draw", "per_epoch"))
    if draw not in PSEUDO_APEX_DRAWS:
        raise MethodError(f"methods.{name}.pseudo_apex_draw must be one of {PSEUDO_APEX_DRAWS}, "
                          f"got {draw!r}")
    return draw


_E2E_KEYS = ("crop_onset", "crop_apex", "crop_window", "pseudo_fixed")


def _end_to_end(name: str, params: Mapping[str, Any], size: int) -> dict[str, Any] | None:
    """The end-to-end settings (``end_to_end: true``), checked; None when off."""
    if not params.get("end_to_end", False):
        return None
    if params["end_to_end"] is not True:
        raise MethodError(f"methods.{name}.end_to_end must be true or false, "
                          f"got {params['end_to_end']!r}")
    weights = Path(str(params.get("magnifier_weights", "models/magnifier/oh.pt")))
    if not weights.is_file():
        raise MethodError(f"methods.{name}.magnifier_weights: {weights}: Oh et al. magnifier "
                          "weights not found (run `dvc repro magnifier`)")
    crop = params.get("crop_size", 112)
    alpha = params.get("latent_alpha", 10)
    if isinstance(crop, bool) or not isinstance(crop, int) or crop < size:
        raise MethodError(f"methods.{name}.crop_size must be the faces.h5 crop side (flow.size) "
                          f">= input_size {size}, got {crop!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or alpha <= 0:
        raise MethodError(f"methods.{name}.latent_alpha must be a positive number, got {alpha!r}")
    kind = str(params.get("latent_kind", "difference"))
    if kind not in ("difference", "manipulated"):
        raise MethodError(f"methods.{name}.latent_kind must be difference or manipulated, "
                          f"got {kind!r}")
    return {"weights": weights, "crop": int(crop), "alpha": float(alpha), "kind": kind}


def _e2e_inputs(e2e: Mapping[str, Any], size: int) -> list[InputSpec]:
    c = e2e["crop"]
    return [InputSpec("crop_onset", "faces", f"crop{c}/onset", "image", size),
            InputSpec("crop_apex", "faces", f"crop{c}/apex", "image", size),
            InputSpec("crop_window", "faces", f"crop{c}/pseudo_apex", "image", size),
            InputSpec("pseudo_fixed", "magnified", "pseudo_apex_offset", "array", None,
                      _as_vector)]


def _as_vector(value: np.ndarray) -> np.ndarray:
    """A stored scalar (e.g. ``pseudo_apex_offset``) as a (1,) float32 array (a batch: (B, 1))."""
    return np.asarray(value, dtype=np.float32).reshape(1)


def redraw_pseudo_offset(batch: dict[str, torch.Tensor], gen: torch.Generator,
                         max_offset: int = 5) -> dict:
    """End-to-end training batch: a fresh pseudo-apex offset k ~ U{0, …, K} per sample
    (``pseudo_offset``, (B,) int64; K = min(``max_offset``, window − 1)), as
    :func:`redraw_pseudo_apex` does for cached latents."""
    n_k = min(max_offset + 1, batch["crop_window"].shape[1])
    out = dict(batch)
    out["pseudo_offset"] = torch.randint(0, n_k, (batch["crop_window"].shape[0],), generator=gen)
    return out


def _e2e_forward(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    window = batch["crop_window"]  # (B, W, 3, S, S)
    k = batch.get("pseudo_offset")
    if k is None:  # evaluation: the cache's fixed-seed draw
        k = batch["pseudo_fixed"].reshape(-1).long()
    pseudo = window[torch.arange(window.shape[0], device=window.device), k.to(window.device)]
    return model(batch, batch["crop_onset"], batch["crop_apex"], pseudo)


def _model_args(kinds: Sequence[str], batch: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    args = []
    for k in kinds:
        if k == "latent":  # Eq. 2: Mag(onset, apex) ‖ Mag(onset, pseudo-apex), channel-wise
            args.append(torch.cat([batch[_LATENT_KEYS[0]], batch[_LATENT_KEYS[1]]], dim=1))
        else:
            args.append(batch[k])
    return args


@register("infusenet")
def _infusenet(name: str, params: dict[str, Any]) -> MethodSpec:
    """The spec of one InfuseNet table variant (module docstring)."""
    variant = str(params.get("variant", name))
    if variant not in VARIANTS:
        raise MethodError(f"methods.{name}.variant must be one of {sorted(VARIANTS)}, "
                          f"got {variant!r}")
    task = str(params.get("task", "au"))
    protocol = str(params.get("protocol", "cd6me"))
    if task != "au":
        raise MethodError(f"methods.{name}: InfuseNet detects the 12 CD6ME AUs (task: au), "
                          f"got task {task!r}")
    raw_size = params.get("input_size", 224)
    if isinstance(raw_size, bool) or not isinstance(raw_size, int):
        raise MethodError(f"methods.{name}.input_size must be an integer (pixels), "
                          f"got {raw_size!r}")
    size = int(raw_size)
    family, arch, _ = VARIANTS[variant]
    # validate sizes and settings now (a bad section fails before any data is read)
    if size < 16 or size % (16 if family == "vit" else 2):
        raise MethodError(f"methods.{name}.input_size must be even (ViT: a multiple of 16) and "
                          f">= 16 px, got {size}")
    model_block = params.get("model") or {}
    backbone = (model_block.get("cnn_backbone", "resnet18") if family == "cnn"
                else model_block.get("vit_backbone", "vit_tiny"))
    try:
        pretrained, source = resolve_for_method(params.get("pretrained", False), str(backbone),
                                                f"methods.{name}.pretrained")
    except PretrainError as exc:
        raise MethodError(str(exc)) from None
    made = not isinstance(pretrained, str) or Path(pretrained).is_file()
    cfg = _config(name, {**params, "pretrained": pretrained if made else False}, size)
    _check_buildable(name, variant, cfg)
    if not made:  # stage weights not made yet: the builder fails on the file, one line
        cfg = dataclasses.replace(cfg, pretrained=str(pretrained))
    e2e = _end_to_end(name, params, size)
    if e2e is not None:
        if VARIANTS[variant][2] != "latent":
            raise MethodError(f"methods.{name}.end_to_end: variant {variant!r} reads no "
                              "magnified latent")
        inputs, kinds = _inputs(name, variant, {**params, "pseudo_apex_draw": "fixed"}, size)
        inputs = tuple(i for i in inputs if i.cache != "magnified") + tuple(_e2e_inputs(e2e,
                                                                                        size))
    else:
        inputs, kinds = _inputs(name, variant, params, size)

    aux = float(params.get("aux_flow_loss", 0.0) or 0.0)
    if aux < 0:
        raise MethodError(f"methods.{name}.aux_flow_loss must be >= 0, got {aux}")
    if aux and e2e is not None:
        raise MethodError(f"methods.{name}: aux_flow_loss is not available with end_to_end")
    if aux and arch != "infuse":
        raise MethodError(f"methods.{name}.aux_flow_loss applies to InfuseNet variants only "
                          f"(FrameFlow logits through the shared head), not {variant!r}")
    hflip = float((params.get("augment") or {}).get("hflip", 0.0) or 0.0)
    if hflip > 0 and "latent" in kinds:
        raise MethodError(
            f"methods.{name}.augment.hflip: variant {variant!r} reads the magnified latent; "
            "mirroring a latent map is not the latent of the mirrored face (set hflip: 0)")

    def build(ctx: FoldContext) -> nn.Module:
        require_made(source, str(backbone), f"methods.{name}.pretrained")
        net = build_infusenet_variant(variant, dataclasses.replace(cfg, num_classes=ctx.n_outputs))
        if e2e is None:
            return net
        from pipeline.magnification.train import load_magnifier
        from pipeline.models.infusenet import EndToEndInfuseNet, MagnifierLatent

        magnifier, meta = load_magnifier(e2e["weights"])
        if meta.get("kind") != "oh":
            raise MethodError(f"methods.{name}.magnifier_weights: {e2e['weights']} holds a "
                              f"{meta.get('kind')!r} magnifier, not Oh et al.'s")
        return EndToEndInfuseNet(net, MagnifierLatent(magnifier.train(), e2e["alpha"],
                                                      e2e["kind"]))

    def forward(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> Any:
        if e2e is not None:
            return _e2e_forward(model, batch)
        args = _model_args(kinds, batch)
        if aux and model.training and isinstance(model, InfuseNet):
            return model.forward_both(*args)
        return model(*args)

    build_loss = None
    if aux:
        def build_loss(ctx: FoldContext):
            main = default_loss(ctx, default_logits)
            flow = default_loss(ctx, lambda out: out[1])

            def loss(outputs: Any, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
                if isinstance(outputs, tuple):  # training: (InfuseNet logits, FrameFlow logits)
                    return main(outputs, batch) + aux * flow(outputs, batch)
                return main(outputs, batch)

            return loss

    transform = None
    if hflip > 0:
        def transform(batch: dict[str, torch.Tensor], gen: torch.Generator) -> dict:
            return flow_hflip(batch, gen, hflip, flow_keys=("flow",), image_keys=("image",))
    elif "latent" in kinds and _pseudo_draw(name, params) == "per_epoch":
        transform = redraw_pseudo_apex if e2e is None else redraw_pseudo_offset

    return MethodSpec(task=task, protocol=protocol, inputs=inputs, build_model=build,
                      build_loss=build_loss, forward=forward, train_transform=transform,
                      init_weights=source)


# --------------------------------------------------------------------------------------------
# Grad-CAM figure (Sec. 4.5, Fig. 5) from the trained checkpoints
# --------------------------------------------------------------------------------------------


class _SpecModule(nn.Module):
    """A trained method's model called with its inputs positionally, in ``spec.inputs`` order.

    ``forward(*tensors)`` builds the trainer's batch dict and runs the method's own forward, so
    Grad-CAM (:func:`pipeline.models.gradcam.gradcam_maps`) sees a plain multi-input model whose
    layers are ``model.<name>``.
    """

    def __init__(self, spec: MethodSpec, model: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.model = model
        self.keys = tuple(i.key for i in spec.inputs)
        self.image_size = getattr(model, "image_size", None)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        batch = dict(zip(self.keys, tensors, strict=True))
        if self.spec.forward is not None:
            out = self.spec.forward(self.model, batch)
        else:
            out = self.model(*tensors)
        return (self.spec.logits or default_logits)(out)


def build_fold_model(method: str, params: Mapping[str, Any], fold: str,
                     models_dir: str | os.PathLike,
                     device: torch.device | str = "cpu") -> tuple[MethodSpec, nn.Module]:
    """Rebuild a trained CD6ME method's network for one fold and load its checkpoint.

    Parameters
    ----------
    method : str
        Method name (``methods.<method>`` of ``params.yaml``, stage ``train@<method>``).
    params : mapping
        The method's resolved section merged over ``train:``
        (:func:`pipeline.params.method_params`).
    fold : str
        Fold name (the held-out database, e.g. ``casme2``).
    models_dir : path
        ``models/`` (the checkpoint is ``models/<method>/<fold>.pt``).
    device : torch.device or str

    Returns
    -------
    (MethodSpec, nn.Module)
        The spec and a :class:`_SpecModule` wrapping the network, in eval mode; called with the
        spec's inputs positionally it returns (B, 12) AU logits.

    Raises
    ------
    MethodError
        If the method is not a trained AU method.
    FileNotFoundError
        If the checkpoint is missing (naming it and the stage that writes it).
    ValueError
        If the checkpoint belongs to another method or fold, or does not fit the network.
    """
    from pipeline.pretrain.weights import without_pretrained
    from pipeline.training.registry import build_method

    spec = build_method(method, without_pretrained(params))  # the checkpoint's weights follow
    if spec.build_model is None or spec.task != "au":
        raise MethodError(f"{method}: Grad-CAM needs a trained AU detection method")
    path = Path(models_dir) / method / f"{fold}.pt"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: checkpoint of method {method!r}, fold {fold!r} not found (run `dvc repro "
            f"train@{method}` with save_checkpoints: true)")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
        raise ValueError(f"{path}: expected a dict with 'state_dict' (trainer checkpoint)")
    if ckpt.get("method", method) != method or ckpt.get("fold", fold) != fold:
        raise ValueError(f"{path}: checkpoint of {ckpt.get('method')!r}/{ckpt.get('fold')!r}, "
                         f"expected {method!r}/{fold!r}")
    from pipeline.training.protocols import Fold

    ctx = FoldContext(method=method, task="au", fold=Fold(fold, fold, "au", np.zeros(0, int),
                                                          np.zeros(0, int)),
                      n_outputs=len(CD6ME_AUS), class_names=tuple(CD6ME_AUS),
                      train_targets=np.zeros((0, len(CD6ME_AUS))), train_subjects=(),
                      seed=int(ckpt.get("seed", 0)), params=dict(params),
                      device=torch.device(device))
    net = spec.build_model(ctx)
    try:
        net.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit methods.{method} as configured now "
                         f"({exc})") from exc
    return spec, _SpecModule(spec, net).to(device).eval()


class GradcamColumn:
    """One column of the Grad-CAM figure: a title, a trained method and its target layer.

    Parameters
    ----------
    title : str
        Column title (``FrameFlow``, ``FrameMag``, ``InfuseNet``).
    method : str
        Method name whose ``models/<method>/<fold>.pt`` is explained.
    layer : str
        Dotted layer name inside the network (``layer4`` of a torchvision ResNet,
        ``backbone.layer4`` of a single stream, ``infusion.3`` = InfuseNet's infused FrameMag
        ``layer4``).
    """

    def __init__(self, title: str, method: str, layer: str) -> None:
        self.title, self.method, self.layer = str(title), str(method), str(layer)

    def __repr__(self) -> str:
        return f"GradcamColumn({self.title!r}, {self.method!r}, {self.layer!r})"


def gradcam_columns(networks: Mapping[str, Mapping[str, Any]]) -> list[GradcamColumn]:
    """Columns from the ``gradcam.networks`` mapping (title → ``{method, layer}``).

    Raises
    ------
    ValueError
        If the mapping is empty or an entry lacks ``method`` or ``layer``.
    """
    if not networks:
        raise ValueError("gradcam.networks must name at least one network")
    cols = []
    for title, entry in networks.items():
        if not isinstance(entry, Mapping) or not entry.get("method") or not entry.get("layer"):
            raise ValueError(f"gradcam.networks.{title} needs 'method' and 'layer', got {entry!r}")
        cols.append(GradcamColumn(title, entry["method"], entry["layer"]))
    return cols


def select_gradcam_samples(table, fold: str, au: str, n: int) -> list[int]:
    """Rows of the test samples shown: the fold's samples with ``au`` present, by sample id.

    Parameters
    ----------
    table : DataFrame
        The CD6ME table (:func:`pipeline.training.protocols.cd6me_table`).
    fold : str
        Held-out database of the fold.
    au : str
        One of :data:`CD6ME_AUS`.
    n : int
        Number of samples wanted; when the fold has fewer with ``au``, the rest are samples
        without it (labelled so in the figure).

    Returns
    -------
    list of int
        Row positions into ``table``, AU-positive first, each group in sample-id order.

    Raises
    ------
    ValueError
        Unknown AU, a fold without samples, or ``n`` < 1.
    """
    if au not in CD6ME_AUS:
        raise ValueError(f"gradcam.au must be one of {list(CD6ME_AUS)}, got {au!r}")
    if n < 1:
        raise ValueError(f"gradcam.n_samples must be >= 1, got {n}")
    test = table.index[table["database"] == fold]
    if not len(test):
        raise ValueError(f"gradcam.fold {fold!r}: no CD6ME test sample; databases: "
                         f"{sorted(set(table['database']))}")
    order = table.loc[test].sort_values("sample_id")
    pos = [int(i) for i in order.index[order[au] == 1]]
    neg = [int(i) for i in order.index[order[au] == 0]]
    if len(pos) < n:
        log.warning("gradcam: fold %s has %d test samples with %s; %d without it are shown too",
                    fold, len(pos), au, min(n - len(pos), len(neg)))
    return (pos + neg)[:n]


def render_gradcam_figure(columns: Sequence[GradcamColumn], params: Mapping[str, Any],
                          samples, features_dir: str | os.PathLike,
                          models_dir: str | os.PathLike, out_path: str | os.PathLike, *,
                          au: str, fold: str, n_samples: int = 4,
                          data_label: str = "", device: str = "cpu") -> dict[str, Any]:
    """Grad-CAM of one AU logit for a few test samples of one fold, one column per network.

    InfuseNet Sec. 4.5, Fig. 5: FrameFlow, FrameMag and InfuseNet side by side; the maps are
    those of :func:`pipeline.models.gradcam.gradcam_maps` (grad-cam library), drawn over the
    apex crop (``faces.h5`` ``crop{S}/apex``, S the flow cache's side) with
    :func:`pipeline.models.gradcam.save_gradcam_figure`.  Every network is the checkpoint of
    the same fold, so every sample shown is a test sample for all of them.  Each overlay is
    labelled with the network's probability of the AU; "map 0" marks a map that is zero
    everywhere (Grad-CAM keeps positive evidence only: a network that sees none for the AU there
    has an empty map).

    Parameters
    ----------
    columns : sequence of GradcamColumn
    params : mapping
        The whole ``params.yaml`` (each method's section is resolved for the ``config`` switch).
    samples : DataFrame
        ``samples.csv``.
    features_dir, models_dir : path
        ``data/features`` and ``models``.
    out_path : path
        The PNG.
    au : str
        The AU whose logit is explained (e.g. ``AU1``).
    fold : str
        The fold (held-out database).
    n_samples : int
        Rows of the figure.
    data_label : str
        ``standin-quick`` etc.; a stand-in label puts "STAND-IN DATA" in the title.
    device : str

    Returns
    -------
    dict
        ``{"au", "fold", "samples": [...], "probabilities": {title: [...]}}``: what is drawn.

    Raises
    ------
    FileNotFoundError, ValueError, MethodError, pipeline.features.cache.CacheError
        A missing checkpoint or cache, a layer the network lacks, a bad AU or fold.
    """
    from pipeline.features.cache import FeatureCache
    from pipeline.models.gradcam import gradcam_maps, save_gradcam_figure
    from pipeline.params import method_params
    from pipeline.training.data import FeatureStore
    from pipeline.training.protocols import cd6me_table

    table = cd6me_table(samples)
    rows = select_gradcam_samples(table, fold, au, n_samples)
    ids = table.loc[rows, "sample_id"].tolist()
    au_index = list(CD6ME_AUS).index(au)
    flow_cache = FeatureCache(Path(features_dir) / "flow.h5", "flow")
    side = int(flow_cache.datasets["onset_apex"][0][1])
    faces = FeatureCache(Path(features_dir) / "faces.h5", "faces")
    apex_ds = f"crop{side}/apex"
    absent = [s for s in ids if s not in faces]
    if absent:
        raise ValueError(f"{faces.path}: samples {absent} absent (their apex crops are drawn)")
    backgrounds = faces.read(apex_ds, [faces.index_of(s) for s in ids])
    maps: dict[str, np.ndarray] = {}
    probs: dict[str, list[float]] = {}
    for col in columns:
        mparams = method_params(params, col.method)
        spec, model = build_fold_model(col.method, mparams, fold, models_dir, device)
        store = FeatureStore(spec.inputs, ids, features_dir, preload=True,
                             flow_norm=str(mparams.get("flow_norm", "sample")),
                             flow_quantile=float(mparams.get("flow_quantile", 0.99)))
        if store.missing:
            raise ValueError(f"{col.method}: samples {store.missing} lack features; choose "
                             "another gradcam.fold or AU")
        items = [store.item(i) for i in range(len(ids))]
        tensors = [torch.stack([it[k] for it in items]).to(device) for k in model.keys]
        with torch.no_grad():
            probs[col.title] = torch.sigmoid(model(*tensors)[:, au_index]).cpu().tolist()
        maps[col.title] = gradcam_maps(model, tensors, au_index, f"model.{col.layer}",
                                       output_size=side)
        log.info("gradcam: %s (%s, %s) done", col.title, col.method, col.layer)
    labels = []
    for r, sid in enumerate(ids):
        present = "present" if int(table.loc[rows[r], au]) else "absent"
        labels.append(f"{sid}\n{au} {present}")
    cells = {t: [f"p({au}) {v:.2f}" + ("" if maps[t][r].any() else ", map 0")
                 for r, v in enumerate(probs[t])] for t in probs}
    standin = data_label.startswith("standin")
    title = (f"Grad-CAM of the {au} logit, test samples of fold {fold}"
             + (f" — STAND-IN DATA ({data_label})" if standin else
                (f" — {data_label}" if data_label else "")))
    save_gradcam_figure(out_path, backgrounds, maps, row_labels=labels, cell_labels=cells,
                        title=title)
    log.info("gradcam: %s for %d samples of fold %s → %s", au, len(ids), fold, out_path)
    return {"au": au, "fold": fold, "samples": ids, "probabilities": probs}

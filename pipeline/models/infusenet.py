"""InfuseNet and the networks of its comparison tables (micro-AU detection, CD6ME).

Khor, Li, Jiang, Zhao, "Infused Suppression Of Magnification Artefacts For Micro-AU Detection",
SCIA 2025 (the workplace's ``shared/papers/infusenet_scia2025.txt``; METHODS.md, "InfuseNet").

Two unshared backbones (Sec. 3, Fig. 2):

* **FrameFlow** takes the optical-flow image I_OF = (u, v, ε) of onset → apex (Eq. 3–5), shape
  (B, 3, S, S), S = 224 in the paper.
* **FrameMag** takes the magnified latents of the learned magnifier (Oh et al. 2018, shape-only
  encoder + manipulator, Eq. 1) concatenated channel-wise, feat = Mag(onset, apex) ‖
  Mag(onset, pseudo-apex) (Eq. 2): 2 × 32 = 64 channels at S/2, shape (B, 64, S/2, S/2),
  channels 0–31 from ``magnified.h5`` ``latent/onset_apex``, 32–63 from ``latent/onset_pseudo``
  (the manipulator's magnified difference, ``OhMagNet.magnified_difference``).  For a
  ResNet this is exactly the output shape of ``conv1`` (64 × 112 × 112 for S = 224), and the
  latent enters **in place of conv1's output**.  Following the authors' public code (ref. code),
  ``bn1`` is skipped and the latent goes through ``relu`` and ``maxpool`` into ``layer1``
  (``latent_bn=True`` applies the ImageNet ``bn1`` as well).

Feature infusion (Sec. 3.3, Eq. 6–8): after ``layer1`` … ``layer4`` and after global average
pooling, the FrameFlow features are min-max normalised into a soft attention mask
A = Norm(F_of) (Eq. 6) that multiplies the FrameMag features, F_infusion = F_feature ⊙ A (Eq. 7);
the infused features feed FrameMag's next block (Eq. 8).  FrameMag's pooled, infused features go
through a linear layer to 12 multi-label AU logits (CD6ME order :data:`CD6ME_AUS`).  The mask is
not detached, so FrameFlow is trained through the infusion (as in the ref. code).

What is ours, not the paper's:

* the normalisation scope is a parameter (:func:`minmax_normalise`): ``"tensor"`` (one min and
  max over the whole batch tensor, as the ref. code; default), ``"sample"`` or ``"channel"``;
* the scope at evaluation (``eval_norm_scope``) is separate and by default never ``"tensor"``:
  with the ref. code's batch scope at test time each prediction depends on the other test
  samples of its batch (transductive: on the quick stand-in 13 % of the AU decisions flipped
  between batch 64 and batch 1).  Default (``eval_norm_scope: null``): the training scope, except
  that ``"tensor"`` becomes ``"sample"``; ``eval_norm_scope: tensor`` restores the ref. code's
  transductive test (a warning says so);
* where a scope is constant (max − min ≤ ``eps``) the mask is 0 there, instead of the ref.
  code's 0/0 = NaN.  This is the value every element equal to its scope's minimum gets anyway
  ("no flow activity → filtered off", Sec. 3.3); no NaN reaches values or gradients;
* the ViT-Tiny variants.  Table 1 names the backbone "ViT-Tiny [26]" (the reference is TinyViT,
  Wu et al. 2022, but the text speaks of "patch-based learning" with a global receptive field);
  we use timm's plain ``vit_tiny_patch16_224`` at ``img_size = S``.  The paper does not say how
  the 64-channel latent enters a ViT nor where it infuses: the latent (S/2 × S/2) gets its own
  patch embedding with patch 8 (= patch 16 at full resolution), so both streams have the same
  (S/16)² token grid; infusion happens after every third transformer block (blocks 3, 6, 9, 12
  by default, mirroring ResNet's four stages; configurable) on all tokens including the class
  token, and after pooling (the class token after the final LayerNorm).  As the ViT pools the
  class token, the infusion after the last block acts on the output through that token only;
* ``forward_both`` also returns FrameFlow's logits through the same linear layer, as the ref.
  code shares one classifier between the streams; the paper fine-tunes both networks, without
  saying whether FrameFlow's logits are supervised.

Pseudo-apex (Sec. 3.1): a frame in [0, 5] after the annotated apex drawn with a fixed seed
(:func:`draw_pseudo_apex_offsets`); the ref. code uses one offset for every sample (``"fixed"``).

Variants (:func:`build_infusenet_variant`, Tables 1–3): ``resnet18_flow``, ``resnet18_mag``,
``late_fusion``, ``infusenet``, ``infusenet_image``, ``vit_tiny_flow``, ``vit_tiny_mag``,
``vit_tiny_late_fusion``, ``infusenet_vit``.  Every model has ``input_names`` (the order of its
``forward`` arguments, among ``flow``, ``latent``, ``image``) and ``input_shapes``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from pipeline.databases.aus import CD6ME_AU_COLUMNS
from pipeline.models.backbones import backbone_family, build_backbone, feature_dim

log = logging.getLogger(__name__)

__all__ = [
    "CD6ME_AUS",
    "EndToEndInfuseNet",
    "MagnifierLatent",
    "NORM_SCOPES",
    "PAPER_F1",
    "PUBLISHED_KEYS",
    "VARIANTS",
    "FlowInfusion",
    "InfuseNet",
    "InfuseNetConfig",
    "LATENT_NORMS",
    "LateFusionNet",
    "SingleStreamNet",
    "abs_quantile",
    "build_infusenet_variant",
    "draw_pseudo_apex_offsets",
    "minmax_normalise",
    "resolve_eval_scope",
    "scale_latent",
]

#: The 12 CD6ME action units, in the order of the logits (Varanka et al. 2023; InfuseNet Table 1).
CD6ME_AUS: tuple[str, ...] = CD6ME_AU_COLUMNS

NORM_SCOPES: tuple[str, ...] = ("tensor", "sample", "channel")

INPUT_KINDS: tuple[str, ...] = ("flow", "latent", "image")


# --------------------------------------------------------------------------------------------
# Pseudo-apex draw (Sec. 3.1)
# --------------------------------------------------------------------------------------------


def _hash_offset(key: str, n_values: int) -> int:
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % n_values


def draw_pseudo_apex_offsets(
    sample_ids: Iterable[str],
    seed: int,
    max_offset: int = 5,
    *,
    mode: str = "per_sample",
    fixed_offset: int | None = None,
) -> dict[str, int]:
    """Draw the pseudo-apex offset (frames after the annotated apex) of each sample.

    InfuseNet Sec. 3.1: "we sample a pseudo-apex frame within the range of [0, 5] frame from the
    annotated apex frame's position with a fixed seed".  The offset indexes the pseudo-apex
    window of ``faces.h5`` / ``flow.h5`` (annotated apex + 0..W−1, clipped at the offset frame).

    Parameters
    ----------
    sample_ids : iterable of str
        Sample ids (``"{database}/{subject}/{material}"``).
    seed : int
        The draw's seed.  Each sample's offset is a function of ``(seed, sample_id)`` only
        (SHA-256), so it does not depend on the order or the set of the other ids, on the
        Python hash seed, or on the process.  Pass e.g. ``seed + epoch`` to redraw per epoch.
    max_offset : int
        Largest offset in frames (paper: 5); offsets are uniform on {0, …, max_offset}.
    mode : {"per_sample", "fixed"}
        ``"per_sample"`` (paper): one draw per sample.  ``"fixed"`` (ref. code): the same offset
        for every sample, ``fixed_offset`` if given, else drawn once from ``seed``.
    fixed_offset : int, optional
        The offset of ``"fixed"`` mode, in [0, max_offset].

    Returns
    -------
    dict of str to int
        Offset in frames per sample id, each in [0, max_offset].

    Raises
    ------
    ValueError
        Negative ``max_offset``, unknown ``mode``, ``fixed_offset`` out of range or given in
        ``"per_sample"`` mode, or a sample id that is not a string.
    """
    if max_offset < 0:
        raise ValueError(f"max_offset must be >= 0 frames, got {max_offset}")
    if mode not in ("per_sample", "fixed"):
        raise ValueError(f"mode must be 'per_sample' or 'fixed', got {mode!r}")
    ids = list(sample_ids)
    bad = [s for s in ids if not isinstance(s, str)]
    if bad:
        raise ValueError(f"sample ids must be strings, got {bad[:3]!r}")
    n_values = max_offset + 1
    if mode == "fixed":
        if fixed_offset is None:
            fixed_offset = _hash_offset(f"infusenet-pseudo-apex|{int(seed)}|fixed", n_values)
        if not 0 <= fixed_offset <= max_offset:
            raise ValueError(
                f"fixed_offset must be in [0, {max_offset}] frames, got {fixed_offset}"
            )
        return dict.fromkeys(ids, int(fixed_offset))
    if fixed_offset is not None:
        raise ValueError("fixed_offset is only used with mode='fixed'")
    return {s: _hash_offset(f"infusenet-pseudo-apex|{int(seed)}|{s}", n_values) for s in ids}


# --------------------------------------------------------------------------------------------
# Infusion (Eq. 6-7)
# --------------------------------------------------------------------------------------------


def minmax_normalise(
    x: torch.Tensor, scope: str = "tensor", *, channel_dim: int = 1, eps: float = 1e-6
) -> torch.Tensor:
    """Min-max normalise features into a soft attention mask, A = Norm(F_of) (InfuseNet Eq. 6).

    Parameters
    ----------
    x : Tensor of shape (B, C, H, W), (B, N, D) or (B, C), floating
        FrameFlow features (CNN maps, ViT tokens or pooled vectors).
    scope : {"tensor", "sample", "channel"}
        Where min and max are taken: ``"tensor"`` over the whole batch tensor (ref. code);
        ``"sample"`` per sample over all its features; ``"channel"`` per sample and channel over
        the remaining (spatial / token) axes.  For a 2-D input (pooled features, no spatial axis)
        or a 1 × 1 map (``layer4`` of a ResNet below 64 px input) ``"channel"`` would reduce over
        a single value and zero every feature, so it falls back to ``"sample"``.
    channel_dim : int
        The channel axis for ``"channel"``: 1 for (B, C, H, W), −1 for ViT tokens (B, N, D).
    eps : float
        A scope whose range max − min is <= eps counts as constant and gets A = 0.

    Returns
    -------
    Tensor, same shape and dtype as ``x``
        Values in [0, 1]: 0 at each scope's minimum, 1 at its maximum; 0 on constant scopes.
        Computed in float32.

    Raises
    ------
    ValueError
        Unknown ``scope``, fewer than 2 axes, or ``channel_dim`` pointing at the batch axis.
    """
    if scope not in NORM_SCOPES:
        raise ValueError(f"norm scope must be one of {NORM_SCOPES}, got {scope!r}")
    if x.ndim < 2:
        raise ValueError(
            f"expected features with a batch axis and >= 1 more, got shape {tuple(x.shape)}"
        )
    xf = x.float()
    if scope == "tensor":
        dims = tuple(range(xf.ndim))
    elif scope == "sample" or xf.ndim == 2:
        dims = tuple(range(1, xf.ndim))
    else:
        cd = channel_dim % xf.ndim
        if cd == 0:
            raise ValueError("channel_dim must not be the batch axis (0)")
        dims = tuple(d for d in range(1, xf.ndim) if d != cd)
        if all(xf.shape[d] == 1 for d in dims):  # e.g. a 1 × 1 layer4 map of a small input
            dims = tuple(range(1, xf.ndim))
    lo = xf.amin(dim=dims, keepdim=True)
    span = xf.amax(dim=dims, keepdim=True) - lo
    mask = (xf - lo) / span.clamp_min(eps)
    mask = torch.where(span > eps, mask, torch.zeros_like(mask))
    return mask.to(x.dtype)


def resolve_eval_scope(scope: str, eval_scope: str | None) -> str:
    """The normalisation scope at evaluation: ``eval_scope``, or by default (None) the training
    ``scope`` with ``"tensor"`` replaced by ``"sample"`` (a test prediction must not depend on the
    other samples of its batch).

    Raises
    ------
    ValueError
        On an unknown scope.
    """
    for s in (scope, eval_scope):
        if s is not None and s not in NORM_SCOPES:
            raise ValueError(f"norm scope must be one of {NORM_SCOPES}, got {s!r}")
    if eval_scope is None:
        return "sample" if scope == "tensor" else scope
    return eval_scope


class FlowInfusion(nn.Module):
    """One infusion point: F_infusion = F_mag ⊙ Norm(F_flow) (InfuseNet Eq. 6–7).

    Parameters
    ----------
    scope : {"tensor", "sample", "channel"}
        Normalisation scope in training mode, see :func:`minmax_normalise`.
    channel_dim : int
        Channel axis of the features (1 for CNN maps, −1 for ViT tokens).
    eps : float
        Constant-scope threshold of :func:`minmax_normalise`.
    eval_scope : {"tensor", "sample", "channel"}, optional
        Scope in eval mode (:func:`resolve_eval_scope`; default: ``scope``, ``"tensor"`` →
        ``"sample"``).  ``"tensor"`` makes test predictions depend on their batch.
    """

    def __init__(self, scope: str = "tensor", channel_dim: int = 1, eps: float = 1e-6,
                 eval_scope: str | None = None) -> None:
        super().__init__()
        self.eval_scope = resolve_eval_scope(scope, eval_scope)
        self.scope = scope
        self.channel_dim = channel_dim
        self.eps = eps

    def forward(self, f_mag: torch.Tensor, f_flow: torch.Tensor) -> torch.Tensor:
        """Infuse FrameFlow features into FrameMag features.

        Parameters
        ----------
        f_mag, f_flow : Tensor, same shape (B, C, H, W), (B, N, D) or (B, C)
            FrameMag and FrameFlow features of the same stage.

        Returns
        -------
        Tensor, shape of ``f_mag``
            ``f_mag * minmax_normalise(f_flow)``.

        Raises
        ------
        ValueError
            If the shapes differ (the two streams were fed inputs of inconsistent sizes).
        """
        if f_mag.shape != f_flow.shape:
            raise ValueError(
                f"infusion needs FrameMag and FrameFlow features of the same shape, got "
                f"{tuple(f_mag.shape)} and {tuple(f_flow.shape)}"
            )
        scope = self.scope if self.training else self.eval_scope
        return f_mag * minmax_normalise(f_flow, scope, channel_dim=self.channel_dim, eps=self.eps)

    def extra_repr(self) -> str:
        return (f"scope={self.scope!r}, eval_scope={self.eval_scope!r}, "
                f"channel_dim={self.channel_dim}, eps={self.eps}")


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InfuseNetConfig:
    """Model settings of the InfuseNet family (the ``model`` block of a method's parameters).

    Attributes
    ----------
    image_size : int
        Side S of the optical-flow image and decoded magnified image, pixels (paper: 224; must be
        even for ResNets, a multiple of 16 for ViT-Tiny).  The latent is S/2 × S/2.
    num_classes : int
        Multi-label outputs (the 12 CD6ME AUs).
    pretrained : bool or str
        False (random init; quick default, offline), True (ImageNet through torchvision / timm;
        the paper's setting, Sec. 4.2) or the path of a local ImageNet state_dict file.
    norm_scope : {"tensor", "sample", "channel"}
        Infusion normalisation scope in training (ref. code: "tensor").
    eval_norm_scope : {"tensor", "sample", "channel"} or None
        Scope at evaluation; None: ``norm_scope`` with ``"tensor"`` → ``"sample"``
        (:func:`resolve_eval_scope`); ``"tensor"`` is transductive (the ref. code's test).
    norm_eps : float
        Constant-scope threshold of the normalisation.
    latent_channels : int
        Channels of the magnified latent Mag(onset, apex) ‖ Mag(onset, pseudo-apex) (2 × 32).
    latent_bn : bool
        Apply FrameMag's ``bn1`` to the latent before ``relu`` (ref. code: False).
    latent_norm : {"none", "sample"}
        ``"sample"`` divides each sample's Mag(onset, apex) and Mag(onset, pseudo-apex) by the
        99th percentile of their absolute values (:func:`scale_latent`) before FrameMag;
        ``"none"`` feeds the latent as the magnifier gives it (ref. code).  Ours: the stand-in's apex motions span a factor of ten, and so do
        the latents' magnitudes (the ``flow_norm: sample`` of the flow input, for the latent).
    cnn_backbone : str
        Backbone of the ResNet variants (paper: ``resnet18``).
    cnn_widths : tuple of 4 int or None
        Output channels of ``layer1`` ... ``layer4`` of both ResNet streams (None: the library's
        64/128/256/512, the paper's).  Ours, for quick CPU runs: the 64-channel stem the latent
        replaces is kept (:func:`pipeline.models.backbones.build_backbone`).
    vit_backbone : str
        Backbone of the ViT variants (``vit_tiny`` = timm ``vit_tiny_patch16_224``).
    latent_patch_size : int
        ViT patch side on the S/2 latent, pixels (8 ↔ 16 at full resolution).
    vit_infusion_blocks : tuple of int
        0-based transformer blocks after which the ViT InfuseNet infuses (default every third).
    """

    image_size: int = 224
    num_classes: int = len(CD6ME_AUS)
    pretrained: bool | str = False
    norm_scope: str = "tensor"
    eval_norm_scope: str | None = None
    norm_eps: float = 1e-6
    latent_channels: int = 64
    latent_bn: bool = False
    latent_norm: str = "none"
    cnn_backbone: str = "resnet18"
    cnn_widths: tuple[int, ...] | None = None
    vit_backbone: str = "vit_tiny"
    latent_patch_size: int = 8
    vit_infusion_blocks: tuple[int, ...] = (2, 5, 8, 11)

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> InfuseNetConfig:
        """Build from a mapping (e.g. a ``params.yaml`` block); unknown keys are an error.

        Raises
        ------
        ValueError
            On keys that are not fields of this class.
        """
        cfg = dict(cfg or {})
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - names)
        if unknown:
            raise ValueError(
                f"unknown InfuseNet model settings {unknown}; expected keys among {sorted(names)}"
            )
        if cfg.get("cnn_widths") is not None:
            cfg["cnn_widths"] = tuple(int(w) for w in cfg["cnn_widths"])
        if "vit_infusion_blocks" in cfg:
            cfg["vit_infusion_blocks"] = tuple(int(b) for b in cfg["vit_infusion_blocks"])
        if isinstance(cfg.get("pretrained"), os.PathLike):
            cfg["pretrained"] = os.fspath(cfg["pretrained"])
        return cls(**cfg)


# --------------------------------------------------------------------------------------------
# Streams: stem / stages / pooling of a torchvision ResNet or a timm ViT
# --------------------------------------------------------------------------------------------


def _is_vit(net: nn.Module) -> bool:
    return hasattr(net, "blocks") and hasattr(net, "patch_embed")


def _build_stream(backbone: str, input_kind: str, cfg: InfuseNetConfig, *, vit: bool) -> nn.Module:
    """A backbone without classifier, fitted to one input kind (``flow``, ``latent``, ``image``)."""
    if input_kind not in INPUT_KINDS:
        raise ValueError(f"input kind must be one of {INPUT_KINDS}, got {input_kind!r}")
    size = cfg.image_size
    if vit:
        if size % 16 or (size // 2) % cfg.latent_patch_size:
            raise ValueError(
                f"ViT variants need image_size divisible by 16 and image_size/2 by "
                f"latent_patch_size={cfg.latent_patch_size}, got image_size={size}"
            )
        if input_kind == "latent":
            return build_backbone(
                backbone, cfg.latent_channels, cfg.pretrained, num_classes=0,
                image_size=size // 2, patch_size=cfg.latent_patch_size,
            )  # fmt: skip
        return build_backbone(backbone, 3, cfg.pretrained, num_classes=0, image_size=size)
    if size % 2:
        raise ValueError(f"image_size must be even (the latent is image_size/2), got {size}")
    net = build_backbone(backbone, 3, cfg.pretrained, num_classes=0, widths=cfg.cnn_widths)
    if input_kind == "latent":
        if cfg.latent_channels != net.conv1.out_channels:
            raise ValueError(
                f"the latent replaces conv1's output, which has {net.conv1.out_channels} channels "
                f"in {backbone}; latent_channels={cfg.latent_channels}"
            )
        net.conv1 = nn.Identity()  # the latent *is* conv1's output (Sec. 3.2, Eq. 2)
        if not cfg.latent_bn:
            net.bn1 = nn.Identity()  # ref. code: relu → maxpool, no bn1
            # torchvision's stem ReLU is in place: it would overwrite the caller's latent tensor
            # (e.g. a batch shared with the pre-loaded features); the blocks have their own ReLUs
            net.relu = nn.ReLU(inplace=False)
    return net


def _stream_features(backbone: str, cfg: InfuseNetConfig, vit: bool) -> int:
    """Pooled feature width D of one stream (ResNet18: 512, or ``cnn_widths[-1]``)."""
    return feature_dim(backbone, None if vit else cfg.cnn_widths)


def _input_shape(kind: str, cfg: InfuseNetConfig) -> tuple[int, int, int]:
    s = cfg.image_size
    return (cfg.latent_channels, s // 2, s // 2) if kind == "latent" else (3, s, s)


_SHAPE_NOTES = {
    "flow": "optical-flow image (u, v, ε), Eq. 5",
    "latent": "magnified latent Mag(onset, apex) ‖ Mag(onset, pseudo-apex), Eq. 2, in place of "
    "conv1's output",
    "image": "decoded magnified image (Table 3)",
}


#: Settings of :attr:`InfuseNetConfig.latent_norm`.
LATENT_NORMS = ("none", "sample")


def abs_quantile(x: torch.Tensor, quantile: float = 0.99) -> torch.Tensor:
    """The ``quantile`` of ``|x|`` over the last axis: order statistic ``round(quantile * N)``.

    Parameters
    ----------
    x : Tensor of shape (..., N), floating point
    quantile : float
        In (0, 1]; no interpolation (``Tensor.kthvalue``, which, unlike ``torch.quantile``, has
        no limit on the input size).

    Returns
    -------
    Tensor of shape (...), float32, detached.

    Raises
    ------
    ValueError
        If ``quantile`` is outside (0, 1].
    """
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    flat = x.detach().abs().float()
    k = min(flat.shape[-1], max(1, round(quantile * flat.shape[-1])))
    return flat.kthvalue(k, dim=-1).values


def scale_latent(latent: torch.Tensor, groups: int = 1, quantile: float = 0.99,
                 eps: float = 1e-6) -> torch.Tensor:
    """Divide each sample's latent by the ``quantile`` of its absolute values, per channel group.

    Parameters
    ----------
    latent : Tensor of shape (B, C, H, W), floating point
        Magnified latents (any scale).
    groups : int
        Consecutive channel groups scaled separately (InfuseNet: 2, Mag(onset, apex) and
        Mag(onset, pseudo-apex)); C must be divisible by it.
    quantile : float
        In (0, 1]; the order statistic ``round(quantile * C*H*W)`` is used (no interpolation).
    eps : float
        Added to the scale, so that an all-zero latent stays zero.

    Returns
    -------
    Tensor of the same shape and dtype.  The scale is detached: gradients reach the latent (e.g.
    an end-to-end magnifier) through the division only.

    Raises
    ------
    ValueError
        If ``latent`` is not 4-D, its channels are not divisible by ``groups`` or ``quantile``
        is outside (0, 1].
    """
    if latent.ndim != 4:
        raise ValueError(f"latent must be (B, C, H, W), got shape {tuple(latent.shape)}")
    b, c = latent.shape[:2]
    if groups < 1 or c % groups:
        raise ValueError(f"{c} latent channels do not split into {groups} groups")
    scale = abs_quantile(latent.reshape(b, groups, -1), quantile).to(latent.dtype)  # (B, groups)
    scale = scale.repeat_interleave(c // groups, dim=1)
    return latent / (scale.view(b, c, 1, 1) + eps)


def _check_input(
    owner: str, kind: str, x: torch.Tensor, shape: tuple[int, int, int], dtype: torch.dtype
) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{owner}: input {kind!r} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4 or tuple(x.shape[1:]) != shape:
        raise ValueError(
            f"{owner}: input {kind!r} ({_SHAPE_NOTES[kind]}) must have shape "
            f"(B, {shape[0]}, {shape[1]}, {shape[2]}), got {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(f"{owner}: input {kind!r} must be floating point, got {x.dtype}")
    return x.to(dtype)  # e.g. float16 latents from magnified.h5


def _stem(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if _is_vit(net):
        x = net.patch_embed(x)
        x = net._pos_embed(x)
        x = net.patch_drop(x)
        return net.norm_pre(x)
    return net.maxpool(net.relu(net.bn1(net.conv1(x))))


def _pool(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if _is_vit(net):
        return net.forward_head(net.norm(x), pre_logits=True)
    return torch.flatten(net.avgpool(x), 1)


def _stage_slices(net: nn.Module, cfg: InfuseNetConfig) -> list[tuple[Sequence[nn.Module], bool]]:
    """Groups of modules between infusion points, with whether to infuse after each group."""
    if not _is_vit(net):
        return [
            ([net.layer1], True),
            ([net.layer2], True),
            ([net.layer3], True),
            ([net.layer4], True),
        ]
    blocks = list(net.blocks)
    points = sorted(set(cfg.vit_infusion_blocks))
    if not points or points[0] < 0 or points[-1] >= len(blocks):
        raise ValueError(
            f"vit_infusion_blocks must be non-empty indices in [0, {len(blocks) - 1}], got "
            f"{cfg.vit_infusion_blocks}"
        )
    out: list[tuple[Sequence[nn.Module], bool]] = []
    start = 0
    for p in points:
        out.append((blocks[start : p + 1], True))
        start = p + 1
    if start < len(blocks):
        out.append((blocks[start:], False))
    return out


def _run(modules: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    for m in modules:
        x = m(x)
    return x


class _InputsMixin:
    cfg: InfuseNetConfig
    input_names: tuple[str, ...]
    input_shapes: dict[str, tuple[int, int, int]]

    def _prepare(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        dtype = next(self.parameters()).dtype  # type: ignore[attr-defined]
        if len(inputs) != len(self.input_names):
            raise ValueError(
                f"{type(self).__name__} takes inputs {self.input_names}, got {len(inputs)} tensors"
            )
        out = [
            _check_input(type(self).__name__, n, x, self.input_shapes[n], dtype)
            for n, x in zip(self.input_names, inputs, strict=True)
        ]
        if self.cfg.latent_norm == "sample":
            out = [scale_latent(x, groups=2) if n == "latent" else x
                   for n, x in zip(self.input_names, out, strict=True)]
        return out


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


class SingleStreamNet(_InputsMixin, nn.Module):
    """One backbone on one input, linear multi-label head (Table 1 single-input rows; Table 2
    "FrameFlow" and "FrameMag").

    Parameters
    ----------
    backbone : str
        ``resnet18`` (paper), ``resnet34``, ``resnet50`` or ``vit_tiny``.
    input_kind : {"flow", "latent", "image"}
        ``flow``: I_OF (B, 3, S, S) (FrameFlow); ``latent``: (B, 64, S/2, S/2) in place of
        conv1's output (ResNet) or through a patch-8 embedding (ViT) (FrameMag); ``image``:
        a 3-channel S × S image through the normal stem.
    cfg : InfuseNetConfig, optional
        Sizes, weights and latent settings.

    Attributes
    ----------
    backbone : nn.Module
        The torchvision / timm network without classifier (``backbone.layer4`` etc. for hooks).
    head : nn.Linear
        Pooled features → ``num_classes`` logits.
    """

    def __init__(self, backbone: str, input_kind: str, cfg: InfuseNetConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or InfuseNetConfig()
        self.cfg = cfg
        self.image_size = cfg.image_size
        vit = backbone_family(backbone) == "vit"
        self.backbone = _build_stream(backbone, input_kind, cfg, vit=vit)
        self.head = nn.Linear(_stream_features(backbone, cfg, vit), cfg.num_classes)
        self.input_names = (input_kind,)
        self.input_shapes = {input_kind: _input_shape(input_kind, cfg)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """AU logits of one stream.

        Parameters
        ----------
        x : Tensor of shape (B, *input_shapes[input_names[0]])
            I_OF (B, 3, S, S), the latent (B, 64, S/2, S/2) or an image (B, 3, S, S); float16
            is cast to the parameters' dtype.

        Returns
        -------
        Tensor of shape (B, num_classes)
            Multi-label logits in CD6ME order (sigmoid for AU probabilities).

        Raises
        ------
        ValueError
            Wrong shape or non-floating dtype (the message names the input and expected shape).
        """
        (x,) = self._prepare([x])
        return self.head(self.backbone(x))


class _TwoStreamBase(_InputsMixin, nn.Module):
    def __init__(self, backbone: str, mag_input: str, cfg: InfuseNetConfig | None) -> None:
        super().__init__()
        cfg = cfg or InfuseNetConfig()
        if mag_input not in ("latent", "image"):
            raise ValueError(f"FrameMag input must be 'latent' or 'image', got {mag_input!r}")
        self.cfg = cfg
        self.image_size = cfg.image_size
        self.vit = backbone_family(backbone) == "vit"
        self.frame_flow = _build_stream(backbone, "flow", cfg, vit=self.vit)
        self.frame_mag = _build_stream(backbone, mag_input, cfg, vit=self.vit)
        self.input_names = ("flow", mag_input)
        self.input_shapes = {k: _input_shape(k, cfg) for k in self.input_names}
        self.n_features = _stream_features(backbone, cfg, self.vit)


class LateFusionNet(_TwoStreamBase):
    """FrameFlow + FrameMag, concatenated pooled features → linear (Table 1 "ResNet18
    (Late-fusion)", Table 2 "FrameFlow + FrameMag").

    Parameters
    ----------
    backbone : str
        ``resnet18`` (paper) or another :mod:`pipeline.models.backbones` name.
    mag_input : {"latent", "image"}
        FrameMag's input.
    cfg : InfuseNetConfig, optional
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        mag_input: str = "latent",
        cfg: InfuseNetConfig | None = None,
    ) -> None:
        super().__init__(backbone, mag_input, cfg)
        self.head = nn.Linear(2 * self.n_features, self.cfg.num_classes)

    def forward(self, flow: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
        """AU logits from the concatenated pooled features of both streams.

        Parameters
        ----------
        flow : Tensor of shape (B, 3, S, S)
            Optical-flow image (u, v, ε).
        mag : Tensor of shape (B, 64, S/2, S/2) or (B, 3, S, S)
            Magnified latent or decoded magnified image (``input_names[1]``).

        Returns
        -------
        Tensor of shape (B, num_classes)
            Multi-label logits.

        Raises
        ------
        ValueError
            Inputs of the wrong shape.
        """
        flow, mag = self._prepare([flow, mag])
        return self.head(torch.cat([self.frame_flow(flow), self.frame_mag(mag)], dim=1))


class InfuseNet(_TwoStreamBase):
    """InfuseNet: FrameFlow infused into FrameMag after every stage and after pooling
    (Khor et al. 2025, Sec. 3.3, Eq. 6–8, Fig. 2).

    Parameters
    ----------
    backbone : str
        ``resnet18`` (InfuseNet(Res18), paper) or ``vit_tiny`` (InfuseNet(ViT-Tiny)).
    mag_input : {"latent", "image"}
        ``latent`` (paper) or the decoded magnified image (Table 3 ablation).
    cfg : InfuseNetConfig, optional
        Sizes, weights, normalisation scope.

    Attributes
    ----------
    frame_flow, frame_mag : nn.Module
        torchvision ResNets (``layer1`` … ``layer4``, ``avgpool``) or timm ViTs (``blocks``).
    infusion : nn.ModuleList of FlowInfusion
        One per infusion point, named in ``infusion_points`` (``layer1`` … ``layer4``, ``pool``
        for ResNets; ``blocks.2`` … ``blocks.11``, ``pool`` for ViTs).  Their outputs are the
        infused FrameMag features (Grad-CAM target ``infusion.3`` = infused ``layer4``).
    head : nn.Linear
        Infused pooled FrameMag features → ``num_classes`` logits.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        mag_input: str = "latent",
        cfg: InfuseNetConfig | None = None,
    ) -> None:
        super().__init__(backbone, mag_input, cfg)
        cfg = self.cfg
        channel_dim = -1 if self.vit else 1
        stages = _stage_slices(self.frame_flow, cfg)
        n_points = sum(infuse for _, infuse in stages) + 1
        self.infusion = nn.ModuleList(
            FlowInfusion(cfg.norm_scope, channel_dim, cfg.norm_eps, cfg.eval_norm_scope)
            for _ in range(n_points)
        )
        if self.infusion[0].eval_scope == "tensor":
            log.warning("InfuseNet: eval_norm_scope 'tensor' normalises each test batch as a "
                        "whole: a test prediction depends on the other samples of its batch "
                        "(transductive; the ref. code's test)")
        if self.vit:
            points = [f"blocks.{b}" for b in sorted(set(cfg.vit_infusion_blocks))]
        else:
            points = ["layer1", "layer2", "layer3", "layer4"]
        self.infusion_points: tuple[str, ...] = (*points, "pool")
        self.head = nn.Linear(self.n_features, cfg.num_classes)

    def features(self, flow: torch.Tensor, mag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled features of both streams.

        Parameters
        ----------
        flow : Tensor of shape (B, 3, S, S)
            Optical-flow image (u, v, ε), pixels per frame (as stored in ``flow.h5``).
        mag : Tensor of shape (B, 64, S/2, S/2) or (B, 3, S, S)
            Magnified latent (``latent``) or decoded magnified image (``image``).

        Returns
        -------
        (Tensor, Tensor) of shape (B, D) each
            Infused FrameMag features and FrameFlow features (D = 512 for ResNet18, 192 ViT-Tiny).

        Raises
        ------
        ValueError
            Inputs of the wrong shape (the message names the input and the expected shape).
        """
        flow, mag = self._prepare([flow, mag])
        f_flow = _stem(self.frame_flow, flow)
        f_mag = _stem(self.frame_mag, mag)
        k = 0
        for (flow_mods, infuse), (mag_mods, _) in zip(
            _stage_slices(self.frame_flow, self.cfg),
            _stage_slices(self.frame_mag, self.cfg),
            strict=True,
        ):
            f_flow = _run(flow_mods, f_flow)
            f_mag = _run(mag_mods, f_mag)
            if infuse:
                f_mag = self.infusion[k](f_mag, f_flow)  # Eq. 7, fed to the next block (Eq. 8)
                k += 1
        p_flow = _pool(self.frame_flow, f_flow)
        p_mag = self.infusion[k](_pool(self.frame_mag, f_mag), p_flow)
        return p_mag, p_flow

    def forward(self, flow: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
        """Multi-label AU logits of the infused FrameMag.

        Parameters
        ----------
        flow, mag : Tensor
            As in :meth:`features`.

        Returns
        -------
        Tensor of shape (B, num_classes)
            Logits in CD6ME order (:data:`CD6ME_AUS`).
        """
        p_mag, _ = self.features(flow, mag)
        return self.head(p_mag)

    def forward_both(
        self, flow: torch.Tensor, mag: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """FrameMag and FrameFlow logits through the one shared head (ref. code returns both).

        For an optional auxiliary loss on FrameFlow (the paper fine-tunes both networks).

        Parameters
        ----------
        flow, mag : Tensor
            As in :meth:`features`.

        Returns
        -------
        (Tensor, Tensor) of shape (B, num_classes) each
            Infused FrameMag logits (= :meth:`forward`), FrameFlow logits.
        """
        p_mag, p_flow = self.features(flow, mag)
        return self.head(p_mag), self.head(p_flow)


# --------------------------------------------------------------------------------------------
# End to end: the magnifier's encoder and manipulator inside InfuseNet (Sec. 3.2)
# --------------------------------------------------------------------------------------------


class MagnifierLatent(nn.Module):
    """Mag(a, b) = Δ̂ = h((α − 1)·g(M_b − M_a)) of the Oh et al. magnifier, with gradients
    (InfuseNet Sec. 3.2, Eq. 1–2: "the encoder and manipulator ... are fine-tuned").

    Holds the magnifier's encoder (shape branch; a texture branch, unused by the latent, is
    dropped) and manipulator; the decoder is not needed.

    Parameters
    ----------
    magnifier : OhMagNet
        Trained weights (``models/magnifier/oh.pt``); its encoder and manipulator are taken over
        (not copied).
    alpha : float
        Magnification factor α (paper 10).
    kind : {"difference", "manipulated"}
        Δ̂ (ref. code; as ``magnify.latent_kind: difference``) or M_b + Δ̂.
    """

    def __init__(self, magnifier: nn.Module, alpha: float = 10.0, kind: str = "difference") -> None:
        super().__init__()
        if kind not in ("difference", "manipulated"):
            raise ValueError(f"latent kind must be 'difference' or 'manipulated', got {kind!r}")
        encoder = magnifier.encoder
        if getattr(encoder, "texture_branch", False):
            encoder.texture_branch = False
            del encoder.conv1_texture, encoder.resblks_texture
        self.encoder = encoder
        self.manipulator = magnifier.manipulator
        self.alpha = float(alpha)
        self.pick = 0 if kind == "difference" else 1

    def forward(self, frame_a: torch.Tensor, frames_b: Sequence[torch.Tensor]) -> torch.Tensor:
        """Latents of (a, b) for each b, concatenated channel-wise.

        Parameters
        ----------
        frame_a : Tensor of shape (B, 3, S, S), float in [0, 1]
            E.g. the onset crop (RGB).
        frames_b : sequence of Tensor of shape (B, 3, S, S), float in [0, 1]
            E.g. the apex and pseudo-apex crops.

        Returns
        -------
        Tensor of shape (B, 32 · len(frames_b), S/2, S/2)
            Mag(a, b_1) ‖ Mag(a, b_2) ‖ … (Eq. 2).
        """
        n = len(frames_b)
        x = torch.cat([frame_a, *frames_b]) * 2.0 - 1.0  # [0, 1] → the magnifier's [−1, 1]
        _, shape = self.encoder(x)
        m = shape.chunk(n + 1)
        lat = [self.manipulator(m[0], m_b, self.alpha)[self.pick] for m_b in m[1:]]
        return torch.cat(lat, dim=1)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, kind={('difference', 'manipulated')[self.pick]!r}"


class EndToEndInfuseNet(nn.Module):
    """An InfuseNet-table network whose latent input is computed by a fine-tuned magnifier.

    Parameters
    ----------
    net : nn.Module
        A :func:`build_infusenet_variant` network with a ``latent`` input.
    magnifier : MagnifierLatent

    Attributes
    ----------
    input_names : tuple of str
        ``net``'s, with ``latent`` kept as the name of the slot the magnifier fills.
    """

    def __init__(self, net: nn.Module, magnifier: MagnifierLatent) -> None:
        super().__init__()
        if "latent" not in getattr(net, "input_names", ()):
            raise ValueError(f"{type(net).__name__} takes no magnified latent; the end-to-end "
                             "option applies to the latent variants")
        self.net = net
        self.magnifier = magnifier
        self.input_names = net.input_names
        self.image_size = getattr(net, "image_size", None)

    def forward(self, inputs: Mapping[str, torch.Tensor], onset: torch.Tensor,
                apex: torch.Tensor, pseudo: torch.Tensor) -> torch.Tensor:
        """Logits from the network's other inputs and the crops the latent is computed from.

        Parameters
        ----------
        inputs : mapping of str to Tensor
            The network's non-latent inputs by name (e.g. ``flow`` (B, 3, S, S)).
        onset, apex, pseudo : Tensor of shape (B, 3, S, S), float in [0, 1]
            Crops at the model side S (the latent is S/2).

        Returns
        -------
        Tensor of shape (B, num_classes)
        """
        latent = self.magnifier(onset, (apex, pseudo))
        args = [latent if k == "latent" else inputs[k] for k in self.input_names]
        return self.net(*args)


# --------------------------------------------------------------------------------------------
# Factory and published numbers
# --------------------------------------------------------------------------------------------

#: variant → (backbone family, architecture, FrameMag / single-stream input)
VARIANTS: dict[str, tuple[str, str, str]] = {
    "resnet18_flow": ("cnn", "single", "flow"),  # Table 1 ResNet18 OF; Table 2 FrameFlow
    "resnet18_mag": ("cnn", "single", "latent"),  # Table 1 ResNet18 Mag; Table 2 FrameMag
    "late_fusion": ("cnn", "late", "latent"),  # Table 1 ResNet18 (Late-fusion); Table 2
    "infusenet": ("cnn", "infuse", "latent"),  # Table 1 InfuseNet(Res18)
    "infusenet_image": ("cnn", "infuse", "image"),  # Table 3 decoded magnified image
    "vit_tiny_flow": ("vit", "single", "flow"),  # Table 1 ViT-Tiny OF
    "vit_tiny_mag": ("vit", "single", "latent"),  # Table 1 ViT-Tiny Mag
    "vit_tiny_late_fusion": ("vit", "late", "latent"),  # not a published row (completeness)
    "infusenet_vit": ("vit", "infuse", "latent"),  # Table 1 InfuseNet(ViT-Tiny)
}


def build_infusenet_variant(
    name: str, cfg: Mapping[str, Any] | InfuseNetConfig | None = None
) -> nn.Module:
    """Build one network of InfuseNet's Tables 1–3.

    Parameters
    ----------
    name : str
        A key of :data:`VARIANTS`.
    cfg : mapping or InfuseNetConfig, optional
        Model settings (fields of :class:`InfuseNetConfig`; missing keys take its defaults).

    Returns
    -------
    nn.Module
        :class:`SingleStreamNet`, :class:`LateFusionNet` or :class:`InfuseNet`, with
        ``input_names`` (order of the ``forward`` arguments) and ``input_shapes``; the output is
        (B, num_classes) multi-label logits.

    Raises
    ------
    ValueError
        Unknown variant or settings.
    """
    if name not in VARIANTS:
        raise ValueError(f"unknown InfuseNet variant {name!r}; expected one of {sorted(VARIANTS)}")
    config = cfg if isinstance(cfg, InfuseNetConfig) else InfuseNetConfig.from_mapping(cfg)
    if config.latent_norm not in LATENT_NORMS:
        raise ValueError(f"latent_norm must be one of {LATENT_NORMS}, got {config.latent_norm!r}")
    family, arch, kind = VARIANTS[name]
    backbone = config.cnn_backbone if family == "cnn" else config.vit_backbone
    if arch == "single":
        model: nn.Module = SingleStreamNet(backbone, kind, config)
    elif arch == "late":
        model = LateFusionNet(backbone, kind, config)
    else:
        model = InfuseNet(backbone, kind, config)
    log.info(
        "built %s (%s, inputs %s, %.1fM parameters)",
        name, backbone, model.input_names, sum(p.numel() for p in model.parameters()) / 1e6,
    )  # fmt: skip
    return model


#: variant → key of :data:`pipeline.reporting.published.PUBLISHED`, the one source of the
#: published numbers (the ``published:`` key of the variant's ``params.yaml`` section).
#: ``vit_tiny_late_fusion`` has no published row.
PUBLISHED_KEYS: dict[str, str] = {
    "resnet18_flow": "resnet18_flow_cd6me",  # Table 1 ResNet18 OF (Table 2 FrameFlow)
    "resnet18_mag": "resnet18_mag_cd6me",  # Table 1 ResNet18 Mag (Table 2 FrameMag: 0.2877)
    "late_fusion": "late_fusion_cd6me",  # Table 1 ResNet18 (Late-fusion), Table 2
    "infusenet": "infusenet_cd6me",  # Table 1 InfuseNet(Res18), Tables 2-3
    "infusenet_image": "infusenet_image_cd6me",  # Table 3 decoded magnified image
    "vit_tiny_flow": "vit_tiny_flow_cd6me",  # Table 1 ViT-Tiny OF
    "vit_tiny_mag": "vit_tiny_mag_cd6me",  # Table 1 ViT-Tiny Mag
    "infusenet_vit": "infusenet_vit_cd6me",  # Table 1 InfuseNet(ViT-Tiny)
}


def _paper_f1() -> dict[str, dict[str, Any]]:
    from pipeline.reporting.published import PUBLISHED

    out: dict[str, dict[str, Any]] = {}
    for variant, key in PUBLISHED_KEYS.items():
        pub = PUBLISHED[key]
        row: dict[str, Any] = {"average": pub.f1_mean, "source": pub.source, "key": key}
        if pub.f1_per_au:
            row["per_au"] = dict(pub.f1_per_au)
        out[variant] = row
    return out


#: Published CD6ME F1 (fractions) per variant: ``average``, ``source``, ``key`` (of
#: :data:`~pipeline.reporting.published.PUBLISHED`, where the numbers are transcribed) and, where
#: Table 1 gives them, ``per_au``.
PAPER_F1: dict[str, dict[str, Any]] = _paper_f1()

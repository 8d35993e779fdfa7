"""The annotation-mimicking dual-branch network (Ruan et al., ACM MM 2022).

Ruan, Lo, Shuai, Cheng, "Mimicking the Annotation Process for Recognizing the Micro
Expressions", ACM MM 2022 (METHODS.md, "Annotation-mimicking dual-branch network").

* Input ``(B, 3, S, S)``: [grey magnified apex, On-A flow magnitude, Off-A flow magnitude]
  (Sec. 3.1.1); the upper half is the eyes image, the lower half the mouth image (Sec. 3.1.2).
* A ResNet18 (He et al. 2016) split as Table 1: a *shared* base (stem, layer1, layer2) and one
  branch (layer3, layer4) per region, each followed by shuffle attention (Zhang & Yang, SA-Net,
  ICASSP 2021) whose group weights are *not* shared between the groups (Sec. 3.3).
* Area Weighted Module (Sec. 3.4, Eq. 1–3): X_weight = sigmoid(W2 ReLU(W1 [X_eyes | X_mouth])),
  X_F = [X_eyes | X_mouth] ⊙ X_weight, split back into X_eyes_w and X_mouth_w.
* One two-layer head per branch (Sec. 3.6); the prediction is the argmax of the summed softmax
  outputs.
* AU-CAM (Sec. 4.6.2, Eq. 12–13): Grad-CAM maps of each branch's layer4 output with the backward
  pass from max(X_b_w), stacked eyes over mouth.

The authors' regularisation (not in the paper; their public code, repository
Justin900429/mimicking-annotation-micro-expression-recognition, ``model/samer.py``), each a
switch of :class:`MimickingConfig` whose default is the authors' value (all off: the network
without it, parameter for parameter):

* ``backbone_dropout`` (0.2): Dropout after layer1 and after layer2 of the shared base
  (``BaseLayer.__init__``) and after layer3 of each branch (``BranchLayer.__init__``); none
  after layer4.
* ``l2_normalise`` (True): each branch's pooled layer4 feature X_eyes, X_mouth L2-normalised
  (``BranchLayer.forward``) before the AWM and the heads, and X_F L2-normalised after the AWM
  weighting (``SAMER.fusing``) for the AU alignment.  The heads see the weighted normalised
  features X_b ⊙ weight, not re-normalised, through a plain linear layer: no scaled (cosine)
  classifier, no temperature on the class logits.
* ``feature_dropout`` (0.1): Dropout on the normalised X_F in training only (``SAMER.fusing``);
  the class heads do not see it.
* ``layer_norm`` (True): LayerNorm after the first linear layer of each head, before its ReLU
  (``SAMER.__init__``, ``self.eyes`` / ``self.mouth``), and after both linear layers of the AWM
  (before the ReLU and before the sigmoid, ``self.area_weight``).
* ``dropout`` (0.3): Dropout after the ReLU of each head; ``awm_dropout`` (0.3): Dropout after the
  ReLU of the AWM (``SAMER.__init__``).
* ``awm_detach`` (True): the AWM computes its weights from the *detached* branch features
  (``SAMER.fusing``): the class loss reaches the branches through X_b ⊙ weight but not through
  the weights.
* Label smoothing 0.1 of the cross-entropy (``train.py``, ``train_cls``) is a loss setting:
  ``label_smoothing`` of :mod:`pipeline.training.methods_mimicking`.

Where the authors' code departs from the paper and we follow the paper: their prediction sums
the two heads' *logits* (``SAMER.predict``), the paper sums the softmax outputs (Sec. 3.6); their
shuffle attention sits inside every residual block (``model/resnet.py``, ``BasicBlock``), with a
softmax over the groups.

Choices the paper leaves open (ours):

* ``width``: channels of the stem and layer1 (ResNet18: 64, layers 64/128/256/512).  Quick runs
  use a narrower ResNet18 (same depth, ``width`` 8 in params.yaml); random initialisation (the
  paper does not say; the authors' code starts from ImageNet weights).
* Shuffle attention after layer3 *and* layer4 of each branch, ``sa_groups`` groups (SA-Net's
  G; ours 8), per-group parameters of shape (G, C/(2G)); the channel shuffle of SA-Net.
* Head: Linear(D, ``head_hidden``) → [LayerNorm] → ReLU → Dropout(``dropout``) →
  Linear(head_hidden, K) (hidden width not published; the authors' code 512 = D, quick 64).
* Without AWM the features are the concatenated branch outputs (the paper's footnote 3); the
  single-branch ablation ("sb") runs the whole image through base + one branch, with one head,
  and its pooled output is the AU feature (footnote 3).
* The summed prediction is returned as log((p_eyes + p_mouth) / 2), whose softmax is the mean of
  the two branches' class probabilities (same argmax as their sum).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock

__all__ = ["AreaWeightedModule", "MimickingConfig", "MimickingNet", "MimickingOutput",
           "ShuffleAttention", "au_cam"]


class ShuffleAttention(nn.Module):
    """Shuffle attention (SA-Net) with one set of attention parameters per group.

    The C channels are split into G groups, each group into two halves: the first half is
    re-weighted by a channel attention (σ(a · GAP(x) + b)), the second by a spatial attention
    (σ(c · N(x) + d), N the per-channel normalisation over space, SA-Net's GroupNorm with one
    channel per group; ours without its redundant affine, and defined on a 1 × 1 map); halves are concatenated and the channels shuffled (2 groups).
    SA-Net shares a, b, c, d (shape C/(2G)) between the groups; Ruan et al. (Sec. 3.3) learn
    them per group: here shape (G, C/(2G)).

    Parameters
    ----------
    channels : int
        C; must be divisible by 2·groups.
    groups : int
        G.

    Raises
    ------
    ValueError
        If C is not divisible by 2G.
    """

    def __init__(self, channels: int, groups: int = 8) -> None:
        super().__init__()
        if groups < 1 or channels % (2 * groups):
            raise ValueError(f"shuffle attention: {channels} channels not divisible by 2 x "
                             f"{groups} groups")
        self.groups = groups
        half = channels // (2 * groups)
        self.cweight = nn.Parameter(torch.zeros(groups, half))
        self.cbias = nn.Parameter(torch.ones(groups, half))
        self.sweight = nn.Parameter(torch.zeros(groups, half))
        self.sbias = nn.Parameter(torch.ones(groups, half))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` → ``(B, C, H, W)``."""
        b, c, h, w = x.shape
        g = self.groups
        half = c // (2 * g)
        x = x.reshape(b, g, 2, half, h, w)
        xc, xs = x[:, :, 0], x[:, :, 1]                          # (B, G, half, H, W)
        pooled = xc.mean(dim=(3, 4), keepdim=True)
        xc = xc * torch.sigmoid(self.cweight[None, :, :, None, None] * pooled
                                + self.cbias[None, :, :, None, None])
        # SA-Net's GroupNorm with one channel per group, without its own affine (a, b follow)
        mean = xs.mean(dim=(3, 4), keepdim=True)
        var = xs.var(dim=(3, 4), unbiased=False, keepdim=True)
        xs_n = (xs - mean) / torch.sqrt(var + 1e-5)
        xs = xs * torch.sigmoid(self.sweight[None, :, :, None, None] * xs_n
                                + self.sbias[None, :, :, None, None])
        out = torch.stack([xc, xs], dim=2).reshape(b, c, h, w)
        # channel shuffle with 2 groups (SA-Net)
        return out.reshape(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)


class AreaWeightedModule(nn.Module):
    """AWM (Ruan et al., Sec. 3.4, Eq. 1–3), with the authors' regularisation as switches
    (``model/samer.py``, ``SAMER.area_weight`` and ``SAMER.fusing``).

    Parameters
    ----------
    dim : int
        D, the size of each branch feature (512 for ResNet18).
    hidden : int
        h of Eq. 1 (paper 1024).
    layer_norm : bool
        LayerNorm after W1 (before the ReLU) and after W2 (before the sigmoid) (authors: yes).
    dropout : float
        Dropout after the ReLU (authors: 0.3).
    detach : bool
        The weights are computed from the detached features (authors: yes): no gradient flows
        through the weights into the branches.

    ``forward(x_eyes, x_mouth)`` with both ``(B, D)`` returns ``(x_f, weight)``, both
    ``(B, 2D)``: X_F = [X_eyes | X_mouth] ⊙ sigmoid(N2(W2 Drop(ReLU(N1(W1 [X_eyes | X_mouth])))))
    (N the optional LayerNorms; no softmax).  Split X_F with :meth:`split`.
    """

    def __init__(self, dim: int, hidden: int = 1024, layer_norm: bool = True,
                 dropout: float = 0.3, detach: bool = True) -> None:
        super().__init__()
        self.dim = dim
        self.detach = detach
        self.fc1 = nn.Linear(2 * dim, hidden)
        self.fc2 = nn.Linear(hidden, 2 * dim)
        # absent (not identity) when off, so that the parameters are the plain AWM's
        self.norm1 = nn.LayerNorm(hidden) if layer_norm else None
        self.norm2 = nn.LayerNorm(2 * dim) if layer_norm else None
        self.drop = nn.Dropout(dropout) if dropout > 0 else None

    def forward(self, x_eyes: torch.Tensor, x_mouth: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([x_eyes, x_mouth], dim=1)
        h = self.fc1(x.detach() if self.detach else x)
        if self.norm1 is not None:
            h = self.norm1(h)
        h = F.relu(h)
        if self.drop is not None:
            h = self.drop(h)
        h = self.fc2(h)
        if self.norm2 is not None:
            h = self.norm2(h)
        weight = torch.sigmoid(h)
        return x * weight, weight

    def split(self, x_f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 2D)`` → X_eyes_w, X_mouth_w, each ``(B, D)`` (Eq. 3)."""
        return x_f[:, :self.dim], x_f[:, self.dim:]


@dataclass(frozen=True)
class MimickingConfig:
    """Architecture switches (module docstring for the open choices).

    Attributes
    ----------
    n_classes : int
    width : int
        ResNet18 base width (64: the standard network).
    dual : bool
        Dual-branch (eyes/mouth) network; False: the single-branch ablation "sb".
    awm : bool
        Area Weighted Module (dual only).
    awm_hidden : int
    sa_groups : int
        Shuffle-attention groups (0: no shuffle attention).
    head_hidden : int
        Hidden width of each head (authors' code: 512).
    dropout : float
        Dropout after the ReLU of each head (authors: 0.3).
    backbone_dropout : float
        Dropout after layer1, layer2 (shared base) and layer3 (each branch) (authors: 0.2).
    awm_dropout : float
        Dropout after the ReLU of the AWM (authors: 0.3).
    feature_dropout : float
        Dropout on the normalised X_F, the AU-alignment feature, in training (authors: 0.1).
    layer_norm : bool
        LayerNorm after the first linear layer of each head and of the AWM and after the AWM's
        second (authors: True).
    l2_normalise : bool
        Pooled branch features and X_F L2-normalised (authors: True).
    awm_detach : bool
        AWM weights from the detached branch features (authors: True).
    in_channels : int

    Every regularisation switch off (dropouts 0, ``layer_norm``, ``l2_normalise`` and
    ``awm_detach`` False) gives the network without the authors' regularisation, with the same
    parameters (names and shapes) and, from the same seed, the same initial weights.
    """

    n_classes: int
    width: int = 64
    dual: bool = True
    awm: bool = True
    awm_hidden: int = 1024
    sa_groups: int = 8
    head_hidden: int = 512
    dropout: float = 0.3
    backbone_dropout: float = 0.2
    awm_dropout: float = 0.3
    feature_dropout: float = 0.1
    layer_norm: bool = True
    l2_normalise: bool = True
    awm_detach: bool = True
    in_channels: int = 3

    def __post_init__(self) -> None:
        for key in ("dropout", "backbone_dropout", "awm_dropout", "feature_dropout"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < 1:
                raise ValueError(f"{key} must be a probability in [0, 1), got {v!r}")
        for key in ("layer_norm", "l2_normalise", "awm_detach", "dual", "awm"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"{key} must be true or false, got {getattr(self, key)!r}")


class MimickingOutput(NamedTuple):
    """What :meth:`MimickingNet.forward` returns.

    Attributes
    ----------
    log_probs : Tensor (B, K)
        log((p_eyes + p_mouth) / 2) (single branch: log p); the trainer's logits.
    logits_eyes, logits_mouth : Tensor (B, K)
        The two heads' logits (single branch: both the one head's).
    features : Tensor (B, F)
        X_F (the AU feature aligned by WSCL): 2D with or without AWM, D for one branch;
        L2-normalised with ``l2_normalise``, then ``feature_dropout`` in training.
    """

    log_probs: torch.Tensor
    logits_eyes: torch.Tensor
    logits_mouth: torch.Tensor
    features: torch.Tensor


def _layer(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    down = None
    if stride != 1 or inplanes != planes:
        down = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                             nn.BatchNorm2d(planes))
    layers = [BasicBlock(inplanes, planes, stride, down)]
    layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def _dropout(p: float) -> list[nn.Module]:
    """[Dropout(p)], or nothing for p = 0 (the module indices of the network without it)."""
    return [nn.Dropout(p)] if p > 0 else []


def _base(cfg: MimickingConfig) -> nn.Sequential:
    """ResNet18 stem → layer1 → [Dropout] → layer2 → [Dropout] (Table 1's base layer; the
    dropouts: the authors' ``BaseLayer``)."""
    w = cfg.width
    return nn.Sequential(
        nn.Conv2d(cfg.in_channels, w, 7, 2, 3, bias=False), nn.BatchNorm2d(w),
        nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1),
        _layer(w, w, 2, 1), *_dropout(cfg.backbone_dropout),
        _layer(w, 2 * w, 2, 2), *_dropout(cfg.backbone_dropout))


def _branch(width: int, sa_groups: int, dropout: float = 0.0) -> nn.Sequential:
    """ResNet18 layer3 → SA → [Dropout] → layer4 → SA (Table 1's branch layer; the dropout: the
    authors' ``BranchLayer``)."""
    mods: list[nn.Module] = [_layer(2 * width, 4 * width, 2, 2)]
    if sa_groups:
        mods.append(ShuffleAttention(4 * width, sa_groups))
    mods += _dropout(dropout)
    mods.append(_layer(4 * width, 8 * width, 2, 2))
    if sa_groups:
        mods.append(ShuffleAttention(8 * width, sa_groups))
    return nn.Sequential(*mods)


def _head(dim: int, hidden: int, n_classes: int, dropout: float,
          layer_norm: bool = False) -> nn.Sequential:
    """Linear → [LayerNorm] → ReLU → Dropout → Linear (the authors' ``SAMER.eyes``)."""
    norm = [nn.LayerNorm(hidden)] if layer_norm else []
    return nn.Sequential(nn.Linear(dim, hidden), *norm, nn.ReLU(inplace=True), nn.Dropout(dropout),
                         nn.Linear(hidden, n_classes))


class MimickingNet(nn.Module):
    """The dual-branch network (module docstring); ``forward(x)`` with x ``(B, C, S, S)``, S
    even, returns a :class:`MimickingOutput`.

    Raises
    ------
    ValueError
        On a non-positive width or class count, or AWM without two branches.
    """

    def __init__(self, cfg: MimickingConfig) -> None:
        super().__init__()
        if cfg.width < 1 or cfg.n_classes < 1:
            raise ValueError(f"width and n_classes must be >= 1, got {cfg.width}, {cfg.n_classes}")
        if cfg.awm and not cfg.dual:
            raise ValueError("the Area Weighted Module needs the dual-branch network (dual: true)")
        self.cfg = cfg
        w = cfg.width
        self.base = _base(cfg)
        self.dim = 8 * w
        self.branch_eyes = _branch(w, cfg.sa_groups, cfg.backbone_dropout)
        self.head_eyes = _head(self.dim, cfg.head_hidden, cfg.n_classes, cfg.dropout,
                               cfg.layer_norm)
        if cfg.dual:
            self.branch_mouth = _branch(w, cfg.sa_groups, cfg.backbone_dropout)
            self.head_mouth = _head(self.dim, cfg.head_hidden, cfg.n_classes, cfg.dropout,
                                    cfg.layer_norm)
        self.awm = (AreaWeightedModule(self.dim, cfg.awm_hidden, cfg.layer_norm, cfg.awm_dropout,
                                       cfg.awm_detach) if cfg.awm else None)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, S, S)`` → eyes (upper half) and mouth (lower half), each ``(B, C, S/2, S)``.

        Raises
        ------
        ValueError
            If the height is odd.
        """
        h = x.shape[-2]
        if h % 2:
            raise ValueError(f"input height must be even to split eyes/mouth halves, got {h}")
        return x[..., :h // 2, :], x[..., h // 2:, :]

    def branch_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The branch outputs A_b before pooling: eyes ``(B, 8w, h, w')`` and mouth (or None for
        the single branch, whose map covers the whole face)."""
        if not self.cfg.dual:
            return self.branch_eyes(self.base(x)), None
        eyes, mouth = self.split(x)
        both = self.base(torch.cat([eyes, mouth], dim=0))      # shared base, one pass
        fe, fm = both.chunk(2, dim=0)
        return self.branch_eyes(fe), self.branch_mouth(fm)

    def branch_features(self, a_eyes: torch.Tensor, a_mouth: torch.Tensor | None
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """X_eyes, X_mouth ``(B, D)``: the branch maps averaged over space, L2-normalised with
        ``l2_normalise`` (the authors' ``BranchLayer.forward``); mouth None for one branch."""
        feats = [a.mean(dim=(2, 3)) if a is not None else None for a in (a_eyes, a_mouth)]
        if self.cfg.l2_normalise:
            feats = [F.normalize(f, dim=1) if f is not None else None for f in feats]
        return feats[0], feats[1]

    def _au_feature(self, x_f: torch.Tensor) -> torch.Tensor:
        """X_F as the AU alignment sees it: L2-normalised, then ``feature_dropout`` in training
        (the authors' ``SAMER.fusing``)."""
        if self.cfg.l2_normalise:
            x_f = F.normalize(x_f, dim=1)
        if self.training and self.cfg.feature_dropout > 0:
            x_f = F.dropout(x_f, self.cfg.feature_dropout)
        return x_f

    def head(self, a_eyes: torch.Tensor, a_mouth: torch.Tensor | None
             ) -> tuple[MimickingOutput, tuple[torch.Tensor, torch.Tensor | None]]:
        """Pool, weight (AWM) and classify; also returns (X_eyes_w, X_mouth_w)."""
        x_e, x_m = self.branch_features(a_eyes, a_mouth)
        if x_m is None:
            logits = self.head_eyes(x_e)
            return (MimickingOutput(F.log_softmax(logits, dim=1), logits, logits,
                                    self._au_feature(x_e)), (x_e, None))
        if self.awm is not None:
            x_f, _ = self.awm(x_e, x_m)
            x_e, x_m = self.awm.split(x_f)
        else:
            x_f = torch.cat([x_e, x_m], dim=1)
        le, lm = self.head_eyes(x_e), self.head_mouth(x_m)
        log_probs = torch.logsumexp(torch.stack([F.log_softmax(le, 1), F.log_softmax(lm, 1)]),
                                    dim=0) - torch.log(torch.tensor(2.0, device=le.device))
        return MimickingOutput(log_probs, le, lm, self._au_feature(x_f)), (x_e, x_m)

    def forward(self, x: torch.Tensor) -> MimickingOutput:
        return self.head(*self.branch_maps(x))[0]


def au_cam(model: MimickingNet, x: torch.Tensor) -> torch.Tensor:
    """AU-CAM maps (Ruan et al., Sec. 4.6.2, Eq. 12–13).

    For branch b, C_b = ReLU(Σ_k α_b^k A_b^k) with α_b^k the spatial mean of
    ∂ max(X_b_w) / ∂A_b^k (Grad-CAM's weights, Selvaraju et al. 2017, with the backward pass from
    the largest entry of the weighted branch feature instead of a class score); the eyes map is
    stacked over the mouth map (Eq. 12).  Single-branch network: one map of the whole face from
    max of its pooled feature.

    Parameters
    ----------
    model : MimickingNet
        In eval mode (the caller's choice; batch norm uses the running statistics then).
    x : Tensor (B, C, S, S)

    Returns
    -------
    Tensor (B, S, S), float32, each map scaled to [0, 1] by its maximum (all zero if the map is).
    """
    with torch.enable_grad():
        a_e, a_m = model.branch_maps(x)
        maps = [a for a in (a_e, a_m) if a is not None]
        _, feats = model.head(a_e, a_m)
        cams = []
        for a, feat in zip(maps, feats, strict=False):
            target = feat.max(dim=1).values.sum()
            (grad,) = torch.autograd.grad(target, a, retain_graph=True)
            alpha = grad.mean(dim=(2, 3), keepdim=True)
            cams.append(F.relu((alpha * a).sum(dim=1, keepdim=True)))
    s = x.shape[-1]
    if len(cams) == 1:
        cam = F.interpolate(cams[0], size=(x.shape[-2], s), mode="bilinear", align_corners=False)
    else:
        half = x.shape[-2] // 2
        cam = torch.cat([F.interpolate(c, size=(half, s), mode="bilinear", align_corners=False)
                         for c in cams], dim=2)
    cam = cam[:, 0].detach()
    peak = cam.flatten(1).max(dim=1).values.clamp_min(1e-12)[:, None, None]
    return (cam / peak).float()

"""AC4AU: apex-free micro-AU detection with FRD and AUsER (ACM MM 2025).

"Regulatory Focus Theory Induced Micro-Expression Analysis with Structured Representation Learning"
(AC4AU), full text in ``papers/ac4au_apex_free_au_detection.txt``.  The authors released no code;
this module follows the paper's text and equations, and says where it has to choose.

Pipeline of the network (paper Fig. 3), for a batch of uniformly sampled onset→offset sequences
``x`` of shape (B, l, 3, 112, 112), l = 8:

1. Frame encoder (Sec. 3.2): MobileFaceNet (``pipeline.models.mobilefacenet``) convolutions on the
   B·l frames → tokens (B·l, H·W, C) + learnable positional embedding E (1, H·W, C) → spatial
   transformer encoder (4 heads) → reshaped back to (B·l, C, H, W) → residual refinement → F of
   shape (B, l, C').
2. FRD (Sec. 3.3, Eqs. 1–3): rDFT over time per channel; F^DC = Re(F̂_0) (B, C'), used only by the
   subject loss; F^AC = inverse rDFT of bins 1…⌊l/2⌋ (B, l, C').
3. Temporal transformer T over F^AC and mean pooling M: f = M(T(F^AC)) (B, C') (Eq. 4).
4. AUsER (Sec. 3.4, Eqs. 5–6): 12 experts E_m, per-AU gates α_k = softmax(G_k(f)),
   ŷ_k = Σ_m α_{k,m} E_m(f).

Choices the paper leaves open (all constructor arguments):

- *Residual refinement.*  "three convolutional layers interleaved with batch normalization and a
  PReLU activation after the first normalization" is read as MobileFaceNet's own output block
  (1x1 conv → 512 + BN + PReLU, linear 7x7 GDConv + BN, linear 1x1 conv → C' + BN), which keeps
  face-recognition weights usable for it; the residual paths are those of the transformer encoder
  layers (post-norm, as Vaswani et al. [38]).  The spatial transformer sits after the last
  bottleneck (7x7x128 at 112 px).  Its depth, and the temporal transformer's, are not given: 1 layer
  each by default, feed-forward width 4·d, dropout 0.1.
- *Dropout before FRD.*  The frame encoder sees the B·l frames as independent images, so ordinary
  dropout draws a different mask for every frame of a sequence: a static sequence then gets an
  AC part that is pure dropout noise (measured: 18 % of the feature size at dropout 0.1 — fake
  motion larger than the stand-in's real motion).  ``dropout_mask="sequence"`` (default) draws one
  mask per sequence, shared by its l frames (:class:`SequenceDropout`, on the spatial
  transformer's residual and feed-forward dropouts; its attention-weight dropout is off), so a
  static sequence keeps F^AC = 0; ``"frame"`` is plain per-frame dropout.
- *Temporal positional embedding.*  Only the spatial one is mentioned; without one the temporal
  transformer + mean pooling would ignore frame order, so a learnable (1, l, C') embedding is added
  by default (``temporal_pos_embed=False`` drops it).
- *Experts.*  E_m is not specified: a two-layer perceptron C' → ``expert_hidden`` → 1 (ReLU) by
  default, a single linear layer with ``expert_hidden=0``.
- *Mixing.*  Eq. 5 mixes the experts' outputs and calls the result ŷ ∈ [0, 1]; with
  ``mixing="probability"`` (default) each E_m ends in a sigmoid and the probabilities are mixed
  (exactly Eq. 5); ``mixing="logit"`` mixes the experts' logits instead.  Either way the forward
  pass returns logits, computed in log space so that sigmoid(logit) = ŷ without overflow.
- *DC scaling.*  Eq. 2 with the unnormalised DFT of Eq. 1 makes F^DC the temporal *sum*
  (l x the mean); we keep that.  Eq. 3 as printed drops the 1/l factor and the conjugate half; the
  text says "apply inverse rDFT", which we follow (``torch.fft.irfft`` with bin 0 zeroed), so
  F_t = F^DC / l + F^AC_t exactly and F^AC has zero temporal mean.

Ablations of Table 2: ``use_frd=False`` (no decomposition: T runs on F, no DC, no subject loss),
``use_auser=False`` (one linear head after T and M), BCE instead of the focal loss
(``pipeline.models.ac4au_losses``), no pre-training (no weight file).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.transforms.v2 import functional as TF

from pipeline.databases.aus import CD6ME_AU_COLUMNS
from pipeline.models.mobilefacenet import MobileFaceNet, load_backbone_weights

log = logging.getLogger(__name__)

#: The 12 CD6ME AUs, in the order of the label columns and of the network's outputs.
CD6ME_AUS: tuple[str, ...] = CD6ME_AU_COLUMNS


# --------------------------------------------------------------------------------------------
# Input conversion
# --------------------------------------------------------------------------------------------


def sequence_to_tensor(frames: np.ndarray) -> Tensor:
    """Convert a stored sequence (``faces.h5`` ``seq112/frames`` row) to a channels-first tensor.

    Parameters
    ----------
    frames : ndarray of shape (l, H, W, 3), uint8
        RGB frames, as the ``faces`` stage stores them.

    Returns
    -------
    Tensor of shape (l, 3, H, W), uint8

    Raises
    ------
    ValueError
        If the array is not (l, H, W, 3) uint8.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(
            f"expected a uint8 sequence of shape (l, H, W, 3), got {frames.dtype} {frames.shape}"
        )
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).contiguous()


def normalise_frames(frames: Tensor) -> Tensor:
    """Scale frames to the face-recognition input range, (v − 127.5) / 128 on the 0–255 scale.

    The normalisation MobileFaceNet is trained with (Chen et al., 2018; InsightFace).

    Parameters
    ----------
    frames : Tensor of shape (..., 3, H, W)
        uint8 in [0, 255], or float in [0, 1].

    Returns
    -------
    Tensor of the same shape, float32, about [−1, 1]
    """
    if frames.dtype == torch.uint8:
        values = frames.float()
    elif frames.is_floating_point():
        values = frames.float() * 255.0
    else:
        raise TypeError(f"frames must be uint8 or float, got {frames.dtype}")
    return (values - 127.5) / 128.0


# --------------------------------------------------------------------------------------------
# FRD
# --------------------------------------------------------------------------------------------


def frd_decompose(features: Tensor) -> tuple[Tensor, Tensor]:
    """Frequency-aware Redundancy Decomposition of a feature sequence (AC4AU Sec. 3.3).

    rDFT along time per channel (Eq. 1), F̂_k = Σ_t F_t e^{−2πikt/l}, k = 0…⌊l/2⌋;
    DC = Re(F̂_0) (Eq. 2), i.e. the temporal **sum** (l x the mean), since Eq. 1 is unnormalised;
    AC = inverse rDFT of the spectrum with bin 0 set to zero (Eq. 3, following the text's "inverse
    rDFT" rather than the printed sum, which omits the 1/l factor and the conjugate half).

    So that ``features == dc[:, None] / l + ac`` and ``ac.mean(dim=1) == 0`` (to rounding).  Since
    only bin 0 is removed, F^AC equals F minus its temporal mean; the transform is kept because it
    is the paper's formulation (and the place to drop further bins, should one want to).

    Parameters
    ----------
    features : Tensor of shape (B, l, C'), float
        Frame-level features F.

    Returns
    -------
    dc : Tensor of shape (B, C')
        F^DC, temporal sum per channel.
    ac : Tensor of shape (B, l, C')
        F^AC, the zero-mean dynamic part.

    Raises
    ------
    ValueError
        If ``features`` is not 3-D or has no frames.
    """
    if features.ndim != 3 or features.shape[1] < 1:
        raise ValueError(f"expected features of shape (B, l, C') with l >= 1, got {tuple(features.shape)}")
    length = features.shape[1]
    spectrum = torch.fft.rfft(features, dim=1)
    dc = spectrum[:, 0].real
    ac_spectrum = torch.cat([torch.zeros_like(spectrum[:, :1]), spectrum[:, 1:]], dim=1)
    ac = torch.fft.irfft(ac_spectrum, n=length, dim=1)
    return dc, ac


class FrequencyAwareRedundancyDecomposer(nn.Module):
    """FRD as a module (no parameters); see :func:`frd_decompose`."""

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """(B, l, C') → (DC (B, C'), AC (B, l, C'))."""
        return frd_decompose(features)


# --------------------------------------------------------------------------------------------
# Frame encoder (Sec. 3.2)
# --------------------------------------------------------------------------------------------


class SequenceDropout(nn.Module):
    """Dropout with one mask per sequence, shared by its l frames.

    For frame features of shape (B·l, ...) (sequence-major, as :meth:`AC4AU.frame_features`
    flattens them) the mask has shape (B, 1, ...) and is broadcast over the l frames, so frames
    that are equal stay equal and FRD's AC part of a static sequence stays 0.  Inverted dropout
    (kept values scaled by 1 / (1 − p)); the identity in eval mode.

    Parameters
    ----------
    p : float
        Drop probability in [0, 1).
    sequence_length : int
        l.

    Raises
    ------
    ValueError
        If p is outside [0, 1), or (in forward) the leading axis is not a multiple of l.
    """

    def __init__(self, p: float, sequence_length: int) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout p must be in [0, 1), got {p}")
        self.p = float(p)
        self.sequence_length = int(sequence_length)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        n, length = x.shape[0], self.sequence_length
        if n % length:
            raise ValueError(f"{n} frames are not whole sequences of l = {length}")
        shape = (n // length, 1, *x.shape[1:])
        mask = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(1.0 - self.p)
        mask = mask.div_(1.0 - self.p).expand(n // length, length, *x.shape[1:])
        return x * mask.reshape(x.shape)

    def extra_repr(self) -> str:
        return f"p={self.p}, sequence_length={self.sequence_length}"


def _share_dropout_over_sequence(encoder: nn.TransformerEncoder, p: float, length: int) -> None:
    """Replace the residual / feed-forward dropouts of every layer by :class:`SequenceDropout`
    and switch off the attention-weight dropout (no per-sequence equivalent)."""
    for layer in encoder.layers:
        for attr in ("dropout", "dropout1", "dropout2"):
            setattr(layer, attr, SequenceDropout(p, length))
        layer.self_attn.dropout = 0.0


#: Dropout masks of the frame encoder (see module doc).
DROPOUT_MASKS: tuple[str, ...] = ("sequence", "frame")


def _encoder(d_model: int, heads: int, layers: int, ff_mult: float, dropout: float) -> nn.Module:
    if d_model % heads != 0:
        raise ValueError(f"feature size {d_model} is not divisible by the {heads} attention heads")
    layer = nn.TransformerEncoderLayer(
        d_model,
        heads,
        dim_feedforward=max(1, int(round(ff_mult * d_model))),
        dropout=dropout,
        activation="relu",
        batch_first=True,
        norm_first=False,
    )
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class SpatialFrameEncoder(nn.Module):
    """MobileFaceNet with a spatial transformer encoder and residual refinement (Sec. 3.2).

    Parameters
    ----------
    embedding_dim : int
        C', the per-frame feature size (MobileFaceNet embedding; paper: 128).
    width_mult : float
        MobileFaceNet width multiplier (paper: 1.0).
    input_size : int
        Frame side in pixels (paper: 112).
    spatial_heads : int
        Attention heads of the spatial transformer (paper: 4).
    spatial_layers : int
        Encoder layers (not given in the paper; 1).
    ff_mult : float
        Feed-forward width as a multiple of C (not given; 4).
    dropout : float
        Transformer dropout (not given; 0.1).
    dropout_mask : {"sequence", "frame"}
        One dropout mask per sequence (default; see module doc) or per frame.
    sequence_length : int
        l, for ``dropout_mask="sequence"``.
    """

    def __init__(
        self,
        embedding_dim: int = 128,
        width_mult: float = 1.0,
        input_size: int = 112,
        spatial_heads: int = 4,
        spatial_layers: int = 1,
        ff_mult: float = 4.0,
        dropout: float = 0.1,
        dropout_mask: str = "sequence",
        sequence_length: int = 8,
    ) -> None:
        super().__init__()
        self.backbone = MobileFaceNet(embedding_dim, width_mult, input_size)
        channels = self.backbone.feature_channels
        side = self.backbone.feature_size
        self.pos_embed = nn.Parameter(torch.zeros(1, side * side, channels))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.spatial_transformer = _encoder(channels, spatial_heads, spatial_layers, ff_mult, dropout)
        if dropout_mask not in DROPOUT_MASKS:
            raise ValueError(f"dropout_mask must be one of {DROPOUT_MASKS}, got {dropout_mask!r}")
        if dropout_mask == "sequence":
            _share_dropout_over_sequence(self.spatial_transformer, dropout, sequence_length)

    def forward(self, frames: Tensor) -> Tensor:
        """Per-frame features.

        Parameters
        ----------
        frames : Tensor of shape (N, 3, S, S), float
            Normalised frames (:func:`normalise_frames`), N = B·l.

        Returns
        -------
        Tensor of shape (N, C')
        """
        fmap = self.backbone.forward_features(frames)
        n, c, h, w = fmap.shape
        tokens = fmap.flatten(2).transpose(1, 2) + self.pos_embed  # X ← X + E, (N, H·W, C)
        tokens = self.spatial_transformer(tokens)
        fmap = tokens.transpose(1, 2).reshape(n, c, h, w)
        return self.backbone.forward_head(fmap)


# --------------------------------------------------------------------------------------------
# Temporal encoder and AUsER (Sec. 3.4)
# --------------------------------------------------------------------------------------------


class TemporalEncoder(nn.Module):
    """Temporal transformer encoder T and average pooling M, f = M(T(F^AC)) (Eq. 4).

    Parameters
    ----------
    dim : int
        C'.
    sequence_length : int
        l, needed for the learnable temporal positional embedding (paper: 8).
    heads, layers : int
        Attention heads and encoder layers (not given in the paper; 4 and 1).
    ff_mult, dropout : float
        As :class:`SpatialFrameEncoder`.
    pos_embed : bool
        Add a learnable (1, l, C') temporal positional embedding (our choice; see module doc).
    """

    def __init__(
        self,
        dim: int,
        sequence_length: int = 8,
        heads: int = 4,
        layers: int = 1,
        ff_mult: float = 4.0,
        dropout: float = 0.1,
        pos_embed: bool = True,
    ) -> None:
        super().__init__()
        self.sequence_length = sequence_length
        self.pos_embed = nn.Parameter(torch.zeros(1, sequence_length, dim)) if pos_embed else None
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.transformer = _encoder(dim, heads, layers, ff_mult, dropout)

    def forward(self, sequence: Tensor) -> Tensor:
        """(B, l, C') → f (B, C')."""
        if self.pos_embed is not None:
            if sequence.shape[1] != self.sequence_length:
                raise ValueError(
                    f"sequence of {sequence.shape[1]} frames, the temporal positional embedding "
                    f"was built for l = {self.sequence_length}"
                )
            sequence = sequence + self.pos_embed
        return self.transformer(sequence).mean(dim=1)


class AUSpecificExpertRouter(nn.Module):
    """AUsER: a mixture of M experts with one softmax gate per AU (Sec. 3.4, Eqs. 5–6).

    α_{k,·} = softmax(G_k(f)), G_k(f) = W_k f + b_k with W_k ∈ R^{M x C'} (Eq. 6); the K gates are
    held as one ``nn.Linear(C', K·M)`` whose rows k·M…(k+1)·M−1 are W_k (the same parameters as K
    separate layers).  ŷ_k = Σ_m α_{k,m} E_m(f) (Eq. 5).

    Parameters
    ----------
    dim : int
        C'.
    n_aus : int
        K, number of AUs (12).
    n_experts : int
        M, number of experts (paper: 12).
    expert_hidden : int
        Hidden width of each expert's two-layer perceptron; 0 for a linear expert.
    mixing : {"probability", "logit"}
        Mix the experts' sigmoid outputs (Eq. 5 as written) or their logits.
    """

    def __init__(
        self,
        dim: int,
        n_aus: int = 12,
        n_experts: int = 12,
        expert_hidden: int = 64,
        mixing: str = "probability",
    ) -> None:
        super().__init__()
        if mixing not in ("probability", "logit"):
            raise ValueError(f"mixing must be 'probability' or 'logit', got {mixing!r}")
        if n_experts < 1 or n_aus < 1:
            raise ValueError(f"need n_aus >= 1 and n_experts >= 1, got {n_aus}, {n_experts}")
        self.n_aus = n_aus
        self.n_experts = n_experts
        self.mixing = mixing
        self.gates = nn.Linear(dim, n_aus * n_experts)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, expert_hidden), nn.ReLU(), nn.Linear(expert_hidden, 1))
            if expert_hidden > 0
            else nn.Linear(dim, 1)
            for _ in range(n_experts)
        )

    def forward(self, f: Tensor) -> tuple[Tensor, Tensor]:
        """Route the pooled feature.

        Parameters
        ----------
        f : Tensor of shape (B, C')

        Returns
        -------
        logits : Tensor of shape (B, K)
            sigmoid(logits) = ŷ.
        gates : Tensor of shape (B, K, M)
            α_{k,m}, rows sum to one.
        """
        gate_logits = self.gates(f).view(-1, self.n_aus, self.n_experts)
        gates = gate_logits.softmax(dim=-1)
        expert = torch.cat([e(f) for e in self.experts], dim=1)  # E_m(f), (B, M)
        if self.mixing == "logit":
            logits = torch.einsum("bkm,bm->bk", gates, expert)
        else:
            log_gates = gate_logits.log_softmax(dim=-1)
            log_p = torch.logsumexp(log_gates + F.logsigmoid(expert)[:, None, :], dim=-1)
            log_q = torch.logsumexp(log_gates + F.logsigmoid(-expert)[:, None, :], dim=-1)
            logits = log_p - log_q  # logit(Σ_m α_km σ(E_m)) in log space
        return logits, gates


# --------------------------------------------------------------------------------------------
# AC4AU
# --------------------------------------------------------------------------------------------


class AC4AUOutput(NamedTuple):
    """Outputs of :class:`AC4AU`.

    Attributes
    ----------
    logits : Tensor of shape (B, 12)
        AU logits; sigmoid gives ŷ, threshold 0.5 (Sec. 3.1).
    dc : Tensor of shape (B, C') or None
        F^DC (temporal sum), input of the subject loss; None when ``use_frd`` is off.
    gates : Tensor of shape (B, 12, M) or None
        AUsER gate weights α; None when ``use_auser`` is off.
    pooled : Tensor of shape (B, C')
        f = M(T(·)), the sequence feature fed to the head (for visualisation).
    """

    logits: Tensor
    dc: Tensor | None
    gates: Tensor | None
    pooled: Tensor


class AC4AU(nn.Module):
    """AC4AU network (paper Fig. 3).  Hyper-parameters as :func:`build_ac4au` documents them.

    Parameters
    ----------
    n_aus : int
        Number of AU outputs (12 CD6ME AUs).
    sequence_length : int
        l (paper: 8).
    input_size : int
        Frame side in pixels (paper: 112).
    embedding_dim : int
        C' (paper: MobileFaceNet's 128).
    width_mult : float
        MobileFaceNet width multiplier (paper: 1.0).
    spatial_heads, spatial_layers, temporal_heads, temporal_layers : int
        Transformer sizes (paper: 4 spatial heads; the rest not given: 1 layer, 4 heads).
    ff_mult, dropout : float
        Transformer feed-forward multiple and dropout.
    dropout_mask : {"sequence", "frame"}
        Dropout mask of the frame encoder: one per sequence (default) or per frame.
    temporal_pos_embed : bool
        Learnable temporal positional embedding.
    use_frd : bool
        FRD on (paper) or off (ablation: T runs on F, no DC).
    use_auser : bool
        AUsER head (paper) or one linear layer (ablation).
    n_experts, expert_hidden : int
        AUsER experts M (paper: 12) and their hidden width.
    mixing : {"probability", "logit"}
        AUsER mixing (see :class:`AUSpecificExpertRouter`).
    """

    def __init__(
        self,
        n_aus: int = 12,
        sequence_length: int = 8,
        input_size: int = 112,
        embedding_dim: int = 128,
        width_mult: float = 1.0,
        spatial_heads: int = 4,
        spatial_layers: int = 1,
        temporal_heads: int = 4,
        temporal_layers: int = 1,
        ff_mult: float = 4.0,
        dropout: float = 0.1,
        dropout_mask: str = "sequence",
        temporal_pos_embed: bool = True,
        use_frd: bool = True,
        use_auser: bool = True,
        n_experts: int = 12,
        expert_hidden: int = 64,
        mixing: str = "probability",
    ) -> None:
        super().__init__()
        self.n_aus = n_aus
        self.sequence_length = sequence_length
        self.input_size = input_size
        self.embedding_dim = embedding_dim
        self.use_frd = use_frd
        self.use_auser = use_auser
        self.frame_encoder = SpatialFrameEncoder(
            embedding_dim, width_mult, input_size, spatial_heads, spatial_layers, ff_mult, dropout,
            dropout_mask, sequence_length,
        )
        self.frd = FrequencyAwareRedundancyDecomposer() if use_frd else None
        self.temporal = TemporalEncoder(
            embedding_dim, sequence_length, temporal_heads, temporal_layers, ff_mult, dropout,
            temporal_pos_embed,
        )
        self.head: nn.Module
        if use_auser:
            self.head = AUSpecificExpertRouter(embedding_dim, n_aus, n_experts, expert_hidden, mixing)
        else:
            self.head = nn.Linear(embedding_dim, n_aus)

    def frame_features(self, x: Tensor) -> Tensor:
        """F of shape (B, l, C') for normalised sequences x of shape (B, l, 3, S, S)."""
        if x.ndim != 5 or x.shape[2] != 3 or x.shape[3:] != (self.input_size, self.input_size):
            raise ValueError(
                f"expected sequences of shape (B, l, 3, {self.input_size}, {self.input_size}), "
                f"got {tuple(x.shape)}"
            )
        b, length = x.shape[:2]
        return self.frame_encoder(x.reshape(b * length, *x.shape[2:])).view(b, length, -1)

    def forward(self, x: Tensor) -> AC4AUOutput:
        """Run the network.

        Parameters
        ----------
        x : Tensor of shape (B, l, 3, S, S), float
            Normalised sequences (:func:`normalise_frames`), S = ``input_size``.

        Returns
        -------
        AC4AUOutput
            logits (B, 12), dc (B, C') or None, gates (B, 12, M) or None, pooled (B, C').

        Raises
        ------
        ValueError
            On an input of another shape.
        """
        features = self.frame_features(x)
        dc = None
        if self.frd is not None:
            dc, features = self.frd(features)
        pooled = self.temporal(features)
        if self.use_auser:
            logits, gates = self.head(pooled)
        else:
            logits, gates = self.head(pooled), None
        return AC4AUOutput(logits, dc, gates, pooled)


# --------------------------------------------------------------------------------------------
# Augmentation (Sec. 4.1)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SequenceAugment:
    """Horizontal flip, small rotation and colour jitter, one draw per sequence (Sec. 4.1).

    The paper names the three augmentations but not their ranges; the defaults are ours.  Every
    frame of a sequence gets the same flip, angle and jitter factors, so the augmentation adds no
    motion between frames.

    Parameters
    ----------
    flip_p : float
        Probability of a horizontal flip.
    max_rotation_deg : float
        Angle drawn uniformly in [−max, max] degrees, bilinear, about the centre, black fill.
    brightness, contrast, saturation : float
        Factors drawn uniformly in [1 − v, 1 + v] (torchvision ``ColorJitter`` semantics).
    hue : float
        Hue shift drawn uniformly in [−hue, hue] (fraction of the hue circle, ≤ 0.5).
    """

    flip_p: float = 0.5
    max_rotation_deg: float = 10.0
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.02

    def __post_init__(self) -> None:
        if not 0.0 <= self.flip_p <= 1.0:
            raise ValueError(f"flip_p must be in [0, 1], got {self.flip_p}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {self.hue}")
        for name in ("max_rotation_deg", "brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def sample(self, generator: torch.Generator) -> dict[str, Any]:
        """Draw one parameter set: flip, angle (degrees), the three factors, hue, jitter order."""
        u = torch.rand(6, generator=generator, dtype=torch.float64).tolist()
        order = torch.randperm(4, generator=generator).tolist()
        return {
            "flip": u[0] < self.flip_p,
            "angle": (2.0 * u[1] - 1.0) * self.max_rotation_deg,
            "brightness": 1.0 + (2.0 * u[2] - 1.0) * self.brightness,
            "contrast": 1.0 + (2.0 * u[3] - 1.0) * self.contrast,
            "saturation": 1.0 + (2.0 * u[4] - 1.0) * self.saturation,
            "hue": (2.0 * u[5] - 1.0) * self.hue,
            "order": order,
        }

    def apply(self, frames: Tensor, params: Mapping[str, Any]) -> Tensor:
        """Apply one parameter set to every frame.

        Parameters
        ----------
        frames : Tensor of shape (l, 3, H, W)
            uint8 in [0, 255] or float in [0, 1].
        params : mapping
            From :meth:`sample`.

        Returns
        -------
        Tensor of the same shape and dtype.

        Raises
        ------
        ValueError
            If ``frames`` is not (l, 3, H, W).
        """
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"expected a sequence of shape (l, 3, H, W), got {tuple(frames.shape)}")
        out = frames
        if params["flip"]:
            out = TF.horizontal_flip(out)
        if params["angle"] != 0.0:
            out = TF.rotate(out, params["angle"], interpolation=TF.InterpolationMode.BILINEAR)
        jitter = (
            (TF.adjust_brightness, params["brightness"], 1.0),
            (TF.adjust_contrast, params["contrast"], 1.0),
            (TF.adjust_saturation, params["saturation"], 1.0),
            (TF.adjust_hue, params["hue"], 0.0),
        )
        for i in params["order"]:
            fn, value, identity = jitter[i]
            if value != identity:
                out = fn(out, value)
        return out

    def __call__(self, frames: Tensor, generator: torch.Generator) -> Tensor:
        """Augment one sequence (l, 3, H, W) with parameters drawn from ``generator``."""
        return self.apply(frames, self.sample(generator))


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------

#: Paper configuration: every key the AC4AU builders read, with its published (or, where the
#: paper is silent, our documented) value.  ``build_ac4au`` reads the model keys,
#: ``pipeline.models.ac4au_losses.build_ac4au_criterion`` the loss keys,
#: :func:`build_sequence_augment` the ``augment`` block.
AC4AU_PAPER_CONFIG: dict[str, Any] = {
    # model
    "sequence_length": 8,          # l, frames per sequence (Sec. 4.1)
    "input_size": 112,             # frame side, px (Sec. 3.1)
    "embedding_dim": 128,          # C', MobileFaceNet embedding
    "width_mult": 1.0,             # MobileFaceNet width multiplier
    "spatial_heads": 4,            # Sec. 3.2
    "spatial_layers": 1,           # not given
    "temporal_heads": 4,           # not given
    "temporal_layers": 1,          # not given
    "ff_mult": 4.0,                # not given
    "dropout": 0.1,                # not given
    "dropout_mask": "sequence",    # ours: one mask per sequence before FRD | frame (module doc)
    "temporal_pos_embed": True,    # not given (see module doc)
    "use_frd": True,               # ablation switch (Table 2)
    "use_auser": True,             # ablation switch (Table 2)
    "n_experts": 12,               # M (Sec. 3.4)
    "expert_hidden": 64,           # not given; 0 = linear experts
    "mixing": "probability",       # Eq. 5 as written
    "pretrained": None,            # path of face-recognition MobileFaceNet weights; None = none
    "pretrained_strict": True,     # all backbone keys required, nothing extra (load_backbone_weights)
    # loss
    "loss": "focal",               # focal (Eq. 8) | bce (ablation)
    "focal_gamma": 2.0,            # exponent of Eq. 8
    "gamma": 0.1,                  # γ of Eq. 9 (Table 3)
    "gamma_warmup_epochs": 0,      # ours: γ ramped linearly from 0 over these epochs; 0 = paper
    "arcface_scale": 32.0,         # Eq. 7
    "arcface_margin": 0.5,         # Eq. 7
    # augmentation (Sec. 4.1; ranges not given)
    "augment": {
        "flip_p": 0.5,
        "max_rotation_deg": 10.0,
        "brightness": 0.2,
        "contrast": 0.2,
        "saturation": 0.2,
        "hue": 0.02,
    },
}

#: Quick configuration: the same architecture, a quarter of MobileFaceNet's width and a smaller
#: C' and experts (widths only; depths and every component are the paper's).
AC4AU_QUICK_OVERRIDES: dict[str, Any] = {
    "width_mult": 0.25,
    "embedding_dim": 64,
    "expert_hidden": 32,
}

_MODEL_KEYS = (
    "sequence_length", "input_size", "embedding_dim", "width_mult", "spatial_heads",
    "spatial_layers", "temporal_heads", "temporal_layers", "ff_mult", "dropout",
    "dropout_mask", "temporal_pos_embed", "use_frd", "use_auser", "n_experts", "expert_hidden", "mixing",
)


def ac4au_config(cfg: Mapping[str, Any] | None = None, profile: str = "paper") -> dict[str, Any]:
    """Complete a (partial) AC4AU parameter dict with the defaults of ``profile``.

    Parameters
    ----------
    cfg : mapping, optional
        Keys of :data:`AC4AU_PAPER_CONFIG` to override (``augment`` may be partial).
    profile : {"paper", "quick"}
        Defaults: the paper's, or those with :data:`AC4AU_QUICK_OVERRIDES` applied.

    Returns
    -------
    dict
        Every key of :data:`AC4AU_PAPER_CONFIG`.

    Raises
    ------
    ValueError
        On an unknown key (a typo such as ``use_fdr`` must not be ignored silently), an unknown
        profile, or an invalid ``loss``/``mixing`` value.
    """
    if profile not in ("paper", "quick"):
        raise ValueError(f"profile must be 'paper' or 'quick', got {profile!r}")
    out = dict(AC4AU_PAPER_CONFIG, augment=dict(AC4AU_PAPER_CONFIG["augment"]))
    if profile == "quick":
        out.update(AC4AU_QUICK_OVERRIDES)
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(out))
    if unknown:
        raise ValueError(f"unknown AC4AU parameters {unknown}; known: {sorted(out)}")
    augment = cfg.pop("augment", None) or {}
    bad_aug = sorted(set(augment) - set(out["augment"]))
    if bad_aug:
        raise ValueError(f"unknown AC4AU augment parameters {bad_aug}; known: {sorted(out['augment'])}")
    out.update(cfg)
    out["augment"].update(augment)
    if out["loss"] not in ("focal", "bce"):
        raise ValueError(f"loss must be 'focal' or 'bce', got {out['loss']!r}")
    if out["dropout_mask"] not in DROPOUT_MASKS:
        raise ValueError(f"dropout_mask must be one of {DROPOUT_MASKS}, got {out['dropout_mask']!r}")
    warm = out["gamma_warmup_epochs"]
    if isinstance(warm, bool) or not isinstance(warm, int) or warm < 0:
        raise ValueError(f"gamma_warmup_epochs must be an integer >= 0, got {warm!r}")
    if out["mixing"] not in ("probability", "logit"):
        raise ValueError(f"mixing must be 'probability' or 'logit', got {out['mixing']!r}")
    for key in ("use_frd", "use_auser", "temporal_pos_embed", "pretrained_strict"):
        if not isinstance(out[key], bool):  # "false" from a hand-edited file must not be truthy
            raise ValueError(f"{key} must be true or false, got {out[key]!r}")
    for key in ("gamma", "focal_gamma", "arcface_scale", "arcface_margin", "dropout"):
        value = out[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError(f"{key} must be a number >= 0, got {value!r}")
    for key in ("sequence_length", "input_size", "embedding_dim", "n_experts", "spatial_heads",
                "temporal_heads", "spatial_layers", "temporal_layers"):
        if isinstance(out[key], bool) or not isinstance(out[key], int) or out[key] < 1:
            raise ValueError(f"{key} must be an integer >= 1, got {out[key]!r}")
    if out["pretrained"] is not None and not isinstance(out["pretrained"], str | os.PathLike):
        raise ValueError(f"pretrained must be a path or null, got {out['pretrained']!r}")
    return out


def build_ac4au(cfg: Mapping[str, Any] | None = None, profile: str = "paper") -> AC4AU:
    """Build the AC4AU network from a parameter dict, loading backbone weights if configured.

    Parameters
    ----------
    cfg : mapping, optional
        AC4AU parameters (keys of :data:`AC4AU_PAPER_CONFIG`, documented there); missing keys take
        the ``profile`` defaults.  Loss and augmentation keys are accepted and ignored here, so the
        same dict feeds ``build_ac4au_criterion`` and :func:`build_sequence_augment`.
    profile : {"paper", "quick"}
        Which defaults fill the missing keys.

    Returns
    -------
    AC4AU
        The network; its backbone holds the ``pretrained`` weights when a path is given, random
        initial weights otherwise (the "no pre-training" ablation of Table 2).

    Raises
    ------
    ValueError
        On unknown keys or invalid values.
    FileNotFoundError, pipeline.models.mobilefacenet.WeightLoadError
        If ``pretrained`` names a missing or non-matching weight file.
    """
    full = ac4au_config(cfg, profile)
    model = AC4AU(n_aus=len(CD6ME_AUS), **{k: full[k] for k in _MODEL_KEYS})
    if full["pretrained"]:
        load_backbone_weights(model, full["pretrained"], strict=bool(full["pretrained_strict"]))
    else:
        log.info("AC4AU backbone randomly initialised (no face-recognition weights configured)")
    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "AC4AU: width %.2f, C' %d, FRD %s, AUsER %s, %.2f M parameters",
        full["width_mult"], full["embedding_dim"], full["use_frd"], full["use_auser"],
        n_params / 1e6,
    )
    return model


def build_sequence_augment(cfg: Mapping[str, Any] | None = None, profile: str = "paper") -> SequenceAugment:
    """The :class:`SequenceAugment` of the ``augment`` block of an AC4AU parameter dict."""
    return SequenceAugment(**ac4au_config(cfg, profile)["augment"])


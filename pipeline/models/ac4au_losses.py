"""Losses of AC4AU (ACM MM 2025, Sec. 3.5): class-aware focal loss, ArcFace subject loss on F^DC.

L = γ·L_DC + L_AU (Eq. 9), γ = 0.1 (Table 3).

- L_AU, Eq. 8, per sample, summed over the K = 12 AUs and averaged over the batch:
  −Σ_k [(1 − α_k)(1 − ŷ_k)² y_k log ŷ_k + α_k ŷ_k² (1 − y_k) log(1 − ŷ_k)],
  α_k the prior probability of a positive for AU k (:func:`positive_priors`).  The paper computes α
  "once globally from all datasets" (Sec. 4.2), which includes the test fold's labels; here the
  caller passes the label matrix it chooses, and the pipeline passes the training folds' only.
  The BCE ablation (Table 2) uses the same reduction (sum over AUs, mean over samples) so that
  only the per-term weights differ.
- L_DC, Eq. 7: additive angular margin (ArcFace, Deng et al. [7]) softmax over the *training*
  subjects, s = 32, m = 0.5, on the normalised F^DC against learnable unit prototypes w_j.  The
  number of subjects changes from fold to fold, so the prototypes live in this loss (build it per
  fold and give its parameters to the optimiser) and the loss is used in training only.  Subject
  ids are mapped to 0…S−1 with :func:`subject_index` / :func:`encode_subjects`; a label outside
  that range (a test-fold subject) raises.

Losses take logits and work in log space (``logsigmoid``) so that no probability is rounded to 0
or 1 before its logarithm.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from pipeline.models.ac4au import AC4AUOutput, ac4au_config

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# α priors and subject ids
# --------------------------------------------------------------------------------------------


def positive_priors(labels: np.ndarray) -> np.ndarray:
    """α_k of Eq. 8: the fraction of positive samples of each AU.

    Parameters
    ----------
    labels : ndarray of shape (N, K), 0/1 (any integer, bool or float dtype)
        AU activation matrix of the training samples (K = 12 CD6ME AUs in their column order).

    Returns
    -------
    ndarray of shape (K,), float64
        n_positive_k / N, in [0, 1].

    Raises
    ------
    ValueError
        If ``labels`` is not 2-D, has no rows, or holds values other than 0 and 1 (NaN included).
    """
    arr = np.asarray(labels)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"expected a label matrix of shape (N, K) with N >= 1, got {arr.shape}")
    values = arr.astype(np.float64)
    bad = ~np.isin(values, (0.0, 1.0))
    if bad.any():
        rows, cols = np.nonzero(bad)
        raise ValueError(
            f"AU labels must be 0 or 1; {bad.sum()} entries are not, first at row {rows[0]}, "
            f"column {cols[0]}: {arr[rows[0], cols[0]]!r}"
        )
    priors = values.mean(axis=0)
    empty = np.flatnonzero(priors == 0.0)
    if empty.size:
        log.warning(
            "AU columns %s have no positive sample: α = 0, their negatives carry no focal loss",
            empty.tolist(),
        )
    return priors


def subject_index(subjects: Iterable[str]) -> dict[str, int]:
    """Map the training subjects (e.g. ``"casme2/sub01"``) to class indices 0…S−1, sorted.

    Parameters
    ----------
    subjects : iterable of str
        Subject ids of the training samples (repeats allowed).

    Returns
    -------
    dict
        subject id → index.

    Raises
    ------
    ValueError
        If there is no subject.
    """
    unique = sorted(set(subjects))
    if not unique:
        raise ValueError("no training subject given")
    return {s: i for i, s in enumerate(unique)}


def encode_subjects(subjects: Sequence[str], index: Mapping[str, int]) -> np.ndarray:
    """Class indices of ``subjects`` under a training :func:`subject_index`.

    Parameters
    ----------
    subjects : sequence of str
        Subject ids of a batch or split.
    index : mapping
        From :func:`subject_index` on the training subjects.

    Returns
    -------
    ndarray of shape (N,), int64

    Raises
    ------
    ValueError
        If a subject is not a training subject (for instance a test-fold subject).
    """
    unknown = sorted({s for s in subjects if s not in index})
    if unknown:
        raise ValueError(
            f"subjects {unknown[:10]}{' …' if len(unknown) > 10 else ''} are not training subjects; "
            "the subject loss may only see the training folds' subjects"
        )
    return np.asarray([index[s] for s in subjects], dtype=np.int64)


# --------------------------------------------------------------------------------------------
# L_AU
# --------------------------------------------------------------------------------------------


def _check_au(logits: Tensor, targets: Tensor) -> Tensor:
    if logits.ndim != 2 or targets.shape != logits.shape:
        raise ValueError(
            f"expected logits and targets of the same shape (B, K), got {tuple(logits.shape)} and "
            f"{tuple(targets.shape)}"
        )
    targets = targets.to(logits.dtype)
    if bool(((targets < 0) | (targets > 1)).any()):
        raise ValueError("AU targets must be in [0, 1]")
    return targets


def class_aware_focal_loss(
    logits: Tensor,
    targets: Tensor,
    alpha: Tensor | np.ndarray,
    focal_gamma: float = 2.0,
    reduction: str = "mean",
) -> Tensor:
    """Class-aware focal loss, AC4AU Eq. 8.

    Per sample: −Σ_k [(1 − α_k)(1 − ŷ_k)^γf y_k log ŷ_k + α_k ŷ_k^γf (1 − y_k) log(1 − ŷ_k)],
    ŷ = sigmoid(logits), γf = 2 in the paper.

    Parameters
    ----------
    logits : Tensor of shape (B, K), float
    targets : Tensor of shape (B, K)
        0/1 AU labels.
    alpha : Tensor or ndarray of shape (K,)
        Positive priors α_k (:func:`positive_priors`).
    focal_gamma : float
        Focusing exponent (paper: 2).
    reduction : {"mean", "sum", "none"}
        Over samples: mean (default), sum, or none (per-sample values of shape (B,)).

    Returns
    -------
    Tensor
        Scalar, or (B,) with ``reduction="none"``.

    Raises
    ------
    ValueError
        On mismatched shapes, targets outside [0, 1], α outside [0, 1], or a bad ``reduction``.
    """
    targets = _check_au(logits, targets)
    alpha_t = torch.as_tensor(alpha, dtype=logits.dtype, device=logits.device)
    if alpha_t.shape != (logits.shape[1],):
        raise ValueError(f"alpha must have shape ({logits.shape[1]},), got {tuple(alpha_t.shape)}")
    if bool(((alpha_t < 0) | (alpha_t > 1)).any()):
        raise ValueError("alpha values must be in [0, 1]")
    p = torch.sigmoid(logits)
    log_p = F.logsigmoid(logits)
    log_q = F.logsigmoid(-logits)
    positive = (1 - alpha_t) * (1 - p).pow(focal_gamma) * targets * log_p
    negative = alpha_t * p.pow(focal_gamma) * (1 - targets) * log_q
    return _reduce(-(positive + negative).sum(dim=1), reduction)


def binary_cross_entropy_loss(logits: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
    """BCE of the ablation (Table 2), summed over the AUs like Eq. 8.

    Parameters
    ----------
    logits, targets : Tensor of shape (B, K)
    reduction : {"mean", "sum", "none"}
        Over samples.

    Returns
    -------
    Tensor
        Scalar, or (B,) with ``reduction="none"``.
    """
    targets = _check_au(logits, targets)
    per = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(dim=1)
    return _reduce(per, reduction)


def _reduce(values: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


# --------------------------------------------------------------------------------------------
# L_DC
# --------------------------------------------------------------------------------------------


class AdditiveAngularMarginLoss(nn.Module):
    """ArcFace subject loss on F^DC, AC4AU Eq. 7 (Deng et al., TPAMI 2022).

    L = −log e^{s·cos(θ_z + m)} / (e^{s·cos(θ_z + m)} + Σ_{j≠z} e^{s·cos θ_j}), θ_j the angle
    between the normalised feature and the unit prototype w_j, averaged over the batch.

    When θ_z + m > π, cos(θ_z + m) would rise again with θ_z; as ArcFace's authors do, the target
    logit is then cos θ_z − m·sin m instead (``monotonic=False`` keeps Eq. 7 literally).

    Parameters
    ----------
    n_subjects : int
        S, number of training subjects (classes 0…S−1).
    in_features : int
        C', size of F^DC.
    scale : float
        s (paper: 32).
    margin : float
        m in radians (paper: 0.5).
    monotonic : bool
        Use the fallback above.
    """

    def __init__(
        self,
        n_subjects: int,
        in_features: int,
        scale: float = 32.0,
        margin: float = 0.5,
        monotonic: bool = True,
    ) -> None:
        super().__init__()
        if n_subjects < 1:
            raise ValueError(f"n_subjects must be >= 1, got {n_subjects}")
        if not 0.0 <= margin < math.pi / 2:
            raise ValueError(f"margin must be in [0, π/2) radians, got {margin}")
        self.n_subjects = n_subjects
        self.scale = scale
        self.margin = margin
        self.monotonic = monotonic
        self.prototypes = nn.Parameter(torch.empty(n_subjects, in_features))
        nn.init.xavier_uniform_(self.prototypes)

    def check_labels(self, labels: Tensor, batch: int) -> None:
        """Raise ``ValueError`` unless ``labels`` are ``batch`` integers in 0…S−1."""
        if labels.ndim != 1 or labels.shape[0] != batch:
            raise ValueError(f"expected {batch} subject labels of shape ({batch},), got {tuple(labels.shape)}")
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise ValueError(f"subject labels must be integer class indices, got {labels.dtype}")
        bad = labels[(labels < 0) | (labels >= self.n_subjects)]
        if bad.numel():
            raise ValueError(
                f"subject labels {sorted(set(bad.tolist()))} are outside 0…{self.n_subjects - 1}: "
                f"the subject loss has one class per training subject ({self.n_subjects}); a "
                "test-fold subject must never be fed (map ids with subject_index/encode_subjects)"
            )

    def logits(self, features: Tensor, labels: Tensor) -> Tensor:
        """Scaled logits s·cos θ_j with the margin applied to the target class, (B, S)."""
        cos = F.linear(F.normalize(features, dim=1), F.normalize(self.prototypes, dim=1))
        cos = cos.clamp(-1.0, 1.0)
        cos_z = cos.gather(1, labels[:, None])
        sin_z = (1.0 - cos_z.pow(2)).clamp_min(1e-12).sqrt()
        target = cos_z * math.cos(self.margin) - sin_z * math.sin(self.margin)  # cos(θ + m)
        if self.monotonic:
            target = torch.where(
                cos_z > math.cos(math.pi - self.margin), target, cos_z - self.margin * math.sin(self.margin)
            )
        return self.scale * cos.scatter(1, labels[:, None], target)

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        """Mean L_DC over the batch.

        Parameters
        ----------
        features : Tensor of shape (B, C')
            F^DC.
        labels : Tensor of shape (B,), integer
            Training-subject indices in 0…S−1.

        Returns
        -------
        Tensor
            Scalar loss.

        Raises
        ------
        ValueError
            On a label outside 0…S−1 (e.g. a test-fold subject) or a wrong shape/dtype.
        """
        if features.ndim != 2 or features.shape[1] != self.prototypes.shape[1]:
            raise ValueError(
                f"expected DC features of shape (B, {self.prototypes.shape[1]}), got {tuple(features.shape)}"
            )
        self.check_labels(labels, features.shape[0])
        labels = labels.long()
        return F.cross_entropy(self.logits(features, labels), labels)


# --------------------------------------------------------------------------------------------
# L = γ·L_DC + L_AU
# --------------------------------------------------------------------------------------------


class AC4AULossTerms(NamedTuple):
    """Total loss (Eq. 9) and its terms (scalars; ``dc`` is 0 without the subject loss)."""

    total: Tensor
    au: Tensor
    dc: Tensor


class AC4AUCriterion(nn.Module):
    """L = γ·L_DC + L_AU (AC4AU Eq. 9).  Holds the subject prototypes: optimise its parameters.

    Parameters
    ----------
    alpha : ndarray or Tensor of shape (K,)
        α_k priors (:func:`positive_priors` of the training labels).
    feature_dim : int
        C'.
    n_subjects : int or None
        Number of training subjects; required when ``use_dc``.
    gamma : float
        γ of Eq. 9 (paper: 0.1).
    loss : {"focal", "bce"}
        L_AU: Eq. 8, or BCE (ablation).
    focal_gamma : float
        Exponent of Eq. 8 (paper: 2).
    use_dc : bool
        Add the subject loss (off when the network runs without FRD).
    arcface_scale, arcface_margin : float
        s and m of Eq. 7 (paper: 32, 0.5).
    gamma_warmup_epochs : int
        Ours, not the paper's: γ is ramped linearly from 0, γ_e = γ · min(1, (e − 1) / W) in
        epoch e (1-based) with W = ``gamma_warmup_epochs`` (:meth:`set_epoch`, called by the
        trainer); 0 (default): the paper's constant γ.  Why: at initialisation the backbone's
        gradient from γ·L_DC (additive-angular-margin loss with s = 32 over the training subjects)
        is ~70x that from L_AU (focal loss at ŷ ≈ 0.5), so from scratch the subject loss shapes
        the features before the AU head has anything to learn from.

    Attributes
    ----------
    gamma_now : float
        The γ used by :meth:`forward` now (= ``gamma`` without warm-up or after it).
    """

    def __init__(
        self,
        alpha: np.ndarray | Tensor,
        feature_dim: int,
        n_subjects: int | None,
        gamma: float = 0.1,
        loss: str = "focal",
        focal_gamma: float = 2.0,
        use_dc: bool = True,
        arcface_scale: float = 32.0,
        arcface_margin: float = 0.5,
        gamma_warmup_epochs: int = 0,
    ) -> None:
        super().__init__()
        if loss not in ("focal", "bce"):
            raise ValueError(f"loss must be 'focal' or 'bce', got {loss!r}")
        if gamma_warmup_epochs < 0:
            raise ValueError(f"gamma_warmup_epochs must be >= 0, got {gamma_warmup_epochs}")
        self.register_buffer("alpha", torch.as_tensor(np.asarray(alpha), dtype=torch.float32))
        self.gamma = gamma
        self.gamma_warmup_epochs = int(gamma_warmup_epochs)
        self.gamma_now = gamma if not gamma_warmup_epochs else 0.0
        self.loss = loss
        self.focal_gamma = focal_gamma
        self.subject_loss: AdditiveAngularMarginLoss | None = None
        if use_dc:
            if n_subjects is None:
                raise ValueError("the subject loss (use_dc) needs n_subjects, the number of training subjects")
            self.subject_loss = AdditiveAngularMarginLoss(
                n_subjects, feature_dim, arcface_scale, arcface_margin
            )

    def set_epoch(self, epoch: int) -> float:
        """Set γ for training epoch ``epoch`` (1-based): γ · min(1, (epoch − 1) / W).

        Returns
        -------
        float
            The γ now in use.
        """
        w = self.gamma_warmup_epochs
        self.gamma_now = self.gamma if w == 0 else self.gamma * min(1.0, (epoch - 1) / w)
        return self.gamma_now

    def forward(
        self, output: AC4AUOutput, au_targets: Tensor, subjects: Tensor | None = None
    ) -> AC4AULossTerms:
        """Compute the loss of one batch.

        Parameters
        ----------
        output : AC4AUOutput
            The network's output (logits (B, K), dc (B, C')).
        au_targets : Tensor of shape (B, K)
            0/1 AU labels.
        subjects : Tensor of shape (B,), integer, optional
            Training-subject indices; required with the subject loss.

        Returns
        -------
        AC4AULossTerms
            total, au, dc scalars.

        Raises
        ------
        ValueError
            If the subject loss is on but ``output.dc`` or ``subjects`` is missing, or on a
            subject label outside the training subjects.
        """
        if self.loss == "focal":
            l_au = class_aware_focal_loss(output.logits, au_targets, self.alpha, self.focal_gamma)
        else:
            l_au = binary_cross_entropy_loss(output.logits, au_targets)
        if self.subject_loss is None:
            l_dc = torch.zeros((), dtype=l_au.dtype, device=l_au.device)
        else:
            if output.dc is None:
                raise ValueError("the subject loss needs F^DC but the network runs without FRD")
            if subjects is None:
                raise ValueError("the subject loss needs the batch's training-subject indices")
            l_dc = self.subject_loss(output.dc, subjects)
        return AC4AULossTerms(self.gamma_now * l_dc + l_au, l_au, l_dc)


def build_ac4au_criterion(
    cfg: Mapping[str, Any] | None,
    alpha: np.ndarray | Tensor,
    n_subjects: int | None,
    profile: str = "paper",
) -> AC4AUCriterion:
    """Build the criterion from the AC4AU parameter dict (see ``pipeline.models.ac4au``).

    Reads ``loss``, ``focal_gamma``, ``gamma``, ``gamma_warmup_epochs``, ``arcface_scale``, ``arcface_margin``,
    ``embedding_dim`` and ``use_frd`` (the subject loss is on exactly when FRD is).

    Parameters
    ----------
    cfg : mapping or None
        AC4AU parameters (as for ``build_ac4au``).
    alpha : ndarray of shape (12,)
        :func:`positive_priors` of the training folds' labels.
    n_subjects : int or None
        Number of training subjects (needed when ``use_frd``).
    profile : {"paper", "quick"}
        Defaults for missing keys.

    Returns
    -------
    AC4AUCriterion
    """
    full = ac4au_config(cfg, profile)
    return AC4AUCriterion(
        alpha,
        full["embedding_dim"],
        n_subjects,
        gamma=full["gamma"],
        loss=full["loss"],
        focal_gamma=full["focal_gamma"],
        use_dc=bool(full["use_frd"]),
        arcface_scale=full["arcface_scale"],
        arcface_margin=full["arcface_margin"],
        gamma_warmup_epochs=int(full["gamma_warmup_epochs"]),
    )

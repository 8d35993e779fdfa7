"""AC4AU in the shared trainer: the ``ac4au`` method family (stage ``train@ac4au``).

AC4AU ("Regulatory Focus Theory Induced Micro-Expression Analysis with Structured Representation
Learning", ACM MM 2025; ``papers/ac4au_apex_free_au_detection.txt``) detects the 12 CD6ME AUs
from the whole onset→offset sequence, uniformly sampled to l = 8 frames, without any apex.  The
network, its losses and its augmentation are :mod:`pipeline.models.ac4au` and
:mod:`pipeline.models.ac4au_losses`; this module only plugs them into
:mod:`pipeline.training` under the CD6ME leave-one-database-out protocol:

* **Input** — ``faces.h5`` dataset ``seq{S'}/frames`` ``(N, l, S', S', 3) uint8``
  (docs/internals.md; S' = ``sequence_size``, which must equal ``faces.sequence_size``), resized
  once to the model's ``model.input_size`` (area interpolation when shrinking) and scaled to
  [0, 1]: ``(l, 3, S, S) float32`` per sample (:func:`prepare_sequence`).  The network sees
  (v − 127.5) / 128 on the 0–255 scale, MobileFaceNet's own normalisation
  (:func:`pipeline.models.ac4au.normalise_frames`).
* **Augmentation** (paper Sec. 4.1) — horizontal flip, small rotation and colour jitter, one draw
  per sequence applied to all its frames (:class:`pipeline.models.ac4au.SequenceAugment`, block
  ``model.augment``), during training only, from the trainer's seeded generator.
* **Loss** (Sec. 3.5, Eq. 9) — L = γ·L_DC + L_AU.  L_AU is the class-aware focal loss (Eq. 8)
  with α_k = :func:`~pipeline.models.ac4au_losses.positive_priors` of the fold's *training* labels
  (the paper computes α once over all databases, test fold included; we do not let the test fold
  in); ``model.loss: bce`` is the ablation.  L_DC is the additive-angular-margin subject loss
  (Eq. 7, s = 32, m = 0.5) on F^DC over the fold's training subjects: one prototype per training
  subject (``FoldContext.train_subjects``), and a batch whose subject index is not a training
  subject (−1) raises instead of being scored.  L_DC is a training-time loss (the paper: "applied
  only during training"); outside training (e.g. the inner-validation loss with ``selection:
  inner_val``) only L_AU is computed.  ``model.gamma_warmup_epochs: W`` (ours; 0 = the paper's
  constant γ) ramps γ linearly from 0 in epoch 1 to γ in epoch W + 1, through the trainer's
  ``set_epoch`` hook: from scratch the subject loss's backbone gradient is ~70x the AU loss's at
  initialisation, and the ramp lets the AU head learn first.
* **Optimiser over the subject prototypes** — the shared trainer optimises ``model.parameters()``;
  the network and its criterion are therefore wrapped in one module,
  :class:`AC4AUWithCriterion`, whose parameters include the prototypes (and whose checkpoint
  holds them), without any change to the trainer.

Parameters (section ``methods.<name>`` of ``params.yaml``, ``family: ac4au``; besides the shared
trainer keys — epochs, batch_size, optimizer, scheduler, … — of :mod:`pipeline.training.trainer`):

``task``, ``protocol``
    ``au`` and ``cd6me`` (the only setting AC4AU is defined for; the defaults).
``sequence_size``
    S' of the stored sequences (default 112, ``faces.sequence_size``).
``model``
    Keys of :data:`pipeline.models.ac4au.AC4AU_PAPER_CONFIG` (architecture, ablation switches
    ``use_frd``, ``use_auser``, ``loss``, ``gamma``, ``pretrained``, the ``augment`` block); keys
    left out take the paper's values.  An unknown key is an error.

Ablations of the paper's Table 2 and Table 3 are ``dvc exp run -S methods.ac4au.model.<key>=…``
away (docs/methods/ac4au.md); their published numbers are the ``ac4au_*_cd6me`` entries of
:data:`pipeline.reporting.published.PUBLISHED` (``-S methods.ac4au.published=<key>`` puts the
matching one beside the run in the report).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.models.ac4au import (
    AC4AU,
    AC4AUOutput,
    SequenceAugment,
    ac4au_config,
    build_ac4au,
    build_sequence_augment,
    normalise_frames,
)
from pipeline.models.ac4au_losses import (
    AC4AUCriterion,
    AC4AULossTerms,
    binary_cross_entropy_loss,
    build_ac4au_criterion,
    class_aware_focal_loss,
    positive_priors,
)
from pipeline.pretrain.weights import (
    PretrainError,
    load_mobilefacenet_stage,
    require_made,
    resolve_for_method,
)
from pipeline.training.data import InputSpec, preprocess_image
from pipeline.training.registry import FoldContext, MethodError, MethodSpec, fixed_task, register

log = logging.getLogger("train")

__all__ = [
    "AC4AUStep",
    "AC4AUWithCriterion",
    "ac4au_model_config",
    "augment_batch",
    "prepare_sequence",
]

#: Key of the input in the batch dict.
FRAMES_KEY = "frames"


def prepare_sequence(frames: np.ndarray, length: int, size: int,
                     source: str = "faces.h5 seq112/frames") -> np.ndarray:
    """One stored sequence → the network's input scale: resized, channels first, in [0, 1].

    Parameters
    ----------
    frames : ndarray of shape (l, S', S', 3), uint8
        Uniformly sampled onset→offset RGB frames of one sample (docs/internals.md, ``faces.h5``).
    length : int
        l the model was built for (``model.sequence_length``, paper 8).
    size : int
        Model input side S in pixels (``model.input_size``).
    source : str
        Cache file and dataset, for the error message.

    Returns
    -------
    ndarray of shape (l, 3, S, S), float32 in [0, 1]

    Raises
    ------
    ValueError
        If the array is not a uint8 sequence of ``length`` RGB frames, naming ``source`` and the
        ``faces`` parameters that must match.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"{source}: expected uint8 sequences of shape (l, S', S', 3), got "
                         f"{frames.dtype} {frames.shape}")
    if frames.shape[0] != length:
        raise ValueError(f"{source}: sequences of {frames.shape[0]} frames, the AC4AU model is "
                         f"built for l = {length} (faces.sequence_length must equal "
                         "methods.<name>.model.sequence_length)")
    return preprocess_image(frames, size)


def ac4au_model_config(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The complete AC4AU parameter dict of method ``name`` (``model`` block over the paper's).

    Parameters
    ----------
    name : str
        Method name (for messages).
    params : mapping
        The method's resolved ``params.yaml`` section.

    Returns
    -------
    dict
        Every key of :data:`pipeline.models.ac4au.AC4AU_PAPER_CONFIG`.

    Raises
    ------
    MethodError
        On an unknown or invalid key of ``methods.<name>.model``.
    """
    block = params.get("model") or {}
    if not isinstance(block, Mapping):
        raise MethodError(f"methods.{name}.model must be a mapping, got {type(block).__name__}")
    try:
        return ac4au_config(block, "paper")
    except ValueError as exc:
        raise MethodError(f"methods.{name}.model: {exc}") from exc


class AC4AUStep(NamedTuple):
    """Output of one forward pass through :class:`AC4AUWithCriterion`.

    Attributes
    ----------
    output : AC4AUOutput
        logits (B, 12), dc (B, C') or None, gates (B, 12, M) or None, pooled (B, C').
    module : AC4AUWithCriterion
        The module that produced it (its criterion scores the step).
    training : bool
        Whether the module was in training mode.
    """

    output: AC4AUOutput
    module: AC4AUWithCriterion
    training: bool


class AC4AUWithCriterion(nn.Module):
    """The AC4AU network and its fold's criterion in one module (module docstring).

    ``parameters()`` yields the network's and the subject prototypes of L_DC, so the shared
    trainer's optimiser updates both.

    Parameters
    ----------
    net : AC4AU
    criterion : AC4AUCriterion
        Built for this fold's training labels (α) and training subjects (prototypes).
    """

    def __init__(self, net: AC4AU, criterion: AC4AUCriterion) -> None:
        super().__init__()
        self.net = net
        self.criterion = criterion

    def set_epoch(self, epoch: int, n_epochs: int) -> None:
        """Trainer hook at the start of each training epoch (1-based): sets γ of L_DC
        (:meth:`~pipeline.models.ac4au_losses.AC4AUCriterion.set_epoch`)."""
        gamma = self.criterion.set_epoch(epoch)
        if self.criterion.gamma_warmup_epochs:
            log.debug("epoch %d/%d: γ of L_DC %.4g", epoch, n_epochs, gamma)

    @property
    def n_prototypes(self) -> int:
        """Number of subject prototypes of L_DC (0 without the subject loss)."""
        sub = self.criterion.subject_loss
        return 0 if sub is None else int(sub.prototypes.shape[0])

    def forward(self, frames: Tensor) -> AC4AUStep:
        """Run the network on sequences in [0, 1].

        Parameters
        ----------
        frames : Tensor of shape (B, l, 3, S, S), float in [0, 1] (or uint8)

        Returns
        -------
        AC4AUStep
        """
        return AC4AUStep(self.net(normalise_frames(frames)), self, self.training)

    def loss_terms(self, step: AC4AUStep, au_targets: Tensor,
                   subjects: Tensor | None) -> AC4AULossTerms:
        """L = γ·L_DC + L_AU (Eq. 9) in training; L_AU alone otherwise.

        Parameters
        ----------
        step : AC4AUStep
        au_targets : Tensor of shape (B, 12)
            0/1 labels.
        subjects : Tensor of shape (B,), int64, optional
            Indices into the fold's training subjects; needed in training with the subject loss.

        Returns
        -------
        AC4AULossTerms
            total, au, dc (dc = 0 outside training or without FRD).

        Raises
        ------
        ValueError
            In training with the subject loss: if ``subjects`` is missing or holds an index that
            is not a training subject (−1 for a test-fold subject).
        """
        if step.training:
            return self.criterion(step.output, au_targets, subjects)
        crit = self.criterion
        if crit.loss == "focal":
            l_au = class_aware_focal_loss(step.output.logits, au_targets, crit.alpha,
                                          crit.focal_gamma)
        else:
            l_au = binary_cross_entropy_loss(step.output.logits, au_targets)
        return AC4AULossTerms(l_au, l_au, torch.zeros_like(l_au))


def augment_batch(batch: dict[str, Any], generator: torch.Generator,
                  augment: SequenceAugment) -> dict[str, Any]:
    """Augment every sequence of a training batch (paper Sec. 4.1).

    Parameters
    ----------
    batch : dict
        ``"frames"``: Tensor of shape (B, l, 3, S, S), float in [0, 1].
    generator : torch.Generator
        Seeded CPU generator; one parameter draw per sequence, shared by its l frames.
    augment : SequenceAugment

    Returns
    -------
    dict
        A copy of ``batch`` with augmented ``"frames"`` (same shape, clipped to [0, 1]).
    """
    frames = batch[FRAMES_KEY]
    out = torch.stack([augment(seq, generator) for seq in frames]).clamp_(0.0, 1.0)
    return {**batch, FRAMES_KEY: out}


def _loss(step: AC4AUStep, batch: Mapping[str, Tensor]) -> Tensor:
    return step.module.loss_terms(step, batch["target"], batch.get("subject")).total


def _pretrained(name: str, cfg: dict[str, Any]) -> tuple[dict[str, Any], str | None, str]:
    """``model.pretrained`` resolved: (the config for :func:`build_ac4au`, the stage's weights
    file to load after building or None, the source recorded in the metrics).

    ``stage``: ``models/pretrain/mobilefacenet.pt`` (:mod:`pipeline.pretrain`), loaded with the
    GDConv kernel fitted to ``input_size`` and checked here against a bare MobileFaceNet of the
    configured width; a path: :func:`pipeline.models.mobilefacenet.load_backbone_weights` as
    before; null: random init.
    """
    raw = cfg["pretrained"]
    where = f"methods.{name}.model.pretrained"
    try:
        resolved, source = resolve_for_method(raw, "mobilefacenet", where, imagenet=False)
        if not (isinstance(raw, str) and raw.strip().lower() == "stage"):
            return {**cfg, "pretrained": resolved or None}, None, source
        from pipeline.models.mobilefacenet import MobileFaceNet

        if Path(resolved).is_file():  # else the builder fails on the file, one line
            load_mobilefacenet_stage(MobileFaceNet(int(cfg["embedding_dim"]),
                                                   float(cfg["width_mult"]),
                                                   int(cfg["input_size"])), resolved)
    except PretrainError as exc:
        raise MethodError(str(exc)) from None
    return {**cfg, "pretrained": None}, str(resolved), source


@register("ac4au")
def _ac4au(name: str, params: dict[str, Any]) -> MethodSpec:
    task, protocol = fixed_task(name, params, "au", "cd6me", "AC4AU detects AUs under CD6ME")
    cfg = ac4au_model_config(name, params)
    seq_size = int(params.get("sequence_size", 112))
    dataset = f"seq{seq_size}/frames"
    length, size = int(cfg["sequence_length"]), int(cfg["input_size"])
    if size % 16 != 0 or size <= 0:
        raise MethodError(f"methods.{name}.model.input_size must be a positive multiple of 16 "
                          f"(MobileFaceNet's stride), got {size}")
    source = f"faces.h5 {dataset}"
    try:
        augment = build_sequence_augment(cfg, "paper")
    except ValueError as exc:
        raise MethodError(f"methods.{name}.model.augment: {exc}") from exc

    def prep(frames: np.ndarray) -> np.ndarray:
        return prepare_sequence(frames, length, size, source)

    cfg, stage_weights, init_weights = _pretrained(name, cfg)

    def build(ctx: FoldContext) -> AC4AUWithCriterion:
        require_made(init_weights, "mobilefacenet", f"methods.{name}.model.pretrained")
        alpha = positive_priors(ctx.train_targets)
        n_subjects = len(ctx.train_subjects) if cfg["use_frd"] else None
        if n_subjects == 0:
            raise MethodError(f"fold {ctx.fold.name}: no training subject for the subject loss")
        net = build_ac4au(cfg, "paper")
        if stage_weights is not None:
            load_mobilefacenet_stage(net, stage_weights)
        criterion = build_ac4au_criterion(cfg, alpha, n_subjects, "paper")
        log.info("%s fold %s: α %s; %s", name, ctx.fold.name,
                 np.array2string(alpha, precision=3, separator=" "),
                 f"L_DC over {n_subjects} training subjects" if n_subjects else "no L_DC (FRD off)")
        return AC4AUWithCriterion(net, criterion)

    return MethodSpec(
        task=task, protocol=protocol,
        inputs=(InputSpec(FRAMES_KEY, "faces", dataset, "image", size, preprocess=prep),),
        build_model=build,
        build_loss=lambda ctx: _loss,
        forward=lambda model, batch: model(batch[FRAMES_KEY]),
        logits=lambda step: step.output.logits,
        train_transform=lambda batch, gen: augment_batch(batch, gen, augment),
        needs_subjects=bool(cfg["use_frd"]),
        init_weights=init_weights,
    )

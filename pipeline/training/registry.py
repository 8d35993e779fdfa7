"""Method registry: a method's name in ``params.yaml`` → what the shared trainer needs to run it.

Every ``train@<method>`` stage runs ``python -m stages.train <method>``; the stage reads
``methods.<method>`` of ``params.yaml`` and asks :func:`build_method` for a :class:`MethodSpec`.
The section's ``family`` key names a registered *family* (default: the method name itself), so
several variants share one factory (``resnet18_flow`` and ``resnet34_flow`` are both
``family: resnet_flow``)::

    @register("sssnet")
    def _sssnet(name: str, params: dict) -> MethodSpec:
        size = params["input_size"]
        return MethodSpec(task=params["task"], protocol=params["protocol"],
                          inputs=(InputSpec("flow", "flow", "onset_apex", "flow", size),),
                          build_model=lambda ctx: SSSNet(n_outputs=ctx.n_outputs))

A spec gives the task (``au`` | ``emotion``) and protocol (``cd6me`` | ``loso``), the inputs it
reads from the feature caches (:class:`~pipeline.training.data.InputSpec`), a model builder, and
optionally a loss builder, a forward function, a logits extractor, a training-time batch
transform, and whether batches need training-subject indices (AC4AU's subject loss).  A constant
predictor gives ``constant`` instead of a model and goes through the same output writing.

Default losses (:func:`default_loss`):

* AU detection: ``BCEWithLogitsLoss`` over the 12 AUs; with ``loss.pos_weight: balanced`` each
  AU's positive term is weighted by n_negative / n_positive of the training part (clipped to
  ``loss.pos_weight_max``);
* emotion: cross-entropy; with ``loss.class_weights: inverse`` class c is weighted
  w_c = max_k n_k / n_c over the training part (Ruan et al., ACM MM 2022, Sec. 3.5).

Modules defining methods are listed in :data:`METHOD_MODULES`; a new method adds its module there
(and its section to ``params.yaml`` and its name to the ``train`` foreach in ``dvc.yaml``).
:data:`FAMILY_MODULES` maps a family to the module that registers it, so that
:func:`build_method` imports only that module (a ``train@<method>`` stage then pays for torch
and its own networks, not for timm's ViTs or AC4AU's); a family absent from the mapping is found
by importing every module of :data:`METHOD_MODULES`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.training.data import InputSpec
from pipeline.training.protocols import Fold

__all__ = [
    "FAMILY_MODULES",
    "METHOD_MODULES",
    "ConstantPredictor",
    "FoldContext",
    "LossFn",
    "MethodSpec",
    "MethodError",
    "build_method",
    "default_logits",
    "fixed_task",
    "default_loss",
    "register",
    "registered_families",
]

#: Modules whose import registers method families (see module docstring).
METHOD_MODULES: list[str] = ["pipeline.training.baselines", "pipeline.training.methods_infusenet",
                              "pipeline.training.methods_ac4au",
                              "pipeline.training.methods_mimicking", "pipeline.training.methods_gam"]

#: Family → the module whose import registers it (looked up first by :func:`build_method`).
FAMILY_MODULES: dict[str, str] = {
    "constant": "pipeline.training.baselines",
    "sssnet": "pipeline.training.baselines",
    "resnet_flow": "pipeline.training.baselines",
    "infusenet": "pipeline.training.methods_infusenet",
    "ac4au": "pipeline.training.methods_ac4au",
    "mimicking": "pipeline.training.methods_mimicking",
    "gam_mm_mer": "pipeline.training.methods_gam",
}

TASKS = ("au", "emotion")
PROTOCOLS = {"au": ("cd6me",), "emotion": ("loso",)}

LossFn = Callable[[Any, Mapping[str, torch.Tensor]], torch.Tensor]


class MethodError(ValueError):
    """An unknown method family, or a method section of ``params.yaml`` that does not fit it."""


@dataclass
class FoldContext:
    """What a builder may know about a fold: computed from its training part only.

    Attributes
    ----------
    method : str
        Method name (``params.yaml`` section).
    task : {"au", "emotion"}
    fold : Fold
    n_outputs : int
        12 for CD6ME; the task's class count for emotion.
    class_names : tuple of str
        AU names or emotion classes, in output order.
    train_targets : ndarray
        ``(n_train, 12)`` 0/1 (AU) or ``(n_train,)`` class indices (emotion).
    train_subjects : tuple of str
        Sorted training subject identities ``database/subject``; batches carry ``"subject"``,
        an index into this tuple (−1 for a subject outside training), when the spec asks.
    seed : int
        The fold's seed.
    params : dict
        The method's resolved parameters.
    device : torch.device
    """

    method: str
    task: str
    fold: Fold
    n_outputs: int
    class_names: tuple[str, ...]
    train_targets: np.ndarray
    train_subjects: tuple[str, ...]
    seed: int
    params: dict[str, Any]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


class ConstantPredictor:
    """A predictor that ignores the inputs: fitted on training labels, predicts test labels.

    Subclasses implement :meth:`fit` and :meth:`predict`; ``predict`` returns per-sample scores
    ``(n, K)`` (AU probabilities or class probabilities) and decisions (``(n, K)`` 0/1 for AUs,
    ``(n,)`` class indices for emotion).
    """

    def fit(self, ctx: FoldContext) -> ConstantPredictor:  # pragma: no cover - interface
        raise NotImplementedError

    def predict(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
        raise NotImplementedError

    def state(self) -> dict[str, Any]:  # pragma: no cover - interface
        """JSON-able fitted state (written to ``models/<method>/``)."""
        raise NotImplementedError


@dataclass
class MethodSpec:
    """How the shared trainer runs one method (see the module docstring).

    Attributes
    ----------
    task : {"au", "emotion"}
    protocol : {"cd6me", "loso"}
    inputs : tuple of InputSpec
        Arrays read from the feature caches (empty for constant predictors).
    build_model : callable(FoldContext) -> nn.Module, optional
        A fresh model for a fold; its ``forward`` takes the inputs positionally in ``inputs``
        order unless ``forward`` is given.
    build_loss : callable(FoldContext) -> LossFn, optional
        ``loss(outputs, batch) -> scalar``; default :func:`default_loss`.
    forward : callable(model, batch) -> outputs, optional
    logits : callable(outputs) -> Tensor, optional
        Extracts ``(B, n_outputs)`` logits from the model outputs (default
        :func:`default_logits`: the tensor itself or the first element of a tuple).
    train_transform : callable(batch, torch.Generator) -> batch, optional
        Training-time batch augmentation (seeded generator).
    needs_subjects : bool
        Add ``"subject"`` (int64 index into :attr:`FoldContext.train_subjects`) to batches.
    constant : callable() -> ConstantPredictor, optional
        For constant predictors, instead of ``build_model``.
    emotion_tasks : tuple of str
        LOSO task keys to run (:data:`~pipeline.training.protocols.EMOTION_TASKS`).
    sample_extras : callable(DataFrame) -> dict of ndarray, optional
        Per-sample arrays computed from the protocol's rows of ``samples.csv`` (one row each, in
        table order, e.g. the AU sets of Ruan et al.'s WSCL); put into every batch under their
        keys like ``"subject"``.
    init_weights : str
        Where the initial weights come from, recorded in the metrics (``init_weights``):
        ``none`` | ``stage sha256:<hex>`` | ``imagenet`` | ``path <path> sha256:<hex>``
        (:func:`pipeline.pretrain.weights.resolve_pretrained`).
    """

    task: str
    protocol: str
    inputs: tuple[InputSpec, ...] = ()
    build_model: Callable[[FoldContext], nn.Module] | None = None
    build_loss: Callable[[FoldContext], LossFn] | None = None
    forward: Callable[[nn.Module, Mapping[str, torch.Tensor]], Any] | None = None
    logits: Callable[[Any], torch.Tensor] | None = None
    train_transform: Callable[[dict[str, torch.Tensor], torch.Generator], dict] | None = None
    needs_subjects: bool = False
    constant: Callable[[], ConstantPredictor] | None = None
    emotion_tasks: tuple[str, ...] = ()
    sample_extras: Callable[[Any], Mapping[str, np.ndarray]] | None = None
    init_weights: str = "none"

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise MethodError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.protocol not in PROTOCOLS[self.task]:
            raise MethodError(
                f"task {self.task!r} runs under {PROTOCOLS[self.task]}, not {self.protocol!r}")
        if (self.build_model is None) == (self.constant is None):
            raise MethodError("a method gives exactly one of build_model and constant")
        if self.build_model is not None and not self.inputs:
            raise MethodError("a trained method needs at least one input")


_FAMILIES: dict[str, Callable[[str, dict[str, Any]], MethodSpec]] = {}


def register(family: str) -> Callable:
    """Decorator registering ``factory(name, params) -> MethodSpec`` under ``family``.

    Raises
    ------
    MethodError
        If ``family`` is already registered by another factory.
    """
    def deco(factory: Callable[[str, dict[str, Any]], MethodSpec]):
        old = _FAMILIES.get(family)
        if old is not None and old.__qualname__ != factory.__qualname__:
            raise MethodError(f"method family {family!r} registered twice")
        _FAMILIES[family] = factory
        return factory
    return deco


def _load_modules() -> None:
    for module in METHOD_MODULES:
        importlib.import_module(module)


def fixed_task(name: str, params: Mapping[str, Any], task: str, protocol: str,
               what: str) -> tuple[str, str]:
    """The ``task`` and ``protocol`` of a family that supports exactly one pair.

    Parameters
    ----------
    name : str
        The method (section of ``methods:``), for the message.
    params : mapping
        The method's resolved section; absent keys take ``task`` / ``protocol``.
    task, protocol : str
        The one pair the family supports.
    what : str
        What the family does, for the message (e.g. ``"AC4AU detects AUs under CD6ME"``).

    Returns
    -------
    (task, protocol)

    Raises
    ------
    MethodError
        If the section names another task or protocol.
    """
    got = (str(params.get("task", task)), str(params.get("protocol", protocol)))
    if got != (task, protocol):
        raise MethodError(f"methods.{name}: {what} (task: {task}, protocol: {protocol}), got task "
                          f"{got[0]!r}, protocol {got[1]!r}")
    return got


def registered_families() -> list[str]:
    """Names of every registered family (after importing :data:`METHOD_MODULES`)."""
    _load_modules()
    return sorted(_FAMILIES)


def build_method(name: str, params: Mapping[str, Any]) -> MethodSpec:
    """The spec of method ``name`` from its resolved ``methods.<name>`` section.

    Raises
    ------
    MethodError
        If the family (``params["family"]``, default ``name``) is not registered, naming the
        known families.
    """
    family = str(params.get("family", name))
    if family not in _FAMILIES and family in FAMILY_MODULES:
        importlib.import_module(FAMILY_MODULES[family])
    if family not in _FAMILIES:
        _load_modules()
    if family not in _FAMILIES:
        raise MethodError(
            f"methods.{name}: unknown method family {family!r}; known: {sorted(_FAMILIES)}")
    spec = _FAMILIES[family](name, dict(params))
    if spec.protocol == "loso" and not spec.emotion_tasks:
        from pipeline.training.protocols import EMOTION_TASKS

        spec.emotion_tasks = tuple(params.get("tasks") or EMOTION_TASKS)
    return spec


def default_logits(outputs: Any) -> torch.Tensor:
    """The tensor itself, or the first element of a tuple/list of outputs."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, Sequence) and outputs and isinstance(outputs[0], torch.Tensor):
        return outputs[0]
    raise TypeError(f"cannot find logits in model outputs of type {type(outputs).__name__}")


def _pos_weight(targets: np.ndarray, max_weight: float) -> torch.Tensor:
    pos = targets.sum(axis=0).astype(np.float64)
    neg = targets.shape[0] - pos
    w = np.where(pos > 0, neg / np.maximum(pos, 1), 1.0)
    return torch.as_tensor(np.clip(w, 1.0, max_weight), dtype=torch.float32)


def class_weights_inverse(targets: np.ndarray, n_classes: int) -> torch.Tensor:
    """w_c = max_k n_k / n_c over the training labels (0 for a class absent from training).

    Source: Ruan et al., "Mimicking the annotation process for recognizing the micro
    expressions", ACM MM 2022, Sec. 3.5 (class-weighted cross-entropy).

    Returns
    -------
    Tensor of shape (n_classes,), float32
    """
    counts = np.bincount(np.asarray(targets, dtype=np.int64), minlength=n_classes).astype(float)
    w = np.where(counts > 0, counts.max() / np.maximum(counts, 1), 0.0)
    return torch.as_tensor(w, dtype=torch.float32)


def default_loss(ctx: FoldContext,
                 logits_fn: Callable[[Any], torch.Tensor] = default_logits) -> LossFn:
    """Binary cross-entropy (AU) or cross-entropy (emotion) on the logits, see module docstring.

    ``logits_fn`` extracts the ``(B, n_outputs)`` logits from the model outputs.

    Parameters read from ``ctx.params["loss"]``: ``pos_weight`` (null | ``balanced``),
    ``pos_weight_max`` (default 20), ``class_weights`` (null | ``inverse``).

    Raises
    ------
    MethodError
        On an unknown weighting option.
    """
    opts = dict(ctx.params.get("loss") or {})
    if ctx.task == "au":
        mode = opts.get("pos_weight")
        if mode not in (None, "balanced"):
            raise MethodError(f"loss.pos_weight must be null or 'balanced', got {mode!r}")
        pw = (_pos_weight(ctx.train_targets, float(opts.get("pos_weight_max", 20.0))).to(ctx.device)
              if mode == "balanced" else None)
        crit: nn.Module = nn.BCEWithLogitsLoss(pos_weight=pw)

        def au_loss(outputs: Any, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
            return crit(logits_fn(outputs).float(), batch["target"].float())

        return au_loss
    mode = opts.get("class_weights")
    if mode not in (None, "inverse"):
        raise MethodError(f"loss.class_weights must be null or 'inverse', got {mode!r}")
    weight = (class_weights_inverse(ctx.train_targets, ctx.n_outputs).to(ctx.device)
              if mode == "inverse" else None)
    ce = nn.CrossEntropyLoss(weight=weight)

    def ce_loss(outputs: Any, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return ce(logits_fn(outputs).float(), batch["target"].long())

    return ce_loss

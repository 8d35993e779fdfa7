"""Baselines of the comparison tables: constant predictors, SSSNet and ResNet18/34 on optical flow.

Method families registered here (``family:`` in ``methods.<name>`` of ``params.yaml``):

``constant``
    Predictors that ignore the input, the floor of every table (METHODS.md, "Baselines"). Fitted
    on each fold's training labels; ``rule``:

    * ``all_positive`` (AU): every AU predicted present (score 1).  Its pooled binary F1 per AU is
      2p / (1 + p) for prevalence p — the best constant for F1.
    * ``prevalence`` (AU and emotion): each test sample gets an independent random draw with the
      training prevalence of each AU (Bernoulli) or the training class frequencies
      (categorical); seeded by the fold.  Expected AU F1 = p.
    * ``majority`` (emotion): the most frequent training class (ties: the first in class order).
      ``all_positive`` has no meaning for single-label emotion, so the emotion floor is the pair
      ``majority`` / ``prevalence``.

``sssnet``
    :class:`pipeline.models.sssnet.SSSNet` on the onset→apex flow image at ``input_size``
    (paper: 64 px).  The CD6ME reference (Varanka et al. 2024); also run under LOSO, where
    Khor et al.'s SSSN (ICIP 2019) numbers are the published comparison.

``resnet_flow``
    torchvision ResNet (``arch``: ``resnet18`` | ``resnet34``) on the onset→apex flow image, built
    by :func:`pipeline.models.backbones.build_backbone` (``pretrained``: false → random init,
    stage → the ``pretrain`` stage's ``models/pretrain/resnet18.pt``, true → torchvision's
    ImageNet weights, or a local state-dict file; :mod:`pipeline.pretrain.weights`), resized to
    ``input_size``.  The flow image has 3 channels (u, v, ε): RGB filters of ``conv1`` are
    loaded as they are.

Common keys: ``task`` (au | emotion), ``protocol`` (cd6me | loso), ``tasks`` (LOSO task keys),
``flow_pair`` (flow cache dataset, default ``onset_apex``), ``augment.hflip`` (probability of a
left–right mirror with u → −u).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.models.sssnet import SSSNet
from pipeline.pretrain.weights import PretrainError, require_made, resolve_for_method
from pipeline.training.data import InputSpec
from pipeline.training.registry import (
    ConstantPredictor,
    FoldContext,
    MethodError,
    MethodSpec,
    register,
)
from pipeline.training.trainer import flow_hflip

__all__ = ["AllPositive", "Majority", "Prevalence"]


class AllPositive(ConstantPredictor):
    """Every AU present, score 1 (AU detection only)."""

    def fit(self, ctx: FoldContext) -> AllPositive:
        if ctx.task != "au":
            raise MethodError("rule all_positive is for AU detection; use majority for emotion")
        self.k = ctx.n_outputs
        return self

    def predict(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return np.ones((n, self.k)), np.ones((n, self.k), dtype=np.int64)

    def state(self) -> dict[str, Any]:
        return {"rule": "all_positive"}


class Prevalence(ConstantPredictor):
    """Random draws with the training prevalence (AU, Bernoulli) or class frequencies (emotion)."""

    def fit(self, ctx: FoldContext) -> Prevalence:
        self.task = ctx.task
        self.names = list(ctx.class_names)
        y = np.asarray(ctx.train_targets)
        if len(y) == 0:
            raise MethodError(f"fold {ctx.fold.name}: no training samples")
        if ctx.task == "au":
            self.p = y.mean(axis=0).astype(np.float64)
        else:
            self.p = np.bincount(y.astype(np.int64), minlength=ctx.n_outputs) / len(y)
        return self

    def predict(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        scores = np.tile(self.p, (n, 1))
        if self.task == "au":
            return scores, (rng.random((n, len(self.p))) < self.p).astype(np.int64)
        return scores, rng.choice(len(self.p), size=n, p=self.p).astype(np.int64)

    def state(self) -> dict[str, Any]:
        return {"rule": "prevalence", "p": dict(zip(self.names, self.p.tolist(), strict=True))}


class Majority(ConstantPredictor):
    """The most frequent training class (emotion only; ties: the first in class order)."""

    def fit(self, ctx: FoldContext) -> Majority:
        if ctx.task != "emotion":
            raise MethodError("rule majority is for emotion; use all_positive or prevalence for AUs")
        self.names = list(ctx.class_names)
        counts = np.bincount(np.asarray(ctx.train_targets, np.int64), minlength=ctx.n_outputs)
        self.freq = counts / max(1, counts.sum())
        self.cls = int(np.argmax(counts))
        return self

    def predict(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return np.tile(self.freq, (n, 1)), np.full(n, self.cls, dtype=np.int64)

    def state(self) -> dict[str, Any]:
        return {"rule": "majority", "class": self.names[self.cls]}


_RULES = {"all_positive": AllPositive, "prevalence": Prevalence, "majority": Majority}


def _task_protocol(name: str, params: dict[str, Any]) -> tuple[str, str]:
    task = params.get("task")
    protocol = params.get("protocol")
    if task is None or protocol is None:
        raise MethodError(f"methods.{name}: 'task' (au | emotion) and 'protocol' (cd6me | loso) "
                          "are required")
    return str(task), str(protocol)


@register("constant")
def _constant(name: str, params: dict[str, Any]) -> MethodSpec:
    task, protocol = _task_protocol(name, params)
    rule = params.get("rule")
    if rule not in _RULES:
        raise MethodError(f"methods.{name}.rule must be one of {sorted(_RULES)}, got {rule!r}")
    if (rule, task) in {("all_positive", "emotion"), ("majority", "au")}:
        raise MethodError(f"methods.{name}: rule {rule!r} does not apply to task {task!r}")
    return MethodSpec(task=task, protocol=protocol, constant=_RULES[rule])


def _flow_input(params: dict[str, Any]) -> tuple[InputSpec, ...]:
    size = params.get("input_size")
    return (InputSpec("flow", "flow", str(params.get("flow_pair", "onset_apex")), "flow",
                      int(size) if size else None),)


def _hflip(params: dict[str, Any]):
    p = float((params.get("augment") or {}).get("hflip", 0.0))
    if p <= 0:
        return None
    return lambda batch, gen: flow_hflip(batch, gen, p, flow_keys=("flow",))


@register("sssnet")
def _sssnet(name: str, params: dict[str, Any]) -> MethodSpec:
    task, protocol = _task_protocol(name, params)
    size = int(params.get("input_size", 64))
    widths = tuple(params.get("widths", (32, 64, 256)))
    dropout = float(params.get("dropout", 0.5))
    return MethodSpec(
        task=task, protocol=protocol, inputs=_flow_input({**params, "input_size": size}),
        build_model=lambda ctx: SSSNet(ctx.n_outputs, in_channels=3, input_size=size,
                                       widths=widths, dropout=dropout),
        train_transform=_hflip(params))


@register("resnet_flow")
def _resnet_flow(name: str, params: dict[str, Any]) -> MethodSpec:
    task, protocol = _task_protocol(name, params)
    arch = str(params.get("arch", "resnet18"))
    if arch not in ("resnet18", "resnet34", "resnet50"):
        raise MethodError(f"methods.{name}.arch must be resnet18, resnet34 or resnet50, got {arch!r}")
    try:
        pretrained, source = resolve_for_method(params.get("pretrained", False), arch,
                                                f"methods.{name}.pretrained")
    except PretrainError as exc:
        raise MethodError(str(exc)) from None
    widths = params.get("widths")
    if isinstance(pretrained, str) and Path(pretrained).is_file():  # other widths fail here
        from pipeline.models.backbones import build_backbone

        try:
            build_backbone(arch, in_channels=3, pretrained=pretrained, widths=widths)
        except ValueError as exc:
            raise MethodError(f"methods.{name}.pretrained: {exc}") from None

    def build(ctx: FoldContext):
        from pipeline.models.backbones import build_backbone

        require_made(source, arch, f"methods.{name}.pretrained")
        return build_backbone(arch, in_channels=3, pretrained=pretrained,
                              num_classes=ctx.n_outputs, widths=widths)

    return MethodSpec(task=task, protocol=protocol, inputs=_flow_input(params),
                      build_model=build, train_transform=_hflip(params), init_weights=source)

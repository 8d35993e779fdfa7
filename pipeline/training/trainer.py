"""The trainer shared by every method: one fold's training and its test-fold scores.

For a fold, :func:`fit_predict` builds a fresh model with the method's builder, trains it on the
fold's training rows for a fixed epoch budget (``selection: last``, default) or keeps the epoch
that scores best on an inner validation split drawn from the *training subjects only*
(``selection: inner_val``; AU: mean binary F1, emotion: UF1), and returns the test rows' scores
(AU: sigmoid probabilities; emotion: softmax probabilities).  The test fold is never looked at
before the final prediction.

Settings (:class:`TrainSettings`, from the method's ``params.yaml`` section merged over the shared
``train:`` section): epochs, batch size, optimiser (``adam`` | ``adamw`` | ``sgd``: ``lr``,
``weight_decay``, ``momentum``), scheduler (``none`` | ``exponential`` (``gamma``, per epoch) |
``cosine_warm_restarts`` (``t0``, ``t_mult`` in epochs, stepped per batch as a fraction of an epoch)
| ``step`` (``step_size``, ``gamma``) | ``one_cycle`` (``pct_start``, ``div_factor``: Smith's
one-cycle policy over the whole budget, stepped per batch)), device (``auto`` | ``cpu`` | ``cuda``), automatic mixed
precision on a GPU (``amp``), DataLoader workers, gradient clipping, checkpoints, and the number
of torch CPU threads (``torch_threads``; null: torch's default — 1 is often faster on a machine
busy with other jobs).

Determinism: every fold seeds Python, NumPy and torch from :func:`protocols.fold_seed` (the run
seed and the fold's name), the DataLoader shuffles with its own seeded generator and seeds its
workers, and on the CPU ``torch.use_deterministic_algorithms(True, warn_only=True)`` is on, so the
same parameters and seed give identical metrics twice on the same machine.

Epoch hook: a model with a ``set_epoch(epoch, n_epochs)`` method (epoch 1-based) has it called
at the start of every training epoch (e.g. AC4AU's γ warm-up of the subject loss); so has a
``train_transform`` with one (e.g. a per-epoch draw).

Curves: per epoch the mean training loss, the learning rate and (with ``inner_val``) the
validation loss and score go to a dvclive folder per fold (:func:`open_live`: DVC's own pipeline
integration stays off, the stage declares the folder) and are returned for the aggregated
``curves.csv``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.io import atomic_path
from pipeline.training.data import FeatureStore
from pipeline.training.metrics import binary_f1_per_au, emotion_metrics
from pipeline.training.registry import FoldContext, MethodSpec, default_logits, default_loss

log = logging.getLogger("train")

__all__ = [
    "FoldOutcome",
    "TrainSettings",
    "fit_predict",
    "flow_hflip",
    "make_optimizer",
    "make_scheduler",
    "open_live",
    "resolve_device",
    "seed_everything",
]


class TrainingError(RuntimeError):
    """Training diverged (non-finite loss) or cannot run with the given settings."""


@dataclass
class TrainSettings:
    """Trainer settings of one method (see module docstring for the meaning of each key)."""

    epochs: int = 10
    batch_size: int = 32
    optimizer: dict[str, Any] = field(default_factory=lambda: {"name": "adam", "lr": 1e-3})
    scheduler: dict[str, Any] = field(default_factory=lambda: {"name": "none"})
    device: str = "auto"
    amp: bool = True
    num_workers: int = 0
    selection: str = "last"
    val_share: float = 0.2
    threshold: float = 0.5
    grad_clip: float | None = None
    save_checkpoints: bool | list[str] = True
    preload: bool = True
    eval_batch_size: int = 64
    torch_threads: int | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> TrainSettings:
        """Settings from a resolved parameter mapping; unknown keys are ignored (they belong to
        the model or the method).

        Raises
        ------
        ValueError
            On a non-positive epoch count or batch size, or an unknown ``selection``.
        """
        names = {f.name for f in cls.__dataclass_fields__.values()}
        kwargs = {k: copy.deepcopy(v) for k, v in params.items() if k in names}
        s = cls(**kwargs)
        if int(s.epochs) < 1 or int(s.batch_size) < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {s.epochs}, {s.batch_size}")
        if s.selection not in ("last", "inner_val"):
            raise ValueError(f"selection must be 'last' or 'inner_val', got {s.selection!r}")
        s.epochs, s.batch_size, s.num_workers = int(s.epochs), int(s.batch_size), int(s.num_workers)
        return s


@dataclass
class FoldOutcome:
    """Result of one fold.

    Attributes
    ----------
    scores : ndarray of shape (n_test, n_outputs), float64
        AU probabilities or class probabilities of the test rows, in the order given.
    curves : list of dict
        One dict per epoch: ``epoch``, ``train_loss``, ``lr`` (+ ``val_loss``, ``val_score``).
    selected_epoch : int
        The epoch whose weights predicted the test rows (1-based).
    n_train : int
        Rows the model was trained on (without the inner validation rows).
    """

    scores: np.ndarray
    curves: list[dict[str, float]]
    selected_epoch: int
    n_train: int


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cpu``/``cuda`` as given.

    Raises
    ------
    ValueError
        If ``cuda`` is requested without a GPU, or the name is unknown.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda requested but no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def seed_everything(seed: int, device: torch.device) -> None:
    """Seed Python, NumPy and torch; deterministic algorithms on the CPU (:func:`deterministic`)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if device.type == "cpu":
        deterministic()


def deterministic() -> None:
    """``torch.use_deterministic_algorithms(True, warn_only=True)`` without its import of
    ``torch._inductor`` (about 2 s per process, once in every train stage): that wrapper only
    adds inductor's own flag for ``torch.compile``, which the project does not use, to torch's
    global flag set here.  Falls back to the wrapper where torch lacks the setter."""
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None:
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        setter(True, warn_only=True)


def _worker_init(worker_id: int) -> None:  # pragma: no cover - runs in DataLoader workers
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def make_optimizer(model: nn.Module, cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    """Adam / AdamW / SGD from ``{"name", "lr", "weight_decay", "momentum", "betas"}``.

    Adam and AdamW use torch's fused kernels (one kernel over all parameters instead of a Python
    loop of per-tensor steps; on the CPU the step of a ResNet18 takes 6 ms instead of ~45 ms);
    the update is the same algorithm, equal up to floating-point rounding.

    Raises
    ------
    ValueError
        On an unknown optimiser name.
    """
    name = str(cfg.get("name", "adam")).lower()
    lr = float(cfg.get("lr", 1e-3))
    wd = float(cfg.get("weight_decay", 0.0))
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd,
                                betas=tuple(cfg.get("betas", (0.9, 0.999))), fused=True)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=float(cfg.get("weight_decay", 0.01)),
                                 betas=tuple(cfg.get("betas", (0.9, 0.999))), fused=True)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd,
                               momentum=float(cfg.get("momentum", 0.9)))
    raise ValueError(f"optimizer.name must be adam, adamw or sgd, got {name!r}")


def make_scheduler(opt: torch.optim.Optimizer, cfg: Mapping[str, Any],
                   steps_per_epoch: int, epochs: int = 1) -> tuple[Any, str]:
    """The learning-rate scheduler and when to step it (``"epoch"``, ``"batch"`` with a
    fractional epoch, or ``"iteration"`` without an argument).

    ``exponential``: lr · γ^epoch (InfuseNet: γ 0.9); ``cosine_warm_restarts``: SGDR with
    T_0 = ``t0`` epochs and T_mult = ``t_mult`` (Ruan et al.: 10, 2), stepped every batch with a
    fractional epoch; ``step``: lr · γ every ``step_size`` epochs; ``one_cycle``: Smith and
    Topin's one-cycle policy (arXiv:1708.07120; ``torch.optim.lr_scheduler.OneCycleLR``) over
    ``epochs`` × ``steps_per_epoch`` batches, peaking at the optimiser's ``lr`` after
    ``pct_start`` (0.3) of them from lr / ``div_factor`` (25), with Adam's β₁ (SGD's momentum,
    if any) cycled 0.95 → 0.85 (ours, for short budgets: no paper here uses it); ``none``.

    Raises
    ------
    ValueError
        On an unknown scheduler name.
    """
    name = str(cfg.get("name", "none")).lower()
    if name == "none":
        return None, "epoch"
    if name == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(opt, gamma=float(cfg.get("gamma", 0.9))), "epoch"
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=int(cfg.get("step_size", 10)),
                                               gamma=float(cfg.get("gamma", 0.1))), "epoch"
    if name == "cosine_warm_restarts":
        sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            opt, T_0=int(cfg.get("t0", 10)), T_mult=int(cfg.get("t_mult", 2)),
            eta_min=float(cfg.get("eta_min", 0.0)))
        return sched, "batch"
    if name == "one_cycle":
        max_lr = [float(group["lr"]) for group in opt.param_groups]
        sched = torch.optim.lr_scheduler.OneCycleLR(
            # one step more than the batches: the trainer steps after the last batch too
            opt, max_lr=max_lr, total_steps=max(1, int(epochs) * int(steps_per_epoch)) + 1,
            pct_start=float(cfg.get("pct_start", 0.3)),
            div_factor=float(cfg.get("div_factor", 25.0)),
            # cycle β₁ / momentum only where the optimiser uses one (SGD without momentum stays so)
            cycle_momentum=all("betas" in g or float(g.get("momentum", 0.0)) > 0
                               for g in opt.param_groups))
        return sched, "iteration"
    raise ValueError("scheduler.name must be none, exponential, step, cosine_warm_restarts or "
                     f"one_cycle, got {name!r}")


def flow_hflip(batch: dict[str, torch.Tensor], gen: torch.Generator, p: float,
               flow_keys: Sequence[str] = ("flow",), image_keys: Sequence[str] = ()) -> dict:
    """Mirror a random subset (probability ``p`` each) of the samples left–right.

    For a flow image (u, v, ε) ``(B, 3, S, S)`` the horizontal component changes sign
    (u → −u) besides the mirroring of the pixel grid; images are only mirrored.  The labels
    are unchanged (the 12 CD6ME AUs are coded bilaterally; emotions are symmetric).

    Parameters
    ----------
    batch : dict of Tensor
    gen : torch.Generator
        Seeded generator (CPU) drawing the flips.
    p : float
        Flip probability per sample.

    Returns
    -------
    dict
        The batch with flipped copies of the listed inputs.
    """
    if p <= 0:
        return batch
    keys = [k for k in (*flow_keys, *image_keys) if k in batch]
    if not keys:
        return batch
    n = batch[keys[0]].shape[0]
    flip = (torch.rand(n, generator=gen) < p)
    if not flip.any():
        return batch
    out = dict(batch)
    for key in keys:
        x = batch[key].clone()
        sel = flip.to(x.device)
        x[sel] = torch.flip(x[sel], dims=[-1])
        if key in flow_keys:
            x[sel, 0] = -x[sel, 0]
        out[key] = x
    return out


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
            for k, v in batch.items()}


def _forward(spec: MethodSpec, model: nn.Module, batch: Mapping[str, Any]) -> Any:
    if spec.forward is not None:
        return spec.forward(model, batch)
    return model(*[batch[i.key] for i in spec.inputs])


def _predict(spec: MethodSpec, model: nn.Module, loader: torch.utils.data.DataLoader,
             device: torch.device, task: str, amp: bool,
             loss_fn=None) -> tuple[np.ndarray, float]:
    """Scores of every item of ``loader`` (in order) and the mean loss when ``loss_fn`` is given."""
    logits_fn = spec.logits or default_logits
    model.eval()
    chunks, losses, count = [], 0.0, 0
    with torch.no_grad():
        for batch in loader:
            batch = _to_device(batch, device)
            with _autocast(device, amp):
                outputs = _forward(spec, model, batch)
            logits = logits_fn(outputs).float()
            if loss_fn is not None:
                losses += float(loss_fn(outputs, batch)) * logits.shape[0]
                count += logits.shape[0]
            probs = torch.sigmoid(logits) if task == "au" else torch.softmax(logits, dim=1)
            chunks.append(probs.cpu().double().numpy())
    scores = np.concatenate(chunks) if chunks else np.zeros((0, 0))
    return scores, (losses / count if count else float("nan"))


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def _score(task: str, targets: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    """Validation score: mean binary F1 over AUs, or UF1."""
    if task == "au":
        return float(binary_f1_per_au(targets.astype(np.int64),
                                      (scores >= threshold).astype(np.int64)).mean())
    return emotion_metrics(targets, scores.argmax(axis=1))["uf1"]


def _loader(dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int,
            device: torch.device) -> torch.utils.data.DataLoader:
    gen = torch.Generator().manual_seed(seed)
    drop_last = shuffle and len(dataset) > batch_size and len(dataset) % batch_size == 1
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, generator=gen, drop_last=drop_last,
        num_workers=num_workers, worker_init_fn=_worker_init if num_workers else None,
        persistent_workers=False, pin_memory=device.type == "cuda")


#: Set by ``dvc exp run`` (not by ``dvc repro``).  With them in the environment dvclive's
#: ``Live.end`` git-adds the untracked files of its folder, building DVC's index of the whole
#: project each time: 0.5-1.7 s per fold here (a one-epoch ``sssnet_loso``, 49 folds, under
#: ``dvc exp run``: 106 s instead of 23 s).  The folders are outputs of the ``train@`` stage,
#: which DVC caches, so there is never anything to add.
DVC_EXP_ENV = ("DVC_EXP_BASELINE_REV", "DVC_EXP_NAME")


def open_live(live_dir: str | os.PathLike):
    """A dvclive ``Live`` logging to ``live_dir``, without DVC's experiment bookkeeping.

    ``save_dvc_exp=False, dvcyaml=None, report=None``; the variables of :data:`DVC_EXP_ENV` are
    hidden while it is built (so it does not act as the experiment's own logger) and restored,
    also when building it raises.

    Returns
    -------
    dvclive.Live
        Call ``end()`` when the fold is done.
    """
    from dvclive import Live

    hidden = {k: os.environ.pop(k) for k in DVC_EXP_ENV if k in os.environ}
    try:
        return Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None)
    finally:
        os.environ.update(hidden)


def fit_predict(spec: MethodSpec, ctx: FoldContext, store: FeatureStore, train: np.ndarray,
                test: np.ndarray, targets: np.ndarray, settings: TrainSettings,
                validation: np.ndarray | None = None, extras: Mapping[str, np.ndarray] | None = None,
                live_dir: str | os.PathLike | None = None,
                checkpoint: str | os.PathLike | None = None) -> FoldOutcome:
    """Train a fresh model of ``spec`` on ``train`` and score ``test``.

    Parameters
    ----------
    spec : MethodSpec
        A trained method (``build_model`` set).
    ctx : FoldContext
        Built from the training rows only; ``ctx.seed`` seeds everything.
    store : FeatureStore
        Inputs of every position.
    train, test : ndarray of int
        Positions (into ``store``) of the training and test samples; every one available.
    targets : ndarray
        Targets by position: ``(N, 12)`` float 0/1 (AU) or ``(N,)`` int class index (emotion).
    settings : TrainSettings
    validation : ndarray of int, optional
        Inner validation positions (training subjects only) for ``selection: inner_val``.
    extras : mapping of str to ndarray, optional
        Extra per-position arrays put into every batch (e.g. ``"subject"``).
    live_dir : path, optional
        dvclive folder of this fold.
    checkpoint : path, optional
        Where to save the selected weights (``torch.save`` of a dict with ``state_dict``).

    Returns
    -------
    FoldOutcome

    Raises
    ------
    TrainingError
        If the loss becomes non-finite, or ``inner_val`` is selected without validation rows.
    """
    if spec.build_model is None:
        raise TrainingError("fit_predict needs a trained method (build_model)")
    device = ctx.device
    seed_everything(ctx.seed, device)
    model = spec.build_model(ctx).to(device)
    loss_fn = (spec.build_loss(ctx) if spec.build_loss is not None
               else default_loss(ctx, spec.logits or default_logits))
    opt = make_optimizer(model, settings.optimizer)
    train_ds = store.dataset(train, targets, extras)
    test_ds = store.dataset(test, targets, extras)
    loader = _loader(train_ds, settings.batch_size, True, ctx.seed, settings.num_workers, device)
    steps = max(1, len(loader))
    sched, step_on = make_scheduler(opt, settings.scheduler, steps, settings.epochs)
    use_amp = bool(settings.amp) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    aug_gen = torch.Generator().manual_seed(ctx.seed + 1)
    val_loader = None
    if settings.selection == "inner_val":
        if validation is None or len(validation) == 0:
            raise TrainingError(f"fold {ctx.fold.name}: inner_val selection without validation rows")
        val_loader = _loader(store.dataset(validation, targets, extras), settings.eval_batch_size,
                             False, ctx.seed, settings.num_workers, device)

    live = open_live(live_dir) if live_dir is not None else None
    curves: list[dict[str, float]] = []
    best = (-np.inf, 0, None)
    try:
        for epoch in range(1, settings.epochs + 1):
            model.train()
            for owner in (model, spec.train_transform):
                hook = getattr(owner, "set_epoch", None)
                if callable(hook):
                    hook(epoch, settings.epochs)
            total, count = 0.0, 0
            for i, batch in enumerate(loader):
                if spec.train_transform is not None:
                    batch = spec.train_transform(batch, aug_gen)
                batch = _to_device(batch, device)
                opt.zero_grad(set_to_none=True)
                with _autocast(device, use_amp):
                    outputs = _forward(spec, model, batch)
                    loss = loss_fn(outputs, batch)
                if not torch.isfinite(loss):
                    raise TrainingError(f"fold {ctx.fold.name}: non-finite loss at epoch {epoch}")
                if scaler is not None:
                    scaler.scale(loss).backward()
                    if settings.grad_clip:
                        scaler.unscale_(opt)
                        nn.utils.clip_grad_norm_(model.parameters(), float(settings.grad_clip))
                    scaler.step(opt)
                    scaler.update()
                else:
                    loss.backward()
                    if settings.grad_clip:
                        nn.utils.clip_grad_norm_(model.parameters(), float(settings.grad_clip))
                    opt.step()
                if sched is not None and step_on == "batch":
                    sched.step(epoch - 1 + (i + 1) / steps)
                elif sched is not None and step_on == "iteration":
                    sched.step()
                n = int(batch["target"].shape[0])
                total += float(loss.detach()) * n
                count += n
            row = {"epoch": epoch, "train_loss": total / max(count, 1),
                   "lr": float(opt.param_groups[0]["lr"])}
            if sched is not None and step_on == "epoch":
                sched.step()
            if val_loader is not None:
                val_scores, val_loss = _predict(spec, model, val_loader, device, ctx.task, use_amp,
                                                loss_fn)
                row["val_loss"] = val_loss
                row["val_score"] = _score(ctx.task, targets[validation], val_scores,
                                          settings.threshold)
                if row["val_score"] > best[0]:
                    best = (row["val_score"], epoch,
                            {k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
            curves.append(row)
            if live is not None:
                for key, value in row.items():
                    if key != "epoch":
                        live.log_metric(key.replace("_", "/", 1) if key != "lr" else key, value)
                live.next_step()
    finally:
        if live is not None:
            live.end()

    selected = settings.epochs
    if val_loader is not None and best[2] is not None:
        model.load_state_dict(best[2])
        selected = best[1]
    if checkpoint is not None:
        with atomic_path(checkpoint, suffix=".pt") as tmp:
            torch.save({"state_dict": model.state_dict(), "method": ctx.method,
                        "fold": ctx.fold.name, "epoch": selected, "seed": ctx.seed,
                        "n_outputs": ctx.n_outputs, "class_names": list(ctx.class_names)}, tmp)
    test_loader = _loader(test_ds, settings.eval_batch_size, False, ctx.seed, settings.num_workers,
                          device)
    scores, _ = _predict(spec, model, test_loader, device, ctx.task, use_amp)
    return FoldOutcome(scores=scores, curves=curves, selected_epoch=selected, n_train=len(train))


def checkpoint_path(models_dir: str | os.PathLike, fold_name: str) -> Path:
    """``models/<method>/<fold>.pt``."""
    return Path(models_dir) / f"{fold_name}.pt"

"""Final models: one model per method fitted on all of its protocol's data, for prediction.

The leave-one-out protocols leave one model per fold, each blind to a database or a subject.  To
run a method on a user's own clip (:mod:`pipeline.predict`), ``train@<method>`` also fits one model
on every sample of the protocol — same builder, settings and seed rule as a fold (the "fold" is
named ``final``) — and saves ``models/<method>/final.pt`` with everything prediction needs.

Choices made here:

* AU methods: every CD6ME sample with features.  Emotion methods: the samples of one LOSO task,
  ``final_task`` (default ``composite-3``, the three classes negative / positive / surprise over
  CASME II, SAMM and SMIC, when the method runs it; else the method's first task that the data
  allow).
* ``selection: inner_val`` draws its validation subjects from all subjects, as a fold does from
  its training subjects; ``selection: last`` trains for the fixed epoch budget.
* Every cache a method may read (:data:`PREDICTABLE_CACHES`: ``faces``, ``flow``,
  ``magnified``, ``patches``, ``flow_mag``) is one :mod:`pipeline.predict` computes from a clip;
  a method reading another gets no final model, and the stage says so in its log.  Constant
  predictors store their fitted scores.
* Cost: one more fit of the method's epoch budget on all of its protocol's samples, i.e. about
  one extra fold (CD6ME: six folds on five sixths of the data each, so ~20 % of the stage's
  training; LOSO: one composite-3 fit beside ~100 subject folds, a few %).  The stage logs the
  seconds it took.
* Switch: ``final_model`` (``train:`` or a method's section): ``true`` (``params.yaml``'s
  ``train:`` sets it) or ``false``; absent means off, so library callers (and the tests) that do
  not ask for a final model do not pay for one.

``final.pt`` (``torch.save`` of a dict, :data:`FORMAT`): ``format``, ``method``, ``family``,
``task``, ``protocol``, ``emotion_task`` (or null), ``class_names``, ``params`` (the resolved
method section merged over ``train:``), ``params_hash`` (:func:`params_hash`), ``data`` (stand-in
or real), ``seed``, ``epoch``, ``n_train``, ``inputs`` (per input: ``key``, ``cache``,
``dataset``, ``kind``, ``size``), ``flow_norm``, ``flow_quantile``, ``features`` (cache name →
the parameters stored in that feature cache: crop geometry, detector, flow size, TV-L1
arguments, magnification factors, pseudo-apex draw, the magnifiers' weight hashes — for every
cache the method reads, and also ``faces.h5``'s and ``flow.h5``'s when present, which prediction
needs for the crops and the overlay), ``threshold``, ``train_targets`` and ``train_subjects`` (what a builder may read from
its fold context), and ``state_dict`` — or ``constant_scores`` for a constant predictor.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline.io import atomic_path
from pipeline.training.protocols import (
    CD6ME_AUS,
    EMOTION_TASKS,
    EmotionTask,
    Fold,
    ProtocolError,
    cd6me_table,
    emotion_table,
    fold_seed,
    inner_split,
    subject_identity,
)
from pipeline.training.registry import MethodSpec

log = logging.getLogger("train")

__all__ = ["FINAL_NAME", "FORMAT", "PREDICTABLE_CACHES", "choose_final_task", "fit_final_model",
           "load_final", "params_hash"]

FINAL_NAME = "final.pt"
FORMAT = "mer-final/1"
#: Feature caches whose arrays :mod:`pipeline.predict` computes from a clip.
PREDICTABLE_CACHES = ("faces", "flow", "magnified", "patches", "flow_mag")
#: Caches whose params every final model stores when they exist (crops, flow, the overlay).
UPSTREAM_CACHES = ("faces", "flow")
DEFAULT_FINAL_TASK = "composite-3"


def params_hash(params: Mapping[str, Any]) -> str:
    """SHA-256 (first 16 hex digits) of the parameters as sorted-key JSON."""
    text = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def choose_final_task(spec: MethodSpec, params: Mapping[str, Any],
                      samples: pd.DataFrame) -> EmotionTask:
    """The LOSO task an emotion method's final model is fitted on (module docstring).

    Raises
    ------
    ProtocolError
        If ``final_task`` is not one of the method's tasks, or no task can run on the data.
    """
    present = set(samples["database"])
    wanted = params.get("final_task")
    if wanted is not None:
        if wanted not in spec.emotion_tasks or wanted not in EMOTION_TASKS:
            raise ProtocolError(f"final_task {wanted!r} is not one of the method's tasks "
                                f"{list(spec.emotion_tasks)}")
        task = EMOTION_TASKS[wanted]
        if not set(task.databases) <= present:
            raise ProtocolError(f"final_task {wanted!r} needs databases "
                                f"{sorted(set(task.databases) - present)}, absent")
        return task
    order = ([DEFAULT_FINAL_TASK] if DEFAULT_FINAL_TASK in spec.emotion_tasks else []) + [
        k for k in spec.emotion_tasks if k != DEFAULT_FINAL_TASK]
    for key in order:
        task = EMOTION_TASKS.get(key)
        if task is not None and set(task.databases) <= present:
            return task
    raise ProtocolError(f"none of the tasks {list(spec.emotion_tasks)} can run on the databases "
                        f"present ({sorted(present)})")


def fit_final_model(name: str, spec: MethodSpec, params: Mapping[str, Any], samples: pd.DataFrame,
                    features_dir: str | os.PathLike, models_dir: str | os.PathLike, label: str,
                    seed: int, device: torch.device) -> Path | None:
    """Fit method ``name`` on all of its protocol's samples and write ``<models_dir>/final.pt``.

    Parameters
    ----------
    name : str
    spec : MethodSpec
    params : mapping
        The method's resolved section merged over ``train:``.
    samples : DataFrame
        ``samples.csv``.
    features_dir : path
        ``data/features``.
    models_dir : path
        ``models/<method>/`` (the run's temporary folder).
    label : str
        ``standin-<profile>`` or ``real``.
    seed : int
        The run seed; the model's seed is ``fold_seed(seed, "final")``.
    device : torch.device

    Returns
    -------
    Path or None
        The file written, or None when ``final_model`` is off or the method's inputs cannot be
        computed by :mod:`pipeline.predict`.

    Raises
    ------
    ProtocolError, pipeline.training.trainer.TrainingError, pipeline.features.cache.CacheError
        As a fold would.
    """
    from pipeline.training.run import _context, _store
    from pipeline.training.trainer import TrainSettings, fit_predict

    if not params.get("final_model", False):
        log.debug("%s: final_model off, no final model", name)
        return None
    other = sorted({i.cache for i in spec.inputs} - set(PREDICTABLE_CACHES))
    if other:
        log.info("%s: no final model: its inputs come from %s, which mer-predict does not compute "
                 "from a clip", name, other)
        return None
    started = time.perf_counter()
    settings = TrainSettings.from_params(params)
    emotion_task = None
    if spec.task == "au":
        table = cd6me_table(samples)
        names = list(CD6ME_AUS)
        targets = table[names].to_numpy(np.float32)
    else:
        emotion_task = choose_final_task(spec, params, samples)
        table, targets = emotion_table(samples, emotion_task)
        names = list(emotion_task.classes)
    rows = np.arange(len(table))
    if len(rows) == 0:
        raise ProtocolError(f"{name}: no sample for the final model")
    fseed = fold_seed(seed, "final")
    subjects = subject_identity(table)
    fold = Fold("final", "none", emotion_task.key if emotion_task else "cd6me", rows,
                np.zeros(0, np.int64))
    meta: dict[str, Any] = {
        "format": FORMAT, "method": name, "family": str(params.get("family", name)),
        "task": spec.task, "protocol": spec.protocol,
        "emotion_task": emotion_task.key if emotion_task else None, "class_names": names,
        "params": json.loads(json.dumps(dict(params), default=str)),
        "params_hash": params_hash(params), "data": label, "seed": fseed,
        "threshold": settings.threshold,
        "flow_norm": str(params.get("flow_norm", "sample")),
        "flow_quantile": float(params.get("flow_quantile", 0.99)),
        "inputs": [{"key": i.key, "cache": i.cache, "dataset": i.dataset, "kind": i.kind,
                    "size": i.size} for i in spec.inputs]}
    out = Path(models_dir) / FINAL_NAME
    if spec.constant is not None:
        ctx = _context(name, spec, fold, len(names), names, targets[rows], subjects[rows], fseed,
                       params, device)
        predictor = spec.constant().fit(ctx)
        scores, _ = predictor.predict(1, np.random.default_rng(fseed))
        meta.update(constant_scores=np.asarray(scores[0], np.float64).tolist(), epoch=0,
                    n_train=len(rows), features={}, train_targets=[], train_subjects=[])
        with atomic_path(out, suffix=".pt") as tmp:
            torch.save(meta, tmp)
        return out

    store = _store(spec, table["sample_id"].tolist(), features_dir, settings, params)
    rows = rows[store.available[rows]]
    validation = None
    if settings.selection == "inner_val":
        rows, validation = inner_split(rows, table, settings.val_share, fseed)
    ctx = _context(name, spec, fold, len(names), names, targets[rows], subjects[rows], fseed,
                   params, device)
    extras = {}
    if spec.needs_subjects:
        index = {s: i for i, s in enumerate(ctx.train_subjects)}
        extras["subject"] = np.array([index.get(s, -1) for s in subjects], dtype=np.int64)
    if spec.sample_extras is not None:   # the store's positions are the table's rows here
        extras.update({k: np.asarray(v) for k, v in spec.sample_extras(table).items()})
    with tempfile.TemporaryDirectory(dir=models_dir) as tmpdir:
        ckpt_path = Path(tmpdir) / "fit.pt"
        outcome = fit_predict(spec, ctx, store, rows, np.zeros(0, np.int64), targets, settings,
                              validation=validation, extras=extras, checkpoint=ckpt_path)
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    meta.update(state_dict=ckpt["state_dict"], epoch=outcome.selected_epoch, n_train=len(rows),
                features=_feature_params(store, features_dir),
                train_targets=np.asarray(ctx.train_targets).tolist(),
                train_subjects=list(ctx.train_subjects))
    for cache in store.caches.values():
        cache.close()
    with atomic_path(out, suffix=".pt") as tmp:
        torch.save(meta, tmp)
    log.info("%s: final model on %d samples (%s), epoch %d, %.1f s → %s", name, len(rows),
             emotion_task.key if emotion_task else "CD6ME", outcome.selected_epoch,
             time.perf_counter() - started, out)
    return out


def _feature_params(store: Any, features_dir: str | os.PathLike) -> dict[str, Any]:
    """Cache name → stored params: the caches the method reads, plus :data:`UPSTREAM_CACHES`
    present in ``features_dir``."""
    from pipeline.features.cache import FeatureCache

    out = {c: store.caches[c].params for c in sorted(store.caches)}
    for name in UPSTREAM_CACHES:
        path = Path(features_dir) / f"{name}.h5"
        if name not in out and path.is_file():
            cache = FeatureCache(path, name)
            try:
                out[name] = cache.params
            finally:
                cache.close()
    return out


def load_final(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``final.pt`` and check its format.

    Raises
    ------
    FileNotFoundError
        Naming the file and the stage that writes it.
    ValueError
        If the file is not a final model of :data:`FORMAT`.
    """
    path = Path(path)
    if not path.is_file():
        method = path.parent.name
        raise FileNotFoundError(
            f"{path}: no final model of method {method!r}. It is written by `dvc repro "
            f"train@{method}` with train.final_model: true")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, Mapping) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path}: not a final model ({FORMAT}); rebuild it with dvc repro")
    return dict(ckpt)

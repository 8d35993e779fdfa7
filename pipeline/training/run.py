"""Running a method under its protocol and writing its outputs (ARCHITECTURE.md, "Metrics files").

:func:`run_method` takes the sample table, the method's resolved parameters and three output
locations, runs every fold of the method's protocol with the shared trainer (or the constant
predictor), and writes:

* ``metrics/<method>.json`` — AU: ``{"task": "au", "protocol": "cd6me", "data", "f1_mean",
  "f1_per_au", "f1_per_database", "f1_database_mean", "n_samples", "auc_mean",
  "auc_per_au"[, "paper"]}`` (``auc_*``: ROC AUC of the pooled scores, ours, beside the CD6ME F1);
  emotion: ``{"task": "emotion", "protocol": "loso", "data", "results": {"casme2-5": {"accuracy",
  "uf1", "uar", "n_samples"}, …, "composite-3": {…}, "composite-3/casme2": {…}, …}}`` (the
  composite is also reported per database, on its pooled predictions restricted to that database);
  a trained method's file also has ``"epochs"``, its training budget (``train.budget`` learn or
  smoke, :mod:`pipeline.params`), so that ``dvc metrics diff`` and the report show it, and
  ``"init_weights"``, where its initial weights came from (``none`` | ``stage sha256:<hex>`` |
  ``imagenet`` | ``path <path> sha256:<hex>``, :mod:`pipeline.pretrain.weights`);
* ``metrics/<method>/folds/<fold>.json`` — the same fields for that fold (plus ``fold``,
  ``held_out``, ``n_train``, ``selected_epoch``, ``seed``; LOSO also
  ``classes_absent_from_training``: classes of the test part with no training sample);
* ``metrics/<method>/predictions.csv`` — one row per test sample: AU: ``sample_id, database,
  fold, true_AU1…, pred_AU1…, score_AU1…``; emotion: ``task, sample_id, database, fold, true,
  pred, score_<class>…`` (a sample is in one row per task it belongs to; scores of classes outside
  the task are empty);
* ``metrics/<method>/curves.csv`` (every fold and epoch) and ``curves_mean.csv`` (mean over folds
  per epoch, for ``dvc plots``); ``metrics/<method>/live/<fold>/`` dvclive folders;
* ``metrics/<method>/missing_features.csv`` — samples of the protocol absent from a feature
  cache: left out of training and given a fallback test prediction (AU: no AU present, score 0;
  emotion: the training majority class), so every method is scored on the same samples;
* ``models/<method>/<fold>.pt`` (trained weights, when ``save_checkpoints``) or
  ``<fold>.json`` (a constant predictor's fitted state), and ``models/<method>/run.json``;
* ``models/<method>/final.pt`` — one model fitted on all the protocol's data, for prediction on a
  user's clip (``final_model``; :mod:`pipeline.training.final`).

Scores: AU probabilities (sigmoid) thresholded at ``threshold`` (0.5); emotion: class
probabilities, prediction = argmax.  ``predictions.csv`` holds them at the network's float32
precision (the shortest text that reads back to the same float32), so the file's decisions follow
from its scores: rounding to six decimals turned a score of 0.49999997 (decision 0) into 0.5.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from pipeline.io import atomic_path, write_json
from pipeline.training.data import FeatureStore
from pipeline.training.execution import FoldRunner, in_scratch, write_files
from pipeline.training.metrics import au_fold_summary, cd6me_summary, emotion_metrics
from pipeline.training.protocols import (
    CD6ME_AUS,
    EMOTION_TASKS,
    Fold,
    ProtocolError,
    cd6me_folds,
    cd6me_table,
    emotion_table,
    fold_seed,
    inner_split,
    loso_folds,
    subject_identity,
)
from pipeline.training.registry import FoldContext, MethodSpec, build_method
from pipeline.training.trainer import TrainSettings, checkpoint_path, fit_predict, resolve_device

log = logging.getLogger("train")

__all__ = ["RunPaths", "classes_absent_from_training", "data_label", "run_method"]

EMOTION_METRIC_KEYS = ("accuracy", "uf1", "uar", "n_samples")


class RunPaths:
    """Output locations of one method run (usually temporary folders swapped in atomically).

    Parameters
    ----------
    models_dir : path
        ``models/<method>/``.
    metrics_dir : path
        ``metrics/<method>/``.
    metrics_json : path
        ``metrics/<method>.json``.
    """

    def __init__(self, models_dir: str | os.PathLike, metrics_dir: str | os.PathLike,
                 metrics_json: str | os.PathLike):
        self.models = Path(models_dir)
        self.metrics = Path(metrics_dir)
        self.json = Path(metrics_json)
        self.folds = self.metrics / "folds"
        for d in (self.models, self.metrics, self.folds):
            d.mkdir(parents=True, exist_ok=True)


def data_label(params: Mapping[str, Any]) -> str:
    """``"real"``, or ``"standin-<profile>"`` from ``data.source`` and ``standin.profile``.

    A stand-in built with ``standin.amplitude_scale`` k ≠ 1 (a diagnostic) is
    ``"standin-<profile>-amp<k>"``, so that its scores are never shown as the benchmark's.
    """
    source = (params.get("data") or {}).get("source", "standin")
    if source == "real":
        return "real"
    standin = params.get("standin") or {}
    label = f"standin-{standin.get('profile', 'quick')}"
    scale = float(standin.get("amplitude_scale", 1.0))
    return label if scale == 1 else f"{label}-amp{scale:g}"


def _context(name: str, spec: MethodSpec, fold: Fold, n_outputs: int, names: Sequence[str],
             train_targets: np.ndarray, train_subjects: Sequence[str], seed: int,
             params: Mapping[str, Any], device: torch.device) -> FoldContext:
    return FoldContext(method=name, task=spec.task, fold=fold, n_outputs=n_outputs,
                       class_names=tuple(names), train_targets=train_targets,
                       train_subjects=tuple(sorted(set(train_subjects))), seed=seed,
                       params=dict(params), device=device)


def _run_fold(name: str, spec: MethodSpec, settings: TrainSettings, params: Mapping[str, Any],
              fold: Fold, store_pos: np.ndarray, table: pd.DataFrame, store: FeatureStore | None,
              targets_store: np.ndarray, n_outputs: int, names: Sequence[str], seed: int,
              device: torch.device, paths: RunPaths) -> dict[str, Any]:
    """Train/fit on one fold and return test scores and decisions (rows in ``fold.test`` order)."""
    fseed = fold_seed(seed, fold.name)
    subjects = subject_identity(table)
    train_rows = fold.train
    if store is not None:
        avail = store.available[store_pos[train_rows]]
        train_rows = train_rows[avail]
    validation_rows = None
    if spec.constant is None and settings.selection == "inner_val":
        train_rows, validation_rows = inner_split(train_rows, table, settings.val_share, fseed)
    train_targets = targets_store[store_pos[train_rows]]
    ctx = _context(name, spec, fold, n_outputs, names, train_targets, subjects[train_rows], fseed,
                   params, device)
    n_test = len(fold.test)
    missing = np.zeros(n_test, dtype=bool)
    info: dict[str, Any] = {"n_train": int(len(train_rows)), "seed": fseed,
                            "train_rows": train_rows}
    if spec.constant is not None:
        predictor = spec.constant().fit(ctx)
        scores, decisions = predictor.predict(n_test, np.random.default_rng(fseed))
        write_json(paths.models / f"{fold.name}.json", {"fold": fold.name, **predictor.state()})
        info["selected_epoch"] = 0
        return {"scores": scores, "decisions": decisions, "missing": missing, "curves": [], **info}

    assert store is not None
    test_avail = store.available[store_pos[fold.test]]
    missing = ~test_avail
    extras = {}
    if spec.needs_subjects:
        index = {s: i for i, s in enumerate(ctx.train_subjects)}
        all_subjects = np.empty(len(targets_store), dtype=object)
        all_subjects[store_pos] = subjects
        extras["subject"] = np.array([index.get(s, -1) for s in all_subjects], dtype=np.int64)
    if spec.sample_extras is not None:
        for key, values in spec.sample_extras(table).items():
            values = np.asarray(values)
            arr = np.zeros((len(targets_store), *values.shape[1:]), dtype=values.dtype)
            arr[store_pos] = values
            extras[key] = arr
    outcome = fit_predict(
        spec, ctx, store, store_pos[train_rows], store_pos[fold.test[test_avail]], targets_store,
        settings,
        validation=None if validation_rows is None else store_pos[validation_rows],
        extras=extras, live_dir=paths.metrics / "live" / fold.name,
        checkpoint=(checkpoint_path(paths.models, fold.name)
                    if _keeps_checkpoint(settings.save_checkpoints, fold.name) else None))
    scores = np.zeros((n_test, n_outputs))
    scores[test_avail] = outcome.scores
    if spec.task == "au":
        decisions = (scores >= settings.threshold).astype(np.int64)
        decisions[missing] = 0
        scores[missing] = 0.0
    else:
        fallback = np.bincount(train_targets.astype(np.int64), minlength=n_outputs)
        scores[missing] = fallback / max(1, fallback.sum())
        decisions = scores.argmax(axis=1).astype(np.int64)
    info["selected_epoch"] = outcome.selected_epoch
    curves = [{"fold": fold.name, **row} for row in outcome.curves]
    return {"scores": scores, "decisions": decisions, "missing": missing, "curves": curves, **info}


def classes_absent_from_training(y: np.ndarray, fold: Fold, train_rows: np.ndarray,
                                  classes: Sequence[str]) -> list[str]:
    """Classes present in a LOSO fold's test part but absent from the rows it trained on.

    Such a fold cannot predict those test samples right (a model never saw the class; inverse
    class weights even push it towards classes rare in training); the report flags it.

    Parameters
    ----------
    y : ndarray of int, shape (N,)
        Class index of every row of the task's table.
    fold : Fold
    train_rows : ndarray of int
        The rows actually trained on (``fold.train`` minus samples without features).
    classes : sequence of str
        Class names, indexed by ``y``.

    Returns
    -------
    list of str
        Class names, in class order (empty when training covers every test class).
    """
    have = set(np.asarray(y)[np.asarray(train_rows, dtype=np.int64)].tolist())
    need = set(np.asarray(y)[fold.test].tolist())
    return [classes[c] for c in sorted(need - have)]
def _keeps_checkpoint(setting: Any, fold_name: str) -> bool:
    """``save_checkpoints``: true/false, or a list of fold names or shell-style patterns
    (``fnmatch``, e.g. ``casme2-5__*``: the folds an AU-CAM figure reads out of ~100 LOSO
    folds)."""
    if isinstance(setting, list | tuple):
        import fnmatch

        return any(fnmatch.fnmatchcase(fold_name, str(p)) for p in setting)
    return bool(setting)


@dataclass
class FoldJob:
    """What a Dask worker needs to train the folds of one protocol task (picklable).

    The method is rebuilt from ``name`` and ``params`` on the worker, the feature store opened
    there from ``features_dir`` (an absolute path the workers see) and ``store_ids``.
    """

    name: str
    params: dict[str, Any]
    seed: int
    store_pos: np.ndarray
    table: pd.DataFrame
    targets_store: np.ndarray
    n_outputs: int
    names: tuple[str, ...]
    store_ids: tuple[str, ...]
    features_dir: str


def _fold_results(runner: FoldRunner, name: str, spec: MethodSpec, settings: TrainSettings,
                  params: Mapping[str, Any], folds: Sequence[Fold], store_pos: np.ndarray,
                  table: pd.DataFrame, store: FeatureStore | None, targets_store: np.ndarray,
                  n_outputs: int, names: Sequence[str], seed: int, device: torch.device,
                  paths: RunPaths, features_dir: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """:func:`_run_fold` of every fold, in fold order: here, lazily, or as Dask tasks submitted
    at once, whose files are written into ``paths`` here (:mod:`pipeline.training.execution`)."""
    def local(i: int) -> dict[str, Any]:
        return _run_fold(name, spec, settings, params, folds[i], store_pos, table, store,
                         targets_store, n_outputs, names, seed, device, paths)

    if spec.constant is not None or not runner.distributed:
        return (local(i) for i in range(len(folds)))
    assert store is not None
    job = FoldJob(name, dict(params), seed, store_pos, table, targets_store, n_outputs,
                  tuple(names), tuple(store.sample_ids), str(Path(features_dir).resolve()))
    threads = runner.settings.torch_threads or settings.torch_threads
    labels = [f"fold {fold.name} (seed {seed})" for fold in folds]
    gathered = runner.map(labels, local, lambda i: (_fold_remote, (job, folds[i], threads)))

    def written() -> Iterator[dict[str, Any]]:
        for res, files in gathered:
            write_files(files, paths.models, paths.metrics)
            yield res

    return written()


def _fold_remote(job: FoldJob, fold: Fold, threads: int | None
                 ) -> tuple[dict[str, Any], dict[str, bytes]]:
    """One fold on a Dask worker: its :func:`_run_fold` result and the files it wrote."""
    spec = build_method(job.name, job.params)
    settings = TrainSettings.from_params(job.params)
    device = resolve_device(str(settings.device))

    def fold_in(models: Path, metrics: Path) -> dict[str, Any]:
        store = _worker_store(spec, job.store_ids, job.features_dir, settings, job.params)
        paths = RunPaths(models, metrics, metrics / "unused.json")
        return _run_fold(job.name, spec, settings, job.params, fold, job.store_pos, job.table,
                         store, job.targets_store, job.n_outputs, job.names, job.seed, device,
                         paths)

    return in_scratch(fold_in, threads)


def _final_remote(name: str, params: dict[str, Any], samples: pd.DataFrame, features_dir: str,
                  label: str, seed: int, threads: int | None) -> tuple[None, dict[str, bytes]]:
    """The final model (:func:`pipeline.training.final.fit_final_model`) on a Dask worker."""
    from pipeline.training.final import fit_final_model

    spec = build_method(name, params)
    device = resolve_device(str(TrainSettings.from_params(params).device))

    def fit_in(models: Path, _metrics: Path) -> None:
        fit_final_model(name, spec, params, samples, features_dir, models, label, seed, device)

    return in_scratch(fit_in, threads)


_WORKER_STORE: dict[tuple, FeatureStore] = {}
_WORKER_STORE_LOCK = threading.Lock()


def _worker_store(spec: MethodSpec, sample_ids: Sequence[str], features_dir: str,
                  settings: TrainSettings, params: Mapping[str, Any]) -> FeatureStore:
    """The feature store of a Dask task; a worker process keeps the last one it opened (the
    folds and seeds of a method share it), reopened when a cache file has changed."""
    stamps = []
    for cache in sorted({i.cache for i in spec.inputs}):
        path = Path(features_dir) / f"{cache}.h5"
        st = path.stat() if path.exists() else None
        stamps.append((str(path), st and st.st_mtime_ns, st and st.st_size))
    key = (tuple(spec.inputs), tuple(sample_ids), tuple(stamps), bool(settings.preload),
           str(params.get("flow_norm", "sample")), float(params.get("flow_quantile", 0.99)))
    with _WORKER_STORE_LOCK:
        if key not in _WORKER_STORE:
            _WORKER_STORE.clear()
            _WORKER_STORE[key] = _feature_store(spec, sample_ids, features_dir,
                                                settings.preload, params)
        return _WORKER_STORE[key]


def _feature_store(spec: MethodSpec, sample_ids: Sequence[str], features_dir: str | os.PathLike,
                   preload: bool, params: Mapping[str, Any]) -> FeatureStore:
    """The method's inputs for ``sample_ids``, normalised as ``params`` say (``flow_norm``)."""
    return FeatureStore(spec.inputs, sample_ids, features_dir, preload=preload,
                        flow_norm=str(params.get("flow_norm", "sample")),
                        flow_quantile=float(params.get("flow_quantile", 0.99)))


def _store(spec: MethodSpec, sample_ids: Sequence[str], features_dir: str | os.PathLike,
           settings: TrainSettings, params: Mapping[str, Any],
           runner: FoldRunner | None = None) -> FeatureStore | None:
    if spec.constant is not None:
        return None
    # with Dask workers training, this process only needs which samples the caches hold
    preload = settings.preload and not (runner is not None and runner.distributed)
    store = _feature_store(spec, sample_ids, features_dir, preload, params)
    if store.missing:
        log.warning("%d of %d samples lack features (first: %s); they are left out of training "
                    "and get a fallback prediction, listed in missing_features.csv",
                    len(store.missing), len(sample_ids), store.missing[0])
    return store


def _write_missing(paths: RunPaths, store: FeatureStore | None) -> None:
    rows = [] if store is None else [{"sample_id": s, "reason": "absent from a feature cache"}
                                     for s in store.missing]
    with atomic_path(paths.metrics / "missing_features.csv", suffix=".csv") as tmp:
        pd.DataFrame(rows, columns=["sample_id", "reason"]).to_csv(tmp, index=False)


def _write_curves(paths: RunPaths, curves: list[dict[str, Any]]) -> None:
    frame = pd.DataFrame(curves, columns=None if curves else ["fold", "epoch", "train_loss", "lr"])
    with atomic_path(paths.metrics / "curves.csv", suffix=".csv") as tmp:
        frame.to_csv(tmp, index=False)
    numeric = [c for c in frame.columns if c not in ("fold", "task", "epoch")]
    mean = (frame.groupby("epoch", as_index=False)[numeric].mean() if len(frame)
            else pd.DataFrame(columns=["epoch", *numeric]))
    with atomic_path(paths.metrics / "curves_mean.csv", suffix=".csv") as tmp:
        mean.to_csv(tmp, index=False, float_format="%.6g")


def score_columns(scores: np.ndarray, names: Sequence[str], index: pd.Index | None = None
                  ) -> pd.DataFrame:
    """The ``score_<name>`` columns of ``predictions.csv``.

    Parameters
    ----------
    scores : np.ndarray
        (n, len(names)) probabilities; float32 values, in any float dtype.
    names : sequence of str
        AU or class names, in column order.
    index : pd.Index, optional
        Row index of the frame the columns join (default 0…n−1).

    Returns
    -------
    pd.DataFrame
        float32 columns ``score_<name>``.  pandas writes a float32 as the shortest
        text that reads back to the same float32, so a score just below the 0.5 threshold stays
        below it in the file (six rounded decimals made 0.49999997 read as 0.5).

    Raises
    ------
    ValueError
        If ``scores`` is not 2-D with one column per name.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[1] != len(names):
        raise ValueError(f"scores of shape {scores.shape} for {len(names)} names")
    return pd.DataFrame({f"score_{c}": scores[:, j].astype(np.float32)
                         for j, c in enumerate(names)}, index=index)


def _run_cd6me(name: str, spec: MethodSpec, settings: TrainSettings, params: Mapping[str, Any],
               samples: pd.DataFrame, features_dir: str | os.PathLike, paths: RunPaths,
               label: str, seed: int, device: torch.device, runner: FoldRunner) -> dict[str, Any]:
    table = cd6me_table(samples)
    aus = list(CD6ME_AUS)
    targets = table[aus].to_numpy(np.float32)
    folds = cd6me_folds(table)
    store = _store(spec, table["sample_id"].tolist(), features_dir, settings, params, runner)
    positions = np.arange(len(table))
    n = len(table)
    scores = np.zeros((n, len(aus)))
    decisions = np.zeros((n, len(aus)), dtype=np.int64)
    fold_of = np.empty(n, dtype=object)
    curves: list[dict[str, Any]] = []
    fold_results = _fold_results(runner, name, spec, settings, params, folds, positions, table,
                                 store, targets, len(aus), aus, seed, device, paths, features_dir)
    for fold, res in tqdm(zip(folds, fold_results, strict=True), total=len(folds),
                          desc=f"{name} folds", leave=False):
        scores[fold.test] = res["scores"]
        decisions[fold.test] = res["decisions"]
        fold_of[fold.test] = fold.name
        curves += res["curves"]
        summary = au_fold_summary(targets[fold.test].astype(np.int64), res["decisions"], aus,
                                  res["scores"])
        write_json(paths.folds / f"{fold.name}.json", {
            "task": "au", "protocol": "cd6me", "data": label, "fold": fold.name,
            "held_out": fold.held_out, "f1_mean": summary["f1_mean"],
            "f1_per_au": summary["f1_per_au"],
            "f1_per_database": {fold.held_out: summary["f1_mean"]},
            "f1_database_mean": summary["f1_mean"], "n_samples": summary["n_samples"],
            "auc_mean": summary["auc_mean"], "auc_per_au": summary["auc_per_au"],
            "n_train": res["n_train"], "n_missing_features": int(res["missing"].sum()),
            "selected_epoch": res["selected_epoch"], "seed": res["seed"]})
        log.info("%s fold %s: F1 mean %.3f on %d samples (trained on %d)", name, fold.name,
                 summary["f1_mean"], summary["n_samples"], res["n_train"])
    y_true = targets.astype(np.int64)
    pred = pd.DataFrame({"sample_id": table["sample_id"], "database": table["database"],
                         "fold": fold_of})
    for j, au in enumerate(aus):
        pred[f"true_{au}"] = y_true[:, j]
    for j, au in enumerate(aus):
        pred[f"pred_{au}"] = decisions[:, j]
    pred = pd.concat([pred, score_columns(scores, aus, pred.index)], axis=1)
    with atomic_path(paths.metrics / "predictions.csv", suffix=".csv") as tmp:
        pred.to_csv(tmp, index=False)
    _write_curves(paths, curves)
    _write_missing(paths, store)
    result = cd6me_summary(y_true, decisions, table["database"].tolist(), aus, scores)
    return {"task": "au", "protocol": "cd6me", "data": label, **result}


def _run_loso(name: str, spec: MethodSpec, settings: TrainSettings, params: Mapping[str, Any],
              samples: pd.DataFrame, features_dir: str | os.PathLike, paths: RunPaths,
              label: str, seed: int, device: torch.device, runner: FoldRunner) -> dict[str, Any]:
    tasks = []
    for key in spec.emotion_tasks:
        if key not in EMOTION_TASKS:
            raise ProtocolError(f"methods.{name}.tasks: unknown LOSO task {key!r}; known: "
                                f"{sorted(EMOTION_TASKS)}")
        task = EMOTION_TASKS[key]
        present = set(samples["database"])
        if not set(task.databases) <= present:
            log.warning("%s: skipping LOSO task %s (databases %s absent)", name, key,
                        sorted(set(task.databases) - present))
            continue
        table, y = emotion_table(samples, task)
        tasks.append((task, table, y))
    if not tasks:
        raise ProtocolError(f"{name}: none of the LOSO tasks {list(spec.emotion_tasks)} can run on "
                            f"the databases present ({sorted(set(samples['database']))})")
    union = sorted(set().union(*(set(t[1]["sample_id"]) for t in tasks)))
    where = {sid: i for i, sid in enumerate(union)}
    store = _store(spec, union, features_dir, settings, params, runner)
    results: dict[str, dict[str, Any]] = {}
    rows: list[pd.DataFrame] = []
    curves: list[dict[str, Any]] = []
    all_classes: list[str] = []
    prepared = []
    for task, table, y in tasks:
        store_pos = table["sample_id"].map(where).to_numpy(np.int64)
        targets_store = np.full(len(union), -1, dtype=np.int64)
        targets_store[store_pos] = y
        folds = loso_folds(table, task)
        # on a Dask cluster every task's folds are submitted here, before the first is gathered
        prepared.append((task, table, y, folds, _fold_results(
            runner, name, spec, settings, params, folds, store_pos, table, store, targets_store,
            task.n_classes, task.classes, seed, device, paths, features_dir)))
    for task, table, y, folds, fold_results in prepared:
        for c in task.classes:
            if c not in all_classes:
                all_classes.append(c)
        n = len(table)
        decisions = np.zeros(n, dtype=np.int64)
        scores = np.zeros((n, task.n_classes))
        fold_of = np.empty(n, dtype=object)
        for fold, res in tqdm(zip(folds, fold_results, strict=True), total=len(folds),
                              desc=f"{name} {task.key}", leave=False):
            scores[fold.test] = res["scores"]
            decisions[fold.test] = res["decisions"]
            fold_of[fold.test] = fold.name
            curves += [{"task": task.key, **c} for c in res["curves"]]
            m = emotion_metrics(y[fold.test], res["decisions"])
            absent = classes_absent_from_training(y, fold, res["train_rows"], task.classes)
            if absent:
                log.warning("%s fold %s: the training part has no sample of %s, present in the "
                            "test part", name, fold.name, ", ".join(absent))
            write_json(paths.folds / f"{fold.name}.json", {
                "task": "emotion", "protocol": "loso", "data": label, "fold": fold.name,
                "held_out": fold.held_out,
                "results": {task.key: {k: m[k] for k in EMOTION_METRIC_KEYS}},
                "n_train": res["n_train"], "n_missing_features": int(res["missing"].sum()),
                "classes_absent_from_training": absent,
                "selected_epoch": res["selected_epoch"], "seed": res["seed"]})
        m = emotion_metrics(y, decisions)
        results[task.key] = {k: m[k] for k in EMOTION_METRIC_KEYS}
        if task.per_database:
            dbs = table["database"].to_numpy(object)
            for db in task.databases:
                mask = dbs == db
                if mask.any():
                    m = emotion_metrics(y[mask], decisions[mask])
                    results[f"{task.key}/{db}"] = {k: m[k] for k in EMOTION_METRIC_KEYS}
        log.info("%s %s: accuracy %.3f, UF1 %.3f, UAR %.3f on %d samples, %d subjects", name,
                 task.key, results[task.key]["accuracy"], results[task.key]["uf1"],
                 results[task.key]["uar"], n, len(folds))
        frame = pd.DataFrame({"task": task.key, "sample_id": table["sample_id"],
                              "database": table["database"], "fold": fold_of,
                              "true": [task.classes[i] for i in y],
                              "pred": [task.classes[i] for i in decisions]})
        frame = pd.concat([frame, score_columns(scores, task.classes, frame.index)],
                          axis=1)
        rows.append(frame)
    pred = pd.concat(rows, ignore_index=True)
    pred = pred[["task", "sample_id", "database", "fold", "true", "pred",
                 *[f"score_{c}" for c in all_classes]]]
    with atomic_path(paths.metrics / "predictions.csv", suffix=".csv") as tmp:
        pred.to_csv(tmp, index=False)
    _write_curves(paths, curves)
    _write_missing(paths, store)
    return {"task": "emotion", "protocol": "loso", "data": label, "results": results}


def run_method(name: str, params: Mapping[str, Any], samples: pd.DataFrame,
               features_dir: str | os.PathLike, paths: RunPaths, label: str, seed: int,
               published: Mapping[str, Any] | None = None,
               runner: FoldRunner | None = None) -> dict[str, Any]:
    """Run every fold of method ``name`` and write its outputs (module docstring).

    Parameters
    ----------
    name : str
        Method name (``methods.<name>`` of ``params.yaml``).
    params : mapping
        The method's resolved section merged over the shared ``train:`` section.
    samples : DataFrame
        ``samples.csv`` (:func:`pipeline.training.data.read_samples`).
    features_dir : path
        ``data/features``.
    paths : RunPaths
    label : str
        The ``data`` field: ``standin-quick`` | ``standin-full`` | ``real`` (:func:`data_label`).
    seed : int
        Run seed (``seed`` of ``params.yaml``).
    published : mapping, optional
        Published numbers for the AU JSON's ``paper`` field.
    runner : FoldRunner, optional
        Where the folds and the final model train (:mod:`pipeline.training.execution`); default:
        here, one fold after another.  Its ``torch_threads``, when set, overrides the params'.

    Returns
    -------
    dict
        The content written to ``metrics/<method>.json``.

    Raises
    ------
    pipeline.training.registry.MethodError, ProtocolError, pipeline.features.cache.CacheError
        On a bad method section, a protocol the data cannot support, or unusable caches.
    TrainingError
        On a diverged fold, or a Dask task that failed beyond its retries (one line naming it).
    """
    start = time.time()
    runner = runner or FoldRunner()
    spec = build_method(name, params)
    settings = TrainSettings.from_params(params)
    device = resolve_device(str(settings.device))
    threads = torch.get_num_threads()
    wanted = runner.settings.torch_threads or settings.torch_threads
    if wanted:
        torch.set_num_threads(int(wanted))
    log.info("%s: %s under %s on %s (device %s)", name, spec.task, spec.protocol, label, device)
    protocol = _run_cd6me if spec.protocol == "cd6me" else _run_loso
    final = None
    if runner.distributed and spec.constant is None:  # the final model trains beside the folds
        final = runner.submit(f"final model (seed {seed})", _final_remote, name, dict(params),
                              samples, str(Path(features_dir).resolve()), label, seed, wanted)
    try:
        result = protocol(name, spec, settings, params, samples, features_dir, paths, label, seed,
                          device, runner)
        # models/<method>/final.pt: one model on all the data, for mer-predict (train.final_model)
        from pipeline.training.final import fit_final_model

        if final is None:
            fit_final_model(name, spec, params, samples, features_dir, paths.models, label, seed,
                            device)
        else:
            write_files(runner.result(f"final model (seed {seed})", final)[1], paths.models,
                        paths.metrics)
    finally:
        torch.set_num_threads(threads)
    if spec.constant is None:
        result["epochs"] = int(settings.epochs)
        result["init_weights"] = spec.init_weights
    if published and spec.task == "au":
        result["paper"] = dict(published)
    write_json(paths.json, result)
    write_json(paths.models / "run.json", {
        "method": name, "task": spec.task, "protocol": spec.protocol, "data": label, "seed": seed,
        "device": str(device), "seconds": round(time.time() - start, 1)})
    if spec.task == "au":
        log.info("%s: CD6ME F1 mean %.3f (per-database mean %.3f), AUC mean %.3f on %d samples "
                 "in %.0f s", name, result["f1_mean"], result["f1_database_mean"],
                 result["auc_mean"], result["n_samples"], time.time() - start)
    else:
        log.info("%s: LOSO done in %.0f s", name, time.time() - start)
    return result

"""Repeated runs of one method over several training seeds: mean and standard deviation.

A method is trained once per seed of ``train.seeds`` (or ``methods.<name>.seeds``; null: the one
run seed ``seed`` of ``params.yaml``), every run under the same folds.  Layout of the outputs
(ARCHITECTURE.md, "Metrics files", extended):

* ``metrics/<method>.json`` — the usual fields, every measured number replaced by its **mean over
  the seeds**, plus ``"seeds": [s1, s2, …]`` and, with more than one seed, ``"sd": {…}``: the
  sample standard deviation (ddof 1) of every measured number, in the same nesting as the
  fields themselves (``sd.f1_mean``, ``sd.f1_per_au.AU4``, ``sd.results.casme2-5.uf1``, …), so
  that ``dvc metrics show|diff`` lists ``sd.<field>`` next to ``<field>``.  Aggregation is
  generic over the metric dict (:func:`aggregate_seeds`): any field a method family adds is
  averaged too.
* ``metrics/<method>/detail.json`` — that full record (every per-AU, per-database and composite
  per-database number, their ``sd``, the published ``paper`` block); ``metrics/<method>.json``, the
  file DVC declares as metrics, keeps only its headline numbers (:func:`headline_metrics`), so
  that ``dvc exp show`` and ``dvc metrics diff`` fit a screen (ARCHITECTURE.md, "Metrics files").
* ``metrics/<method>/seeds/<seed>.json`` — each seed's own metric dict.
* The first seed's run keeps the single-run layout (``metrics/<method>/folds/``,
  ``predictions.csv``, ``curves*.csv``, ``live/``; ``models/<method>/<fold>.pt``), so the
  confusion matrices, curves and Grad-CAM read one run as before; every further seed writes the
  same files under ``metrics/<method>/seeds/<seed>/`` and ``models/<method>/seed<seed>/``.

Choices (none of the papers fixes them): the sample standard deviation (n − 1; undefined, so not
written, for one seed); integers equal in every seed (sample counts) are kept as integers and get
no ``sd``; numbers that are not measured by the run (the published ``paper`` block, the training
budget ``epochs``) are copied from the first seed; strings and other fields must agree across
seeds.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.io import write_json

log = logging.getLogger("train")

__all__ = ["AU_HEADLINE", "EMOTION_HEADLINE", "NOT_MEASURED", "SeedError", "aggregate_seeds",
           "headline_metrics", "resolve_seeds", "run_method_seeds"]

#: Top-level fields that are not measured by the run (copied, never averaged).
NOT_MEASURED: tuple[str, ...] = ("paper", "epochs", "init_weights")


#: Headline fields of an AU method's declared metrics (ARCHITECTURE.md, "Metrics files").
AU_HEADLINE: tuple[str, ...] = ("f1_mean", "auc_mean", "f1_database_mean", "n_samples")
#: Headline fields of each emotion task's ``results.<task>`` entry.
EMOTION_HEADLINE: tuple[str, ...] = ("uf1", "uar", "accuracy")
#: Descriptive fields every headline keeps (strings, the training budget and the seeds).
_HEADLINE_KEEP: tuple[str, ...] = ("task", "protocol", "data", "epochs", "init_weights", "seeds")


def headline_metrics(full: Mapping[str, Any]) -> dict[str, Any]:
    """The headline of a method's full metrics record: what ``metrics/<method>.json`` declares.

    AU: ``task, protocol, data`` and ``f1_mean, auc_mean, f1_database_mean, n_samples``;
    emotion: ``results.<task>.{uf1, uar, accuracy}`` for every task (``casme2-5``, ``composite-3``,
    …; the per-database breakdowns ``composite-3/<db>`` stay in the detail); both keep ``epochs``,
    ``seeds`` and the ``sd`` of the kept numbers (two or more seeds).  Keys and nesting are those of
    the full record (ARCHITECTURE.md, "Metrics files"), so ``f1_mean`` and ``results.<task>.uf1``
    read the same in either file.

    Parameters
    ----------
    full : mapping
        The full record (:func:`aggregate_seeds` or one run's dict).

    Returns
    -------
    dict
        A new dict; fields absent from ``full`` (``auc_mean`` of an old file) are left out.

    Raises
    ------
    SeedError
        If ``task`` is neither ``"au"`` nor ``"emotion"``.
    """
    def pick(d: Mapping[str, Any] | None) -> dict[str, Any]:
        d = d or {}
        if full.get("task") == "au":
            return {k: d[k] for k in AU_HEADLINE if k in d}
        if full.get("task") == "emotion":
            return {"results": {t: {k: r[k] for k in EMOTION_HEADLINE if k in r}
                                for t, r in (d.get("results") or {}).items() if "/" not in t}}
        raise SeedError(f"metrics: 'task' must be 'au' or 'emotion', got {full.get('task')!r}")

    out = {k: full[k] for k in _HEADLINE_KEEP if k in full}
    out.update(pick(full))
    if "sd" in full:
        sd = pick(full["sd"])
        if full.get("task") == "emotion":
            sd["results"] = {t: r for t, r in sd["results"].items() if r}
        out["sd"] = sd
    return out


class SeedError(ValueError):
    """Bad ``seeds`` parameter, or per-seed results that do not share one layout."""


def resolve_seeds(seeds: Any, run_seed: int) -> list[int]:
    """The training seeds of a method: ``seeds`` (a list of ints) or ``[run_seed]`` when null.

    Raises
    ------
    SeedError
        If ``seeds`` is not null and not a non-empty list of distinct integers.
    """
    if seeds is None:
        return [int(run_seed)]
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence) or not seeds:
        raise SeedError(f"seeds must be null or a non-empty list of integers, got {seeds!r}")
    out = []
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int):
            raise SeedError(f"seeds must be integers, got {s!r} in {list(seeds)!r}")
        out.append(int(s))
    if len(set(out)) != len(out):
        raise SeedError(f"seeds must be distinct, got {out!r}")
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _mean_sd(values: Sequence[float]) -> tuple[float, float | None]:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return float("nan"), None
    mean = sum(finite) / len(finite)
    if len(finite) < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in finite) / (len(finite) - 1)
    return mean, math.sqrt(var)


def _aggregate(values: Sequence[Any], where: str) -> tuple[Any, Any]:
    """(mean-tree, sd-tree or None) of one field over the seeds."""
    first = values[0]
    if isinstance(first, Mapping):
        if not all(isinstance(v, Mapping) and set(v) == set(first) for v in values):
            raise SeedError(f"{where}: the seeds' results have different keys "
                            f"({[sorted(v) if isinstance(v, Mapping) else v for v in values]})")
        mean: dict[str, Any] = {}
        sd: dict[str, Any] = {}
        for key in first:
            m, s = _aggregate([v[key] for v in values], f"{where}.{key}")
            mean[key] = m
            if s is not None:
                sd[key] = s
        return mean, (sd or None)
    if _is_number(first) or first is None:
        if not all(_is_number(v) or v is None for v in values):
            raise SeedError(f"{where}: numbers in some seeds, not in others: {list(values)!r}")
        if all(isinstance(v, int) for v in values) and len(set(values)) == 1:
            return first, None                      # counts: identical integers stay integers
        mean_v, sd_v = _mean_sd(values)
        return mean_v, (sd_v if len(values) > 1 else None)
    if not all(v == first for v in values):
        raise SeedError(f"{where}: differs across seeds ({list(values)!r}); only numbers may")
    return first, None


def aggregate_seeds(results: Sequence[Mapping[str, Any]], seeds: Sequence[int]) -> dict[str, Any]:
    """Mean over seeds of every measured number of a metric dict, plus ``seeds`` and ``sd``.

    Parameters
    ----------
    results : sequence of mapping
        One ``metrics/<method>.json`` dict per seed (any nesting of dicts; leaves are numbers,
        strings, lists or null), in the order of ``seeds``.
    seeds : sequence of int

    Returns
    -------
    dict
        The first result's layout with every float leaf (and every integer leaf that differs
        across seeds) replaced by the mean over seeds (non-finite values ignored; NaN if none is
        finite), ``"seeds": list(seeds)`` and, for two or more seeds, ``"sd"``: the sample
        standard deviation (ddof 1) of each such leaf, nested like the fields.  Fields of
        :data:`NOT_MEASURED` are copied from the first seed.

    Raises
    ------
    SeedError
        If the lists differ in length, are empty, or the seeds' dicts differ in keys, or in a
        non-numeric field.
    """
    if not results or len(results) != len(seeds):
        raise SeedError(f"{len(results)} results for {len(seeds)} seeds")
    first = results[0]
    measured = [{k: v for k, v in r.items() if k not in NOT_MEASURED and k not in ("seeds", "sd")}
                for r in results]
    mean, sd = _aggregate(measured, "metrics")
    out: dict[str, Any] = {**mean, **{k: first[k] for k in NOT_MEASURED if k in first}}
    out["seeds"] = [int(s) for s in seeds]
    if len(results) > 1:
        out["sd"] = sd or {}
    return out


def run_method_seeds(name: str, params: Mapping[str, Any], samples: pd.DataFrame,
                     features_dir: str | os.PathLike, models_dir: str | os.PathLike,
                     metrics_dir: str | os.PathLike, metrics_json: str | os.PathLike, label: str,
                     seeds: Sequence[int],
                     published: Mapping[str, Any] | None = None,
                     runner: Any = None) -> dict[str, Any]:
    """Run method ``name`` once per seed and write the layout of the module docstring.

    Parameters
    ----------
    name, params, samples, features_dir, label, published
        As for :func:`pipeline.training.run.run_method`.
    models_dir, metrics_dir : path
        ``models/<method>/`` and ``metrics/<method>/`` (usually temporary folders).
    metrics_json : path
        ``metrics/<method>.json``: the headline of the aggregate (:func:`headline_metrics`); the
        whole aggregate goes to ``metrics_dir/detail.json``.
    seeds : sequence of int
        Training seeds (:func:`resolve_seeds`); the first one's run keeps the single-run layout.
    runner : pipeline.training.execution.FoldRunner, optional
        Where the folds train (default: here, one after another).  On a Dask cluster the seeds'
        runs go on side by side (one thread each here, which only submits, gathers and writes),
        so that every fold of every seed is in the cluster's queue at once.

    Returns
    -------
    dict
        The aggregate written to ``detail.json`` (:func:`aggregate_seeds`).

    Raises
    ------
    SeedError
        If ``seeds`` is empty; otherwise whatever :func:`~pipeline.training.run.run_method` raises.
    """
    from pipeline.training.run import RunPaths, run_method

    if not seeds:
        raise SeedError(f"{name}: no training seed")
    metrics_dir, models_dir = Path(metrics_dir), Path(models_dir)

    def one(i: int) -> dict[str, Any]:
        seed = seeds[i]
        per_seed = metrics_dir / "seeds" / f"{seed}.json"
        if i == 0:
            paths = RunPaths(models_dir, metrics_dir, per_seed)
        else:
            paths = RunPaths(models_dir / f"seed{seed}", metrics_dir / "seeds" / str(seed), per_seed)
        log.info("%s: seed %d (%d of %d)", name, seed, i + 1, len(seeds))
        return run_method(name, params, samples, features_dir, paths, label, int(seed),
                          published, runner=runner)

    if runner is not None and runner.distributed and len(seeds) > 1:
        results = _side_by_side(one, len(seeds), runner)
    else:
        results = [one(i) for i in range(len(seeds))]
    aggregate = aggregate_seeds(results, seeds)
    write_json(metrics_dir / "detail.json", aggregate)
    write_json(metrics_json, headline_metrics(aggregate))
    return aggregate


def _side_by_side(one: Any, n: int, runner: Any) -> list[dict[str, Any]]:
    """``[one(0), …, one(n − 1)]`` in threads; the first real failure (not a fold cancelled
    because of it) is raised once every thread has stopped."""
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    from pipeline.training.execution import FoldsAborted

    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="seed") as pool:
        futures = [pool.submit(one, i) for i in range(n)]
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            if any(f.exception() is not None for f in done):
                runner.abort()  # the other seeds' tasks are cancelled; their threads end
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise next((e for e in errors if not isinstance(e, FoldsAborted)), errors[0])
    return [fut.result() for fut in futures]

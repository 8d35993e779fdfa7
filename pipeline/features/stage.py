"""What the feature stages share: per-sample failures, the failures table, the stage driver.

A feature stage maps a per-sample function over its samples (:mod:`pipeline.parallel`), appends
every successful sample to its HDF5 cache in input order
(:class:`~pipeline.features.cache.CacheWriter`) and records every sample that could not be processed, with its reason, in
``data/features/<stage>_failures.csv`` (``sample_id, stage, reason``).  The stage fails, leaving no
cache, when the share of failed samples exceeds ``<stage>.max_failed_share``.  Bad input is a
:class:`SampleFailure` raised by the per-sample function; any other exception is a bug or an
environment problem and stops the stage, naming the sample.
"""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.features.cache import CacheWriter
from pipeline.io import atomic_path
from pipeline.parallel import map_with

FAILURE_COLUMNS = ("sample_id", "stage", "reason")


class SampleFailure(Exception):
    """Bad input for one sample (unreadable frame, no face, …): recorded, counted and skipped."""


class StageFailed(RuntimeError):
    """Too many samples of a stage failed (more than ``max_failed_share``), or none was given."""


@dataclass(frozen=True)
class Failure:
    """One failed sample: its id, the stage, and the reason (naming the file when there is one)."""

    sample_id: str
    stage: str
    reason: str


@dataclass
class Done:
    """One processed sample: the arrays to append and the names of the fixes applied to it."""

    sample_id: str
    arrays: dict[str, np.ndarray]
    fixes: tuple[str, ...] = ()


@dataclass
class StageSummary:
    """Counts of one stage run."""

    stage: str
    n_samples: int
    n_written: int
    failures: list[Failure] = field(default_factory=list)
    fixes: dict[str, int] = field(default_factory=dict)

    @property
    def n_failed(self) -> int:
        return len(self.failures)


@dataclass(frozen=True)
class Item:
    """A unit of work: a sample id and what the per-sample function needs (picklable)."""

    sample_id: str
    data: Any


def guarded(fn: Callable[[Any], Done], stage: str, item: Any) -> Done | Failure:
    """Run ``fn(item)``; a :class:`SampleFailure` becomes a :class:`Failure` row.

    Any other exception is re-raised as ``RuntimeError`` naming the stage and the sample.
    """
    sample_id = getattr(item, "sample_id", str(item))
    try:
        return fn(item)
    except SampleFailure as exc:
        return Failure(sample_id, stage, str(exc))
    except Exception as exc:
        raise RuntimeError(f"{stage}: sample {sample_id}: {type(exc).__name__}: {exc}") from exc


def write_failures(path: str | os.PathLike, failures: Iterable[Failure]) -> None:
    """Write the failures table ``(sample_id, stage, reason)`` atomically (header only if empty)."""
    df = pd.DataFrame([(f.sample_id, f.stage, f.reason) for f in failures],
                      columns=list(FAILURE_COLUMNS))
    with atomic_path(path, suffix=".csv") as tmp:
        df.to_csv(tmp, index=False)


def read_failures(path: str | os.PathLike) -> pd.DataFrame:
    """The failures table of a stage (``sample_id, stage, reason``).

    Raises
    ------
    ValueError
        If the file lacks one of the columns.
    """
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in FAILURE_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; expected {list(FAILURE_COLUMNS)}")
    return df


def run_stage(stage: str, fn: Callable[[Any], Done], items: Iterable[Item], n_items: int, *,
              out_path: str | os.PathLike, failures_path: str | os.PathLike,
              cache_params: Mapping[str, Any], max_failed_share: float,
              parallel: Mapping[str, Any], log: logging.Logger) -> StageSummary:
    """Map ``fn`` over ``items`` and write the cache and the failures table.

    Parameters
    ----------
    stage : str
        Stage and cache schema name (``faces``, ``flow``, ``patches``).
    fn : callable
        Picklable per-sample function ``Item → Done``; raises :class:`SampleFailure` on bad input.
    items : iterable of Item
        Consumed lazily, in the order the samples are written.
    n_items : int
        Number of items (progress bar, failure share).
    out_path, failures_path : path
        The HDF5 cache and the ``*_failures.csv`` table.
    cache_params : mapping
        Parameters stored in the cache.
    max_failed_share : float
        Largest tolerated share (fraction) of failed samples.
    parallel : mapping
        The ``parallel`` section (backend, n_jobs, scheduler).
    log : logging.Logger

    Returns
    -------
    StageSummary

    Raises
    ------
    StageFailed
        When there are no items, or more than ``max_failed_share`` of them failed; the failures
        table is written, the cache is not.
    """
    import functools

    if n_items == 0:
        raise StageFailed(f"{stage}: no samples to process")
    summary = StageSummary(stage, n_items, 0)
    fixes: collections.Counter[str] = collections.Counter()
    writer = CacheWriter(out_path, stage, cache_params)
    try:
        work = functools.partial(guarded, fn, stage)
        for result in map_with(dict(parallel), work, items, desc=stage, total=n_items):
            _check_signals()
            if isinstance(result, Failure):
                summary.failures.append(result)
                log.warning("%s: %s", result.sample_id, result.reason)
                continue
            writer.append(result.sample_id, result.arrays)
            fixes.update(result.fixes)
        summary.n_written = len(writer)
        summary.fixes = dict(sorted(fixes.items()))
        write_failures(failures_path, summary.failures)
        share = summary.n_failed / n_items
        if share > max_failed_share:
            raise StageFailed(
                f"{stage}: {summary.n_failed} of {n_items} samples failed ({share:.1%} > "
                f"{stage}.max_failed_share {max_failed_share:.1%}); reasons in {failures_path}")
    except BaseException:
        writer.abort()
        raise
    writer.close()
    fix_text = ", ".join(f"{k} {v}" for k, v in summary.fixes.items()) or "none"
    log.info("%d samples: %d written to %s, %d failed (%.1f%%, listed in %s); fixes: %s",
             n_items, summary.n_written, Path(out_path), summary.n_failed,
             100.0 * summary.n_failed / n_items, Path(failures_path), fix_text)
    return summary


def _check_signals() -> None:
    # A SIGTERM / Ctrl-C raised inside an HDF5 callback is swallowed there; the handlers of
    # pipeline.io.start_stage record it, and it is raised again here, after the sample.
    from pipeline.io import raise_pending_signal

    raise_pending_signal()


def stage_cli(stage: str, description: str, inputs: Mapping[str, str],
              run: Callable[[dict[str, Any], Mapping[str, Any]], StageSummary],
              argv: list[str] | None = None) -> int:
    """Command line of a feature stage: parse the paths, read params.yaml, run, report.

    Parameters
    ----------
    stage : str
        Stage name (also its ``params.yaml`` section and logger name).
    description : str
        ``--help`` text.
    inputs : mapping
        Option name → default path (e.g. ``{"index": "data/index/samples.csv"}``); ``out`` and
        ``failures`` are added (``data/features/<stage>.h5``, ``…/<stage>_failures.csv``).
    run : callable
        ``run(paths, params)`` with ``paths`` the parsed options and ``params`` the whole
        parameter file.
    argv : list of str, optional

    Returns
    -------
    int
        0 on success; 1 on bad input or parameters (one clear message, no traceback).

    A SIGTERM or Ctrl-C ends the stage like an exception, so that the temporary cache file is
    removed (a SIGKILL leaves it, under its temporary name, never as the final file; the next
    run removes it).
    """
    import argparse

    from pipeline.assets import AssetError
    from pipeline.features.cache import CacheError
    from pipeline.io import record_stage_time, stage_time_path, start_stage
    from pipeline.params import ParamsError, load

    defaults = {**inputs, "out": f"data/features/{stage}.h5",
                "failures": f"data/features/{stage}_failures.csv"}
    ap = argparse.ArgumentParser(prog=f"python -m stages.{stage}", description=description)
    ap.add_argument("--params", default="params.yaml", help="parameter file (default: %(default)s)")
    for name, default in defaults.items():
        ap.add_argument(f"--{name}", default=default, help=f"(default: {default})")
    args = vars(ap.parse_args(argv))
    log = start_stage(stage)
    params_path = args.pop("params")
    try:
        params = load(params_path)
        run(args, params)
    except (StageFailed, CacheError, AssetError, ParamsError, ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 1
    record_stage_time(stage, stage_time_path(stage, params_path))
    return 0

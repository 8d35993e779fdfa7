"""Ordered, streaming parallel map over samples: local processes (joblib) or a Dask cluster.

Every preprocessing stage maps one function over its samples with :func:`parallel_map` and
writes the results in input order, so that the output does not depend on the backend, the number
of workers or the order in which tasks finish (ARCHITECTURE.md, "Scale").

- ``backend="local"``: a joblib process pool (loky), ``Parallel(return_as="generator")``; at most
  ``pre_dispatch`` tasks are in flight, results are yielded in input order as they come.
- ``backend="dask"``: ``distributed.Client(scheduler)``; tasks are submitted in a sliding window
  (a bounded number of futures in flight) and their results yielded in input order.  With
  ``scheduler=None`` a ``LocalCluster`` is started on the loopback interface (127.0.0.1) for the
  duration of the map.  Workers must see the same files as the client (frames are read by path).

Neither backend holds the whole dataset: the items are consumed lazily and each result is
released once it has been yielded.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from tqdm.auto import tqdm

log = logging.getLogger("parallel")

T = TypeVar("T")
R = TypeVar("R")

BACKENDS = ("local", "dask")

# A stage stopped early (Ctrl-C, too many failures, a write error) closes the joblib generator;
# joblib then warns that the remaining tasks were cancelled, which is expected there.
warnings.filterwarnings("ignore", message=r"\d+ tasks ", category=UserWarning)


def resolve_n_jobs(n_jobs: int | None) -> int:
    """Number of workers for ``n_jobs`` (joblib convention: ``-1`` all cores, ``-2`` all but one).

    Raises
    ------
    ValueError
        If ``n_jobs`` is 0.
    """
    cores = os.cpu_count() or 1
    if n_jobs is None:
        return 1
    if n_jobs == 0:
        raise ValueError("parallel.n_jobs must be a positive number of workers or negative "
                         "(-1: all cores)")
    return n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)


def parallel_map(fn: Callable[[T], R], items: Iterable[T], backend: str = "local",
                 n_jobs: int | None = -1, scheduler: str | None = None, desc: str | None = None,
                 total: int | None = None, window: int | None = None,
                 progress: bool = True) -> Iterator[R]:
    """Apply ``fn`` to every item, in parallel, yielding the results in input order.

    Parameters
    ----------
    fn : callable
        A picklable function of one item (a module-level function or a ``functools.partial`` of
        one); it runs in worker processes (local) or on Dask workers.
    items : iterable
        Consumed lazily; each item is sent to a worker.
    backend : {"local", "dask"}
        joblib process pool, or a ``dask.distributed`` cluster.
    n_jobs : int
        Local: worker processes (``-1`` all cores, ``1`` runs in this process).  Dask with
        ``scheduler=None``: worker processes (one thread each) of the LocalCluster started for
        this map; ignored with a scheduler address.
    scheduler : str, optional
        Dask scheduler address (``tcp://host:port``); ``None`` starts a LocalCluster on 127.0.0.1.
    desc : str, optional
        Label of the tqdm progress bar.
    total : int, optional
        Number of items, for the progress bar (taken from ``len(items)`` when it has one).
    window : int, optional
        Tasks in flight at a time (default: 4 × workers, at least 8).
    progress : bool
        Show the tqdm progress bar.

    Yields
    ------
    result
        ``fn(item)`` for each item, in the order of ``items``.

    Raises
    ------
    ValueError
        For an unknown backend.
    Exception
        Whatever ``fn`` raised for an item, re-raised here (remaining tasks are cancelled).
    """
    if backend not in BACKENDS:
        raise ValueError(f"parallel.backend must be one of {BACKENDS}, got {backend!r}")
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    workers = resolve_n_jobs(n_jobs)
    if backend == "local":
        gen = _map_local(fn, items, workers, window)
    else:
        gen = _map_dask(fn, items, scheduler, workers, window)
    bar = tqdm(total=total, desc=desc, unit="sample", disable=not progress, mininterval=0.5,
               dynamic_ncols=True)
    try:
        for result in gen:
            bar.update(1)
            yield result
    finally:
        bar.close()
        gen.close()


def _map_local(fn: Callable[[T], R], items: Iterable[T], workers: int,
               window: int | None) -> Iterator[R]:
    if workers == 1:
        for item in items:
            yield fn(item)
        return
    from joblib import Parallel, delayed

    pre = window or max(8, 4 * workers)
    par = Parallel(n_jobs=workers, backend="loky", return_as="generator", pre_dispatch=pre,
                   batch_size=1)
    yield from par(delayed(fn)(item) for item in items)


class SchedulerError(ConnectionError):
    """The Dask scheduler cannot be reached (one line naming the parameter and the address)."""


@contextlib.contextmanager
def dask_client(scheduler: str | None, workers: int, key: str = "parallel.scheduler",
                timeout: float = 30.0, config: dict[str, Any] | None = None
                ) -> Iterator[Any]:
    """A ``distributed.Client`` for the block: to ``scheduler``, or to a loopback LocalCluster.

    Parameters
    ----------
    scheduler : str or None
        Scheduler address (``tcp://host:port``); ``None`` starts a ``LocalCluster`` on 127.0.0.1
        (``workers`` processes, one thread each, no dashboard) for the block's duration.
    workers : int
        Worker processes of the LocalCluster (ignored with an address).
    key : str
        The parameter that gave ``scheduler``, named in the error.
    timeout : float
        Seconds to wait for the scheduler to answer.
    config : dict, optional
        ``dask.config`` values set while the LocalCluster's scheduler is created (it runs in this
        process), e.g. ``{"distributed.scheduler.allowed-failures": 1}``.

    Raises
    ------
    SchedulerError
        If no scheduler answers at ``scheduler`` within ``timeout`` s (before any task is sent).
    """
    import dask
    from distributed import Client, LocalCluster

    # distributed's own logging config sets its logger to INFO, with a handler on the stderr of
    # the moment it was imported: every client connection and removal would be logged (from the
    # scheduler's thread, even after the block).  Warnings and errors still show.
    dlog = logging.getLogger("distributed")
    if dlog.getEffectiveLevel() < logging.WARNING:
        dlog.setLevel(logging.WARNING)
    cluster = None
    if scheduler:
        try:
            client = Client(scheduler, timeout=timeout)
        except (OSError, TimeoutError) as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise SchedulerError(f"{key}: no Dask scheduler answers at {scheduler} "
                                 f"({reason})") from None
    else:
        log.info("starting a Dask LocalCluster on 127.0.0.1 with %d workers", workers)
        with dask.config.set(config or {}):
            cluster = LocalCluster(host="127.0.0.1", n_workers=workers, threads_per_worker=1,
                                   processes=True, dashboard_address=None,
                                   silence_logs=logging.WARNING)
        client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _map_dask(fn: Callable[[T], R], items: Iterable[T], scheduler: str | None, workers: int,
              window: int | None) -> Iterator[R]:
    pending: collections.deque = collections.deque()
    with dask_client(scheduler, workers) as client:
        try:
            n_workers = len(client.scheduler_info().get("workers", {})) or workers
            size = window or max(8, 4 * n_workers)
            for item in items:
                pending.append(client.submit(fn, item, pure=False))
                if len(pending) >= size:
                    fut = pending.popleft()
                    result = fut.result()
                    fut.release()
                    yield result
            while pending:
                fut = pending.popleft()
                result = fut.result()
                fut.release()
                yield result
        finally:
            for fut in pending:
                fut.cancel()


def map_with(params: dict[str, Any], fn: Callable[[T], R], items: Iterable[T], desc: str,
             total: int | None = None) -> Iterator[R]:
    """:func:`parallel_map` configured by the ``parallel`` section of ``params.yaml``.

    Parameters
    ----------
    params : dict
        ``{"backend": "local" | "dask", "n_jobs": int, "scheduler": str | None}``.
    """
    return parallel_map(fn, items, backend=params.get("backend", "local"),
                        n_jobs=params.get("n_jobs", -1), scheduler=params.get("scheduler"),
                        desc=desc, total=total)

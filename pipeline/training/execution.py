"""Where a training stage's folds run: in the stage process, or as tasks on a Dask cluster.

The ``execution`` section of ``params.yaml`` (issue #35) says how the ``train@<method>`` stages
run, never what they compute, so it is not a DVC parameter of those stages: switching the backend,
the scheduler, the worker count or the torch thread count re-trains nothing, and queued
experiments that differ only there hit DVC's run cache.

- ``backend: local`` (default): the folds run one after another in the stage process, as before.
- ``backend: dask``: every fold of every training seed is one task, submitted together to the
  Dask scheduler at ``scheduler`` (``null``: a ``LocalCluster`` of ``workers`` processes on
  127.0.0.1 for the stage's duration; :func:`pipeline.parallel.dask_client`, the preprocessing's
  own connection).  A task rebuilds the method from its parameters, opens the feature caches
  (workers must see ``data/features`` at the same absolute path; each worker process keeps the
  last store it opened), trains the fold in a scratch folder of its own and returns the fold's
  scores with the bytes of every file it wrote (checkpoints, dvclive folders).  The stage process
  gathers the results in fold order and alone writes the stage's outputs, atomically as with the
  local backend.  The final model (``final_model``) is one more task.  Constant predictors have no
  training and run in the stage process.
- ``task_resources``: Dask worker resources each task asks for; ``auto`` asks ``{GPU: 1}`` when a
  worker of the cluster advertises a ``GPU`` resource at the stage's start (``dask worker
  --resources GPU=1``), nothing otherwise; a mapping is passed as it is.
- ``retries`` (default 1): a task that raises is run again that many times, and with the
  LocalCluster a task whose worker dies is re-run on another worker that many times
  (``distributed.scheduler.allowed-failures``; set the same value on a scheduler of your own).  A
  fold that fails beyond that fails the stage with one line naming the fold and seed; the
  remaining tasks are cancelled and nothing is written.
- ``torch_threads``: torch CPU threads in the stage process (local) or in each task (dask);
  ``null`` leaves torch's default, which differs between a stage process (all cores) and a Dask
  worker (1 thread: the nanny sets ``OMP_NUM_THREADS=1``).  Results are identical across the two
  backends at the same thread count on the same kind of machine; floating-point sums may differ
  at another count or on another device.

The task's seeding is the local run's (:func:`pipeline.training.protocols.fold_seed` of the run
seed and the fold's name, :func:`pipeline.training.trainer.seed_everything`), so a fold gives the
same numbers wherever and in whatever order it runs.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.parallel import dask_client, resolve_n_jobs
from pipeline.training.trainer import TrainingError

log = logging.getLogger("train")

__all__ = ["BACKENDS", "ExecutionSettings", "FoldRunner", "FoldsAborted", "in_scratch",
           "open_runner"]

BACKENDS = ("local", "dask")


class FoldsAborted(TrainingError):
    """A task cancelled because another fold of the stage failed."""


@dataclass(frozen=True)
class ExecutionSettings:
    """The ``execution`` section of ``params.yaml`` (module docstring)."""

    backend: str = "local"
    scheduler: str | None = None
    workers: int = -1
    torch_threads: int | None = None
    retries: int = 1
    task_resources: Any = "auto"
    connect_timeout: float = 30.0

    @classmethod
    def from_params(cls, section: Mapping[str, Any] | None) -> ExecutionSettings:
        """Settings from the resolved ``execution`` section (``None``: the defaults).

        Raises
        ------
        ValueError
            On an unknown backend, a negative retry count or bad ``task_resources`` (the
            schema, :mod:`pipeline.params_schema`, checks ``params.yaml`` before this).
        """
        section = dict(section or {})
        unknown = set(section) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"execution: unknown keys {sorted(unknown)}")
        s = cls(**section)
        if s.backend not in BACKENDS:
            raise ValueError(f"execution.backend must be one of {BACKENDS}, got {s.backend!r}")
        if int(s.workers) == 0:
            raise ValueError("execution.workers must be a positive number of workers or "
                             "negative (-1: all cores), got 0")
        if int(s.retries) < 0:
            raise ValueError(f"execution.retries must be >= 0, got {s.retries}")
        if s.task_resources not in (None, "auto") and not isinstance(s.task_resources, Mapping):
            raise ValueError("execution.task_resources must be auto, null or a mapping such as "
                             f"{{GPU: 1}}, got {s.task_resources!r}")
        return s


def in_scratch(fn: Callable[[Path, Path], Any], torch_threads: int | None
               ) -> tuple[Any, dict[str, bytes]]:
    """Run ``fn(models_dir, metrics_dir)`` in a scratch folder; return its result and files.

    Runs on a Dask worker.  ``torch_threads`` (if set) applies for the call.

    Returns
    -------
    (result, files)
        ``files`` maps ``models/<rel>`` / ``metrics/<rel>`` (POSIX paths) to the bytes of every
        file ``fn`` left under the two folders.
    """
    import torch

    threads = torch.get_num_threads()
    if torch_threads:
        torch.set_num_threads(int(torch_threads))
    try:
        with tempfile.TemporaryDirectory(prefix="mer-fold-") as tmp:
            roots = {"models": Path(tmp) / "models", "metrics": Path(tmp) / "metrics"}
            for d in roots.values():
                d.mkdir()
            result = fn(roots["models"], roots["metrics"])
            files = {f"{top}/{p.relative_to(root).as_posix()}": p.read_bytes()
                     for top, root in roots.items() for p in sorted(root.rglob("*"))
                     if p.is_file()}
    finally:
        torch.set_num_threads(threads)
    return result, files


def write_files(files: Mapping[str, bytes], models_dir: str | os.PathLike,
                metrics_dir: str | os.PathLike) -> None:
    """Write the files a task returned (:func:`in_scratch`) under the stage's two folders.

    Raises
    ------
    ValueError
        If a name leaves its folder (``..``) or starts with neither ``models/`` nor ``metrics/``.
    """
    roots = {"models": Path(models_dir), "metrics": Path(metrics_dir)}
    for name, data in files.items():
        top, _, rel = name.partition("/")
        if top not in roots or not rel or ".." in Path(rel).parts or Path(rel).is_absolute():
            raise ValueError(f"a training task returned a file outside its folders: {name!r}")
        path = roots[top] / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)  # inside the stage's temporary folders (pipeline.io.atomic_dir)


class FoldRunner:
    """Runs a stage's fold tasks in this process or on a Dask cluster (module docstring).

    Use :func:`open_runner`, which connects before any work.  ``FoldRunner()`` is the local
    runner.
    """

    def __init__(self, settings: ExecutionSettings | None = None, client: Any = None,
                 resources: Mapping[str, float] | None = None):
        self.settings = settings or ExecutionSettings()
        self.client = client
        self.resources = dict(resources) if resources else None
        self._aborted = False
        self._futures: set[Any] = set()  # submitted, not yet gathered (seeds' threads share it)
        self._lock = threading.Lock()

    @property
    def distributed(self) -> bool:
        """True when tasks go to a Dask cluster."""
        return self.client is not None

    def submit(self, label: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Submit ``fn(*args)`` as a Dask task (with the runner's retries and resources)."""
        if self._aborted:
            raise FoldsAborted(f"{label}: cancelled, another fold failed")
        fut = self.client.submit(fn, *args, pure=False, retries=int(self.settings.retries),
                                 resources=self.resources, key=_task_key(label))
        with self._lock:
            self._futures.add(fut)
        return fut

    def result(self, label: str, fut: Any) -> Any:
        """The task's result; a task that failed beyond its retries aborts the stage.

        Raises
        ------
        TrainingError
            One line: ``<label> failed <n> times on the Dask cluster: <error>``.
        FoldsAborted
            If another fold failed first.
        """
        try:
            out = fut.result()
        except Exception as exc:  # noqa: BLE001 - re-raised as one line naming the fold
            if self._aborted:
                raise FoldsAborted(f"{label}: cancelled, another fold failed") from None
            self.abort()
            what = " ".join(str(exc).split()) or "(no message)"
            raise TrainingError(f"{label} failed {int(self.settings.retries) + 1} times on the "
                                f"Dask cluster: {type(exc).__name__}: {what}") from None
        with self._lock:
            self._futures.discard(fut)
        fut.release()
        return out

    def map(self, labels: Sequence[str], local: Callable[[int], Any],
            remote: Callable[[int], tuple[Callable[..., Any], tuple]]) -> Iterator[Any]:
        """Results of tasks ``0 … len(labels) − 1``, in that order (dask: all submitted now).

        Parameters
        ----------
        labels : sequence of str
            One per task, e.g. ``fold casme (seed 0)``: the Dask key and the error's subject.
        local : callable
            ``local(i)``: task ``i`` run here (local backend), lazily, one after another.
        remote : callable
            ``remote(i) -> (fn, args)``: the picklable call of task ``i`` on a worker (dask
            backend); all tasks are submitted at once.
        """
        if not self.distributed:
            return (local(i) for i in range(len(labels)))
        futures = [self.submit(label, *_call(remote(i))) for i, label in enumerate(labels)]
        return self._gather(labels, futures)

    def _gather(self, labels: Sequence[str], futures: Sequence[Any]) -> Iterator[Any]:
        try:
            for label, fut in zip(labels, futures, strict=True):
                yield self.result(label, fut)
        finally:
            for fut in futures:
                if not fut.done():
                    fut.cancel()

    def abort(self) -> None:
        """Cancel every task this runner submitted (a fold failed)."""
        self._aborted = True
        with self._lock:
            pending = list(self._futures)
        if self.client is not None and pending:
            self.client.cancel(pending)


def _call(pair: tuple[Callable[..., Any], tuple]) -> tuple:
    fn, args = pair
    return (fn, *args)


def _task_key(label: str) -> str:
    import uuid

    return f"{label.replace(' ', '-')}-{uuid.uuid4().hex[:8]}"


def _malloc_trim_set() -> bool:  # runs on each worker
    return "MALLOC_TRIM_THRESHOLD_" in os.environ


def _resources(client: Any, wanted: Any) -> dict[str, float] | None:
    if isinstance(wanted, Mapping):
        return {str(k): float(v) for k, v in wanted.items()}
    if wanted is None:
        return None
    workers = client.scheduler_info().get("workers", {})
    if any("GPU" in (w.get("resources") or {}) for w in workers.values()):
        return {"GPU": 1.0}
    return None


class _Opened:
    def __init__(self, settings: ExecutionSettings):
        self.settings = settings
        self._ctx = None

    def __enter__(self) -> FoldRunner:
        s = self.settings
        if s.backend != "dask":
            return FoldRunner(s)
        self._ctx = dask_client(
            s.scheduler, resolve_n_jobs(s.workers), key="execution.scheduler",
            timeout=float(s.connect_timeout),
            config={"distributed.scheduler.allowed-failures": int(s.retries),
                    # Dask's default MALLOC_TRIM_THRESHOLD_ for workers turns off glibc's dynamic
                    # mmap threshold: torch's CPU training steps took 1.7-1.9x as long here
                    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})
        client = self._ctx.__enter__()
        resources = _resources(client, s.task_resources)
        n = len(client.scheduler_info().get("workers", {}))
        log.info("training folds as Dask tasks on %s (%d workers now, task resources %s, "
                 "retries %d)", client.scheduler.address, n, resources or "none", s.retries)
        if resources and not any(all(float((w.get("resources") or {}).get(k, 0)) >= v
                                         for k, v in resources.items())
                                     for w in client.scheduler_info().get("workers", {}).values()):
            log.warning("no worker of the cluster offers %s now: the tasks wait until one "
                        "joins (execution.task_resources)", resources)
        trimmed = [w for w, v in client.run(_malloc_trim_set).items() if v] if n else []
        if trimmed:
            log.warning("%d of %d Dask workers run with MALLOC_TRIM_THRESHOLD_ set (Dask's "
                        "default), under which torch's CPU training took 1.7-1.9x as long; "
                        "docs/cluster.md says how to unset it", len(trimmed), n)
        return FoldRunner(s, client, resources)

    def __exit__(self, *exc: Any) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(*exc)


def open_runner(section: Mapping[str, Any] | ExecutionSettings | None) -> _Opened:
    """``with open_runner(params["execution"]) as runner:`` — connects (dask) before any work.

    Raises
    ------
    pipeline.parallel.SchedulerError
        If the scheduler cannot be reached (one line naming ``execution.scheduler``).
    ValueError
        On bad settings (:meth:`ExecutionSettings.from_params`).
    """
    settings = (section if isinstance(section, ExecutionSettings)
                else ExecutionSettings.from_params(section))
    return _Opened(settings)

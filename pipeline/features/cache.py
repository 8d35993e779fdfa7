"""HDF5 feature caches: atomic writing, validated reading, a PyTorch ``Dataset`` over them.

Layout (docs/internals.md): root attributes ``schema`` (name), ``schema_version`` (int),
``params`` (JSON of the parameters that produced the file), ``created_by``; dataset
``sample_ids`` ``(N,)`` UTF-8 strings; every other dataset (at any group depth) has the sample
axis first, ``(N, ...)``, chunked one sample per chunk so that a batch reads only its samples.

A file is written under a temporary name and renamed into place when complete, so an interrupted
stage never leaves a file that looks finished.  HDF5 writes through :class:`_GuardedFile`: the
first write error (disk full, I/O error) is kept and raised by the next :meth:`CacheWriter.append`
or by :meth:`CacheWriter.close` as one ``OSError`` naming the file, and every later write is
dropped, so that HDF5 neither prints thousands of "Can't decrement id ref count" errors nor
crashes while closing a file it could not flush; the temporary file is then removed.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pipeline.io import atomic_path, defer_signals

#: Current version of each cache schema; bump when a layout changes.
SCHEMA_VERSIONS: dict[str, int] = {"faces": 1, "flow": 1, "patches": 1, "magnified": 1,
                                   "flow_mag": 1}

_STR = h5py.string_dtype("utf-8")


class CacheError(RuntimeError):
    """A feature cache is missing, of another schema or version, or inconsistent."""


class _GuardedFile(io.FileIO):
    """A writable file for h5py's ``fileobj`` driver that records its first write error.

    After an ``OSError`` (kept in :attr:`error`, with the file name) writes are accepted and
    dropped: the file is discarded anyway, and HDF5 can close it without failing.
    """

    error: OSError | None = None
    _raw_write = io.FileIO.write  # (tests replace it to inject a full disk)

    def write(self, data: Any) -> int:  # type: ignore[override]
        view = memoryview(data).cast("B")
        if self.error is not None:
            return view.nbytes
        done = 0
        while done < view.nbytes:
            try:
                n = self._raw_write(view[done:])
                if not n:
                    raise OSError(28, "No space left on device")
                done += n
            except OSError as exc:
                self.error = OSError(exc.errno, exc.strerror or str(exc), self.name)
                break
            except (KeyboardInterrupt, SystemExit):  # outside defer_signals(): give up the file
                self.error = OSError(4, "interrupted", self.name)
                break
        return view.nbytes

    def truncate(self, size: int | None = None) -> int:
        if self.error is not None:
            return self.tell() if size is None else size
        try:
            return super().truncate(size)
        except OSError as exc:
            self.error = OSError(exc.errno, exc.strerror or str(exc), self.name)
            return self.tell() if size is None else size

    def flush(self) -> None:
        if self.error is None:
            super().flush()


def _no_signals(method: Any) -> Any:
    """Run a :class:`CacheWriter` method under :func:`pipeline.io.defer_signals`."""
    import functools

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with defer_signals():
            return method(*args, **kwargs)

    return wrapper


class CacheWriter:
    """Stream samples into a new HDF5 cache, atomically.

    Parameters
    ----------
    path : path
        Final location of the file; written as a temporary file beside it until :meth:`close`.
    schema : str
        Cache name, a key of :data:`SCHEMA_VERSIONS`.
    params : mapping
        The parameters that produced the file (stored as JSON, compared by readers).
    compression : str or None
        HDF5 filter (``"gzip"`` by default, with byte shuffle).
    compress_float : bool
        False: floating-point datasets are stored without the filter (integer ones keep it).  The
        magnified latents (float16) shrink by only ~16 % under gzip + shuffle at ~25x the write
        time and ~8x the read time (measured on the quick stand-in's ``magnified.h5``).

    Use as a context manager; on an exception the temporary file is discarded::

        with CacheWriter("data/features/flow.h5", "flow", params) as w:
            w.append("casme2/sub01/EP02_01f", {"onset_apex": flow})   # flow: (S, S, 3) float32
    """

    def __init__(self, path: str | os.PathLike, schema: str, params: Mapping[str, Any],
                 compression: str | None = "gzip", compression_opts: int | None = 4,
                 compress_float: bool = True):
        if schema not in SCHEMA_VERSIONS:
            raise ValueError(f"unknown cache schema {schema!r}; known: {sorted(SCHEMA_VERSIONS)}")
        self.path = Path(path)
        self.schema = schema
        self.params = json.loads(json.dumps(params, sort_keys=True, default=str))
        self._compression = compression
        self._compression_opts = compression_opts if compression == "gzip" else None
        self._compress_float = bool(compress_float)
        self._ctx = atomic_path(self.path, suffix=".h5")
        self._tmp = self._ctx.__enter__()
        try:
            self._fh = _GuardedFile(self._tmp, "w+b")
            self._h5 = h5py.File(self._fh, "w", track_order=True)
        except BaseException:
            self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)
            raise
        self._ids: list[str] = []
        self._idset: set[str] = set()
        self._names: list[str] | None = None

    @_no_signals
    def append(self, sample_id: str, arrays: Mapping[str, np.ndarray]) -> None:
        """Add one sample: ``arrays`` maps dataset names (``/`` for groups) to per-sample arrays.

        Every sample must give the same names, shapes and dtypes.

        Raises
        ------
        ValueError
            On a repeated sample id, or names / shapes / dtypes differing from the first sample.
        OSError
            When writing the file failed (disk full, I/O error), naming the temporary file.
        """
        self._raise_write_error()
        if sample_id in self._idset:
            raise ValueError(f"{self.path}: sample {sample_id!r} appended twice")
        names = sorted(arrays)
        if self._names is None:
            self._names = names
            for name in names:
                arr = np.asarray(arrays[name])
                filtered = arr.ndim > 0 and bool(self._compression) and (
                    self._compress_float or not np.issubdtype(arr.dtype, np.floating))
                self._h5.create_dataset(
                    name, shape=(0, *arr.shape), maxshape=(None, *arr.shape), dtype=arr.dtype,
                    chunks=(1, *arr.shape) if arr.ndim else (1024,),
                    compression=self._compression if filtered else None,
                    compression_opts=self._compression_opts if filtered else None,
                    shuffle=filtered, track_times=False,
                )
        elif names != self._names:
            raise ValueError(f"{self.path}: sample {sample_id!r} gives {names}, expected {self._names}")
        n = len(self._ids)
        for name in names:
            arr = np.asarray(arrays[name])
            ds = self._h5[name]
            if arr.shape != ds.shape[1:] or arr.dtype != ds.dtype:
                raise ValueError(
                    f"{self.path}: {name} of sample {sample_id!r} is {arr.shape} {arr.dtype}, "
                    f"expected {ds.shape[1:]} {ds.dtype}")
            ds.resize(n + 1, axis=0)
            ds[n] = arr
        self._ids.append(sample_id)
        self._idset.add(sample_id)

    @_no_signals
    def close(self) -> None:
        """Write ids and attributes, close, and move the file into place."""
        h5 = self._h5
        h5.create_dataset("sample_ids", data=np.array(self._ids, dtype=object), dtype=_STR,
                          track_times=False)
        h5.attrs["schema"] = self.schema
        h5.attrs["schema_version"] = SCHEMA_VERSIONS[self.schema]
        h5.attrs["params"] = json.dumps(self.params, sort_keys=True)
        h5.attrs["created_by"] = "mer-pipeline"
        h5.close()
        self._fh.close()
        if self._fh.error is not None:
            self.abort()
            self._raise_write_error()
        self._ctx.__exit__(None, None, None)

    def _raise_write_error(self) -> None:
        err = self._fh.error
        if err is not None:
            raise OSError(err.errno, err.strerror, str(self.path))

    @_no_signals
    def abort(self) -> None:
        """Discard the temporary file; the final path is left as it was."""
        try:
            if self._h5.id.valid:
                self._h5.close()
        finally:
            try:
                self._fh.close()
            finally:
                self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __len__(self) -> int:
        return len(self._ids)


class FeatureCache:
    """Read-only, validated access to one HDF5 cache.

    Parameters
    ----------
    path : path
    schema : str
        Expected schema name; the file's version must equal :data:`SCHEMA_VERSIONS`.
    expect_params : mapping, optional
        When given, every key must equal the stored parameter of the same name.

    Raises
    ------
    CacheError
        If the file is missing, unreadable, of another schema or version, has parameters other than
        those expected, or a dataset whose first axis is not the number of samples.

    The file is opened lazily (and again in each DataLoader worker process).
    """

    def __init__(self, path: str | os.PathLike, schema: str,
                 expect_params: Mapping[str, Any] | None = None):
        self.path = Path(path)
        self.schema = schema
        if not self.path.is_file():
            raise CacheError(f"{self.path}: feature cache not found (run `dvc repro {schema}`)")
        try:
            with h5py.File(self.path, "r") as h5:
                self._validate(h5, expect_params)
        except OSError as exc:
            raise CacheError(f"{self.path}: not a readable HDF5 file ({exc})") from exc
        self._h5: h5py.File | None = None
        self._pid: int | None = None

    def _validate(self, h5: h5py.File, expect_params: Mapping[str, Any] | None) -> None:
        got = h5.attrs.get("schema")
        version = h5.attrs.get("schema_version")
        if got != self.schema:
            raise CacheError(f"{self.path}: schema {got!r}, expected {self.schema!r}")
        if version != SCHEMA_VERSIONS[self.schema]:
            raise CacheError(
                f"{self.path}: schema version {version}, this code reads version "
                f"{SCHEMA_VERSIONS[self.schema]}; rebuild it with `dvc repro {self.schema}`")
        if "sample_ids" not in h5:
            raise CacheError(f"{self.path}: no sample_ids dataset")
        self.sample_ids: list[str] = [s.decode() if isinstance(s, bytes) else str(s)
                                      for s in h5["sample_ids"][()]]
        self.params: dict[str, Any] = json.loads(h5.attrs.get("params", "{}"))
        if expect_params:
            diff = {k: (self.params.get(k), v) for k, v in expect_params.items()
                    if json.loads(json.dumps(v, default=str)) != self.params.get(k)}
            if diff:
                raise CacheError(f"{self.path}: built with other parameters (stored, expected): {diff}")
        n = len(self.sample_ids)
        shapes: dict[str, tuple[tuple[int, ...], np.dtype]] = {}

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset) and name != "sample_ids":
                if obj.shape[:1] != (n,):
                    raise CacheError(f"{self.path}: dataset {name} has shape {obj.shape}, "
                                     f"expected {n} samples first")
                shapes[name] = (obj.shape, obj.dtype)

        h5.visititems(visit)
        self.datasets = shapes
        self._pos = {sid: i for i, sid in enumerate(self.sample_ids)}

    def __len__(self) -> int:
        return len(self.sample_ids)

    def __contains__(self, sample_id: str) -> bool:
        return sample_id in self._pos

    def index_of(self, sample_id: str) -> int:
        """Row of ``sample_id``; ``KeyError`` naming the file when absent."""
        try:
            return self._pos[sample_id]
        except KeyError:
            raise KeyError(f"{self.path}: no sample {sample_id!r}") from None

    def _file(self) -> h5py.File:
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._h5

    def read(self, name: str, rows: int | Sequence[int] | slice | np.ndarray) -> np.ndarray:
        """Read dataset ``name`` at ``rows`` (one row, a sorted-or-not list, or a slice).

        Raises
        ------
        CacheError
            If the dataset does not exist.
        """
        if name not in self.datasets:
            raise CacheError(f"{self.path}: no dataset {name!r}; has {sorted(self.datasets)}")
        ds = self._file()[name]
        if isinstance(rows, int | np.integer | slice):
            return ds[rows]
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        out = ds[rows[order]] if np.all(np.diff(rows[order]) > 0) else np.stack([ds[i] for i in rows[order]])
        result = np.empty_like(out)
        result[order] = out
        return result

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    def __getstate__(self) -> dict[str, Any]:  # picklable for DataLoader workers
        state = self.__dict__.copy()
        state["_h5"] = None
        state["_pid"] = None
        return state


class CacheDataset:
    """A map-style PyTorch ``Dataset`` over one or more caches, aligned by sample id.

    Parameters
    ----------
    sources : mapping
        Output key → ``(FeatureCache, dataset name)``, e.g.
        ``{"flow": (flow_cache, "onset_apex"), "latent": (mag_cache, "latent/onset_apex")}``.
    sample_ids : sequence of str
        The samples, in order; each must be present in every cache.
    targets : ndarray, optional
        ``(len(sample_ids), ...)`` labels, returned under ``"target"``.
    transform : callable, optional
        Applied to the dict of numpy arrays of one sample before conversion to tensors.

    Raises
    ------
    CacheError
        If a sample is missing from a cache (listing the first few).

    Items are dicts of tensors plus ``"index"`` (position in ``sample_ids``); only the requested
    rows are read from the files.
    """

    def __init__(self, sources: Mapping[str, tuple[FeatureCache, str]], sample_ids: Sequence[str],
                 targets: np.ndarray | None = None, transform=None):
        self.sources = dict(sources)
        self.sample_ids = list(sample_ids)
        for key, (cache, name) in self.sources.items():
            missing = [s for s in self.sample_ids if s not in cache]
            if missing:
                raise CacheError(f"{cache.path}: {len(missing)} samples missing for {key!r}, "
                                 f"e.g. {missing[:3]}")
            if name not in cache.datasets:
                raise CacheError(f"{cache.path}: no dataset {name!r} for {key!r}")
        self.rows = {key: np.array([c.index_of(s) for s in self.sample_ids])
                     for key, (c, _) in self.sources.items()}
        if targets is not None and len(targets) != len(self.sample_ids):
            raise ValueError(f"{len(targets)} targets for {len(self.sample_ids)} samples")
        self.targets = targets
        self.transform = transform

    def __len__(self) -> int:
        return len(self.sample_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        item = {key: cache.read(name, int(self.rows[key][i]))
                for key, (cache, name) in self.sources.items()}
        if self.transform is not None:
            item = self.transform(item)
        out: dict[str, Any] = {k: torch.as_tensor(np.ascontiguousarray(v)) for k, v in item.items()}
        if self.targets is not None:
            out["target"] = torch.as_tensor(self.targets[i])
        out["index"] = i
        return out

"""Per-fold training data: the sample table, the feature caches, and input pre-processing.

The training stages read ``data/index/samples.csv`` (labels, databases, subjects) and the HDF5
feature caches (``data/features/<cache>.h5``, docs/internals.md) — never the raw frames.  A method
names the arrays it needs with :class:`InputSpec` (cache, dataset, kind, model input size); a
:class:`FeatureStore` opens the caches once per run, optionally pre-loads and pre-processes every
sample the protocol needs (the quick configuration: the stand-in is small), and hands out
per-fold ``torch`` datasets whose items are dicts of tensors plus ``"target"`` and ``"index"``.

Pre-processing at training time (the caches store raw values):

* ``flow`` — TV-L1 flow and optical strain ``(H, W, 3)`` float32 = (u, v, ε) in pixels per frame
  at the stored crop size.  Resized to the model's input side S (area interpolation when
  shrinking, bilinear when enlarging) and normalised per sample (``flow_norm``):

  - ``"sample"`` (default): (u, v) divided by the ``flow_quantile`` quantile (default 0.99) of the
    sample's flow magnitude sqrt(u² + v²), ε by the same quantile of ε, both clipped to [−1, 1].
    Direction is kept, the amplitude range of every sample becomes comparable (micro-expression
    amplitudes vary over an order of magnitude between samples and databases);
  - ``"none"``: raw values, with (u, v) rescaled by S / H so that they stay in pixels per frame at
    the model's input size (ε, a ratio of displacements, is scale-free).

  Output ``(3, S, S)`` float32.
* ``image`` — uint8 ``(..., H, W, 3)`` (a frame or a sequence of frames) → float32 in [0, 1],
  channels first ``(..., 3, S, S)``.
* ``array`` — any other array (e.g. magnified latents ``(32, S/2, S/2)`` float16) → float32, as
  stored.

Samples missing from a cache (failed upstream, listed in ``*_failures.csv``) are reported by
:attr:`FeatureStore.missing`; the trainer leaves them out of training and gives them a recorded
fallback prediction at test time, so no sample is silently dropped from a protocol.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from pipeline.features.cache import FeatureCache

log = logging.getLogger("train")

__all__ = [
    "FLOW_NORMS",
    "FeatureStore",
    "FoldDataset",
    "InputSpec",
    "SamplesError",
    "prepare_input",
    "preprocess_flow",
    "preprocess_image",
    "read_samples",
]

FLOW_NORMS = ("sample", "none")


class SamplesError(ValueError):
    """``samples.csv`` is missing or not as docs/internals.md describes it."""


def read_samples(path: str | os.PathLike, required: Sequence[str] = ()) -> pd.DataFrame:
    """Read the sample table written by the ``index`` stage.

    Parameters
    ----------
    path : path
        ``data/index/samples.csv``.
    required : sequence of str
        Columns the caller needs beyond ``sample_id``, ``database``, ``subject``.

    Returns
    -------
    DataFrame
        One row per sample; text columns as ``str`` (empty cells as ``""``, so subject ``006``
        keeps its zeros), every ``AU<n>`` column as int64 0/1.

    Raises
    ------
    SamplesError
        If the file is missing, a required column is absent, ``sample_id`` repeats, or an AU cell
        is not 0/1 (naming the file, column and sample).
    """
    path = Path(path)
    if not path.is_file():
        raise SamplesError(f"{path}: sample table not found (run `dvc repro index`)")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    needed = ["sample_id", "database", "subject", *required]
    absent = [c for c in needed if c not in table.columns]
    if absent:
        raise SamplesError(f"{path}: missing columns {absent}; has {list(table.columns)}")
    dup = table["sample_id"][table["sample_id"].duplicated()]
    if len(dup):
        raise SamplesError(f"{path}: sample_id repeated, e.g. {dup.iloc[0]!r}")
    for col in [c for c in table.columns if c[:2] == "AU" and c[2:].isdigit()]:
        values = pd.to_numeric(table[col].replace("", "0"), errors="coerce")
        bad = ~values.isin([0, 1])
        if bad.any():
            row = table[bad].iloc[0]
            raise SamplesError(
                f"{path}: column {col} must be 0/1, got {row[col]!r} for {row['sample_id']}")
        table[col] = values.astype(np.int64)
    return table


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    """Resize ``(H, W, C)`` float32 to ``(size, size, C)`` (area when shrinking)."""
    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return img
    interp = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_LINEAR
    out = cv2.resize(img, (size, size), interpolation=interp)
    return out.reshape(size, size, img.shape[2])


def preprocess_flow(flow: np.ndarray, size: int | None, norm: str = "sample",
                    quantile: float = 0.99) -> np.ndarray:
    """Resize and normalise one optical-flow image for a network.

    Parameters
    ----------
    flow : ndarray of shape (H, W, 3), float
        (u, v, ε): horizontal and vertical TV-L1 flow in pixels per frame, optical strain.
    size : int or None
        Model input side S in pixels; None keeps H × W.
    norm : {"sample", "none"}
        Per-sample normalisation (module docstring).
    quantile : float
        Quantile in (0, 1] of the magnitude used as the scale of ``"sample"`` (1.0: the maximum).

    Returns
    -------
    ndarray of shape (3, S, S), float32

    Raises
    ------
    ValueError
        On a wrong shape, a non-finite value, or an unknown ``norm``.
    """
    flow = np.asarray(flow, dtype=np.float32)
    if flow.ndim != 3 or flow.shape[2] != 3:
        raise ValueError(f"flow must be (H, W, 3) = (u, v, ε), got shape {flow.shape}")
    if not np.isfinite(flow).all():
        raise ValueError("flow holds non-finite values")
    if norm not in FLOW_NORMS:
        raise ValueError(f"flow_norm must be one of {FLOW_NORMS}, got {norm!r}")
    h = flow.shape[0]
    out = _resize(flow, size) if size else flow.copy()
    if norm == "none":
        if size:
            out[..., :2] *= size / h
    else:
        mag = np.sqrt(out[..., 0] ** 2 + out[..., 1] ** 2)
        s_uv = float(np.quantile(mag, quantile)) + 1e-6
        s_e = float(np.quantile(np.abs(out[..., 2]), quantile)) + 1e-6
        out[..., :2] = np.clip(out[..., :2] / s_uv, -1.0, 1.0)
        out[..., 2] = np.clip(out[..., 2] / s_e, -1.0, 1.0)
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def preprocess_image(img: np.ndarray, size: int | None) -> np.ndarray:
    """uint8 frame(s) ``(..., H, W, 3)`` → float32 ``(..., 3, S, S)`` in [0, 1]."""
    img = np.asarray(img)
    if img.ndim < 3 or img.shape[-1] != 3:
        raise ValueError(f"image must be (..., H, W, 3), got shape {img.shape}")
    lead = img.shape[:-3]
    flat = img.reshape(-1, *img.shape[-3:]).astype(np.float32) / 255.0
    frames = [_resize(f, size) if size else f for f in flat]
    out = np.stack(frames).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(out.reshape(*lead, *out.shape[1:]))


def prepare_input(spec: InputSpec, arr: np.ndarray, flow_norm: str = "sample",
                  flow_quantile: float = 0.99) -> np.ndarray:
    """One sample's stored array → the float32 model input of ``spec`` (module docstring).

    The one pre-processing path of training (:class:`FeatureStore`) and of prediction on a
    user's clip (:mod:`pipeline.predict`).

    Raises
    ------
    ValueError
        An unknown ``spec.kind``, or what the pre-processing of that kind raises.
    """
    if spec.preprocess is not None:
        return np.asarray(spec.preprocess(arr), dtype=np.float32)
    if spec.kind == "flow":
        return preprocess_flow(arr, spec.size, flow_norm, flow_quantile)
    if spec.kind == "image":
        return preprocess_image(arr, spec.size)
    if spec.kind == "array":
        return np.asarray(arr, dtype=np.float32)
    raise ValueError(f"input {spec.key!r}: unknown kind {spec.kind!r}")


@dataclass(frozen=True)
class InputSpec:
    """One input array of a method.

    Attributes
    ----------
    key : str
        Name in the batch dict (and the order of the model's positional arguments).
    cache : str
        Cache schema, also the file stem: ``data/features/<cache>.h5`` (``flow``, ``faces``,
        ``patches``, ``magnified``).
    dataset : str
        Dataset path inside the cache, e.g. ``"onset_apex"`` or ``"latent/onset_apex"``.
    kind : {"flow", "image", "array"}
        Default pre-processing (module docstring).
    size : int or None
        Model input side S in pixels (None: as stored).
    preprocess : callable, optional
        ``f(array of one sample) -> float32 array``, replacing the default of ``kind``.
    """

    key: str
    cache: str
    dataset: str
    kind: str = "flow"
    size: int | None = None
    preprocess: Callable[[np.ndarray], np.ndarray] | None = None


class FeatureStore:
    """The inputs of every sample of a protocol, from the feature caches.

    Parameters
    ----------
    inputs : sequence of InputSpec
    sample_ids : sequence of str
        The protocol's samples (positions used by :meth:`dataset` index this list).
    features_dir : path
        Folder of the caches (``data/features``).
    preload : bool
        Read and pre-process every available sample once (memory: N × the model input size);
        otherwise read each item from HDF5 when it is requested.
    flow_norm, flow_quantile :
        Flow pre-processing (:func:`preprocess_flow`).

    Attributes
    ----------
    available : ndarray of shape (N,), bool
        Whether every cache holds the sample.
    missing : list of str
        Sample ids absent from at least one cache.

    Raises
    ------
    pipeline.features.cache.CacheError
        If a cache is missing, of another schema/version, or lacks a dataset.
    """

    def __init__(self, inputs: Sequence[InputSpec], sample_ids: Sequence[str],
                 features_dir: str | os.PathLike, preload: bool = True,
                 flow_norm: str = "sample", flow_quantile: float = 0.99):
        self.inputs = tuple(inputs)
        self.sample_ids = list(sample_ids)
        self.flow_norm = flow_norm
        self.flow_quantile = flow_quantile
        if flow_norm not in FLOW_NORMS:
            raise ValueError(f"flow_norm must be one of {FLOW_NORMS}, got {flow_norm!r}")
        features_dir = Path(features_dir)
        self.caches: dict[str, FeatureCache] = {}
        for spec in self.inputs:
            if spec.cache not in self.caches:
                self.caches[spec.cache] = FeatureCache(features_dir / f"{spec.cache}.h5", spec.cache)
            cache = self.caches[spec.cache]
            if spec.dataset not in cache.datasets:
                from pipeline.features.cache import CacheError

                raise CacheError(f"{cache.path}: no dataset {spec.dataset!r} for input "
                                 f"{spec.key!r}; has {sorted(cache.datasets)}.  The stage "
                                 f"writing {cache.path.name} decides what it holds (e.g. "
                                 "flow.pairs, magnify.frames in params.yaml): add it there and "
                                 "re-run that stage")
        self.available = np.array(
            [all(sid in c for c in self.caches.values()) for sid in self.sample_ids], dtype=bool)
        self.missing = [s for s, ok in zip(self.sample_ids, self.available, strict=True) if not ok]
        self._arrays: dict[str, np.ndarray] | None = None
        if preload and self.inputs:
            self._preload()

    def _prep(self, spec: InputSpec, arr: np.ndarray) -> np.ndarray:
        return prepare_input(spec, arr, self.flow_norm, self.flow_quantile)

    def _read(self, spec: InputSpec, position: int) -> np.ndarray:
        cache = self.caches[spec.cache]
        return cache.read(spec.dataset, cache.index_of(self.sample_ids[position]))

    def _preload(self, chunk: int = 64) -> None:
        positions = np.flatnonzero(self.available)
        self._row = np.full(len(self.sample_ids), -1, dtype=np.int64)
        self._row[positions] = np.arange(len(positions))
        arrays: dict[str, list[np.ndarray]] = {s.key: [] for s in self.inputs}
        for spec in self.inputs:
            cache = self.caches[spec.cache]
            rows = np.array([cache.index_of(self.sample_ids[p]) for p in positions], dtype=np.int64)
            for start in tqdm(range(0, len(rows), chunk), desc=f"load {spec.cache}/{spec.dataset}",
                              disable=len(rows) < 8 * chunk, leave=False):
                block = cache.read(spec.dataset, rows[start:start + chunk])
                arrays[spec.key].extend(self._prep(spec, a) for a in block)
        self._arrays = {k: (np.stack(v) if v else np.zeros((0,), np.float32))
                        for k, v in arrays.items()}
        log.info("loaded %d samples (%s)", len(positions),
                 ", ".join(f"{k} {tuple(v.shape[1:])}" for k, v in self._arrays.items()))

    def item(self, position: int) -> dict[str, torch.Tensor]:
        """Pre-processed inputs of the sample at ``position`` as float32 tensors.

        Raises
        ------
        KeyError
            If the sample is missing from a cache.
        """
        if not self.available[position]:
            raise KeyError(f"sample {self.sample_ids[position]!r} is missing from a feature cache")
        if self._arrays is not None:
            row = int(self._row[position])
            return {k: torch.from_numpy(v[row]) for k, v in self._arrays.items()}
        return {s.key: torch.from_numpy(self._prep(s, self._read(s, position))) for s in self.inputs}

    def dataset(self, positions: Sequence[int] | np.ndarray, targets: np.ndarray,
                extras: Mapping[str, np.ndarray] | None = None) -> FoldDataset:
        """A dataset over ``positions`` (available samples only; raises ``KeyError`` otherwise)."""
        positions = np.asarray(positions, dtype=np.int64)
        bad = positions[~self.available[positions]]
        if bad.size:
            raise KeyError(f"{bad.size} samples lack features, e.g. {self.sample_ids[bad[0]]!r}")
        return FoldDataset(self, positions, targets, extras or {})

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__.copy()


class FoldDataset(torch.utils.data.Dataset):
    """Items ``{input keys: Tensor, "target": Tensor, "index": int, extras…}`` of one fold part.

    ``target`` is ``targets[position]`` (float32 AU vector for AU detection, int64 class index for
    emotion); ``index`` is the position in the protocol's sample list; each extra array is indexed
    the same way.
    """

    def __init__(self, store: FeatureStore, positions: np.ndarray, targets: np.ndarray,
                 extras: Mapping[str, np.ndarray]):
        self.store = store
        self.positions = positions
        self.targets = targets
        self.extras = dict(extras)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> dict[str, Any]:
        pos = int(self.positions[i])
        item: dict[str, Any] = self.store.item(pos)
        item["target"] = torch.as_tensor(self.targets[pos])
        item["index"] = pos
        for key, values in self.extras.items():
            item[key] = torch.as_tensor(values[pos])
        return item

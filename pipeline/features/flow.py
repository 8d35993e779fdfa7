"""The ``flow`` stage: TV-L1 optical flow and optical strain for the frame pairs the methods need.

- TV-L1 (Zach, Pock & Bischof, DAGM 2007; OpenCV's ``DualTVL1OpticalFlow`` after Sánchez, Meinhardt-
  Llopis & Facciolo, IPOL 2013), with the arguments of ``flow.tvl1``, on grey crops of side
  ``flow.size`` read from ``faces.h5`` (``crop{S}``).  The flow ``(u, v)`` of a pair
  (first → second) is such that ``second(x + u, y + v) ≈ first(x, y)``, in pixels of the crop per
  pair.
- Optical strain (Shreve et al., "Towards macro- and micro-expression spotting in video using
  strain patterns", WACV 2009; InfuseNet, Khor et al., SCIA 2025, Sect. 3.1, Eq. 4–5, whose
  optical flow image is I_OF = (u, v, ε)):
  ``ε = sqrt(u_x² + v_y² + ½ (u_y + v_x)²)``, the magnitude of the infinitesimal strain tensor
  ``½ (∇w + ∇wᵀ)`` (Frobenius norm of its symmetric 2×2 matrix), with the derivatives taken by
  ``numpy.gradient``: central differences inside, one-sided first differences on the border, unit
  pixel spacing.

The pairs are named in ``flow.pairs``; each names a first and a second frame of the faces cache
(:data:`PAIRS`).  A second frame stored as a stack (the pseudo-apex window) gives one flow per
entry.  A pair on another source (e.g. "→ magnified apex" once ``magnified.h5`` exists) is added by
registering it here and declaring that file as a dependency of the stage.  Output: float32
``(…, S, S, 3)`` = (u, v, ε) in pixels per frame pair, no normalisation (docs/internals.md).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import cv2
import numpy as np

from pipeline.features.cache import CacheError, FeatureCache
from pipeline.features.faces import crop_sizes
from pipeline.features.stage import Done, Item, SampleFailure, StageSummary, run_stage

log = logging.getLogger("flow")

#: Pair name → (first frame, second frame), frame names of the ``crop{S}`` group of faces.h5.
PAIRS: dict[str, tuple[str, str]] = {
    "onset_apex": ("onset", "apex"),
    "onset_pseudo": ("onset", "pseudo_apex"),
    "offset_apex": ("offset", "apex"),
    "onset_offset": ("onset", "offset"),
}

#: ``cv2.optflow.DualTVL1OpticalFlow_create`` keyword arguments (OpenCV's spelling).
TVL1_ARGS = ("tau", "lambda_", "theta", "nscales", "warps", "epsilon", "innnerIterations",
             "outerIterations", "scaleStep", "gamma", "medianFiltering", "useInitialFlow")


def check_tvl1(tvl1: Mapping[str, Any]) -> dict[str, Any]:
    """The TV-L1 arguments, checked against OpenCV's names.

    Raises
    ------
    ValueError
        Naming an unknown key (``flow.tvl1.<key>``).
    """
    unknown = [k for k in tvl1 if k not in TVL1_ARGS]
    if unknown:
        raise ValueError(f"flow.tvl1: unknown TV-L1 arguments {unknown}; known: {list(TVL1_ARGS)}")
    return dict(tvl1)


_local = threading.local()


def _tvl1(tvl1: Mapping[str, Any], shape: tuple[int, ...]):
    """One TV-L1 object per thread, arguments and frame shape: OpenCV's object keeps buffers
    between calls, and after a call on frames of another size it gives a different flow (up to
    ~1 px seen at 64 px after a 32-px pair), so that mer-predict, which computes several caches
    in one process, would not reproduce a stage's flow."""
    cache = _local.__dict__.setdefault("tvl1", {})
    key = (tuple(sorted(tvl1.items())), tuple(shape))
    if key not in cache:
        cache[key] = cv2.optflow.DualTVL1OpticalFlow_create(**dict(tvl1))
    return cache[key]


def tvl1_flow(first: np.ndarray, second: np.ndarray, tvl1: Mapping[str, Any]) -> np.ndarray:
    """TV-L1 optical flow from ``first`` to ``second``.

    Parameters
    ----------
    first, second : ndarray of shape (H, W), uint8
        Grey frames.
    tvl1 : mapping
        ``cv2.optflow.DualTVL1OpticalFlow_create`` arguments.

    Returns
    -------
    ndarray of shape (H, W, 2), float32
        (u, v) in pixels: ``second(x + u, y + v) ≈ first(x, y)``.

    Raises
    ------
    ValueError
        If the frames are not grey uint8 images of one shape.
    """
    for img in (first, second):
        if img.dtype != np.uint8 or img.ndim != 2:
            raise ValueError(
                f"tvl1_flow: expected grey uint8 (H, W) frames, got {img.shape} {img.dtype}")
    if first.shape != second.shape:
        raise ValueError(f"tvl1_flow: frames of different shapes {first.shape} and {second.shape}")
    flow = _tvl1(tvl1, first.shape).calc(np.ascontiguousarray(first), np.ascontiguousarray(second), None)
    return np.asarray(flow, dtype=np.float32)


def optical_strain(flow: np.ndarray) -> np.ndarray:
    """Optical strain magnitude ``ε = sqrt(u_x² + v_y² + ½ (u_y + v_x)²)``.

    Parameters
    ----------
    flow : ndarray of shape (H, W, 2), float
        (u, v) in pixels.

    Returns
    -------
    ndarray of shape (H, W), float32
        Dimensionless (pixels of displacement per pixel).  Derivatives by ``numpy.gradient``:
        central differences ``(f[i+1] − f[i−1]) / 2`` inside, one-sided differences on the border.
    """
    u = flow[..., 0].astype(np.float64)
    v = flow[..., 1].astype(np.float64)
    u_y, u_x = np.gradient(u)  # axis 0 is y (rows), axis 1 is x (columns)
    v_y, v_x = np.gradient(v)
    return np.sqrt(u_x**2 + v_y**2 + 0.5 * (u_y + v_x) ** 2).astype(np.float32)


def flow_image(first: np.ndarray, second: np.ndarray, tvl1: Mapping[str, Any]) -> np.ndarray:
    """(u, v, ε) of a frame pair: ``(H, W, 3) float32`` (pixels, pixels, dimensionless)."""
    flow = tvl1_flow(first, second, tvl1)
    return np.concatenate([flow, optical_strain(flow)[..., None]], axis=2)


def grey(image: np.ndarray) -> np.ndarray:
    """RGB ``(…, H, W, 3) uint8`` → grey ``(…, H, W) uint8`` (ITU-R BT.601 weights, OpenCV)."""
    if image.ndim == 3:
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in image])


def compute_pairs(frames: Mapping[str, np.ndarray], pairs: tuple[str, ...],
                  tvl1: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], int]:
    """Flow images of the named pairs of one sample.

    A pair of identical frames met twice (the pseudo-apex window starts at the apex and repeats
    the offset when clipped) is computed once; TV-L1 is deterministic, so the result is the same.

    Parameters
    ----------
    frames : mapping
        Frame name → grey ``(S, S)`` or stacked ``(W, S, S)`` ``uint8``.
    pairs : tuple of str
        Keys of :data:`PAIRS`.
    tvl1 : mapping

    Returns
    -------
    flows : dict
        Pair name → ``(S, S, 3)`` or ``(W, S, S, 3)`` ``float32`` (u, v, ε).
    n_computed : int
        TV-L1 calls made (distinct frame pairs).

    Raises
    ------
    SampleFailure
        If a flow is not finite.
    """
    memo: dict[tuple[bytes, bytes], np.ndarray] = {}

    def one(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        key = (hashlib.sha1(a.tobytes()).digest(), hashlib.sha1(b.tobytes()).digest())
        if key not in memo:
            memo[key] = flow_image(a, b, tvl1)
        return memo[key]

    out = {}
    for name in pairs:
        a_name, b_name = PAIRS[name]
        a, b = frames[a_name], frames[b_name]
        if a.ndim == 2 and b.ndim == 2:
            res = one(a, b)
        else:
            a_s = np.broadcast_to(a, b.shape) if a.ndim == 2 else a
            b_s = np.broadcast_to(b, a_s.shape) if b.ndim == 2 else b
            res = np.stack([one(x, y) for x, y in zip(a_s, b_s, strict=True)])
        if not np.all(np.isfinite(res)):
            raise SampleFailure(f"flow {name} is not finite")
        out[name] = res
    return out, len(memo)


def _process(item: Item, pairs: tuple[str, ...], tvl1: dict[str, Any], threads: int) -> Done:
    if threads > 0 and cv2.getNumThreads() != threads:
        cv2.setNumThreads(threads)
    flows, _ = compute_pairs(item.data, pairs, tvl1)
    return Done(item.sample_id, flows)


def open_faces(faces_path: str | os.PathLike, size: int, frame_names: set[str]) -> FeatureCache:
    """Open faces.h5 and check it holds the crops of side ``size`` the pairs need.

    Raises
    ------
    pipeline.features.cache.CacheError
        If the file is missing or invalid, or has no ``crop{size}`` group (listing the sizes it
        has and the parameter to change).
    """
    faces = FeatureCache(faces_path, "faces")
    have = crop_sizes(faces.datasets)
    missing = [f"crop{size}/{f}" for f in sorted(frame_names)
               if f"crop{size}/{f}" not in faces.datasets]
    if missing:
        raise CacheError(f"{faces.path}: no crops of size {size} ({missing[0]} absent); it has "
                         f"crop sizes {have}. Add {size} to faces.sizes or choose one of {have}")
    return faces


def _items(faces: FeatureCache, size: int, names: set[str]) -> Iterator[Item]:
    for i, sid in enumerate(faces.sample_ids):
        yield Item(sid, {n: grey(faces.read(f"crop{size}/{n}", i)) for n in sorted(names)})


def run_flow(faces_path: str | os.PathLike, params: Mapping[str, Any], out_path: str | os.PathLike,
             failures_path: str | os.PathLike, parallel: Mapping[str, Any]) -> StageSummary:
    """Run the ``flow`` stage over the samples of faces.h5.

    Parameters
    ----------
    faces_path : path
        ``faces.h5``; its sample ids are the samples (those that failed in ``faces`` are absent).
    params : mapping
        The resolved ``flow`` section: ``size``, ``pairs``, ``tvl1``, ``max_failed_share``.
    out_path, failures_path : path
        ``flow.h5`` and ``flow_failures.csv``.
    parallel : mapping
        The ``parallel`` section.

    Returns
    -------
    StageSummary

    Raises
    ------
    ValueError
        An unknown pair or TV-L1 argument.
    pipeline.features.cache.CacheError
        faces.h5 missing, invalid, or without crops of side ``flow.size``.
    pipeline.features.stage.StageFailed
        More than ``flow.max_failed_share`` of the samples failed, or faces.h5 has no sample.
    """
    import functools

    from pipeline.parallel import resolve_n_jobs

    size = int(params["size"])
    pairs = tuple(params["pairs"])
    unknown = [p for p in pairs if p not in PAIRS]
    if unknown or not pairs:
        raise ValueError(f"flow.pairs: unknown pairs {unknown} (or none); known: {sorted(PAIRS)}")
    tvl1 = check_tvl1(params.get("tvl1") or {})
    names = {f for p in pairs for f in PAIRS[p]}
    faces = open_faces(faces_path, size, names)
    # One OpenCV thread per worker when samples run in parallel (no oversubscription); the
    # result does not depend on the thread count.
    parallel = dict(parallel)
    threads = 1 if (parallel.get("backend") == "dask"
                    or resolve_n_jobs(parallel.get("n_jobs", -1)) > 1) else 0
    cache_params = {**{k: v for k, v in params.items() if k != "paper"},
                    "pairs": list(pairs), "tvl1": tvl1, "faces": faces.params}
    fn = functools.partial(_process, pairs=pairs, tvl1=tvl1, threads=threads)
    try:
        return run_stage("flow", fn, _items(faces, size, names), len(faces), out_path=out_path,
                         failures_path=failures_path, cache_params=cache_params,
                         max_failed_share=float(params.get("max_failed_share", 0.2)),
                         parallel=parallel, log=log)
    finally:
        faces.close()


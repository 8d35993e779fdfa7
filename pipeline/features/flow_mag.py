"""The ``flow_mag`` stage: TV-L1 flow from the onset and the offset to the magnified apex.

Ruan et al., "Mimicking the Annotation Process for Recognizing the Micro Expressions", ACM MM
2022, Sec. 3.1.1 and Fig. 2: the On-A (Off-A) frame is the optical flow between the onset
(offset) frame and the magnified apex of a learned magnifier (Oh et al., ECCV 2018) at α = 6.
The magnified apex lives in ``magnified.h5`` (``frames/<magnifier>/alpha<a>/apex``, stage
``magnify``), the onset and offset crops in ``faces.h5`` (``crop{S}``, S = ``flow.size``, the
side ``magnified.h5`` is computed at), so these pairs cannot be part of the ``flow`` stage, which
runs before ``magnify``.

Output ``data/features/flow_mag.h5`` (schema ``flow_mag``, layout of ``flow.h5``):
``onset_mag`` and ``offset_mag`` ``(N, S', S', 3) float32`` = (u, v, ε) in pixels of the S'-side
frames per pair (:func:`pipeline.features.flow.flow_image`, TV-L1 arguments ``flow.tvl1``),
S' = ``flow_mag.size`` (≤ S; the grey frames are area-resized to S' first — TV-L1 costs about
0.4 s per 224-px pair on 2 cores, a tenth of that at 64 px).  One row per sample of
``magnified.h5`` present in ``faces.h5`` whose database is in ``flow_mag.databases``
(params.yaml: the LOSO databases CASME II, SAMM and SMIC, the only ones the annotation-mimicking
network is trained and tested on; null: every database, stored in the cache's params); the
others are not computed, and their number is logged.

Choices (ours): grey = ITU-R BT.601 (OpenCV) of the RGB crops and the decoded magnified frame;
area resizing; ``flow_mag.size`` 64 in the quick configuration, 224 (= the paper's input) in
``config: paper``.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

import cv2
import numpy as np

from pipeline.features.cache import CacheError, FeatureCache
from pipeline.features.flow import check_tvl1, flow_image, grey, open_faces
from pipeline.features.stage import Done, Item, SampleFailure, StageSummary, run_stage

log = logging.getLogger("flow_mag")

__all__ = ["apex_dataset", "magnified_pairs", "run_flow_mag"]


def _fmt(alpha: float) -> str:
    a = float(alpha)
    return str(int(a)) if a.is_integer() else str(a)


def apex_dataset(params: Mapping[str, Any]) -> str:
    """The ``magnified.h5`` dataset of the magnified apex of the ``flow_mag`` section (or of the
    params stored in ``flow_mag.h5``): ``frames/<magnifier>/alpha<alpha>/apex``."""
    return f"frames/{params.get('magnifier', 'oh')}/alpha{_fmt(params.get('alpha', 6))}/apex"


def magnified_pairs(onset: np.ndarray, offset: np.ndarray, magnified: np.ndarray, size: int,
                    tvl1: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """On-A and Off-A flows of one sample.

    Parameters
    ----------
    onset, offset, magnified : ndarray (S, S) uint8
        Grey onset and offset crops and the grey magnified apex, one side S.
    size : int
        S' ≤ S, the side the flow is computed at (area-resized when smaller).
    tvl1 : mapping
        ``cv2.optflow.DualTVL1OpticalFlow_create`` arguments.

    Returns
    -------
    dict
        ``onset_mag``, ``offset_mag``: ``(S', S', 3) float32`` (u, v, ε).

    Raises
    ------
    SampleFailure
        On frames of different shapes, or a non-finite flow.
    """
    frames = [onset, offset, magnified]
    if len({f.shape for f in frames}) != 1:
        raise SampleFailure(f"onset, offset and magnified frames differ in shape: "
                            f"{[f.shape for f in frames]}")
    if size != onset.shape[0]:
        frames = [cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in frames]
    on, off, mag = frames
    out = {"onset_mag": flow_image(on, mag, tvl1), "offset_mag": flow_image(off, mag, tvl1)}
    for k, v in out.items():
        if not np.isfinite(v).all():
            raise SampleFailure(f"flow {k} is not finite")
    return out


def _process(item: Item, size: int, tvl1: dict[str, Any], threads: int) -> Done:
    if threads > 0 and cv2.getNumThreads() != threads:
        cv2.setNumThreads(threads)
    return Done(item.sample_id, magnified_pairs(*item.data, size=size, tvl1=tvl1))


def _items(faces: FeatureCache, mag: FeatureCache, crop: int, dataset: str,
           ids: list[str]) -> Iterator[Item]:
    for sid in ids:
        fi, mi = faces.index_of(sid), mag.index_of(sid)
        yield Item(sid, (grey(faces.read(f"crop{crop}/onset", fi)),
                         grey(faces.read(f"crop{crop}/offset", fi)),
                         grey(mag.read(dataset, mi))))


def run_flow_mag(faces_path: str | os.PathLike, magnified_path: str | os.PathLike,
                 params: Mapping[str, Any], flow_params: Mapping[str, Any],
                 out_path: str | os.PathLike, failures_path: str | os.PathLike,
                 parallel: Mapping[str, Any]) -> StageSummary:
    """Run the ``flow_mag`` stage (module docstring).

    Parameters
    ----------
    faces_path, magnified_path : path
        ``faces.h5`` and ``magnified.h5``.
    params : mapping
        The resolved ``flow_mag`` section: ``magnifier`` (oh | stmemm), ``alpha``, ``size``,
        ``databases`` (database keys, the first part of a sample id; None: all),
        ``max_failed_share``.
    flow_params : mapping
        The resolved ``flow`` section (``size``: the crop side of magnified.h5; ``tvl1``).
    out_path, failures_path : path
    parallel : mapping

    Returns
    -------
    StageSummary

    Raises
    ------
    ValueError
        On a bad size, magnifier or TV-L1 argument.
    pipeline.features.cache.CacheError
        If a cache is missing, invalid, or lacks the crops or the magnified frames (naming the
        parameter to change).
    pipeline.features.stage.StageFailed
        More than ``max_failed_share`` of the samples failed.
    """
    from pipeline.parallel import resolve_n_jobs

    crop = int(flow_params["size"])
    size = int(params.get("size", crop))
    if not 8 <= size <= crop:
        raise ValueError(f"flow_mag.size must be in [8, flow.size = {crop}], got {size}")
    magnifier = str(params.get("magnifier", "oh"))
    if magnifier not in ("oh", "stmemm"):
        raise ValueError(f"flow_mag.magnifier must be oh or stmemm, got {magnifier!r}")
    dataset = apex_dataset({**params, "magnifier": magnifier})
    tvl1 = check_tvl1(flow_params.get("tvl1") or {})
    faces = open_faces(faces_path, crop, {"onset", "offset"})
    mag = FeatureCache(magnified_path, "magnified")
    try:
        if dataset not in mag.datasets:
            raise CacheError(f"{mag.path}: no {dataset}; add {params.get('alpha', 6)} to "
                             f"magnify.frames.{magnifier}")
        shape = mag.read(dataset, 0).shape if len(mag) else None
        if shape is not None and shape[0] != crop:
            raise CacheError(f"{mag.path}: frames of side {shape[0]}, flow.size is {crop} "
                             "(re-run magnify)")
        ids = [s for s in mag.sample_ids if s in faces]
        databases = params.get("databases")
        if databases is not None:
            wanted = set(databases)
            keep = [s for s in ids if s.split("/", 1)[0] in wanted]
            log.info("%d of %d samples are of flow_mag.databases %s; the other %d are not "
                     "computed", len(keep), len(ids), list(databases), len(ids) - len(keep))
            ids = keep
        flag = f"frames/{magnifier}/computed"      # magnify.frames_databases
        if flag in mag.datasets and ids:
            decoded = mag.read(flag, np.array([mag.index_of(s) for s in ids]))
            if not decoded.all():
                first = ids[int(np.flatnonzero(decoded == 0)[0])]
                raise CacheError(f"{mag.path}: {int((decoded == 0).sum())} samples of "
                                 f"flow_mag.databases have no decoded {magnifier} frames (e.g. "
                                 f"{first}); add their databases to "
                                 f"magnify.frames_databases.{magnifier}")
        parallel = dict(parallel)
        threads = 1 if (parallel.get("backend") == "dask"
                        or resolve_n_jobs(parallel.get("n_jobs", -1)) > 1) else 0
        cache_params = {"size": size, "magnifier": magnifier, "alpha": params.get("alpha", 6),
                        "databases": None if databases is None else list(databases),
                        "tvl1": tvl1, "flow_size": crop, "magnified": mag.params}
        fn = functools.partial(_process, size=size, tvl1=tvl1, threads=threads)
        return run_stage("flow_mag", fn, _items(faces, mag, crop, dataset, ids), len(ids),
                         out_path=out_path, failures_path=failures_path,
                         cache_params=cache_params,
                         max_failed_share=float(params.get("max_failed_share", 0.2)),
                         parallel=parallel, log=log)
    finally:
        faces.close()
        mag.close()

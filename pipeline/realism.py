"""How real a micro-expression looks: the six statistics of the realism table (issue #30).

One function per row of the table in ``STANDIN.md`` ("Real reference") and issue #30, with
exactly their definitions, so that a run's caches — the stand-in's or a real database's — can be
set beside the real CASME II reference (``benchmarks/bench_realism.py``).  All statistics are per
sample, on the ``S``-px crops of ``faces.h5`` (``crop{S}/onset``, ``crop{S}/apex``, ``crop_box``)
and the TV-L1 flow of ``flow.h5`` (``onset_apex``); the reference was measured at S = 112 (the
quick configuration).

Definitions (STANDIN.md / issue #30):

- IOD in crop pixels = ``crop_box[4] * S / crop_box[2]`` (:func:`iod_crop_px`);
- face mask = the ellipse centred in the crop with semi-axes 0.42·S (x) and 0.48·S (y), its
  centre at pixel coordinate S/2 (:func:`face_mask`);
- head = \\|median (u, v) over the mask\\| / IOD, in % (:func:`head_motion`); the median is taken
  per component;
- non-rigid flow = \\|(u, v) − that median\\| (:func:`nonrigid_flow`); expression = its 95th / 99th
  percentile over the mask / IOD, in % (:func:`expression_p95`, :func:`expression_p99`);
- grey = OpenCV RGB → grey, then a Gaussian blur of σ = 1 px on both frames (:func:`grey`);
- raw change = mean \\|apex − onset\\| over the mask, grey levels (:func:`raw_change`);
- residual = \\|onset − apex pulled back by the flow\\|, the pull-back being
  ``cv2.remap(apex, x + u, y + v)`` (bilinear), since the flow satisfies
  apex(x + u, y + v) ≈ onset(x, y) (:func:`pulled_back`); unexplained share = mean residual /
  mean raw change over the mask (:func:`unexplained_share`);
- the same share inside the 10 % of the mask with the largest non-rigid flow, "where the face
  moves most" (:func:`unexplained_share_moving`).  The issue also compares the residual there with
  that of the 50 % of the mask with the smallest non-rigid flow, "the still half"
  (:func:`residual_moving_over_still`, a supplementary figure).

Here, not under ``pipeline/standin``, on purpose: no ``dvc.yaml`` stage depends on this module,
so changing it rebuilds nothing; it reads any run's caches, the stand-in's or a real database's.

Region sizes are counts of mask pixels: the ``round(0.10 · n)`` pixels with the largest
non-rigid flow, the ``round(0.50 · n)`` with the smallest (stable sort: ties go to the lower
pixel index in row-major order).  Frames may be given as RGB ``(S, S, 3) uint8`` (converted by
:func:`grey`) or as grey float images already blurred.
"""

from __future__ import annotations

import os

import cv2
import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

#: Semi-axes of the face mask as fractions of the crop side (x, y).
MASK_SEMI_AXES: tuple[float, float] = (0.42, 0.48)
#: σ of the Gaussian blur applied to both grey frames (pixels).
GREY_SIGMA_PX: float = 1.0
#: Share of the mask "where the face moves most" (largest non-rigid flow).
MOVING_SHARE: float = 0.10
#: Share of the mask that is "the still half" (smallest non-rigid flow).
STILL_SHARE: float = 0.50

#: The six statistics in the order of the table: (key, label, unit).
STATISTICS: tuple[tuple[str, str, str], ...] = (
    ("head", "head: rigid shift onset -> apex", "% IOD"),
    ("expression_p95", "expression: 95th percentile of the non-rigid flow", "% IOD"),
    ("expression_p99", "expression: 99th percentile of the non-rigid flow", "% IOD"),
    ("raw_change", "raw change: mean |apex - onset|", "grey levels"),
    ("unexplained", "change the flow cannot explain: residual / raw", "ratio"),
    ("unexplained_moving", "the same share in the 10 % of the face that moves most", "ratio"),
)

#: Real CASME II reference, median and (p10, p90) per sample, in the order of :data:`STATISTICS`.
#: Source: STANDIN.md ("Real reference") / issue #30 — 9 samples of one CASME II subject, quick
#: configuration, 112-px crops, measured with these definitions on frames this project does not
#: hold.
REAL_CASME2: dict[str, tuple[float, tuple[float, float]]] = {
    "head": (0.13, (0.06, 0.55)),
    "expression_p95": (0.38, (0.21, 1.95)),
    "expression_p99": (0.48, (0.32, 2.60)),
    "raw_change": (0.92, (0.53, 2.20)),
    "unexplained": (0.69, (0.45, 0.80)),
    "unexplained_moving": (0.66, (0.39, 0.75)),
}
#: Supplementary: mean residual where the face moves most / in the still half on real CASME II
#: (issue #30: "the residual is 3.0x the still half's on the real frames"; how the samples were
#: combined is not stated).
REAL_CASME2_MOVING_OVER_STILL: float = 3.0
#: Source string to print beside :data:`REAL_CASME2`.
REFERENCE_SOURCE = "real CASME II reference, STANDIN.md / issue #30"


def iod_crop_px(crop_box: np.ndarray, size: int = 112) -> np.ndarray | float:
    """Inter-ocular distance in pixels of the ``size``-px crop.

    Parameters
    ----------
    crop_box : ndarray of shape (5,) or (N, 5), float
        ``faces.h5`` ``crop_box``: centre x, centre y, side, angle, IOD (frame pixels, degrees).
    size : int
        Crop side S in pixels.

    Returns
    -------
    float or ndarray of shape (N,), float64
        ``crop_box[4] * size / crop_box[2]``, crop pixels.

    Raises
    ------
    ValueError
        If the last axis is not 5 long, or a side or IOD is not positive and finite.
    """
    box = np.asarray(crop_box, dtype=np.float64)
    if box.shape[-1:] != (5,):
        raise ValueError(f"crop_box: expected (..., 5) (cx, cy, side, angle, iod), got {box.shape}")
    side, iod = box[..., 2], box[..., 4]
    if not (np.all(np.isfinite(side)) and np.all(np.isfinite(iod))
            and np.all(side > 0) and np.all(iod > 0)):
        raise ValueError(f"crop_box: side and inter-ocular distance must be positive, got {box}")
    out = iod * size / side
    return float(out) if out.ndim == 0 else out


def face_mask(size: int = 112) -> np.ndarray:
    """The face mask: the ellipse centred in the crop, semi-axes 0.42·S (x) and 0.48·S (y).

    Parameters
    ----------
    size : int
        Crop side S in pixels.

    Returns
    -------
    ndarray of shape (S, S), bool
        True at the pixels (x, y) (integer column and row indices) with
        ((x − S/2) / (0.42·S))² + ((y − S/2) / (0.48·S))² ≤ 1.  The centre S/2 (56 for S = 112,
        half a pixel right of and below the geometric centre (S − 1)/2) is the convention with
        which the issue's stand-in figures are reproduced to the last digit
        (docs/standin-realism.md); the geometric centre changes the medians by less than 1 %.
    """
    c = size / 2.0
    ax, ay = MASK_SEMI_AXES[0] * size, MASK_SEMI_AXES[1] * size
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    return ((xs - c) / ax) ** 2 + ((ys - c) / ay) ** 2 <= 1.0


def grey(image: np.ndarray, sigma: float = GREY_SIGMA_PX) -> np.ndarray:
    """OpenCV RGB → grey, then a Gaussian blur of σ = ``sigma`` px.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3), uint8
        RGB frame (a grey database stored replicated to 3 channels gives its own grey).
    sigma : float
        Blur σ in pixels (kernel size from σ, OpenCV's default border ``BORDER_REFLECT_101``).

    Returns
    -------
    ndarray of shape (H, W), float32
        Grey levels 0..255, blurred (not rounded).

    Raises
    ------
    ValueError
        If the image is not ``(H, W, 3) uint8``.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"grey: expected an RGB (H, W, 3) uint8 frame, got {image.shape} "
                         f"{image.dtype}")
    g = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return cv2.GaussianBlur(g, (0, 0), sigmaX=sigma, sigmaY=sigma)


def _as_grey(frame: np.ndarray) -> np.ndarray:
    return grey(frame) if frame.ndim == 3 else np.asarray(frame, dtype=np.float32)


def _uv(flow: np.ndarray, mask: np.ndarray) -> np.ndarray:
    flow = np.asarray(flow)
    if flow.ndim != 3 or flow.shape[2] < 2 or flow.shape[:2] != mask.shape:
        raise ValueError(f"flow: expected (H, W, 2 or 3) = (u, v[, strain]) matching the mask "
                         f"{mask.shape}, got {flow.shape}")
    return flow[..., :2].astype(np.float64)


def rigid_shift(flow: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The head's rigid shift: the per-component median of (u, v) over the mask.

    Parameters
    ----------
    flow : ndarray of shape (H, W, 2) or (H, W, 3), float
        (u, v[, strain]) onset → apex in crop pixels (``flow.h5`` ``onset_apex``).
    mask : ndarray of shape (H, W), bool

    Returns
    -------
    ndarray of shape (2,), float64
        (median u, median v), crop pixels.

    Raises
    ------
    ValueError
        If the shapes do not match or the mask is empty.
    """
    uv = _uv(flow, mask)
    if not mask.any():
        raise ValueError("rigid_shift: empty mask")
    return np.median(uv[mask], axis=0)


def head_motion(flow: np.ndarray, iod: float, mask: np.ndarray) -> float:
    """Row 1, head: \\|median (u, v) over the mask\\| / IOD, in % of the IOD.

    Parameters
    ----------
    flow : ndarray of shape (H, W, 2|3), float
        Onset → apex flow, crop pixels.
    iod : float
        Inter-ocular distance in crop pixels (:func:`iod_crop_px`).
    mask : ndarray of shape (H, W), bool
        The face mask (:func:`face_mask`).

    Returns
    -------
    float
        Percent of the IOD.
    """
    return float(100.0 * np.hypot(*rigid_shift(flow, mask)) / iod)


def nonrigid_flow(flow: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The non-rigid flow \\|(u, v) − median (u, v) over the mask\\| at every pixel.

    Returns
    -------
    ndarray of shape (H, W), float64
        Crop pixels (also outside the mask; the statistics read it inside).
    """
    uv = _uv(flow, mask) - rigid_shift(flow, mask)
    return np.hypot(uv[..., 0], uv[..., 1])


def expression_percentile(flow: np.ndarray, iod: float, mask: np.ndarray, q: float) -> float:
    """The ``q``-th percentile of the non-rigid flow over the mask / IOD, in % of the IOD.

    ``numpy.percentile`` with its default (linear) interpolation between mask pixels.
    """
    return float(100.0 * np.percentile(nonrigid_flow(flow, mask)[mask], q) / iod)


def expression_p95(flow: np.ndarray, iod: float, mask: np.ndarray) -> float:
    """Row 2, expression: 95th percentile of the non-rigid flow over the mask, % of the IOD.

    Arguments as :func:`head_motion`.
    """
    return expression_percentile(flow, iod, mask, 95.0)


def expression_p99(flow: np.ndarray, iod: float, mask: np.ndarray) -> float:
    """Row 3, expression: 99th percentile of the non-rigid flow over the mask, % of the IOD.

    Arguments as :func:`head_motion`.
    """
    return expression_percentile(flow, iod, mask, 99.0)


def raw_change(onset: np.ndarray, apex: np.ndarray, mask: np.ndarray) -> float:
    """Row 4, raw change: mean \\|apex − onset\\| over the mask, in grey levels.

    Parameters
    ----------
    onset, apex : ndarray of shape (H, W, 3) uint8 (RGB) or (H, W) float
        RGB frames (converted by :func:`grey`: grey, σ = 1 px blur) or grey frames already
        converted.
    mask : ndarray of shape (H, W), bool

    Returns
    -------
    float
        Grey levels (0..255 scale).
    """
    a, b = _as_grey(onset), _as_grey(apex)
    return float(np.mean(np.abs(b - a)[mask]))


def pulled_back(apex: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """The apex pulled back onto the onset by the flow: ``cv2.remap(apex, x + u, y + v)``.

    Parameters
    ----------
    apex : ndarray of shape (H, W), float32
        Grey apex (:func:`grey`).
    flow : ndarray of shape (H, W, 2|3), float
        Onset → apex flow, apex(x + u, y + v) ≈ onset(x, y), crop pixels.

    Returns
    -------
    ndarray of shape (H, W), float32
        apex(x + u, y + v), bilinear, border replicated.
    """
    h, w = apex.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    map_x = xs + flow[..., 0].astype(np.float32)
    map_y = ys + flow[..., 1].astype(np.float32)
    return cv2.remap(np.asarray(apex, dtype=np.float32), map_x, map_y, cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def residual(onset: np.ndarray, apex: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """\\|onset − apex pulled back by the flow\\| at every pixel, grey levels.

    Parameters
    ----------
    onset, apex : ndarray, RGB (H, W, 3) uint8 or grey (H, W) float
    flow : ndarray of shape (H, W, 2|3), float

    Returns
    -------
    ndarray of shape (H, W), float32
    """
    a = _as_grey(onset)
    return np.abs(a - pulled_back(_as_grey(apex), flow))


def _share(onset: np.ndarray, apex: np.ndarray, flow: np.ndarray,
           region: np.ndarray) -> float:
    a, b = _as_grey(onset), _as_grey(apex)
    raw = float(np.mean(np.abs(b - a)[region]))
    res = float(np.mean(residual(a, b, flow)[region]))
    return res / raw if raw > 0 else float("nan")


def unexplained_share(onset: np.ndarray, apex: np.ndarray, flow: np.ndarray,
                      mask: np.ndarray) -> float:
    """Row 5, the change the flow cannot explain: mean residual / mean raw change over the mask.

    Parameters
    ----------
    onset, apex : ndarray, RGB (H, W, 3) uint8 or grey (H, W) float
    flow : ndarray of shape (H, W, 2|3), float
        Onset → apex flow, crop pixels.
    mask : ndarray of shape (H, W), bool

    Returns
    -------
    float
        Dimensionless ratio (0: the flow explains all of the change; about 1: none of it, or
        more than 1 when pulling back makes it worse); NaN when the frames are identical over
        the mask (raw change 0).
    """
    return _share(onset, apex, flow, mask)


def moving_region(flow: np.ndarray, mask: np.ndarray, share: float = MOVING_SHARE) -> np.ndarray:
    """The ``share`` of the mask with the largest non-rigid flow (``round(share · n)`` pixels).

    Returns
    -------
    ndarray of shape (H, W), bool
    """
    return _ranked_region(flow, mask, share, largest=True)


def still_region(flow: np.ndarray, mask: np.ndarray, share: float = STILL_SHARE) -> np.ndarray:
    """The ``share`` of the mask with the smallest non-rigid flow (``round(share · n)`` pixels).

    Returns
    -------
    ndarray of shape (H, W), bool
    """
    return _ranked_region(flow, mask, share, largest=False)


def _ranked_region(flow: np.ndarray, mask: np.ndarray, share: float, largest: bool) -> np.ndarray:
    if not 0 < share <= 1:
        raise ValueError(f"region share must be in (0, 1], got {share}")
    idx = np.flatnonzero(mask)
    values = nonrigid_flow(flow, mask).ravel()[idx]
    k = max(1, int(round(share * idx.size)))
    order = np.argsort(-values if largest else values, kind="stable")
    region = np.zeros(mask.size, dtype=bool)
    region[idx[order[:k]]] = True
    return region.reshape(mask.shape)


def unexplained_share_moving(onset: np.ndarray, apex: np.ndarray, flow: np.ndarray,
                             mask: np.ndarray) -> float:
    """Row 6: the unexplained share inside the 10 % of the mask that moves most.

    Mean residual / mean raw change over :func:`moving_region` (the 10 % of the mask with the
    largest non-rigid flow).  Arguments and result as :func:`unexplained_share`.
    """
    return _share(onset, apex, flow, moving_region(flow, mask))


def residual_moving_still(onset: np.ndarray, apex: np.ndarray, flow: np.ndarray,
                          mask: np.ndarray) -> tuple[float, float]:
    """Mean residual where the face moves most and in the still half, grey levels.

    The residual (:func:`residual`) averaged over :func:`moving_region` (10 % of the mask with the
    largest non-rigid flow) and over :func:`still_region` (50 % with the smallest).  Arguments as
    :func:`unexplained_share`.

    Returns
    -------
    (float, float)
        (moving, still), grey levels.
    """
    res = residual(onset, apex, flow)
    return (float(np.mean(res[moving_region(flow, mask)])),
            float(np.mean(res[still_region(flow, mask)])))


def residual_moving_over_still(onset: np.ndarray, apex: np.ndarray, flow: np.ndarray,
                               mask: np.ndarray) -> float:
    """Supplementary: mean residual where the face moves most / mean residual in the still half.

    Issue #30: about 3.0 on real CASME II ("that unexplained change is not sensor noise"; the
    issue does not say how it aggregates samples).  Dimensionless; NaN when the still half has
    no residual.  Arguments as :func:`unexplained_share`.
    """
    moving, still = residual_moving_still(onset, apex, flow, mask)
    return moving / still if still > 0 else float("nan")


def sample_statistics(onset: np.ndarray, apex: np.ndarray, flow: np.ndarray,
                      crop_box: np.ndarray) -> dict[str, float]:
    """All statistics of one sample.

    Parameters
    ----------
    onset, apex : ndarray of shape (S, S, 3), uint8
        ``faces.h5`` ``crop{S}/onset``, ``crop{S}/apex`` (RGB).
    flow : ndarray of shape (S, S, 3), float32
        ``flow.h5`` ``onset_apex`` (u, v, strain), crop pixels.
    crop_box : ndarray of shape (5,), float
        ``faces.h5`` ``crop_box``.

    Returns
    -------
    dict
        The keys of :data:`STATISTICS` (units there) plus ``moving_over_still``
        (:func:`residual_moving_over_still`), ``residual_moving`` and ``residual_still``
        (:func:`residual_moving_still`, grey levels) and ``iod_px`` (crop pixels).

    Raises
    ------
    ValueError
        If the frames and the flow are not of one square size, or the crop box is invalid.
    """
    size = onset.shape[0]
    if onset.shape != (size, size, 3) or apex.shape != onset.shape or flow.shape[:2] != (size, size):
        raise ValueError(f"sample_statistics: onset {onset.shape}, apex {apex.shape} and flow "
                         f"{flow.shape} must be (S, S, 3) crops of one size")
    iod = iod_crop_px(crop_box, size)
    mask = face_mask(size)
    a, b = grey(onset), grey(apex)
    moving, still = residual_moving_still(a, b, flow, mask)
    return {
        "head": head_motion(flow, iod, mask),
        "expression_p95": expression_p95(flow, iod, mask),
        "expression_p99": expression_p99(flow, iod, mask),
        "raw_change": raw_change(a, b, mask),
        "unexplained": unexplained_share(a, b, flow, mask),
        "unexplained_moving": unexplained_share_moving(a, b, flow, mask),
        "moving_over_still": moving / still if still > 0 else float("nan"),
        "residual_moving": moving,
        "residual_still": still,
        "iod_px": float(iod),
    }


def summarise(values: ArrayLike) -> tuple[float, float, float, int]:
    """Median, 10th and 90th percentile of per-sample values, NaNs left out, and their count.

    Parameters
    ----------
    values : array-like of shape (N,), float

    Returns
    -------
    (median, p10, p90, n)
        NaN for all three when no finite value remains; n = the finite values used.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan"), 0
    p10, med, p90 = np.percentile(v, [10, 50, 90])
    return float(med), float(p10), float(p90), int(v.size)


def measure_caches(faces_path: str | os.PathLike, flow_path: str | os.PathLike,
                   index_path: str | os.PathLike) -> pd.DataFrame:
    """All statistics of every sample of a run's caches.

    Parameters
    ----------
    faces_path : path
        ``faces.h5`` (schema ``faces``): ``crop{S}/onset``, ``crop{S}/apex``, ``crop_box``,
        ``frame_numbers/onset``, ``frame_numbers/apex``.
    flow_path : path
        ``flow.h5`` (schema ``flow``): ``onset_apex`` ``(N, S, S, 3) float32``; S fixes the crop
        group read from faces.h5.
    index_path : path
        ``samples.csv`` of the ``index`` stage (or its folder): the ``database`` of each sample.

    Returns
    -------
    pandas.DataFrame
        One row per sample of flow.h5, in its order: ``sample_id``, ``database``, ``size`` (S),
        ``apex_is_onset`` (bool: the apex frame used is the onset frame, e.g. a missing apex
        annotation; every statistic is then 0 or NaN), and the columns of
        :func:`sample_statistics`.

    Raises
    ------
    pipeline.features.cache.CacheError
        If a cache is missing, of another schema or version, lacks a dataset named above, or
        flow.h5 holds a sample that faces.h5 does not.
    FileNotFoundError
        If the index is missing.
    KeyError
        Naming the first sample of flow.h5 that the index does not list.
    """
    from pipeline.databases.index import load_samples
    from pipeline.features.cache import CacheError, FeatureCache

    faces = FeatureCache(faces_path, "faces")
    flow = FeatureCache(flow_path, "flow")
    index = load_samples(index_path)
    if "onset_apex" not in flow.datasets:
        raise CacheError(f"{flow.path}: no dataset 'onset_apex' (add it to flow.pairs)")
    size = int(flow.datasets["onset_apex"][0][1])
    needed = [f"crop{size}/onset", f"crop{size}/apex", "crop_box", "frame_numbers/onset",
              "frame_numbers/apex"]
    lacking = [n for n in needed if n not in faces.datasets]
    if lacking:
        raise CacheError(f"{faces.path}: no dataset {lacking[0]!r} (the flow is {size}-px)")
    database = dict(zip(index["sample_id"], index["database"], strict=True))
    rows = []
    for j, sid in enumerate(flow.sample_ids):
        if sid not in faces:
            raise CacheError(f"{faces.path}: no sample {sid!r} of {flow.path}; the caches are "
                             "of different runs")
        if sid not in database:
            raise KeyError(f"{index_path}: no sample {sid!r} of {flow.path}; the index is of "
                           "another run")
        i = faces.index_of(sid)
        stats = sample_statistics(faces.read(f"crop{size}/onset", i),
                                  faces.read(f"crop{size}/apex", i),
                                  flow.read("onset_apex", j), faces.read("crop_box", i))
        same = int(faces.read("frame_numbers/onset", i)) == int(faces.read("frame_numbers/apex", i))
        rows.append({"sample_id": sid, "database": database[sid], "size": size,
                     "apex_is_onset": same, **stats})
    faces.close()
    flow.close()
    columns = ["sample_id", "database", "size", "apex_is_onset",
               *(k for k, _, _ in STATISTICS), "moving_over_still", "residual_moving",
               "residual_still", "iod_px"]
    return pd.DataFrame(rows, columns=columns)

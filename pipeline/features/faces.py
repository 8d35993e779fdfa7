"""The ``faces`` stage: face detection on the onset frame, alignment, one crop for the whole sample.

For each sample of the index table (docs/internals.md):

1. Detect the face and its landmarks on the onset frame with the configured detector
   (``faces.detector``: MediaPipe Face Landmarker, 478 points, or dlib HOG + the 68-point iBUG
   predictor; :mod:`pipeline.facedetect`).  When it finds no face, the other detector is tried on
   the same frame, then both on the next frames after the onset, nearest first; the frame and the
   detector that gave the box are recorded (``detection/*``) and counted as fixes.
2. Align from the eye centres: rotate so the eyes are level, scale by the inter-ocular distance
   (:func:`pipeline.features.align.box_from_eyes`).
3. Apply that one crop box to every frame the methods need (as the CD6ME tooling does: Varanka
   et al., IEEE TAFFC 2024): onset, annotated apex, the pseudo-apex window (apex + 0 … W−1,
   clipped at the offset; InfuseNet, Khor et al., SCIA 2025), offset, at each size of
   ``faces.sizes``; and the onset → offset span sampled uniformly to ``l`` frames (the last frame
   repeated when the sample is shorter; AC4AU, ACM MM 2025) at ``faces.sequence_size``.

Layout of ``faces.h5``: docs/internals.md.  Frames are RGB ``uint8``; grey databases come out with
three equal channels (OpenCV's colour decoding replicates them).
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np
import pandas as pd

from pipeline import assets, facedetect
from pipeline.databases import index as index_table
from pipeline.features.align import CropBox, box_from_eyes, to_crop_units, warp_crops
from pipeline.features.stage import Done, Item, SampleFailure, StageSummary, run_stage
from pipeline.params import env_or

log = logging.getLogger("faces")

DETECTORS = ("mediapipe", "dlib")
#: Landmark count of each detector.
N_POINTS = {"mediapipe": facedetect.FaceLandmarker.n_points,
            "dlib": facedetect.DlibLandmarker.n_points}
#: Columns of samples.csv the stage reads.
INDEX_COLUMNS = ("sample_id", "frame_dir", "frames", "onset", "apex", "offset")


@dataclass(frozen=True)
class FacesConfig:
    """The ``faces`` section of params.yaml, checked.

    Attributes
    ----------
    detector : str
        ``mediapipe`` or ``dlib``; the other one is the fallback.
    landmarker_model : str or None
        Path of ``face_landmarker.task`` (None: ``$MER_LANDMARKER_MODEL``, else the download).
    sizes : tuple of int
        Crop sides (pixels) of ``crop{S}``.
    pseudo_apex_window : int
        W, frames from the annotated apex (apex + 0 … W−1).
    sequence_length : int
        l, frames sampled uniformly onset → offset.
    sequence_size : int
        Crop side (pixels) of the sequence frames.
    crop_side : float
        Side of the crop in inter-ocular distances.
    centre_below : float
        Crop centre below the eye midpoint, in inter-ocular distances.
    detect_max_side : int
        Frames larger than this (pixels, longer side) are downscaled for detection only.
    max_failed_share : float
    """

    detector: str = "mediapipe"
    landmarker_model: str | None = None
    sizes: tuple[int, ...] = (112,)
    pseudo_apex_window: int = 6
    sequence_length: int = 8
    sequence_size: int = 112
    crop_side: float = 2.8
    centre_below: float = 0.5
    detect_max_side: int = 640
    max_failed_share: float = 0.2

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> FacesConfig:
        """Build from the resolved ``faces`` section.

        Raises
        ------
        ValueError
            Naming the key for an unknown detector, a non-positive size, window or length.
        """
        known = {f for f in cls.__dataclass_fields__}
        kw = {k: v for k, v in params.items() if k in known}
        if "sizes" in kw:
            kw["sizes"] = tuple(sorted({int(s) for s in kw["sizes"]}, reverse=True))
        cfg = cls(**kw)
        if cfg.detector not in DETECTORS:
            raise ValueError(f"faces.detector must be one of {DETECTORS}, got {cfg.detector!r}")
        if not cfg.sizes or min(cfg.sizes) < 8:
            raise ValueError(f"faces.sizes must list crop sides of at least 8 px, got {cfg.sizes}")
        for key in ("pseudo_apex_window", "sequence_length", "sequence_size", "detect_max_side"):
            if int(getattr(cfg, key)) < 1:
                raise ValueError(f"faces.{key} must be a positive integer, got {getattr(cfg, key)}")
        if cfg.crop_side <= 0:
            raise ValueError(f"faces.crop_side must be positive, got {cfg.crop_side}")
        return cfg

    @property
    def fallback(self) -> str:
        """The detector tried when the configured one finds no face."""
        return "dlib" if self.detector == "mediapipe" else "mediapipe"


@dataclass(frozen=True)
class SampleFrames:
    """The frames of one sample, onset..offset, as the index lists them."""

    sample_id: str
    paths: tuple[str, ...]
    numbers: tuple[int, ...]
    apex: int


@dataclass(frozen=True)
class FramePlan:
    """Positions (0-based, in the sample's frame list) of the frames the methods need."""

    onset: int
    apex: int
    offset: int
    pseudo_apex: tuple[int, ...]
    sequence: tuple[int, ...]

    def needed(self) -> list[int]:
        return sorted({self.onset, self.apex, self.offset, *self.pseudo_apex, *self.sequence})


def sample_frames(row: Mapping[str, Any]) -> SampleFrames:
    """The frame files and numbers of one ``samples.csv`` row.

    Parameters
    ----------
    row : mapping or pandas Series
        A row of :func:`pipeline.databases.index.load_samples`.

    Returns
    -------
    SampleFrames
        Paths as :func:`pipeline.databases.index.frame_paths` gives them (a relative
        ``frame_dir`` is relative to the working folder, the project root) and their numbers.

    Raises
    ------
    SampleFailure
        If the row lists no frames, a frame name has no number, or the apex is not a number.
    """
    sid = str(row["sample_id"])
    if not str(row.get("frames") or "").strip():
        raise SampleFailure("no frames listed for the sample (index column 'frames' is empty)")
    try:
        paths = tuple(str(p) for p in index_table.frame_paths(row))
        numbers = tuple(int(n) for n in index_table.frame_numbers(row))
    except ValueError as exc:
        raise SampleFailure(str(exc)) from exc
    try:
        apex = int(row["apex"])
    except (TypeError, ValueError):
        raise SampleFailure(f"apex {row.get('apex')!r} is not a frame number") from None
    return SampleFrames(sid, paths, numbers, apex)


def uniform_positions(n: int, length: int) -> tuple[int, ...]:
    """``length`` positions sampled uniformly over ``n`` frames (AC4AU's onset → offset sequence).

    ``round(linspace(0, n−1, length))`` (halves rounded up) when ``n ≥ length``; otherwise all ``n``
    frames followed by the last one repeated.

    Returns
    -------
    tuple of int
        Non-decreasing positions in ``[0, n−1]``, first 0 and last ``n−1``.
    """
    if n >= length:
        if length == 1:
            return (0,)
        return tuple(int(math.floor(k * (n - 1) / (length - 1) + 0.5)) for k in range(length))
    return tuple(range(n)) + (n - 1,) * (length - n)


def plan_frames(numbers: tuple[int, ...], apex: int, window: int, length: int) -> FramePlan:
    """Which frames to crop.

    Parameters
    ----------
    numbers : tuple of int
        Frame numbers of the sample, onset..offset, ascending.
    apex : int
        Annotated apex frame number; the frame with the nearest number is used (the lower one on a
        tie), so a gap in the numbering does not lose the sample.
    window : int
        W: pseudo-apex positions ``apex + 0 … W−1``, clipped at the offset (last frame).
    length : int
        l: uniformly sampled positions onset → offset.

    Returns
    -------
    FramePlan
    """
    n = len(numbers)
    apex_pos = int(np.argmin(np.abs(np.asarray(numbers, dtype=np.int64) - apex)))
    pseudo = tuple(min(apex_pos + k, n - 1) for k in range(window))
    return FramePlan(0, apex_pos, n - 1, pseudo, uniform_positions(n, length))


#: Bytes at the end of a file searched for the JPEG end-of-image marker (FF D9); some cameras
#: append padding or metadata after it.
_JPEG_TAIL = 1024
_PNG_IEND = b"IEND\xaeB`\x82"


def check_complete(path: str) -> None:
    """Reject a truncated JPEG or PNG file before decoding it.

    OpenCV decodes a JPEG cut short without an error: libjpeg prints "Premature end of JPEG
    file" on stderr and fills the missing rows with grey 128, which would pass as a face crop.
    A complete JPEG holds the end-of-image marker ``FF D9`` in its last :data:`_JPEG_TAIL` bytes
    (inside the entropy-coded data an ``FF`` byte is always followed by ``00`` or a restart
    marker, so the marker cannot appear there by chance); a complete PNG ends with its ``IEND``
    chunk.  Other formats (BMP, TIFF) are left to the decoder.  Corruption inside the data with
    an intact end marker is not detected here (the decoder may still reject it).

    Raises
    ------
    SampleFailure
        ``<path>: truncated JPEG (no end-of-image marker)`` or the PNG equivalent.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - _JPEG_TAIL))
            tail = fh.read()
    except OSError as exc:
        raise SampleFailure(f"{path}: unreadable frame ({exc.strerror or exc})") from None
    if head[:2] == b"\xff\xd8" and b"\xff\xd9" not in tail:
        raise SampleFailure(f"{path}: truncated or corrupt JPEG (no end-of-image marker)")
    if head == b"\x89PNG\r\n\x1a\n" and _PNG_IEND not in tail[-64:]:
        raise SampleFailure(f"{path}: truncated or corrupt PNG (no IEND chunk)")


def read_frame(path: str) -> np.ndarray:
    """An RGB ``(H, W, 3) uint8`` frame (grey files replicated to 3 channels).

    Raises
    ------
    SampleFailure
        Naming the file when it is missing, truncated (:func:`check_complete`) or not a
        decodable image.
    """
    if not os.path.isfile(path):
        raise SampleFailure(f"{path}: frame file not found")
    check_complete(path)
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise SampleFailure(f"{path}: unreadable frame (expected a jpg/png/bmp image)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


# One detector of each kind per worker thread (MediaPipe graphs are not shared across threads),
# closed at exit (before interpreter teardown, where MediaPipe's own finaliser fails noisily).
_local = threading.local()
_opened: list[Any] = []


def _close_detectors() -> None:
    while _opened:
        try:
            _opened.pop().close()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


atexit.register(_close_detectors)


def _detector(kind: str, model_path: str | None):
    cache = _local.__dict__.setdefault("detectors", {})
    key = (kind, model_path)
    if key not in cache:
        cache[key] = facedetect.make_landmarker(kind, model_path)
        _opened.append(cache[key])
    return cache[key]


def detect_landmarks(image: np.ndarray, kind: str, model_path: str | None,
                     max_side: int) -> np.ndarray | None:
    """Landmarks of the face in ``image`` in its pixels, or ``None``.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3), uint8
    kind : {"mediapipe", "dlib"}
    model_path : str or None
        The verified MediaPipe bundle.
    max_side : int
        When ``max(H, W)`` exceeds it the image is area-downscaled for detection and the points
        mapped back (pixel centres kept).

    Returns
    -------
    ndarray of shape (478, 2) or (68, 2), float32, or None
    """
    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    small = image
    if scale < 1.0:
        small = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))),
                           interpolation=cv2.INTER_AREA)
    pts = _detector(kind, model_path)(small)
    if pts is None:
        return None
    if scale < 1.0:
        sx, sy = small.shape[1] / w, small.shape[0] / h
        pts = np.stack([(pts[:, 0] + 0.5) / sx - 0.5, (pts[:, 1] + 0.5) / sy - 0.5], axis=1)
    return pts.astype(np.float32)


def process_sample(item: Item, cfg: FacesConfig, model_path: str | None) -> Done:
    """Crops, frame numbers, landmarks and crop box of one sample.

    Parameters
    ----------
    item : Item
        ``item.data`` is a :class:`SampleFrames`.
    cfg : FacesConfig
    model_path : str or None
        Verified path of the MediaPipe bundle.

    Returns
    -------
    Done
        Arrays named as in faces.h5 (without the sample axis); fixes ``fallback_detector`` and/or
        ``later_frame`` when the box did not come from the configured detector on the onset.

    Raises
    ------
    SampleFailure
        No frames; an unreadable or missing frame; frames of different sizes; no face in any frame
        with either detector.
    """
    sf: SampleFrames = item.data
    n = len(sf.paths)
    if n == 0:
        raise SampleFailure("the sample has no frames")
    frames: dict[int, np.ndarray] = {}   # full frames read and still needed
    first: list[tuple[str, tuple[int, ...]]] = []

    def load(pos: int) -> np.ndarray:
        if pos not in frames:
            img = read_frame(sf.paths[pos])
            if not first:
                first.append((sf.paths[pos], img.shape))
            elif img.shape != first[0][1]:
                path0, shape0 = first[0]
                raise SampleFailure(f"{sf.paths[pos]}: frame is {img.shape[1]}x{img.shape[0]}, "
                                    f"{path0} is {shape0[1]}x{shape0[0]} (expected one size per "
                                    f"sample)")
            frames[pos] = img
        return frames[pos]

    plan = plan_frames(sf.numbers, sf.apex, cfg.pseudo_apex_window, cfg.sequence_length)
    needed = set(plan.needed())
    found = None
    for pos in range(n):  # the onset first, then the next frames, nearest first
        image = load(pos)
        for kind in (cfg.detector, cfg.fallback):
            pts = detect_landmarks(image, kind, model_path, cfg.detect_max_side)
            if pts is not None:
                found = (pts, kind, pos)
                break
        if found is not None:
            break
        if pos not in needed:  # keep in memory only the frames the plan needs
            frames.pop(pos, None)
    if found is None:
        raise SampleFailure(f"no face found in any of the {n} frames ({sf.paths[0]} … "
                            f"{sf.paths[-1]}) by {cfg.detector} or {cfg.fallback}")
    pts, kind, det_pos = found
    right, left = facedetect.eye_centres(pts)
    try:
        box = box_from_eyes(right, left, cfg.crop_side, cfg.centre_below)
    except ValueError as exc:
        raise SampleFailure(f"{sf.paths[det_pos]}: {exc}") from exc

    arrays: dict[str, np.ndarray] = {}
    crops = {}
    for pos in plan.needed():  # one full frame in memory at a time
        crops[pos] = warp_crops(load(pos), box, (*cfg.sizes, cfg.sequence_size))
        frames.pop(pos, None)
    for size in cfg.sizes:
        g = f"crop{size}"
        arrays[f"{g}/onset"] = crops[plan.onset][size]
        arrays[f"{g}/apex"] = crops[plan.apex][size]
        arrays[f"{g}/offset"] = crops[plan.offset][size]
        arrays[f"{g}/pseudo_apex"] = np.stack([crops[p][size] for p in plan.pseudo_apex])
    arrays[f"seq{cfg.sequence_size}/frames"] = np.stack(
        [crops[p][cfg.sequence_size] for p in plan.sequence])
    num = np.asarray(sf.numbers, dtype=np.int32)
    arrays["frame_numbers/onset"] = num[plan.onset]
    arrays["frame_numbers/apex"] = num[plan.apex]
    arrays["frame_numbers/offset"] = num[plan.offset]
    arrays["frame_numbers/pseudo_apex"] = num[list(plan.pseudo_apex)]
    arrays["frame_numbers/sequence"] = num[list(plan.sequence)]
    if kind == cfg.detector:
        arrays["landmarks"] = to_crop_units(pts, box)
    else:
        arrays["landmarks"] = np.full((N_POINTS[cfg.detector], 2), np.nan, dtype=np.float32)
    arrays["crop_box"] = box.as_array()
    arrays["detection/detector"] = np.uint8(DETECTORS.index(kind))
    arrays["detection/frame"] = num[det_pos]
    fixes = []
    if kind != cfg.detector:
        fixes.append("fallback_detector")
    if det_pos != 0:
        fixes.append("later_frame")
    return Done(sf.sample_id, arrays, tuple(fixes))


def _items(index_df: pd.DataFrame) -> Iterator[Item]:
    for row in index_df.to_dict(orient="records"):
        sid = str(row["sample_id"])
        try:
            yield Item(sid, sample_frames(row))
        except SampleFailure as exc:
            yield Item(sid, exc)


def _process_or_fail(item: Item, cfg: FacesConfig, model_path: str | None) -> Done:
    if isinstance(item.data, SampleFailure):
        raise item.data
    return process_sample(item, cfg, model_path)


def check_index(index_df: pd.DataFrame, source: str | os.PathLike = "samples.csv") -> None:
    """Check the columns the stage reads and the uniqueness of sample ids.

    Raises
    ------
    ValueError
        Naming ``source`` and the missing columns or the repeated ids.
    """
    missing = [c for c in INDEX_COLUMNS if c not in index_df.columns]
    if missing:
        raise ValueError(f"{source}: missing columns {missing}; expected the index contract "
                         f"(docs/internals.md) with at least {list(INDEX_COLUMNS)}")
    dup = index_df["sample_id"][index_df["sample_id"].duplicated()].tolist()
    if dup:
        raise ValueError(f"{source}: repeated sample ids, e.g. {dup[:3]}")


def run_faces(index_df: pd.DataFrame, params: Mapping[str, Any], out_path: str | os.PathLike,
              failures_path: str | os.PathLike, parallel: Mapping[str, Any],
              source: str | os.PathLike = "samples.csv") -> StageSummary:
    """Run the ``faces`` stage over the samples of ``index_df``.

    Parameters
    ----------
    index_df : pandas.DataFrame
        The index table (``samples.csv``); processed and written in its row order.
    params : mapping
        The resolved ``faces`` section.
    out_path : path
        ``faces.h5`` (written atomically).
    failures_path : path
        ``faces_failures.csv``.
    parallel : mapping
        The ``parallel`` section.
    source : path
        Name of the index file, for messages.

    Returns
    -------
    StageSummary

    Raises
    ------
    ValueError
        Bad parameters or index columns.
    pipeline.assets.AssetError
        The MediaPipe bundle can be had neither from the configured path nor from its URL.
    pipeline.features.stage.StageFailed
        More than ``faces.max_failed_share`` of the samples failed.
    """
    import functools

    cfg = FacesConfig.from_params(params)
    check_index(index_df, source)
    # Resolve the bundle once, here, so that a missing model is one clear error (both detectors
    # are in use: the configured one and the fallback).
    local = env_or(cfg.landmarker_model, "MER_LANDMARKER_MODEL")
    model_path = str(assets.resolve(assets.FACE_LANDMARKER, local))
    cache_params = {**asdict(cfg), "sizes": list(cfg.sizes),
                    "landmarker_sha256": assets.FACE_LANDMARKER.sha256}
    fn = functools.partial(_process_or_fail, cfg=cfg, model_path=model_path)
    return run_stage("faces", fn, _items(index_df), len(index_df), out_path=out_path,
                     failures_path=failures_path, cache_params=cache_params,
                     max_failed_share=cfg.max_failed_share, parallel=parallel, log=log)


def load_index(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``samples.csv`` (:func:`pipeline.databases.index.load_samples`).

    Raises
    ------
    FileNotFoundError
        Naming the file when it is missing.
    ValueError
        When it is not a sample table of the index stage (missing columns, repeated ids).
    """
    return index_table.load_samples(path)


def crop_box(arr: np.ndarray) -> CropBox:
    """A stored ``crop_box`` row ``(5,)`` back as a :class:`CropBox`."""
    cx, cy, side, angle, iod = (float(v) for v in arr)
    return CropBox(cx, cy, side, angle, iod)


def crop_sizes(dataset_names: Iterable[str]) -> list[int]:
    """Crop sides present in a faces cache, from its dataset names (``crop{S}/…``), ascending."""
    sizes = set()
    for name in dataset_names:
        m = re.match(r"crop(\d+)/", name)
        if m:
            sizes.add(int(m.group(1)))
    return sorted(sizes)

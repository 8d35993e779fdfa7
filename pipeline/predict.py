"""``mer-predict``: run trained methods on your own clip (a video file or a folder of frames).

    mer-predict CLIP --method sssnet [--onset N --apex N --offset N | --interval O:A:F …]
                     [--window W] [--models models] [--out DIR] [--no-register]
    mer-predict CLIP --method all            # every models/<method>/final.pt, one table
    mer-predict CLIP --method infusenet,mimicking,gam_mm_mer
    python -m pipeline.predict …

For each analysed interval (onset, apex, offset frame numbers):

1. Face landmarks on every frame of the interval with the detector the method's features were
   computed with (``faces.detector`` of the feature cache, stored in ``final.pt``); the first frame
   with a face is the reference (the onset); the crop box comes from its landmarks, as in the
   ``faces`` stage.
2. Rigid-motion compensation (unless ``--no-register``): each frame is registered to the onset by
   a rigid fit of the stable landmarks refined on the images (ECC;
   :mod:`pipeline.features.headmotion`).  The head motion (translation, rotation, scale of a
   similarity fit, RMS displacement of the stable points) and the residual after registration are
   reported per frame.
3. Spotting, when the apex and/or the offset are not given.  The *expression difference* of a
   frame is the mean absolute grey-level difference between its registered face crop and the
   onset's (at the crop box's own resolution, both Gaussian-filtered with σ = 2 px): what changed
   on the face once the head motion is removed; it is smoothed over time by a centred 3-frame
   moving average.  **Apex** = the frame of largest smoothed difference after the onset (ties:
   the first); **offset** = the first later frame whose smoothed difference falls to half the
   apex's, else the last frame of the interval.  On the rendered test clip (a 2.5 px AU12 under a
   5 px head drift, MJPG) the apex comes out within one frame of the true one; sub-pixel
   registration errors and compression noise are of the same order as a micro-expression's grey
   level change, so give the apex by hand when you know it.  (The mean displacement of the expressive landmarks is reported
   too but not used: MediaPipe's mesh moves as a whole by up to ~1 px with an expression and with
   the head, the size of a micro-expression.)  Without any onset, the clip is cut into
   consecutive windows of ``--window`` frames (default: the whole clip as one window; a last
   window shorter than 2 frames joins the previous one) and each window is one interval whose
   onset is its first frame with a face.
4. The inputs exactly as the feature stages and the trainer make them, with the parameters
   stored in the model file (:class:`ClipFeatures`): the crops and sequences
   (:func:`pipeline.features.faces.plan_frames`, :func:`pipeline.features.align.warp_crops`), the
   TV-L1 flows (:func:`pipeline.features.flow.compute_pairs`), the magnified latents and decoded
   magnified apex frames (:func:`pipeline.magnification.magnify.magnify_batch`, with the magnifiers
   of ``models/magnifier`` whose SHA-256 must be the ones the model's ``magnified.h5`` recorded),
   the dlib landmarks on the apex crop and the magnified apex
   (:func:`pipeline.features.patches.sample_patches`), the On-A / Off-A flows to the magnified apex
   (:func:`pipeline.features.flow_mag.magnified_pairs`) and the model input
   (:func:`pipeline.training.data.prepare_input`); then the model's AU probabilities (sigmoid) or
   class probabilities (softmax).  The pseudo-apex offset k is drawn as the ``magnify`` stage
   draws it per sample, from ``magnify.pseudo_apex.seed`` and an id: ``--sample-id`` (a
   ``samples.csv`` id reproduces that sample's draw), else ``clip/<clip name>/<onset frame>``.

Outputs in ``--out`` (default ``predictions/<clip name>/<method>/``; with several methods
``predictions/<clip name>/`` holding ``predictions.csv``, one row per method and interval, and a
folder per method): ``predictions.csv`` (one row per interval: frames used, head motion,
``p_<AU or class>``), ``predictions.json`` (the same plus the model's identity, the pseudo-apex
draw and per-frame head motion), ``head_motion.png`` and ``overlay_<k>.png`` per interval (onset
crop, registered apex crop, for methods reading magnified.h5 the magnified apex beside it, flow,
top AUs / classes).  A method whose inputs cannot be reproduced from the clip (a cache the file
has no parameters for, magnifier weights of another hash) gets one error line and an ``error``
cell in the table; the others still run.

Models: ``models/<method>/final.pt`` (:mod:`pipeline.training.final`), written by
``train@<method>`` for every learned method and constant predictor.  User guide: docs/predict.md.
A model trained on the stand-in benchmark has only seen simulated micro-expressions on photos:
its output on a real face says nothing about the expression.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

log = logging.getLogger("predict")

__all__ = ["Clip", "ClipFeatures", "Interval", "PredictError", "check_reproducible", "main",
           "open_clip", "predict_clip", "resolve_methods", "spot_interval"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: Fewest frames an interval may have (onset and at least one later frame).
MIN_FRAMES = 2
#: Gaussian filter (pixels of the crop box) of the crops compared for spotting.
DIFF_SIGMA = 2.0


class PredictError(RuntimeError):
    """The clip, the intervals or the model cannot be used (the message says why)."""


# ---------------------------------------------------------------------------------------------
# Clips


@dataclass
class Clip:
    """A video file or a folder of frames.

    Attributes
    ----------
    source : str
    numbers : list of int
        Frame numbers in order: 0-based frame index of a video; the last run of digits of each
        file name in a folder (as the index stage numbers frames).
    fps : float or None
        Frame rate of a video (None for a folder).
    paths : list of str
        Frame files (folder only).
    """

    source: str
    numbers: list[int]
    fps: float | None = None
    paths: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.numbers)

    def position(self, number: int) -> int:
        """Position of a frame number; PredictError when the clip has no such frame."""
        try:
            return self.numbers.index(int(number))
        except ValueError:
            raise PredictError(f"{self.source}: no frame number {number} (frames "
                               f"{self.numbers[0]}…{self.numbers[-1]})") from None

    def read(self, positions: Sequence[int], desc: str = "read") -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(position, RGB uint8 (H, W, 3))`` for the given positions, ascending.

        A video is read sequentially from the first wanted frame: the capture seeks there when
        the backend reports landing exactly on it, else it decodes from frame 0.

        Raises
        ------
        PredictError
            A frame that cannot be decoded.
        """
        wanted = sorted(set(int(p) for p in positions))
        bar = tqdm(total=len(wanted), desc=desc, unit="frame", disable=len(wanted) < 50,
                   leave=False)
        try:
            if self.paths:
                for pos in wanted:
                    bgr = cv2.imread(self.paths[pos], cv2.IMREAD_COLOR)
                    if bgr is None:
                        raise PredictError(f"{self.paths[pos]}: cannot read this image")
                    bar.update()
                    yield pos, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                return
            cap = cv2.VideoCapture(self.source)
            try:
                want = set(wanted)
                start = 0
                if wanted and wanted[0] > 0:   # seek when the backend lands exactly, else grab on
                    cap.set(cv2.CAP_PROP_POS_FRAMES, wanted[0])
                    if int(cap.get(cv2.CAP_PROP_POS_FRAMES)) == wanted[0]:
                        start = wanted[0]
                    else:
                        cap.release()
                        cap = cv2.VideoCapture(self.source)
                for pos in range(start, wanted[-1] + 1 if wanted else 0):
                    if pos in want:
                        ok, bgr = cap.read()
                        if not ok or bgr is None:
                            raise PredictError(f"{self.source}: frame {pos} cannot be decoded")
                        bar.update()
                        yield pos, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                    elif not cap.grab():
                        raise PredictError(f"{self.source}: frame {pos} cannot be decoded")
            finally:
                cap.release()
        finally:
            bar.close()


def open_clip(path: str | os.PathLike) -> Clip:
    """Open a video file (any container/codec OpenCV reads) or a folder of frame images.

    Raises
    ------
    PredictError
        A missing path, a file OpenCV cannot decode, a folder without numbered images, repeated
        frame numbers, or fewer than :data:`MIN_FRAMES` frames.
    """
    from pipeline.databases.base import frame_number

    p = Path(path)
    if not p.exists():
        raise PredictError(f"{p}: no such file or folder")
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise PredictError(f"{p}: no frame images ({', '.join(IMAGE_SUFFIXES)}) in the folder")
        try:
            numbered = sorted((frame_number(f.name), str(f)) for f in files)
        except ValueError as exc:
            raise PredictError(f"{p}: {exc} (frame files are numbered by the last run of digits "
                               f"in their names)") from exc
        nums = [n for n, _ in numbered]
        dup = sorted({n for n in nums if nums.count(n) > 1})
        if dup:
            raise PredictError(f"{p}: frame numbers repeated, e.g. {dup[0]}")
        clip = Clip(str(p), nums, None, [f for _, f in numbered])
    else:
        cap = cv2.VideoCapture(str(p))
        try:
            if not cap.isOpened():
                raise PredictError(f"{p}: OpenCV cannot open this file as a video")
            fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0) or None
            n = 0
            total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            with tqdm(total=total or None, desc="count frames", unit="frame", leave=False,
                      disable=total < 500) as bar:
                while cap.grab():
                    n += 1
                    bar.update()
        finally:
            cap.release()
        if n == 0:
            raise PredictError(f"{p}: no frame could be decoded (not a video OpenCV reads?)")
        clip = Clip(str(p), list(range(n)), fps)
    if len(clip) < MIN_FRAMES:
        raise PredictError(f"{p}: the clip is too short ({len(clip)} frame); at least "
                           f"{MIN_FRAMES} frames are needed (an onset and a later frame)")
    return clip


# ---------------------------------------------------------------------------------------------
# Intervals, landmarks, spotting


@dataclass
class Interval:
    """One analysed interval: positions in the clip; ``apex``/``offset`` None until spotted."""

    onset: int
    end: int                       # last position that may be the offset
    apex: int | None = None
    offset: int | None = None
    apex_spotted: bool = False
    offset_spotted: bool = False


def parse_intervals(args: argparse.Namespace, clip: Clip) -> list[Interval]:
    """Intervals from ``--onset/--apex/--offset``, ``--interval`` or ``--window``.

    Raises
    ------
    PredictError
        Frame numbers absent from the clip, out of order, or a too-short interval.
    """
    triples: list[tuple[int | None, int | None, int | None]] = []
    for text in args.interval or []:
        parts = text.split(":")
        if len(parts) != 3:
            raise PredictError(f"--interval {text!r}: expected ONSET:APEX:OFFSET ('-' to spot)")
        try:
            triples.append(tuple(None if x in ("-", "") else int(x) for x in parts))  # type: ignore[arg-type]
        except ValueError:
            raise PredictError(f"--interval {text!r}: frame numbers must be integers") from None
    if args.onset is not None:
        triples.append((args.onset, args.apex, args.offset))
    elif args.apex is not None or args.offset is not None:
        raise PredictError("--apex/--offset need --onset")
    out: list[Interval] = []
    last = len(clip) - 1
    for onset, apex, offset in triples:
        o = clip.position(onset)
        end = clip.position(offset) if offset is not None else (
            min(last, o + args.window - 1) if args.window else last)
        iv = Interval(o, end)
        if apex is not None:
            iv.apex = clip.position(apex)
        if offset is not None:
            iv.offset = end
        if iv.end - iv.onset + 1 < MIN_FRAMES:
            raise PredictError(f"interval from frame {onset}: too short ({iv.end - iv.onset + 1} "
                               f"frame); at least {MIN_FRAMES} frames are needed")
        if iv.apex is not None and not iv.onset <= iv.apex <= iv.end:
            raise PredictError(f"interval {onset}:{apex}:{offset}: the apex must lie between the "
                               f"onset and the offset")
        out.append(iv)
    if out:
        return out
    step = int(args.window) if args.window else len(clip)
    if step < MIN_FRAMES:
        raise PredictError(f"--window {step}: at least {MIN_FRAMES} frames are needed")
    starts = list(range(0, len(clip), step))
    if len(starts) > 1 and len(clip) - starts[-1] < MIN_FRAMES:
        starts.pop()                       # the short tail joins the previous window
    for i, s in enumerate(starts):
        out.append(Interval(s, (starts[i + 1] - 1) if i + 1 < len(starts) else last))
    return out


@dataclass
class Analysis:
    """One interval's frames after the landmark / registration pass.

    Attributes
    ----------
    landmarks : dict
        position → landmarks ``(K, 2)`` (frame pixels) or None (no face).
    motion : dict
        position → :class:`pipeline.features.headmotion.HeadMotion` of the frames with a face
        from the onset on (the onset's own is the identity).
    difference : dict
        position → expression difference (grey levels): mean absolute difference between the
        frame's crop (registered unless ``--no-register``) and the onset's, at the crop box's
        own resolution.
    displacement : dict
        position → mean distance (pixels) of the registered non-stable landmarks to the onset's.
    box : CropBox
        The crop box from the onset's landmarks.
    """

    landmarks: dict[int, np.ndarray | None]
    motion: dict[int, Any]
    difference: dict[int, float]
    displacement: dict[int, float]
    box: Any


def expression_displacement(reference: np.ndarray, points: np.ndarray,
                            matrix: np.ndarray | None) -> float:
    """Mean distance (pixels) of the non-stable landmarks of a frame, registered by ``matrix``
    (None: as detected), to the reference frame's."""
    from pipeline.facedetect import stable_indices
    from pipeline.features.align import apply_affine

    mask = np.ones(len(reference), dtype=bool)
    mask[list(stable_indices(len(reference)))] = False
    pts = points if matrix is None else apply_affine(matrix, points)
    return float(np.linalg.norm(pts[mask] - reference[mask], axis=1).mean())


def analyse_interval(clip: Clip, iv: Interval, cfg: Any, model_path: str | None,
                     register: bool) -> Analysis:
    """Landmarks, registration to the onset and the spotting signals of every frame of ``iv``.

    The onset is the first frame of the interval with a face (``iv.onset`` is moved there, with a
    warning, when the given onset has none).

    Raises
    ------
    PredictError
        No face in any frame of the interval, or degenerate landmarks on the onset.
    """
    from pipeline.features.align import warp_crops
    from pipeline.features.faces import detect_landmarks, face_box
    from pipeline.features.headmotion import ImageRefiner, register_to_reference

    out = Analysis({}, {}, {}, {}, None)
    ref = ref_crop = refiner = None
    side = 0
    for pos, image in clip.read(range(iv.onset, iv.end + 1), desc="landmarks"):
        pts = detect_landmarks(image, cfg.detector, model_path, cfg.detect_max_side)
        out.landmarks[pos] = pts
        if pts is None:
            continue
        if ref is None:
            if pos != iv.onset:
                log.warning("no face on frame %d (the onset); the interval starts at the first "
                            "frame with a face, %d", clip.numbers[iv.onset], clip.numbers[pos])
                iv.onset = pos
            try:
                out.box = face_box(pts, cfg)
            except ValueError as exc:
                raise PredictError(f"frame {clip.numbers[pos]}: {exc}") from exc
            ref, side = pts, max(16, int(np.ceil(out.box.side)))
            ref_crop = _smooth_grey(warp_crops(image, out.box, [side])[side])
            refiner = ImageRefiner(image, pts, out.box) if register else None
        try:
            reg = register_to_reference(ref, pts, refiner, image)
        except ValueError as exc:
            log.warning("frame %d not registered: %s", clip.numbers[pos], exc)
            continue
        out.motion[pos] = reg
        pre = reg.matrix if register else None
        crop = _smooth_grey(warp_crops(image, out.box, [side], pre=pre)[side])
        out.difference[pos] = float(np.abs(crop - ref_crop).mean())
        out.displacement[pos] = expression_displacement(ref, pts, pre)
    if ref is None:
        raise PredictError(f"no face found by {cfg.detector} in frames "
                           f"{clip.numbers[iv.onset]}…{clip.numbers[iv.end]}")
    return out


def _smooth_grey(rgb: np.ndarray) -> np.ndarray:
    """Grey float32 crop, Gaussian-filtered (σ :data:`DIFF_SIGMA` px) against sensor and
    compression noise and the resampling of the registration."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return cv2.GaussianBlur(grey, (0, 0), DIFF_SIGMA)


def smoothed_signal(signal: Mapping[int, float]) -> dict[int, float]:
    """Centred 3-frame moving average over the frames that have a value (fewer at the ends)."""
    keys = sorted(signal)
    vals = np.array([signal[k] for k in keys], dtype=np.float64)
    out = {}
    for i, k in enumerate(keys):
        out[k] = float(vals[max(0, i - 1):i + 2].mean())
    return out


def spot_interval(iv: Interval, analysis: Analysis) -> None:
    """Set the apex and/or offset of ``iv`` that were not given (module docstring: apex = the
    largest expression difference after the onset; offset = the first later frame at half of it).

    Raises
    ------
    PredictError
        No frame with a face after the onset, or too short an interval.
    """
    sig = smoothed_signal({p: v for p, v in analysis.difference.items() if p > iv.onset})
    later = list(sig)
    if iv.apex is None:
        if not later:
            raise PredictError("no face in any frame after the onset: cannot spot an apex")
        iv.apex = max(later, key=lambda p: (sig[p], -p))
        iv.apex_spotted = True
    if iv.offset is None:
        peak = sig.get(iv.apex, 0.0)
        after = [p for p in sorted(sig) if p > iv.apex and sig[p] <= 0.5 * peak]
        iv.offset = after[0] if after else iv.end
        iv.offset_spotted = True
    if iv.offset - iv.onset + 1 < MIN_FRAMES:
        raise PredictError(f"interval at position {iv.onset}: too short")


# ---------------------------------------------------------------------------------------------
# Model


@dataclass
class LoadedModel:
    name: str
    meta: dict[str, Any]
    spec: Any
    net: Any | None

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    def faces_config(self):
        """The :class:`pipeline.features.faces.FacesConfig` the model's crops were made with."""
        from pipeline.features.faces import FacesConfig

        return FacesConfig.from_params(self.faces_params())

    def faces_params(self) -> dict[str, Any]:
        feats = self.meta.get("features") or {}
        if "faces" in feats:
            return dict(feats["faces"])
        if "flow" in feats and "faces" in feats["flow"]:
            return dict(feats["flow"]["faces"])
        return {}


def load_model(method: str, models_dir: str | os.PathLike,
               model_path: str | os.PathLike | None = None) -> LoadedModel:
    """Rebuild a method's final model from ``models/<method>/final.pt``.

    Raises
    ------
    FileNotFoundError
        No final model (naming the stage that writes it).
    PredictError
        A method reading a cache mer-predict does not compute, or weights that do not fit.
    """
    import torch

    from pipeline.training.final import FINAL_NAME, PREDICTABLE_CACHES, load_final
    from pipeline.training.protocols import Fold
    from pipeline.training.registry import FoldContext, build_method

    path = Path(model_path) if model_path else Path(models_dir) / method / FINAL_NAME
    meta = load_final(path)
    from pipeline.pretrain.weights import without_pretrained

    spec = build_method(method, without_pretrained(meta["params"]))  # final.pt's weights follow
    other = sorted({i.cache for i in spec.inputs} - set(PREDICTABLE_CACHES))
    if other:
        raise PredictError(f"{method}: reads {other}, which mer-predict does not compute from a "
                           f"clip; use a method on faces.h5/flow.h5 (e.g. sssnet, resnet18_flow)")
    if spec.constant is not None:
        return LoadedModel(method, meta, spec, None)
    names = list(meta["class_names"])
    fold = Fold("final", "none", meta.get("emotion_task") or "cd6me", np.zeros(0, np.int64),
                np.zeros(0, np.int64))
    ctx = FoldContext(method=method, task=meta["task"], fold=fold, n_outputs=len(names),
                      class_names=tuple(names),
                      train_targets=np.asarray(meta.get("train_targets") or [], dtype=np.float64
                                               if meta["task"] == "au" else np.int64),
                      train_subjects=tuple(meta.get("train_subjects") or ()),
                      seed=int(meta.get("seed", 0)), params=dict(meta["params"]),
                      device=torch.device("cpu"))
    net = spec.build_model(ctx)
    try:
        net.load_state_dict(meta["state_dict"])
    except RuntimeError as exc:
        raise PredictError(f"{path}: the weights do not fit the network of {method}: {exc}") from exc
    net.eval()
    return LoadedModel(method, meta, spec, net)


def run_model(model: LoadedModel, features: Mapping[str, Mapping[str, np.ndarray]]) -> np.ndarray:
    """Probabilities ``(K,) float64`` (sigmoid per AU, or softmax over classes) of one interval."""
    import torch

    from pipeline.training.data import prepare_input
    from pipeline.training.registry import default_logits

    meta = model.meta
    if model.net is None:
        return np.asarray(meta["constant_scores"], np.float64)
    batch = {}
    for spec_in in model.spec.inputs:
        arr = features[spec_in.cache][spec_in.dataset]
        x = prepare_input(spec_in, arr, meta.get("flow_norm", "sample"),
                          float(meta.get("flow_quantile", 0.99)))
        batch[spec_in.key] = torch.from_numpy(np.ascontiguousarray(x))[None]
    with torch.no_grad():
        if model.spec.forward is not None:
            out = model.spec.forward(model.net, batch)
        else:
            out = model.net(*[batch[i.key] for i in model.spec.inputs])
        logits = (model.spec.logits or default_logits)(out).float()
        probs = torch.sigmoid(logits) if meta["task"] == "au" else torch.softmax(logits, dim=1)
    return probs[0].double().numpy()


# ---------------------------------------------------------------------------------------------
# Features of one interval


def feature_params(model: LoadedModel) -> dict[str, dict[str, Any]]:
    """Cache name → the parameters the model's feature caches were computed with (the
    ``features`` of ``final.pt``), completed the way older model files allow.

    ``faces``: stored, else the copy inside ``flow``'s params; ``flow``: stored, else the flow
    size of ``magnified`` (its crops are at the flow size) with the default TV-L1 arguments of
    ``params.yaml`` for the overlay only.
    """
    feats = {k: dict(v) for k, v in (model.meta.get("features") or {}).items()}
    if "faces" not in feats:
        feats["faces"] = model.faces_params()
    if "flow" not in feats:
        size = (feats.get("magnified") or {}).get("size") or (
            feats.get("flow_mag") or {}).get("flow_size")
        feats["flow"] = {"size": int(size)} if size else {}
    return feats


def check_reproducible(model: LoadedModel) -> None:
    """Check that mer-predict can compute every input of ``model`` from a clip.

    A model file without faces parameters (older files, or models fitted on synthetic caches)
    is run with :class:`pipeline.features.faces.FacesConfig`'s defaults, with a warning.

    Raises
    ------
    PredictError
        In one line, naming the method and what cannot be reproduced: a cache mer-predict does
        not compute, a cache whose parameters the model file lacks, or a crop size the model's
        faces parameters do not produce.
    """
    from pipeline.training.final import PREDICTABLE_CACHES

    if model.net is None:
        return
    caches = {i.cache for i in model.spec.inputs}
    other = sorted(caches - set(PREDICTABLE_CACHES))
    if other:
        raise PredictError(f"{model.name}: reads {other}, which mer-predict does not compute "
                           f"from a clip (it computes {list(PREDICTABLE_CACHES)})")
    stored = model.meta.get("features") or {}
    feats = feature_params(model)
    absent = sorted(c for c in caches if c not in stored and c != "faces")
    if absent:
        raise PredictError(f"{model.name}: the model file lacks the parameters of {absent} "
                           f"(written before they were stored); re-run `dvc repro "
                           f"train@{model.name}` to reproduce its features from a clip")
    if not feats["faces"]:
        log.warning("%s: the model file stores no faces parameters; the crops use the defaults "
                    "of pipeline.features.faces.FacesConfig", model.name)
    sizes = set(model.faces_config().sizes)
    need = {"magnified": "size", "patches": "size", "flow_mag": "flow_size"}
    for cache, key in need.items():
        if cache in feats and int(feats[cache].get(key, 0)) not in sizes:
            raise PredictError(f"{model.name}: {cache}.h5 was computed on {key} "
                               f"{feats[cache].get(key)} px crops, which its faces parameters "
                               f"(sizes {sorted(sizes)}) do not produce")


def _key(*parts: Any) -> str:
    return json.dumps(parts, sort_keys=True, default=str)


@dataclass
class ClipFeatures:
    """The feature-cache arrays of a clip's intervals, computed once and shared by every method
    whose features were computed with the same parameters.

    Each cache is computed with the function its stage uses, on the crops of the interval:
    ``faces`` (:func:`pipeline.features.faces.plan_frames`,
    :func:`pipeline.features.align.warp_crops`), ``flow``
    (:func:`pipeline.features.flow.compute_pairs`), ``magnified``
    (:func:`pipeline.magnification.magnify.magnify_batch` with the magnifiers of
    ``magnifier_dir`` whose SHA-256 the model's ``magnified`` params name), ``patches``
    (:func:`pipeline.features.patches.sample_patches`) and ``flow_mag``
    (:func:`pipeline.features.flow_mag.magnified_pairs`).

    Attributes
    ----------
    clip : Clip
    register : bool
    magnifier_dir : Path
        ``models/magnifier``.
    sample_id : str or None
        The id the pseudo-apex offset is drawn for (``--sample-id``; None: ``clip/<clip
        name>/<onset frame>``).
    """

    clip: Clip
    register: bool
    magnifier_dir: Path
    sample_id: str | None = None
    memo: dict[str, Any] = field(default_factory=dict)

    def pseudo_apex_id(self, iv: Interval) -> str:
        """The sample id of the pseudo-apex draw of ``iv`` (class docstring)."""
        if self.sample_id:
            return self.sample_id
        return f"clip/{Path(self.clip.source).stem}/{self.clip.numbers[iv.onset]}"

    def analysed(self, k: int, iv: Interval, cfg: Any, lm_path: str | None
                 ) -> tuple[Interval, Analysis]:
        """Interval ``k`` after landmarks, registration and spotting with faces config ``cfg``
        (a spotted copy of ``iv``; the same for every model of that config)."""
        import copy

        key = _key("analysis", k, cfg.__dict__ if hasattr(cfg, "__dict__") else repr(cfg),
                   self.register)
        if key not in self.memo:
            mine = copy.deepcopy(iv)
            analysis = analyse_interval(self.clip, mine, cfg, lm_path, self.register)
            n_face = sum(v is not None for v in analysis.landmarks.values())
            log.info("interval %d: %s found a face in %d of %d frames", k, cfg.detector, n_face,
                     len(analysis.landmarks))
            spot_interval(mine, analysis)
            self.memo[key] = (mine, analysis)
        return self.memo[key]

    def compute(self, k: int, iv: Interval, analysis: Analysis, model: LoadedModel
                ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
        """The arrays of every cache the model reads (plus ``faces`` and ``flow`` for the
        overlay), named as in the caches, and the frames used.

        Raises
        ------
        PredictError
            Features that cannot be computed (a non-finite flow, missing or other magnifier
            weights).
        """
        feats = feature_params(model)
        faces, used = self._faces(k, iv, analysis, model)
        out = {"faces": faces, "flow": self._flow(k, faces, used, feats["flow"], model)}
        caches = {i.cache for i in model.spec.inputs} if model.spec is not None else set()
        if caches & {"magnified", "patches", "flow_mag"}:
            mparams = feats.get("magnified") or (feats.get("patches") or {}).get(
                "magnified_params") or (feats.get("flow_mag") or {}).get("magnified")
            if not mparams:
                raise PredictError(f"{model.name}: the model file lacks the magnified.h5 "
                                   f"parameters its inputs were computed from")
            out["magnified"] = self._magnified(k, iv, faces, used, mparams, model.name)
        if "patches" in caches:
            out["patches"] = self._patches(k, faces, out["magnified"], feats["patches"])
        if "flow_mag" in caches:
            out["flow_mag"] = self._flow_mag(k, faces, out["magnified"], feats["flow_mag"])
        return out, used

    def _faces(self, k: int, iv: Interval, analysis: Analysis, model: LoadedModel
               ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        from pipeline.features.align import warp_crops
        from pipeline.features.faces import plan_frames

        cfg = model.faces_config()
        feats = feature_params(model)
        sizes = set(cfg.sizes)
        for cache, key in (("flow", "size"), ("magnified", "size"), ("patches", "size"),
                           ("flow_mag", "flow_size")):
            if (feats.get(cache) or {}).get(key):
                sizes.add(int(feats[cache][key]))
        sizes.add(int(feats["flow"].get("size", max(cfg.sizes))))
        key = _key("faces", k, iv.onset, iv.apex, iv.offset, cfg.__dict__, sorted(sizes))
        if key in self.memo:
            return self.memo[key]
        clip = self.clip
        positions = list(range(iv.onset, iv.offset + 1))
        numbers = tuple(clip.numbers[p] for p in positions)
        plan = plan_frames(numbers, clip.numbers[iv.apex], cfg.pseudo_apex_window,
                           cfg.sequence_length)
        seq_size = int(cfg.sequence_size)
        wanted = {plan.onset, plan.apex, plan.offset, *plan.pseudo_apex, *plan.sequence}
        crops: dict[int, dict[int, np.ndarray]] = {}
        unregistered = []
        for pos, image in clip.read([positions[j] for j in sorted(wanted)], desc="crops"):
            reg = analysis.motion.get(pos)
            pre = reg.matrix if (self.register and reg is not None) else None
            if self.register and reg is None:
                unregistered.append(clip.numbers[pos])
            crops[pos - iv.onset] = warp_crops(image, analysis.box, sorted(sizes | {seq_size}),
                                               pre=pre)
        faces: dict[str, np.ndarray] = {}
        for s in sorted(sizes):
            faces[f"crop{s}/onset"] = crops[plan.onset][s]
            faces[f"crop{s}/apex"] = crops[plan.apex][s]
            faces[f"crop{s}/offset"] = crops[plan.offset][s]
            faces[f"crop{s}/pseudo_apex"] = np.stack([crops[p][s] for p in plan.pseudo_apex])
        faces[f"seq{seq_size}/frames"] = np.stack([crops[p][seq_size] for p in plan.sequence])
        used = {"onset": numbers[plan.onset], "apex": numbers[plan.apex],
                "offset": numbers[plan.offset],
                "pseudo_apex": [numbers[p] for p in plan.pseudo_apex],
                "sequence": [numbers[p] for p in plan.sequence],
                "crop_box": [round(float(v), 3) for v in analysis.box.as_array()],
                "flow_size": int(feats["flow"].get("size", max(cfg.sizes))),
                "unregistered": unregistered}
        self.memo[key] = (faces, used)
        return faces, used

    def _flow(self, k: int, faces: Mapping[str, np.ndarray], used: dict[str, Any],
              params: Mapping[str, Any], model: LoadedModel) -> dict[str, np.ndarray]:
        from pipeline.features.flow import PAIRS, check_tvl1, compute_pairs, grey
        from pipeline.features.stage import SampleFailure

        size = int(params.get("size", used["flow_size"]))
        tvl1 = check_tvl1(params.get("tvl1") or {})
        wanted = {"onset_apex", *(params.get("pairs") or ())}
        wanted |= {i.dataset for i in model.spec.inputs if i.cache == "flow"} if model.spec else set()
        pairs = tuple(sorted(n for n in wanted if n in PAIRS))
        key = _key("flow", k, id(faces), size, tvl1, pairs)
        if key not in self.memo:
            frames = {n: grey(faces[f"crop{size}/{n}"]) for n in
                      {f for p in pairs for f in PAIRS[p]}}
            try:
                self.memo[key], _ = compute_pairs(frames, pairs, tvl1)
            except SampleFailure as exc:
                raise PredictError(str(exc)) from exc
        return self.memo[key]

    def _magnified(self, k: int, iv: Interval, faces: Mapping[str, np.ndarray],
                   used: dict[str, Any], params: Mapping[str, Any], method: str
                   ) -> dict[str, np.ndarray]:
        import torch

        from pipeline.magnification.magnify import MagnifyPlan, load_magnifiers, magnify_batch

        key = _key("magnified", k, id(faces), params)
        if key in self.memo:
            return self.memo[key]
        size = int(params["size"])
        kinds = ["oh"] + (["stmemm"] if (params.get("frames") or {}).get("stmemm") else [])
        mkey = _key("magnifiers", kinds, params.get("magnifiers"))
        if mkey not in self.memo:
            try:
                self.memo[mkey] = load_magnifiers(self.magnifier_dir, kinds, torch.device("cpu"),
                                                  expected=params.get("magnifiers"))[0]
            except (FileNotFoundError, ValueError) as exc:
                raise PredictError(f"{method}: {exc}") from exc
        magnifiers = self.memo[mkey]
        window = faces[f"crop{size}/pseudo_apex"]
        plan = MagnifyPlan.from_config(params, len(window), magnifiers)
        offsets, _ = plan.offsets([self.pseudo_apex_id(iv)], len(window))
        # a clip belongs to no database: every magnifier's frames are decoded, and marked so
        # where the stage's cache marks them (magnify.frames_databases)
        decoded = {kind: np.ones(1, dtype=bool)
                   for kind, dbs in (params.get("frames_databases") or {}).items()
                   if dbs is not None}
        out = magnify_batch(magnifiers, plan, faces[f"crop{size}/onset"][None],
                            faces[f"crop{size}/apex"][None], window[None], offsets,
                            torch.device("cpu"), decoded)
        arrays = {name: arr[0] for name, arr in out.items()}
        arrays["pseudo_apex_frame"] = np.int32(used["pseudo_apex"][int(offsets[0])])
        self.memo[key] = arrays
        return arrays

    def _patches(self, k: int, faces: Mapping[str, np.ndarray],
                 magnified: Mapping[str, np.ndarray], params: Mapping[str, Any]
                 ) -> dict[str, np.ndarray]:
        from pipeline.features.patches import magnified_groups, sample_patches

        key = _key("patches", k, id(faces), id(magnified), params)
        if key not in self.memo:
            groups = magnified_groups(params.get("magnified"))
            absent = sorted(d for d in groups.values() if d not in magnified)
            if absent:
                raise PredictError(f"patches.h5 needs {absent}, which its magnified.h5 "
                                   f"parameters do not produce")
            size = int(params["size"])
            self.memo[key], _ = sample_patches(
                faces[f"crop{size}/apex"], {g: magnified[d] for g, d in groups.items()},
                int(params["patch_size"]), tuple(float(v) for v in params["fallback_box"]),
                onset=faces.get(f"crop{size}/onset"))
        return self.memo[key]

    def _flow_mag(self, k: int, faces: Mapping[str, np.ndarray],
                  magnified: Mapping[str, np.ndarray], params: Mapping[str, Any]
                  ) -> dict[str, np.ndarray]:
        from pipeline.features.flow import check_tvl1, grey
        from pipeline.features.flow_mag import apex_dataset, magnified_pairs
        from pipeline.features.stage import SampleFailure

        key = _key("flow_mag", k, id(faces), id(magnified), params)
        if key not in self.memo:
            crop = int(params["flow_size"])
            dataset = apex_dataset(params)
            if dataset not in magnified:
                raise PredictError(f"flow_mag.h5 needs {dataset}, which its magnified.h5 "
                                   f"parameters do not produce")
            try:
                self.memo[key] = magnified_pairs(
                    grey(faces[f"crop{crop}/onset"]), grey(faces[f"crop{crop}/offset"]),
                    grey(magnified[dataset]), int(params["size"]),
                    check_tvl1(params.get("tvl1") or {}))
            except SampleFailure as exc:
                raise PredictError(str(exc)) from exc
        return self.memo[key]


# ---------------------------------------------------------------------------------------------
# Figures


def _flow_rgb(flow: np.ndarray) -> np.ndarray:
    """(u, v) → an HSV colour image (hue: direction, value: magnitude / its 99th percentile)."""
    u, v = flow[..., 0], flow[..., 1]
    mag = np.sqrt(u ** 2 + v ** 2)
    scale = float(np.quantile(mag, 0.99)) + 1e-6
    hsv = np.zeros((*u.shape, 3), np.uint8)
    hsv[..., 0] = ((np.degrees(np.arctan2(v, u)) % 360) / 2).astype(np.uint8)
    hsv[..., 1] = 255
    hsv[..., 2] = np.clip(mag / scale * 255, 0, 255).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def magnified_panel(model: LoadedModel, features: Mapping[str, Mapping[str, np.ndarray]]
                    ) -> tuple[np.ndarray, str] | None:
    """The magnified apex shown beside the raw one for a method that reads ``magnified.h5``
    (directly or through ``patches``/``flow_mag``): the decoded frame the method reads, else Oh
    et al.'s at the latent's α, else the first decoded frame; None for other methods."""
    mag = features.get("magnified")
    if not mag:
        return None
    frames = sorted(n for n in mag if n.startswith("frames/"))
    read = []
    for i in model.spec.inputs:
        if i.cache == "magnified":
            read.append(i.dataset)
        elif i.cache == "patches" and i.dataset.startswith("magnified/"):
            read.append("frames/" + i.dataset.removeprefix("magnified/").rsplit("/", 1)[0]
                        + "/apex")
        elif i.cache == "flow_mag":
            read.append(_flow_mag_dataset(model))
    read = [d for d in read if d in frames]
    alpha = (model.meta.get("features") or {}).get("magnified", {}).get("latent_alpha")
    latent = f"frames/oh/alpha{int(alpha) if alpha and float(alpha).is_integer() else alpha}/apex"
    pick = read[0] if read else (latent if latent in frames else (frames[0] if frames else None))
    if pick is None:
        return None
    _, kind, tag, _ = pick.split("/")
    return mag[pick], f"magnified apex ({kind} α={tag.removeprefix('alpha')})"


def _flow_mag_dataset(model: LoadedModel) -> str | None:
    from pipeline.features.flow_mag import apex_dataset

    params = (model.meta.get("features") or {}).get("flow_mag")
    return apex_dataset(params) if params else None


def overlay_figure(path: Path, features: Mapping[str, Mapping[str, np.ndarray]], used: dict,
                   probs: np.ndarray, names: Sequence[str], title: str, top: int = 5,
                   magnified: tuple[np.ndarray, str] | None = None) -> None:
    """Onset crop, registered apex crop, (for magnified methods) the magnified apex beside it,
    onset→apex flow over the apex, top probabilities."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.io import atomic_path

    s = used["flow_size"]
    onset = features["faces"][f"crop{s}/onset"]
    apex = features["faces"][f"crop{s}/apex"]
    flow = features["flow"]["onset_apex"]
    blend = (0.5 * apex.astype(np.float32) + 0.5 * _flow_rgb(flow)).astype(np.uint8)
    panels = [(onset, f"onset {used['onset']}"), (apex, f"apex {used['apex']} (registered)")]
    if magnified is not None:
        panels.append(magnified)
    panels.append((blend, "flow onset→apex (hue: direction)"))
    n = len(panels)
    fig, axes = plt.subplots(1, n + 1, figsize=(3.2 * n + 4.2, 3.4),
                             gridspec_kw={"width_ratios": [1] * n + [1.3]})
    for ax, (img, t) in zip(axes[:n], panels, strict=True):
        ax.imshow(img)
        ax.set_title(t, fontsize=9)
        ax.axis("off")
    order = np.argsort(-probs)[:top]
    axes[n].barh([names[i] for i in order][::-1], probs[order][::-1], color="tab:orange")
    axes[n].set_xlim(0, 1)
    axes[n].set_xlabel("probability")
    axes[n].set_title(f"top {len(order)}", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def head_motion_figure(path: Path, clip: Clip, rows: Sequence[dict], title: str) -> None:
    """Per interval: head displacement before/after registration and expression displacement."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.io import atomic_path

    shown = list(rows)[:6]
    fig, axes = plt.subplots(len(shown), 1, figsize=(9, 2.4 * len(shown)), squeeze=False)
    for ax, row in zip(axes[:, 0], shown, strict=True):
        fr = row["frames"]
        x = [f["frame"] for f in fr]
        ax.plot(x, [f["raw_px"] for f in fr], label="head: stable points moved (px)")
        ax.plot(x, [f["residual_px"] for f in fr], label="after registration (px)")
        ax.plot(x, [f["landmark_displacement_px"] for f in fr],
                label="expressive landmarks moved (px)")
        ax2 = ax.twinx()
        ax2.plot(x, [f["expression_difference"] for f in fr], color="tab:red", linestyle="--",
                 label="expression difference (grey levels, right)")
        ax2.legend(fontsize=7, loc="upper right")
        for key, style in (("onset", ":"), ("apex", "--"), ("offset", ":")):
            ax.axvline(row[key], color="k", linestyle=style, linewidth=0.8)
        ax.set_title(f"interval {row['interval']}: onset {row['onset']}, apex {row['apex']}, "
                     f"offset {row['offset']}", fontsize=9)
        ax.set_xlabel("frame")
        ax.legend(fontsize=7, loc="upper left")
    if len(rows) > len(shown):
        fig.text(0.5, 0.005, f"{len(rows) - len(shown)} more intervals in predictions.json",
                 ha="center", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Driver


def predict_clip(clip: Clip, intervals: list[Interval], model: LoadedModel, out_dir: Path,
                 register: bool = True, model_path: str | None = None,
                 features: ClipFeatures | None = None) -> list[dict[str, Any]]:
    """Analyse every interval of ``clip`` with ``model`` and write the outputs (module docstring).

    Parameters
    ----------
    clip : Clip
    intervals : list of Interval
        Not modified (each model gets spotted copies).
    model : LoadedModel
    out_dir : Path
    register : bool
    model_path : str, optional
        MediaPipe bundle.
    features : ClipFeatures, optional
        Shared between the methods of one call (``--method all``); default: a new one with
        ``models/magnifier``.

    Returns
    -------
    list of dict
        One record per interval (the rows of ``predictions.json``).

    Raises
    ------
    PredictError
        No face, too short an interval, unusable landmarks, features that cannot be reproduced.
    """
    from pipeline import assets
    from pipeline.io import atomic_path, write_json
    from pipeline.params import env_or

    check_reproducible(model)
    if features is None:
        features = ClipFeatures(clip, register, Path("models") / "magnifier")
    cfg = model.faces_config()
    local = env_or(model_path or cfg.landmarker_model, "MER_LANDMARKER_MODEL")
    lm_path = (str(assets.resolve(assets.FACE_LANDMARKER, local)) if cfg.detector == "mediapipe"
               else None)
    names = model.class_names
    stand_in = str(model.meta.get("data", "")).startswith("standin")
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for k, iv0 in enumerate(intervals):
        iv, analysis = features.analysed(k, iv0, cfg, lm_path)
        feats, used = features.compute(k, iv, analysis, model)
        if "magnified" in feats:
            used = {**used, "pseudo_apex_id": features.pseudo_apex_id(iv),
                    "pseudo_apex_offset": int(feats["magnified"]["pseudo_apex_offset"]),
                    "pseudo_apex_frame": int(feats["magnified"]["pseudo_apex_frame"])}
        probs = run_model(model, feats)
        top = int(np.argmax(probs))
        motion = analysis.motion
        apex_m = motion.get(iv.apex)
        off_m = motion.get(iv.offset)
        rec: dict[str, Any] = {
            "interval": k, "onset": clip.numbers[iv.onset], "apex": clip.numbers[iv.apex],
            "offset": clip.numbers[iv.offset], "apex_spotted": iv.apex_spotted,
            "offset_spotted": iv.offset_spotted, "registered": register,
            "top": names[top], "top_probability": round(float(probs[top]), 6),
            "frames_used": used,
            "head_motion_apex": apex_m.as_dict() if apex_m else None,
            "head_motion_offset": off_m.as_dict() if off_m else None,
            "probabilities": {n: round(float(p), 6) for n, p in zip(names, probs, strict=True)},
            "frames": [{"frame": clip.numbers[p], **motion[p].as_dict(),
                        "expression_difference": round(analysis.difference[p], 4),
                        "landmark_displacement_px": round(analysis.displacement[p], 4)}
                       for p in sorted(motion)],
            "frames_without_face": [clip.numbers[p] for p, v in analysis.landmarks.items()
                                    if v is None],
        }
        records.append(rec)
        title = (f"{model.name} on {Path(clip.source).name}, frames {rec['onset']}–"
                 f"{rec['offset']}" + (" — STAND-IN-TRAINED MODEL" if stand_in else ""))
        overlay_figure(out_dir / f"overlay_{k}.png", feats, used, probs, names, title,
                       magnified=magnified_panel(model, feats))
        hm = rec["head_motion_apex"] or {}
        log.info("%s, interval %d: onset %d apex %d%s offset %d%s; head at apex %.2f px "
                 "(residual %.2f px); top %s %.3f", model.name, k, rec["onset"], rec["apex"],
                 " (spotted)" if iv.apex_spotted else "", rec["offset"],
                 " (spotted)" if iv.offset_spotted else "", hm.get("raw_px", float("nan")),
                 hm.get("residual_px", float("nan")), rec["top"], rec["top_probability"])
    head_motion_figure(out_dir / "head_motion.png", clip, records,
                       f"{Path(clip.source).name}: head motion relative to each onset")
    with atomic_path(out_dir / "predictions.csv", suffix=".csv") as tmp:
        pd.DataFrame(table_rows(clip, model, records)).to_csv(tmp, index=False)
    write_json(out_dir / "predictions.json", {
        "source": clip.source, "n_frames": len(clip), "fps": clip.fps,
        "model": {"method": model.name, "task": model.meta["task"],
                  "emotion_task": model.meta.get("emotion_task"),
                  "params_hash": model.meta.get("params_hash"), "data": model.meta.get("data"),
                  "class_names": names},
        "caveat": ("The model was trained on the stand-in benchmark (simulated micro-expressions "
                   "on photos); its output on a real face says nothing about the expression."
                   if stand_in else None),
        "intervals": records})
    return records


def table_rows(clip: Clip, model: LoadedModel, records: Sequence[Mapping[str, Any]]
               ) -> list[dict[str, Any]]:
    """The rows of ``predictions.csv`` (module docstring) of one method's records."""
    rows = []
    for rec in records:
        used = rec["frames_used"]
        row = {"source": clip.source, "method": model.name, "task": model.meta["task"],
               "data": model.meta.get("data"), "interval": rec["interval"],
               "onset": rec["onset"], "apex": rec["apex"], "offset": rec["offset"],
               "apex_spotted": rec["apex_spotted"], "offset_spotted": rec["offset_spotted"],
               "pseudo_apex_frames": "|".join(map(str, used["pseudo_apex"])),
               "sequence_frames": "|".join(map(str, used["sequence"])),
               "registered": rec["registered"]}
        for when in ("apex", "offset"):
            hm = rec[f"head_motion_{when}"] or {}
            for key in ("tx_px", "ty_px", "rotation_deg", "raw_px", "residual_px"):
                row[f"head_{when}_{key}"] = hm.get(key, float("nan"))
        row["top"] = rec["top"]
        row["top_probability"] = rec["top_probability"]
        for n in model.class_names:
            row[f"p_{n}"] = rec["probabilities"][n]
        rows.append(row)
    return rows


def resolve_methods(requested: Sequence[str], models_dir: str | os.PathLike) -> list[str]:
    """``--method`` values → method names: ``all`` is every ``<models>/<method>/final.pt`` (sorted);
    commas separate names.

    Raises
    ------
    PredictError
        ``all`` with no final model in ``models_dir``.
    """
    from pipeline.training.final import FINAL_NAME

    out: list[str] = []
    for text in requested:
        for name in (n.strip() for n in text.split(",")):
            if not name:
                continue
            if name == "all":
                found = sorted(p.parent.name for p in Path(models_dir).glob(f"*/{FINAL_NAME}"))
                if not found:
                    raise PredictError(f"{models_dir}: no final model (*/{FINAL_NAME}); run "
                                       f"`dvc repro` first")
                out += [m for m in found if m not in out]
            elif name not in out:
                out.append(name)
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mer-predict", description="Run trained micro-expression methods on your own clip "
        "(a video file or a folder of frames).",
        epilog="Frame numbers: 0-based index in a video; the number in the file name in a folder.")
    p.add_argument("clip", help="video file (any format OpenCV reads) or folder of frame images")
    p.add_argument("--method", required=True, action="append",
                   help="a trained method (models/<method>/final.pt); 'all' for every final "
                        "model, or a comma-separated list; repeatable")
    p.add_argument("--models", default="models", help="models folder (default: models)")
    p.add_argument("--model", default=None, help="a final.pt file instead of models/<method>/")
    p.add_argument("--magnifiers", default=None,
                   help="trained magnifiers (default: <models>/magnifier); their SHA-256 must be "
                        "those the model's magnified features were computed with")
    p.add_argument("--onset", type=int, default=None, help="onset frame number")
    p.add_argument("--apex", type=int, default=None, help="apex frame number (default: spotted)")
    p.add_argument("--offset", type=int, default=None,
                   help="offset frame number (default: spotted)")
    p.add_argument("--interval", action="append", metavar="ONSET:APEX:OFFSET",
                   help="an interval; '-' for an apex/offset to spot; repeatable")
    p.add_argument("--window", type=int, default=None,
                   help="frames per window (automatic intervals; with --onset: the search range)")
    p.add_argument("--no-register", action="store_true",
                   help="do not compensate rigid head motion before the flow")
    p.add_argument("--sample-id", default=None,
                   help="id the pseudo-apex offset is drawn for, as the magnify stage draws it "
                        "per sample (default: clip/<clip name>/<onset frame>)")
    p.add_argument("--out", default=None,
                   help="output folder (default: predictions/<clip name>/<method>, or "
                        "predictions/<clip name>/ for several methods)")
    p.add_argument("--landmarker-model", default=None,
                   help="face_landmarker.task (default: $MER_LANDMARKER_MODEL, else download)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``mer-predict``); returns the exit status (2 on bad input, or
    when no method could predict)."""
    from pipeline.assets import AssetError
    from pipeline.io import atomic_path, setup_logging
    from pipeline.training.registry import MethodError

    args = _parser().parse_args(argv)
    setup_logging()
    # bad input, a missing model or a model bundle that cannot be had: one line each, exit 2
    errors = (PredictError, FileNotFoundError, MethodError, AssetError)
    try:
        import torch

        torch.set_num_threads(max(1, int(args.threads)))
        methods = resolve_methods(args.method, args.models)
        several = len(methods) > 1 or "all" in args.method
        if args.model and len(methods) != 1:
            raise PredictError("--model takes one method")
        clip = open_clip(args.clip)
        intervals = parse_intervals(args, clip)
        base = Path(args.out) if args.out else Path("predictions") / Path(clip.source).stem
        out = base if (args.out or several) else base / methods[0]
    except errors as exc:
        print(f"mer-predict: error: {exc}", file=sys.stderr)
        return 2
    features = ClipFeatures(clip, not args.no_register,
                            Path(args.magnifiers) if args.magnifiers
                            else Path(args.models) / "magnifier", args.sample_id)
    rows: list[dict[str, Any]] = []
    summary = []
    failed = 0
    stand_in = False
    models: dict[str, LoadedModel | Exception] = {}
    for method in methods:
        try:
            models[method] = load_model(method, args.models, args.model)
        except errors as exc:
            models[method] = exc
    # a constant predictor reads no features: its interval is analysed with the crops and flow
    # of the first learned model of the call (the same landmark pass), for its overlay
    shared = next((m.meta["features"] for m in models.values() if isinstance(m, LoadedModel)
                   and m.net is not None and "faces" in (m.meta.get("features") or {})), None)
    for method in methods:
        try:
            model = models[method]
            if isinstance(model, Exception):
                raise model
            if model.net is None and shared and not model.meta.get("features"):
                model.meta["features"] = {k: shared[k] for k in ("faces", "flow") if k in shared}
            records = predict_clip(clip, intervals, model, out / method if several else out,
                                   register=not args.no_register,
                                   model_path=args.landmarker_model, features=features)
        except errors as exc:
            failed += 1
            line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            print(f"mer-predict: error: {line}", file=sys.stderr)
            rows.append({"source": clip.source, "method": method, "error": line})
            if not several:
                return 2
            continue
        stand_in |= str(model.meta.get("data", "")).startswith("standin")
        rows += table_rows(clip, model, records)
        summary += [{"method": method, **{k: r[k] for k in ("interval", "onset", "apex", "offset",
                                                              "top", "top_probability")}}
                    for r in records]
    if several:
        table = pd.DataFrame(rows)
        front = [c for c in ("source", "method", "task", "data", "interval", "onset", "apex",
                             "offset", "top", "top_probability", "error") if c in table]
        table = table[front + [c for c in table.columns if c not in front]]
        with atomic_path(out / "predictions.csv", suffix=".csv") as tmp:
            table.to_csv(tmp, index=False)
        log.info("%d method(s), %d failed; table → %s", len(methods), failed,
                 out / "predictions.csv")
    else:
        log.info("%d interval(s) → %s", len(summary), out)
    if stand_in:
        log.warning("the model(s) were trained on the STAND-IN benchmark: their output on a real "
                    "face says nothing about the expression")
    print(json.dumps(summary))
    return 0 if failed < len(methods) else 2


if __name__ == "__main__":
    sys.exit(main())

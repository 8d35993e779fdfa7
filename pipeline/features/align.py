"""Face alignment from the eye centres and one crop box per sample.

The crop of a sample is fixed on its onset frame and applied unchanged to every frame of the sample,
as the CD6ME reference tooling does (Varanka et al., IEEE TAFFC 2024): the face is rotated about
the midpoint of the eye centres so that the eyes are level, and a square of side
``crop_side × d`` (d = inter-ocular distance, the distance between the eye centres) centred
``centre_below × d`` below that midpoint (in the rotated frame) is resampled to each output size.
Micro-expression motion (mostly below 2 px) and the head's own small motion therefore stay in the
crops exactly as they were in the frames, scaled by ``S / side`` and rotated by the crop angle.

Coordinates: frame pixels (x right, y down, pixel centres at integers); a crop of side ``S`` has
pixel centres at ``0 … S−1`` and spans ``[−0.5, S − 0.5]``; crop *units* are fractions of the
crop side, ``u = (x_S + 0.5) / S`` (0 = left/top edge, 1 = right/bottom edge).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class CropBox:
    """A square, rotated crop of a frame.

    Attributes
    ----------
    cx, cy : float
        Centre of the square in frame pixels.
    side : float
        Side of the square in frame pixels.
    angle : float
        Rotation applied to the frame to level the eyes, degrees (counter-clockwise positive in
        image coordinates as ``cv2.getRotationMatrix2D`` uses them, i.e. the eye line's angle).
    iod : float
        Inter-ocular distance (eye centre to eye centre) in frame pixels.
    """

    cx: float
    cy: float
    side: float
    angle: float
    iod: float

    def as_array(self) -> np.ndarray:
        """``(5,) float32``: centre x, centre y, side (px), angle (degrees), inter-ocular distance
        (px)."""
        return np.array([self.cx, self.cy, self.side, self.angle, self.iod], dtype=np.float32)


def box_from_eyes(right_eye: np.ndarray, left_eye: np.ndarray, crop_side: float = 2.6,
                  centre_below: float = 0.4) -> CropBox:
    """The crop box that levels the eyes and scales the face by its inter-ocular distance.

    Parameters
    ----------
    right_eye, left_eye : ndarray of shape (2,)
        Centres (x, y) in frame pixels of the subject's right eye (image left) and left eye.
    crop_side : float
        Side of the square crop in inter-ocular distances.
    centre_below : float
        Distance of the crop centre below the eye midpoint, in inter-ocular distances, measured
        perpendicular to the (levelled) eye line.

    Returns
    -------
    CropBox

    Raises
    ------
    ValueError
        If the eye centres coincide or are not finite.
    """
    r = np.asarray(right_eye, dtype=np.float64)
    le = np.asarray(left_eye, dtype=np.float64)
    d = le - r
    iod = float(math.hypot(d[0], d[1]))
    if not np.all(np.isfinite(d)) or iod < 1e-3:
        raise ValueError(f"eye centres {r.tolist()} and {le.tolist()} do not define an eye line")
    angle = math.degrees(math.atan2(d[1], d[0]))
    mid = (r + le) / 2.0
    # "down" in the levelled face is the eye line's direction rotated by +90° (image y is down).
    down = np.array([-d[1], d[0]]) / iod
    centre = mid + centre_below * iod * down
    return CropBox(float(centre[0]), float(centre[1]), float(crop_side * iod), float(angle), iod)


def crop_matrix(box: CropBox, size: float) -> np.ndarray:
    """Affine map from frame pixels to the pixels of a crop of side ``size``.

    Parameters
    ----------
    box : CropBox
    size : float
        Output side in pixels.

    Returns
    -------
    ndarray of shape (2, 3), float64
        ``[x_S, y_S]ᵀ = M @ [x, y, 1]ᵀ``: rotation by ``−angle`` about the box centre (eyes level),
        scaling by ``size / side``, box centre to ``(size/2 − 0.5, size/2 − 0.5)``.
    """
    theta = math.radians(box.angle)
    s = size / box.side
    c, si = math.cos(theta) * s, math.sin(theta) * s
    rot = np.array([[c, si], [-si, c]])
    t = np.array([size / 2.0 - 0.5, size / 2.0 - 0.5]) - rot @ np.array([box.cx, box.cy])
    return np.hstack([rot, t[:, None]])


def to_crop_units(points: np.ndarray, box: CropBox) -> np.ndarray:
    """Frame-pixel points ``(K, 2)`` → crop units ``(K, 2) float32`` (fractions of the side)."""
    m = crop_matrix(box, 1.0)
    pts = np.asarray(points, dtype=np.float64)
    # For S = 1 the crop pixel coordinate is x_1 = u − 0.5.
    return (pts @ m[:, :2].T + m[:, 2] + 0.5).astype(np.float32)


def warp_crops(image: np.ndarray, box: CropBox, sizes: Iterable[int],
               pre: np.ndarray | None = None) -> dict[int, np.ndarray]:
    """Resample the box of ``image`` at each output size.

    Downscaling goes through an intermediate crop at the box's own resolution (rotation only,
    bilinear) followed by an area-averaging resize, so that large frames are not aliased; crops no
    larger than the box are warped directly (bilinear).  Outside the frame the border is replicated.

    Parameters
    ----------
    image : ndarray of shape (H, W, 3) or (H, W), uint8
    box : CropBox
    sizes : iterable of int
        Output sides in pixels.
    pre : ndarray of shape (2, 3), optional
        A frame → frame affine map applied before the crop (e.g. the similarity registering this
        frame's head pose to the onset's, :func:`similarity_transform`); one resampling in all.

    Returns
    -------
    dict
        size → ``(size, size, 3)`` (or ``(size, size)``) ``uint8`` crop.
    """
    out: dict[int, np.ndarray] = {}
    sizes = sorted(set(int(s) for s in sizes))
    inter_side = int(math.ceil(box.side))
    inter = None

    def matrix(size: float) -> np.ndarray:
        m = crop_matrix(box, size)
        return m if pre is None else compose(m, pre)

    for size in sizes:
        if size >= box.side:
            out[size] = cv2.warpAffine(image, matrix(size), (size, size),
                                       flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            continue
        if inter is None:
            inter = cv2.warpAffine(image, matrix(inter_side), (inter_side, inter_side),
                                   flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        out[size] = cv2.resize(inter, (size, size), interpolation=cv2.INTER_AREA)
    return out


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The affine map ``outer ∘ inner`` of two ``(2, 3)`` maps, ``(2, 3) float64``."""
    a = np.vstack([np.asarray(outer, np.float64), [0.0, 0.0, 1.0]])
    b = np.vstack([np.asarray(inner, np.float64), [0.0, 0.0, 1.0]])
    return (a @ b)[:2]


def similarity_transform(src: np.ndarray, dst: np.ndarray, with_scale: bool = True) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` to ``dst``.

    Minimises ``Σ_i |s R src_i + t − dst_i|²`` in closed form (Umeyama, "Least-squares estimation
    of transformation parameters between two point patterns", IEEE TPAMI 13(4), 1991, Eq. 40–42;
    reflections excluded); ``with_scale=False`` fixes s = 1 (a rigid motion).

    Parameters
    ----------
    src, dst : ndarray of shape (K, 2)
        Corresponding points (x, y), pixels; K ≥ 2, rows with a non-finite value are ignored.
    with_scale : bool
        Estimate s (True) or keep s = 1.

    Returns
    -------
    ndarray of shape (2, 3), float64
        ``[x', y']ᵀ = M @ [x, y, 1]ᵀ``.

    Raises
    ------
    ValueError
        If fewer than two finite correspondences remain or the source points coincide.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2:
        raise ValueError(f"similarity_transform: expected two (K, 2) arrays, got {src.shape} "
                         f"and {dst.shape}")
    ok = np.isfinite(src).all(axis=1) & np.isfinite(dst).all(axis=1)
    src, dst = src[ok], dst[ok]
    if len(src) < 2:
        raise ValueError("similarity_transform: fewer than 2 finite point pairs")
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    xs, xd = src - mu_s, dst - mu_d
    var_s = float((xs ** 2).sum() / len(src))
    if var_s < 1e-12:
        raise ValueError("similarity_transform: the source points coincide")
    cov = xd.T @ xs / len(src)
    u, d, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1.0
    rot = u @ sign @ vt
    scale = float(np.trace(np.diag(d) @ sign) / var_s) if with_scale else 1.0
    t = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, t[:, None]])


def apply_affine(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``(K, 2)`` points through a ``(2, 3)`` affine map, ``(K, 2) float64``."""
    pts = np.asarray(points, np.float64)
    return pts @ np.asarray(m, np.float64)[:, :2].T + np.asarray(m, np.float64)[:, 2]


def similarity_params(m: np.ndarray) -> tuple[float, float, float, float]:
    """Translation x, y (pixels), rotation (degrees, counter-clockwise in the image) and scale of
    a similarity ``(2, 3)`` map."""
    m = np.asarray(m, np.float64)
    scale = float(math.hypot(m[0, 0], m[1, 0]))
    angle = float(math.degrees(math.atan2(m[1, 0], m[0, 0])))
    return float(m[0, 2]), float(m[1, 2]), angle, scale


def box_keeping_chin(right_eye: np.ndarray, left_eye: np.ndarray, chin: np.ndarray,
                     crop_side: float, centre_below: float, margin: float) -> CropBox:
    """:func:`box_from_eyes`, enlarged downwards when the chin would fall outside.

    With the default crop (side 2.8 d, centre 0.5 d below the eyes) the bottom edge sits 1.9 d
    below the eye line, about where the chin is on an adult face: on a long face the chin landmark
    falls outside and a jaw patch is half border.  Here the top edge stays where ``crop_side`` and
    ``centre_below`` put it and the bottom edge moves down, when needed, to ``margin`` × d below
    the chin (measured perpendicular to the levelled eye line); the square grows accordingly, so
    the face keeps its scale relative to d only up to that enlargement.

    Parameters
    ----------
    right_eye, left_eye, chin : ndarray of shape (2,)
        Frame pixels.
    crop_side, centre_below : float
        As in :func:`box_from_eyes`.
    margin : float
        Space kept below the chin, in inter-ocular distances (≥ 0).

    Returns
    -------
    CropBox

    Raises
    ------
    ValueError
        As :func:`box_from_eyes`; a negative margin or a non-finite chin.
    """
    if margin < 0:
        raise ValueError(f"chin margin must be >= 0, got {margin}")
    box = box_from_eyes(right_eye, left_eye, crop_side, centre_below)
    chin = np.asarray(chin, np.float64)
    if not np.all(np.isfinite(chin)):
        raise ValueError(f"chin point {chin.tolist()} is not finite")
    r = np.asarray(right_eye, np.float64)
    le = np.asarray(left_eye, np.float64)
    d = le - r
    down = np.array([-d[1], d[0]]) / box.iod
    chin_below = float((chin - (r + le) / 2.0) @ down) / box.iod   # in d
    top = centre_below - crop_side / 2.0
    bottom = max(centre_below + crop_side / 2.0, chin_below + margin)
    return box_from_eyes(right_eye, left_eye, bottom - top, (top + bottom) / 2.0)

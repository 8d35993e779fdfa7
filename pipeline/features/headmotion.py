"""Rigid head motion between two frames, from face landmarks, and its compensation.

A micro-expression moves facial points by about 1–2 px; an everyday head drifts by several pixels
between an onset and an apex a few frames apart, and that rigid motion then dominates the optical
flow of the pair.  Before the flow, a frame is registered to the reference frame (the onset):

1. a rigid motion (rotation + translation) fitted in least squares to the landmarks that move little
   with the 12 CD6ME AUs (:func:`pipeline.facedetect.stable_indices`; Umeyama 1991 with s = 1);
2. refined on the images (:class:`ImageRefiner`): OpenCV's ECC maximisation (Evangelidis & Psarakis,
   "Parametric image alignment using enhanced correlation coefficient maximization", IEEE TPAMI
   30(10), 2008), Euclidean motion, on the grey face crop at the crop box's own resolution, inside
   the convex hull of the stable points other than the face sides (nose ridge, inner and outer eye
   corners, forehead midline).  MediaPipe's landmarks shift by up to ~1 px with an expression (its
   mesh is fitted as a whole; measured on a rendered AU12 clip), about the size of a
   micro-expression; the image term removes most of that.  A refinement that does not converge,
   or moves the face by more than :data:`MAX_REFINE` inter-ocular distances away from the landmark
   fit, is discarded (the landmark fit is kept, ``refined`` false).

Reported per frame: the translation and rotation applied, the scale of a least-squares similarity
fit (a zoom, reported, not compensated), the RMS displacement of the stable points before
registration (``raw_px``) and after it (``residual_px``, which includes the landmark noise), in
pixels of the frame.

Choices the literature leaves open, made here: a rigid motion (no scale, shear or perspective:
out-of-plane rotation stays as a residual); least squares without outlier rejection on a fixed
point set; ECC with a Gaussian pre-filter of 5 px, at most 100 iterations, ε 1e-6.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.facedetect import stable_indices
from pipeline.features.align import (
    CropBox,
    apply_affine,
    compose,
    crop_matrix,
    similarity_params,
    similarity_transform,
)

#: Fields of :meth:`HeadMotion.as_array`, in order.
HEAD_MOTION_FIELDS = ("tx_px", "ty_px", "rotation_deg", "scale", "raw_px", "residual_px")
#: Largest move (inter-ocular distances) of the refinement away from the landmark fit.
MAX_REFINE = 0.05
#: Stable points on the face sides, left out of the image-refinement mask (hair, ears, background).
_SIDES = {234, 454, 127, 356, 0, 1, 15, 16}


@dataclass(frozen=True)
class HeadMotion:
    """The rigid motion of one frame relative to the reference frame.

    Attributes
    ----------
    matrix : ndarray of shape (2, 3), float64
        Similarity from this frame's pixels to the reference frame's (applying it registers the
        frame: ``warp_crops(frame, box, sizes, pre=matrix)``).
    tx_px, ty_px, rotation_deg, scale : float
        Its parameters (:func:`pipeline.features.align.similarity_params`); the head moved by the
        inverse.
    raw_px : float
        RMS displacement of the stable points between the frames before registration, pixels.
    residual_px : float
        RMS distance of the registered stable points to the reference ones, pixels (what the
        similarity cannot explain: landmark noise, out-of-plane rotation, expression on a
        "stable" point).
    refined : bool
        Whether the image refinement was applied.
    """

    matrix: np.ndarray
    tx_px: float
    ty_px: float
    rotation_deg: float
    scale: float
    raw_px: float
    residual_px: float
    refined: bool = False

    def as_array(self) -> np.ndarray:
        """``(6,) float32`` in :data:`HEAD_MOTION_FIELDS` order."""
        return np.array([self.tx_px, self.ty_px, self.rotation_deg, self.scale, self.raw_px,
                         self.residual_px], dtype=np.float32)

    def as_dict(self) -> dict[str, float | bool]:
        out: dict[str, float | bool] = dict(zip(
            HEAD_MOTION_FIELDS, (round(float(v), 4) for v in self.as_array()), strict=True))
        out["refined"] = self.refined
        return out


class ImageRefiner:
    """ECC refinement of registrations to one reference frame (module docstring).

    Parameters
    ----------
    reference : ndarray of shape (H, W, 3) or (H, W), uint8
        The reference frame (RGB or grey).
    reference_points : ndarray of shape (K, 2)
        Its landmarks, frame pixels.
    box : CropBox
        The crop box of the sample (the refinement works on this square at its own resolution).
    """

    def __init__(self, reference: np.ndarray, reference_points: np.ndarray, box: CropBox):
        self.size = max(16, int(math.ceil(box.side)))
        self.crop = crop_matrix(box, self.size)
        self.iod_px = box.iod
        self.ref = self._grey(reference, self.crop)
        idx = [i for i in stable_indices(len(reference_points)) if i not in _SIDES]
        hull = apply_affine(self.crop, np.asarray(reference_points, np.float64)[idx])
        mask = np.zeros((self.size, self.size), np.uint8)
        cv2.fillConvexPoly(mask, cv2.convexHull(np.round(hull).astype(np.int32)), 255)
        k = max(3, int(round(0.02 * self.size)) | 1)
        self.mask = cv2.dilate(mask, np.ones((k, k), np.uint8))

    def _grey(self, image: np.ndarray, m: np.ndarray) -> np.ndarray:
        img = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        return cv2.warpAffine(img, m, (self.size, self.size), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE).astype(np.float32)

    def refine(self, image: np.ndarray, matrix: np.ndarray) -> tuple[np.ndarray, bool]:
        """The frame → reference map ``matrix`` refined on the images, and whether it was.

        Returns
        -------
        (ndarray of shape (2, 3), bool)
        """
        moving = self._grey(image, compose(self.crop, matrix))
        warp = np.eye(2, 3, dtype=np.float32)
        criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-6)
        try:
            _, warp = cv2.findTransformECC(self.ref, moving, warp, cv2.MOTION_EUCLIDEAN,
                                           criteria, self.mask, 5)
        except cv2.error:
            return matrix, False
        # ECC: moving(warp(x)) ≈ ref(x) in crop pixels → frame map C⁻¹ ∘ warp⁻¹ ∘ C ∘ matrix
        inv_crop = cv2.invertAffineTransform(self.crop)
        refined = compose(inv_crop, compose(cv2.invertAffineTransform(warp.astype(np.float64)),
                                            compose(self.crop, matrix)))
        ys, xs = np.nonzero(self.mask)
        probe = apply_affine(inv_crop, np.stack([xs, ys], axis=1)[:: max(1, len(xs) // 200)])
        moved = np.abs(apply_affine(refined, probe) - apply_affine(matrix, probe)).max()
        if not np.isfinite(moved) or moved > MAX_REFINE * self.iod_px:
            return matrix, False
        return refined, True


def register_to_reference(reference: np.ndarray, points: np.ndarray,
                          refiner: ImageRefiner | None = None,
                          image: np.ndarray | None = None) -> HeadMotion:
    """Register a frame to the reference frame: a rigid fit of the stable landmarks, then the
    image refinement when ``refiner`` and ``image`` are given (module docstring).

    Parameters
    ----------
    reference, points : ndarray of shape (K, 2)
        Landmarks (pixels) of the reference frame and of the frame to register, same scheme
        (K = 478 MediaPipe or 68 iBUG).
    refiner : ImageRefiner, optional
        Built on the reference frame.
    image : ndarray, optional
        The frame to register (RGB uint8), for the refinement.

    Returns
    -------
    HeadMotion

    Raises
    ------
    ValueError
        Different point counts, an unknown scheme, or degenerate points.
    """
    reference = np.asarray(reference, np.float64)
    points = np.asarray(points, np.float64)
    if reference.shape != points.shape:
        raise ValueError(f"register_to_reference: landmarks of shapes {reference.shape} and "
                         f"{points.shape}")
    idx = list(stable_indices(len(reference)))
    ref, pts = reference[idx], points[idx]
    m = similarity_transform(pts, ref, with_scale=False)
    refined = False
    if refiner is not None and image is not None:
        m, refined = refiner.refine(image, m)
    scale = similarity_params(similarity_transform(pts, ref))[3]
    raw = float(np.sqrt(np.nanmean(((pts - ref) ** 2).sum(axis=1))))
    res = float(np.sqrt(np.nanmean(((apply_affine(m, pts) - ref) ** 2).sum(axis=1))))
    tx, ty, rot, _ = similarity_params(m)
    return HeadMotion(m, tx, ty, rot, scale, raw, res, refined)


def unregistered() -> np.ndarray:
    """``(6,) float32`` of NaN: the stored head motion of a frame that could not be registered."""
    return np.full(len(HEAD_MOTION_FIELDS), np.nan, dtype=np.float32)

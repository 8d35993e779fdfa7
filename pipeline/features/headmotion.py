"""Rigid head motion between two frames, from face landmarks, and its compensation.

A micro-expression moves facial points by about 1–2 px; an everyday head drifts by several pixels
between an onset and an apex a few frames apart, and that rigid motion then dominates the optical
flow of the pair.  Before the flow, a frame is registered to the reference frame (the onset) by a
similarity transform (rotation, uniform scale, translation) fitted in least squares to the points
that move little with the 12 CD6ME AUs (:func:`pipeline.facedetect.stable_indices`), and the
residual motion of those points after registration is reported.

Choices the literature leaves open, made here: a similarity (no shear, no perspective: out-of-plane
rotation is left as a residual and reported); least squares without outlier rejection on a fixed
point set (the points are chosen to be rigid); distances reported as the root-mean-square over the
stable points, in pixels of the frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.facedetect import stable_indices
from pipeline.features.align import apply_affine, similarity_params, similarity_transform

#: Fields of :meth:`HeadMotion.as_array`, in order.
HEAD_MOTION_FIELDS = ("tx_px", "ty_px", "rotation_deg", "scale", "raw_px", "residual_px")


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
    """

    matrix: np.ndarray
    tx_px: float
    ty_px: float
    rotation_deg: float
    scale: float
    raw_px: float
    residual_px: float

    def as_array(self) -> np.ndarray:
        """``(6,) float32`` in :data:`HEAD_MOTION_FIELDS` order."""
        return np.array([self.tx_px, self.ty_px, self.rotation_deg, self.scale, self.raw_px,
                         self.residual_px], dtype=np.float32)

    def as_dict(self) -> dict[str, float]:
        return dict(zip(HEAD_MOTION_FIELDS, (round(float(v), 4) for v in self.as_array()),
                        strict=True))


def register_to_reference(reference: np.ndarray, points: np.ndarray) -> HeadMotion:
    """Fit the similarity that maps a frame's stable landmarks onto the reference frame's.

    Parameters
    ----------
    reference, points : ndarray of shape (K, 2)
        Landmarks (pixels) of the reference frame and of the frame to register, same scheme
        (K = 478 MediaPipe or 68 iBUG).

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
    m = similarity_transform(pts, ref)
    raw = float(np.sqrt(np.nanmean(((pts - ref) ** 2).sum(axis=1))))
    res = float(np.sqrt(np.nanmean(((apply_affine(m, pts) - ref) ** 2).sum(axis=1))))
    tx, ty, rot, scale = similarity_params(m)
    return HeadMotion(m, tx, ty, rot, scale, raw, res)


def unregistered() -> np.ndarray:
    """``(6,) float32`` of NaN: the stored head motion of a frame that could not be registered."""
    return np.full(len(HEAD_MOTION_FIELDS), np.nan, dtype=np.float32)

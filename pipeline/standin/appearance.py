"""Appearance change of the AUs: FACS shading and wrinkles placed by the face-mesh landmarks.

STANDIN.md item 5a.  A real micro-expression changes the skin's shading, not only its geometry: on
real CASME II about two thirds of the apex − onset change is left after flow compensation, also
where the face moves most (the real reference in STANDIN.md).  A pure warp of a photo leaves far
less.  So every CD6ME AU of an event also changes the intensity of the skin it acts on, as the
FACS manual describes its appearance changes (Ekman, Friesen & Hager, *Facial Action Coding
System*, 2002, chapters 2–5; the "appearance changes" of each AU):

=====  ==========================================================================================
AU1    horizontal wrinkles in the centre of the forehead (above the inner brows)
AU2    horizontal wrinkles on the lateral forehead (above the outer brows)
AU4    vertical (glabellar) furrows between the brows; the lowered brow shades the upper lid
AU5    the upper lid retracts: more of the bright eyeball shows above the iris
AU6    crow's-feet wrinkles at the outer eye corners; the raised cheek brightens; the
       infraorbital furrow below the lower lid deepens
AU7    the lower lid tightens and bulges: a fine furrow below it, the bulge brighter
AU9    wrinkles across the root and sides of the nose; the upper nasolabial furrow deepens
AU10   the upper part of the nasolabial furrow deepens beside the nose wings
AU12   the nasolabial furrow deepens down to the lip corners; the cheek below the eye is raised
AU14   dimples lateral to the lip corners
AU15   the skin below the lip corners bulges and shades; a short oblique furrow below each corner
AU17   the chin boss wrinkles (dimpling) and the mentolabial furrow below the lower lip deepens
=====  ==========================================================================================

The distractor AUs (AU20, AU24, AU25, AU38, AU43, AU45) change geometry only.

Each AU has a few *shading features* anchored on MediaPipe landmarks (the subject's right side and
its mirror, or the midline), each in the face frame of :mod:`pipeline.standin.aus` (``out`` away
from the midline, ``up`` towards the forehead; lengths in inter-ocular distances, IOD), with
``u`` the coordinate along the feature's axis and ``v`` across it:

``furrow``  a line: ``exp(−u²/2L²) · exp(−v²/2W²)`` (length ``L``, width ``W``)
``lines``   parallel wrinkles: ``exp(−u²/2L²) · exp(−v²/2W²) · cos(2π v / λ)`` (ridges along
            ``u``, spaced ``λ`` across)
``blob``    broad shading: ``exp(−(u² + v²)/2L²)``, brighter (weight > 0) or darker (< 0)

each times a signed weight (< 0: darker, a furrow's shadow; > 0: brighter, a bulge's highlight).
Their weighted sum is the AU's unit shading ``S`` (peak ``|S| = 1``).  An AU rendered with apex
amplitude ``a`` (% IOD) changes the base image multiplicatively,
``B'(p) = B(p) · (1 + s(k) · APPEARANCE_GAIN · a · S(p))`` — on the neutral face, before the warp, so
the shading moves with the skin — with ``s(k)`` the event's onset → apex → offset profile: the
change grows with the AU's intensity and its timing.  Unilateral actions shade only their side.

Relief.  FACS also describes the skin bunching, bulging and stretching where an AU moves it (the
brows' and forehead's bunching in AU1/AU4, the raised cheek of AU6, the bulges of AU9, AU10 and
AU17): the surface turns with respect to the light over the whole moving region.  The stand-in
shades that as ``−RELIEF_GAIN · div D_AU`` (:func:`relief`), the compression of the AU's own
apex displacement field ``D_AU`` (pixels per pixel: the same for the same motion in face units on
any frame size): smooth, co-located with the motion, growing with the amplitude.

Calibration (ours; FACS gives the places and shapes, not the contrasts).  ``APPEARANCE_GAIN`` and
``RELIEF_GAIN`` are chosen so that the stand-in's unexplained share of the apex − onset change, over
the face and where it moves most, approaches the real CASME II reference (0.69 and 0.66, STANDIN.md)
without inflating the flow: larger values let TV-L1 "explain" the shading as motion (the 99th
flow percentile rose 1.5× at twice the relief gain while the shares stayed put), so the shares
saturate near 0.6 on the stand-in (docs/standin-realism.md holds the measurements).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.standin.aus import AU_SPECS, SIDES, face_frame, side_groups

#: Relative intensity change at the apex per % IOD of AU amplitude (ours; module docstring).
APPEARANCE_GAIN = 0.05
#: Largest relative intensity change of all shadings together (keeps the base in range).
MAX_SHADING = 0.3
#: Relief shading per unit of compression of the skin, ``−RELIEF_GAIN · div D`` (ours).
RELIEF_GAIN = 0.5
KINDS = ("furrow", "lines", "blob")


@dataclass(frozen=True)
class ShadingFeature:
    """One FACS appearance change of an AU, in face-frame units.

    Attributes
    ----------
    right : tuple of int
        MediaPipe landmarks on the subject's right side (or the midline); their mean is the centre.
    left : tuple of int or None
        Mirror landmarks on the left side; ``None`` for a midline feature (bilateral actions only).
    kind : {"furrow", "lines", "blob"}
    weight : float
        Signed contrast: > 0 brighter, < 0 darker (``lines``: the sign of the first ridge).
    along_out, along_up : float
        Direction of the feature's axis ``u`` in the face frame (``out``: away from the midline).
    length, width : float
        Gaussian extents along and across the axis, IOD.
    wavelength : float
        Spacing of ``lines``, IOD.
    shift_out, shift_up : float
        Offset of the centre from the landmarks' mean, IOD.
    """

    right: tuple[int, ...]
    left: tuple[int, ...] | None
    kind: str
    weight: float
    along_out: float
    along_up: float
    length: float
    width: float
    wavelength: float = 0.0
    shift_out: float = 0.0
    shift_up: float = 0.0


_S = ShadingFeature
_BROW_IN_R, _BROW_IN_L = (107, 66, 55, 65), (336, 296, 285, 295)
_BROW_OUT_R, _BROW_OUT_L = (70, 63, 46, 53), (300, 293, 276, 283)
_LID_UP_R, _LID_UP_L = (159, 158, 160, 157, 161), (386, 385, 387, 384, 388)
_LID_LO_R, _LID_LO_L = (145, 144, 153), (374, 373, 380)
_CHEEK_R, _CHEEK_L = (117, 118, 50, 101), (346, 347, 280, 330)

#: Shading features per CD6ME AU (FACS appearance changes; module docstring).
SHADING: dict[int, tuple[ShadingFeature, ...]] = {
    1: (_S(_BROW_IN_R, _BROW_IN_L, "lines", -1.0, 1.0, 0.0, 0.16, 0.12, 0.13, shift_up=0.3),),
    2: (_S(_BROW_OUT_R, _BROW_OUT_L, "lines", -1.0, 1.0, 0.0, 0.16, 0.12, 0.13, shift_up=0.28),),
    4: (_S((55,), (285,), "furrow", -1.0, 0.0, 1.0, 0.09, 0.025, shift_out=-0.07, shift_up=0.03),
        _S(_LID_UP_R, _LID_UP_L, "blob", -0.6, 1.0, 0.0, 0.09, 0.09, shift_up=0.05)),
    5: (_S(_LID_UP_R, _LID_UP_L, "blob", 0.8, 1.0, 0.0, 0.05, 0.05, shift_up=-0.02),),
    6: (_S((33,), (263,), "lines", -0.8, 1.0, -0.15, 0.07, 0.09, 0.09, shift_out=0.1),
        _S(_CHEEK_R, _CHEEK_L, "blob", 0.7, 1.0, 0.0, 0.14, 0.14),
        _S(_LID_LO_R, _LID_LO_L, "furrow", -0.8, 1.0, 0.0, 0.14, 0.03, shift_up=-0.13)),
    7: (_S(_LID_LO_R, _LID_LO_L, "furrow", -1.0, 1.0, 0.0, 0.11, 0.022, shift_up=-0.07),
        _S(_LID_LO_R, _LID_LO_L, "blob", 0.5, 1.0, 0.0, 0.05, 0.05, shift_up=-0.02)),
    9: (_S((6, 197), None, "lines", -1.0, 1.0, 0.0, 0.1, 0.09, 0.08),
        _S((48, 64), (278, 294), "furrow", -0.8, 0.35, -1.0, 0.1, 0.03, shift_out=0.08)),
    10: (_S((206,), (426,), "furrow", -1.0, 0.35, -1.0, 0.12, 0.032, shift_up=0.03),),
    12: (_S((216, 206), (436, 426), "furrow", -1.0, 0.45, -1.0, 0.17, 0.035),
         _S(_CHEEK_R, _CHEEK_L, "blob", 0.5, 1.0, 0.0, 0.15, 0.15, shift_up=-0.05)),
    14: (_S((61,), (291,), "blob", -1.0, 1.0, 0.0, 0.035, 0.035, shift_out=0.07),),
    15: (_S((61, 146), (291, 375), "blob", -0.8, 1.0, 0.0, 0.07, 0.07, shift_up=-0.1),
         _S((61,), (291,), "furrow", -0.7, 0.3, -1.0, 0.07, 0.022, shift_out=0.03,
            shift_up=-0.1)),
    17: (_S((152, 175, 199), None, "lines", -0.7, 1.0, 0.0, 0.13, 0.1, 0.09, shift_up=0.12),
         _S((18,), None, "furrow", -1.0, 1.0, 0.0, 0.14, 0.03)),
}


def features(au: int, side: str, landmarks: np.ndarray) -> list[tuple[np.ndarray, np.ndarray,
                                                                       ShadingFeature]]:
    """Centre, axis and definition of each shading feature of an AU on one face.

    Parameters
    ----------
    au : int
    side : {"B", "R", "L"}
    landmarks : ndarray of shape (478, 2)
        MediaPipe landmarks, pixels.

    Returns
    -------
    list of (centre (2,) float64 px, axis (2,) float64 unit vector, ShadingFeature)
        Empty for an AU without appearance change (the distractors).

    Raises
    ------
    ValueError
        For an unknown side, or a unilateral side on an AU FACS scores bilaterally only.
    """
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    if au not in SHADING:
        return []
    if side != "B" and not AU_SPECS[au].unilateral:
        raise ValueError(f"AU{au} ({AU_SPECS[au].name}) is bilateral only; got side {side!r}")
    pts = np.asarray(landmarks, dtype=np.float64)
    fr = face_frame(pts)
    out = []
    for f in SHADING[au]:
        for idx, sgn in side_groups(f.right, f.left, side):
            out_dir = sgn * fr.ex if sgn else fr.ex
            centre = pts[list(idx)].mean(axis=0) + fr.iod * (f.shift_out * out_dir
                                                               + f.shift_up * fr.up)
            axis = f.along_out * out_dir + f.along_up * fr.up
            out.append((centre, axis / np.hypot(*axis), f))
    return out


def unit_shading(au: int, side: str, landmarks: np.ndarray,
                 roi: tuple[int, int, int, int]) -> np.ndarray | None:
    """The AU's unit shading ``S`` on a region: peak ``|S| = 1``, ``None`` without appearance change.

    Parameters
    ----------
    au : int
    side : {"B", "R", "L"}
    landmarks : ndarray of shape (478, 2)
        MediaPipe landmarks in the frame's pixels.
    roi : tuple of int
        ``(x0, y0, w, h)`` in frame pixels.

    Returns
    -------
    ndarray of shape (h, w), float32, or None

    Raises
    ------
    ValueError
        As :func:`features`.
    """
    feats = features(au, side, landmarks)
    if not feats:
        return None
    iod = face_frame(np.asarray(landmarks, dtype=np.float64)).iod
    x0, y0, w, h = roi
    xs, ys = np.meshgrid(np.arange(x0, x0 + w, dtype=np.float64),
                         np.arange(y0, y0 + h, dtype=np.float64))
    total = np.zeros((h, w))
    for centre, axis, f in feats:
        dx, dy = xs - centre[0], ys - centre[1]
        u = dx * axis[0] + dy * axis[1]
        v = -dx * axis[1] + dy * axis[0]
        length, width = f.length * iod, f.width * iod
        if f.kind == "blob":
            s = np.exp(-(u * u + v * v) / (2 * length * length))
        else:
            s = np.exp(-u * u / (2 * length * length) - v * v / (2 * width * width))
            if f.kind == "lines":
                s = s * np.cos(2 * np.pi * v / (f.wavelength * iod))
        total += f.weight * s
    peak = float(np.abs(total).max())
    if peak < 1e-9:
        return None
    return (total / peak).astype(np.float32)


def relief(displacement: np.ndarray) -> np.ndarray:
    """Shading of the skin's bunching and stretching: ``−RELIEF_GAIN · div D``.

    Parameters
    ----------
    displacement : ndarray of shape (h, w, 2), float
        An AU's apex displacement field, pixels.

    Returns
    -------
    ndarray of shape (h, w), float32
        Relative intensity change (dimensionless: ``div D`` is pixels per pixel, the same at any
        frame size for the same motion in face units).
    """
    div = np.gradient(displacement[..., 0], axis=1) + np.gradient(displacement[..., 1], axis=0)
    return (-RELIEF_GAIN * div).astype(np.float32)

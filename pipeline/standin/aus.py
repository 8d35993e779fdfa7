"""FACS-shaped displacement fields anchored on MediaPipe face-mesh landmarks.

Each action unit (AU) is described by a few *anchor groups*: landmark indices of the 478-point
MediaPipe face mesh on the subject's right side (and their mirror on the left side, or none for a
midline group), the direction in which the skin there moves, expressed in the face frame
(``out`` = away from the facial midline, ``up`` = towards the forehead, both in units of the
inter-ocular distance, IOD), a relative weight, and a Gaussian spatial extent σ (IOD units).  The
directions follow the FACS manual's description of each AU's appearance change (Ekman, Friesen &
Hager, *Facial Action Coding System*, 2002, chapters 2–5):

=====  ==========================================================================================
AU1    inner brow raiser: inner brows and the forehead above them move up
AU2    outer brow raiser: outer brows and the lateral forehead move up
AU4    brow lowerer: brows move down and together (the inner parts most), upper lids pushed down
AU5    upper lid raiser: upper eyelids move up
AU6    cheek raiser: cheeks and lower lids move up, skin at the outer eye corner drawn in
AU7    lid tightener: lower lids move up, upper lids slightly down (eye aperture narrows)
AU9    nose wrinkler: nose wings and sides move up, upper lip centre slightly up, inner brows down
AU10   upper lip raiser: upper lip moves up, nose wings slightly up
AU12   lip corner puller: lip corners move up and out, the cheek beside them too
AU14   dimpler: lip corners move in (tightened towards the midline)
AU15   lip corner depressor: lip corners and the lower lip beside them move down
AU17   chin raiser: chin boss and lower lip centre move up
=====  ==========================================================================================

Distractor AUs (not among the 12 CD6ME labels): AU20 lip stretcher (corners out), AU24 lip
presser (lips towards each other), AU25 lips part (lower lip down), AU38 nostril dilator (wings
out), AU43 eyes closed and AU45 blink (upper lids down).

A unit field is built as a smooth partition-of-unity blend of the anchors' Gaussian kernels
``g_a(x) = exp(-|x - p_a|² / 2σ_a²)``::

    U(x) = Φ(x) · Σ_a w_a v_a g_a(x) / Σ_a g_a(x),     Φ(x) = 1 - Π_a (1 - g_a(x))

so that where anchors overlap the field is their weighted mean direction and away from them it
falls off as a Gaussian; it is then scaled so that its largest magnitude on the pixel grid is 1.
A rendered AU of amplitude ``A`` pixels is ``A · U``: ``A`` is the apex displacement of the
structure that moves most, in pixels of the frame the field is computed on.  Unilateral variants
(``R``/``L``: the subject's right is the image left) keep only the anchors of that side.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.facedetect import eye_centres

#: The 12 CD6ME action units, in the order of the label columns.
CD6ME_AUS: tuple[int, ...] = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17)
#: Rendered AUs that are not CD6ME labels.
DISTRACTOR_AUS: tuple[int, ...] = (20, 24, 25, 38, 43, 45)


@dataclass(frozen=True)
class AnchorGroup:
    """Landmarks that move together in one direction.

    Attributes
    ----------
    right : tuple of int
        MediaPipe indices on the subject's right side (image left), or on the midline.
    left : tuple of int or None
        Mirror indices on the subject's left side; ``None`` for a midline group.
    out, up : float
        Direction in the face frame: ``out`` away from the midline, ``up`` towards the forehead.
    weight : float
        Relative magnitude of this group within the AU.
    sigma : float
        Gaussian extent in IOD units.
    shift_out, shift_up : float
        Offset of the anchor from the landmark in IOD units (e.g. forehead above a brow).
    """

    right: tuple[int, ...]
    left: tuple[int, ...] | None
    out: float
    up: float
    weight: float
    sigma: float
    shift_out: float = 0.0
    shift_up: float = 0.0


@dataclass(frozen=True)
class AUSpec:
    """An action unit's anchors and whether FACS allows it on one side only."""

    au: int
    name: str
    groups: tuple[AnchorGroup, ...]
    unilateral: bool


_G = AnchorGroup
_BROW_IN_R, _BROW_IN_L = (107, 66, 55, 65), (336, 296, 285, 295)
_BROW_MID_R, _BROW_MID_L = (105, 52), (334, 282)
_BROW_OUT_R, _BROW_OUT_L = (70, 63, 46, 53), (300, 293, 276, 283)
_LID_UP_R, _LID_UP_L = (159, 158, 160, 157, 161), (386, 385, 387, 384, 388)
_LID_LO_R, _LID_LO_L = (145, 144, 153, 163, 154), (374, 373, 380, 390, 381)
_CHEEK_R, _CHEEK_L = (117, 118, 50, 101), (346, 347, 280, 330)
_ALA_R, _ALA_L = (48, 64, 98, 129), (278, 294, 327, 358)
_ULIP_R, _ULIP_L = (37, 39, 40, 185), (267, 269, 270, 409)
_CORNER_R, _CORNER_L = (61, 146, 185), (291, 375, 409)
_LLIP_SIDE_R, _LLIP_SIDE_L = (91, 181), (321, 405)
_NASOLABIAL_R, _NASOLABIAL_L = (216, 206), (436, 426)

AU_SPECS: dict[int, AUSpec] = {
    1: AUSpec(1, "inner brow raiser", (
        _G(_BROW_IN_R, _BROW_IN_L, 0.0, 1.0, 1.0, 0.10),
        _G(_BROW_MID_R, _BROW_MID_L, 0.0, 1.0, 0.45, 0.10),
        _G((107,), (336,), 0.0, 1.0, 0.6, 0.14, shift_up=0.22),
    ), unilateral=True),
    2: AUSpec(2, "outer brow raiser", (
        _G(_BROW_OUT_R, _BROW_OUT_L, 0.0, 1.0, 1.0, 0.10),
        _G(_BROW_MID_R, _BROW_MID_L, 0.0, 1.0, 0.45, 0.10),
        _G((63,), (293,), 0.0, 1.0, 0.55, 0.14, shift_up=0.2),
    ), unilateral=True),
    4: AUSpec(4, "brow lowerer", (
        _G(_BROW_IN_R, _BROW_IN_L, -0.75, -0.65, 1.0, 0.10),
        _G(_BROW_MID_R + (63, 53), _BROW_MID_L + (293, 283), -0.2, -0.95, 0.6, 0.10),
        _G(_LID_UP_R[:3], _LID_UP_L[:3], 0.0, -1.0, 0.25, 0.08),
    ), unilateral=True),
    5: AUSpec(5, "upper lid raiser", (
        _G(_LID_UP_R, _LID_UP_L, 0.0, 1.0, 1.0, 0.075),
    ), unilateral=True),
    6: AUSpec(6, "cheek raiser", (
        _G(_CHEEK_R, _CHEEK_L, -0.2, 1.0, 1.0, 0.13),
        _G(_LID_LO_R[:3], _LID_LO_L[:3], 0.0, 1.0, 0.55, 0.075),
        _G((33,), (263,), -1.0, 0.2, 0.35, 0.08),
    ), unilateral=True),
    7: AUSpec(7, "lid tightener", (
        _G(_LID_LO_R, _LID_LO_L, 0.0, 1.0, 1.0, 0.075),
        _G(_LID_UP_R[:3], _LID_UP_L[:3], 0.0, -1.0, 0.35, 0.07),
    ), unilateral=True),
    9: AUSpec(9, "nose wrinkler", (
        _G(_ALA_R, _ALA_L, -0.1, 1.0, 1.0, 0.09),
        _G((195, 5), None, 0.0, 1.0, 0.45, 0.08),
        _G((0,), None, 0.0, 1.0, 0.3, 0.07),
        _G((55,), (285,), 0.0, -1.0, 0.3, 0.08),
    ), unilateral=False),
    10: AUSpec(10, "upper lip raiser", (
        _G(_ULIP_R, _ULIP_L, 0.0, 1.0, 1.0, 0.08),
        _G((0,), None, 0.0, 1.0, 1.0, 0.08),
        _G((98, 64), (327, 294), 0.0, 1.0, 0.3, 0.08),
    ), unilateral=True),
    12: AUSpec(12, "lip corner puller", (
        _G(_CORNER_R, _CORNER_L, 0.75, 0.65, 1.0, 0.09),
        _G(_NASOLABIAL_R, _NASOLABIAL_L, 0.6, 0.6, 0.45, 0.12),
    ), unilateral=True),
    14: AUSpec(14, "dimpler", (
        _G(_CORNER_R, _CORNER_L, -1.0, 0.15, 1.0, 0.085),
    ), unilateral=True),
    15: AUSpec(15, "lip corner depressor", (
        _G(_CORNER_R[:2], _CORNER_L[:2], 0.15, -1.0, 1.0, 0.085),
        _G(_LLIP_SIDE_R, _LLIP_SIDE_L, 0.0, -1.0, 0.5, 0.085),
    ), unilateral=True),
    17: AUSpec(17, "chin raiser", (
        _G((152, 175, 199, 200), None, 0.0, 1.0, 1.0, 0.14),
        _G((17, 18), None, 0.0, 1.0, 0.6, 0.08),
        _G((84,), (314,), 0.0, 1.0, 0.6, 0.08),
    ), unilateral=False),
    20: AUSpec(20, "lip stretcher", (
        _G(_CORNER_R[:2], _CORNER_L[:2], 1.0, -0.15, 1.0, 0.09),
    ), unilateral=True),
    24: AUSpec(24, "lip presser", (
        _G((0, 13), None, 0.0, -1.0, 0.7, 0.065),
        _G((37, 39), (267, 269), 0.0, -1.0, 0.7, 0.065),
        _G((17, 14), None, 0.0, 1.0, 0.7, 0.065),
        _G((84, 181), (314, 405), 0.0, 1.0, 0.7, 0.065),
    ), unilateral=False),
    25: AUSpec(25, "lips part", (
        _G((17, 14), None, 0.0, -1.0, 1.0, 0.075),
        _G((84, 181), (314, 405), 0.0, -1.0, 1.0, 0.075),
    ), unilateral=False),
    38: AUSpec(38, "nostril dilator", (
        _G(_ALA_R, _ALA_L, 1.0, 0.0, 1.0, 0.065),
    ), unilateral=False),
    43: AUSpec(43, "eyes closed", (
        _G(_LID_UP_R, _LID_UP_L, 0.0, -1.0, 1.0, 0.1),
    ), unilateral=False),
    45: AUSpec(45, "blink", (
        _G(_LID_UP_R, _LID_UP_L, 0.0, -1.0, 1.0, 0.1),
    ), unilateral=False),
}

SIDES = ("B", "R", "L")


@dataclass(frozen=True)
class FaceFrame:
    """The face's own axes in image pixels.

    Attributes
    ----------
    ex : ndarray of shape (2,), float64
        Unit vector from the subject's right eye centre to the left one (image left → right).
    up : ndarray of shape (2,), float64
        Unit vector towards the forehead (``ex`` turned by −90°; image y points down).
    mid : ndarray of shape (2,), float64
        Midpoint of the eye centres, pixels.
    iod : float
        Inter-ocular distance (eye centre to eye centre), pixels.
    """

    ex: np.ndarray
    up: np.ndarray
    mid: np.ndarray
    iod: float


def face_frame(landmarks: np.ndarray) -> FaceFrame:
    """Face axes from 478 MediaPipe landmarks ``(478, 2)`` in pixels.

    Raises
    ------
    ValueError
        If the landmarks are not ``(478, 2)`` or the eyes coincide.
    """
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.shape != (478, 2):
        raise ValueError(f"expected MediaPipe landmarks of shape (478, 2), got {pts.shape}")
    right, left = (np.asarray(c, np.float64) for c in eye_centres(pts))
    d = left - right
    iod = float(np.hypot(*d))
    if iod < 1e-6:
        raise ValueError("degenerate landmarks: the eye centres coincide")
    ex = d / iod
    return FaceFrame(ex=ex, up=np.array([ex[1], -ex[0]]), mid=(left + right) / 2, iod=iod)


def anchors(au: int, side: str, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Anchor positions, displacement directions and extents of one AU.

    Parameters
    ----------
    au : int
        An AU of :data:`AU_SPECS`.
    side : {"B", "R", "L"}
        Bilateral, or only the subject's right (image left) / left side.
    landmarks : ndarray of shape (478, 2)
        MediaPipe landmarks, pixels.

    Returns
    -------
    pos : ndarray of shape (K, 2), float64
        Anchor positions, pixels.
    vec : ndarray of shape (K, 2), float64
        Weighted displacement direction of each anchor, image axes (x right, y down).
    sigma : ndarray of shape (K,), float64
        Gaussian extent of each anchor, pixels.

    Raises
    ------
    ValueError
        For an unknown AU or side, or a unilateral side on an AU that FACS scores bilaterally only.
    """
    if au not in AU_SPECS:
        raise ValueError(f"no displacement field for AU{au}; known: {sorted(AU_SPECS)}")
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    spec = AU_SPECS[au]
    if side != "B" and not spec.unilateral:
        raise ValueError(f"AU{au} ({spec.name}) is bilateral only; got side {side!r}")
    pts = np.asarray(landmarks, dtype=np.float64)
    fr = face_frame(pts)
    pos, vec, sig = [], [], []
    for g in spec.groups:
        for idx, sgn in side_groups(g.right, g.left, side):
            out_dir = sgn * fr.ex
            v = g.weight * (g.out * out_dir + g.up * fr.up)
            for i in idx:
                p = pts[i] + fr.iod * (g.shift_out * out_dir + g.shift_up * fr.up)
                pos.append(p)
                vec.append(v)
                sig.append(g.sigma * fr.iod)
    return np.array(pos), np.array(vec), np.array(sig)


def side_groups(right: tuple[int, ...], left: tuple[int, ...] | None,
                side: str) -> list[tuple[tuple[int, ...], float]]:
    """The landmark groups an action on ``side`` uses, each with the sign of ``out`` along ``ex``.

    A midline group (``left`` is ``None``) acts only in bilateral actions (sign 0); the subject's
    right side is the image left, so its ``out`` direction is ``−ex`` (sign −1), the left's ``+ex``.

    Returns
    -------
    list of (tuple of int, float)
    """
    if left is None:
        return [(right, 0.0)] if side == "B" else []
    return ([(right, -1.0)] if side in ("B", "R") else []) + \
        ([(left, 1.0)] if side in ("B", "L") else [])


@dataclass
class UnitField:
    """A unit-peak displacement field on a rectangular region of interest.

    Attributes
    ----------
    field : ndarray of shape (h, w, 2), float32
        Displacement (dx, dy) per unit amplitude, pixels; max magnitude 1.
    x0, y0 : int
        Top-left corner of the region in frame pixels.
    peak_xy : tuple of float
        Frame position (x, y) of the largest displacement, pixels.
    peak_dir : tuple of float
        Unit direction (dx, dy) of the displacement there.
    max_gradient : float
        Largest spatial derivative of the unit field (per unit amplitude); an amplitude ``A``
        keeps the warp one-to-one while ``A · max_gradient < 1``.
    """

    field: np.ndarray
    x0: int
    y0: int
    peak_xy: tuple[float, float]
    peak_dir: tuple[float, float]
    max_gradient: float


def unit_field(au: int, side: str, landmarks: np.ndarray, roi: tuple[int, int, int, int]) -> UnitField:
    """The unit-peak displacement field of an AU on a region of interest.

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
    UnitField

    Raises
    ------
    ValueError
        As :func:`anchors`, or when the field vanishes on the region (anchors outside it).
    """
    pos, vec, sig = anchors(au, side, landmarks)
    x0, y0, w, h = roi
    xs = np.arange(x0, x0 + w, dtype=np.float64)
    ys = np.arange(y0, y0 + h, dtype=np.float64)
    num = np.zeros((h, w, 2))
    den = np.zeros((h, w))
    none = np.ones((h, w))
    for p, v, s in zip(pos, vec, sig, strict=True):
        # separable Gaussian kernel, evaluated on the grid
        gx = np.exp(-((xs - p[0]) ** 2) / (2 * s * s))
        gy = np.exp(-((ys - p[1]) ** 2) / (2 * s * s))
        g = gy[:, None] * gx[None, :]
        num += g[..., None] * v
        den += g
        none *= 1.0 - g
    phi = 1.0 - none
    field = num / np.maximum(den, 1e-12)[..., None] * phi[..., None]
    mag = np.hypot(field[..., 0], field[..., 1])
    peak = float(mag.max())
    if peak < 1e-9:
        raise ValueError(f"AU{au}{side}: the field vanishes on the region {roi}")
    field /= peak
    iy, ix = np.unravel_index(int(np.argmax(mag)), mag.shape)
    d = field[iy, ix]
    grads = [np.abs(np.gradient(field[..., c], axis=a)).max() for c in range(2) for a in range(2)]
    return UnitField(
        field=field.astype(np.float32),
        x0=int(x0),
        y0=int(y0),
        peak_xy=(float(x0 + ix), float(y0 + iy)),
        peak_dir=(float(d[0] / np.hypot(*d)), float(d[1] / np.hypot(*d))),
        max_gradient=float(max(grads)),
    )


def face_roi(landmarks: np.ndarray, frame_size: tuple[int, int], margin: float = 0.6) -> tuple[int, int, int, int]:
    """Region ``(x0, y0, w, h)`` holding every AU field: the landmarks' box ± ``margin`` IOD.

    Parameters
    ----------
    landmarks : ndarray of shape (478, 2)
        Pixels.
    frame_size : tuple of int
        ``(width, height)`` of the frame, pixels.
    margin : float
        IOD units; 0.6 IOD exceeds 3.5 σ of the widest anchor (σ = 0.14 IOD).
    """
    pts = np.asarray(landmarks, dtype=np.float64)
    iod = face_frame(pts).iod
    w, h = frame_size
    lo = np.floor(pts.min(axis=0) - margin * iod).astype(int)
    hi = np.ceil(pts.max(axis=0) + margin * iod).astype(int)
    x0, y0 = max(0, lo[0]), max(0, lo[1])
    x1, y1 = min(w, hi[0]), min(h, hi[1])
    return int(x0), int(y0), int(x1 - x0), int(y1 - y0)

"""Rendering a clip: a neutral photo warped sub-pixel by AU displacement fields over time.

The photo is placed once into the database's frame (similarity transform: scale to the subject's
inter-ocular distance, roll, position; area-averaged down-sampling), colour-graded (or turned grey)
and kept as a float32 *base* image.  Frame ``k`` is then::

    I_k(x) = g_k · B_k(p_k(x)) + n_k(x),    B_k(p) = B(p) · (1 + Σ_e s_e(k) H_e(p))

where ``p_k`` inverts the forward motion ``p ↦ R_k(p + D_k(p))`` — ``D_k = Σ_e s_e(k) F_e`` the
sum over the clip's events (micro/macro-expressions, blinks) of their AU displacement fields
``F_e = Σ_AU A_AU U_AU`` (:mod:`pipeline.standin.aus`) scaled by each event's temporal profile
``s_e`` (0 at onset, 1 at apex, 0 at offset, raised-cosine rise and fall), and ``R_k`` a small
rigid head motion (rotation about the face centre plus translation, a smooth random trajectory
on the clip's head clock, :class:`HeadMotion` ``time_scale``), and ``H_e = Σ_AU h_AU S_AU`` the
event's FACS shading and wrinkles (:mod:`pipeline.standin.appearance`: each AU's unit shading
``S_AU`` times a contrast ``h_AU`` proportional to its amplitude in % IOD), applied to the
neutral face before the warp so that it moves with the skin.
The inverse is solved by fixed-point iteration ``p ← R_k⁻¹(x) − D_k(p)`` (convergent since the
fields' gradients stay below 1) and applied with ``cv2.remap`` (bicubic) — a sub-pixel warp of the
photo, never a redraw.  ``g_k`` is an illumination flicker gain, ``n_k`` Gaussian sensor noise;
frames are finally JPEG-encoded with fixed encoder settings.

Units.  The renderer takes every level in units of the frame it draws: AU amplitudes, head
translation and tremor in pixels, noise in grey levels, a JPEG quality.  The label plan
(:mod:`pipeline.standin.labels`) derives them from face units — amplitudes and head motion in % of
the subject's inter-ocular distance, noise and JPEG at the release's level relative to the face —
so that every profile and frame size shows the same motion and nuisance relative to the face; the
per-database levels, their sources and the calibration to the real CASME II reference are in
:mod:`pipeline.standin.profiles` (module docstring) and docs/standin-realism.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field

import cv2
import numpy as np

from pipeline.standin import appearance as au_shading
from pipeline.standin import aus as au_fields

#: JPEG encoder settings: fixed so that the same frame always gives the same bytes.
JPEG_FLAGS = (
    cv2.IMWRITE_JPEG_OPTIMIZE, 0,
    cv2.IMWRITE_JPEG_PROGRESSIVE, 0,
    cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420,
)
#: Fixed-point iterations of the inverse warp (error ≲ max|∇D|³ · |D|).
INVERSE_ITERATIONS = 3
#: Largest enlargement of a photo (bicubic) when a database's faces are bigger than the photo's.
MAX_ENLARGEMENT = 1.6
#: An amplitude is capped so that ``A · max|∇U| ≤`` this (keeps every warp one-to-one).
MAX_WARP_GRADIENT = 0.5


@dataclass(frozen=True)
class Placement:
    """Where and how a subject's photo sits in the database's frames.

    Attributes
    ----------
    frame_size : tuple of int
        ``(width, height)`` of the frames, pixels.
    iod_px : float
        Inter-ocular distance (eye centre to eye centre) in the frame, pixels.
    centre : tuple of float
        Frame position ``(x, y)`` of the eye midpoint, pixels.
    roll_deg : float
        In-plane rotation of the head, degrees (counter-clockwise in the image).
    grey : bool
        Whether the database is grey (frames written single-channel).
    gains : tuple of float
        White-balance gains (R, G, B) applied in linear light.
    gamma : float
        Tone curve exponent applied to [0, 1] intensities.
    """

    frame_size: tuple[int, int]
    iod_px: float
    centre: tuple[float, float]
    roll_deg: float
    grey: bool
    gains: tuple[float, float, float] = (1.0, 1.0, 1.0)
    gamma: float = 1.0


@dataclass
class PlacedFace:
    """A photo placed into a frame.

    Attributes
    ----------
    base : ndarray of shape (H, W) or (H, W, 3), float32
        The neutral frame, intensities 0–255 (RGB or grey).
    landmarks : ndarray of shape (478, 2), float64
        The photo's landmarks mapped into the frame, pixels.
    affine : ndarray of shape (2, 3), float64
        Photo pixels → frame pixels.
    """

    base: np.ndarray
    landmarks: np.ndarray
    affine: np.ndarray


def place_photo(photo: np.ndarray, landmarks: np.ndarray, placement: Placement) -> PlacedFace:
    """Place an RGB photo into a frame at the subject's face size and position.

    The photo is first area-averaged down to the target scale (``cv2.INTER_AREA``, no aliasing;
    bicubic when a database's faces are larger than the photo's, up to ``MAX_ENLARGEMENT``), then
    rotated and translated (bicubic, border replicated: the studio backdrop extends).

    Parameters
    ----------
    photo : ndarray of shape (Hp, Wp, 3), uint8
        RGB photo.
    landmarks : ndarray of shape (478, 2)
        MediaPipe landmarks of the photo, pixels.
    placement : Placement

    Returns
    -------
    PlacedFace

    Raises
    ------
    ValueError
        If the photo is not an RGB uint8 image or the face would be enlarged more than
        ``MAX_ENLARGEMENT`` times.
    """
    if photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 photo (H, W, 3), got {photo.dtype} {photo.shape}")
    fr = au_fields.face_frame(landmarks)
    scale = placement.iod_px / fr.iod
    if scale > MAX_ENLARGEMENT:
        raise ValueError(
            f"the photo's inter-ocular distance ({fr.iod:.0f} px) is too small for the target "
            f"{placement.iod_px:.0f} px (at most {MAX_ENLARGEMENT}x enlargement)")
    hp, wp = photo.shape[:2]
    small = cv2.resize(photo, (max(1, round(wp * scale)), max(1, round(hp * scale))),
                       interpolation=cv2.INTER_AREA if scale <= 1 else cv2.INTER_CUBIC)
    sx, sy = small.shape[1] / wp, small.shape[0] / hp
    s_aff = np.array([[sx, 0.0, 0.0], [0.0, sy, 0.0]])
    mid_small = np.array([fr.mid[0] * sx, fr.mid[1] * sy])
    # roll of the photo's own eye line is removed, then the target roll applied
    own_roll = math.degrees(math.atan2(-fr.ex[1], fr.ex[0]))
    rot = cv2.getRotationMatrix2D((float(mid_small[0]), float(mid_small[1])),
                                  placement.roll_deg - own_roll, 1.0)
    rot[:, 2] += np.asarray(placement.centre) - mid_small
    w, h = placement.frame_size
    base = cv2.warpAffine(small.astype(np.float32), rot, (w, h), flags=cv2.INTER_CUBIC,
                          borderMode=cv2.BORDER_REPLICATE)
    base = np.clip(base, 0.0, 255.0)
    base = grade(base, placement.gains, placement.gamma)
    if placement.grey:
        base = cv2.cvtColor(base, cv2.COLOR_RGB2GRAY)
    affine = _compose(rot, s_aff)
    pts = np.asarray(landmarks, np.float64)
    lm = pts @ affine[:, :2].T + affine[:, 2]
    return PlacedFace(base=np.ascontiguousarray(base, dtype=np.float32), landmarks=lm, affine=affine)


def grade(image: np.ndarray, gains: Sequence[float], gamma: float) -> np.ndarray:
    """White balance and tone curve: ``255 · clip(gains · (I/255)^gamma)``; float32 in and out."""
    lin = np.power(np.clip(image, 0, 255) / 255.0, gamma) * np.asarray(gains, np.float32)
    return (np.clip(lin, 0.0, 1.0) * 255.0).astype(np.float32)


def _compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a ∘ b`` for 2x3 affine matrices."""
    a3 = np.vstack([a, [0, 0, 1]])
    b3 = np.vstack([b, [0, 0, 1]])
    return (a3 @ b3)[:2]


def temporal_profile(frames: np.ndarray, onset: int, apex: int, offset: int) -> np.ndarray:
    """Smooth onset → apex → offset intensity, 0 outside ``[onset, offset]``, 1 at the apex.

    Rise ``sin²(π/2 · (k − onset)/(apex − onset))``, fall ``cos²(π/2 · (k − apex)/(offset − apex))``
    (raised cosines: zero slope at onset, apex and offset).

    Parameters
    ----------
    frames : ndarray of shape (T,), int
        Frame numbers.
    onset, apex, offset : int
        Frame numbers, ``onset < apex < offset``.

    Returns
    -------
    ndarray of shape (T,), float64
    """
    k = np.asarray(frames, dtype=np.float64)
    s = np.zeros_like(k)
    rise = (k >= onset) & (k <= apex)
    fall = (k > apex) & (k <= offset)
    if apex > onset:
        s[rise] = np.sin(0.5 * np.pi * (k[rise] - onset) / (apex - onset)) ** 2
    else:
        s[k == apex] = 1.0
    if offset > apex:
        s[fall] = np.cos(0.5 * np.pi * (k[fall] - apex) / (offset - apex)) ** 2
    return s


@dataclass(frozen=True)
class AUAmplitude:
    """One rendered AU of an event: the AU, its side and its apex amplitude (pixels)."""

    au: int
    side: str
    amplitude_px: float


@dataclass(frozen=True)
class EventSpec:
    """A facial movement in a clip: AUs with a shared onset/apex/offset (frame numbers)."""

    aus: tuple[AUAmplitude, ...]
    onset: int
    apex: int
    offset: int


@dataclass(frozen=True)
class HeadMotion:
    """Rigid head motion: smooth random trajectory ``Σ_j c_j sin(2π f_j t + φ_j)`` per axis.

    Attributes
    ----------
    translation_px : float
        Scale of the translation (pixels); each axis is ``translation_px · Σ_j c_j sin(...)``.
    rotation_deg : float
        Scale of the in-plane rotation about the eye midpoint, degrees.
    freqs_hz : ndarray of shape (3, J)
        Frequencies for (x, y, rotation).
    phases : ndarray of shape (3, J)
        Phases, radians.
    coeffs : ndarray of shape (3, J)
        Mixing coefficients.
    jitter_px : float
        Standard deviation of frame-to-frame tremor added to the translation, pixels.
    time_scale : float
        Seconds of head motion per second of frame time (1: the frame clock).  Below 1 where a
        profile stretched a short event over more frames than its duration fills, above 1 where
        it squeezed a long one, so that the head's drift onset → apex follows the event's own
        timing (:func:`pipeline.standin.labels._head_time_scale`).
    """

    translation_px: float
    rotation_deg: float
    freqs_hz: np.ndarray
    phases: np.ndarray
    coeffs: np.ndarray
    jitter_px: float = 0.0
    time_scale: float = 1.0

    @staticmethod
    def still() -> HeadMotion:
        z = np.zeros((3, 1))
        return HeadMotion(0.0, 0.0, z, z, z, 0.0)

    @staticmethod
    def draw(rng: np.random.Generator, translation_px: float, rotation_deg: float,
             jitter_px: float = 0.0, n_components: int = 3, time_scale: float = 1.0) -> HeadMotion:
        """A random trajectory with 0.2–2.5 Hz components (head sway, breathing, tremor)."""
        return HeadMotion(
            translation_px=float(translation_px),
            rotation_deg=float(rotation_deg),
            freqs_hz=rng.uniform(0.2, 2.5, size=(3, n_components)),
            phases=rng.uniform(0, 2 * np.pi, size=(3, n_components)),
            coeffs=rng.normal(0, 1 / math.sqrt(n_components), size=(3, n_components)),
            jitter_px=float(jitter_px),
            time_scale=float(time_scale),
        )

    def at(self, t: np.ndarray) -> np.ndarray:
        """``(T, 3)`` array of (tx px, ty px, θ degrees) at frame times ``t`` (seconds; the
        trajectory is evaluated at ``time_scale · t``)."""
        t = self.time_scale * np.asarray(t, np.float64)[:, None, None]
        waves = (self.coeffs * np.sin(2 * np.pi * self.freqs_hz * t + self.phases)).sum(-1)
        scale = np.array([self.translation_px, self.translation_px, self.rotation_deg])
        return waves * scale


@dataclass(frozen=True)
class Nuisance:
    """Per-clip photometric nuisances.

    Attributes
    ----------
    flicker : float
        Relative amplitude of the illumination flicker (0.01 = ±1 %).
    flicker_hz : float
        Flicker frequency of the light (Hz); sampled at the clip's frame rate (aliased).
    flicker_phase : float
        Radians.
    noise_sigma : float
        Standard deviation of Gaussian sensor noise, grey levels.
    jpeg_quality : int
        JPEG quality 0–100.
    """

    flicker: float = 0.0
    flicker_hz: float = 100.0
    flicker_phase: float = 0.0
    noise_sigma: float = 0.0
    jpeg_quality: int = 95


@dataclass
class PreparedEvent:
    """An event's summed AU field and shading on the face region, and its timing."""

    field: np.ndarray             # (h, w, 2) float32, pixels at apex
    onset: int
    apex: int
    offset: int
    amplitudes: list[dict] = dc_field(default_factory=list)
    shade: np.ndarray | None = None   # (h, w) float32, relative intensity change at apex


def prepare_events(placed: PlacedFace, events: Sequence[EventSpec],
                   roi: tuple[int, int, int, int], appearance: bool = True) -> list[PreparedEvent]:
    """Sum each event's AU fields and AU shadings at their amplitudes on the face region.

    An amplitude that would make the warp fold (``A · max|∇U| > MAX_WARP_GRADIENT``) is capped;
    the returned ``amplitudes`` record per AU the requested and the rendered amplitude, the peak
    position and direction, and the peak relative intensity change of its shading at the apex
    (``appearance``: ``APPEARANCE_GAIN`` × the rendered amplitude in % IOD,
    :mod:`pipeline.standin.appearance`), so the ground truth holds what was actually drawn.

    Parameters
    ----------
    placed : PlacedFace
    events : sequence of EventSpec
    roi : tuple of int
        ``(x0, y0, w, h)``, frame pixels.
    appearance : bool
        Add the AUs' FACS shading (the build always does; ``False`` renders geometry only).

    Returns
    -------
    list of PreparedEvent
    """
    x0, y0, w, h = roi
    iod = au_fields.face_frame(placed.landmarks).iod
    out = []
    for ev in events:
        total = np.zeros((h, w, 2), np.float32)
        shade = np.zeros((h, w), np.float32)
        amps = []
        for a in ev.aus:
            uf = au_fields.unit_field(a.au, a.side, placed.landmarks, roi)
            cap = MAX_WARP_GRADIENT / max(uf.max_gradient, 1e-9)
            amp = float(min(a.amplitude_px, cap))
            total += amp * uf.field
            us = au_shading.unit_shading(a.au, a.side, placed.landmarks, roi) if appearance else None
            gain = 0.0 if us is None else au_shading.APPEARANCE_GAIN * 100.0 * amp / iod
            if us is not None:
                shade += np.float32(gain) * us
                shade += au_shading.relief(amp * uf.field)
            amps.append({
                "au": a.au, "side": a.side, "amplitude_px": amp,
                "requested_px": float(a.amplitude_px), "capped": bool(amp < a.amplitude_px),
                "peak_xy": uf.peak_xy, "peak_dir": uf.peak_dir, "appearance": gain,
            })
        out.append(PreparedEvent(total, ev.onset, ev.apex, ev.offset, amps,
                                 shade if shade.any() else None))
    return out


def render_frames(placed: PlacedFace, events: Sequence[PreparedEvent], roi: tuple[int, int, int, int],
                  frames: Sequence[int], fps: float, head: HeadMotion, nuisance: Nuisance,
                  rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Render the frames of a clip.

    Parameters
    ----------
    placed : PlacedFace
    events : sequence of PreparedEvent
        From :func:`prepare_events` on the same ``roi``.
    roi : tuple of int
        ``(x0, y0, w, h)`` face region holding the fields, frame pixels.
    frames : sequence of int
        Frame numbers to render, ascending.
    fps : float
        Frame rate (frames per second), for the head trajectory and the flicker.
    head : HeadMotion
    nuisance : Nuisance
    rng : numpy.random.Generator
        Source of the sensor noise and tremor (consumed in frame order).

    Yields
    ------
    ndarray of shape (H, W) or (H, W, 3), uint8
        Grey or RGB frame.
    """
    frames = np.asarray(frames, dtype=np.int64)
    h_img, w_img = placed.base.shape[:2]
    x0, y0, rw, rh = roi
    xs, ys = np.meshgrid(np.arange(w_img, dtype=np.float32), np.arange(h_img, dtype=np.float32))
    cx, cy = (float(v) for v in placed.landmarks[[33, 133, 362, 263]].mean(axis=0))
    t = (frames - frames[0]) / float(fps)
    rigid = head.at(t)
    profiles = [temporal_profile(frames, e.onset, e.apex, e.offset) for e in events]
    # window of output pixels whose source can fall inside the face region
    pad = int(math.ceil(np.abs(rigid[:, :2]).max(initial=0.0) + 4 * head.jitter_px
                        + abs(math.radians(float(np.abs(rigid[:, 2]).max(initial=0.0))))
                        * max(w_img, h_img) + 4))
    wx0, wy0 = max(0, x0 - pad), max(0, y0 - pad)
    wx1, wy1 = min(w_img, x0 + rw + pad), min(h_img, y0 + rh + pad)
    for i, k in enumerate(frames):
        tx, ty, theta = rigid[i]
        if head.jitter_px > 0:
            tx, ty = tx + rng.normal(0, head.jitter_px), ty + rng.normal(0, head.jitter_px)
        # z = R_k^{-1}(x): undo translation, then rotate by -theta about the face centre
        c, s = math.cos(math.radians(theta)), math.sin(math.radians(theta))
        dx, dy = xs - cx - tx, ys - cy - ty
        zx = (cx + c * dx - s * dy).astype(np.float32)
        zy = (cy + s * dx + c * dy).astype(np.float32)
        weights = [p[i] for p in profiles]
        base = placed.base
        shading = [(wt, ev.shade) for wt, ev in zip(weights, events, strict=True)
                   if wt > 0 and ev.shade is not None]
        if shading:
            # appearance change on the neutral face, before the warp: it moves with the skin
            rel = np.zeros((rh, rw), np.float32)
            for wt, sh in shading:
                rel += np.float32(wt) * sh
            np.clip(rel, -au_shading.MAX_SHADING, au_shading.MAX_SHADING, out=rel)
            base = placed.base.copy()
            region = base[y0:y0 + rh, x0:x0 + rw]
            region *= 1.0 + (rel if base.ndim == 2 else rel[..., None])
        if any(wt > 0 for wt in weights):
            disp = np.zeros((rh, rw, 2), np.float32)
            for wt, ev in zip(weights, events, strict=True):
                if wt > 0:
                    disp += np.float32(wt) * ev.field
            wzx = zx[wy0:wy1, wx0:wx1]
            wzy = zy[wy0:wy1, wx0:wx1]
            px, py = wzx.copy(), wzy.copy()
            for _ in range(INVERSE_ITERATIONS):
                d = cv2.remap(disp, px - x0, py - y0, interpolation=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
                px, py = wzx - d[..., 0], wzy - d[..., 1]
            zx[wy0:wy1, wx0:wx1] = px
            zy[wy0:wy1, wx0:wx1] = py
        img = cv2.remap(base, zx, zy, interpolation=cv2.INTER_CUBIC,
                        borderMode=cv2.BORDER_REPLICATE)
        gain = 1.0 + nuisance.flicker * math.sin(
            2 * math.pi * nuisance.flicker_hz * float(k) / fps + nuisance.flicker_phase)
        if gain != 1.0:
            img *= np.float32(gain)
        if nuisance.noise_sigma > 0:
            img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(nuisance.noise_sigma)
        yield np.clip(np.rint(img), 0, 255).astype(np.uint8)


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of a grey ``(H, W)`` or RGB ``(H, W, 3)`` uint8 frame, fixed encoder settings.

    Raises
    ------
    RuntimeError
        If OpenCV fails to encode.
    """
    img = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality), *JPEG_FLAGS])
    if not ok:
        raise RuntimeError("cv2.imencode failed to encode a JPEG frame")
    return buf.tobytes()


def head_shift(head: HeadMotion, placed: PlacedFace, fps: float, frame0: int,
               frame_a: int, frame_b: int) -> float:
    """Rigid head displacement between frames ``frame_a`` and ``frame_b`` (tremor excluded).

    Returns
    -------
    float
        Largest x or y displacement, pixels, of the nose tip, chin and forehead landmarks (points
        away from the rotation centre, so rotation counts too).
    """
    r = head.at(np.array([(frame_a - frame0) / fps, (frame_b - frame0) / fps]))
    lm = placed.landmarks
    c = lm[[33, 133, 362, 263]].mean(axis=0)
    p = lm[[1, 152, 10]]            # nose tip, chin, forehead: points at a distance from c
    out = []
    for tx, ty, th in r:
        a = math.radians(th)
        rot = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
        out.append((p - c) @ rot.T + c + [tx, ty])
    return float(np.abs(out[1] - out[0]).max())


def render_probe(photo: np.ndarray, landmarks: np.ndarray, aus: dict[tuple[int, str], float],
                 frame_size: tuple[int, int], iod_px: float, grey: bool = False,
                 appearance: bool = True) -> tuple[np.ndarray, np.ndarray, PlacedFace,
                                                   PreparedEvent, tuple[int, int, int, int]]:
    """Onset and apex frames of one event without any nuisance, through the build's own code path.

    Parameters
    ----------
    photo : ndarray of shape (Hp, Wp, 3), uint8
        RGB photo.
    landmarks : ndarray of shape (478, 2)
        Its MediaPipe landmarks, pixels.
    aus : dict
        ``{(au, side): amplitude_px}``.
    frame_size : tuple of int
        ``(width, height)``.
    iod_px : float
        Target inter-ocular distance, pixels.
    grey : bool
    appearance : bool
        With the AUs' shading (as the build); ``False``: the warp alone.

    Returns
    -------
    onset, apex : ndarray of shape (H, W[, 3]), uint8
    placed : PlacedFace
    event : PreparedEvent
        Holds the rendered amplitudes, the summed field and the summed shading.
    roi : tuple of int
    """
    w, h = frame_size
    placement = Placement(frame_size=frame_size, iod_px=iod_px, centre=(w / 2, h * 0.42),
                          roll_deg=0.0, grey=grey)
    placed = place_photo(photo, landmarks, placement)
    roi = au_fields.face_roi(placed.landmarks, frame_size)
    spec = EventSpec(tuple(AUAmplitude(a, s, amp) for (a, s), amp in aus.items()), 0, 2, 4)
    [event] = prepare_events(placed, [spec], roi, appearance=appearance)
    onset, apex = render_frames(placed, [event], roi, [0, 2], 10.0, HeadMotion.still(), Nuisance(),
                                np.random.default_rng(0))
    return onset, apex, placed, event, roi

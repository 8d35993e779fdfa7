"""Synthetic motion-magnification training pairs after Oh et al. (2018, Sec. 3.2), on the fly.

Oh et al. train on frames they render themselves: a background (an MS-COCO image) and pasted
foreground objects (segmented PASCAL VOC objects) move by independent, small, sub-pixel
translations from frame A to frame B; the ground-truth magnified frame Y is rendered with both
motions multiplied by α (α up to 100, the magnified motion capped at 30 px); some backgrounds are
made low-contrast and some kept static so that the network learns to magnify faint texture and
local motion; the frames are quantised to 8 bits and the inputs get noise.  For the
texture/shape disentanglement losses there is a third frame: C is frame B *without* colour
perturbation, while B and Y share one random colour perturbation, so texture(C) = texture(A)
(same colours, other motion) and shape(C) = shape(B) (same motion, other colours).

What differs here (MS-COCO and PASCAL VOC are not available):

* backgrounds: random crops of the London-set face photos (``MER_FACES_DIR``; the photos are
  split by identity, every ``verify_every``-th one held out for the verification pairs), at a
  random scale, or procedural textures (oriented gratings, 1/f^β coloured noise, blurred
  stripes/checkers), each with probability set by ``photo_share``;
* foreground objects: 0–3 random shapes (ellipses, random star-shaped polygons) with
  anti-aliased masks (4x super-sampling), filled with a photo crop or a procedural texture;
  all objects of a sample share one motion, independent of the background's;
* sub-pixel translation by Lanczos-4 interpolation of a larger canvas (no border effects),
  the same interpolation for A, B, C and Y;
* noise: signal-dependent Gaussian (shot-noise-like, std ∝ sqrt(I)) on the inputs A, B, C only,
  then 8-bit rounding of every frame (Y stays noise-free);
* colour perturbation: per-channel gain and offset.

Every sample is a deterministic function of ``(seed, index)`` (``numpy.random.default_rng``),
so training data are reproducible without being stored.  Images are RGB ``uint8`` (H, W, 3).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.params import env_or

log = logging.getLogger(__name__)

__all__ = [
    "SyntheticConfig",
    "SyntheticPairs",
    "TextureBank",
    "render_translated",
    "verification_pairs",
]

_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


class TextureBank:
    """Background and object textures: face photos (one split) and procedural textures.

    Parameters
    ----------
    faces_dir : path or None
        Folder searched recursively for the face photos; ``None``: ``$MER_FACES_DIR``.
    split : {"train", "verify"}
        ``verify`` keeps every ``verify_every``-th photo (sorted by path), ``train`` the others.
    photo_size : int
        Side (pixels) the photos are resized to in memory (INTER_AREA).
    verify_every : int
        Hold-out period of the photo split.
    require_photos : bool
        Raise when no photo is found (``photo_share > 0``); else only procedural textures.

    Raises
    ------
    FileNotFoundError
        If photos are required and the folder is unset, missing, or holds no image.
    """

    def __init__(self, faces_dir: str | os.PathLike | None, split: str = "train",
                 photo_size: int = 512, verify_every: int = 5, require_photos: bool = True):
        if split not in ("train", "verify"):
            raise ValueError(f"split must be 'train' or 'verify', got {split!r}")
        self.photos: list[np.ndarray] = []
        folder = env_or(None if faces_dir is None else str(faces_dir), "MER_FACES_DIR")
        if folder is None:
            if require_photos:
                raise FileNotFoundError(
                    "synthetic magnification pairs: no face-photo folder (set "
                    "magnifier.synthetic.faces_dir or $MER_FACES_DIR, or photo_share: 0 to use "
                    "procedural textures only)")
            return
        root = Path(folder)
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
        if not files:
            if require_photos:
                raise FileNotFoundError(f"{root}: no face photos (*.jpg, *.png) found for the "
                                        "synthetic magnification pairs")
            return
        keep = [p for i, p in enumerate(files) if (i % verify_every == 0) == (split == "verify")]
        for p in keep:
            img = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if img is None:
                raise FileNotFoundError(f"{p}: unreadable image (expected a face photo)")
            img = cv2.resize(img, (photo_size, photo_size), interpolation=cv2.INTER_AREA)
            self.photos.append(np.ascontiguousarray(img[:, :, ::-1]))
        if not self.photos and require_photos:
            raise FileNotFoundError(f"{root}: no photo left in the {split!r} split")
        log.debug("texture bank %s: %d photos from %s", split, len(self.photos), root)

    def photo_patch(self, rng: np.random.Generator, side: int) -> np.ndarray:
        """A random crop of a random photo, resized to ``side`` (float32 (side, side, 3), 0–255).

        The crop centre lies in the central 60 % of the photo (face and hair, not the plain
        studio backdrop) and its side is 0.2–0.6 of the photo's.
        """
        photo = self.photos[int(rng.integers(len(self.photos)))]
        n = photo.shape[0]
        crop = int(rng.uniform(0.2, 0.6) * n)
        cx, cy = rng.uniform(0.2 * n, 0.8 * n, size=2)
        x0 = int(np.clip(cx - crop / 2, 0, n - crop))
        y0 = int(np.clip(cy - crop / 2, 0, n - crop))
        patch = photo[y0:y0 + crop, x0:x0 + crop]
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        interp = cv2.INTER_AREA if crop > side else cv2.INTER_CUBIC
        return cv2.resize(np.ascontiguousarray(patch), (side, side),
                          interpolation=interp).astype(np.float32)

    @staticmethod
    def procedural(rng: np.random.Generator, side: int,
                   kinds: Sequence[str] = ("gratings", "noise", "stripes")) -> np.ndarray:
        """A procedural texture (float32 (side, side, 3), 0–255).

        ``kinds`` to draw from: ``gratings`` (sum of 2–5 oriented sinusoids, 0.02–0.3 cycles/px),
        ``noise`` (coloured 1/f^β noise, β 1–2.5), ``stripes`` (blurred stripes or checkers).
        Periodic kinds make a displacement ambiguous (modulo the period): the verification pairs
        use ``noise`` only.
        """
        kind = ("gratings", "noise", "stripes").index(kinds[int(rng.integers(len(kinds)))])
        yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
        if kind == 0:  # sum of oriented sinusoidal gratings, each with its own colour
            img = np.zeros((side, side, 3), np.float32)
            for _ in range(int(rng.integers(2, 6))):
                f = rng.uniform(0.02, 0.3)  # cycles per pixel, below Nyquist
                th = rng.uniform(0, math.pi)
                wave = np.sin(2 * math.pi * f * (xx * math.cos(th) + yy * math.sin(th))
                              + rng.uniform(0, 2 * math.pi))
                img += wave[..., None] * rng.uniform(-1, 1, size=3).astype(np.float32)
        elif kind == 1:  # coloured 1/f^beta noise
            beta = rng.uniform(1.0, 2.5)
            fy = np.fft.fftfreq(side)[:, None]
            fx = np.fft.rfftfreq(side)[None, :]
            amp = 1.0 / np.maximum(np.hypot(fx, fy), 1.0 / side) ** (beta / 2 + 0.5)
            img = np.stack([np.fft.irfft2(amp * np.exp(2j * math.pi * rng.random(amp.shape)),
                                          s=(side, side)) for _ in range(3)], -1)
            mix = rng.uniform(0.3, 1.0, size=(3, 3))
            img = (img @ mix).astype(np.float32)
        else:  # blurred stripes or checkers at a random angle and period
            period = rng.uniform(4, 24)
            th = rng.uniform(0, math.pi)
            u = xx * math.cos(th) + yy * math.sin(th)
            v = -xx * math.sin(th) + yy * math.cos(th)
            pat = np.sign(np.sin(2 * math.pi * u / period))
            if rng.random() < 0.5:
                pat = pat * np.sign(np.sin(2 * math.pi * v / period))
            pat = cv2.GaussianBlur(pat.astype(np.float32), (0, 0), rng.uniform(0.8, 2.0))
            c1, c2 = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
            img = (0.5 * (pat[..., None] + 1)) * (c1 - c2) + c2
            return np.clip(img, 0, 255).astype(np.float32)
        img -= img.mean(axis=(0, 1), keepdims=True)
        img /= max(float(np.abs(img).max()), 1e-6)
        img = img * rng.uniform(40, 120) + rng.uniform(60, 190, size=3).astype(np.float32)
        return np.clip(img, 0, 255).astype(np.float32)

    def texture(self, rng: np.random.Generator, side: int, photo_share: float,
                kinds: Sequence[str] = ("gratings", "noise", "stripes")) -> np.ndarray:
        """A photo crop with probability ``photo_share`` (when photos exist), else procedural."""
        if self.photos and rng.random() < photo_share:
            return self.photo_patch(rng, side)
        return self.procedural(rng, side, kinds)


def render_translated(canvas: np.ndarray, shift: Sequence[float], size: int,
                      margin: int) -> np.ndarray:
    """The central ``size`` x ``size`` window of ``canvas`` translated by ``shift`` pixels.

    Parameters
    ----------
    canvas : ndarray of shape (size + 2·margin, size + 2·margin[, C]), float32
    shift : (dx, dy), pixels
        Content moves right/down for positive dx/dy: out(x, y) = canvas(x + margin − dx,
        y + margin − dy), Lanczos-4 interpolated.
    size, margin : int
        Output side and canvas margin (pixels); |shift| must stay below ``margin − 4``.

    Returns
    -------
    ndarray of shape (size, size[, C]), float32
    """
    dx, dy = float(shift[0]), float(shift[1])
    if max(abs(dx), abs(dy)) > margin - 4:
        raise ValueError(f"shift ({dx:.2f}, {dy:.2f}) px exceeds the canvas margin {margin} − 4")
    m = np.array([[1.0, 0.0, margin - dx], [0.0, 1.0, margin - dy]], dtype=np.float64)
    return cv2.warpAffine(canvas, m, (size, size), flags=cv2.INTER_LANCZOS4 | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REFLECT)


def _shape_mask(rng: np.random.Generator, side: int, supersample: int = 4) -> np.ndarray:
    """An anti-aliased mask (float32 (side, side), 0–1) of a random ellipse or star polygon."""
    big = side * supersample
    mask = np.zeros((big, big), np.uint8)
    radius = rng.uniform(0.12, 0.3) * big
    cx, cy = rng.uniform(0.25 * big, 0.75 * big, size=2)
    if rng.random() < 0.4:
        axes = (int(radius), int(radius * rng.uniform(0.4, 1.0)))
        cv2.ellipse(mask, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
    else:
        n = int(rng.integers(5, 10))
        angles = np.sort(rng.uniform(0, 2 * math.pi, size=n))
        radii = radius * rng.uniform(0.5, 1.0, size=n)
        pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], -1)
        cv2.fillPoly(mask, [pts.astype(np.int32)], 255)
    return cv2.resize(mask, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


@dataclass
class SyntheticConfig:
    """Parameters of the synthetic pairs (``magnifier.synthetic`` in params.yaml).

    Attributes
    ----------
    size : int
        Side of the rendered frames, pixels (paper: 384).
    alpha_min, alpha_max : float
        Range of the uniformly drawn magnification factor α (paper: up to 100).
    max_input_motion : float
        Largest input displacement |d| (pixels) of background and foreground.
    max_magnified_motion : float
        Cap on |α·d| (pixels; paper: 30); |d| is drawn uniformly in [min_input_motion,
        min(max_input_motion, cap/α)].
    min_input_motion : float
        Smallest input displacement |d| (pixels; 0: Oh et al.'s draw from 0).  A floor of
        ~0.05 px keeps the inputs' motion above the 8-bit quantisation and noise floor, where
        it is observable at all; the magnified motion α·d then spans α·0.05 … cap.
    photo_share : float
        Probability that a background or object texture is a face-photo crop.
    p_static_background : float
        Probability that the background does not move (only the objects do).
    p_low_contrast : float
        Probability that the whole scene's contrast is scaled by 0.1–0.5.
    max_objects : int
        Foreground objects drawn uniformly from 0..max_objects.
    noise_max : float
        Largest noise std at grey level 128 (grey levels, 0–255), drawn uniformly from 0.
    color_perturb : bool
        Whether B and Y get a shared random per-channel gain/offset (C and A do not).
    procedural_kinds : sequence of str
        Procedural textures to draw from (:meth:`TextureBank.procedural`).
    """

    size: int = 384
    alpha_min: float = 1.0
    alpha_max: float = 100.0
    max_input_motion: float = 2.0
    max_magnified_motion: float = 30.0
    min_input_motion: float = 0.0
    photo_share: float = 0.5
    p_static_background: float = 0.3
    p_low_contrast: float = 0.2
    max_objects: int = 3
    noise_max: float = 3.0
    color_perturb: bool = True
    procedural_kinds: tuple[str, ...] = ("gratings", "noise", "stripes")

    @classmethod
    def from_mapping(cls, cfg: dict[str, Any] | None, **over: Any) -> SyntheticConfig:
        """Build from a params.yaml mapping (unknown keys are rejected) plus keyword overrides."""
        data = {**(cfg or {}), **over}
        for key in ("faces_dir", "verify_every", "photo_size"):  # TextureBank's
            data.pop(key, None)
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"magnifier.synthetic: unknown keys {unknown}; known: {sorted(names)}")
        if "procedural_kinds" in data:
            data["procedural_kinds"] = tuple(data["procedural_kinds"])
        return cls(**data)


def _noisy_uint8(img: np.ndarray, rng: np.random.Generator, std128: float) -> np.ndarray:
    if std128 > 0:
        std = std128 * np.sqrt(np.clip(img, 0, 255) / 128.0)
        img = img + rng.standard_normal(img.shape).astype(np.float32) * std
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


class SyntheticPairs:
    """Training samples (A, B, C, Y, α) rendered on the fly, deterministic per ``(seed, index)``.

    Parameters
    ----------
    bank : TextureBank
    config : SyntheticConfig
    seed : int

    ``pairs[i]`` returns a dict: ``a``, ``b``, ``c``, ``y`` uint8 (H, W, 3); ``alpha`` float;
    ``d_fg``, ``d_bg`` float32 (2,) the input displacements (dx, dy) in pixels.  ``b`` = ``c``
    and ``y`` unperturbed when ``config.color_perturb`` is false.  :meth:`batch` stacks
    consecutive samples.
    """

    def __init__(self, bank: TextureBank, config: SyntheticConfig, seed: int):
        self.bank = bank
        self.cfg = config
        self.seed = int(seed)

    def _motion(self, rng: np.random.Generator, alpha: float) -> np.ndarray:
        cfg = self.cfg
        hi = min(cfg.max_input_motion, cfg.max_magnified_motion / alpha)
        r = rng.uniform(min(cfg.min_input_motion, hi), hi)
        th = rng.uniform(0, 2 * math.pi)
        return np.array([r * math.cos(th), r * math.sin(th)], np.float32)

    def __getitem__(self, index: int) -> dict[str, Any]:
        cfg = self.cfg
        rng = np.random.default_rng([self.seed, int(index)])
        size = cfg.size
        margin = int(math.ceil(cfg.max_magnified_motion)) + 6
        side = size + 2 * margin
        alpha = float(rng.uniform(cfg.alpha_min, cfg.alpha_max))
        d_fg = self._motion(rng, alpha)
        d_bg = (np.zeros(2, np.float32) if rng.random() < cfg.p_static_background
                else self._motion(rng, alpha))
        kinds = tuple(cfg.procedural_kinds)
        bg = self.bank.texture(rng, side, cfg.photo_share, kinds)
        objects = []
        for _ in range(int(rng.integers(0, cfg.max_objects + 1))):
            tex = self.bank.texture(rng, side, cfg.photo_share, kinds)
            objects.append((tex, _shape_mask(rng, side)))
        low_contrast = rng.random() < cfg.p_low_contrast
        contrast = float(rng.uniform(0.1, 0.5)) if low_contrast else 1.0

        def frame(scale: float) -> np.ndarray:
            img = render_translated(bg, scale * d_bg, size, margin)
            for tex, mask in objects:
                t = render_translated(tex, scale * d_fg, size, margin)
                m = np.clip(render_translated(mask, scale * d_fg, size, margin), 0, 1)[..., None]
                img = m * t + (1 - m) * img
            if contrast != 1.0:
                mean = img.mean(axis=(0, 1), keepdims=True)
                img = mean + contrast * (img - mean)
            return img

        a, c, y = frame(0.0), frame(1.0), frame(alpha)
        if cfg.color_perturb:
            gain = rng.uniform(0.75, 1.25, size=3).astype(np.float32)
            offset = rng.uniform(-20, 20, size=3).astype(np.float32)
            b, y = c * gain + offset, y * gain + offset
        else:
            b = c
        std = float(rng.uniform(0, cfg.noise_max))
        out_a = _noisy_uint8(a, rng, std)
        out_c = _noisy_uint8(c, rng, std)
        out_b = out_c if not cfg.color_perturb else _noisy_uint8(b, rng, std)
        return {"a": out_a, "b": out_b, "c": out_c, "y": _noisy_uint8(y, rng, 0.0),
                "alpha": alpha, "d_fg": d_fg, "d_bg": d_bg}

    def batch(self, start: int, n: int) -> dict[str, np.ndarray]:
        """Samples ``start`` … ``start + n − 1`` stacked: images (n, H, W, 3) uint8, α (n,) float32."""
        items = [self[start + i] for i in range(n)]
        out = {k: np.stack([it[k] for it in items]) for k in items[0]}
        out["alpha"] = out["alpha"].astype(np.float32)
        return out


def verification_pairs(bank: TextureBank, n_per_alpha: int, alphas: Sequence[float],
                       d_range: Sequence[float], size: int, seed: int,
                       photo_share: float = 0.5, noise: float = 1.0) -> list[dict[str, Any]]:
    """Held-out pairs with a known global sub-pixel translation, for physical verification.

    Frame A is a textured scene (a held-out face-photo crop with probability ``photo_share``,
    else 1/f noise — no periodic texture, whose displacement would be ambiguous), B the same scene translated by d, Y by α·d (Lanczos-4 on a larger
    canvas).  |d| is uniform in ``d_range`` with a uniform direction.  A and B get noise of std
    ``noise`` grey levels at 128 (shot-noise-like), every frame is rounded to 8 bits.

    Parameters
    ----------
    bank : TextureBank
        Normally the ``verify`` split (photos not seen in training).
    n_per_alpha : int
    alphas : sequence of float
        E.g. (5, 10, 20).
    d_range : (float, float)
        Range of |d|, pixels, e.g. (0.05, 1.0).
    size : int
        Frame side, pixels.
    seed : int

    Returns
    -------
    list of dict
        ``a``, ``b``, ``y`` uint8 (size, size, 3); ``alpha`` float; ``d`` float64 (2,) (dx, dy)
        pixels.
    """
    lo, hi = float(d_range[0]), float(d_range[1])
    margin = int(math.ceil(max(alphas) * hi)) + 6
    side = size + 2 * margin
    pairs = []
    for ai, alpha in enumerate(alphas):
        for i in range(n_per_alpha):
            rng = np.random.default_rng([int(seed), 7919, ai, i])
            r = rng.uniform(lo, hi)
            th = rng.uniform(0, 2 * math.pi)
            d = np.array([r * math.cos(th), r * math.sin(th)])
            canvas = bank.texture(rng, side, photo_share, kinds=("noise",))
            frames = [render_translated(canvas, s * d, size, margin) for s in (0.0, 1.0, alpha)]
            pairs.append({"a": _noisy_uint8(frames[0], rng, noise),
                          "b": _noisy_uint8(frames[1], rng, noise),
                          "y": _noisy_uint8(frames[2], rng, 0.0),
                          "alpha": float(alpha), "d": d})
    return pairs

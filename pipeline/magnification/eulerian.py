"""Linear Eulerian video magnification, two-frame version (Wu et al., SIGGRAPH 2012).

H.-Y. Wu, M. Rubinstein, E. Shih, J. Guttag, F. Durand, W. T. Freeman, "Eulerian video
magnification for revealing subtle changes in the world", ACM TOG 31(4), 2012, Sec. 3.

Linear EVM amplifies a temporally band-passed signal B(x, t) of each spatial (Laplacian) band
and adds it back: Ĩ(x, t) = I(x, t) + α·B(x, t) (Eq. 4–5), which to first order moves the image
content by (1 + α)·δ(t).  With only two frames (reference a and frame b), the temporal band-pass is
the frame difference D = I_b − I_a, so the magnified frame b is::

    Ĩ_b = I_a + Σ_k α_k · L_k(D),        α_k = 1 + (α − 1)·r_k

where L_k is level k of the Laplacian pyramid of D (k = 0 the finest, Burt & Adelson 1983, via
``cv2.pyrDown``/``pyrUp``; the last level is the Gaussian residual) and r_k ∈ [0, 1] attenuates
the amplification of fine spatial wavelengths as Wu et al. do (Sec. 3.2, Fig. 6: α is ramped
down linearly below a cut-off wavelength λ_c, since the first-order approximation only holds
for (1 + α)δ < λ/8).  Level k stands for wavelength λ_k = 2^(k+1) px; r_k = min(1, λ_k / λ_c).
At α = 1 the output is I_b exactly; with λ_c ≤ 2 it is the plain linear extrapolation
I_a + α·(I_b − I_a).  This is the classical reference of ``metrics/magnifier.json``.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["eulerian_magnify", "laplacian_pyramid", "reconstruct_laplacian"]


def laplacian_pyramid(img: np.ndarray, levels: int) -> list[np.ndarray]:
    """Laplacian pyramid of a float32 image (H, W[, C]): ``levels`` band-pass levels + residual.

    Returns
    -------
    list of ndarray
        ``levels + 1`` arrays, level k at (H/2^k, W/2^k); the last is the Gaussian low-pass.
    """
    pyr = []
    cur = img.astype(np.float32)
    for _ in range(levels):
        if min(cur.shape[:2]) < 2:
            break
        down = cv2.pyrDown(cur)
        up = cv2.pyrUp(down, dstsize=(cur.shape[1], cur.shape[0]))
        pyr.append(cur - up)
        cur = down
    pyr.append(cur)
    return pyr


def reconstruct_laplacian(pyr: list[np.ndarray]) -> np.ndarray:
    """Inverse of :func:`laplacian_pyramid` (exact up to float rounding)."""
    cur = pyr[-1]
    for band in reversed(pyr[:-1]):
        cur = cv2.pyrUp(cur, dstsize=(band.shape[1], band.shape[0])) + band
    return cur


def eulerian_magnify(frame_a: np.ndarray, frame_b: np.ndarray, alpha: float,
                     lambda_c: float = 16.0, levels: int = 5) -> np.ndarray:
    """Two-frame linear Eulerian magnification of the motion from ``frame_a`` to ``frame_b``.

    Parameters
    ----------
    frame_a, frame_b : ndarray of shape (H, W, 3), uint8 (or float, 0–255)
        Reference and moved frame.
    alpha : float
        Magnification factor α (α = 1 returns ``frame_b``).
    lambda_c : float
        Cut-off spatial wavelength λ_c in pixels (Wu et al. Sec. 3.2); finer bands get a
        linearly reduced factor.
    levels : int
        Laplacian levels (plus the residual).

    Returns
    -------
    ndarray of shape (H, W, 3), uint8
        The magnified frame b, clipped to 0–255 and rounded.
    """
    a = np.asarray(frame_a, np.float32)
    b = np.asarray(frame_b, np.float32)
    if a.shape != b.shape:
        raise ValueError(f"frames differ in shape: {a.shape} vs {b.shape}")
    pyr = laplacian_pyramid(b - a, levels)
    scaled = []
    for k, band in enumerate(pyr):
        r = min(1.0, 2.0 ** (k + 1) / lambda_c) if lambda_c > 0 else 1.0
        scaled.append(band * (1.0 + (alpha - 1.0) * r))
    out = a + reconstruct_laplacian(scaled)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)

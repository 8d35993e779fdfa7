"""Physical verification of a magnifier: measured vs expected displacement, PSNR and SSIM.

A magnifier given frames A and B related by a known global translation d and a factor α must
output a frame displaced from A by α·d (Oh et al. 2018, Sec. 4; METHODS.md: "a known sub-pixel
displacement d, magnified by α, must come out as a displacement close to α·d").  The displacement
of the output is measured on the textured frame by phase correlation (``cv2.phaseCorrelate``,
for the integer part) refined by a global Lucas–Kanade translation fit (Gauss–Newton on the
brightness-constancy residual over the interior of the frame), because OpenCV's sub-pixel peak
estimate is biased towards whole pixels (about 0.1–0.2 px).  The ratio measured/expected is
the projection of the measured shift on the expected one, divided by |α·d|².

PSNR (dB, peak 255) and SSIM (Wang, Bovik, Sheikh, Simoncelli, IEEE TIP 13(4), 2004, Eq. 13:
11x11 Gaussian window σ = 1.5, K1 = 0.01, K2 = 0.03, L = 255, per RGB channel, averaged over the
frame without the 5-px border and over channels) compare the output with the rendered ground
truth Y.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np

__all__ = ["measure_displacement", "plot_verification", "psnr", "ssim", "summarise",
           "verify_magnifier"]

MagnifyFn = Callable[[np.ndarray, np.ndarray, float], np.ndarray]


def _grey(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim == 3:
        img = cv2.cvtColor(img.astype(np.float32), cv2.COLOR_RGB2GRAY)
    return img.astype(np.float64)


def measure_displacement(reference: np.ndarray, moved: np.ndarray, iterations: int = 20,
                         border: int | None = None) -> np.ndarray:
    """Global translation (dx, dy) in pixels that carries ``reference`` onto ``moved``.

    Parameters
    ----------
    reference, moved : ndarray of shape (H, W, 3) or (H, W), uint8 or float
        Two views of the same textured scene; ``moved(x) ≈ reference(x − (dx, dy))``.
    iterations : int
        Gauss–Newton refinements after the phase-correlation estimate.
    border : int, optional
        Pixels ignored at each side in the refinement; default ``ceil(|coarse shift|) + 4``.

    Returns
    -------
    ndarray of shape (2,), float64
        (dx, dy) in pixels; positive dx: content moved right, positive dy: down.
    """
    ref = _grey(reference)
    mov = _grey(moved)
    h, w = ref.shape
    window = cv2.createHanningWindow((w, h), cv2.CV_64F)
    (dx, dy), _ = cv2.phaseCorrelate(ref - ref.mean(), mov - mov.mean(), window)
    t = np.array([dx, dy], np.float64)
    b = int(math.ceil(np.abs(t).max())) + 4 if border is None else int(border)
    b = min(b, min(h, w) // 2 - 2)
    inner = (slice(b, h - b), slice(b, w - b))
    target = mov[inner]
    for _ in range(iterations):
        m = np.array([[1.0, 0.0, -t[0]], [0.0, 1.0, -t[1]]])
        warped = cv2.warpAffine(ref, m, (w, h), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_REFLECT)
        gx = cv2.Sobel(warped, cv2.CV_64F, 1, 0, ksize=3, scale=1 / 8)[inner]
        gy = cv2.Sobel(warped, cv2.CV_64F, 0, 1, ksize=3, scale=1 / 8)[inner]
        r = target - warped[inner]
        r = r - r.mean()  # robust to a global brightness offset
        a = np.array([[np.sum(gx * gx), np.sum(gx * gy)], [np.sum(gx * gy), np.sum(gy * gy)]])
        if np.linalg.cond(a) > 1e8:
            break
        # moved(x) ≈ warped(x) − ∇warped · δ  →  solve for δ, t += δ
        delta = -np.linalg.solve(a, np.array([np.sum(gx * r), np.sum(gy * r)]))
        t += delta
        if np.abs(delta).max() < 1e-4:
            break
    return t


def psnr(output: np.ndarray, target: np.ndarray) -> float:
    """PSNR in dB (peak 255) over all pixels and channels of two uint8 images; inf if equal."""
    mse = np.mean((np.asarray(output, np.float64) - np.asarray(target, np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10.0 * math.log10(255.0 ** 2 / mse))


def ssim(output: np.ndarray, target: np.ndarray, sigma: float = 1.5, k1: float = 0.01,
         k2: float = 0.03, data_range: float = 255.0) -> float:
    """Mean SSIM (Wang et al. 2004, Eq. 13) with an 11x11 Gaussian window (σ = 1.5).

    Parameters
    ----------
    output, target : ndarray of shape (H, W) or (H, W, C), uint8 (0–255)
        H, W > 10.

    Returns
    -------
    float
        Mean of the SSIM map over the valid region (5-px border excluded) and the channels.
    """
    x = np.asarray(output, np.float64)
    y = np.asarray(target, np.float64)
    if x.shape != y.shape:
        raise ValueError(f"images differ in shape: {x.shape} vs {y.shape}")
    if x.ndim == 2:
        x, y = x[..., None], y[..., None]
    radius = 5
    if min(x.shape[:2]) <= 2 * radius:
        raise ValueError(f"SSIM needs images larger than 11 x 11, got {x.shape[:2]}")
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2

    def blur(z: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(z, (2 * radius + 1, 2 * radius + 1), sigma,
                                borderType=cv2.BORDER_REFLECT)

    values = []
    for ch in range(x.shape[2]):
        a, b = x[..., ch], y[..., ch]
        mu_a, mu_b = blur(a), blur(b)
        var_a = blur(a * a) - mu_a ** 2
        var_b = blur(b * b) - mu_b ** 2
        cov = blur(a * b) - mu_a * mu_b
        smap = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
            (mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
        values.append(smap[radius:-radius, radius:-radius].mean())
    return float(np.mean(values))


def summarise(ratios: Sequence[float]) -> dict[str, float]:
    """Median, quartiles and IQR of measured/expected ratios."""
    r = np.asarray(ratios, np.float64)
    q25, med, q75 = np.percentile(r, [25, 50, 75])
    return {"ratio_median": float(med), "ratio_q25": float(q25), "ratio_q75": float(q75),
            "ratio_iqr": float(q75 - q25)}


def verify_magnifier(magnify: MagnifyFn, pairs: Sequence[dict[str, Any]],
                     batch_size: int = 16) -> dict[str, Any]:
    """Run a magnifier on verification pairs and compare with the physics and the ground truth.

    Parameters
    ----------
    magnify : callable
        ``magnify(a, b, alpha) -> out`` with ``a``, ``b``, ``out`` uint8 (N, H, W, 3).
    pairs : sequence of dict
        From :func:`pipeline.magnification.synthetic.verification_pairs` (``a``, ``b``, ``y``,
        ``alpha``, ``d``).
    batch_size : int

    Returns
    -------
    dict
        Per factor ``alpha{a}``: ``ratio_median``, ``ratio_q25``, ``ratio_q75``, ``ratio_iqr``
        (measured displacement / α·d), ``angle_error_deg_median``, ``psnr`` and ``ssim`` (means
        against Y) and ``n``; plus ``outputs`` (list of uint8 frames, same order as ``pairs``).
    """
    by_alpha: dict[float, list[int]] = {}
    for i, p in enumerate(pairs):
        by_alpha.setdefault(float(p["alpha"]), []).append(i)
    outputs: list[np.ndarray | None] = [None] * len(pairs)
    for alpha, idx in by_alpha.items():
        for s in range(0, len(idx), batch_size):
            chunk = idx[s:s + batch_size]
            a = np.stack([pairs[i]["a"] for i in chunk])
            b = np.stack([pairs[i]["b"] for i in chunk])
            out = magnify(a, b, alpha)
            for j, i in enumerate(chunk):
                outputs[i] = out[j]
    result: dict[str, Any] = {}
    for alpha, idx in sorted(by_alpha.items()):
        ratios, angles, psnrs, ssims = [], [], [], []
        for i in idx:
            p, out = pairs[i], outputs[i]
            expected = float(alpha) * np.asarray(p["d"], np.float64)
            measured = measure_displacement(p["a"], out)
            norm2 = float(expected @ expected)
            ratios.append(float(measured @ expected) / norm2)
            cross = expected[0] * measured[1] - expected[1] * measured[0]
            angles.append(abs(math.degrees(math.atan2(cross, float(measured @ expected)))))
            psnrs.append(psnr(out, p["y"]))
            ssims.append(ssim(out, p["y"]))
        key = f"alpha{int(alpha) if float(alpha).is_integer() else alpha}"
        result[key] = {**summarise(ratios), "angle_error_deg_median": float(np.median(angles)),
                       "psnr": float(np.mean(psnrs)), "ssim": float(np.mean(ssims)),
                       "n": len(idx)}
    result["outputs"] = outputs
    return result


def plot_verification(pairs: Sequence[dict[str, Any]], outputs: dict[str, Sequence[np.ndarray]],
                      out_png: Any, n_examples: int = 3, diff_gain: float = 4.0) -> None:
    """Figure of verification examples: A, B, ground truth Y and each magnifier's output.

    Rows: one pair per factor (the first ``n_examples`` factors, the first pair of each); columns:
    A, B, Y, then per method its output and |output − Y| (grey levels × ``diff_gain``).

    Parameters
    ----------
    pairs : sequence of dict
        Verification pairs (``a``, ``b``, ``y``, ``alpha``, ``d``).
    outputs : mapping
        Method name → outputs aligned with ``pairs`` (uint8 (H, W, 3)).
    out_png : path
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    firsts: dict[float, int] = {}
    for i, p in enumerate(pairs):
        firsts.setdefault(float(p["alpha"]), i)
    rows = [firsts[a] for a in sorted(firsts)][:n_examples]
    cols = 3 + 2 * len(outputs)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.8 * cols, 1.9 * len(rows)), squeeze=False)
    for r, i in enumerate(rows):
        p = pairs[i]
        dist = float(np.hypot(*p["d"]))
        panels = [(p["a"], "A"), (p["b"], f"B (|d| = {dist:.2f} px)"),
                  (p["y"], f"Y (α = {p['alpha']:g})")]
        for name, outs in outputs.items():
            out = np.asarray(outs[i])
            panels.append((out, name))
            err = np.abs(out.astype(np.float32) - p["y"].astype(np.float32)).mean(-1) * diff_gain
            panels.append((err, f"|{name} − Y|×{diff_gain:g}"))
        for c, (img, title) in enumerate(panels):
            ax = axes[r, c]
            if img.ndim == 3:
                ax.imshow(img)
            else:
                ax.imshow(np.clip(img, 0, 255), cmap="magma", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)

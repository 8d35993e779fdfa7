"""Small samples with known motion, for the feature stages' tests and benchmark.

Each sample is one face photo resized to a square frame, moved rigidly by a known translation per
frame and, optionally, deformed by a smooth local displacement around the mouth whose amplitude
rises from the onset to the apex and falls back at the offset.  Frames are written as image files
in a sample folder and described by a ``samples.csv`` that follows the ``index`` contract
(docs/internals.md), so the ``faces`` stage reads them exactly as it reads the stand-in or real
databases.  This is not the stand-in benchmark (STANDIN.md): no FACS-shaped motion, no nuisances.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from pipeline.databases.aus import CD6ME_AU_COLUMNS as CD6ME_AUS


def load_photo(path: str | os.PathLike, size: int) -> np.ndarray:
    """A photo as an RGB ``(size, size, 3) uint8`` frame (area-resized).

    Raises
    ------
    FileNotFoundError
        If the file cannot be read as an image.
    """
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"{path}: not a readable image (expected a face photo)")
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def moved_frame(photo: np.ndarray, shift: tuple[float, float], bump: float = 0.0,
                bump_centre: tuple[float, float] = (0.5, 0.72),
                bump_sigma: float = 0.06) -> np.ndarray:
    """The photo translated by ``shift`` and deformed by an upward Gaussian bump.

    Parameters
    ----------
    photo : ndarray of shape (H, W, 3), uint8
    shift : (float, float)
        Rigid translation (dx, dy) of the content in pixels.
    bump : float
        Peak upward displacement of the content at ``bump_centre`` in pixels (0: none).
    bump_centre : (float, float)
        Centre of the bump as fractions of (W, H) (default: about the mouth of a centred face).
    bump_sigma : float
        Standard deviation of the bump as a fraction of W.

    Returns
    -------
    ndarray of shape (H, W, 3), uint8
        ``out(x) = photo(x − shift − bump·g(x)·(0, −1))`` (bilinear, replicated border).
    """
    h, w = photo.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    map_x = xs - np.float32(shift[0])
    map_y = ys - np.float32(shift[1])
    if bump:
        cx, cy = bump_centre[0] * w, bump_centre[1] * h
        g = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * (bump_sigma * w) ** 2))
        map_y = map_y + np.float32(bump) * g.astype(np.float32)
    return cv2.remap(photo, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def write_samples(out_dir: str | os.PathLike, photos: Sequence[str | os.PathLike], *,
                  size: int = 200, n_frames: int = 10, first_frame: int = 101,
                  apex_pos: int | None = None, shift: tuple[float, float] = (0.5, 0.25),
                  bump: float = 1.5, ext: str = "png", database: str = "toy",
                  jpeg_quality: int = 95) -> pd.DataFrame:
    """Write one sample per photo and its ``samples.csv``.

    Parameters
    ----------
    out_dir : path
        Root folder; frames go to ``out_dir/frames/<subject>/<material>/img<k>.<ext>`` and the
        table to ``out_dir/samples.csv``.
    photos : sequence of path
        One face photo per sample (subject ``s01``, ``s02``, …).
    size : int
        Frame side in pixels.
    n_frames : int
        Frames onset..offset per sample.
    first_frame : int
        Number of the onset frame (file ``img<first_frame>``).
    apex_pos : int, optional
        0-based position of the annotated apex (default: the middle frame).
    shift : (float, float)
        Rigid translation per frame (dx, dy), pixels per frame: frame k is moved by ``k · shift``.
    bump : float
        Peak local displacement at the apex (pixels), a sine profile onset → apex → offset.
    ext : str
        ``"png"`` (lossless) or ``"jpg"``.
    database : str
        The ``database`` column.
    jpeg_quality : int

    Returns
    -------
    pandas.DataFrame
        The table written, columns as in the ``index`` contract.
    """
    out_dir = Path(out_dir)
    apex_pos = n_frames // 2 if apex_pos is None else apex_pos
    rows = []
    for i, photo_path in enumerate(photos):
        photo = load_photo(photo_path, size)
        subject, material = f"s{i + 1:02d}", f"m{i + 1:02d}"
        frame_dir = out_dir / "frames" / subject / material
        frame_dir.mkdir(parents=True, exist_ok=True)
        names = []
        for k in range(n_frames):
            if k <= apex_pos:
                amp = bump * math.sin(0.5 * math.pi * k / max(apex_pos, 1))
            else:
                fall = max(n_frames - 1 - apex_pos, 1)
                amp = bump * math.cos(0.5 * math.pi * (k - apex_pos) / fall)
            frame = moved_frame(photo, (k * shift[0], k * shift[1]), bump=amp)
            name = f"img{first_frame + k}.{ext}"
            params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if ext == "jpg" else []
            cv2.imwrite(str(frame_dir / name), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), params)
            names.append(name)
        row = {
            "sample_id": f"{database}/{subject}/{material}", "database": database,
            "subject": subject, "material": material, "row": i,
            "onset": first_frame, "apex": first_frame + apex_pos,
            "offset": first_frame + n_frames - 1, "frame_dir": str(frame_dir),
            "frames": "|".join(names), "n_frames": n_frames, "au": "12",
        }
        row.update({au: int(au == "AU12") for au in CD6ME_AUS})
        row.update({"emotion": "happiness", "emotion5": "happiness", "emotion3": "positive"})
        rows.append(row)
    df = pd.DataFrame(rows).sort_values("sample_id").reset_index(drop=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    df.to_csv(out_dir / "samples.csv", index=False)
    return df

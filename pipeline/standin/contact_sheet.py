"""Contact sheets: a few samples of a stand-in database at a glance.

One row per sample: the onset frame, the true-apex frame (face crops, as written on disk) and
their difference amplified to be visible (mid-grey = no change), with the sample's material, AU
cell and largest AU amplitude written beside them.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

TILE = 160                # tile height and width, pixels
CAPTION_H = 34
TITLE_H = 40


def _read(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"{path}: frame missing or unreadable")
    return img


def _crop(img: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    side = 1.2 * max(x1 - x0, y1 - y0)
    h, w = img.shape[:2]
    a, b = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
    c, d = int(min(w, cx + side / 2)), int(min(h, cy + side / 2))
    return cv2.resize(img[b:d, a:c], (TILE, TILE), interpolation=cv2.INTER_AREA)


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.4) -> None:
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)


def contact_sheet(key: str, root: str | os.PathLike, samples: list[dict], out: str | os.PathLike) -> Path:
    """Write ``out`` (PNG) for the given ground-truth samples of one database.

    Parameters
    ----------
    key : str
        Database key (for the title).
    root : path
        The database root the frames were written under.
    samples : list of dict
        Ground-truth records (:func:`pipeline.standin.build.build_standin`) with ``folder``,
        ``frame_files`` (onset..offset), ``onset``, ``apex``, ``face_box``, ``material``, ``au_cell``, ``aus``.
    out : path

    Returns
    -------
    Path
    """
    rows = []
    for s in samples:
        files = s["frame_files"]                 # onset..offset
        onset = _read(Path(root) / s["folder"] / files[0])
        apex = _read(Path(root) / s["folder"] / files[s["apex"] - s["onset"]])
        a, b = _crop(onset, s["face_box"]), _crop(apex, s["face_box"])
        diff = cv2.cvtColor(b, cv2.COLOR_BGR2GRAY).astype(np.float32) - \
            cv2.cvtColor(a, cv2.COLOR_BGR2GRAY).astype(np.float32)
        gain = 100.0 / max(2.0, float(np.percentile(np.abs(diff), 99.5)))
        d = np.clip(128 + gain * diff, 0, 255).astype(np.uint8)
        d = cv2.cvtColor(d, cv2.COLOR_GRAY2BGR)
        tiles = np.hstack([a, b, d])
        cap = np.full((CAPTION_H, tiles.shape[1], 3), 255, np.uint8)
        amp = max((x["amplitude_px"] for x in s["aus"] if x["au"] != 45), default=0.0)
        amp_iod = max((x["amplitude_iod"] for x in s["aus"] if x["au"] != 45), default=0.0)
        _text(cap, f"{s['material']}  onset {s['onset']}  true apex {s['apex']}  "
                   f"diff x{gain:.0f}", (4, 13))
        _text(cap, f"AU: {s['au_cell'] or '-'}   max {amp:.2f} px, {amp_iod:.2f} % IOD", (4, 28))
        rows.append(np.vstack([tiles, cap]))
    width = 3 * TILE
    title = np.full((TITLE_H, width, 3), 255, np.uint8)
    _text(title, f"STAND-IN (simulated, altered London-set photos): {key}", (4, 15), 0.45)
    _text(title, "onset | true apex | apex - onset, amplified", (4, 33), 0.4)
    sheet = np.vstack([title, *rows]) if rows else title
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", sheet, [cv2.IMWRITE_PNG_COMPRESSION, 6])
    if not ok:
        raise RuntimeError(f"{out}: PNG encoding failed")
    out.write_bytes(buf.tobytes())
    return out

"""Synthetic ``samples.csv`` + ``flow.h5`` for the training tests (no stand-in, no faces needed).

Every AU of a sample adds a smooth displacement blob at its own place and direction on an S×S
grid (AU1 inner brows up, AU12 lip corners up and out, …, loosely placed), with random amplitude,
plus noise; the strain channel is the magnitude's gradient.  Emotion labels follow from the AU set
with simple FACS-style rules, so both protocols are learnable but not trivial.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.features.cache import CacheWriter
from pipeline.training.protocols import CD6ME_AUS

DATABASES = ("casme", "casme2", "samm", "fourd", "mmew", "casme3a", "smic")
PREVALENCE = dict(zip(CD6ME_AUS, (0.25, 0.22, 0.4, 0.1, 0.08, 0.15, 0.1, 0.08, 0.2, 0.18, 0.08,
                                   0.1), strict=True))
# (centre x, centre y) as fractions of the side, displacement direction (dx, dy)
AU_BLOBS = {
    "AU1": ((0.42, 0.25), (0.0, -1.0)), "AU2": ((0.25, 0.22), (0.0, -1.0)),
    "AU4": ((0.5, 0.3), (0.0, 1.0)), "AU5": ((0.35, 0.35), (0.0, -1.0)),
    "AU6": ((0.3, 0.55), (0.0, -1.0)), "AU7": ((0.65, 0.38), (0.0, 1.0)),
    "AU9": ((0.5, 0.5), (0.0, -1.0)), "AU10": ((0.5, 0.65), (0.0, -1.0)),
    "AU12": ((0.3, 0.75), (-0.7, -0.7)), "AU14": ((0.7, 0.75), (-1.0, 0.0)),
    "AU15": ((0.35, 0.8), (0.0, 1.0)), "AU17": ((0.5, 0.9), (0.0, -1.0)),
}


def _emotion(db: str, aus: set[str], rng: np.random.Generator) -> tuple[str, str, str]:
    if "AU12" in aus:
        e5, e3 = "happiness", "positive"
    elif {"AU1", "AU2"} & aus and "AU4" not in aus:
        e5, e3 = "surprise", "surprise"
    elif {"AU4", "AU9"} & aus:
        e5, e3 = ("disgust" if db != "samm" else "anger"), "negative"
    elif {"AU14", "AU15"} & aus:
        e5, e3 = ("repression" if db != "samm" else "contempt"), "negative"
    else:
        e5, e3 = "others", ""
    emotion = e5 if db != "smic" else (e3 or "negative")
    if db == "smic":
        return emotion, "", e3 or "negative"
    if db not in ("casme2", "samm"):
        return emotion, "", e3
    return emotion, e5, e3


def flow_image(aus: set[str], size: int, rng: np.random.Generator, noise: float = 0.05) -> np.ndarray:
    """One synthetic (u, v, ε) image ``(size, size, 3)`` float32 in pixels per frame."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    u = rng.normal(0, noise, (size, size)).astype(np.float32)
    v = rng.normal(0, noise, (size, size)).astype(np.float32)
    head = rng.normal(0, 0.05, 2)
    u += head[0]
    v += head[1]
    for au in aus:
        (cx, cy), (dx, dy) = AU_BLOBS[au]
        amp = float(np.exp(rng.uniform(np.log(0.3), np.log(1.5))))
        g = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 0.06 ** 2)).astype(np.float32)
        u += amp * dx * g
        v += amp * dy * g
    uy, ux = np.gradient(u)
    vy, vx = np.gradient(v)
    strain = np.sqrt(ux ** 2 + vy ** 2 + 0.5 * (uy + vx) ** 2)
    return np.stack([u, v, strain], axis=-1).astype(np.float32)


def build(root: Path, n_subjects: int = 4, per_subject: int = 6, size: int = 32,
          seed: int = 0, databases: tuple[str, ...] = DATABASES, drop_from_flow: int = 0,
          ) -> tuple[Path, Path]:
    """Write ``root/samples.csv`` and ``root/features/flow.h5``; return their paths.

    ``drop_from_flow`` leaves that many samples out of the flow cache (a failed upstream sample).
    """
    rng = np.random.default_rng(seed)
    rows = []
    flows = {}
    for db in databases:
        for s in range(n_subjects):
            subject = f"{s + 1:03d}" if db == "samm" else f"sub{s + 1:02d}"
            for k in range(per_subject):
                aus = {au for au, p in PREVALENCE.items() if rng.random() < p}
                if db == "smic":
                    aus_label = {au: 0 for au in CD6ME_AUS}
                else:
                    aus_label = {au: int(au in aus) for au in CD6ME_AUS}
                emotion, e5, e3 = _emotion(db, aus, rng)
                sid = f"{db}/{subject}/m{k:02d}"
                rows.append({"sample_id": sid, "database": db, "subject": subject,
                             "material": f"m{k:02d}", "onset": 0, "apex": 5, "offset": 10,
                             **aus_label, "emotion": emotion, "emotion5": e5, "emotion3": e3})
                flows[sid] = flow_image(aus, size, rng)
    samples = pd.DataFrame(rows).sort_values("sample_id").reset_index(drop=True)
    root.mkdir(parents=True, exist_ok=True)
    csv = root / "samples.csv"
    samples.to_csv(csv, index=False)
    feats = root / "features"
    feats.mkdir(exist_ok=True)
    dropped = set(samples["sample_id"].iloc[:: max(1, len(samples) // max(drop_from_flow, 1))]
                  .iloc[:drop_from_flow]) if drop_from_flow else set()
    with CacheWriter(feats / "flow.h5", "flow", {"size": size, "synthetic": True}) as w:
        for sid in samples["sample_id"]:
            if sid in dropped:
                continue
            w.append(sid, {"onset_apex": flows[sid]})
    return csv, feats

"""Synthetic ``samples.csv`` + ``flow.h5`` (+ ``faces.h5``) for the training tests (no stand-in).

Every AU of a sample adds a smooth displacement blob at its own place and direction on an S×S
grid (AU1 inner brows up, AU12 lip corners up and out, …, loosely placed), with random amplitude,
plus noise; the strain channel is the magnitude's gradient.  Emotion labels follow from the AU set
with simple FACS-style rules, so both protocols are learnable but not trivial.

:func:`build_faces` adds a ``faces.h5`` with only the onset→offset sequences ``seq{S}/frames``
(the input of apex-free methods such as AC4AU): a grey face-like background whose brightness and
smooth texture depend on the subject (a static, identity-like component), on which every AU of the sample
draws a bright blob at its place whose intensity rises and falls over the l frames (the dynamic
component).
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


def identity_texture(size: int, subject: int, seed: int = 0, amplitude: float = 20.0) -> np.ndarray:
    """A subject's static "identity": smooth zero-mean grey texture ``(size, size)`` float32.

    Coarse noise (a 4 x 4 grid, bilinearly upsampled) of standard deviation about ``amplitude``
    grey levels, drawn from ``subject`` and ``seed`` only, so every sequence of the subject
    carries it unchanged (what AC4AU's subject loss reads from F^DC, Sec. 3.5).
    """
    coarse = np.random.default_rng([seed, subject, 7]).normal(0.0, amplitude, (4, 4))
    grid = np.linspace(0.0, 3.0, size)
    i0 = np.minimum(grid.astype(int), 2)
    w = (grid - i0)[:, None]
    rows = coarse[i0] * (1 - w) + coarse[i0 + 1] * w                 # (size, 4)
    w = (grid - i0)[None, :]
    out = rows[:, i0] * (1 - w) + rows[:, i0 + 1] * w                # (size, size)
    return (out - out.mean()).astype(np.float32)


def sequence_frames(aus: set[str], length: int, size: int, subject_level: float,
                    rng: np.random.Generator, noise: float = 4.0,
                    identity: np.ndarray | None = None) -> np.ndarray:
    """One synthetic onset→offset sequence ``(length, size, size, 3)`` uint8 (module docstring).

    ``subject_level`` in [0, 1] sets the static background brightness (the subject's "face"),
    ``identity`` (``(size, size)``, e.g. :func:`identity_texture`) is added to it.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    face = 80.0 + 80.0 * subject_level - 40.0 * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2)
    if identity is not None:
        face = face + identity
    t = np.linspace(0.0, 1.0, length, dtype=np.float32)
    rise = np.sin(np.pi * t)  # onset 0 → apex 1 → offset 0
    frames = np.repeat(face[None], length, axis=0)
    for au in aus:
        (cx, cy), _ = AU_BLOBS[au]
        amp = float(rng.uniform(40.0, 80.0))
        g = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 0.08 ** 2)).astype(np.float32)
        frames += amp * rise[:, None, None] * g[None]
    frames = frames[..., None] + rng.normal(0.0, noise, (length, size, size, 3))
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


def build_faces(csv: Path, feats: Path, length: int = 4, size: int = 32, seed: int = 0,
                drop: int = 0) -> Path:
    """Write ``feats/faces.h5`` (schema ``faces``, only ``seq{size}/frames``) for ``samples.csv``.

    The AU set of each sample is read back from its 0/1 columns (SMIC rows carry none).  ``drop``
    leaves that many samples out (every k-th, a failed upstream sample).  Returns the path.
    """
    samples = pd.read_csv(csv, dtype={"subject": str}, keep_default_na=False)
    rng = np.random.default_rng(seed)
    subjects = sorted(set(samples["database"] + "/" + samples["subject"]))
    # brightness levels interleaved over the databases (every 5th of the sorted subjects), so no
    # database is a brightness band of its own
    order = sorted(range(len(subjects)), key=lambda i: ((i * 5) % len(subjects), i))
    level = {subjects[i]: rank / max(1, len(subjects) - 1) for rank, i in enumerate(order)}
    texture = {s: identity_texture(size, i, seed) for i, s in enumerate(subjects)}
    step = max(1, len(samples) // max(drop, 1))
    dropped = set(samples["sample_id"].iloc[::step].iloc[:drop]) if drop else set()
    path = feats / "faces.h5"
    with CacheWriter(path, "faces", {"sequence_length": length, "sequence_size": size,
                                     "synthetic": True}) as w:
        for _, row in samples.iterrows():
            if row["sample_id"] in dropped:
                continue
            aus = {au for au in CD6ME_AUS if int(row[au])}
            subject = f"{row['database']}/{row['subject']}"
            frames = sequence_frames(aus, length, size, level[subject], rng,
                                     identity=texture[subject])
            w.append(row["sample_id"], {f"seq{size}/frames": frames})
    return path


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


def add_infusenet_caches(feats: Path, seed: int = 0, drop_from_magnified: int = 0,
                         image_alphas: tuple[float, ...] = (10,), artefact: float = 0.3,
                         drop_ids: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """Write ``feats/magnified.h5`` and ``feats/faces.h5`` beside a :func:`build` ``flow.h5``.

    Stand-ins for what the ``magnify`` and ``faces`` stages write (docs/internals.md), for the
    samples of ``flow.h5`` at its side S:

    * ``latent/onset_apex`` ``(N, 32, S/2, S/2) float16``: a fixed random linear map of the
      sample's (u, v) flow (2×2 area average) plus "magnification artefacts" (smooth noise of
      amplitude ``artefact``); ``latent/onset_pseudo``: 0.8 × that plus its own noise;
      ``latent/onset_pseudo_all`` ``(N, 6, 32, S/2, S/2)``: one such latent per offset k = 0…5,
      (0.8 − 0.05 k) × that plus noise, with ``latent/onset_pseudo`` at the drawn offset;
    * ``frames/oh/alpha{a}/apex`` ``(N, S, S, 3) uint8``: a grey face-like ramp shaded by the
      flow magnitude ×α/10, for each α of ``image_alphas``;
    * ``pseudo_apex_offset`` ``(N,) int16`` from :func:`draw_pseudo_apex_offsets` (seed ``seed``);
    * ``faces.h5`` ``crop{S}/apex`` ``(N, S, S, 3) uint8`` (the Grad-CAM backgrounds), ``crop{S}/
      onset`` (the plain ramp) and ``crop{S}/pseudo_apex`` ``(N, 6, S, S, 3)`` (the end-to-end
      option's inputs).

    ``drop_from_magnified`` leaves that many of flow.h5's samples out of ``magnified.h5`` (a
    sample that failed in the magnify stage), and so does each id of ``drop_ids``.  Returns the
    two paths.
    """
    from pipeline.features.cache import FeatureCache
    from pipeline.models.infusenet import draw_pseudo_apex_offsets

    rng = np.random.default_rng(seed + 1000)
    other = np.random.default_rng(seed + 2000)
    flow = FeatureCache(Path(feats) / "flow.h5", "flow")
    ids = list(flow.sample_ids)
    size = int(flow.datasets["onset_apex"][0][1])
    half = size // 2
    mix = rng.normal(0, 1, (32, 2)).astype(np.float32)
    offsets = draw_pseudo_apex_offsets(ids, seed)
    dropped = set(ids[1::max(1, len(ids) // max(drop_from_magnified, 1))][:drop_from_magnified])
    dropped |= set(drop_ids)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    face = 90 + 80 * np.exp(-((xx - 0.5) ** 2 / 0.08 + (yy - 0.5) ** 2 / 0.12))
    mag_path = Path(feats) / "magnified.h5"
    faces_path = Path(feats) / "faces.h5"
    with CacheWriter(mag_path, "magnified", {"size": size, "synthetic": True,
                                             "latent_alpha": 10}) as mw, \
            CacheWriter(faces_path, "faces", {"sizes": [size], "synthetic": True}) as fw:
        for row, sid in enumerate(ids):
            f = flow.read("onset_apex", row)
            uv = f[..., :2].reshape(half, 2, half, 2, 2).mean(axis=(1, 3))  # (h, w, 2)
            lat = np.einsum("cd,hwd->chw", mix, uv)
            noise = rng.normal(0, artefact, (32, half // 4 + 1, half // 4 + 1)).astype(np.float32)
            noise = noise.repeat(4, axis=1).repeat(4, axis=2)[:, :half, :half]
            apex = (lat + noise).astype(np.float16)
            pseudo = (0.8 * lat + rng.normal(0, artefact, lat.shape)).astype(np.float16)
            # every offset k = 0..5 (the drawn one is latent/onset_pseudo); own generator, so
            # the other arrays keep their values
            every = np.stack([(0.8 - 0.05 * k) * lat + other.normal(0, artefact, lat.shape)
                              for k in range(6)]).astype(np.float16)
            every[offsets[sid]] = pseudo
            magnitude = np.sqrt((f[..., :2] ** 2).sum(-1))
            arrays: dict[str, np.ndarray] = {
                "latent/onset_apex": apex, "latent/onset_pseudo": pseudo,
                "latent/onset_pseudo_all": every,
                "pseudo_apex_offset": np.int16(offsets[sid])}
            for a in image_alphas:
                grey = np.clip(face + 40 * magnitude * float(a) / 10, 0, 255).astype(np.uint8)
                tag = f"alpha{int(a)}" if float(a).is_integer() else f"alpha{float(a)}"
                arrays[f"frames/oh/{tag}/apex"] = np.repeat(grey[..., None], 3, axis=2)
            if sid not in dropped:
                mw.append(sid, arrays)
            apex_img = np.repeat(
                np.clip(face + 20 * magnitude, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
            onset_img = np.repeat(np.clip(face, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
            window = np.stack([np.repeat(np.clip(face + (20 - 2 * k) * magnitude, 0, 255)
                                         .astype(np.uint8)[..., None], 3, axis=2)
                               for k in range(6)])
            fw.append(sid, {f"crop{size}/apex": apex_img, f"crop{size}/onset": onset_img,
                            f"crop{size}/pseudo_apex": window})
    flow.close()
    return mag_path, faces_path


def chance_scores(samples: pd.DataFrame, task: str | None = None, draws: int = 400,
                  seed: int = 0, aus: tuple[str, ...] = CD6ME_AUS,
                  metric: str = "auc_mean") -> np.ndarray:
    """Headline scores of a uniform random guesser on the labels a run of ``samples`` scores.

    ``task`` None: CD6ME, the mean ROC AUC over ``aus`` (those with both classes present, as
    ``auc_mean`` of a run) of uniform random scores, or with ``metric="f1_mean"`` the mean binary
    F1 of those scores thresholded at 0.5; a LOSO task key (``"casme2-3"``): the UF1 of uniformly
    drawn classes.  This is what a method whose network output were replaced by noise
    scores; the learning tests set their bars above its upper quantiles.  Returns ``(draws,)``
    float64.
    """
    from pipeline.training.metrics import binary_f1_per_au, emotion_metrics, roc_auc_per_au
    from pipeline.training.protocols import EMOTION_TASKS, cd6me_table, emotion_table

    rng = np.random.default_rng(seed)
    if task is None:
        y = cd6me_table(samples)[list(aus)].to_numpy(np.int64)
        if metric == "f1_mean":
            return np.array([binary_f1_per_au(y, (rng.random(y.shape) >= 0.5).astype(np.int64))
                             .mean() for _ in range(draws)])
        return np.array([np.nanmean(roc_auc_per_au(y, rng.random(y.shape)))
                         for _ in range(draws)])
    spec = EMOTION_TASKS[task]
    _, y = emotion_table(samples, spec)
    return np.array([emotion_metrics(y, rng.integers(0, spec.n_classes, len(y)))["uf1"]
                     for _ in range(draws)])


def add_flow_mag(feats: Path) -> Path:
    """Write ``feats/flow_mag.h5`` from a :func:`build` ``flow.h5``: ``onset_mag`` = 1.5 × and
    ``offset_mag`` = 0.5 × each sample's onset→apex flow (the ``flow_mag`` stage's datasets, the
    mimicking network's input).  Returns the path."""
    from pipeline.features.cache import FeatureCache

    flow = FeatureCache(Path(feats) / "flow.h5", "flow")
    path = Path(feats) / "flow_mag.h5"
    with CacheWriter(path, "flow_mag", {"synthetic": True}) as w:
        for row, sid in enumerate(flow.sample_ids):
            f = flow.read("onset_apex", row)
            w.append(sid, {"onset_mag": f * 1.5, "offset_mag": f * 0.5})
    flow.close()
    return path

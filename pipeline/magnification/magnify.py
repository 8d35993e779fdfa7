"""Magnified latents and decoded magnified apex frames for every sample (``magnify`` stage).

Reads the aligned crops of ``data/features/faces.h5`` at the flow size S (``crop{S}/onset``,
``crop{S}/apex``, ``crop{S}/pseudo_apex``) and writes ``data/features/magnified.h5`` (schema
``magnified``, docs/internals.md):

* ``latent/onset_apex``, ``latent/onset_pseudo`` (N, 32, S/2, S/2) float16 — InfuseNet's
  magnified latents (Khor et al. 2025, Sec. 3.2, Eq. 1–2): the Oh et al. manipulator's magnified
  difference Δ̂ = h((α − 1)·g(M_b − M_a)) for (onset, apex) and (onset, pseudo-apex) at
  α = ``latent_alpha`` (paper: 10), as InfuseNet's ref. code takes it (``latent_kind:
  difference``); ``latent_kind: manipulated`` stores M̂ = M_b + Δ̂ instead.
* ``frames/oh/alpha{a}/apex`` (N, S, S, 3) uint8 — Oh et al.'s decoded magnified apex (onset →
  apex) for each a in ``frames.oh`` (the annotation-mimicking network's α = 6, Ruan et al. 2022;
  InfuseNet's decoded-image ablation, α = 10, Table 3).
* ``frames/stmemm/alpha{a}/apex`` (N, S, S, 3) uint8 — ST-MEMM's magnified apex for each a in
  ``frames.stmemm`` (GAM-MM-MER: α = 5 and the augmentation factors 8, 10, 12, 15; Wu et al. 2024,
  Sec. 3.3, Table 4).
* ``frames/<magnifier>/computed`` (N,) uint8 — written for a magnifier listed in
  ``frames_databases`` (quick and paper: ST-MEMM for CASME II, SAMM and SMIC, the LOSO databases,
  the only ones GAM-MM-MER reads): 1 where the sample's database (the first part of its id) is
  listed and its decoded frames were computed, 0 where they were not — those rows of
  ``frames/<magnifier>/alpha{a}/apex`` are all zero and no reader may use them (the ``patches``
  stage stores NaN landmarks for them; GAM-MM-MER stops on them with the key to change).  Every
  sample keeps its latents and the other magnifier's frames.
* ``latent/onset_pseudo_all`` (N, K + 1, 32, S/2, S/2) float16 — the same latent for every
  pseudo-apex offset k = 0 … K (K = ``pseudo_apex.max_offset``, clipped to faces.h5's window),
  so that InfuseNet can redraw the pseudo-apex during training (Sec. 3.1; the paper redraws it
  every iteration) from the cache; ``latent/onset_pseudo`` is its entry at the sample's drawn
  offset.  Written when ``pseudo_apex.all_offsets`` is true (default; ~1.2 MB per sample at
  112-px crops).
* ``pseudo_apex_offset`` (N,) int16 — the pseudo-apex offset k (frames after the annotated apex,
  an index into faces.h5's pseudo-apex window), drawn per sample in [0, ``max_offset``] by
  :func:`pipeline.models.infusenet.draw_pseudo_apex_offsets` (InfuseNet Sec. 3.1);
  ``pseudo_apex_frame`` (N,) int32 its frame number.

Samples are processed in batches on the configured device; the magnifiers' encoders run once per
frame and the manipulator/decoder once per factor (ST-MEMM: only on the samples of
``frames_databases``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pipeline.features.cache import CacheError, CacheWriter, FeatureCache
from pipeline.magnification.oh2018 import OhMagNet, from_model_range, to_model_range
from pipeline.magnification.stmemm import STMEMM

log = logging.getLogger("magnify")

__all__ = ["LATENT_KINDS", "MagnifyPlan", "computed_dataset", "draw_offsets", "frame_masks",
           "load_magnifiers", "magnify_batch", "magnify_faces", "plot_magnified_samples",
           "run_magnify"]

LATENT_KINDS = ("difference", "manipulated")


def draw_offsets(sample_ids: Sequence[str], seed: int, max_offset: int) -> np.ndarray:
    """Pseudo-apex offsets (N,) int16 in [0, max_offset], reproducible per (seed, sample id).

    Uses InfuseNet's :func:`pipeline.models.infusenet.draw_pseudo_apex_offsets` (per-sample mode)
    so that both stages agree on the pseudo-apex.
    """
    from pipeline.models.infusenet import draw_pseudo_apex_offsets

    drawn = draw_pseudo_apex_offsets(list(sample_ids), seed, max_offset)
    return np.array([drawn[s] for s in sample_ids], dtype=np.int16)


def _check_inputs(faces: FeatureCache, size: int) -> tuple[str, str, str]:
    names = (f"crop{size}/onset", f"crop{size}/apex", f"crop{size}/pseudo_apex")
    missing = [n for n in names if n not in faces.datasets]
    if missing:
        raise CacheError(
            f"{faces.path}: no {missing} — the magnify stage needs the crops at the flow size "
            f"{size} px (faces.sizes must include flow.size); has {sorted(faces.datasets)}")
    shape_o = faces.datasets[names[0]][0]
    shape_p = faces.datasets[names[2]][0]
    if shape_o[1:] != (size, size, 3) or len(shape_p) != 5 or shape_p[2:] != (size, size, 3):
        raise CacheError(f"{faces.path}: expected {names[0]} (N, {size}, {size}, 3) and {names[2]} "
                         f"(N, W, {size}, {size}, 3), got {shape_o} and {shape_p}")
    return names


def _latent(model: OhMagNet, m_a: torch.Tensor, m_b: torch.Tensor, alpha: float, pick: int,
            name: str) -> np.ndarray:
    lat = model.manipulator(m_a, m_b, alpha)[pick].float()
    if not torch.isfinite(lat).all() or lat.abs().max() > 6.0e4:
        raise FloatingPointError(f"latent/{name} exceeds the float16 range "
                                 f"(max |x| = {lat.abs().max().item():.3g})")
    return lat.half().cpu().numpy()


@torch.no_grad()
def _oh_outputs(model: OhMagNet, onset: torch.Tensor, apex: torch.Tensor, pseudo: torch.Tensor,
                latent_alpha: float, latent_kind: str, alphas: Sequence[float],
                window: torch.Tensor | None = None,
                offsets: np.ndarray | None = None,
                window_starts_at_apex: bool = False,
                frame_rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Latents and decoded frames of one batch; with ``window`` (B, K+1, 3, S, S) in model range
    also ``latent/onset_pseudo_all`` (B, K+1, 32, S/2, S/2), whose entry at ``offsets`` is
    ``latent/onset_pseudo`` (computed once, not twice).  ``window_starts_at_apex``: the window's
    first frame is the apex frame itself (k = 0), so its entry is ``latent/onset_apex``, not
    encoded again.  ``frame_rows`` (B,) bool: decode the frames of these samples only (the other
    rows are zero, :func:`_scattered`)."""
    _, m_on = model.encode(onset)
    tex_ap, m_ap = model.encode(apex)
    out: dict[str, np.ndarray] = {}
    pick = 0 if latent_kind == "difference" else 1
    out["latent/onset_apex"] = _latent(model, m_on, m_ap, latent_alpha, pick, "onset_apex")
    if window is None:
        _, m_ps = model.encode(pseudo)
        out["latent/onset_pseudo"] = _latent(model, m_on, m_ps, latent_alpha, pick,
                                             "onset_pseudo")
    else:
        b, n_k = window.shape[:2]
        k0 = 1 if window_starts_at_apex else 0
        parts = [out["latent/onset_apex"][:, None]] if k0 else []
        if n_k > k0:
            _, m_w = model.encode(window[:, k0:].reshape(b * (n_k - k0), *window.shape[2:]))
            m_on_k = m_on.repeat_interleave(n_k - k0, dim=0)
            rest = _latent(model, m_on_k, m_w, latent_alpha, pick, "onset_pseudo_all")
            parts.append(rest.reshape(b, n_k - k0, *rest.shape[1:]))
        lat = np.concatenate(parts, axis=1)
        out["latent/onset_pseudo_all"] = lat
        out["latent/onset_pseudo"] = np.ascontiguousarray(lat[np.arange(b), offsets])
    sel = _rows(frame_rows, onset.shape[0], onset.device)
    if frame_rows is not None:       # the samples whose frames are decoded (texture: optional)
        m_on, m_ap = m_on[sel], m_ap[sel]
        tex_ap = None if tex_ap is None else tex_ap[sel]
    for a in alphas:
        frames = None
        if sel.numel():
            shape_mag = model.manipulator(m_on, m_ap, float(a))[1]
            frames = from_model_range(model.decoder(tex_ap, shape_mag))
        out[f"frames/oh/alpha{_fmt(a)}/apex"] = _scattered(frames, frame_rows, onset)
    return out


@torch.no_grad()
def _stmemm_outputs(model: STMEMM, onset: torch.Tensor, apex: torch.Tensor,
                    alphas: Sequence[float],
                    frame_rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """ST-MEMM's decoded frames of one batch (of the ``frame_rows`` samples only; zero rows for
    the others)."""
    sel = _rows(frame_rows, onset.shape[0], onset.device)
    a_in, b_in = (onset, apex) if frame_rows is None else (onset[sel], apex[sel])
    f_on = model.encode(a_in) if sel.numel() else None
    f_ap = model.encode(b_in) if sel.numel() else None
    return {f"frames/stmemm/alpha{_fmt(a)}/apex": _scattered(
                from_model_range(model.decode(model.manipulate(f_on, f_ap, float(a))))
                if sel.numel() else None, frame_rows, onset)
            for a in alphas}


def _rows(frame_rows: np.ndarray | None, n: int, device: torch.device) -> torch.Tensor:
    """Indices (int64 tensor) of the samples whose frames are decoded (all without a mask)."""
    if frame_rows is None:
        return torch.arange(n, device=device)
    return torch.as_tensor(np.flatnonzero(frame_rows), dtype=torch.int64, device=device)


def _scattered(frames: np.ndarray | None, frame_rows: np.ndarray | None,
               like: torch.Tensor) -> np.ndarray:
    """The decoded frames of the selected rows in a (B, S, S, 3) uint8 array, zeros elsewhere."""
    if frame_rows is None:
        assert frames is not None
        return frames
    b, _, h, w = like.shape
    out = np.zeros((b, h, w, 3), np.uint8)
    if frames is not None:
        out[np.flatnonzero(frame_rows)] = frames
    return out


def computed_dataset(kind: str) -> str:
    """``frames/<kind>/computed``: which samples have decoded frames of magnifier ``kind``."""
    return f"frames/{kind}/computed"


def frame_masks(sample_ids: Sequence[str],
                frames_databases: Mapping[str, Sequence[str] | None] | None
                ) -> dict[str, np.ndarray]:
    """Per magnifier listed in ``magnify.frames_databases``: (N,) bool, whether the sample's
    database (the first part of its id, ``casme2/sub01/EP02_01f`` → ``casme2``) is listed.

    Raises
    ------
    ValueError
        If ``frames_databases`` is not a mapping of magnifier (oh, stmemm) to a list of
        database keys.
    """
    if not frames_databases:
        return {}
    if not isinstance(frames_databases, Mapping):
        raise ValueError(f"magnify.frames_databases must map a magnifier (oh, stmemm) to a list "
                         f"of databases, got {frames_databases!r}")
    out = {}
    for kind, dbs in frames_databases.items():
        if kind not in ("oh", "stmemm"):
            raise ValueError(f"magnify.frames_databases: unknown magnifier {kind!r} (oh, stmemm)")
        if dbs is None:
            continue
        if isinstance(dbs, str) or not isinstance(dbs, Sequence):
            raise ValueError(f"magnify.frames_databases.{kind} must be a list of databases or "
                             f"null, got {dbs!r}")
        wanted = {str(d) for d in dbs}
        out[kind] = np.array([s.split("/", 1)[0] in wanted for s in sample_ids], dtype=bool)
    return out


def _fmt(a: float) -> str:
    return str(int(a)) if float(a).is_integer() else str(a)


@dataclass(frozen=True)
class MagnifyPlan:
    """What the ``magnify`` stage computes per sample, from its section and the pseudo-apex
    window W of faces.h5 (module docstring).

    Attributes
    ----------
    latent_alpha : float
    latent_kind : str
        One of :data:`LATENT_KINDS`.
    oh_alphas, stmemm_alphas : tuple of float
        Factors of the decoded magnified apex frames (ST-MEMM's empty without that magnifier).
    seed, max_offset : int
        The pseudo-apex draw (:func:`draw_offsets`).
    all_offsets : bool
        Also ``latent/onset_pseudo_all``.
    n_k : int
        Offsets 0 … n_k − 1 of ``latent/onset_pseudo_all``: min(max_offset, W − 1) + 1.
    """

    latent_alpha: float
    latent_kind: str
    oh_alphas: tuple[float, ...]
    stmemm_alphas: tuple[float, ...]
    seed: int
    max_offset: int
    all_offsets: bool
    n_k: int

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], window: int,
                    magnifiers: Mapping[str, Any]) -> MagnifyPlan:
        """From the ``magnify`` section (or the params stored in ``magnified.h5``, which hold the
        same keys), the window W and the available magnifiers.

        Raises
        ------
        ValueError
            An unknown ``latent_kind``, or no Oh et al. magnifier (needed for the latents).
        """
        latent_kind = str(cfg.get("latent_kind", "difference"))
        if latent_kind not in LATENT_KINDS:
            raise ValueError(f"magnify.latent_kind must be one of {LATENT_KINDS}, got "
                             f"{latent_kind!r}")
        if "oh" not in magnifiers:
            raise ValueError("magnify: the Oh et al. magnifier is needed for the latents")
        frames_cfg = cfg.get("frames") or {}
        pa = cfg.get("pseudo_apex") or {}
        max_offset = int(pa.get("max_offset", 5))
        return cls(float(cfg.get("latent_alpha", 10)), latent_kind,
                   tuple(float(a) for a in frames_cfg.get("oh", [])),
                   tuple(float(a) for a in frames_cfg.get("stmemm", []))
                   if "stmemm" in magnifiers else (),
                   int(pa.get("seed", 0)), max_offset, bool(pa.get("all_offsets", True)),
                   min(max_offset, int(window) - 1) + 1)

    def offsets(self, sample_ids: Sequence[str], window: int) -> tuple[np.ndarray, int]:
        """Pseudo-apex offsets (N,) int16 of the samples (:func:`draw_offsets`) clipped to the
        window's last frame W − 1, and how many were clipped."""
        drawn = draw_offsets(sample_ids, self.seed, self.max_offset)
        clipped = int(np.sum(drawn > window - 1))
        return np.minimum(drawn, window - 1).astype(np.int16), clipped


def magnify_batch(magnifiers: Mapping[str, nn.Module], plan: MagnifyPlan, onset: np.ndarray,
                  apex: np.ndarray, window_frames: np.ndarray, offsets: np.ndarray,
                  device: torch.device,
                  frame_rows: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The ``magnified.h5`` arrays of a batch of samples (all but ``pseudo_apex_frame``).

    The one computation of the ``magnify`` stage (:func:`magnify_faces`) and of ``mer-predict``
    on a clip (:mod:`pipeline.predict`).

    Parameters
    ----------
    magnifiers : mapping
        ``{"oh": OhMagNet, "stmemm": STMEMM}`` in eval mode on ``device``.
    plan : MagnifyPlan
    onset, apex : ndarray (B, S, S, 3) uint8
        Aligned crops at S = ``flow.size``.
    window_frames : ndarray (B, W, S, S, 3) uint8
        The pseudo-apex windows (apex + 0 … W − 1, clipped at the offset).
    offsets : ndarray (B,) int
        Each sample's pseudo-apex offset k (:func:`draw_offsets`, clipped to W − 1).
    device : torch.device
    frame_rows : mapping, optional
        Magnifier → (B,) bool (:func:`frame_masks`): decode that magnifier's frames for these
        samples only; their rows elsewhere are zero and ``frames/<magnifier>/computed`` (B,)
        uint8 records which are real (module docstring).  None or an absent magnifier: all.

    Returns
    -------
    dict
        Dataset name → array with a leading batch axis (docs/internals.md, ``magnified.h5``).

    Raises
    ------
    FloatingPointError
        A latent beyond the float16 range.
    """
    k = np.asarray(offsets, dtype=np.int64)
    pseudo = window_frames[np.arange(len(k)), k]
    t_on, t_ap, t_ps = (to_model_range(x, device) for x in (onset, apex, pseudo))
    t_win = None
    if plan.all_offsets:
        frames_k = window_frames[:, :plan.n_k]
        t_win = to_model_range(frames_k.reshape(-1, *frames_k.shape[2:]), device)
        t_win = t_win.reshape(len(k), plan.n_k, *t_win.shape[1:])
    rows = dict(frame_rows or {})
    out = _oh_outputs(magnifiers["oh"], t_on, t_ap, t_ps, plan.latent_alpha, plan.latent_kind,
                      plan.oh_alphas, t_win, k,
                      window_starts_at_apex=bool(np.array_equal(window_frames[:, 0], apex)),
                      frame_rows=rows.get("oh"))
    if plan.stmemm_alphas:
        out.update(_stmemm_outputs(magnifiers["stmemm"], t_on, t_ap, plan.stmemm_alphas,
                                   rows.get("stmemm")))
    for kind, alphas in (("oh", plan.oh_alphas), ("stmemm", plan.stmemm_alphas)):
        if alphas and kind in rows:
            out[computed_dataset(kind)] = np.asarray(rows[kind], dtype=np.uint8)
    out["pseudo_apex_offset"] = k.astype(np.int16)
    return out


def magnify_faces(faces_path: str | os.PathLike, out_path: str | os.PathLike,
                  magnifiers: Mapping[str, nn.Module], size: int, cfg: Mapping[str, Any],
                  device: torch.device, params: Mapping[str, Any],
                  progress: bool = True) -> dict[str, Any]:
    """Compute and write ``magnified.h5`` for every sample of ``faces.h5``.

    Parameters
    ----------
    faces_path : path
        ``data/features/faces.h5`` (schema ``faces``).
    out_path : path
        ``data/features/magnified.h5``, written atomically.
    magnifiers : mapping
        ``{"oh": OhMagNet, "stmemm": STMEMM}`` in eval mode on ``device``; a missing key skips
        its outputs (``oh`` is required for the latents).
    size : int
        Crop side S (``flow.size``), pixels.
    cfg : mapping
        The ``magnify`` section: ``latent_alpha``, ``latent_kind``, ``frames`` (``{"oh": [...],
        "stmemm": [...]}``), ``frames_databases`` (``{"stmemm": [databases]}``: decoded frames
        of that magnifier only for those databases' samples; absent or null: every sample),
        ``pseudo_apex`` (``seed``, ``max_offset``, ``all_offsets``), ``batch_size``.
    device : torch.device
    params : mapping
        Stored in the file (readers compare them).

    Returns
    -------
    dict
        ``n_samples``, the dataset names written, the offsets' histogram, and per magnifier of
        ``frames_databases`` the number of samples whose frames were decoded
        (``frames_computed``).

    Raises
    ------
    CacheError
        If ``faces.h5`` is missing, of another schema, or lacks the crops at size S.
    ValueError
        On an unknown ``latent_kind``, a missing Oh magnifier or a bad ``frames_databases``.
    """
    faces = FeatureCache(faces_path, "faces")
    n_onset, n_apex, n_pseudo = _check_inputs(faces, size)
    ids = list(faces.sample_ids)
    if not ids:
        raise CacheError(f"{faces.path}: no samples (every sample failed in the faces stage?)")
    window = faces.datasets[n_pseudo][0][1]
    plan = MagnifyPlan.from_config(cfg, window, magnifiers)
    offsets, n_clipped = plan.offsets(ids, window)
    if plan.max_offset > window - 1:
        log.warning("pseudo-apex offsets up to %d frames but faces.h5 holds a window of %d: "
                    "clipping %d offsets to %d", plan.max_offset, window, n_clipped, window - 1)
    masks = frame_masks(ids, cfg.get("frames_databases"))
    masks = {k: m for k, m in masks.items()
             if (plan.oh_alphas if k == "oh" else plan.stmemm_alphas)}
    for kind, mask in masks.items():
        log.info("%s frames for %d of %d samples (magnify.frames_databases.%s: %s); the other "
                 "%d are not decoded", kind, int(mask.sum()), len(ids), kind,
                 list(cfg["frames_databases"][kind]), len(ids) - int(mask.sum()))
    has_numbers = "frame_numbers/pseudo_apex" in faces.datasets
    batch = int(cfg.get("batch_size", 16))
    names: list[str] = []
    # float16 latents barely compress (gzip: ~16 % smaller, most of the stage's write time)
    with CacheWriter(out_path, "magnified", params, compress_float=False) as writer:
        bar = tqdm(range(0, len(ids), batch), desc="magnify", disable=not progress,
                   mininterval=2.0)
        for start in bar:
            rows = np.arange(start, min(start + batch, len(ids)))
            part = slice(rows[0], rows[-1] + 1)
            out = magnify_batch(magnifiers, plan, faces.read(n_onset, part),
                                faces.read(n_apex, part), faces.read(n_pseudo, part),
                                offsets[rows], device,
                                {k: m[rows] for k, m in masks.items()})
            if has_numbers:
                numbers = faces.read("frame_numbers/pseudo_apex", part)
                out["pseudo_apex_frame"] = numbers[np.arange(len(rows)),
                                                   offsets[rows]].astype(np.int32)
            for j, r in enumerate(rows):
                writer.append(ids[r], {name: arr[j] for name, arr in out.items()})
            names = sorted(out)
    faces.close()
    hist = np.bincount(offsets, minlength=plan.max_offset + 1)
    return {"n_samples": len(ids), "datasets": names,
            "pseudo_apex_offset_counts": hist.tolist(),
            "frames_computed": {k: int(m.sum()) for k, m in masks.items()}}


def plot_magnified_samples(faces_path: str | os.PathLike, magnified_path: str | os.PathLike,
                           size: int, out_png: str | os.PathLike, n_samples: int = 4,
                           diff_gain: float = 8.0, seed: int = 0,
                           magnifiers: Mapping[str, nn.Module] | None = None,
                           device: torch.device | str = "cpu") -> None:
    """Figure: onset, apex, magnified apex frames and their differences, the latent.

    Columns: onset | apex | |apex − onset| | per magnifier (the smallest stored factor of Oh et
    al. and of ST-MEMM): magnified apex and its magnified change | mean |latent| over channels.
    The magnified change is |magnified − the same network at α = 1| when ``magnifiers`` are given
    (the network's reconstruction of the apex, so that its reconstruction blur cancels), else
    |magnified − onset|.  Differences are grey-level magnitudes (mean over RGB) × ``diff_gain``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    faces = FeatureCache(faces_path, "faces")
    mag = FeatureCache(magnified_path, "magnified")
    rng = np.random.default_rng(seed)
    ids = list(mag.sample_ids)
    # samples whose every magnifier's frames were decoded (frames_databases), if there are any
    shown_rows = np.ones(len(ids), dtype=bool)
    for name in mag.datasets:
        if name.startswith("frames/") and name.endswith("/computed"):
            shown_rows &= mag.read(name, slice(None)).astype(bool)
    rows = np.flatnonzero(shown_rows) if shown_rows.any() else np.arange(len(ids))
    pick = sorted(rng.choice(rows, size=min(n_samples, len(rows)), replace=False).tolist())
    frame_sets = sorted({n.rsplit("/", 1)[0] for n in mag.datasets
                         if n.startswith("frames/") and n.endswith("/apex")})
    shown = []
    for kind in ("oh", "stmemm"):
        sets = [s for s in frame_sets if s.startswith(f"frames/{kind}/")]
        if sets:
            shown.append(sorted(sets, key=lambda s: float(s.rsplit("alpha", 1)[1]))[0])
    cols = 3 + 2 * len(shown) + 1
    fig, axes = plt.subplots(len(pick), cols, figsize=(1.9 * cols, 2.0 * len(pick)),
                             squeeze=False)
    for r, i in enumerate(pick):
        sid = ids[i]
        fi = faces.index_of(sid)
        onset_u8 = faces.read(f"crop{size}/onset", fi)
        apex_u8 = faces.read(f"crop{size}/apex", fi)
        onset, apex = onset_u8.astype(np.float32), apex_u8.astype(np.float32)
        panels = [(onset, "onset"), (apex, "apex"),
                  (np.abs(apex - onset).mean(-1) * diff_gain, f"|apex−onset|×{diff_gain:g}")]
        for s in shown:
            frame = mag.read(f"{s}/apex", i).astype(np.float32)
            kind = s.split("/")[1]
            label = s.removeprefix("frames/").replace("/alpha", " α=")
            panels.append((frame, label))
            if magnifiers is not None and kind in magnifiers:
                ref = _magnify_one(magnifiers[kind], onset_u8, apex_u8, 1.0, device)
                panels.append((np.abs(frame - ref).mean(-1) * diff_gain,
                               f"|{label} − α=1|×{diff_gain:g}"))
            else:
                panels.append((np.abs(frame - onset).mean(-1) * diff_gain,
                               f"|{label} − onset|×{diff_gain:g}"))
        lat = mag.read("latent/onset_apex", i).astype(np.float32)
        panels.append((np.abs(lat).mean(0), "mean |latent| onset→apex"))
        for c, (img, title) in enumerate(panels):
            ax = axes[r, c]
            if img.ndim == 3:
                ax.imshow(np.clip(img, 0, 255).astype(np.uint8))
            elif title.startswith("mean |latent|"):
                ax.imshow(img, cmap="magma")
            else:
                ax.imshow(np.clip(img, 0, 255), cmap="magma", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=7)
        axes[r, 0].set_ylabel(sid, fontsize=6)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110, format="png")
    plt.close(fig)
    faces.close()
    mag.close()


@torch.no_grad()
def _magnify_one(model: nn.Module, a: np.ndarray, b: np.ndarray, alpha: float,
                 device: torch.device | str) -> np.ndarray:
    out = model(to_model_range(a, device), to_model_range(b, device), alpha)
    return from_model_range(out)[0].astype(np.float32)


def load_magnifiers(models_dir: str | os.PathLike, kinds: Sequence[str], device: torch.device,
                    expected: Mapping[str, Mapping[str, Any]] | None = None
                    ) -> tuple[dict[str, nn.Module], dict[str, dict[str, str]]]:
    """Load the trained magnifiers ``models/magnifier/<kind>.pt`` in eval mode.

    Parameters
    ----------
    models_dir : path
        ``models/magnifier``.
    kinds : sequence of str
        ``oh`` and/or ``stmemm``.
    device : torch.device
    expected : mapping, optional
        kind → ``{"arch", "sha256"}`` as stored in ``magnified.h5``'s params: each weight file
        must have that SHA-256 (the weights a model was trained with).

    Returns
    -------
    magnifiers : dict
        kind → module.
    stored : dict
        kind → ``{"arch", "sha256"}`` (what ``magnified.h5`` stores).

    Raises
    ------
    FileNotFoundError
        A weight file is missing.
    ValueError
        A weight file whose SHA-256 differs from ``expected`` (naming the file and both hashes).
    """
    from pipeline.assets import sha256_of
    from pipeline.magnification.train import WEIGHT_FILES, load_magnifier

    magnifiers: dict[str, nn.Module] = {}
    stored: dict[str, dict[str, str]] = {}
    for kind in kinds:
        path = Path(models_dir) / WEIGHT_FILES[kind]
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no {kind} magnifier weights (written by `dvc repro "
                                    f"magnifier`)")
        digest = sha256_of(path)
        want = (expected or {}).get(kind, {}).get("sha256")
        if want is not None and digest != want:
            raise ValueError(f"{path}: SHA-256 {digest[:12]}…, but the features were computed "
                             f"with {kind} weights {str(want)[:12]}… (re-run `dvc repro magnify` "
                             f"and the training, or use the magnifier they were made with)")
        model, meta = load_magnifier(path, device)
        magnifiers[kind] = model
        stored[kind] = {"arch": meta["arch"], "sha256": digest}
    return magnifiers, stored


def run_magnify(cfg: Mapping[str, Any], *, size: int, seed: int,
                faces_path: str | os.PathLike, models_dir: str | os.PathLike,
                out_path: str | os.PathLike, figure_path: str | os.PathLike,
                progress: bool = True) -> dict[str, Any]:
    """The ``magnify`` stage: load the trained magnifiers, write ``magnified.h5`` and the figure.

    Parameters
    ----------
    cfg : mapping
        The resolved ``magnify`` section (``device``, ``torch_threads``, ``latent_alpha``,
        ``latent_kind``, ``frames``, ``frames_databases``, ``pseudo_apex``, ``batch_size``,
        ``figure_samples``).
    size : int
        ``flow.size``: the crop side S the latents and frames are computed at.
    seed : int
        The project seed (the figure's choice of samples).
    faces_path, models_dir, out_path, figure_path : path
        ``data/features/faces.h5``, ``models/magnifier``, ``data/features/magnified.h5``, and the
        figure (PNG).

    Returns
    -------
    dict
        Summary of :func:`magnify_faces`.

    Raises
    ------
    FileNotFoundError
        A weight file is missing.
    CacheError
        ``faces.h5`` is missing or lacks the crops at size S.
    """
    from pipeline.io import atomic_path
    from pipeline.magnification.train import resolve_device

    frame_masks([], cfg.get("frames_databases"))       # a bad frames_databases: fail early
    device = resolve_device(str(cfg.get("device", "auto")))
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg["torch_threads"]))
    frames_cfg = cfg.get("frames", {})
    needed = ["oh"] + (["stmemm"] if frames_cfg.get("stmemm") else [])
    magnifiers, stored = load_magnifiers(models_dir, needed, device)
    frames_databases = {k: (None if v is None else [str(d) for d in v])
                        for k, v in (cfg.get("frames_databases") or {}).items()}
    params = {"size": int(size), "latent_alpha": float(cfg.get("latent_alpha", 10)),
              "latent_kind": cfg.get("latent_kind", "difference"),
              "frames": {k: [float(a) for a in v] for k, v in frames_cfg.items()},
              "frames_databases": frames_databases,
              "pseudo_apex": dict(cfg.get("pseudo_apex", {})), "magnifiers": stored}
    summary = magnify_faces(faces_path, out_path, magnifiers, int(size), cfg, device, params,
                            progress=progress)
    with atomic_path(figure_path, suffix=".png") as tmp:
        plot_magnified_samples(faces_path, out_path, int(size), tmp,
                               n_samples=int(cfg.get("figure_samples", 4)), seed=seed,
                               magnifiers=magnifiers, device=device)
    log.info("%d samples: latents at α = %g (%s) and %s written to %s on %s",
             summary["n_samples"], params["latent_alpha"], params["latent_kind"],
             ", ".join(f"{k} α ∈ {v}" for k, v in params["frames"].items()), out_path, device)
    return summary

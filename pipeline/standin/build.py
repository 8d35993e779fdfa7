"""Building the stand-in benchmark: photos → label plan → rendered frames → release layouts.

Output (``out``)::

    out/
      ATTRIBUTION.md
      casme/ casme2/ samm/ mmew/ fourd/ casme3a/ smic/     one database root per key: the release's
                                                           spreadsheet and frame tree, ATTRIBUTION.md
      ground_truth/<key>.json, <key>.csv                   per sample: truth the pipeline never reads
      ground_truth/build.json                              profile, seed, photos used and skipped, counts
      contact_sheets/<key>.png                             a few samples: onset, true apex, difference

The same seed, profile, photos and landmarker give byte-identical output, whatever ``n_jobs``.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np

from pipeline import __version__
from pipeline.io import write_json
from pipeline.standin import faces as face_src
from pipeline.standin.aus import CD6ME_AUS, face_roi
from pipeline.standin.contact_sheet import contact_sheet
from pipeline.standin.labels import (
    Clip,
    DatabasePlan,
    StandinPlan,
    Subject,
    plan_standin,
    rng_for,
)
from pipeline.standin.profiles import KEYS, DatabaseProfile, Profile, get_profile
from pipeline.standin.render import (
    AUAmplitude,
    EventSpec,
    HeadMotion,
    Nuisance,
    Placement,
    encode_jpeg,
    head_shift,
    place_photo,
    prepare_events,
    render_frames,
)
from pipeline.standin.writers import frame_name, write_attribution, write_sheet

log = logging.getLogger("standin")
#: The clip nuisance entries the renderer's :class:`Nuisance` takes (the plan records more).
NUISANCE_KEYS = ("flicker", "flicker_hz", "flicker_phase", "noise_sigma", "jpeg_quality")

StandinError = face_src.StandinError


def _n_workers(n_jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) if n_jobs is None or n_jobs < 0 else n_jobs)


def build_standin(out: str | os.PathLike, profile: str | Profile = "quick", seed: int = 0,
                  faces_dir: str | os.PathLike | None = None,
                  landmarker_model: str | os.PathLike | None = None, n_jobs: int = 1,
                  databases: list[str] | None = None, allow_download: bool = True,
                  contact_sheets: bool = True) -> dict:
    """Build the stand-in databases into ``out``.

    Parameters
    ----------
    out : path
        Target folder; created, must be empty if it exists.
    profile : {"quick", "full", "tiny"} or Profile
    seed : int
        Seeds the photo order, the label plan and the rendering noise.
    faces_dir : path, optional
        Folder of face photos; ``None``: ``$MER_FACES_DIR``, else download (:mod:`.faces`).
    landmarker_model : path, optional
        MediaPipe ``face_landmarker.task``; ``None``: ``$MER_LANDMARKER_MODEL``, else download.
    n_jobs : int
        Worker processes (``-1``: all cores).  The output does not depend on it.
    databases : list of str, optional
        Keys to build (default all seven).
    allow_download : bool
        Whether photos may be downloaded when no folder is configured.
    contact_sheets : bool

    Returns
    -------
    dict
        The build report (also written to ``ground_truth/build.json``).

    Raises
    ------
    StandinError
        If ``out`` is not empty, the photo folder is missing or holds no usable face.
    pipeline.assets.AssetError
        If photos or the landmarker bundle can be had neither locally nor by download.
    """
    from joblib import Parallel, delayed
    from tqdm import tqdm

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise StandinError(f"{out}: output folder is not empty")
    out.mkdir(parents=True, exist_ok=True)
    prof = get_profile(profile) if isinstance(profile, str) else profile
    keys = [k for k in KEYS if databases is None or k in databases]
    workers = _n_workers(n_jobs)

    folder = face_src.resolve_faces_dir(faces_dir, allow_download=allow_download)
    photos = face_src.list_photos(folder)
    order = rng_for(seed, 777).permutation(len(photos))
    photos = [photos[i] for i in order]
    needed = sum(prof.databases[k].n_subjects for k in keys)
    usable, skipped = face_src.select_identities(photos, needed, landmarker_model, n_jobs=workers)
    if len(usable) < needed:
        log.warning("only %d usable face photos for the %d subjects of profile %s: subjects "
                    "scaled down", len(usable), needed, prof.name)
    plan = plan_standin(prof, seed, n_identities=min(len(usable), needed), databases=keys)

    # render: one task per (database, subject); each writes its own clip folders
    tasks = []
    for key, db in plan.databases.items():
        root = out / key
        root.mkdir(parents=True, exist_ok=True)
        for subj in db.subjects:
            photo, lm = usable[subj.identity]
            clips = [(i, c) for i, c in enumerate(db.clips) if c.subject == subj.index]
            tasks.append(((key, subj.index), (str(root), db.profile, subj, clips, str(photo.path), lm,
                                              workers > 1)))
    log.info("rendering %d subjects in %d databases (profile %s, %d worker%s)", len(tasks),
             len(keys), prof.name, workers, "s" if workers > 1 else "")
    if workers > 1:
        gen = Parallel(n_jobs=workers, return_as="generator")(
            delayed(_render_subject)(*args) for _, args in tasks)
    else:
        gen = (_render_subject(*args) for _, args in tasks)
    rendered: dict[tuple[str, int], dict] = {}
    for (tid, _), res in tqdm(zip(tasks, gen, strict=True), total=len(tasks), desc="standin",
                              unit="subject", disable=None):
        rendered[tid] = res

    # sheets, ground truth, attribution, contact sheets
    photo_of = {i: p for i, (p, _) in enumerate(usable)}
    sha = {p.file: _sha256(p.path) for p, _ in usable}
    write_attribution(out)
    gt_dir = out / "ground_truth"
    gt_dir.mkdir()
    report = {"profile": prof.name, "seed": int(seed), "pipeline_version": __version__,
              "amplitude_scale": prof.amplitude_scale,
              "amplitude_iod": {k: list(prof.databases[k].amplitude_iod) for k in keys},
              "databases": {},
              "photos": {"available": len(photos), "used": [], "skipped": skipped}}
    for key, db in plan.databases.items():
        root = out / key
        write_sheet(db, root)
        write_attribution(root)
        records = _ground_truth(db, rendered, photo_of, sha)
        gt = {"database": key, "profile": prof.name, "seed": int(seed),
              "amplitude_iod": list(db.profile.amplitude_iod),
              "database_profile": asdict(db.profile), "samples": records}
        write_json(gt_dir / f"{key}.json", gt)
        _write_gt_csv(gt_dir / f"{key}.csv", records)
        if contact_sheets:
            contact_sheet(key, root, _contact_pick(records, prof.contact_samples),
                          out / "contact_sheets" / f"{key}.png")
        quirks: dict[str, int] = {}
        for r in records:
            for q in r["quirks"]:
                quirks[q] = quirks.get(q, 0) + 1
        n_frames = sum(c.last - c.first + 1 for c in db.clips)
        micro = sum(r["expression_type"] == "micro" for r in records)
        report["databases"][key] = {"rows": len(records), "micro": micro,
                                    "macro": len(records) - micro, "subjects": len(db.subjects),
                                    "clips": len(db.clips), "frames": n_frames, "quirks": quirks}
        report["photos"]["used"].extend(
            {"database": key, "subject": _plain(s.name), "file": photo_of[s.identity].file,
             "identity": photo_of[s.identity].identity, "sha256": sha[photo_of[s.identity].file]}
            for s in db.subjects)
        log.info("%s: %d rows (%d micro), %d subjects, %d frames, quirks %s", key, len(records),
                 micro, len(db.subjects), n_frames, quirks or "none")
    write_json(gt_dir / "build.json", report)
    return report


def _sha256(path: Path) -> str:
    from pipeline.assets import sha256_of

    return sha256_of(path)


def _plain(v: object) -> object:
    return v.item() if hasattr(v, "item") else v


def _render_subject(root: str, dbp: DatabaseProfile, subject: Subject, clips: list[tuple[int, Clip]],
                    photo_path: str, landmarks: np.ndarray, single_thread: bool) -> dict:
    """Render and write every clip of one subject; return what the ground truth needs."""
    import cv2

    if single_thread:
        cv2.setNumThreads(1)
    photo = face_src.read_rgb(photo_path)
    if photo is None:
        raise StandinError(f"{photo_path}: the photo became unreadable during the build")
    placement = Placement(frame_size=dbp.frame_size, iod_px=subject.iod_px, centre=subject.centre,
                          roll_deg=subject.roll_deg, grey=dbp.grey, gains=subject.gains,
                          gamma=subject.gamma)
    placed = place_photo(photo, landmarks, placement)
    roi = face_roi(placed.landmarks, dbp.frame_size)
    lm = placed.landmarks
    box = (float(lm[:, 0].min()), float(lm[:, 1].min()), float(lm[:, 0].max()), float(lm[:, 1].max()))
    out: dict = {"face_box": box, "clips": {}}
    for idx, clip in clips:
        rng = np.random.default_rng(clip.seed)
        head = HeadMotion.draw(rng, clip.head["translation_px"], clip.head["rotation_deg"],
                               clip.head["jitter_px"], time_scale=clip.head["time_scale"])
        nuisance = Nuisance(**{k: clip.nuisance[k] for k in NUISANCE_KEYS})
        specs = [EventSpec(tuple(AUAmplitude(a.au, a.side, a.amplitude_px)
                                 for a in ev.actions if a.rendered), ev.onset, ev.apex, ev.offset)
                 for ev in clip.events]
        prepared = prepare_events(placed, specs, roi)
        frames = list(range(clip.first, clip.last + 1))
        folder = Path(root) / clip.folder
        folder.mkdir(parents=True, exist_ok=True)
        for k, img in zip(frames, render_frames(placed, prepared, roi, frames, dbp.fps, head,
                                                nuisance, rng), strict=True):
            (folder / frame_name(clip.naming, k)).write_bytes(encode_jpeg(img, nuisance.jpeg_quality))
        out["clips"][idx] = {
            "events": [p.amplitudes for p in prepared],
            "head_shift_px": [head_shift(head, placed, dbp.fps, clip.first, ev.onset, ev.apex)
                              for ev in clip.events],
            "head": {"translation_px": head.translation_px,
                     "translation_iod": clip.head["translation_iod"],
                     "rotation_deg": head.rotation_deg,
                     "jitter_px": head.jitter_px, "time_scale": head.time_scale,
                     "freqs_hz": head.freqs_hz.round(4).tolist(),
                     "phases": head.phases.round(4).tolist(),
                     "coeffs": head.coeffs.round(4).tolist()},
        }
    return out


def _r(x: float, nd: int = 4) -> float:
    return round(float(x), nd)


def _ground_truth(db: DatabasePlan, rendered: dict, photo_of: dict, sha: dict) -> list[dict]:
    """Per-sample ground truth: the plan plus what rendering measured."""
    records = []
    prev: tuple | None = None
    repeat = 1
    for s in db.samples:
        clip = db.clips[s.clip]
        subj = db.subjects[s.subject]
        res = rendered[(db.key, subj.index)]
        cres = res["clips"][s.clip]
        ev = clip.events[s.event]
        amps = cres["events"][s.event]
        aus = []
        it = iter(amps)
        for a in ev.actions:
            rec = {"au": a.au, "side": a.side, "coded": a.coded, "k_marked": a.k_marked,
                   "intensity": a.intensity, "rendered": a.rendered}
            if a.rendered:
                r = next(it)
                rec.update(amplitude_px=_r(r["amplitude_px"]), requested_px=_r(r["requested_px"]),
                           amplitude_iod=_r(100.0 * r["amplitude_px"] / subj.iod_px),
                           requested_iod=_r(100.0 * r["requested_px"] / subj.iod_px),
                           capped=r["capped"], peak_xy=[_r(v, 2) for v in r["peak_xy"]],
                           peak_dir=[_r(v) for v in r["peak_dir"]])
            else:
                rec.update(amplitude_px=0.0, requested_px=_r(a.amplitude_px), amplitude_iod=0.0,
                           requested_iod=_r(100.0 * a.amplitude_px / subj.iod_px), capped=False,
                           peak_xy=None, peak_dir=None)
            aus.append(rec)
        blinks = [{"onset": e.onset, "apex": e.apex, "offset": e.offset,
                   "amplitude_px": _r(cres["events"][j][0]["amplitude_px"]),
                   "coded": any(a.au == 45 and not a.rendered for a in ev.actions)}
                  for j, e in enumerate(clip.events) if e.kind == "blink"
                  and e.onset <= s.offset and e.offset >= s.onset]
        # the material a DATASETS.md reader makes unique: repeated consecutive Filenames of a
        # subject get 2, 3, ... appended (micro-expression rows; macro rows have videos of their own)
        key_ = (s.subject, s.material)
        repeat = repeat + 1 if key_ == prev and s.expression_type == "micro" else 1
        prev = key_ if s.expression_type == "micro" else prev
        unique = s.material if repeat == 1 else f"{s.material}{repeat}"
        photo = photo_of[subj.identity]
        records.append({
            "row": s.row,
            "sheet_row": s.row + (15 if db.key == "samm" else 2),
            "subject": _plain(subj.name),
            "subject_folder": subj.folder,
            "material": s.material,
            "material_unique": unique,
            "expression_type": s.expression_type,
            "folder": clip.folder,
            "frame_range": [clip.first, clip.last],
            "frame_files": [frame_name(clip.naming, k) for k in range(s.onset, s.offset + 1)],
            "onset": s.onset,
            "apex": s.apex,
            "annotated_apex": s.annotated_apex,
            "offset": s.offset,
            "au_cell": s.au_cell,
            "label_aus": s.label_aus,
            "au_alternatives": s.au_alternatives,
            "aus": aus,
            "emotion": s.emotion,
            "rule_emotion": s.rule_emotion,
            "canonical_emotion": s.canonical_emotion,
            "objective_class": s.objective_class,
            "quirks": s.quirks,
            "blinks": blinks,
            "identity": {"slot": subj.identity, "file": photo.file, "identity": photo.identity,
                         "sha256": sha[photo.file]},
            "placement": {"frame_size": list(db.profile.frame_size), "iod_px": _r(subj.iod_px, 3),
                          "centre": [_r(v, 2) for v in subj.centre], "roll_deg": _r(subj.roll_deg, 3),
                          "grey": db.profile.grey, "gains": [_r(g) for g in subj.gains],
                          "gamma": _r(subj.gamma)},
            "face_box": [_r(v, 2) for v in res["face_box"]],
            "head_motion": {**cres["head"], "shift_onset_apex_px": _r(cres["head_shift_px"][s.event]),
                            "shift_onset_apex_iod": _r(100 * cres["head_shift_px"][s.event]
                                                       / subj.iod_px)},
            "nuisance": clip.nuisance,
            "fps": db.profile.fps,
            "seed": clip.seed,
            "extra": s.extra,
        })
    return records


_CSV_COLUMNS = ["row", "subject", "subject_folder", "material", "material_unique",
                "expression_type", "folder", "onset", "apex", "annotated_apex", "offset",
                "n_frames", "au_cell", "label_aus", *[f"AU{a}_px" for a in CD6ME_AUS],
                *[f"AU{a}_iod" for a in CD6ME_AUS], "side",
                "emotion", "quirks", "blink", "head_shift_px", "identity", "seed"]


def _write_gt_csv(path: Path, records: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(_CSV_COLUMNS)
    for r in records:
        amp = {a["au"]: a["amplitude_px"] for a in r["aus"] if a["rendered"] and not a["k_marked"]}
        amp_iod = {a["au"]: a["amplitude_iod"] for a in r["aus"]
                   if a["rendered"] and not a["k_marked"]}
        sides = sorted({a["side"] for a in r["aus"] if a["rendered"] and a["au"] in CD6ME_AUS})
        w.writerow([r["row"], r["subject"], r["subject_folder"], r["material"], r["material_unique"],
                    r["expression_type"], r["folder"], r["onset"], r["apex"],
                    "" if r["annotated_apex"] is None else r["annotated_apex"], r["offset"],
                    len(r["frame_files"]), r["au_cell"], "|".join(map(str, r["label_aus"])),
                    *[amp.get(a, 0.0) for a in CD6ME_AUS], *[amp_iod.get(a, 0.0) for a in CD6ME_AUS],
                    "".join(sides) or "-", r["emotion"],
                    "|".join(r["quirks"]), int(bool(r["blinks"])),
                    r["head_motion"]["shift_onset_apex_px"], r["identity"]["identity"], r["seed"]])
    path.write_text(buf.getvalue(), encoding="utf-8")


def _contact_pick(records: list[dict], n: int) -> list[dict]:
    """The ``n`` micro-expressions whose AU motion stands out most against the head motion."""
    micro = [r for r in records if r["expression_type"] == "micro"]

    def key(r: dict) -> tuple:
        amp = max((a["amplitude_px"] for a in r["aus"] if a["rendered"] and a["au"] != 45),
                  default=0.0)
        return (-amp / (0.25 + r["head_motion"]["shift_onset_apex_px"]), r["row"])
    return sorted(micro, key=key)[:n]


def plan_only(profile: str | Profile = "full", seed: int = 0, n_identities: int | None = None,
              databases: list[str] | None = None) -> StandinPlan:
    """The label plan of a build without photos or rendering (see :func:`.labels.plan_standin`)."""
    prof = get_profile(profile) if isinstance(profile, str) else profile
    return plan_standin(prof, seed, n_identities=n_identities, databases=databases)

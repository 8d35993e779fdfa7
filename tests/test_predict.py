"""mer-predict on a rendered video, final models, head-motion registration and the chin crop.

The clip: a London-set photo placed into 320×240 frames and animated by the stand-in's own
renderer (:mod:`pipeline.standin.render`, its warp without the AUs' shading) with AU12 (lip
corner puller) only, onset 0, apex 6, offset 12, plus a rigid head drift that grows linearly
(0.8 px/frame right, 0.4 px/frame up, 0.2°/frame) — at the apex the head has moved ~5 px, more
than the AU's 2 px — written with OpenCV's VideoWriter (MJPG).

The AU model is constructed, not trained, so that the test does not depend on what a few epochs
learn: per AU a fixed flow *template* — Gaussian blobs where FACS puts the AU's motion in the
default crop, pointing the way that AU moves (AU12: lip corners up and out; AU14: corners in;
AU15: corners down; AU1/AU2: brows up; …) — and the AU logit is the template's correlation with the
clip's normalised onset→apex flow.  The weights encode no clip: which AU comes out on top is
decided by where and which way the rendered face moves once the head drift is removed.  (A
uniform drift alone scores every AU that moves the same way alike; without registration AU12 is no
longer clearly on top, which the test also checks.)  The emotion model is the same construction
over three classes (positive: AU12; negative: AU4 + AU15; surprise: AU1 + AU2).

A real family (SSSNet) goes through ``train@``'s final-model fit on the synthetic caches of
``training_synth`` and is then run on the same clip: that checks the file carries everything
prediction needs (the probabilities of a model trained on blobs mean nothing here).
"""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import training_synth
from torch import nn

from pipeline import predict as mp
from pipeline.features.align import (
    apply_affine,
    box_from_eyes,
    box_keeping_chin,
    similarity_params,
    similarity_transform,
    to_crop_units,
)
from pipeline.training.data import InputSpec, read_samples
from pipeline.training.final import FORMAT, load_final, params_hash
from pipeline.training.protocols import CD6ME_AUS
from pipeline.training.registry import MethodSpec, register
from pipeline.training.run import RunPaths, run_method

W, H, IOD = 320, 240, 60.0
ONSET, APEX, OFFSET, N_FRAMES = 0, 6, 12, 13
DRIFT = (0.8, -0.4, 0.2)          # px, px, degrees per frame
SIZE = 32                         # model input side
FLOW_SIZE = 64                    # crop side the flow is computed on (fast TV-L1)
TVL1 = {"tau": 0.25, "lambda_": 0.15, "theta": 0.3, "nscales": 5, "warps": 5, "epsilon": 0.01,
        "innnerIterations": 30, "outerIterations": 10, "scaleStep": 0.8, "gamma": 0.0,
        "medianFiltering": 5, "useInitialFlow": False}
FACES = {"detector": "mediapipe", "sizes": [FLOW_SIZE], "pseudo_apex_window": 3,
         "sequence_length": 4, "sequence_size": FLOW_SIZE, "crop_side": 2.8, "centre_below": 0.5,
         "detect_max_side": 640}

EMOTION_TEMPLATES = {"negative": ("AU4", "AU15"), "positive": ("AU6", "AU12"),
                     "surprise": ("AU1", "AU2", "AU5")}


def _placed_face(photo_path, landmarker_model):
    from pipeline.facedetect import FaceLandmarker
    from pipeline.standin.render import Placement, place_photo

    photo = cv2.cvtColor(cv2.imread(str(photo_path)), cv2.COLOR_BGR2RGB)
    with FaceLandmarker(landmarker_model) as lm:
        pts = lm(photo)
    return place_photo(photo, pts, Placement((W, H), IOD, (W / 2, 95.0), 0.0, False))


def standin_au_templates(faces_dir, landmarker_model, size: int) -> dict[str, np.ndarray]:
    """Each CD6ME AU's stand-in displacement field (bilateral, unit peak) drawn on *another*
    subject's face (photo 002_03) and cropped as the faces stage crops: ``(2, size, size)``,
    unit L2 norm — what an AU looks like in the stand-in world, independent of the clip."""
    from pipeline.features.align import crop_matrix
    from pipeline.features.faces import FacesConfig, face_box
    from pipeline.standin import aus as au_fields

    placed = _placed_face(faces_dir / "neutral_front" / "002_03.jpg", landmarker_model)
    roi = au_fields.face_roi(placed.landmarks, (W, H))
    box = face_box(placed.landmarks.astype(np.float32), FacesConfig())
    m = crop_matrix(box, size)
    rot = m[:, :2] / math.hypot(m[0, 0], m[1, 0])
    out = {}
    for name in CD6ME_AUS:
        uf = au_fields.unit_field(int(name[2:]), "B", placed.landmarks, roi)
        full = np.zeros((H, W, 2), np.float32)
        h, w = uf.field.shape[:2]
        full[uf.y0:uf.y0 + h, uf.x0:uf.x0 + w] = uf.field
        crop = cv2.warpAffine(full, m, (size, size), flags=cv2.INTER_AREA)
        t = (crop.reshape(-1, 2) @ rot.T).reshape(size, size, 2).transpose(2, 0, 1)
        out[name] = (t / np.linalg.norm(t)).astype(np.float32)
    return out


class FlowTemplates(nn.Module):
    """logit_k = gain · cos(template_k, (u, v)) + bias on the normalised flow image."""

    def __init__(self, n: int, size: int):
        super().__init__()
        self.register_buffer("templates", torch.zeros(n, 2, size, size))
        self.gain = nn.Parameter(torch.tensor(8.0))
        self.bias = nn.Parameter(torch.tensor(-2.0))

    def forward(self, flow: torch.Tensor) -> torch.Tensor:
        uv = flow[:, :2]
        norm = uv.flatten(1).norm(dim=1, keepdim=True) + 1e-6
        return self.gain * torch.einsum("bchw,kchw->bk", uv, self.templates) / norm + self.bias


@register("flow_templates_test")
def _flow_templates(name, params):
    return MethodSpec(task=params["task"], protocol=params["protocol"],
                      inputs=(InputSpec("flow", "flow", "onset_apex", "flow", SIZE),),
                      build_model=lambda ctx: FlowTemplates(ctx.n_outputs, SIZE))


def _write_template_model(path, task: str, au_templates: dict[str, np.ndarray]):
    if task == "au":
        names = list(CD6ME_AUS)
        temps = [au_templates[a] for a in names]
        params = {"family": "flow_templates_test", "task": "au", "protocol": "cd6me"}
    else:
        names = list(EMOTION_TEMPLATES)
        temps = [sum(au_templates[a] for a in EMOTION_TEMPLATES[c]) for c in names]
        temps = [t / np.linalg.norm(t) for t in temps]
        params = {"family": "flow_templates_test", "task": "emotion", "protocol": "loso"}
    net = FlowTemplates(len(names), SIZE)
    net.templates.copy_(torch.from_numpy(np.stack(temps)))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({
        "format": FORMAT, "method": path.parent.name, "family": params["family"], "task": task,
        "protocol": params["protocol"], "emotion_task": None if task == "au" else "composite-3",
        "class_names": names, "params": params, "params_hash": params_hash(params),
        "data": "constructed", "seed": 0, "epoch": 0, "n_train": 0, "threshold": 0.5,
        "inputs": [{"key": "flow", "cache": "flow", "dataset": "onset_apex", "kind": "flow",
                    "size": SIZE}],
        "flow_norm": "sample", "flow_quantile": 0.99,
        "features": {"flow": {"size": FLOW_SIZE, "tvl1": TVL1, "faces": FACES}},
        "train_targets": [], "train_subjects": [], "state_dict": net.state_dict()}, path)


def _drift_matrix(k: int, centre) -> np.ndarray:
    tx, ty, th = (d * k for d in DRIFT)
    m = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), -th, 1.0)
    m[:, 2] += (tx, ty)
    return m


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, faces_dir, landmarker_model):
    """The AU12 clip with head drift (module docstring): path, folder of frames, truth."""
    from pipeline.standin import aus as au_fields
    from pipeline.standin.render import (
        AUAmplitude,
        EventSpec,
        HeadMotion,
        Nuisance,
        prepare_events,
        render_frames,
    )

    placed = _placed_face(faces_dir / "neutral_front" / "001_03.jpg", landmarker_model)
    roi = au_fields.face_roi(placed.landmarks, (W, H))
    # the warp alone: the template model reads motion, and the AU12 shading (raised-cheek
    # highlight, deeper nasolabial furrow; pipeline.standin.appearance) reads under TV-L1 as the
    # cheek motion of AU6 -- a confusion of real faces too, but this test is about registration
    events = prepare_events(placed, [EventSpec((AUAmplitude(12, "B", 2.5),), ONSET, APEX,
                                               OFFSET)], roi, appearance=False)
    frames = list(render_frames(placed, events, roi, list(range(N_FRAMES)), 30.0,
                                HeadMotion.still(), Nuisance(), np.random.default_rng(0)))
    centre = placed.landmarks[[33, 133, 362, 263]].mean(axis=0)
    root = tmp_path_factory.mktemp("clip")
    video = root / "au12_drift.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (W, H))
    folder = root / "frames"
    folder.mkdir()
    for k, f in enumerate(frames):
        moved = cv2.warpAffine(f, _drift_matrix(k, centre), (W, H), flags=cv2.INTER_CUBIC,
                               borderMode=cv2.BORDER_REPLICATE)
        bgr = cv2.cvtColor(moved, cv2.COLOR_RGB2BGR)
        writer.write(bgr)
        cv2.imwrite(str(folder / f"img{k + 100:03d}.png"), bgr)
    writer.release()
    assert video.stat().st_size > 0
    return {"video": video, "folder": folder, "centre": centre,
            "amplitude": events[0].amplitudes[0]["amplitude_px"]}


@pytest.fixture(scope="module")
def template_models(tmp_path_factory, faces_dir, landmarker_model):
    models = tmp_path_factory.mktemp("models")
    temps = standin_au_templates(faces_dir, landmarker_model, SIZE)
    _write_template_model(models / "templates_au" / "final.pt", "au", temps)
    _write_template_model(models / "templates_emotion" / "final.pt", "emotion", temps)
    return models


def _blank_frames(folder):
    """Three uniform grey 160 × 120 frames (no face) in ``folder``."""
    folder.mkdir()
    for k in range(3):
        cv2.imwrite(str(folder / f"f{k:03d}.png"), np.full((120, 160, 3), 128, np.uint8))
    return folder


def _predict(args, capsys):
    code = mp.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured


@pytest.mark.slow
def test_predict_video_au12_on_top_and_head_motion(rendered, template_models, tmp_path, capsys,
                                                   landmarker_model):
    out = tmp_path / "au"
    code, cap = _predict([rendered["video"], "--method", "templates_au", "--models",
                          template_models, "--onset", ONSET, "--apex", APEX, "--offset", OFFSET,
                          "--out", out, "--landmarker-model", landmarker_model], capsys)
    assert code == 0, cap.err
    table = pd.read_csv(out / "predictions.csv")
    assert len(table) == 1
    row = table.iloc[0]
    p = {au: row[f"p_{au}"] for au in CD6ME_AUS}
    others = max(v for au, v in p.items() if au != "AU12")
    assert row["top"] == "AU12" and p["AU12"] > others + 0.02, p
    # Head motion: the similarity apex → onset undoes the rendered drift (6 frames of DRIFT).
    rec = json.loads((out / "predictions.json").read_text())["intervals"][0]
    hm = rec["head_motion_apex"]
    expected_rot = -DRIFT[2] * APEX   # the frame was rotated by +1.2° (cv2 angle −θ, image y down)
    assert hm["rotation_deg"] == pytest.approx(expected_rot, abs=0.35)
    assert hm["raw_px"] > 4.0                      # the head moved more than the AU
    assert hm["residual_px"] < 0.35 * hm["raw_px"]
    assert rec["frames_used"]["apex"] == APEX and rec["frames_used"]["onset"] == ONSET
    assert (out / "head_motion.png").stat().st_size > 0
    assert (out / "overlay_0.png").stat().st_size > 0
    # The same clip without registration: the drift swamps the flow and AU12 loses its lead.
    out2 = tmp_path / "noreg"
    code, cap = _predict([rendered["video"], "--method", "templates_au", "--models",
                          template_models, "--onset", ONSET, "--apex", APEX, "--offset", OFFSET,
                          "--out", out2, "--no-register", "--landmarker-model",
                          landmarker_model], capsys)
    assert code == 0, cap.err
    row2 = pd.read_csv(out2 / "predictions.csv").iloc[0]
    lead2 = row2["p_AU12"] - max(row2[f"p_{au}"] for au in CD6ME_AUS if au != "AU12")
    assert lead2 < p["AU12"] - others


@pytest.mark.slow
def test_predict_spots_apex_and_emotion_on_frame_folder(rendered, template_models, tmp_path,
                                                        capsys, landmarker_model):
    out = tmp_path / "emo"
    code, cap = _predict([rendered["folder"], "--method", "templates_emotion", "--models",
                          template_models, "--onset", 100, "--out", out,
                          "--landmarker-model", landmarker_model], capsys)
    assert code == 0, cap.err
    rec = json.loads((out / "predictions.json").read_text())["intervals"][0]
    assert rec["apex_spotted"] and rec["offset_spotted"]
    assert abs(rec["apex"] - (100 + APEX)) <= 1           # folder frames are numbered from 100
    assert rec["offset"] > rec["apex"]
    assert rec["top"] == "positive", rec["probabilities"]
    assert sum(rec["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.slow
def test_final_model_from_training_runs_on_the_clip(rendered, tmp_path, capsys, landmarker_model):
    csv, feats = training_synth.build(tmp_path / "synth", n_subjects=2, per_subject=3, size=24,
                                      seed=3)
    samples = read_samples(csv)
    params = {"family": "sssnet", "task": "emotion", "protocol": "loso", "epochs": 1,
              "batch_size": 8, "device": "cpu", "input_size": 24, "save_checkpoints": False,
              "tasks": ["casme2-3", "composite-3"], "final_model": True}
    models = tmp_path / "models"
    paths = RunPaths(models / "tiny_loso", tmp_path / "metrics" / "tiny_loso",
                     tmp_path / "metrics" / "tiny_loso.json")
    run_method("tiny_loso", params, samples, feats, paths, "standin-quick", seed=0)
    meta = load_final(models / "tiny_loso" / "final.pt")
    assert meta["emotion_task"] == "composite-3"
    assert meta["class_names"] == ["negative", "positive", "surprise"]
    composite = samples["database"].isin(["casme2", "samm", "smic"]) & (samples["emotion3"] != "")
    assert meta["n_train"] == int(composite.sum())
    assert meta["features"]["flow"]["size"] == 24 and meta["params_hash"] == params_hash(params)
    assert meta["inputs"][0]["dataset"] == "onset_apex"
    code, cap = _predict([rendered["video"], "--method", "tiny_loso", "--models", models,
                          "--onset", ONSET, "--apex", APEX, "--offset", OFFSET, "--out",
                          tmp_path / "out", "--landmarker-model", landmarker_model], capsys)
    assert code == 0, cap.err
    row = pd.read_csv(tmp_path / "out" / "predictions.csv").iloc[0]
    probs = [row[f"p_{c}"] for c in meta["class_names"]]
    assert row["top"] in meta["class_names"] and sum(probs) == pytest.approx(1.0, abs=1e-5)
    assert "STAND-IN" in cap.err
    # switched off: no final model
    run_method("tiny_off", {**params, "final_model": False}, samples, feats,
               RunPaths(models / "tiny_off", tmp_path / "m2", tmp_path / "m2.json"),
               "standin-quick", seed=0)
    assert not (models / "tiny_off" / "final.pt").exists()


def test_predict_clear_errors(tmp_path, template_models, capsys, landmarker_model):
    bad = tmp_path / "notavideo.avi"
    bad.write_text("hello")
    code, cap = _predict([bad, "--method", "templates_au", "--models", template_models], capsys)
    assert code == 2 and ("cannot" in cap.err.lower() or "no frame" in cap.err)
    one = tmp_path / "one"
    one.mkdir()
    cv2.imwrite(str(one / "f001.png"), np.zeros((40, 40, 3), np.uint8))
    code, cap = _predict([one, "--method", "templates_au", "--models", template_models], capsys)
    assert code == 2 and "too short" in cap.err
    blank = _blank_frames(tmp_path / "blank")
    code, cap = _predict([blank, "--method", "templates_au", "--models", template_models,
                          "--landmarker-model", landmarker_model], capsys)
    assert code == 2 and "no face" in cap.err
    code, cap = _predict([blank, "--method", "absent", "--models", template_models], capsys)
    assert code == 2 and "final model" in cap.err


def test_predict_without_a_landmarker_bundle_is_one_line(tmp_path, template_models, capsys,
                                                        monkeypatch):
    """No verified Face Landmarker bundle (a wrong file given, none cached, no download): one
    error line and exit 2, not a traceback."""
    from pipeline import assets

    def offline(url, dest, sha256):
        raise assets.AssetError(f"{url}: download failed (offline)")

    monkeypatch.setattr(assets, "cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setattr(assets, "download", offline)
    monkeypatch.delenv("MER_LANDMARKER_MODEL", raising=False)
    wrong = tmp_path / "face_landmarker.task"
    wrong.write_bytes(b"not a model")
    frames = _blank_frames(tmp_path / "frames")
    code, cap = _predict([frames, "--method", "templates_au", "--models", template_models,
                          "--landmarker-model", wrong], capsys)
    lines = [ln for ln in cap.err.splitlines() if ln.startswith("mer-predict: error:")]
    assert code == 2
    assert len(lines) == 1 and "face_landmarker.task is needed" in lines[0]
    assert "Traceback" not in cap.err


def test_similarity_transform_recovers_a_known_motion():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, size=(17, 2))
    a = math.radians(3.0)
    m = np.array([[1.02 * math.cos(a), -1.02 * math.sin(a), 4.0],
                  [1.02 * math.sin(a), 1.02 * math.cos(a), -2.5]])
    dst = apply_affine(m, src) + rng.normal(0, 0.01, size=src.shape)
    fit = similarity_transform(src, dst)
    tx, ty, rot, scale = similarity_params(fit)
    assert (tx, ty, rot, scale) == pytest.approx((4.0, -2.5, 3.0, 1.02), abs=0.02)
    with pytest.raises(ValueError, match="coincide"):
        similarity_transform(np.ones((4, 2)), dst[:4])


def test_box_keeping_chin_moves_only_the_bottom_edge():
    right, left = np.array([100.0, 100.0]), np.array([160.0, 100.0])   # d = 60, level eyes
    chin = np.array([130.0, 100.0 + 2.2 * 60])                         # 2.2 d below the eyes
    plain = box_from_eyes(right, left, 2.8, 0.5)
    assert to_crop_units(chin[None], plain)[0, 1] > 1.0                # outside the default crop
    box = box_keeping_chin(right, left, chin, 2.8, 0.5, 0.15)
    u = to_crop_units(np.stack([chin, (right + left) / 2]), box)
    assert u[0, 1] == pytest.approx(1 - 0.15 * 60 / box.side, abs=1e-4)   # chin 0.15 d inside
    top_plain = plain.cy - plain.side / 2
    assert box.cy - box.side / 2 == pytest.approx(top_plain, abs=1e-6)    # top edge unchanged
    assert box_keeping_chin(right, left, right + [30, 60], 2.8, 0.5, 0.15) == plain


@pytest.mark.slow
def test_faces_stage_registration_and_chin_options(rendered, landmarker_model):
    from pipeline.facedetect import MP_CHIN
    from pipeline.features.faces import FacesConfig, SampleFrames, process_sample
    from pipeline.features.stage import Item

    paths = sorted(str(p) for p in rendered["folder"].iterdir())
    sf = SampleFrames("clip/s/m", tuple(paths), tuple(range(100, 100 + N_FRAMES)), 100 + APEX)
    base = dict(FACES, pseudo_apex_window=2, sequence_length=3)
    plain = process_sample(Item(sf.sample_id, sf), FacesConfig.from_params(base),
                           str(landmarker_model))
    assert "head_motion/apex" not in plain.arrays
    chin_plain = plain.arrays["landmarks"][MP_CHIN, 1]             # crop units, 1 = bottom edge
    assert 1 - chin_plain < 0.4 / 2.8                              # less than 0.4 d below it
    done = process_sample(Item(sf.sample_id, sf), FacesConfig.from_params(
        {**base, "register_to_onset": True, "chin_margin": 0.4}), str(landmarker_model))
    tx, ty, rot, scale, raw, residual = done.arrays["head_motion/apex"]
    assert rot == pytest.approx(-DRIFT[2] * APEX, abs=0.35) and raw > 4.0 and residual < raw / 3
    assert np.isfinite(done.arrays["head_motion/offset"]).all()
    side = done.arrays["crop_box"][2] / done.arrays["crop_box"][4]   # crop side in d
    assert side > 2.8
    assert done.arrays["landmarks"][MP_CHIN, 1] == pytest.approx(1 - 0.4 / side, abs=0.01)
    # registered: the apex crop's stable region matches the onset's better than unregistered
    def upper_diff(arrays):
        o = arrays[f"crop{FLOW_SIZE}/onset"].astype(float)
        a = arrays[f"crop{FLOW_SIZE}/apex"].astype(float)
        return np.abs(a - o)[: FLOW_SIZE // 2].mean()
    assert upper_diff(done.arrays) < 0.5 * upper_diff(plain.arrays)


@pytest.mark.slow
def test_clip_reading_video_and_folder_agree(rendered):
    video = mp.open_clip(rendered["video"])
    folder = mp.open_clip(rendered["folder"])
    assert len(video) == len(folder) == N_FRAMES and video.fps == pytest.approx(30.0)
    assert folder.numbers == list(range(100, 100 + N_FRAMES)) and video.numbers[0] == 0
    whole = dict(video.read(range(N_FRAMES)))
    part = dict(video.read([9, 5]))                      # a later start: seek or decode on
    assert sorted(part) == [5, 9]
    assert all(np.array_equal(part[k], whole[k]) for k in part)
    png = dict(folder.read([5]))[5]                       # the PNG is the frame before MJPG
    assert png.shape == whole[5].shape and np.abs(png.astype(int) - whole[5]).mean() < 3.0

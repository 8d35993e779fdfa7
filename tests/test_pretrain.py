"""The offline pre-trained start (issue #31, item 4): the ``pretrain`` stage's weights, the
methods' ``pretrained: stage`` switch, the source in the metrics, the distillation, the shipped
weights' checks.  Nothing here downloads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import training_synth
import yaml

from pipeline.assets import sha256_of
from pipeline.models.mobilefacenet import MobileFaceNet
from pipeline.pretrain import distil as D
from pipeline.pretrain.run import run_pretrain
from pipeline.pretrain.weights import (
    SHIPPED_DIR,
    PretrainError,
    fit_gdconv,
    load_mobilefacenet_stage,
    resolve_pretrained,
    verify_shipped,
    without_pretrained,
)
from pipeline.training.registry import MethodError, build_method

WIDTHS = [8, 8, 16, 16]
AU = {"task": "au", "protocol": "cd6me"}


def _ctx(n: int = 12) -> SimpleNamespace:
    subjects = ("casme/sub01", "casme/sub02")
    return SimpleNamespace(n_outputs=n, train_targets=np.eye(2, n, dtype=np.float32),
                           train_subjects=subjects, fold=SimpleNamespace(name="casme"), seed=0)


@pytest.fixture
def stage_dir(tmp_path, monkeypatch):
    """A project root whose ``models/pretrain/`` holds a distilled-like ResNet18 of WIDTHS and a
    MobileFaceNet (width 0.25, C' 16, 48 px), with non-default tensors."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "models" / "pretrain"
    out.mkdir(parents=True)
    torch.manual_seed(123)
    res = D.build_student("resnet18", {"widths": WIDTHS})
    mfn = D.build_student("mobilefacenet", {"width_mult": 0.25, "embedding_dim": 16,
                                            "input_size": 48})
    for student in (res, mfn):
        with torch.no_grad():
            for p in student.parameters():
                p.add_(0.01 * torch.randn_like(p))
    D.save_state(out / "resnet18.pt", res)
    D.save_state(out / "mobilefacenet.pt", mfn)
    return out


def _resnet_section(pretrained) -> dict:
    return {**AU, "family": "resnet_flow", "arch": "resnet18", "pretrained": pretrained,
            "widths": WIDTHS, "input_size": 16}


def test_resnet_flow_stage_weights_loaded(stage_dir):
    spec = build_method("r", _resnet_section("stage"))
    file_state = torch.load(stage_dir / "resnet18.pt", weights_only=True)
    model = spec.build_model(_ctx())
    state = model.state_dict()
    assert set(file_state) == set(state) - {"fc.weight", "fc.bias"}
    for k, v in file_state.items():
        assert torch.equal(state[k], v), k
    random = build_method("r", _resnet_section(False)).build_model(_ctx()).state_dict()
    assert not torch.equal(random["layer3.0.conv1.weight"], state["layer3.0.conv1.weight"])
    assert spec.init_weights == f"stage sha256:{sha256_of(stage_dir / 'resnet18.pt')}"
    assert build_method("r", _resnet_section(False)).init_weights == "none"


def test_infusenet_stage_weights_in_both_streams(stage_dir):
    section = {**AU, "family": "infusenet", "variant": "late_fusion", "pretrained": "stage",
               "input_size": 16, "model": {"cnn_widths": WIDTHS}}
    spec = build_method("late_fusion", section)
    model = spec.build_model(_ctx())
    file_state = torch.load(stage_dir / "resnet18.pt", weights_only=True)
    state = model.state_dict()
    # every stream's layers hold the file's tensors (FrameMag's conv1 is replaced by the latent)
    key = "layer4.1.conv2.weight"
    hits = [k for k in state if k.endswith(key)]
    assert len(hits) == 2 and all(torch.equal(state[k], file_state[key]) for k in hits)
    assert spec.init_weights.startswith("stage sha256:")


def test_ac4au_stage_weights_loaded_and_gdconv_fitted(stage_dir):
    section = {**AU, "family": "ac4au", "model": {
        "input_size": 32, "width_mult": 0.25, "embedding_dim": 16, "expert_hidden": 8,
        "sequence_length": 2, "pretrained": "stage"}}
    spec = build_method("ac4au", section)
    net = spec.build_model(_ctx()).net
    backbone = net.frame_encoder.backbone if hasattr(net, "frame_encoder") else net.backbone
    file_state = torch.load(stage_dir / "mobilefacenet.pt", weights_only=True)
    state = backbone.state_dict()
    assert torch.equal(state["blocks.3.dw.conv.weight"], file_state["blocks.3.dw.conv.weight"])
    # distilled at 48 px (3 x 3 GDConv), used at 32 px (2 x 2): resampled, not dropped
    assert file_state["gdconv.conv.weight"].shape[-1] == 3
    assert state["gdconv.conv.weight"].shape[-1] == 2
    assert torch.allclose(state["gdconv.conv.weight"],
                          fit_gdconv(file_state["gdconv.conv.weight"], 2))
    assert spec.init_weights.startswith("stage sha256:")


def test_fit_gdconv_keeps_the_response_to_a_constant_map():
    w = torch.randn(5, 1, 3, 3)
    for side in (2, 3, 7):
        out = fit_gdconv(w, side)
        assert out.shape == (5, 1, side, side)
        assert torch.allclose(out.sum(dim=(1, 2, 3)), w.sum(dim=(1, 2, 3)), atol=1e-5)


def test_missing_or_wrong_weights_one_line_errors(tmp_path, monkeypatch, stage_dir):
    with pytest.raises(MethodError) as err:
        build_method("r", {**_resnet_section("stage"), "arch": "resnet34"})
    assert "no weights for 'resnet34'" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(MethodError) as err:  # weights of other widths
        build_method("r", {**_resnet_section("stage"), "widths": [8, 8, 16, 32]})
    assert "methods.r.pretrained" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(MethodError, match="no_such.pt: weights file not found"):
        build_method("r", _resnet_section(str(tmp_path / "no_such.pt")))
    with pytest.raises(PretrainError, match="true .a download. has no meaning"):
        resolve_pretrained(True, "mobilefacenet", "methods.ac4au.model.pretrained",
                           imagenet=False)
    # stage before the stage ran: the spec builds (it lists inputs, checks params.yaml), the
    # network does not
    (stage_dir / "resnet18.pt").unlink()
    spec = build_method("r", _resnet_section("stage"))
    assert spec.init_weights == "stage (weights not yet made)"
    with pytest.raises(PretrainError) as err:
        spec.build_model(_ctx())
    msg = str(err.value)
    assert "methods.r.pretrained: stage:" in msg and "run the pretrain stage" in msg
    assert "\n" not in msg
    # a network rebuilt to load trained weights (checkpoint, mer-predict) needs no stage file
    rebuilt = build_method("r", without_pretrained(_resnet_section("stage")))
    assert rebuilt.init_weights == "none" and rebuilt.build_model(_ctx()) is not None
    ac4au = without_pretrained({"family": "ac4au", "model": {"pretrained": "stage", "gamma": 0.1}})
    assert ac4au["model"] == {"pretrained": None, "gamma": 0.1}
    (stage_dir / "mobilefacenet.pt").unlink()
    spec = build_method("ac4au", {**AU, "family": "ac4au", "model": {"pretrained": "stage"}})
    with pytest.raises(PretrainError, match="models/pretrain/mobilefacenet.pt: not found; run"):
        spec.build_model(_ctx())
    bad = stage_dir / "mobilefacenet.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(MethodError, match="not a readable state_dict"):
        build_method("ac4au", {**AU, "family": "ac4au", "model": {"pretrained": "stage"}})


def test_source_recorded_in_the_metrics(tmp_path, stage_dir, capfd):
    from stages import train as train_stage

    csv, feats = training_synth.build(tmp_path / "data", n_subjects=2, per_subject=2, size=16)
    params = {"config": "quick", "seed": 0, "data": {"source": "standin"},
              "standin": {"profile": "tiny"},
              "train": {"device": "cpu", "save_checkpoints": False, "final_model": False},
              "methods": {"r": {**_resnet_section("stage"), "epochs": 1, "batch_size": 8},
                          "bad": {**_resnet_section(str(tmp_path / "absent.pt")),
                                  "epochs": 1}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    args = ["--params", "params.yaml", "--samples", str(csv), "--features", str(feats)]
    assert train_stage.main(["r", *args]) == 0
    want = f"stage sha256:{sha256_of(stage_dir / 'resnet18.pt')}"
    assert json.loads(Path("metrics/r.json").read_text())["init_weights"] == want
    assert json.loads(Path("metrics/r/detail.json").read_text())["init_weights"] == want
    capfd.readouterr()
    assert train_stage.main(["bad", *args]) == 1
    err = capfd.readouterr().err
    errors = [line for line in err.splitlines() if "absent.pt" in line]
    assert len(errors) == 1 and "methods.bad.pretrained:" in errors[0]
    assert "weights file not found" in errors[0] and "Traceback" not in err


def _synthetic_set(n: int = 6, views: int = 3, seed: int = 0) -> D.DistilSet:
    """Photos of distinct smooth textures whose targets follow their colour and layout."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:D.CANVAS, 0:D.CANVAS] / D.CANVAS
    canvases, targets = [], []
    proj = rng.normal(size=(6, D.DESCRIPTOR_DIM)).astype(np.float32)
    for _ in range(n):
        colour = rng.uniform(0.2, 0.8, 3)
        freq = rng.uniform(1, 4, 2)
        pattern = 0.5 + 0.5 * np.sin(2 * np.pi * (freq[0] * xx + freq[1] * yy))
        canvases.append((255 * colour * pattern[..., None]).astype(np.uint8))
        targets.append(np.tile(np.concatenate([colour, [freq[0] / 4, freq[1] / 4, 1.0]]) @ proj,
                               (views, 1)))
    t = np.stack(targets)
    t = t - t.mean(axis=(0, 1))
    t = t / np.sqrt((t ** 2).mean())
    v = D.draw_views(rng, views, {"brightness": 0.05, "contrast": 0.1, "saturation": 0.1,
                                  "grey": 0.0, "gamma": 0.1, "blur": 0.0})
    return D.DistilSet(np.stack(canvases), np.stack([v] * n), t.astype(np.float32),
                       [f"p{i}" for i in range(n)], np.zeros(D.DESCRIPTOR_DIM, np.float32), 1.0)


GEOMETRY = {"scale": 0.05, "shift": 0.03, "rotation_deg": 5.0, "flip": 0.0}


@pytest.mark.parametrize("name,cfg", [
    ("resnet18", {"widths": WIDTHS, "input_size": 32}),
    ("mobilefacenet", {"width_mult": 0.25, "embedding_dim": 16, "input_size": 32}),
])
def test_distillation_lowers_its_loss(name, cfg):
    torch.set_num_threads(1)
    data = _synthetic_set()
    student = D.build_student(name, cfg)
    before = D.evaluate(student, data, cfg["input_size"])
    losses = D.distil(student, data, {**cfg, "steps": 60, "batch_size": 12, "lr": 0.01},
                      GEOMETRY, seed=0)
    after = D.evaluate(student, data, cfg["input_size"])
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    assert after["mse"] < 0.5 * before["mse"] and after["r2"] > 0.4


def test_shipped_weights_verified_and_copied(tmp_path):
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    cfg = params["pretrain"]
    record = run_pretrain(cfg, params["faces"], None, tmp_path / "out")
    assert record["init"] == "shipped" and set(record["files"]) == {"resnet18", "mobilefacenet"}
    for name, entry in record["files"].items():
        out = tmp_path / "out" / f"{name}.pt"
        assert entry["sha256"] == sha256_of(out)
        shipped = torch.load(SHIPPED_DIR / f"{name}.pt", weights_only=True)
        copied = torch.load(out, weights_only=True)
        assert all(copied[k].dtype == torch.float32 or not copied[k].is_floating_point()
                   for k in copied)
        assert all(torch.equal(copied[k], shipped[k].float()) for k in shipped)
    # the copy fits the methods' networks at the configured widths
    net = MobileFaceNet(cfg["students"]["mobilefacenet"]["embedding_dim"],
                        cfg["students"]["mobilefacenet"]["width_mult"], 32)
    load_mobilefacenet_stage(net, tmp_path / "out" / "mobilefacenet.pt")
    assert json.loads((tmp_path / "out" / "pretrain.json").read_text())["init"] == "shipped"


def test_shipped_checksum_and_architecture_checked(tmp_path):
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    students = params["pretrain"]["students"]
    folder = tmp_path / "weights"
    shutil.copytree(SHIPPED_DIR, folder)
    assert verify_shipped("resnet18", students["resnet18"], folder) == folder / "resnet18.pt"
    with pytest.raises(PretrainError, match="set pretrain.init: train to distil these"):
        verify_shipped("resnet18", {**students["resnet18"], "widths": [64, 64, 64, 64]}, folder)
    with open(folder / "resnet18.pt", "ab") as fh:  # one byte more: a corrupted file
        fh.write(b"\0")
    with pytest.raises(PretrainError, match="SHA-256 .* differs from the manifest's"):
        verify_shipped("resnet18", students["resnet18"], folder)
    (folder / "mobilefacenet.pt").unlink()
    with pytest.raises(PretrainError, match="shipped weights missing"):
        verify_shipped("mobilefacenet", students["mobilefacenet"], folder)


def test_teacher_describes_photos_and_blends():
    """dlib's teacher on three London-set photos: the views of one face stay close, two faces
    differ, a blend lies between its parents; standardised on the training photos."""
    from shared_data import external

    from pipeline.standin.faces import read_rgb

    folder = external("MER_FACES_DIR", "faces") / "neutral_front"
    files = sorted(folder.glob("*.jpg"))[:3]
    photos = [(f.name, read_rgb(f)) for f in files]
    aug = {"brightness": 0.1, "contrast": 0.2, "saturation": 0.3, "grey": 0.0, "gamma": 0.2,
           "blur": 0.01}
    data, skipped = D.teacher_set(photos, D.Teacher(), 2, aug, 2.8, 0.5,
                                  train=[True, True, False], n_blends=1, seed=0)
    assert skipped == [] and data.files[:3] == [f.name for f in files]
    assert data.files[3].startswith(f"blend:{files[0].name}+{files[1].name}@") or \
        data.files[3].startswith(f"blend:{files[1].name}+{files[0].name}@")
    assert data.canvases.shape == (4, D.CANVAS, D.CANVAS, 3)
    assert data.targets.shape == (4, 2, D.DESCRIPTOR_DIM)
    t = data.targets * data.target_scale + data.target_mean      # the raw descriptors
    same = np.linalg.norm(t[0, 0] - t[0, 1])
    other = np.linalg.norm(t[0, 0] - t[2, 0])
    assert same < 0.5 * other
    # training rows (the two photos and the blend) standardised to mean 0, RMS 1
    train = data.targets[[0, 1, 3]]
    assert np.allclose(train.reshape(-1, D.DESCRIPTOR_DIM).mean(0), 0, atol=1e-4)
    assert np.sqrt((train ** 2).mean()) == pytest.approx(1.0, rel=1e-4)

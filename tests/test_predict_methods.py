"""mer-predict with every input family: the inputs it computes from a sample's frames are the
cached inputs of the stages, and a fold model applied through its path gives the fold's scores.

A small pipeline runs once on the session's tiny stand-in (``standin_tiny``): index → faces (64-px
crops, a 3-frame pseudo-apex window, 4-frame sequences) → flow → magnify (the shipped Oh et al.
and ST-MEMM weights, copied to a ``models/magnifier`` folder) → patches (dlib on the apex crop and
on ST-MEMM's α 5 frame) → flow_mag (On-A / Off-A to Oh et al.'s α 6 frame, 32 px).  Then:

* per family (faces crops and sequences, flow, magnified latents and frames, patches landmarks,
  flow_mag), mer-predict's :class:`pipeline.predict.ClipFeatures` on the sample's frame folder,
  with the index's onset, apex and offset, no registration (the stages register nothing by
  default) and the sample id for the pseudo-apex draw, equals the cache rows;
* one tiny run per family of methods (InfuseNet: flow + latents; the annotation-mimicking network:
  grey magnified apex + flow_mag; GAM-MM-MER: ST-MEMM frame + patches landmarks; AC4AU: faces
  sequences) with its final model, whose weights are swapped for a fold's checkpoint and run
  through mer-predict on a test sample of that fold: the probabilities equal the fold's row of
  ``predictions.csv``; and ``--method all`` writes one table with a row per method.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from test_predict import (  # noqa: F401  (rendered: the AU12 clip fixture)
    APEX,
    FACES,
    FLOW_SIZE,
    OFFSET,
    ONSET,
    SIZE,
    TVL1,
    FlowTemplates,
    rendered,
    standin_au_templates,
)

from pipeline import predict as mp
from pipeline.databases.index import IndexOptions, build_index, write_index
from pipeline.features.cache import FeatureCache
from pipeline.features.faces import load_index, run_faces
from pipeline.features.flow import run_flow
from pipeline.features.flow_mag import run_flow_mag
from pipeline.features.patches import run_patches
from pipeline.magnification.magnify import run_magnify
from pipeline.params import method_params, section
from pipeline.standin import KEYS
from pipeline.training.data import InputSpec, read_samples
from pipeline.training.final import FINAL_NAME, load_final
from pipeline.training.registry import MethodSpec, register
from pipeline.training.run import RunPaths, run_method

ROOT = Path(__file__).resolve().parents[1]
LOCAL = {"backend": "local", "n_jobs": 1, "scheduler": None}
CACHES = ("faces", "flow", "magnified", "patches", "flow_mag")
#: Method → overrides of its params.yaml section for the tiny run (1 epoch, small inputs).  The
#: networks start random: the fold and final models' own weights are what predict must
#: reproduce, and a clean clone has no models/pretrain/ (the stage start: tests/test_pretrain.py).
METHODS = {
    "infusenet": {"input_size": 40, "pretrained": False},
    "mimicking": {"input_size": 32, "tasks": ["composite-3"], "save_checkpoints": True},
    "gam_mm_mer": {"tasks": ["composite-3"], "crop_size": 64, "save_checkpoints": True,
                   "augment": {"alphas": []}, "model": {"patch_size": 8}},
    "ac4au": {"sequence_size": 32, "model": {"sequence_length": 4, "pretrained": None}},
}


@pytest.fixture(autouse=True, scope="module")
def _restore_torch_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def small(tmp_path_factory, standin_tiny, landmarker_model):
    """The tiny stand-in through every feature stage (module docstring): paths and params."""
    root = tmp_path_factory.mktemp("pipeline")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["faces"].update(sizes=[64], sequence_size=32, pseudo_apex_window=3, sequence_length=4,
                           landmarker_model=str(landmarker_model), max_failed_share=0.5)
    params["flow"].update(size=64, pairs=["onset_apex"])
    params["magnify"].update(frames={"oh": [6], "stmemm": [5]}, torch_threads=1, device="cpu",
                             pseudo_apex={"seed": 0, "max_offset": 2, "all_offsets": True},
                             figure_samples=1)
    params["patches"].update(size=64, patch_size=12, magnified={"stmemm": [5]},
                             max_failed_share=0.5)
    params["flow_mag"].update(size=32, databases=None, max_failed_share=0.5)
    feats = root / "features"
    feats.mkdir()
    write_index(build_index({k: standin_tiny / k for k in KEYS}, IndexOptions()), root / "index")
    index = root / "index" / "samples.csv"
    table = load_index(index)
    keep = table.groupby("database")["subject"].transform(lambda s: s.isin(sorted(set(s))[:2]))
    table = table[keep].reset_index(drop=True)
    table.to_csv(index, index=False)
    run_faces(load_index(index), section("faces", params), feats / "faces.h5",
              feats / "faces_failures.csv", LOCAL, source=index)
    run_flow(feats / "faces.h5", section("flow", params), feats / "flow.h5",
             feats / "flow_failures.csv", LOCAL)
    magnifier = root / "models" / "magnifier"
    magnifier.mkdir(parents=True)
    for name in ("oh.pt", "stmemm.pt"):
        shutil.copy(ROOT / "pipeline" / "magnification" / "weights" / name, magnifier / name)
    run_magnify(section("magnify", params), size=64, seed=0, faces_path=feats / "faces.h5",
                models_dir=magnifier, out_path=feats / "magnified.h5",
                figure_path=root / "magnified.png", progress=False)
    run_patches(feats / "faces.h5", section("patches", params), feats / "patches.h5",
                feats / "patches_failures.csv", LOCAL, magnified_path=feats / "magnified.h5")
    run_flow_mag(feats / "faces.h5", feats / "magnified.h5", section("flow_mag", params),
                 section("flow", params), feats / "flow_mag.h5", feats / "flow_mag_failures.csv",
                 LOCAL)
    return {"root": root, "features": feats, "index": index, "params": params,
            "magnifier": magnifier, "samples": read_samples(index)}


def _interval(clip: mp.Clip, faces: FeatureCache, row: int) -> mp.Interval:
    """The sample's onset, apex and offset as the faces stage used them."""
    num = {k: int(faces.read(f"frame_numbers/{k}", row)) for k in ("onset", "apex", "offset")}
    return mp.Interval(clip.position(num["onset"]), clip.position(num["offset"]),
                       apex=clip.position(num["apex"]), offset=clip.position(num["offset"]))


def _clip_features(small, sample_id: str, model, landmarker: Path) -> tuple[dict, dict]:
    """mer-predict's inputs for one sample of the index, computed from its frame folder."""
    table = small["samples"].set_index("sample_id")
    clip = mp.open_clip(table.loc[sample_id, "frame_dir"])
    faces = FeatureCache(small["features"] / "faces.h5", "faces")
    try:
        iv = _interval(clip, faces, faces.index_of(sample_id))
    finally:
        faces.close()
    cf = mp.ClipFeatures(clip, False, small["magnifier"], sample_id)
    cfg = model.faces_config()
    iv, analysis = cf.analysed(0, iv, cfg, str(landmarker) if cfg.detector == "mediapipe"
                               else None)
    return cf.compute(0, iv, analysis, model)


def _all_inputs_model(small) -> mp.LoadedModel:
    """A model-like object reading every dataset of every cache (its features: the caches'
    params), so that ClipFeatures computes every family."""
    params, inputs = {}, []
    for cache in CACHES:
        fc = FeatureCache(small["features"] / f"{cache}.h5", cache)
        params[cache] = fc.params
        inputs += [InputSpec(f"{cache}:{d}", cache, d) for d in fc.datasets]
        fc.close()
    meta = {"features": params, "class_names": ["x"], "task": "au"}
    return mp.LoadedModel("all_inputs", meta, SimpleNamespace(inputs=tuple(inputs)), object())


@pytest.mark.slow
def test_clip_inputs_equal_the_stage_caches_for_every_family(small, landmarker_model):
    model = _all_inputs_model(small)
    caches = {c: FeatureCache(small["features"] / f"{c}.h5", c) for c in CACHES}
    try:
        # a LOSO sample (in flow_mag.h5; ST-MEMM frames: magnify.frames_databases) whose
        # pseudo-apex offset is not 0
        mag = caches["magnified"]
        loso = set(small["params"]["magnify"]["frames_databases"]["stmemm"])
        ids = [s for s in caches["flow_mag"].sample_ids
               if s in caches["patches"] and s.split("/", 1)[0] in loso]
        offsets = {s: int(mag.read("pseudo_apex_offset", mag.index_of(s))) for s in ids}
        sid = next(s for s in ids if offsets[s] > 0)
        feats, used = _clip_features(small, sid, model, landmarker_model)
        checked = {c: 0 for c in CACHES}
        for cache, fc in caches.items():
            row = fc.index_of(sid)
            for name in fc.datasets:
                if cache == "faces" and not re.match(r"(crop|seq)\d+/", name):
                    continue              # landmarks, detection, frame numbers: not inputs
                want = fc.read(name, row)
                got = np.asarray(feats[cache][name])
                assert got.shape == want.shape and got.dtype == want.dtype, (cache, name)
                if np.issubdtype(want.dtype, np.integer):
                    # uint8 frames decoded by the magnifiers: batch 1 vs the stage's batch
                    tol = 1 if name.startswith("frames/") else 0
                    assert np.abs(got.astype(int) - want.astype(int)).max() <= tol, (cache, name)
                else:
                    scale = float(np.abs(want.astype(np.float32)).max()) + 1e-6
                    err = float(np.abs(got.astype(np.float32) - want.astype(np.float32)).max())
                    assert err <= 2e-3 * scale + 2e-2 * ("landmarks" in name), (cache, name, err)
                checked[cache] += 1
        assert all(checked.values()), checked
        box = caches["faces"].read("crop_box", caches["faces"].index_of(sid))
        assert np.allclose(used["crop_box"], box, atol=2e-3)
        assert used["pseudo_apex"][offsets[sid]] == int(
            mag.read("pseudo_apex_frame", mag.index_of(sid)))
        assert int(feats["magnified"]["pseudo_apex_offset"]) == offsets[sid]
    finally:
        for fc in caches.values():
            fc.close()


@pytest.fixture(scope="module")
def runs(small):
    """One tiny run per family (module docstring) with checkpoints and a final model."""
    root = small["root"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    out = {}
    for name, over in METHODS.items():
        p = method_params(params, name)
        for k, v in over.items():
            p[k] = {**p[k], **v} if isinstance(v, dict) and isinstance(p.get(k), dict) else v
        p.update(epochs=1, device="cpu", torch_threads=1, final_model=True,
                 save_checkpoints=True, preload=True)
        paths = RunPaths(root / "models" / name, root / "metrics" / name,
                         root / "metrics" / f"{name}.json")
        run_method(name, p, small["samples"], small["features"], paths, "standin-tiny", seed=0)
        out[name] = p
    return out


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_fold_model_through_predict_reproduces_its_predictions_row(small, runs, method, tmp_path,
                                                                  landmarker_model):
    root = small["root"]
    final = load_final(root / "models" / method / FINAL_NAME)
    assert final["features"].keys() >= {"faces", "flow"}
    pred = pd.read_csv(root / "metrics" / method / "predictions.csv", dtype={"fold": str})
    names = final["class_names"]
    if final["task"] == "emotion":
        pred = pred[pred["task"] == final["emotion_task"]]
    cache_sets = [FeatureCache(small["features"] / f"{i['cache']}.h5", i["cache"])
                  for i in final["inputs"]]
    have = set.intersection(*(set(c.sample_ids) for c in cache_sets))
    for c in cache_sets:
        c.close()
    row = pred[pred["sample_id"].isin(have)].iloc[0]
    ckpt = torch.load(root / "models" / method / f"{row['fold']}.pt", weights_only=False)
    swapped = tmp_path / method / FINAL_NAME
    swapped.parent.mkdir()
    subjects = final["train_subjects"]
    protos = ckpt["state_dict"].get("criterion.subject_loss.prototypes")
    if protos is not None:   # AC4AU's subject loss (training only) has one row per fold subject
        subjects = [f"subject{i}" for i in range(len(protos))]
    torch.save({**final, "state_dict": ckpt["state_dict"], "train_subjects": subjects}, swapped)
    model = mp.load_model(method, root / "models", swapped)
    mp.check_reproducible(model)
    feats, _ = _clip_features(small, row["sample_id"], model, landmarker_model)
    probs = mp.run_model(model, feats)
    want = np.array([row[f"score_{n}"] for n in names], dtype=np.float64)
    assert np.abs(probs - want).max() < 2e-3, (method, row["sample_id"], probs, want)


@pytest.mark.slow
def test_method_all_writes_one_table_and_a_magnified_overlay(small, runs, tmp_path, capsys,
                                                             landmarker_model):
    root = small["root"]
    sid = small["samples"].query("database == 'casme2'")["sample_id"].iloc[0]
    folder = small["samples"].set_index("sample_id").loc[sid, "frame_dir"]
    bad = root / "models" / "broken"
    bad.mkdir(exist_ok=True)
    meta = load_final(root / "models" / "mimicking" / FINAL_NAME)
    meta["features"] = {k: v for k, v in meta["features"].items() if k != "flow_mag"}
    torch.save(meta, bad / FINAL_NAME)   # as if written before flow_mag.h5's params were kept
    out = tmp_path / "all"
    code = mp.main([str(folder), "--method", "all", "--models", str(root / "models"),
                    "--out", str(out), "--no-register", "--landmarker-model",
                    str(landmarker_model)])
    err = capsys.readouterr().err
    assert code == 0
    table = pd.read_csv(out / "predictions.csv")
    assert sorted(table["method"]) == sorted([*METHODS, "broken"])
    broken = table.set_index("method").loc["broken"]
    assert "flow_mag" in broken["error"] and "broken" in err
    ok = table[table["method"] != "broken"]
    assert ok["error"].isna().all() and (ok["interval"] == 0).all()
    for _, r in ok.iterrows():
        p = r[[c for c in table.columns if c.startswith("p_")]].dropna().astype(float)
        assert r["top"] == p.idxmax()[2:]
        assert (out / r["method"] / "overlay_0.png").is_file()
    # the magnified methods' overlay has one more panel: the magnified apex beside the raw one
    import matplotlib.image as mpimg

    w_mag = mpimg.imread(out / "infusenet" / "overlay_0.png").shape[1]
    w_raw = mpimg.imread(out / "ac4au" / "overlay_0.png").shape[1]
    assert w_mag > w_raw


class OnAFlowTemplates(FlowTemplates):
    """:class:`test_predict.FlowTemplates` reading the On-A flow (onset → magnified apex)."""


@register("on_a_templates_test")
def _on_a_templates(name, params):
    return MethodSpec(task="au", protocol="cd6me",
                      inputs=(InputSpec("on_a", "flow_mag", "onset_mag", "flow", SIZE),),
                      build_model=lambda ctx: OnAFlowTemplates(ctx.n_outputs, SIZE))


@pytest.mark.slow
def test_rendered_au12_on_top_through_the_magnifier(rendered, faces_dir, landmarker_model,  # noqa: F811
                                                    tmp_path, capsys):
    """The AU12 clip of test_predict (head drift, MJPG) through mer-predict's magnified path: a
    constructed model whose AU logits are the AU templates' correlation with the On-A flow —
    TV-L1 from the registered onset to Oh et al.'s magnified apex (α 6, the shipped weights) —
    puts AU12 on top, and its overlay shows the magnified apex beside the raw one."""
    from pipeline.assets import sha256_of
    from pipeline.training.final import FORMAT, params_hash
    from pipeline.training.protocols import CD6ME_AUS

    magnifier = tmp_path / "models" / "magnifier"
    magnifier.mkdir(parents=True)
    weights = ROOT / "pipeline" / "magnification" / "weights" / "oh.pt"
    shutil.copy(weights, magnifier / "oh.pt")
    temps = standin_au_templates(faces_dir, landmarker_model, SIZE)
    net = OnAFlowTemplates(len(CD6ME_AUS), SIZE)
    net.templates.copy_(torch.from_numpy(np.stack([temps[a] for a in CD6ME_AUS])))
    params = {"family": "on_a_templates_test", "task": "au", "protocol": "cd6me"}
    mag = {"size": FLOW_SIZE, "latent_alpha": 10.0, "latent_kind": "difference",
           "frames": {"oh": [6.0]}, "pseudo_apex": {"seed": 0, "max_offset": 2},
           "magnifiers": {"oh": {"arch": "shape_only", "sha256": sha256_of(weights)}}}
    path = tmp_path / "models" / "on_a" / FINAL_NAME
    path.parent.mkdir()
    torch.save({
        "format": FORMAT, "method": "on_a", "family": params["family"], "task": "au",
        "protocol": "cd6me", "emotion_task": None, "class_names": list(CD6ME_AUS),
        "params": params, "params_hash": params_hash(params), "data": "constructed", "seed": 0,
        "epoch": 0, "n_train": 0, "threshold": 0.5,
        "inputs": [{"key": "on_a", "cache": "flow_mag", "dataset": "onset_mag", "kind": "flow",
                    "size": SIZE}],
        "flow_norm": "sample", "flow_quantile": 0.99,
        "features": {"faces": FACES, "flow": {"size": FLOW_SIZE, "tvl1": TVL1, "faces": FACES},
                     "magnified": mag,
                     "flow_mag": {"size": FLOW_SIZE, "magnifier": "oh", "alpha": 6,
                                  "tvl1": TVL1, "flow_size": FLOW_SIZE, "magnified": mag}},
        "train_targets": [], "train_subjects": [], "state_dict": net.state_dict()}, path)
    out = tmp_path / "out"
    code = mp.main([str(rendered["video"]), "--method", "on_a", "--models",
                    str(tmp_path / "models"), "--onset", str(ONSET), "--apex", str(APEX),
                    "--offset", str(OFFSET), "--out", str(out), "--landmarker-model",
                    str(landmarker_model)])
    assert code == 0, capsys.readouterr().err
    row = pd.read_csv(out / "predictions.csv").iloc[0]
    p = {au: row[f"p_{au}"] for au in CD6ME_AUS}
    assert row["top"] == "AU12" and p["AU12"] > max(v for a, v in p.items() if a != "AU12"), p
    # the overlay has the magnified apex panel: wider than a flow method's four panels
    import matplotlib.image as mpimg

    assert mpimg.imread(out / "overlay_0.png").shape[1] > 1300
    # another magnifier file than the one the features were computed with: one clear line
    torch.save(torch.load(weights, weights_only=False) | {"train": {"edited": True}},
               magnifier / "oh.pt")
    code = mp.main([str(rendered["video"]), "--method", "on_a", "--models",
                    str(tmp_path / "models"), "--onset", str(ONSET), "--apex", str(APEX),
                    "--offset", str(OFFSET), "--out", str(tmp_path / "out2"),
                    "--landmarker-model", str(landmarker_model)])
    err = capsys.readouterr().err
    assert code == 2 and "SHA-256" in err and "oh.pt" in err


def test_method_lists_and_all(tmp_path):
    for name in ("sssnet", "infusenet", "constant_positive"):
        (tmp_path / name).mkdir()
        (tmp_path / name / FINAL_NAME).write_bytes(b"")
    (tmp_path / "magnifier").mkdir()                    # no final.pt: not a method
    assert mp.resolve_methods(["all"], tmp_path) == ["constant_positive", "infusenet", "sssnet"]
    assert mp.resolve_methods(["infusenet,sssnet", "sssnet", "mimicking"], tmp_path) == [
        "infusenet", "sssnet", "mimicking"]
    with pytest.raises(mp.PredictError, match="no final model"):
        mp.resolve_methods(["all"], tmp_path / "magnifier")

"""InfuseNet's table variants as methods of the shared trainer (``family: infusenet``), end to end
on synthetic ``flow.h5`` + ``magnified.h5`` + ``faces.h5`` caches: metrics, predictions, folds,
checkpoints, the latent's path into FrameMag, parameter errors, the Grad-CAM figure and stage.

Model-level checks (infusion at every ResNet stage by hooks, normalisation scopes, the latent in
place of conv1's output, the pseudo-apex draw) are in ``test_infusenet.py``; the ViT infusion
points are checked by hooks here.  CPU, one torch thread, 32-px inputs, one epoch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import training_synth
import yaml

from pipeline.features.cache import CacheError, FeatureCache
from pipeline.models.infusenet import PAPER_F1, PUBLISHED_KEYS, build_infusenet_variant
from pipeline.params import method_params
from pipeline.pretrain.weights import without_pretrained
from pipeline.reporting.published import PUBLISHED
from pipeline.training.data import FeatureStore, read_samples
from pipeline.training.methods_infusenet import (
    LATENT_DATASETS,
    alpha_tag,
    build_fold_model,
    gradcam_columns,
    render_gradcam_figure,
    resize_latent,
    select_gradcam_samples,
)
from pipeline.training.protocols import CD6ME_AUS, cd6me_table
from pipeline.training.registry import MethodError, build_method
from pipeline.training.run import RunPaths, run_method

SIZE = 32  # cache side and model input side (px); the latent is 16 x 16
TINY = {"family": "infusenet", "task": "au", "protocol": "cd6me", "epochs": 1, "batch_size": 16,
        "device": "cpu", "input_size": SIZE, "optimizer": {"name": "adam", "lr": 0.001},
        "scheduler": {"name": "exponential", "gamma": 0.9}, "save_checkpoints": False,
        "torch_threads": 1}
AU_KEYS = {"task", "protocol", "data", "f1_mean", "f1_per_au", "f1_per_database",
           "f1_database_mean", "n_samples", "auc_mean", "auc_per_au"}
TWO_DBS = ("casme2", "samm")  # the cheap runs: two leave-one-database-out folds



@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """samples.csv (7 databases x 2 subjects x 4 samples), flow.h5 without one sample,
    magnified.h5 without two others (one of them in SAMM), faces.h5."""
    root = tmp_path_factory.mktemp("synth_infusenet")
    csv, feats = training_synth.build(root, n_subjects=2, per_subject=4, size=SIZE, seed=3,
                                      drop_from_flow=1)
    training_synth.add_infusenet_caches(feats, seed=0, drop_from_magnified=1,
                                        drop_ids=("samm/002/m01",))
    return read_samples(csv), feats


def _paths(out: Path, name: str) -> RunPaths:
    return RunPaths(out / "models" / name, out / "metrics" / name,
                    out / "metrics" / f"{name}.json")


def _run(name, params, samples, feats, out, published=None):
    paths = _paths(out, name)
    res = run_method(name, params, samples, feats, paths, "standin-quick", seed=0,
                     published=published)
    return res, paths


@pytest.fixture(scope="module")
def runs(synth, tmp_path_factory):
    """Checkpoints of one tiny run each: InfuseNet on all six CD6ME folds; FrameFlow (the
    resnet18_flow baseline) and FrameMag (resnet18_mag) on the two folds casme2, samm."""
    samples, feats = synth
    out = tmp_path_factory.mktemp("runs")
    two = samples[samples["database"].isin(TWO_DBS)].reset_index(drop=True)
    params = {
        "infusenet": {**TINY, "save_checkpoints": True, "published": "infusenet_cd6me"},
        "resnet18_mag": {**TINY, "save_checkpoints": True},
        "resnet18_flow": {**TINY, "family": "resnet_flow", "arch": "resnet18",
                          "pretrained": False, "save_checkpoints": True},
    }
    results = {"infusenet": _run("infusenet", params["infusenet"], samples, feats, out,
                                 PUBLISHED["infusenet_cd6me"].as_dict())}
    for name in ("resnet18_mag", "resnet18_flow"):
        results[name] = _run(name, params[name], two, feats, out)
    return {"out": out, "params": params, "results": results}


def _expected_missing(samples: pd.DataFrame, feats: Path, caches=("flow", "magnified")) -> set:
    table = cd6me_table(samples)
    present = [set(FeatureCache(feats / f"{c}.h5", c).sample_ids) for c in caches]
    return {s for s in table["sample_id"] if not all(s in p for p in present)}


def _check_outputs(res: dict, paths: RunPaths, samples: pd.DataFrame, feats: Path,
                   folds: set[str], caches=("flow", "magnified")) -> pd.DataFrame:
    table = cd6me_table(samples)
    assert AU_KEYS <= set(res) and res["task"] == "au" and res["protocol"] == "cd6me"
    assert json.loads(paths.json.read_text()) == res
    assert list(res["f1_per_au"]) == list(CD6ME_AUS)
    assert all(0.0 <= v <= 1.0 for v in res["f1_per_au"].values())
    assert res["f1_mean"] == pytest.approx(np.mean(list(res["f1_per_au"].values())))
    assert set(res["f1_per_database"]) == folds
    assert res["n_samples"] == len(table)
    assert {p.stem for p in paths.folds.glob("*.json")} == folds
    for fold in folds:
        f = json.loads((paths.folds / f"{fold}.json").read_text())
        assert AU_KEYS <= set(f) and f["held_out"] == fold and f["selected_epoch"] == 1
        assert f["n_train"] > 0 and f["n_samples"] == int((table["database"] == fold).sum())
    pred = pd.read_csv(paths.metrics / "predictions.csv")
    assert len(pred) == len(table) and pred["sample_id"].is_unique
    assert set(pred["sample_id"]) == set(table["sample_id"])
    assert (pred["fold"] == pred["database"]).all()
    scores = pred[[f"score_{a}" for a in CD6ME_AUS]].to_numpy()
    decisions = pred[[f"pred_{a}" for a in CD6ME_AUS]].to_numpy()
    assert np.isfinite(scores).all() and scores.min() >= 0 and scores.max() <= 1
    np.testing.assert_array_equal(decisions, (scores >= 0.5).astype(int))
    missing = set(pd.read_csv(paths.metrics / "missing_features.csv")["sample_id"])
    assert missing == _expected_missing(samples, feats, caches)
    assert bool(missing) == ("magnified" in caches)
    assert (pred.set_index("sample_id").loc[sorted(missing), [f"pred_{a}" for a in CD6ME_AUS]]
            == 0).all().all()
    curves = pd.read_csv(paths.metrics / "curves.csv")
    assert len(curves) == len(folds) and np.isfinite(curves["train_loss"]).all()
    run = json.loads((paths.models / "run.json").read_text())
    assert run["method"] == paths.models.name and run["task"] == "au"
    return pred


# ------------------------------------------------------------------------------------------
# End to end through run_method
# ------------------------------------------------------------------------------------------


def test_infusenet_six_folds_write_valid_metrics_and_checkpoints(synth, runs):
    samples, feats = synth
    res, paths = runs["results"]["infusenet"]
    folds = {"casme", "casme2", "samm", "mmew", "fourd", "casme3a"}
    _check_outputs(res, paths, samples, feats, folds)
    assert res["paper"]["f1_mean"] == pytest.approx(0.4230)
    assert res["paper"]["f1_per_au"] == PAPER_F1["infusenet"]["per_au"]
    for fold in folds:
        ckpt = torch.load(paths.models / f"{fold}.pt", weights_only=False)
        assert ckpt["method"] == "infusenet" and ckpt["fold"] == fold and ckpt["n_outputs"] == 12
        assert any(k.startswith("frame_mag.layer4") for k in ckpt["state_dict"])
        assert "frame_mag.conv1.weight" not in ckpt["state_dict"]  # the latent replaces conv1


def test_single_stream_baselines_of_the_table_ran(synth, runs):
    samples, feats = synth
    two = samples[samples["database"].isin(TWO_DBS)]
    res, paths = runs["results"]["resnet18_mag"]
    _check_outputs(res, paths, two, feats, set(TWO_DBS))
    res, paths = runs["results"]["resnet18_flow"]
    _check_outputs(res, paths, two, feats, set(TWO_DBS), caches=("flow",))


@pytest.mark.parametrize(("variant", "extra"), [
    ("late_fusion", {}),
    ("infusenet_image", {"image_alpha": 10, "augment": {"hflip": 0.5}}),
    ("infusenet", {"variant": "infusenet", "norm_scope": "sample", "aux_flow_loss": 0.5}),
])
def test_variants_on_two_folds(synth, tmp_path, variant, extra):
    samples, feats = synth
    two = samples[samples["database"].isin(TWO_DBS)].reset_index(drop=True)
    name = variant if "variant" not in extra else f"{variant}_{extra['norm_scope']}_aux"
    res, paths = _run(name, {**TINY, **extra}, two, feats, tmp_path)
    _check_outputs(res, paths, two, feats, set(TWO_DBS))


def test_same_seed_same_predictions(synth, tmp_path):
    samples, feats = synth
    two = samples[samples["database"].isin(TWO_DBS)].reset_index(drop=True)
    a, pa = _run("resnet18_mag", TINY, two, feats, tmp_path / "a")
    b, pb = _run("resnet18_mag", TINY, two, feats, tmp_path / "b")
    assert a == b
    assert ((pa.metrics / "predictions.csv").read_bytes()
            == (pb.metrics / "predictions.csv").read_bytes())


# ------------------------------------------------------------------------------------------
# What the trainer feeds the networks
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("input_size", [SIZE, SIZE // 2])
def test_latent_enters_framemag_as_64_channels_at_half_side(synth, input_size):
    """Eq. 2: Mag(onset, apex) ‖ Mag(onset, pseudo-apex) from magnified.h5, resized to S/2 by
    area averaging when the model side S is below the cache's, reaches FrameMag's stem."""
    samples, feats = synth
    spec = build_method("infusenet", {**TINY, "input_size": input_size,
                                      "pseudo_apex_draw": "fixed"})
    assert [(i.key, i.cache, i.dataset) for i in spec.inputs] == [
        ("flow", "flow", "onset_apex"),
        ("latent_apex", "magnified", LATENT_DATASETS[0]),
        ("latent_pseudo", "magnified", LATENT_DATASETS[1])]
    assert spec.train_transform is None
    ids = cd6me_table(samples)["sample_id"].tolist()
    store = FeatureStore(spec.inputs, ids, feats)
    pos = np.flatnonzero(store.available)[:3]
    batch = {k: torch.stack([store.item(int(p))[k] for p in pos])
             for k in ("flow", "latent_apex", "latent_pseudo")}
    model = spec.build_model(_ctx(spec, input_size)).eval()
    seen = {}
    model.frame_mag.maxpool.register_forward_pre_hook(lambda _m, i: seen.__setitem__("x", i[0]))
    model.register_forward_pre_hook(lambda _m, args: seen.__setitem__("args", args))
    with torch.no_grad():
        out = spec.forward(model, batch)
    half = input_size // 2
    latent = seen["args"][1]
    assert latent.shape == (3, 64, half, half) and seen["x"].shape == (3, 64, half, half)
    assert out.shape == (3, 12)
    mag = FeatureCache(feats / "magnified.h5", "magnified")
    for j, p in enumerate(pos):
        row = mag.index_of(ids[p])
        for k, ds in enumerate(LATENT_DATASETS):
            raw = mag.read(ds, row).astype(np.float32)  # (32, 16, 16)
            expected = raw if half == raw.shape[1] else raw.reshape(
                32, half, 2, half, 2).mean(axis=(2, 4))
            np.testing.assert_allclose(latent[j, 32 * k:32 * (k + 1)].numpy(), expected,
                                       rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(seen["x"], torch.relu(latent))  # ref. code: relu, no bn1


def test_pseudo_apex_redrawn_every_epoch_from_the_cached_offsets(synth):
    """Sec. 3.1: each training sample draws a new pseudo-apex k ∈ [0, 5] each time it is seen,
    from latent/onset_pseudo_all; evaluation keeps the cache's fixed draw."""
    samples, feats = synth
    spec = build_method("infusenet", {**TINY})  # default: per_epoch
    assert [(i.key, i.dataset) for i in spec.inputs][-1] == ("latent_pseudo_all",
                                                             "latent/onset_pseudo_all")
    ids = cd6me_table(samples)["sample_id"].tolist()
    store = FeatureStore(spec.inputs, ids, feats)
    pos = np.flatnonzero(store.available)[:8]
    batch = {k: torch.stack([store.item(int(p))[k] for p in pos])
             for k in ("flow", "latent_apex", "latent_pseudo", "latent_pseudo_all")}
    assert batch["latent_pseudo_all"].shape == (8, 6, 32, SIZE // 2, SIZE // 2)
    gen = torch.Generator().manual_seed(0)
    draws = []
    for _epoch in range(3):  # the trainer applies the transform to every training batch
        out = spec.train_transform(batch, gen)
        k = out["pseudo_offset"]
        torch.testing.assert_close(out["latent_pseudo"],
                                   batch["latent_pseudo_all"][torch.arange(8), k])
        draws.append(k)
    draws = torch.stack(draws)
    assert ((draws >= 0) & (draws <= 5)).all()
    assert (draws != draws[0]).any(dim=0).sum() >= 4  # most samples changed offset
    assert len(torch.unique(draws)) >= 4
    # reproducible from the trainer's seeded generator
    gen = torch.Generator().manual_seed(0)
    torch.testing.assert_close(spec.train_transform(batch, gen)["pseudo_offset"], draws[0])
    # the fixed (test-time) draw is the cached latent at pseudo_apex_offset
    mag = FeatureCache(feats / "magnified.h5", "magnified")
    row = mag.index_of(ids[pos[0]])
    fixed = int(mag.read("pseudo_apex_offset", row))
    torch.testing.assert_close(batch["latent_pseudo"][0], batch["latent_pseudo_all"][0, fixed])
    with pytest.raises(MethodError, match="pseudo_apex_draw"):
        build_method("infusenet", {**TINY, "pseudo_apex_draw": "per_iteration"})


def test_end_to_end_fine_tunes_the_magnifier(synth, tmp_path):
    """Sec. 3.2: with end_to_end the latent is computed by the magnifier's encoder and
    manipulator inside the network, initialised from the magnifier weights, and trained."""
    from pipeline.magnification.train import build_magnifier, save_magnifier

    samples, feats = synth
    torch.manual_seed(0)
    arch = {"texture_branch": True}
    magnifier = build_magnifier("oh", arch)
    weights = tmp_path / "oh.pt"
    save_magnifier(weights, "oh", magnifier, arch, {})
    params = {**TINY, "end_to_end": True, "magnifier_weights": str(weights), "crop_size": SIZE}
    spec = build_method("infusenet", params)
    assert {i.key for i in spec.inputs} == {"flow", "crop_onset", "crop_apex", "crop_window",
                                            "pseudo_fixed"}
    ids = cd6me_table(samples)["sample_id"].tolist()
    store = FeatureStore(spec.inputs, ids, feats)
    pos = np.flatnonzero(store.available)[:6]
    batch = {k: torch.stack([store.item(int(p))[k] for p in pos]) for k in store.item(int(pos[0]))
             if k not in ("target", "index")}
    assert batch["crop_window"].shape == (6, 6, 3, SIZE, SIZE)
    model = spec.build_model(_ctx(spec, SIZE))
    enc = model.magnifier.encoder
    # initialised from the weight file (texture branch dropped: the latent does not use it)
    torch.testing.assert_close(enc.conv1.weight, magnifier.encoder.conv1.weight)
    assert not hasattr(enc, "conv1_texture")
    # the cached-latent path's latent = the magnifier's magnified difference, here with grads
    onset, apex = batch["crop_onset"], batch["crop_apex"]
    with torch.no_grad():
        expected = magnifier.magnified_difference(onset * 2 - 1, apex * 2 - 1, 10.0)
    torch.testing.assert_close(model.magnifier(onset, (apex,)), expected, rtol=1e-4, atol=1e-5)
    model.train()
    out = spec.forward(model, spec.train_transform(batch, torch.Generator().manual_seed(0)))
    out.sum().backward()
    for p in (enc.conv1.weight, model.magnifier.manipulator.convblks[0].conv1.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    before = enc.conv1.weight.detach().clone()
    torch.optim.Adam(model.parameters(), lr=1e-3).step()
    assert not torch.equal(before, enc.conv1.weight)
    # evaluation uses the fixed draw: deterministic, no pseudo_offset needed
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(spec.forward(model, batch), spec.forward(model, batch))
    with pytest.raises(MethodError, match="magnifier_weights"):
        build_method("infusenet", {**params, "magnifier_weights": str(tmp_path / "no.pt")})
    with pytest.raises(MethodError, match="reads no magnified latent"):
        build_method("vit_tiny_flow", {**params, "input_size": 32})


def _ctx(spec, size, method="infusenet", params=None):
    """An empty CD6ME fold's context; ``params``: the method's (default TINY at ``size``)."""
    from pipeline.training.protocols import Fold
    from pipeline.training.registry import FoldContext

    return FoldContext(method=method, task="au",
                       fold=Fold("samm", "samm", "cd6me", np.zeros(0, int), np.zeros(0, int)),
                       n_outputs=12, class_names=tuple(CD6ME_AUS),
                       train_targets=np.zeros((0, 12)), train_subjects=(), seed=0,
                       params={**TINY, "input_size": size} if params is None else params)


def test_resize_latent():
    rng = np.random.default_rng(0)
    lat = rng.normal(size=(32, 8, 8)).astype(np.float16)
    same = resize_latent(lat, 8)
    assert same.dtype == np.float32 and np.array_equal(same, lat.astype(np.float32))
    np.testing.assert_allclose(resize_latent(lat, 4),
                               lat.astype(np.float32).reshape(32, 4, 2, 4, 2).mean(axis=(2, 4)),
                               rtol=1e-6, atol=1e-6)
    big = resize_latent(np.ones((2, 4, 4), np.float32) * 3, 7)
    assert big.shape == (2, 7, 7) and np.allclose(big, 3.0)
    with pytest.raises(ValueError, match="C, h, w"):
        resize_latent(np.zeros((8, 8)), 4)
    with pytest.raises(ValueError, match="non-finite"):
        resize_latent(np.full((1, 4, 4), np.nan), 2)
    assert alpha_tag(10) == "alpha10" and alpha_tag(10.0) == "alpha10"
    assert alpha_tag(7.5) == "alpha7.5"


def test_image_variant_reads_the_decoded_magnified_apex(synth):
    samples, feats = synth
    spec = build_method("infusenet_image", {**TINY, "image_alpha": 10})
    assert [(i.key, i.dataset, i.kind) for i in spec.inputs] == [
        ("flow", "onset_apex", "flow"), ("image", "frames/oh/alpha10/apex", "image")]
    spec = build_method("infusenet_image", {**TINY, "image_alpha": 6})
    with pytest.raises(CacheError, match="frames/oh/alpha6/apex"):  # not in the cache
        FeatureStore(spec.inputs, samples["sample_id"].tolist(), feats)


def test_aux_flow_loss_adds_the_frameflow_term(synth):
    spec = build_method("infusenet", {**TINY, "aux_flow_loss": 0.5})
    ctx = _ctx(spec, SIZE)
    model = spec.build_model(ctx)
    batch = {"flow": torch.randn(2, 3, SIZE, SIZE),
             "latent_apex": torch.randn(2, 32, SIZE // 2, SIZE // 2),
             "latent_pseudo": torch.randn(2, 32, SIZE // 2, SIZE // 2),
             "target": torch.tensor([[1.0] * 6 + [0.0] * 6, [0.0] * 12])}
    model.train()
    both = spec.forward(model, batch)
    assert isinstance(both, tuple) and len(both) == 2
    loss = spec.build_loss(ctx)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    expected = bce(both[0], batch["target"]) + 0.5 * bce(both[1], batch["target"])
    torch.testing.assert_close(loss(both, batch), expected)
    model.eval()
    assert isinstance(spec.forward(model, batch), torch.Tensor)


# ------------------------------------------------------------------------------------------
# ViT-Tiny InfuseNet: infusion after blocks 3, 6, 9, 12 and after pooling (hooks)
# ------------------------------------------------------------------------------------------


def test_vit_infusion_at_every_point():
    torch.manual_seed(0)
    model = build_infusenet_variant("infusenet_vit", {"image_size": SIZE,
                                                      "norm_scope": "channel"}).eval()
    seen: dict[str, torch.Tensor] = {}

    def keep_out(key):
        return lambda _m, _i, out: seen.__setitem__(key, out.detach().clone())

    def keep_in(key):
        return lambda _m, inp: seen.__setitem__(key, inp[0].detach().clone())

    points = [2, 5, 8, 11]
    for b in points:
        model.frame_flow.blocks[b].register_forward_hook(keep_out(f"flow{b}"))
        model.frame_mag.blocks[b].register_forward_hook(keep_out(f"mag{b}"))
        nxt = model.frame_mag.blocks[b + 1] if b < 11 else model.frame_mag.norm
        nxt.register_forward_pre_hook(keep_in(f"into{b}"))
    model.head.register_forward_pre_hook(keep_in("into_head"))
    model.frame_flow.norm.register_forward_hook(keep_out("flow_norm"))
    model.frame_mag.norm.register_forward_hook(keep_out("mag_norm"))
    flow = torch.randn(2, 3, SIZE, SIZE)
    latent = torch.randn(2, 64, SIZE // 2, SIZE // 2)
    with torch.no_grad():
        model(flow, latent)

    def mask(f):  # channel scope on tokens (B, N, D): per sample and token feature over tokens
        lo, hi = f.amin(dim=1, keepdim=True), f.amax(dim=1, keepdim=True)
        return (f - lo) / (hi - lo)

    for b in points:
        expected = seen[f"mag{b}"] * mask(seen[f"flow{b}"])
        torch.testing.assert_close(seen[f"into{b}"], expected, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(seen[f"into{b}"], seen[f"mag{b}"])
    cls_flow, cls_mag = seen["flow_norm"][:, 0], seen["mag_norm"][:, 0]  # class-token pooling
    lo, hi = cls_flow.amin(dim=1, keepdim=True), cls_flow.amax(dim=1, keepdim=True)
    torch.testing.assert_close(seen["into_head"], cls_mag * (cls_flow - lo) / (hi - lo),
                               rtol=1e-4, atol=1e-5)


def test_channel_scope_on_a_one_by_one_map_falls_back_to_sample_scope():
    """At 32 px, layer4 is 1 x 1: a per-channel min-max over one value would zero FrameMag."""
    from pipeline.models.infusenet import minmax_normalise

    x = torch.randn(3, 8, 1, 1)
    torch.testing.assert_close(minmax_normalise(x, "channel"), minmax_normalise(x, "sample"))
    torch.manual_seed(0)
    model = build_infusenet_variant("infusenet", {"image_size": SIZE, "norm_scope": "channel"})
    p_mag, _ = model.features(torch.randn(4, 3, SIZE, SIZE), torch.randn(4, 64, SIZE // 2,
                                                                         SIZE // 2))
    assert p_mag.abs().sum() > 0


# ------------------------------------------------------------------------------------------
# Bad sections fail before any data is read
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "override", "message"), [
    ("x", {"variant": "infusenet_res99"}, r"methods\.x\.variant must be one of"),
    ("infusenet", {"input_size": 33}, r"input_size must be even"),
    ("infusenet_vit", {"input_size": 40}, r"ViT: a multiple of 16"),
    ("infusenet", {"input_size": "64"}, r"input_size must be an integer"),
    ("infusenet", {"norm_scope": "pixel"}, r"methods\.infusenet: norm scope must be one of"),
    ("infusenet", {"model": {"norm_scop": "sample"}}, r"unknown InfuseNet model settings"),
    ("infusenet", {"model": {"cnn_backbone": "resnet99"}}, r"unknown backbone 'resnet99'"),
    ("infusenet_vit", {"model": {"vit_infusion_blocks": [3, 12]}}, r"vit_infusion_blocks"),
    ("infusenet", {"pretrained": "/nowhere/r18.pth"}, r"pretrained: /nowhere/r18\.pth.*not found"),
    ("infusenet", {"aux_flow_loss": -1}, r"aux_flow_loss must be >= 0"),
    ("late_fusion", {"aux_flow_loss": 0.5}, r"applies to InfuseNet variants only"),
    ("resnet18_mag", {"augment": {"hflip": 0.5}}, r"augment\.hflip.*latent"),
    ("infusenet_image", {"image_magnifier": "evm"}, r"image_magnifier must be oh or stmemm"),
    ("infusenet_image", {"image_alpha": 0}, r"image_alpha must be a positive number"),
    ("infusenet", {"task": "emotion", "protocol": "loso"}, r"12 CD6ME AUs \(task: au\)"),
    ("infusenet", {"protocol": "loso"}, r"runs under"),
])
def test_bad_params_raise_method_error(name, override, message):
    with pytest.raises(MethodError, match=message):
        build_method(name, {**TINY, **override})


def test_published_keys_are_the_report_entries():
    for variant, key in PUBLISHED_KEYS.items():
        assert PAPER_F1[variant]["average"] == PUBLISHED[key].f1_mean
    assert PAPER_F1["infusenet"]["average"] == pytest.approx(0.4230)
    assert PAPER_F1["resnet18_flow"]["average"] == pytest.approx(0.3828)
    assert PAPER_F1["resnet18_mag"]["average"] == pytest.approx(0.3243)
    assert PAPER_F1["late_fusion"]["average"] == pytest.approx(0.2937)
    assert PAPER_F1["infusenet_image"]["average"] == pytest.approx(0.3758)
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    for name, section in params["methods"].items():
        if section.get("family") == "infusenet":
            variant = section.get("variant", name)
            assert section.get("published") == PUBLISHED_KEYS.get(variant), name
            # METHODS.md, InfuseNet: Adam 1e-3, ExponentialLR γ 0.9, 50 epochs (quick may differ)
            paper = method_params({**params, "config": "paper"}, name)
            optimizer = {k: v for k, v in paper["optimizer"].items()
                         if not (k == "weight_decay" and v == 0)}
            assert optimizer == {"name": "adam", "lr": 0.001}, name
            assert paper["scheduler"] == {"name": "exponential", "gamma": 0.9}, name
            assert paper["epochs"] == 50, name
            # the reference code feeds the raw latent (per-sample scaling is quick's, ours)
            assert (paper.get("model") or {}).get("latent_norm", "none") == "none", name


def test_quick_resnet_variants_keep_layer4_wider_than_one_cell():
    """Issue #12: at the quick input sizes no ResNet stage of an InfuseNet-family network is 1 x 1
    (a min-max over one cell would make the infusion mask constant)."""
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    checked = []
    for name, section in params["methods"].items():
        if section.get("family") != "infusenet" or "vit" in section.get("variant", name):
            continue
        p = without_pretrained(method_params(params, name))  # shapes only: any start will do
        spec = build_method(name, p)
        net = spec.build_model(_ctx(spec, p["input_size"], name, p)).eval()
        layer4 = [m for n, m in net.named_modules() if n.endswith("layer4")]
        assert layer4, name
        with torch.no_grad():
            x = [torch.randn(2, *net.input_shapes[k]) for k in net.input_names]
            sides = []
            for m in layer4:
                m.register_forward_hook(lambda _m, _i, out, seen=sides: seen.append(out.shape[-2:]))
            net(*x)
        assert len(sides) == len(layer4), name
        assert all(min(side) >= 2 for side in sides), (name, p["input_size"], sides)
        checked.append(name)
    assert {"resnet18_mag", "late_fusion", "infusenet", "infusenet_image"} <= set(checked)


# ------------------------------------------------------------------------------------------
# Grad-CAM (Sec. 4.5, Fig. 5) from the checkpoints of the tiny runs
# ------------------------------------------------------------------------------------------

NETWORKS = {"FrameFlow": {"method": "resnet18_flow", "layer": "layer3"},
            "FrameMag": {"method": "resnet18_mag", "layer": "backbone.layer3"},
            "InfuseNet": {"method": "infusenet", "layer": "infusion.2"}}


def _all_params(runs) -> dict:
    return {"config": "quick", "seed": 0, "data": {"source": "standin"},
            "standin": {"profile": "quick"}, "train": {"device": "cpu"},
            # torch_threads is an execution setting (execution.torch_threads), not a method key
            "methods": {name: {k: v for k, v in section.items() if k != "torch_threads"}
                        for name, section in runs["params"].items()},
            "gradcam": {"au": "AU4", "fold": "samm", "n_samples": 3, "device": "cpu",
                        "torch_threads": 1, "networks": NETWORKS}}


def test_gradcam_figure_from_the_tiny_run(synth, runs, tmp_path):
    from matplotlib.image import imread

    samples, feats = synth
    out = tmp_path / "fig" / "gradcam.png"
    info = render_gradcam_figure(gradcam_columns(NETWORKS), _all_params(runs), samples, feats,
                                 runs["out"] / "models", out, au="AU4", fold="samm",
                                 n_samples=3, data_label="standin-quick")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(out)
    assert image.shape[1] > image.shape[0] * 0.9  # 4 columns, 3 rows
    assert info["au"] == "AU4" and info["fold"] == "samm" and len(info["samples"]) == 3
    assert all(s.startswith("samm/") for s in info["samples"])
    table = cd6me_table(samples)
    assert info["samples"] == [table.loc[r, "sample_id"]
                               for r in select_gradcam_samples(table, "samm", "AU4", 3)]
    assert list(info["probabilities"]) == ["FrameFlow", "FrameMag", "InfuseNet"]
    assert image.shape[0] > 3 * 100  # one row per sample
    for probs in info["probabilities"].values():
        assert len(probs) == 3 and all(0.0 <= p <= 1.0 for p in probs)
    # each column is its fold checkpoint: FrameMag's probabilities are the run's test scores
    # (InfuseNet's tensor-scope infusion couples a batch, so only the single stream is compared)
    pred = pd.read_csv(runs["results"]["resnet18_mag"][1].metrics / "predictions.csv")
    pred = pred.set_index("sample_id").loc[info["samples"], "score_AU4"].to_numpy()
    np.testing.assert_allclose(info["probabilities"]["FrameMag"], pred, atol=1e-5)


def test_gradcam_errors(synth, runs, tmp_path):
    samples, feats = synth
    params = _all_params(runs)
    models = runs["out"] / "models"
    with pytest.raises(FileNotFoundError, match=r"resnet18_mag/casme\.pt.*train@resnet18_mag"):
        build_fold_model("resnet18_mag", params["methods"]["resnet18_mag"], "casme", models)
    with pytest.raises(ValueError, match="no layer"):
        render_gradcam_figure(gradcam_columns({"X": {"method": "infusenet", "layer": "layer9"}}),
                              params, samples, feats, models, tmp_path / "x.png", au="AU4",
                              fold="samm", n_samples=1)
    with pytest.raises(ValueError, match="gradcam.au"):
        select_gradcam_samples(cd6me_table(samples), "samm", "AU3", 2)
    with pytest.raises(ValueError, match="no CD6ME test sample"):
        select_gradcam_samples(cd6me_table(samples), "smic", "AU4", 2)
    with pytest.raises(ValueError, match="needs 'method' and 'layer'"):
        gradcam_columns({"FrameFlow": {"method": "resnet18_flow"}})
    from pipeline.models.gradcam import save_gradcam_figure

    faces = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="cell_labels"):
        save_gradcam_figure(tmp_path / "y.png", faces, {"A": np.zeros((2, 4, 4))},
                            cell_labels={"B": ["p 0.1", "p 0.2"]})
    moved = tmp_path / "models" / "resnet18_mag"
    moved.mkdir(parents=True)
    (moved / "casme2.pt").write_bytes((models / "resnet18_mag" / "samm.pt").read_bytes())
    with pytest.raises(ValueError, match="expected 'resnet18_mag'/'casme2'"):
        build_fold_model("resnet18_mag", params["methods"]["resnet18_mag"], "casme2",
                         tmp_path / "models")
    assert not (tmp_path / "x.png").exists()


def test_gradcam_stage_cli(synth, runs, tmp_path, monkeypatch):
    from stages import gradcam as gradcam_stage

    samples, feats = synth
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(_all_params(runs)))
    samples.to_csv(tmp_path / "samples.csv", index=False)
    monkeypatch.chdir(tmp_path)
    args = ["--samples", "samples.csv", "--features", str(feats), "--models",
            str(runs["out"] / "models")]
    assert gradcam_stage.main(args) == 0
    assert Path("metrics/gradcam.png").read_bytes()[:4] == b"\x89PNG"
    info = json.loads(Path("metrics/gradcam.json").read_text())
    assert info["fold"] == "samm" and len(info["samples"]) == 3

"""The annotation-mimicking network (Ruan et al., ACM MM 2022): Region Replacing, WSCL, AWM,
the input pre-processing, the flow_mag pairs, a tiny LOSO run and its AU-CAM figure."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import training_synth

from pipeline.features.cache import CacheWriter, FeatureCache
from pipeline.features.flow_mag import magnified_pairs, run_flow_mag
from pipeline.models.mimicking import (
    AreaWeightedModule,
    MimickingConfig,
    MimickingNet,
    MimickingOutput,
    ShuffleAttention,
    au_cam,
)
from pipeline.reporting.published import PUBLISHED
from pipeline.training.data import read_samples
from pipeline.training.methods_mimicking import (
    flow_magnitude_image,
    jaccard_weights,
    region_replace,
    render_aucam_figure,
    wscl_loss,
)
from pipeline.training.protocols import Fold
from pipeline.training.registry import FoldContext, MethodError, build_method
from pipeline.training.run import RunPaths, run_method

SIZE = 32


# ---------------------------------------------------------------- Region Replacing


def test_region_replacing_swaps_mouth_halves_within_a_class_and_unites_au_sets():
    n, s = 6, 8
    target = torch.tensor([0, 0, 1, 1, 1, 2])
    image = torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, 1, s, s).clone()
    aus = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 1],
                        [1, 1, 1, 1]], dtype=torch.uint8)
    batch = {"image": image, "on_a": image + 10, "off_a": image + 20, "target": target,
             "aus": aus}
    out = region_replace(batch, torch.Generator().manual_seed(0), p=1.0)
    partner = out["rr_partner"]
    assert partner[5] == -1                                  # alone in its class: kept
    assert torch.equal(out["image"][5], image[5]) and torch.equal(out["aus"][5], aus[5])
    for i in range(5):
        j = int(partner[i])
        assert j != i and target[j] == target[i]             # another sample of the same class
        for key, off in (("image", 0), ("on_a", 10), ("off_a", 20)):
            x = out[key][i, 0]
            assert torch.all(x[: s // 2] == i + off)         # eyes half its own
            assert torch.all(x[s // 2:] == j + off)          # mouth half the partner's
        assert torch.equal(out["aus"][i], torch.maximum(aus[i], aus[j]))   # union
        assert out["target"][i] == target[i]
    assert torch.equal(batch["image"], image)                # the input batch is not modified


def test_region_replacing_probability_zero_keeps_everything():
    batch = {"image": torch.rand(4, 1, 4, 4), "target": torch.zeros(4, dtype=torch.long),
             "aus": torch.ones(4, 3, dtype=torch.uint8)}
    out = region_replace(batch, torch.Generator().manual_seed(0), p=0.0)
    assert torch.equal(out["image"], batch["image"]) and bool((out["rr_partner"] == -1).all())


# ---------------------------------------------------------------- WSCL


def test_jaccard_weights():
    aus = torch.tensor([[1, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]])
    w = jaccard_weights(aus)
    assert w[0, 1] == pytest.approx(0.5) and w[1, 0] == pytest.approx(0.5)
    assert w[0, 2] == 0 and w[0, 0] == 1 and w[3, 3] == 0 and w[3, 0] == 0


def test_wscl_matches_the_hand_computed_case():
    # z1 = z3 = (1, 0), z2 = (0, 1); AU sets {1, 2}, {2}, {3}; τ = 1.
    # w12 = 1/2, w13 = w23 = 0, w_ii = 1.  Anchor 1: Σ_k w = 1.5, numerator j = 2:
    # 0.5·(−log(e⁰ / (e¹ + e⁰ + e¹))); anchor 2: Σ_k w = 1.5, 0.5·log(e + 2); anchor 3: 0.
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 0.0]])   # z3 normalised to (1, 0)
    aus = torch.tensor([[1, 1, 0], [0, 1, 0], [0, 0, 1]])
    expected = (0.5 * math.log(2 * math.e + 1) / 1.5 + 0.5 * math.log(math.e + 2) / 1.5 + 0) / 3
    assert float(wscl_loss(feats, aus, tau=1.0)) == pytest.approx(expected, rel=1e-6)
    # τ scales the logits: τ = 0.5 gives exp(2) where τ = 1 gave exp(1)
    expected_half = (0.5 * math.log(2 * math.e ** 2 + 1) / 1.5
                     + 0.5 * math.log(math.e ** 2 + 2) / 1.5) / 3
    assert float(wscl_loss(feats, aus, tau=0.5)) == pytest.approx(expected_half, rel=1e-6)


def test_wscl_skips_empty_au_sets_and_pulls_similar_samples_together():
    aus = torch.tensor([[1, 0], [1, 0], [0, 0]])
    close = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]], requires_grad=True)
    far = torch.tensor([[1.0, 0.0], [-1.0, 0.1], [0.0, 1.0]])
    assert float(wscl_loss(close.detach(), aus, 0.5)) < float(wscl_loss(far, aus, 0.5))
    loss = wscl_loss(close, torch.zeros(3, 2), 0.5)          # no AU anywhere
    assert float(loss.detach()) == 0.0
    loss.backward()                                          # still differentiable
    with pytest.raises(ValueError, match="temperature"):
        wscl_loss(close, aus, 0.0)


# ---------------------------------------------------------------- AWM and the network


def test_awm_shapes_and_weighting():
    torch.manual_seed(0)
    awm = AreaWeightedModule(dim=4, hidden=6)
    xe, xm = torch.randn(3, 4), torch.randn(3, 4)
    x_f, weight = awm(xe, xm)
    assert x_f.shape == (3, 8) and weight.shape == (3, 8)
    assert bool(((weight > 0) & (weight < 1)).all())
    assert torch.allclose(x_f, torch.cat([xe, xm], 1) * weight)
    e_w, m_w = awm.split(x_f)
    assert e_w.shape == (3, 4) and m_w.shape == (3, 4)
    assert torch.equal(e_w, x_f[:, :4]) and torch.equal(m_w, x_f[:, 4:])


@pytest.mark.parametrize("dual, awm, feat", [(True, True, 64), (True, False, 64), (False, False, 32)])
def test_network_outputs(dual, awm, feat):
    torch.manual_seed(0)
    net = MimickingNet(MimickingConfig(n_classes=3, width=4, dual=dual, awm=awm, awm_hidden=8,
                                       sa_groups=2, head_hidden=8))
    out = net(torch.rand(2, 3, 32, 32))
    assert out.log_probs.shape == (2, 3) and out.features.shape == (2, feat)
    p = out.log_probs.exp()
    assert torch.allclose(p.sum(1), torch.ones(2), atol=1e-5)
    expected = (out.logits_eyes.softmax(1) + out.logits_mouth.softmax(1)) / 2
    assert torch.allclose(p, expected if dual else out.logits_eyes.softmax(1), atol=1e-5)
    assert (net.awm is not None) == awm
    assert hasattr(net, "branch_mouth") == dual
    net.eval()
    cam = au_cam(net, torch.rand(2, 3, 32, 32))
    assert cam.shape == (2, 32, 32) and float(cam.max()) <= 1.0 + 1e-6 and float(cam.min()) >= 0


def test_mouth_half_reaches_only_the_mouth_branch():
    net = MimickingNet(MimickingConfig(n_classes=2, width=4, awm=False, sa_groups=2,
                                       head_hidden=8)).eval()
    x = torch.rand(1, 3, 32, 32)
    y = x.clone()
    y[..., 16:, :] = torch.rand(1, 3, 16, 32)
    a = net.branch_maps(x)
    b = net.branch_maps(y)
    assert torch.allclose(a[0], b[0]) and not torch.allclose(a[1], b[1])


def test_shuffle_attention_learns_one_set_of_weights_per_group():
    sa = ShuffleAttention(16, groups=2)
    assert sa.cweight.shape == (2, 4) and sa.sweight.shape == (2, 4)
    x = torch.randn(2, 16, 4, 4)
    assert sa(x).shape == x.shape
    sa(x).square().sum().backward()
    assert not torch.allclose(sa.cbias.grad[0], sa.cbias.grad[1])
    with pytest.raises(ValueError, match="divisible"):
        ShuffleAttention(12, groups=4)



# ---------------------------------------------------------------- the authors' regularisation
# (model/samer.py and train.py of their public code; pipeline/models/mimicking.py)

#: every regularisation switch off: the network as it was before them (commit 9ced99f)
OFF = {"dropout": 0.0, "backbone_dropout": 0.0, "awm_dropout": 0.0, "feature_dropout": 0.0,
       "layer_norm": False, "l2_normalise": False, "awm_detach": False}
SMALL = {"n_classes": 3, "width": 4, "awm_hidden": 8, "sa_groups": 2, "head_hidden": 8}


def _dropout_io(net, x):
    """Input and output of every Dropout module of one forward pass, by module name."""
    seen, hooks = {}, []
    for name, mod in net.named_modules():
        if isinstance(mod, torch.nn.Dropout):
            hooks.append(mod.register_forward_hook(
                lambda m, i, o, name=name: seen.__setitem__(name, (m.p, i[0].detach(),
                                                                   o.detach()))))
    net(x)
    for h in hooks:
        h.remove()
    return seen


def test_authors_dropout_sits_on_the_named_modules_and_acts_only_in_training():
    torch.manual_seed(0)
    # defaults: the authors' values; wide enough heads to count the dropped share
    net = MimickingNet(MimickingConfig(**{**SMALL, "head_hidden": 64, "awm_hidden": 64}))
    x = torch.rand(16, 3, 64, 64)
    seen = _dropout_io(net.train(), x)
    expected = {"base.5": 0.2, "base.7": 0.2,              # after layer1, after layer2
                "branch_eyes.2": 0.2, "branch_mouth.2": 0.2,   # after layer3 (+ SA)
                "head_eyes.3": 0.3, "head_mouth.3": 0.3, "awm.drop": 0.3}
    assert {k: v[0] for k, v in seen.items()} == expected
    assert isinstance(net.base[4], torch.nn.Sequential) and isinstance(net.base[6],
                                                                       torch.nn.Sequential)
    assert isinstance(net.branch_eyes[1], ShuffleAttention)   # layer3 → SA → dropout → layer4
    assert isinstance(net.branch_eyes[3][0].conv1, torch.nn.Conv2d)
    for name, (p, inp, out) in seen.items():
        live = inp != 0
        kept = live & (out != 0)
        dropped = (live & (out == 0)).float().sum() / live.float().sum()
        assert torch.allclose(out[kept], inp[kept] / (1 - p), rtol=1e-5), name
        assert abs(float(dropped) - p) < 0.08, (name, float(dropped))
    for name, (_p, inp, out) in _dropout_io(net.eval(), x).items():
        assert torch.equal(inp, out), name


def test_au_feature_is_l2_normalised_then_dropped_in_training_only():
    torch.manual_seed(0)
    net = MimickingNet(MimickingConfig(**SMALL))
    x_f = torch.randn(6, 64) * 3
    z = torch.nn.functional.normalize(x_f, dim=1)
    net.eval()
    assert torch.allclose(net._au_feature(x_f), z)
    assert torch.allclose(net(torch.rand(2, 3, 32, 32)).features.norm(dim=1), torch.ones(2))
    net.train()
    out = net._au_feature(x_f)
    kept = out != 0
    assert 0 < int((~kept).sum()) < out.numel() // 2
    assert torch.allclose(out[kept], z[kept] / 0.9)


def test_branch_features_have_unit_l2_norm_and_feed_the_awm_detached():
    torch.manual_seed(0)
    net = MimickingNet(MimickingConfig(**SMALL)).eval()
    a_e, a_m = net.branch_maps(torch.rand(3, 3, 32, 32) * 5)
    x_e, x_m = net.branch_features(a_e, a_m)
    assert torch.allclose(x_e.norm(dim=1), torch.ones(3), atol=1e-6)
    assert torch.allclose(x_m.norm(dim=1), torch.ones(3), atol=1e-6)
    assert torch.allclose(x_e, torch.nn.functional.normalize(a_e.mean(dim=(2, 3)), dim=1))
    # the heads see X_b ⊙ weight (not re-normalised)
    _, (xe_w, xm_w) = net.head(a_e, a_m)
    _, weight = net.awm(x_e, x_m)
    assert torch.allclose(torch.cat([xe_w, xm_w], 1), torch.cat([x_e, x_m], 1) * weight)
    # awm_detach: no gradient reaches the branch features through the weights
    for detach in (True, False):
        awm = AreaWeightedModule(dim=4, hidden=6, detach=detach).eval()
        xe, xm = torch.randn(2, 4, requires_grad=True), torch.randn(2, 4, requires_grad=True)
        awm(xe, xm)[1].sum().backward()
        assert (xe.grad is None or not xe.grad.any()) == detach
        assert awm.fc1.weight.grad.abs().sum() > 0


def test_layer_norm_follows_the_first_linear_layer_of_each_head_and_both_of_the_awm():
    torch.manual_seed(0)
    net = MimickingNet(MimickingConfig(**SMALL))
    for head in (net.head_eyes, net.head_mouth):
        assert [type(m).__name__ for m in head] == ["Linear", "LayerNorm", "ReLU", "Dropout",
                                                    "Linear"]
        assert head[1].normalized_shape == (8,)
    assert net.awm.norm1.normalized_shape == (8,) and net.awm.norm2.normalized_shape == (64,)
    normed = []
    h = net.head_eyes[1].register_forward_hook(
        lambda m, i, o: normed.append(o.detach().clone()))     # before the in-place ReLU
    net.eval()(torch.rand(5, 3, 32, 32))
    h.remove()
    assert torch.allclose(normed[0].mean(1), torch.zeros(5), atol=1e-5)
    assert torch.allclose(normed[0].var(1, unbiased=False), torch.ones(5), atol=1e-2)


def _loss_of(params, logits_e, logits_m, y, train_targets):
    spec = build_method("m", params)
    fold = Fold("f", "s", "samm-3", np.zeros(0, np.int64), np.zeros(0, np.int64))
    ctx = FoldContext(method="m", task="emotion", fold=fold, n_outputs=3,
                      class_names=("negative", "positive", "surprise"),
                      train_targets=np.asarray(train_targets), train_subjects=(), seed=0,
                      params=params, device=torch.device("cpu"))
    out = MimickingOutput(logits_e, logits_e, logits_m, torch.zeros(len(y), 4))
    return float(spec.build_loss(ctx)(out, {"target": torch.tensor(y), "aus": None}))


def test_label_smoothing_changes_the_loss_as_torch_defines_it():
    logits_e = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    logits_m = torch.tensor([[0.0, 1.0, 0.0], [-2.0, 0.0, 3.0]])
    y = [0, 2]
    w = np.array([1.0, 3.0, 1.5])                   # class counts 3, 1, 2: w_c = max n / n_c

    def smoothed_ce(logits, eps):
        # PyTorch's label_smoothing with class weights: per sample
        # (1 - eps) w_y (-log p_y) + eps / K * sum_c w_c (-log p_c), over sum_i w_y_i
        nll = -np.log(np.exp(logits) / np.exp(logits).sum(1, keepdims=True))
        per = [(1 - eps) * w[t] * nll[i, t] + eps / 3 * (w * nll[i]).sum()
               for i, t in enumerate(y)]
        return sum(per) / w[y].sum()

    params = {**TINY, "wscl_lambda": 0.0}
    targets = [0, 0, 0, 1, 2, 2]
    for eps in (0.0, 0.1, 0.3):
        got = _loss_of({**params, "label_smoothing": eps}, logits_e, logits_m, y, targets)
        want = smoothed_ce(logits_e.numpy(), eps) + smoothed_ce(logits_m.numpy(), eps)
        assert got == pytest.approx(want, rel=1e-5)
    # the default is the authors' 0.1
    assert _loss_of(params, logits_e, logits_m, y, targets) == pytest.approx(
        smoothed_ce(logits_e.numpy(), 0.1) + smoothed_ce(logits_m.numpy(), 0.1), rel=1e-5)
    assert smoothed_ce(logits_e.numpy(), 0.1) != pytest.approx(smoothed_ce(logits_e.numpy(), 0))


@pytest.mark.parametrize("dual, awm, n_keys, digest, first_row", [
    (True, True, 208, "8de42815c97d2255", [-0.9564, -1.2161, -1.1415]),
    (False, False, 132, "5a52688a7403ae06", [-1.0018, -1.0385, -1.2772])])
def test_switches_off_restore_the_network_without_the_regularisation(dual, awm, n_keys, digest,
                                                                     first_row):
    """Names, shapes and (seed 0) outputs of the network before the regularisation (9ced99f's
    code, the same configuration and seeds)."""
    import hashlib

    torch.manual_seed(0)
    net = MimickingNet(MimickingConfig(**SMALL, dual=dual, awm=awm, **OFF))
    sd = net.state_dict()
    desc = ";".join(f"{k}:{tuple(v.shape)}" for k, v in sd.items())
    assert (len(sd), hashlib.sha256(desc.encode()).hexdigest()[:16]) == (n_keys, digest)
    assert not any(isinstance(m, torch.nn.LayerNorm) or
                   (isinstance(m, torch.nn.Dropout) and m.p > 0) for m in net.modules())
    torch.manual_seed(1)
    x = torch.rand(2, 3, 32, 32)
    out = net(x)
    assert torch.allclose(out.log_probs[0], torch.tensor(first_row), atol=1e-3)
    assert torch.equal(net(x).log_probs, out.log_probs)     # training mode, yet deterministic
    x_e, _ = net.branch_features(*net.branch_maps(x))
    assert not torch.allclose(x_e.norm(dim=1), torch.ones(2))
    if awm:
        xe = x_e.detach().requires_grad_(True)
        net.awm(xe, xe)[1].sum().backward()
        assert xe.grad.abs().sum() > 0                      # not detached

# ---------------------------------------------------------------- inputs


def test_flow_magnitude_image_scales_and_thresholds():
    flow = np.zeros((4, 4, 3), np.float32)
    flow[0, 0, :2] = (3.0, 4.0)        # magnitude 5: the maximum
    flow[1, 1, 0] = 1.0                # scaled 51 > 1.5 x mean (1.5 x 306 / 16 = 28.7): kept
    flow[2, 2, 1] = 0.5                # scaled 25.5 < 1.5 x mean (1.5 x 331.5 / 16 = 31.1): zeroed
    out = flow_magnitude_image(flow, 4, threshold=1.5)
    assert out.shape == (1, 4, 4) and out.dtype == np.float32
    assert out[0, 0, 0] == pytest.approx(1.0) and out[0, 1, 1] == pytest.approx(0.2)
    assert out[0, 2, 2] == 0 and float(out.sum()) == pytest.approx(1.2)
    assert float(flow_magnitude_image(flow, 4, threshold=0.0).sum()) == pytest.approx(1.3)
    high = flow_magnitude_image(flow, 4, threshold=20.0)   # 20 x mean > 255
    assert float(high.sum()) == 0.0
    assert float(flow_magnitude_image(np.zeros((4, 4, 2)), 4).sum()) == 0.0
    with pytest.raises(ValueError, match="non-finite"):
        flow_magnitude_image(np.full((4, 4, 2), np.nan), 4)


def test_magnified_pairs_follow_the_motion():
    yy, xx = np.mgrid[0:32, 0:32]
    blob = lambda cx: np.clip(40 + 180 * np.exp(-((xx - cx) ** 2 + (yy - 16) ** 2) / 18.0),  # noqa: E731
                              0, 255).astype(np.uint8)
    onset, offset, mag = blob(14), blob(14), blob(16)
    out = magnified_pairs(onset, offset, mag, 16, {})
    assert set(out) == {"onset_mag", "offset_mag"}
    assert out["onset_mag"].shape == (16, 16, 3) and out["onset_mag"].dtype == np.float32
    assert float(out["onset_mag"][6:10, 6:10, 0].mean()) > 0.3   # rightward (1 px at 16 px)


def _flow_mag_inputs(root: Path, ids: list[str], seed: int) -> tuple[Path, Path]:
    """faces.h5 (32-px onset = offset crops) and magnified.h5 (the apex 1 px to the right)."""
    rng = np.random.default_rng(seed)
    with CacheWriter(root / "faces.h5", "faces", {"sizes": [32]}) as fw, \
            CacheWriter(root / "magnified.h5", "magnified", {"size": 32}) as mw:
        for sid in ids:
            img = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            fw.append(sid, {"crop32/onset": img, "crop32/offset": img})
            mw.append(sid, {"frames/oh/alpha6/apex": np.roll(img, 1, axis=1)})
    return root / "faces.h5", root / "magnified.h5"


def test_flow_mag_stage_writes_both_pairs(tmp_path):
    ids = ["casme2/sub01/a", "casme2/sub01/b"]
    faces, mag = _flow_mag_inputs(tmp_path, ids, seed=0)
    out = tmp_path / "flow_mag.h5"
    summary = run_flow_mag(faces, mag, {"size": 16, "alpha": 6}, {"size": 32, "tvl1": {}}, out,
                           tmp_path / "failures.csv", {"backend": "local", "n_jobs": 1})
    assert summary.n_written == 2
    cache = FeatureCache(out, "flow_mag")
    assert list(cache.sample_ids) == ids
    assert cache.read("onset_mag", 0).shape == (16, 16, 3)
    with pytest.raises(Exception, match="alpha10"):
        run_flow_mag(faces, mag, {"size": 16, "alpha": 10}, {"size": 32, "tvl1": {}},
                     tmp_path / "x.h5", tmp_path / "f.csv", {"backend": "local", "n_jobs": 1})


def test_flow_mag_stage_computes_only_its_databases(tmp_path):
    ids = ["casme/sub01/a", "casme2/sub01/b", "samm/006/c", "mmew/S01/d"]
    faces, mag = _flow_mag_inputs(tmp_path, ids, seed=1)
    out = tmp_path / "flow_mag.h5"
    summary = run_flow_mag(faces, mag,
                           {"size": 16, "alpha": 6, "databases": ["casme2", "samm", "smic"]},
                           {"size": 32, "tvl1": {}}, out, tmp_path / "failures.csv",
                           {"backend": "local", "n_jobs": 1})
    assert (summary.n_samples, summary.n_written, summary.n_failed) == (2, 2, 0)
    cache = FeatureCache(out, "flow_mag")
    assert list(cache.sample_ids) == ["casme2/sub01/b", "samm/006/c"]
    assert cache.params["databases"] == ["casme2", "samm", "smic"]
    with pytest.raises(Exception, match="no samples"):
        run_flow_mag(faces, mag, {"size": 16, "alpha": 6, "databases": ["smic"]},
                     {"size": 32, "tvl1": {}}, tmp_path / "x.h5", tmp_path / "f.csv",
                     {"backend": "local", "n_jobs": 1})


# ---------------------------------------------------------------- a tiny LOSO run


TINY = {"family": "mimicking", "task": "emotion", "protocol": "loso", "device": "cpu",
        "input_size": SIZE, "epochs": 1, "batch_size": 16, "torch_threads": 1,
        "tasks": ["casme2-5", "samm-3"], "optimizer": {"name": "adamw", "lr": 0.003},
        "scheduler": {"name": "cosine_warm_restarts", "t0": 10, "t_mult": 2},
        "model": {"width": 4, "awm_hidden": 8, "sa_groups": 2, "head_hidden": 8},
        "augment": {"hflip": 0.5, "erase": 0.5}, "published": "mimicking_loso"}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth_mimicking")
    csv, feats = training_synth.build(root, n_subjects=2, per_subject=4, size=SIZE, seed=5,
                                      databases=("casme2", "samm"))
    training_synth.add_infusenet_caches(feats, seed=0, image_alphas=(6,))
    training_synth.add_flow_mag(feats)
    return read_samples(csv), feats


def test_tiny_loso_run_writes_metrics_one_checkpoint_and_the_aucam_figure(synth, tmp_path):
    samples, feats = synth
    fold = "samm-3__samm_001"
    params = {**TINY, "save_checkpoints": ["samm-3__*_001"]}
    paths = RunPaths(tmp_path / "models" / "m", tmp_path / "metrics" / "m",
                     tmp_path / "metrics" / "m.json")
    res = run_method("m", params, samples, feats, paths, "standin-quick", seed=0)
    assert set(res["results"]) >= {"casme2-5", "samm-3"}
    for r in res["results"].values():
        assert 0 <= r["uf1"] <= 1 and r["n_samples"] > 0
    assert json.loads(paths.json.read_text())["task"] == "emotion"
    assert sorted(p.name for p in paths.models.glob("*.pt")) == [f"{fold}.pt"]
    info = render_aucam_figure("m", params, samples, feats, tmp_path / "models",
                               tmp_path / "aucam.png", fold=fold, n_samples=2,
                               data_label="standin-quick")
    assert (tmp_path / "aucam.png").stat().st_size > 1000
    assert info["fold"] == fold and len(info["samples"]) == 2
    assert all(s.startswith("samm/001/") for s in info["samples"])
    with pytest.raises(FileNotFoundError, match="casme2-5__casme2_sub01"):
        render_aucam_figure("m", params, samples, feats, tmp_path / "models",
                            tmp_path / "x.png", fold="casme2-5__casme2_sub01", n_samples=2,
                            data_label="standin-quick")


def test_ablation_switches_and_the_apex_flow_source(synth, tmp_path):
    samples, feats = synth
    params = {**TINY, "tasks": ["samm-3"], "flow_source": "apex", "dual": False,
              "wscl_lambda": 0.0, "region_replacing": 0.0, "save_checkpoints": False}
    spec = build_method("sb", params)
    assert [(i.cache, i.dataset) for i in spec.inputs][1:] == [("flow", "onset_apex"),
                                                               ("flow", "offset_apex")]
    # flow.h5 of the synthetic build has no offset_apex (as in quick): the run names the missing
    # dataset and where to ask for it
    from pipeline.features.cache import CacheError

    with pytest.raises(CacheError, match=r"no dataset 'offset_apex'.*flow\.pairs"):
        run_method("sb", params, samples, feats,
                   RunPaths(tmp_path / "a", tmp_path / "b", tmp_path / "c.json"),
                   "standin-quick", seed=0)
    spec = build_method("m", {**TINY})
    assert [(i.cache, i.dataset) for i in spec.inputs] == [
        ("magnified", "frames/oh/alpha6/apex"), ("flow_mag", "onset_mag"),
        ("flow_mag", "offset_mag")]


@pytest.mark.parametrize("override, message", [
    ({"flow_source": "strain"}, "flow_source"), ({"task": "au"}, "task: emotion"),
    ({"input_size": 33}, "input_size"), ({"wscl_lambda": 1.5}, "wscl_lambda"),
    ({"model": {"width": 3, "sa_groups": 4}}, "divisible"), ({"model": {"depth": 3}}, "unknown"),
    ({"augment": {"mixup": 1}}, "augment"), ({"label_smoothing": 1.0}, "label_smoothing"),
    ({"model": {"backbone_dropout": 1.0}}, "backbone_dropout"),
    ({"model": {"layer_norm": "yes"}}, "layer_norm")])
def test_bad_params_raise_method_error(override, message):
    with pytest.raises(MethodError, match=message):
        build_method("m", {**TINY, **override})


def test_published_ablation_rows():
    full = PUBLISHED["mimicking_loso"].results
    assert full["casme2-5"] == {"accuracy": 0.833, "uf1": 0.827, "uar": 0.850}
    assert PUBLISHED["mimicking_no_rr_loso"].results["samm-5"] == {"accuracy": 0.7647,
                                                                   "uf1": 0.7019}
    assert PUBLISHED["mimicking_sb_loso"].results["casme2-5"]["uf1"] == 0.7921
    for key in ("mimicking_db_loso", "mimicking_db_au_loso", "mimicking_db_awm_loso"):
        assert set(PUBLISHED[key].results) == {"casme2-5", "samm-5"}


def test_au_sets_reach_the_loss(synth, monkeypatch, tmp_path):
    """The batches carry every sample's AU set from samples.csv (the WSCL weights)."""
    import pipeline.training.methods_mimicking as mm

    samples, feats = synth
    seen = []
    original = mm.wscl_loss

    def spy(features, aus, tau):
        seen.append(aus.clone())
        return original(features, aus, tau)

    monkeypatch.setattr(mm, "wscl_loss", spy)
    params = {**TINY, "tasks": ["samm-3"], "region_replacing": 0.0, "save_checkpoints": False,
              "augment": {"hflip": 0.0}}
    run_method("m", params, samples, feats,
               RunPaths(tmp_path / "m", tmp_path / "n", tmp_path / "m.json"), "standin-quick",
               seed=0)
    assert seen
    table = samples[samples["database"] == "samm"]
    au_cols = sorted([c for c in samples.columns if c[:2] == "AU" and c[2:].isdigit()],
                     key=lambda c: int(c[2:]))
    known = {tuple(r) for r in table[au_cols].to_numpy()}
    rows = {tuple(r) for a in seen for r in a.tolist()}
    assert rows <= known and len(rows) > 1


def test_params_and_dvc_yaml_wire_train_mimicking():
    import yaml

    from pipeline.params import resolve
    from pipeline.training.methods_mimicking import model_config

    project = Path(__file__).resolve().parents[1]
    params = yaml.safe_load((project / "params.yaml").read_text())
    section = params["methods"]["mimicking"]
    quick, paper = resolve(section, "quick"), resolve(section, "paper")
    for resolved in (quick, paper):
        spec = build_method("mimicking", resolved)
        assert [(i.cache, i.dataset) for i in spec.inputs] == [
            ("magnified", "frames/oh/alpha6/apex"), ("flow_mag", "onset_mag"),
            ("flow_mag", "offset_mag")]
        assert resolved["alpha"] in params["magnify"]["frames"]["oh"]
        assert resolved["alpha"] == params["flow_mag"]["alpha"]
    assert (paper["input_size"], paper["epochs"], paper["batch_size"]) == (224, 100, 128)
    assert paper["optimizer"] == {"name": "adamw", "lr": 0.003, "weight_decay": 0.01}
    assert paper["scheduler"] == {"name": "cosine_warm_restarts", "t0": 10, "t_mult": 2}
    assert (paper["wscl_lambda"], paper["region_replacing"]) == (0.3, 0.5)
    cfg = model_config("mimicking", paper, 5)
    assert (cfg.width, cfg.awm_hidden, cfg.head_hidden, cfg.dual, cfg.awm) == (64, 1024, 512,
                                                                               True, True)
    cfg = model_config("mimicking", paper, 5)     # the authors' regularisation
    assert (cfg.dropout, cfg.backbone_dropout, cfg.awm_dropout, cfg.feature_dropout) == (
        0.3, 0.2, 0.3, 0.1)
    assert cfg.layer_norm and cfg.l2_normalise and cfg.awm_detach
    assert paper["label_smoothing"] == 0.1
    assert quick["label_smoothing"] == 0.0   # ours, measured (params.yaml's comment)
    for resolved in (quick, paper):   # layer4 of each half at least 2 x 2 cells at input_size
        s = resolved["input_size"]
        net = MimickingNet(model_config("mimicking", resolved, 3))
        a_eyes, _ = net.branch_maps(torch.zeros(1, 3, s, s))
        assert min(a_eyes.shape[-2:]) >= 2, (s, a_eyes.shape)
    assert resolve(params["flow_mag"], "paper")["size"] == 224
    dvc = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    assert dvc["train"]["foreach"]["mimicking"] == {"in1": "data/features/flow_mag.h5",
                                                    "in2": "data/features/magnified.h5",
                                                    "in3": "data/features/flow.h5"}
    assert {"metrics/mimicking.json", "metrics/mimicking"} <= set(dvc["report"]["deps"])
    assert "data/features/magnified.h5" in dvc["flow_mag"]["deps"]
    assert dvc["flow_mag"]["outs"][0] == "data/features/flow_mag.h5"
    assert "models/mimicking" in dvc["aucam"]["deps"]
    assert PUBLISHED[section["published"]].results["samm-3"]["uf1"] == 0.816

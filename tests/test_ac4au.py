"""AC4AU network, losses, augmentation and backbone weights (pipeline.models.ac4au*)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.models.ac4au import (
    AC4AU,
    AC4AU_PAPER_CONFIG,
    AUSpecificExpertRouter,
    SequenceAugment,
    ac4au_config,
    build_ac4au,
    build_sequence_augment,
    frd_decompose,
    normalise_frames,
    sequence_to_tensor,
)
from pipeline.models.ac4au_losses import (
    AdditiveAngularMarginLoss,
    build_ac4au_criterion,
    class_aware_focal_loss,
    encode_subjects,
    positive_priors,
    subject_index,
)
from pipeline.models.mobilefacenet import MobileFaceNet, WeightLoadError, load_backbone_weights

# A tiny network of the same architecture: quarter width, 32-px frames (2x2 tokens), l = 4.
TINY = {
    "width_mult": 0.25,
    "embedding_dim": 32,
    "input_size": 32,
    "sequence_length": 4,
    "expert_hidden": 16,
    "dropout": 0.0,
}



def tiny(**overrides) -> AC4AU:
    torch.manual_seed(0)
    return build_ac4au({**TINY, **overrides})


def batch(b: int = 2, length: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, length, 3, size, size, generator=g)


# ------------------------------------------------------------------------------------------ FRD


@pytest.mark.parametrize("length", [8, 7, 1])
def test_frd_dc_plus_ac_reconstructs_and_ac_has_zero_mean(length):
    g = torch.Generator().manual_seed(1)
    features = torch.randn(3, length, 16, generator=g) * 5 + 2
    dc, ac = frd_decompose(features)
    assert dc.shape == (3, 16) and ac.shape == (3, length, 16)
    # Eq. 2 on the unnormalised DFT of Eq. 1: DC is the temporal sum.
    torch.testing.assert_close(dc, features.sum(dim=1), atol=1e-4, rtol=1e-5)
    assert (dc[:, None] / length + ac - features).abs().max() < 1e-5
    assert ac.mean(dim=1).abs().max() < 1e-5


def test_frd_ac_matches_direct_dft_of_eq3_bins():
    # AC_t from the spectrum written out by hand (numpy, bins 1..floor(l/2) and their conjugates).
    rng = np.random.default_rng(2)
    x = rng.normal(size=(1, 8, 3))
    length = 8
    t = np.arange(length)
    expected = np.zeros_like(x)
    for c in range(3):
        for k in range(1, length):  # all non-zero bins of the full DFT = rFFT bins + conjugates
            coeff = np.sum(x[0, :, c] * np.exp(-2j * np.pi * k * t / length))
            expected[0, :, c] += np.real(coeff * np.exp(2j * np.pi * k * t / length)) / length
    _, ac = frd_decompose(torch.from_numpy(x))
    np.testing.assert_allclose(ac.numpy(), expected, atol=1e-10)


def test_frd_is_differentiable():
    x = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: frd_decompose(v)[1], (x,))
    assert torch.autograd.gradcheck(lambda v: frd_decompose(v)[0], (x,))


# ----------------------------------------------------------------------------- network, AUsER


def test_full_size_forward_shapes_l8_112px():
    torch.manual_seed(0)
    model = build_ac4au().eval()  # paper configuration
    assert model.frame_encoder.backbone.feature_channels == 128
    assert model.frame_encoder.pos_embed.shape == (1, 49, 128)  # 7x7 tokens at 112 px
    spatial = model.frame_encoder.spatial_transformer.layers[0].self_attn
    assert spatial.num_heads == AC4AU_PAPER_CONFIG["spatial_heads"] == 4
    with torch.no_grad():
        out = model(batch(2, 8, 112))
    assert out.logits.shape == (2, 12)
    assert out.dc.shape == (2, 128)
    assert out.gates.shape == (2, 12, 12)
    assert out.pooled.shape == (2, 128)
    assert torch.isfinite(out.logits).all()


def test_wrong_input_shape_is_a_clear_error():
    model = tiny()
    with pytest.raises(ValueError, match=r"\(B, l, 3, 32, 32\)"):
        model(torch.zeros(2, 4, 3, 28, 28))


@pytest.mark.parametrize("mixing", ["probability", "logit"])
def test_auser_gates_sum_to_one_and_mix_experts_as_eq5(mixing):
    torch.manual_seed(3)
    router = AUSpecificExpertRouter(dim=10, n_aus=12, n_experts=5, expert_hidden=4, mixing=mixing)
    f = torch.randn(6, 10)
    logits, gates = router(f)
    assert gates.shape == (6, 12, 5)
    torch.testing.assert_close(gates.sum(dim=-1), torch.ones(6, 12))
    assert (gates > 0).all()
    # Eq. 6: gate k is its own affine map W_k f + b_k followed by a softmax over the experts.
    w = router.gates.weight.view(12, 5, 10)
    b = router.gates.bias.view(12, 5)
    k = 7
    torch.testing.assert_close(gates[:, k], torch.softmax(f @ w[k].T + b[k], dim=-1))
    experts = torch.cat([e(f) for e in router.experts], dim=1)  # (6, 5)
    if mixing == "probability":  # ŷ_k = Σ_m α_km σ(E_m(f))
        expected = (gates * torch.sigmoid(experts)[:, None, :]).sum(-1)
        torch.testing.assert_close(torch.sigmoid(logits), expected, atol=1e-6, rtol=1e-5)
    else:
        torch.testing.assert_close(logits, (gates * experts[:, None, :]).sum(-1))


def test_model_gates_sum_to_one():
    with torch.no_grad():
        out = tiny().eval()(batch())
    torch.testing.assert_close(out.gates.sum(-1), torch.ones(2, 12))


def test_ablation_switches_change_the_graph():
    full = tiny()
    assert full.frd is not None and isinstance(full.head, AUSpecificExpertRouter)
    no_frd = tiny(use_frd=False)
    assert no_frd.frd is None
    no_auser = tiny(use_auser=False)
    assert isinstance(no_auser.head, nn.Linear) and no_auser.head.out_features == 12
    with torch.no_grad():
        out_no_frd = no_frd.eval()(batch())
        out_no_auser = no_auser.eval()(batch())
    assert out_no_frd.dc is None and out_no_frd.gates is not None
    assert out_no_auser.gates is None and out_no_auser.dc is not None
    assert out_no_auser.logits.shape == (2, 12)
    # Criteria follow the switches: no subject loss without FRD, BCE on request.
    alpha = np.full(12, 0.3)
    crit = build_ac4au_criterion({**TINY, "use_frd": False}, alpha, None)
    assert crit.subject_loss is None
    targets = torch.randint(0, 2, (2, 12)).float()
    terms = crit(out_no_frd, targets)
    assert terms.dc == 0 and terms.total == terms.au
    crit_bce = build_ac4au_criterion({**TINY, "loss": "bce"}, alpha, 3)
    terms = crit_bce(out_no_auser, targets, torch.tensor([0, 2]))
    expected_bce = nn.functional.binary_cross_entropy_with_logits(
        out_no_auser.logits, targets, reduction="sum"
    ) / 2
    torch.testing.assert_close(terms.au, expected_bce)
    torch.testing.assert_close(terms.total, 0.1 * terms.dc + terms.au)
    with pytest.raises(ValueError, match="without FRD"):
        build_ac4au_criterion(TINY, alpha, 3)(out_no_frd, targets, torch.tensor([0, 1]))


def test_frd_removes_static_content_and_its_ablation_does_not():
    # Two static sequences (every frame the same image) differ only in their DC component: with
    # FRD the AU head sees F^AC = 0 for both and cannot tell them apart; without FRD it can.
    g = torch.Generator().manual_seed(5)
    a = torch.randn(1, 1, 3, 32, 32, generator=g).expand(1, 4, 3, 32, 32)
    b = torch.randn(1, 1, 3, 32, 32, generator=g).expand(1, 4, 3, 32, 32)
    x = torch.cat([a, b])
    with torch.no_grad():
        with_frd = tiny().eval()(x)
        without = tiny(use_frd=False).eval()(x)
    torch.testing.assert_close(with_frd.logits[0], with_frd.logits[1], atol=1e-4, rtol=0)
    assert not torch.allclose(with_frd.dc[0], with_frd.dc[1])
    assert (without.logits[0] - without.logits[1]).abs().max() > 1e-3


def test_config_rejects_unknown_keys_and_fills_defaults():
    with pytest.raises(ValueError, match="use_fdr"):
        build_ac4au({"use_fdr": False})
    with pytest.raises(ValueError, match="flip"):
        ac4au_config({"augment": {"flip": 0.5}})
    with pytest.raises(ValueError, match="loss"):
        ac4au_config({"loss": "hinge"})
    quick = ac4au_config(profile="quick")
    assert quick["width_mult"] < 1 and quick["use_frd"] and quick["n_experts"] == 12
    assert ac4au_config()["gamma"] == 0.1 and ac4au_config()["arcface_margin"] == 0.5
    merged = ac4au_config({"augment": {"hue": 0.0}})
    assert merged["augment"]["hue"] == 0.0 and merged["augment"]["flip_p"] == 0.5


# ------------------------------------------------------------------------------------- losses


def test_focal_loss_equals_hand_computed_eq8():
    # One AU, logit 0 (ŷ = 0.5), positive, α = 0.25:
    # L = −(1 − 0.25)(1 − 0.5)² · log 0.5 = 0.1875 · ln 2 = 0.12996…
    value = class_aware_focal_loss(torch.zeros(1, 1), torch.ones(1, 1), np.array([0.25]))
    assert value.item() == pytest.approx(0.1875 * math.log(2), rel=1e-6)

    logits = [[2.0, -1.0, 0.5], [-3.0, 0.0, 1.5]]
    targets = [[1, 0, 0], [0, 1, 1]]
    alpha = [0.1, 0.4, 0.7]
    per_sample = []
    for z_row, y_row in zip(logits, targets, strict=True):
        total = 0.0
        for z, y, a in zip(z_row, y_row, alpha, strict=True):
            p = 1.0 / (1.0 + math.exp(-z))
            total -= (1 - a) * (1 - p) ** 2 * y * math.log(p) + a * p**2 * (1 - y) * math.log(1 - p)
        per_sample.append(total)
    got = class_aware_focal_loss(torch.tensor(logits), torch.tensor(targets), np.array(alpha))
    assert got.item() == pytest.approx(sum(per_sample) / 2, rel=1e-6)
    got_none = class_aware_focal_loss(
        torch.tensor(logits), torch.tensor(targets), np.array(alpha), reduction="none"
    )
    np.testing.assert_allclose(got_none.numpy(), per_sample, rtol=1e-6)


def test_focal_loss_rejects_bad_inputs():
    with pytest.raises(ValueError, match="alpha must have shape"):
        class_aware_focal_loss(torch.zeros(2, 3), torch.zeros(2, 3), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        class_aware_focal_loss(torch.zeros(2, 3), torch.full((2, 3), 2.0), np.zeros(3))


def test_positive_priors_are_the_positive_fraction_per_au():
    labels = np.zeros((5, 12), dtype=np.int64)
    labels[:, 0] = 1  # AU1 in every sample
    labels[[0, 3], 2] = 1  # AU4 in 2 of 5
    labels[4, 11] = 1  # AU17 in 1 of 5
    expected = np.zeros(12)
    expected[0], expected[2], expected[11] = 1.0, 0.4, 0.2
    priors = positive_priors(labels)
    assert priors.shape == (12,) and priors.dtype == np.float64
    np.testing.assert_allclose(priors, expected)
    bad = labels.astype(float)
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match="row 1, column 3"):
        positive_priors(bad)
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        positive_priors(np.zeros((0, 12)))


def test_arcface_subject_loss_value_and_test_fold_labels_raise():
    loss = AdditiveAngularMarginLoss(n_subjects=2, in_features=2, scale=32.0, margin=0.5)
    with torch.no_grad():
        loss.prototypes.copy_(torch.tensor([[1.0, 0.0], [0.0, 3.0]]))  # unit after normalisation
    theta = 1.0
    feature = torch.tensor([[2 * math.cos(theta), 2 * math.sin(theta)]])
    target = 32 * math.cos(theta + 0.5)
    other = 32 * math.cos(math.pi / 2 - theta)
    expected = -math.log(math.exp(target) / (math.exp(target) + math.exp(other)))
    assert loss(feature, torch.tensor([0])).item() == pytest.approx(expected, rel=1e-5)
    for bad in ([2], [-1]):
        with pytest.raises(ValueError, match="training subject"):
            loss(feature, torch.tensor(bad))
    with pytest.raises(ValueError, match="integer"):
        loss(feature, torch.tensor([0.0]))
    index = subject_index(["casme2/sub02", "samm/006", "casme2/sub02"])
    assert index == {"casme2/sub02": 0, "samm/006": 1}
    np.testing.assert_array_equal(encode_subjects(["samm/006", "casme2/sub02"], index), [1, 0])
    with pytest.raises(ValueError, match="casme/sub01"):
        encode_subjects(["casme/sub01"], index)


def test_arcface_margin_fallback_keeps_target_logit_decreasing():
    loss = AdditiveAngularMarginLoss(n_subjects=1, in_features=2, scale=1.0, margin=0.5)
    with torch.no_grad():
        loss.prototypes.copy_(torch.tensor([[1.0, 0.0]]))
    angles = torch.linspace(0.1, math.pi - 0.01, 50)
    feats = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    target = loss.logits(feats, torch.zeros(50, dtype=torch.long))[:, 0]
    assert (target[1:] < target[:-1]).all()


# --------------------------------------------------------------------------------- training


def test_a_few_optimisation_steps_reduce_the_loss():
    model = tiny()
    labels = torch.tensor(
        [[1, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0], [0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 0, 1],
         [1, 1, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0], [0, 0, 1, 1, 0, 1, 0, 0, 0, 0, 1, 0]]
    ).float()
    subjects = torch.tensor([0, 1, 2, 1])
    criterion = build_ac4au_criterion(TINY, positive_priors(labels.numpy()), n_subjects=3)
    params = list(model.parameters()) + list(criterion.parameters())
    optimiser = torch.optim.Adam(params, lr=3e-3)
    x = batch(4, seed=7)
    losses = []
    for _ in range(25):
        optimiser.zero_grad()
        terms = criterion(model(x), labels, subjects)
        terms.total.backward()
        optimiser.step()
        losses.append((terms.total.item(), terms.au.item(), terms.dc.item()))
    assert all(math.isfinite(v) for row in losses for v in row)
    for term in range(3):  # total, L_AU and L_DC each fall
        assert losses[-1][term] < 0.5 * losses[0][term], (term, losses[0], losses[-1])


# ----------------------------------------------------------------------------- augmentation


def test_augmentation_same_transform_for_every_frame_and_deterministic():
    aug = SequenceAugment(flip_p=0.5, max_rotation_deg=10, brightness=0.3, contrast=0.3,
                          saturation=0.3, hue=0.05)
    g = torch.Generator().manual_seed(0)
    frame = torch.randint(0, 256, (1, 3, 40, 40), dtype=torch.uint8, generator=g)
    seq = frame.expand(6, 3, 40, 40).clone()
    out = aug(seq, torch.Generator().manual_seed(11))
    assert out.dtype == torch.uint8 and out.shape == seq.shape
    assert (out == out[0]).all()  # identical frames stay identical: one parameter set
    assert not torch.equal(out, seq)
    again = aug(seq, torch.Generator().manual_seed(11))
    assert torch.equal(out, again)
    others = [aug(seq, torch.Generator().manual_seed(s)) for s in range(12, 16)]
    assert any(not torch.equal(out, o) for o in others)
    floats = seq.float() / 255
    out_f = aug(floats, torch.Generator().manual_seed(11))
    assert out_f.dtype == torch.float32 and 0 <= out_f.min() and out_f.max() <= 1


def test_augmentation_flip_only_and_identity():
    seq = torch.rand(3, 3, 16, 16)
    flip = SequenceAugment(flip_p=1.0, max_rotation_deg=0, brightness=0, contrast=0,
                           saturation=0, hue=0)
    torch.testing.assert_close(flip(seq, torch.Generator().manual_seed(0)), seq.flip(-1))
    none = SequenceAugment(flip_p=0.0, max_rotation_deg=0, brightness=0, contrast=0,
                           saturation=0, hue=0)
    torch.testing.assert_close(none(seq, torch.Generator().manual_seed(0)), seq)
    with pytest.raises(ValueError, match=r"\(l, 3, H, W\)"):
        none(torch.rand(3, 16, 16), torch.Generator())
    assert build_sequence_augment({"augment": {"hue": 0.0}}).hue == 0.0


def test_sequence_conversion_and_normalisation():
    frames = np.zeros((8, 4, 4, 3), dtype=np.uint8)
    frames[..., 0] = 255
    t = sequence_to_tensor(frames)
    assert t.shape == (8, 3, 4, 4) and t.dtype == torch.uint8
    norm = normalise_frames(t)
    assert norm[:, 0].max().item() == pytest.approx(127.5 / 128)
    assert norm[:, 1].min().item() == pytest.approx(-127.5 / 128)
    torch.testing.assert_close(normalise_frames(t.float() / 255), norm)
    with pytest.raises(ValueError, match=r"\(l, H, W, 3\)"):
        sequence_to_tensor(frames.astype(np.float32))


# ------------------------------------------------------------------------- backbone weights


def test_backbone_weight_round_trip_and_prefix_strip(tmp_path):
    torch.manual_seed(1)
    source = MobileFaceNet(embedding_dim=32, width_mult=0.25, input_size=32)
    for m in source.modules():  # non-default running statistics must travel too
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
    path = tmp_path / "mobilefacenet.pth"
    torch.save({f"module.backbone.{k}": v for k, v in source.state_dict().items()}, path)

    torch.manual_seed(2)
    target = tiny()
    report = load_backbone_weights(target, path)
    assert not report["missing"] and not report["unexpected"]
    loaded = target.frame_encoder.backbone.state_dict()
    for key, value in source.state_dict().items():
        assert torch.equal(loaded[key], value), key
    # the same file through the factory
    model = build_ac4au({**TINY, "pretrained": str(path)})
    assert torch.equal(model.frame_encoder.backbone.conv1.conv.weight, source.conv1.conv.weight)


def test_backbone_weight_mismatch_is_a_clear_error(tmp_path):
    source = MobileFaceNet(embedding_dim=32, width_mult=0.25, input_size=32)
    state = source.state_dict()
    renamed = tmp_path / "renamed.pt"
    torch.save({k.replace("blocks.", "features."): v for k, v in state.items()}, renamed)
    with pytest.raises(WeightLoadError, match=r"renamed\.pt.*missing \d+ \[blocks\..*unexpected"):
        load_backbone_weights(tiny(), renamed)
    # non-strict: loads what matches, reports the rest
    target = tiny()
    report = load_backbone_weights(target, renamed, strict=False)
    assert report["missing"] and all(k.startswith("blocks.") for k in report["missing"])
    assert torch.equal(target.frame_encoder.backbone.conv1.conv.weight, source.conv1.conv.weight)
    # another width: shapes differ, an error in either mode
    wide = tmp_path / "wide.pt"
    torch.save(MobileFaceNet(embedding_dim=32, width_mult=0.5, input_size=32).state_dict(), wide)
    with pytest.raises(WeightLoadError, match="wrong shape"):
        load_backbone_weights(tiny(), wide, strict=False)
    unrelated = tmp_path / "unrelated.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, unrelated)
    with pytest.raises(WeightLoadError, match="no key matches"):
        load_backbone_weights(tiny(), unrelated, strict=False)
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_backbone_weights(tiny(), tmp_path / "absent.pt")


# ------------------------------------------------------------------ dropout mask, γ warm-up


@pytest.mark.parametrize(("mask", "static_ac"), [("sequence", False), ("frame", True)])
def test_training_dropout_gives_a_static_sequence_no_fake_motion(mask, static_ac):
    # a static sequence (the same frame l times) in training mode: with one mask per sequence
    # its frames stay equal, F^AC = 0; per-frame masks create an AC part out of noise
    model = tiny(dropout=0.3, dropout_mask=mask).train()
    frame = batch(b=2, length=1)
    static = frame.expand(2, 4, 3, 32, 32).contiguous()
    torch.manual_seed(3)
    features = model.frame_features(static)
    _, ac = frd_decompose(features)
    ratio = float(ac.detach().norm() / features.detach().norm())
    assert (ratio > 0.01) == static_ac, ratio
    # the masks do drop: two training passes differ, eval passes do not
    torch.manual_seed(4)
    assert not torch.allclose(model.frame_features(static), features)
    model.eval()
    torch.testing.assert_close(model.frame_features(static), model.frame_features(static))


def test_sequence_dropout_shares_one_mask_per_sequence():
    from pipeline.models.ac4au import SequenceDropout

    drop = SequenceDropout(0.5, 3).train()
    torch.manual_seed(0)
    out = drop(torch.ones(6, 40))  # 2 sequences of 3 frames
    seq = out.view(2, 3, 40)
    assert torch.equal(seq[:, 0], seq[:, 1]) and torch.equal(seq[:, 0], seq[:, 2])
    assert set(out.unique().tolist()) == {0.0, 2.0}  # inverted dropout: kept x / (1 - p)
    assert not torch.equal(seq[0, 0], seq[1, 0])
    with pytest.raises(ValueError, match="whole sequences"):
        drop(torch.ones(5, 4))
    with pytest.raises(ValueError, match="dropout_mask"):
        ac4au_config({"dropout_mask": "token"})


def test_gamma_warmup_ramps_the_subject_loss_weight():
    crit = build_ac4au_criterion({**TINY, "gamma": 0.4, "gamma_warmup_epochs": 4},
                                 np.full(12, 0.2), 3)
    assert crit.gamma_now == 0.0
    assert [crit.set_epoch(e) for e in (1, 2, 3, 5, 9)] == pytest.approx([0, 0.1, 0.2, 0.4, 0.4])
    paper = build_ac4au_criterion(TINY, np.full(12, 0.2), 3)
    assert paper.gamma_now == 0.1 and paper.set_epoch(1) == 0.1  # the paper's constant γ
    # the total is γ_now·L_DC + L_AU
    model = tiny().train()
    out = model(batch())
    crit.set_epoch(3)
    terms = crit(out, torch.zeros(2, 12), torch.tensor([0, 2]))
    torch.testing.assert_close(terms.total, 0.2 * terms.dc + terms.au)
    with pytest.raises(ValueError, match="gamma_warmup_epochs"):
        ac4au_config({"gamma_warmup_epochs": -1})

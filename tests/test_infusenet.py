"""InfuseNet (Khor et al., SCIA 2025) and its table variants: infusion, inputs, pseudo-apex,
factory, ImageNet-weight loading and Grad-CAM.  CPU, small S."""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest
import torch
from shared_data import require_module
from torch import nn

from pipeline.models.backbones import (
    PretrainedWeightsError,
    adapt_first_conv_weight,
    build_backbone,
    feature_dim,
)
from pipeline.models.infusenet import (
    CD6ME_AUS,
    PAPER_F1,
    VARIANTS,
    InfuseNet,
    InfuseNetConfig,
    build_infusenet_variant,
    draw_pseudo_apex_offsets,
    minmax_normalise,
    scale_latent,
)

S = 64  # flow / image side (px) in these tests; the latent is S/2
B = 3

#: grad-cam is installed by ./mer without its dependencies (they would bring a second OpenCV)
GRADCAM_HINT = "./mer installs grad-cam==1.5.7 and ttach==0.0.3 with --no-deps"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _inputs(model: nn.Module, batch: int = B) -> list[torch.Tensor]:
    return [torch.randn(batch, *model.input_shapes[name]) for name in model.input_names]


# ------------------------------------------------------------------------------------------
# Min-max normalisation scopes (Eq. 6)
# ------------------------------------------------------------------------------------------


def _handmade() -> torch.Tensor:
    x = torch.zeros(2, 2, 2, 2)
    x[0, 0] = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    x[0, 1] = torch.tensor([[10.0, 10.0], [10.0, 20.0]])
    x[1, 0] = -4.0  # constant channel
    x[1, 1] = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
    return x


def test_tensor_scope_uses_one_min_and_max_for_the_batch() -> None:
    x = _handmade()
    a = minmax_normalise(x, "tensor")
    torch.testing.assert_close(a, (x + 4.0) / 24.0)
    assert a.min() == 0 and a.max() == 1
    assert a[0].min() > 0  # sample 0 alone is not stretched to [0, 1]


def test_sample_scope_stretches_each_sample() -> None:
    x = _handmade()
    a = minmax_normalise(x, "sample")
    torch.testing.assert_close(a[0], x[0] / 20.0)
    torch.testing.assert_close(a[1], (x[1] + 4.0) / 9.0)
    for b in range(2):
        assert a[b].min() == 0 and a[b].max() == 1
    assert a[0, 0].max() < 1  # channels are not stretched separately


def test_channel_scope_stretches_each_sample_channel_and_zeroes_constant_ones() -> None:
    x = _handmade()
    a = minmax_normalise(x, "channel")
    torch.testing.assert_close(a[0, 0], x[0, 0] / 3.0)
    torch.testing.assert_close(a[0, 1], (x[0, 1] - 10.0) / 10.0)
    torch.testing.assert_close(a[1, 0], torch.zeros(2, 2))  # constant: guarded, not NaN
    torch.testing.assert_close(a[1, 1], (x[1, 1] - 1.0) / 4.0)


def test_channel_scope_on_tokens_and_pooled_vectors() -> None:
    tokens = torch.randn(2, 5, 4)  # (B, N, D), channel = D
    a = minmax_normalise(tokens, "channel", channel_dim=-1)
    torch.testing.assert_close(a.amin(dim=1), torch.zeros(2, 4))
    torch.testing.assert_close(a.amax(dim=1), torch.ones(2, 4))
    pooled = torch.randn(3, 7)  # no spatial axis: channel scope falls back to sample scope
    torch.testing.assert_close(
        minmax_normalise(pooled, "channel"), minmax_normalise(pooled, "sample")
    )
    torch.testing.assert_close(minmax_normalise(pooled, "sample").amax(dim=1), torch.ones(3))


def test_constant_features_give_zero_mask_and_finite_gradients() -> None:
    x = torch.full((2, 3, 4, 4), 2.5, requires_grad=True)
    for scope in ("tensor", "sample", "channel"):
        a = minmax_normalise(x, scope)
        assert torch.equal(a, torch.zeros_like(a))
        (grad,) = torch.autograd.grad(a.sum(), x)
        assert torch.isfinite(grad).all()
    with pytest.raises(ValueError, match="scope"):
        minmax_normalise(x, "pixel")


# ------------------------------------------------------------------------------------------
# Infusion happens at every stage (Eq. 7-8), checked from outside with hooks
# ------------------------------------------------------------------------------------------


def _reference_mask(f: torch.Tensor, scope: str) -> torch.Tensor:
    """Eq. 6 written out with loops, independently of the library code."""
    f = f.detach()
    out = torch.empty_like(f)
    if scope == "tensor":
        return (f - f.min()) / (f.max() - f.min())
    for b in range(f.shape[0]):
        if scope == "sample" or f.ndim == 2:
            out[b] = (f[b] - f[b].min()) / (f[b].max() - f[b].min())
        else:
            for c in range(f.shape[1]):
                fc = f[b, c]
                span = fc.max() - fc.min()
                out[b, c] = (fc - fc.min()) / span if span > 1e-6 else torch.zeros_like(fc)
    return out


@pytest.mark.parametrize("scope", ["tensor", "sample", "channel"])
def test_infusion_after_layer1_to_layer4_and_pooling(scope: str) -> None:
    # eval mode with the same scope at test time (tensor: the ref. code's transductive test)
    model = build_infusenet_variant("infusenet", {"image_size": S, "norm_scope": scope,
                                                  "eval_norm_scope": scope})
    model.eval()
    seen: dict[str, torch.Tensor] = {}

    def keep_out(key):
        return lambda _m, _i, out: seen.__setitem__(key, out.detach().clone())

    def keep_in(key):
        return lambda _m, inp: seen.__setitem__(key, inp[0].detach().clone())

    handles = []
    for k in range(1, 5):
        handles.append(
            model.frame_flow.get_submodule(f"layer{k}").register_forward_hook(keep_out(f"flow{k}"))
        )
        handles.append(
            model.frame_mag.get_submodule(f"layer{k}").register_forward_hook(keep_out(f"mag{k}"))
        )
    for k in range(2, 5):  # what FrameMag's next block receives (Eq. 8)
        handles.append(
            model.frame_mag.get_submodule(f"layer{k}").register_forward_pre_hook(
                keep_in(f"into{k}")
            )
        )
    handles.append(model.frame_mag.avgpool.register_forward_pre_hook(keep_in("into_pool")))
    handles.append(model.frame_flow.avgpool.register_forward_hook(keep_out("flow_pool")))
    handles.append(model.frame_mag.avgpool.register_forward_hook(keep_out("mag_pool")))
    handles.append(model.head.register_forward_pre_hook(keep_in("into_head")))

    flow, latent = _inputs(model)
    with torch.no_grad():
        logits = model(flow, latent)
    for h in handles:
        h.remove()

    received = {1: seen["into2"], 2: seen["into3"], 3: seen["into4"], 4: seen["into_pool"]}
    for k in range(1, 5):
        expected = seen[f"mag{k}"] * _reference_mask(seen[f"flow{k}"], scope)
        torch.testing.assert_close(received[k], expected, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(received[k], seen[f"mag{k}"])  # the mask really acts
    flow_pool = seen["flow_pool"].flatten(1)
    mag_pool = seen["mag_pool"].flatten(1)
    expected_pool = mag_pool * _reference_mask(flow_pool, scope)
    torch.testing.assert_close(seen["into_head"], expected_pool, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits, model.head(expected_pool), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("scope", ["tensor", "sample", "channel"])
def test_eval_prediction_does_not_change_with_its_batch(scope) -> None:
    # whatever the training scope, a test prediction is the same in a batch of 4 and alone
    flow = torch.randn(4, 3, S, S)
    latent = torch.randn(4, 64, S // 2, S // 2)
    torch.manual_seed(1)
    model = build_infusenet_variant("infusenet", {"image_size": S, "norm_scope": scope}).eval()
    assert {m.eval_scope for m in model.infusion} == {"sample" if scope == "tensor" else scope}
    with torch.no_grad():
        full = model(flow, latent)
        alone = torch.cat([model(flow[i : i + 1], latent[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(full, alone, rtol=1e-4, atol=1e-5)


def test_tensor_scope_couples_the_batch_in_training_and_when_asked_at_eval() -> None:
    flow = torch.randn(4, 3, S, S)
    latent = torch.randn(4, 64, S // 2, S // 2)
    torch.manual_seed(1)
    model = build_infusenet_variant("infusenet", {"image_size": S, "norm_scope": "tensor",
                                                  "eval_norm_scope": "tensor"}).eval()
    with torch.no_grad():
        assert not torch.allclose(model(flow, latent)[:2], model(flow[:2], latent[:2]), atol=1e-5)
    torch.manual_seed(1)
    model = build_infusenet_variant("infusenet", {"image_size": S, "norm_scope": "tensor"})
    for m in model.modules():  # training-mode infusion, without BatchNorm's batch statistics
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    with torch.no_grad():
        assert not torch.allclose(model(flow, latent)[:2], model(flow[:2], latent[:2]), atol=1e-5)
    with pytest.raises(ValueError, match="norm scope"):
        build_infusenet_variant("infusenet", {"image_size": S, "eval_norm_scope": "batch"})


def test_flow_stream_is_trained_through_the_infusion() -> None:
    model = build_infusenet_variant("infusenet", {"image_size": S})
    model(*_inputs(model)).sum().backward()
    grad = model.frame_flow.layer1[0].conv1.weight.grad
    assert grad is not None and grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------
# The latent enters in place of conv1's output (64 x S/2 x S/2)
# ------------------------------------------------------------------------------------------


def test_latent_replaces_conv1_output() -> None:
    model = build_infusenet_variant("infusenet", {"image_size": S}).eval()
    seen: dict[str, torch.Tensor] = {}
    model.frame_mag.maxpool.register_forward_pre_hook(lambda _m, i: seen.__setitem__("mag", i[0]))
    model.frame_flow.maxpool.register_forward_pre_hook(lambda _m, i: seen.__setitem__("flow", i[0]))
    flow, latent = _inputs(model)
    assert latent.shape == (B, 64, S // 2, S // 2)
    with torch.no_grad():
        model(flow, latent)
    assert seen["flow"].shape == latent.shape  # = conv1's output in FrameFlow
    torch.testing.assert_close(seen["mag"], torch.relu(latent))  # ref. code: relu, no bn1
    assert isinstance(model.frame_mag.conv1, nn.Identity)
    assert isinstance(model.frame_flow.conv1, nn.Conv2d)


def test_latent_bn_option_applies_bn1() -> None:
    model = build_infusenet_variant("resnet18_mag", {"image_size": S, "latent_bn": True}).eval()
    seen = {}
    model.backbone.maxpool.register_forward_pre_hook(lambda _m, i: seen.__setitem__("x", i[0]))
    (latent,) = _inputs(model)
    with torch.no_grad():
        model.backbone.bn1.running_mean.fill_(0.5)
        model(latent)
        expected = torch.relu(model.backbone.bn1(latent))
    torch.testing.assert_close(seen["x"], expected)


def test_scale_latent_divides_each_sample_and_group_by_its_quantile() -> None:
    x = torch.zeros(2, 4, 1, 10)
    x[0, :2, 0] = torch.arange(1.0, 11.0)  # sample 0, group 0: |x| 1..10 (twice)
    x[0, 2:, 0] = -torch.arange(1.0, 11.0) * 3.0  # group 1: 3..30, negative
    x[1] = 0.0  # an all-zero latent stays zero
    y = scale_latent(x, groups=2, quantile=0.9)  # 20 values per group: the 18th smallest
    torch.testing.assert_close(y[0, :2], x[0, :2] / (9.0 + 1e-6))
    torch.testing.assert_close(y[0, 2:], x[0, 2:] / (27.0 + 1e-6))
    assert torch.equal(y[1], torch.zeros_like(y[1]))
    with pytest.raises(ValueError, match="groups"):
        scale_latent(x, groups=3)
    with pytest.raises(ValueError, match="quantile"):
        scale_latent(x, quantile=0.0)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        scale_latent(x[0])


@pytest.mark.parametrize("variant", ["resnet18_mag", "infusenet", "vit_tiny_mag"])
def test_latent_norm_sample_makes_predictions_independent_of_latent_scale(variant: str) -> None:
    model = build_infusenet_variant(variant, {"image_size": 32, "latent_norm": "sample"}).eval()
    args = _inputs(model, batch=2)
    i = model.input_names.index("latent")
    scaled = list(args)
    # per sample and per Mag() half: Mag(onset, apex) x 7 and Mag(onset, pseudo) x 0.1 in sample 0
    factors = torch.tensor([[7.0] * 32 + [0.1] * 32, [0.5] * 64]).view(2, 64, 1, 1)
    scaled[i] = args[i] * factors
    with torch.no_grad():
        torch.testing.assert_close(model(*scaled), model(*args), rtol=1e-4, atol=1e-4)
    plain = build_infusenet_variant(variant, {"image_size": 32}).eval()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert not torch.allclose(plain(*scaled), plain(*args), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="latent_norm"):
        build_infusenet_variant(variant, {"image_size": 32, "latent_norm": "batch"})


def test_latent_norm_lets_gradients_reach_the_latent() -> None:
    model = build_infusenet_variant("resnet18_mag", {"image_size": 32, "latent_norm": "sample"})
    (latent,) = _inputs(model, batch=2)
    latent.requires_grad_(True)
    model(latent).sum().backward()
    assert latent.grad is not None and latent.grad.abs().sum() > 0


@pytest.mark.parametrize("variant", ["infusenet", "resnet18_mag", "infusenet_vit"])
def test_wrong_latent_shape_raises_a_clear_error(variant: str) -> None:
    model = build_infusenet_variant(variant, {"image_size": S})
    good = _inputs(model, batch=2)
    i = model.input_names.index("latent")
    for bad in (
        torch.randn(2, 32, S // 2, S // 2),
        torch.randn(2, 64, S, S),
        torch.randn(64, S // 2, S // 2),
    ):
        args = list(good)
        args[i] = bad
        with pytest.raises(ValueError, match=rf"latent.*\(B, 64, {S // 2}, {S // 2}\)"):
            model(*args)


def test_wrong_flow_and_dtype_errors_and_half_latent_accepted() -> None:
    model = build_infusenet_variant("infusenet", {"image_size": S}).eval()
    flow, latent = _inputs(model, batch=2)
    with pytest.raises(ValueError, match=r"flow.*\(B, 3, 64, 64\)"):
        model(torch.randn(2, 2, S, S), latent)
    with pytest.raises(ValueError, match="floating point"):
        model(flow, latent.to(torch.int32))
    with torch.no_grad():
        out16 = model(flow, latent.half())
        out32 = model(flow, latent.half().float())
    torch.testing.assert_close(out16, out32)


def test_bad_sizes_and_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="even"):
        build_infusenet_variant("infusenet", {"image_size": 63})
    with pytest.raises(ValueError, match="divisible by 16"):
        build_infusenet_variant("infusenet_vit", {"image_size": 72})
    with pytest.raises(ValueError, match="unknown InfuseNet model settings"):
        build_infusenet_variant("infusenet", {"norm_scop": "sample"})
    with pytest.raises(ValueError, match="unknown InfuseNet variant"):
        build_infusenet_variant("infusenet_resnet99", {})
    with pytest.raises(ValueError, match="scope"):
        build_infusenet_variant("infusenet", {"image_size": S, "norm_scope": "pixel"})
    with pytest.raises(ValueError, match="conv1"):
        build_infusenet_variant("resnet18_mag", {"image_size": S, "latent_channels": 32})


# ------------------------------------------------------------------------------------------
# Pseudo-apex draw (Sec. 3.1)
# ------------------------------------------------------------------------------------------


def test_pseudo_apex_draw_reproducible_order_independent_in_range() -> None:
    ids = [f"casme2/sub{s:02d}/EP{m:02d}_01" for s in range(1, 31) for m in range(20)]
    first = draw_pseudo_apex_offsets(ids, seed=7)
    assert first == draw_pseudo_apex_offsets(ids, seed=7)
    shuffled = ids[:]
    random.Random(3).shuffle(shuffled)
    assert draw_pseudo_apex_offsets(shuffled, seed=7) == first
    assert draw_pseudo_apex_offsets(ids[:10], seed=7) == {k: first[k] for k in ids[:10]}
    values = np.array(list(first.values()))
    assert values.min() >= 0 and values.max() <= 5
    counts = np.bincount(values, minlength=6)
    assert counts.min() > 60 and counts.max() < 140  # 600 draws, 100 expected per value
    other = draw_pseudo_apex_offsets(ids, seed=8)
    assert sum(first[k] != other[k] for k in ids) > 300
    small = draw_pseudo_apex_offsets(ids, seed=7, max_offset=2)
    assert set(small.values()) == {0, 1, 2}


def test_pseudo_apex_fixed_mode() -> None:
    ids = ["samm/006/006_1_2", "casme/sub01/EP01_1", "mmew/S01/Happiness_01"]
    fixed = draw_pseudo_apex_offsets(ids, seed=3, mode="fixed")
    assert len(set(fixed.values())) == 1 and 0 <= fixed[ids[0]] <= 5
    assert fixed == draw_pseudo_apex_offsets(ids[::-1], seed=3, mode="fixed")
    assert set(draw_pseudo_apex_offsets(ids, seed=3, mode="fixed", fixed_offset=4).values()) == {4}
    with pytest.raises(ValueError, match="fixed_offset"):
        draw_pseudo_apex_offsets(ids, seed=3, mode="fixed", fixed_offset=6)
    with pytest.raises(ValueError, match="mode"):
        draw_pseudo_apex_offsets(ids, seed=3, mode="random")
    with pytest.raises(ValueError, match="max_offset"):
        draw_pseudo_apex_offsets(ids, seed=3, max_offset=-1)


# ------------------------------------------------------------------------------------------
# Variants (Tables 1-3)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_forward_gives_12_au_logits(variant: str) -> None:
    model = build_infusenet_variant(variant, {"image_size": S})
    expected_inputs = {"single": 1, "late": 2, "infuse": 2}[VARIANTS[variant][1]]
    assert len(model.input_names) == expected_inputs
    out = model(*_inputs(model, batch=2))
    assert out.shape == (2, len(CD6ME_AUS)) and torch.isfinite(out).all()
    out.sum().backward()  # every stream receives gradient
    for name in ("backbone", "frame_flow", "frame_mag"):
        if hasattr(model, name):
            grads = [p.grad for p in getattr(model, name).parameters() if p.requires_grad]
            assert any(g is not None and g.abs().sum() > 0 for g in grads), name


def test_variant_inputs_match_tables() -> None:
    cfg = {"image_size": S}
    assert build_infusenet_variant("infusenet_image", cfg).input_shapes == {
        "flow": (3, S, S), "image": (3, S, S)}  # fmt: skip
    assert build_infusenet_variant("vit_tiny_mag", cfg).input_shapes == {
        "latent": (64, S // 2, S // 2)
    }
    vit = build_infusenet_variant("infusenet_vit", cfg)
    assert vit.infusion_points == ("blocks.2", "blocks.5", "blocks.8", "blocks.11", "pool")
    assert vit.frame_mag.patch_embed.proj.kernel_size == (8, 8)
    assert vit.frame_mag.patch_embed.grid_size == vit.frame_flow.patch_embed.grid_size


@pytest.mark.parametrize("size", [96, 112])
def test_infusenet_at_other_crop_sizes(size: int) -> None:
    model = build_infusenet_variant("infusenet", {"image_size": size})
    mag, flow = model.forward_both(*_inputs(model, batch=2))
    assert mag.shape == flow.shape == (2, 12)


def test_paper_numbers_transcribed_consistently() -> None:
    for name, row in PAPER_F1.items():
        assert name in VARIANTS
        if "per_au" in row:
            assert list(row["per_au"]) == list(CD6ME_AUS)
            assert np.mean(list(row["per_au"].values())) == pytest.approx(row["average"], abs=2e-4)


# ------------------------------------------------------------------------------------------
# Pretrained weights from a local file
# ------------------------------------------------------------------------------------------


def test_local_resnet_weights_round_trip(tmp_path) -> None:
    source = build_backbone("resnet18", num_classes=1000)
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(source.state_dict(), path)
    ref = source.state_dict()

    same = build_backbone("resnet18", 3, str(path), num_classes=1000)
    for k, v in same.state_dict().items():
        torch.testing.assert_close(v, ref[k])

    trunk = build_backbone("resnet18", 3, path, num_classes=12)  # head re-initialised
    assert trunk.fc.out_features == 12
    torch.testing.assert_close(trunk.layer3[1].conv2.weight, ref["layer3.1.conv2.weight"])

    wide = build_backbone("resnet18", 64, path)
    expected = ref["conv1.weight"].mean(dim=1, keepdim=True).repeat(1, 64, 1, 1) * 3 / 64
    torch.testing.assert_close(wide.conv1.weight, expected)
    torch.testing.assert_close(wide.layer1[0].bn1.running_var, ref["layer1.0.bn1.running_var"])

    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.items()}}, wrapped)
    torch.testing.assert_close(build_backbone("resnet18", 3, wrapped).bn1.weight, ref["bn1.weight"])


def test_resnet_widths_change_layers_not_stem_or_depth() -> None:
    narrow = build_backbone("resnet18", num_classes=12, widths=(64, 96, 128, 192))
    assert narrow.conv1.out_channels == 64
    assert [getattr(narrow, f"layer{i}")[-1].conv2.out_channels for i in (1, 2, 3, 4)] == [
        64, 96, 128, 192]
    assert [len(getattr(narrow, f"layer{i}")) for i in (1, 2, 3, 4)] == [2, 2, 2, 2]
    assert narrow.layer2[0].conv1.stride == (2, 2) and narrow.fc.in_features == 192
    assert narrow(torch.randn(2, 3, 32, 32)).shape == (2, 12)
    n_params = sum(p.numel() for p in narrow.parameters())
    assert n_params < sum(p.numel() for p in build_backbone("resnet18").parameters()) / 4
    # He-normal convolutions and unit BatchNorm, as torchvision initialises its own
    assert torch.equal(narrow.layer3[0].bn1.weight.detach(), torch.ones(128))
    w = narrow.layer4[1].conv2.weight
    assert float(w.detach().std()) == pytest.approx((2 / (192 * 9)) ** 0.5, rel=0.1)

    r50 = build_backbone("resnet50", widths=(16, 32, 64, 128))
    assert feature_dim("resnet50", (16, 32, 64, 128)) == 512
    assert r50(torch.randn(1, 3, 64, 64)).shape == (1, 512)
    assert feature_dim("resnet18", (64, 128, 256, 512)) == 512  # the library's own widths

    with pytest.raises(ValueError, match="ImageNet weights need"):
        build_backbone("resnet18", widths=(64, 96, 128, 192), pretrained=True)
    with pytest.raises(ValueError, match="ResNets only"):
        build_backbone("vit_tiny", widths=(64, 96, 128, 192))
    with pytest.raises(ValueError, match="four positive"):
        build_backbone("resnet18", widths=(64, 96, 128))


def test_infusenet_cnn_widths_reach_both_streams_and_the_head() -> None:
    cfg = InfuseNetConfig.from_mapping({"image_size": S, "cnn_widths": [64, 32, 48, 40]})
    for variant in ("resnet18_mag", "late_fusion", "infusenet"):
        model = build_infusenet_variant(variant, cfg)
        streams = [m for m in (getattr(model, n, None) for n in ("backbone", "frame_flow",
                                                               "frame_mag")) if m is not None]
        assert all(m.layer4[-1].conv2.out_channels == 40 for m in streams)
        assert model.head.in_features == 40 * len(streams if variant == "late_fusion" else [0])
        assert model(*_inputs(model)).shape == (B, len(CD6ME_AUS))


def test_first_conv_adaptation_keeps_grey_response() -> None:
    w = torch.randn(8, 3, 7, 7)
    grey = torch.rand(1, 1, 16, 16)
    rgb_out = nn.functional.conv2d(grey.repeat(1, 3, 1, 1), w)
    for c in (1, 2, 64):
        out = nn.functional.conv2d(grey.repeat(1, c, 1, 1), adapt_first_conv_weight(w, c))
        torch.testing.assert_close(out, rgb_out, rtol=1e-4, atol=1e-4)


def test_local_weights_mismatch_lists_offending_keys(tmp_path) -> None:
    r34 = tmp_path / "resnet34.pth"
    torch.save(build_backbone("resnet34").state_dict(), r34)
    with pytest.raises(
        PretrainedWeightsError, match=r"resnet34\.pth.*unexpected keys.*layer1\.2\.conv1\.weight"
    ):
        build_backbone("resnet18", 3, r34)

    state = build_backbone("resnet18", num_classes=1000).state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(32, 64, 3, 3)
    del state["bn1.weight"]
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(PretrainedWeightsError) as info:
        build_backbone("resnet18", 3, bad)
    msg = str(info.value)
    assert "bad.pth" in msg and "missing keys (1): bn1.weight" in msg
    assert "layer1.0.conv1.weight: file (32, 64, 3, 3) vs model (64, 64, 3, 3)" in msg

    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        build_backbone("resnet18", 3, tmp_path / "nowhere.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedWeightsError, match="junk.pth"):
        build_backbone("resnet18", 3, junk)


def test_local_vit_weights_fit_latent_patch_embedding(tmp_path) -> None:
    from safetensors.torch import save_file

    source = build_backbone("vit_tiny", num_classes=1000)  # 224 px, patch 16, RGB
    path = tmp_path / "vit_tiny.safetensors"
    save_file(source.state_dict(), str(path))
    ref = source.state_dict()
    latent_vit = build_backbone("vit_tiny", 64, path, image_size=S // 2, patch_size=8)
    assert latent_vit.patch_embed.proj.weight.shape == (192, 64, 8, 8)
    assert latent_vit.pos_embed.shape == (1, (S // 16) ** 2 + 1, 192)
    torch.testing.assert_close(latent_vit.pos_embed[:, 0], ref["pos_embed"][:, 0])  # class token
    torch.testing.assert_close(latent_vit.blocks[5].mlp.fc1.weight, ref["blocks.5.mlp.fc1.weight"])
    out = latent_vit(torch.randn(2, 64, S // 2, S // 2))
    assert out.shape == (2, 192)


def test_infusenet_loads_the_file_into_both_streams(tmp_path) -> None:
    path = tmp_path / "r18.pth"
    state = build_backbone("resnet18", num_classes=1000).state_dict()
    torch.save(state, path)
    model = InfuseNet("resnet18", "latent", InfuseNetConfig(image_size=S, pretrained=str(path)))
    for stream in (model.frame_flow, model.frame_mag):
        torch.testing.assert_close(stream.layer2[0].conv1.weight, state["layer2.0.conv1.weight"])
    assert model.frame_flow.layer1[0].conv1.weight is not model.frame_mag.layer1[0].conv1.weight


# ------------------------------------------------------------------------------------------
# Grad-CAM (Sec. 4.5, Fig. 5)
# ------------------------------------------------------------------------------------------


class _TinyAUNet(nn.Module):
    """feature = ReLU(channel 0 of the input); logit k = w_k * mean(feature)."""

    def __init__(self, weights: list[float]) -> None:
        super().__init__()
        self.pick = nn.Conv2d(3, 1, 1, bias=False)
        self.act = nn.ReLU()
        self.fc = nn.Linear(1, len(weights), bias=False)
        with torch.no_grad():
            self.pick.weight.copy_(torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1))
            self.fc.weight.copy_(torch.tensor(weights).view(-1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.pick(x)).mean(dim=(2, 3)))


def test_gradcam_equals_the_activation_on_a_tiny_model(caplog) -> None:
    require_module("pytorch_grad_cam", GRADCAM_HINT)
    from pipeline.models.gradcam import gradcam_maps

    model = _TinyAUNet([0.5, 2.0, -1.0])
    x = torch.randn(2, 3, 16, 16)
    maps = gradcam_maps(model, x, au_index=1, target_layer_name="act")
    act = torch.relu(x[:, 0]).numpy()
    lo = act.min(axis=(1, 2), keepdims=True)
    expected = (act - lo) / (act.max(axis=(1, 2), keepdims=True) - lo)
    assert maps.shape == (2, 16, 16) and maps.dtype == np.float32
    np.testing.assert_allclose(maps, expected, atol=1e-4)
    with caplog.at_level(logging.WARNING):
        negative = gradcam_maps(model, x, au_index=2, target_layer_name="act")
    assert not negative.any() and "zero" in caplog.text  # negative evidence only: empty map
    with pytest.raises(ValueError, match="au_index"):
        gradcam_maps(model, x, au_index=3, target_layer_name="act")
    with pytest.raises(ValueError, match="no layer"):
        gradcam_maps(model, x, au_index=0, target_layer_name="layer9")


@pytest.mark.parametrize(
    ("variant", "layer"),
    [("resnet18_flow", "backbone.layer4"), ("resnet18_mag", "backbone.layer4"),
     ("infusenet", "infusion.3"), ("infusenet", "frame_flow.layer3"),
     ("infusenet_vit", "frame_mag.blocks.11.norm1")],
)  # fmt: skip
def test_gradcam_maps_shape_and_range(variant: str, layer: str) -> None:
    require_module("pytorch_grad_cam", GRADCAM_HINT)
    from pipeline.models.gradcam import gradcam_maps

    model = build_infusenet_variant(variant, {"image_size": S})
    model.train()
    maps = gradcam_maps(model, _inputs(model, batch=2), au_index=3, target_layer_name=layer)
    assert maps.shape == (2, S, S) and maps.dtype == np.float32  # S even for a latent-only input
    assert maps.min() >= 0 and maps.max() <= 1 and maps.max() > 0.99
    assert model.training  # mode restored
    assert all(p.grad is None for p in model.parameters())


def test_save_gradcam_figure_writes_png(tmp_path) -> None:
    from matplotlib.image import imread

    from pipeline.models.gradcam import save_gradcam_figure

    faces = np.random.default_rng(0).integers(0, 255, (2, S, S, 3), dtype=np.uint8)
    maps = {
        name: np.random.default_rng(1).random((2, 8, 8))
        for name in ("FrameFlow", "FrameMag", "InfuseNet")
    }
    out = save_gradcam_figure(
        tmp_path / "fig" / "gradcam.png", faces, maps, row_labels=["AU5", "AU12"]
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(out)
    assert image.ndim == 3 and image.shape[1] > image.shape[0]  # 4 columns, 2 rows
    with pytest.raises(ValueError, match="maps"):
        save_gradcam_figure(tmp_path / "x.png", faces, {"FrameFlow": np.zeros((3, 8, 8))})

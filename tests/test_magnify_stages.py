"""The ``magnifier`` and ``magnify`` stages end to end, on tiny settings (seconds)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
import yaml

from pipeline.features.cache import CacheError, CacheWriter, FeatureCache
from pipeline.magnification.magnify import run_magnify
from pipeline.magnification.oh2018 import OhMagNet, to_model_range
from pipeline.magnification.synthetic import TextureBank, render_translated
from pipeline.magnification.train import load_magnifier, magnifier_headline
from pipeline.models.infusenet import draw_pseudo_apex_offsets
from stages import magnifier as magnifier_stage
from stages import magnify as magnify_stage

S = 32  # crop side of the fake faces.h5 (flow.size)
W = 6   # pseudo-apex window

PARAMS = {
    "config": "quick",
    "seed": 0,
    "flow": {"size": S},
    "magnifier": {
        "device": "cpu",
        "torch_threads": 1,
        "synthetic": {"faces_dir": None, "size": 32, "alpha_max": 30.0,
                      "max_magnified_motion": 6.0, "photo_share": 0.0},
        "oh": {"texture_branch": False, "weights": None, "n_enc_resblk": 1,
               "n_shape_resblk": 1, "n_dec_resblk": 1, "iterations": 3, "batch_size": 2,
               "lr": 1e-3},
        "stmemm": {"dim": 8, "encoder_depths": [1], "decoder_depths": [1], "num_heads": 2,
                   "window_size": 4, "iterations": 3, "batch_size": 2, "lr": 1e-3},
        "verify": {"n_per_alpha": 2, "alphas": [5, 10, 20], "d_range": [0.05, 1.0],
                   "size": 48, "target_alpha": 10, "target_ratio": [0.8, 1.2]},
    },
    "magnify": {"device": "cpu", "torch_threads": 1, "latent_alpha": 10, "latent_kind": "difference",
                "frames": {"oh": [6, 10], "stmemm": [5, 8]},
                "pseudo_apex": {"seed": 3, "max_offset": 5}, "batch_size": 3,
                "figure_samples": 2},
}


@pytest.fixture(autouse=True, scope="module")
def _restore_torch_threads():
    """The stages set torch's thread count (torch_threads: 1): restore it for other tests."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _write_params(path, params) -> str:
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return str(path)


def _fake_faces(path, n: int = 5) -> list[str]:
    """A faces.h5 with textured crops: apex = onset moved by a sub-pixel shift."""
    rng = np.random.default_rng(0)
    ids = [f"casme2/sub{i:02d}/EP0{i}" for i in range(n)]
    with CacheWriter(path, "faces", {"sizes": [S]}) as w:
        for i, sid in enumerate(ids):
            canvas = TextureBank.procedural(rng, S + 20, kinds=("noise",))
            frames = [np.rint(render_translated(canvas, (0.1 * k, 0.05 * k), S, 10)).clip(0, 255)
                      .astype(np.uint8) for k in range(W + 1)]
            w.append(sid, {f"crop{S}/onset": frames[0], f"crop{S}/apex": frames[1],
                           f"crop{S}/pseudo_apex": np.stack(frames[1:]),
                           "frame_numbers/pseudo_apex": np.arange(10 + i, 10 + i + W,
                                                                  dtype=np.int32)})
    return ids


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("magnifier")
    params = _write_params(tmp / "params.yaml", PARAMS)
    rc = magnifier_stage.main(["--params", params, "--out", str(tmp / "models"),
                               "--metrics", str(tmp / "magnifier.json")])
    assert rc == 0
    return tmp


def test_magnifier_stage_writes_weights_figure_and_verification_metrics(trained):
    assert sorted(p.name for p in (trained / "models").iterdir()) == [
        "oh.pt", "stmemm.pt", "verification.png"]
    # the full record beside the declared headline (ARCHITECTURE.md, "Metrics files")
    metrics = json.loads((trained / "magnifier" / "detail.json").read_text())
    assert json.loads((trained / "magnifier.json").read_text()) == magnifier_headline(metrics)
    assert json.loads((trained / "metrics" / "stages" / "magnifier.json").read_text())[
        "wall_seconds"] >= 0
    assert metrics["data"] == "synthetic" and metrics["config"] == "quick"
    assert metrics["verification"]["target"] == {"alpha": 10.0, "ratio_range": [0.8, 1.2]}
    for name in ("oh", "stmemm", "eulerian"):
        for alpha in (5, 10, 20):
            m = metrics[name][f"alpha{alpha}"]
            assert m["n"] == 2
            assert m["ratio_q25"] <= m["ratio_median"] <= m["ratio_q75"]
            assert 0.0 < m["ssim"] <= 1.0 and m["psnr"] > 0
        assert isinstance(metrics[name]["meets_target"], bool)
    assert metrics["oh"]["train"]["iterations"] == 3
    assert metrics["stmemm"]["arch"]["dim"] == 8
    assert metrics["eulerian"]["lambda_c_px"] == 16.0
    model, meta = load_magnifier(trained / "models" / "oh.pt")
    assert isinstance(model, OhMagNet) and not model.texture_branch and meta["kind"] == "oh"


def test_magnifier_stage_loads_external_weights_and_rejects_a_wrong_layout(tmp_path, capsys):
    good = tmp_path / "good.pth"
    arch = {k: v for k, v in PARAMS["magnifier"]["oh"].items() if k.startswith("n_")}
    torch.manual_seed(9)
    ref = OhMagNet(texture_branch=False, **arch)
    torch.save(ref.state_dict(), good)
    params = json.loads(json.dumps(PARAMS))
    params["magnifier"]["oh"]["weights"] = str(good)
    params["magnifier"]["stmemm"]["iterations"] = 1
    rc = magnifier_stage.main(["--params", _write_params(tmp_path / "p.yaml", params),
                               "--out", str(tmp_path / "m"), "--metrics", str(tmp_path / "j.json")])
    assert rc == 0
    info = json.loads((tmp_path / "j" / "detail.json").read_text())["oh"]["train"]
    assert info["external_weights"] == str(good) and len(info["sha256"]) == 64
    loaded, _ = load_magnifier(tmp_path / "m" / "oh.pt")
    for k, v in ref.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)

    bad = tmp_path / "bad.pth"
    torch.save(OhMagNet(texture_branch=True).state_dict(), bad)
    params["magnifier"]["oh"]["weights"] = str(bad)
    rc = magnifier_stage.main(["--params", _write_params(tmp_path / "p.yaml", params),
                               "--out", str(tmp_path / "m2"), "--metrics", str(tmp_path / "k.json")])
    assert rc == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "key layout" in err and "texture_branch" in err
    assert not (tmp_path / "m2").exists() and not (tmp_path / "k.json").exists()


def test_magnify_stage_writes_latents_frames_and_offsets(trained, tmp_path):
    faces = tmp_path / "faces.h5"
    ids = _fake_faces(faces)
    out = tmp_path / "magnified.h5"
    fig = tmp_path / "magnified.png"
    rc = magnify_stage.main(["--params", str(trained / "params.yaml"), "--faces", str(faces),
                             "--models", str(trained / "models"), "--out", str(out),
                             "--figure", str(fig)])
    assert rc == 0 and fig.stat().st_size > 0
    mag = FeatureCache(out, "magnified", expect_params={"size": S, "latent_alpha": 10.0})
    assert mag.sample_ids == ids
    shapes = {k: (v[0], str(v[1])) for k, v in mag.datasets.items()}
    n = len(ids)
    assert shapes == {
        "latent/onset_apex": ((n, 32, S // 2, S // 2), "float16"),
        "latent/onset_pseudo": ((n, 32, S // 2, S // 2), "float16"),
        "latent/onset_pseudo_all": ((n, W, 32, S // 2, S // 2), "float16"),
        "frames/oh/alpha6/apex": ((n, S, S, 3), "uint8"),
        "frames/oh/alpha10/apex": ((n, S, S, 3), "uint8"),
        "frames/stmemm/alpha5/apex": ((n, S, S, 3), "uint8"),
        "frames/stmemm/alpha8/apex": ((n, S, S, 3), "uint8"),
        "pseudo_apex_offset": ((n,), "int16"),
        "pseudo_apex_frame": ((n,), "int32"),
    }
    drawn = draw_pseudo_apex_offsets(ids, 3, 5)
    offsets = mag.read("pseudo_apex_offset", slice(None))
    np.testing.assert_array_equal(offsets, [drawn[s] for s in ids])
    np.testing.assert_array_equal(mag.read("pseudo_apex_frame", slice(None)),
                                  [10 + i + int(k) for i, k in enumerate(offsets)])
    # the stored latents are the Oh manipulator's magnified difference at α = 10
    model, _ = load_magnifier(trained / "models" / "oh.pt")
    fc = FeatureCache(faces, "faces")
    i = 2
    onset = to_model_range(fc.read(f"crop{S}/onset", i))
    pseudo = to_model_range(fc.read(f"crop{S}/pseudo_apex", i)[offsets[i]])
    with torch.no_grad():
        expected = model.magnified_difference(onset, pseudo, 10.0)[0].numpy()
    np.testing.assert_allclose(mag.read("latent/onset_pseudo", i).astype(np.float32), expected,
                               rtol=2e-3, atol=2e-3)
    # every offset k = 0..5 is cached (per-epoch redraws); the drawn one is latent/onset_pseudo
    every = mag.read("latent/onset_pseudo_all", i).astype(np.float32)
    np.testing.assert_array_equal(every[offsets[i]], mag.read("latent/onset_pseudo", i))
    for k in range(W):
        with torch.no_grad():
            frame = to_model_range(fc.read(f"crop{S}/pseudo_apex", i)[k])
            expected = model.magnified_difference(onset, frame, 10.0)[0].numpy()
        np.testing.assert_allclose(every[k], expected, rtol=2e-3, atol=2e-3)
    assert not np.allclose(every[0], every[W - 1])
    # k = 0 is the apex frame itself: its entry is latent/onset_apex, not encoded twice
    np.testing.assert_array_equal(every[0], mag.read("latent/onset_apex", i))
    fc.close()
    mag.close()
    # the float16 latents are stored without gzip (they barely compress), the frames with it
    with h5py.File(out, "r") as h5:
        assert h5["latent/onset_pseudo_all"].compression is None
        assert h5["latent/onset_apex"].compression is None
        assert h5["frames/oh/alpha6/apex"].compression == "gzip"


def test_window_at_the_apex_reuses_its_latent_and_matches_encoding_it(trained):
    from pipeline.magnification.magnify import _oh_outputs

    model, _ = load_magnifier(trained / "models" / "oh.pt")
    rng = np.random.default_rng(1)
    onset, apex = (torch.from_numpy(rng.uniform(-1, 1, (2, 3, S, S)).astype(np.float32))
                   for _ in range(2))
    window = torch.stack([apex, apex.roll(1, dims=-1), apex.roll(2, dims=-1)], dim=1)
    offsets = np.array([2, 0])
    kwargs = dict(latent_alpha=10.0, latent_kind="difference", alphas=[], window=window,
                  offsets=offsets)
    with torch.no_grad():
        reused = _oh_outputs(model, onset, apex, apex, window_starts_at_apex=True, **kwargs)
        encoded = _oh_outputs(model, onset, apex, apex, window_starts_at_apex=False, **kwargs)
    assert reused["latent/onset_pseudo_all"].shape == (2, 3, 32, S // 2, S // 2)
    np.testing.assert_array_equal(reused["latent/onset_pseudo_all"][:, 0],
                                  reused["latent/onset_apex"])
    np.testing.assert_allclose(reused["latent/onset_pseudo_all"].astype(np.float32),
                               encoded["latent/onset_pseudo_all"].astype(np.float32),
                               rtol=2e-3, atol=2e-3)
    np.testing.assert_array_equal(reused["latent/onset_pseudo"],
                                  reused["latent/onset_pseudo_all"][[0, 1], offsets])


def test_magnify_needs_the_crops_at_the_flow_size(trained, tmp_path):
    faces = tmp_path / "faces.h5"
    _fake_faces(faces, n=2)
    cfg = PARAMS["magnify"]
    with pytest.raises(CacheError, match=r"crop64.*flow size 64"):
        run_magnify(cfg, size=64, seed=0, faces_path=faces, models_dir=trained / "models",
                    out_path=tmp_path / "m.h5", figure_path=tmp_path / "m.png", progress=False)
    assert not (tmp_path / "m.h5").exists()
    with pytest.raises(FileNotFoundError, match="dvc repro magnifier"):
        run_magnify(cfg, size=S, seed=0, faces_path=faces, models_dir=tmp_path / "none",
                    out_path=tmp_path / "m.h5", figure_path=tmp_path / "m.png", progress=False)


@pytest.mark.parametrize("config", ["quick", "paper"])
def test_project_params_build_both_magnifiers(config):
    from pipeline import params as P
    from pipeline.magnification.synthetic import SyntheticConfig
    from pipeline.magnification.train import arch_of, build_magnifier

    raw = dict(P.load("params.yaml"), config=config)
    cfg = P.section("magnifier", raw)
    oh = build_magnifier("oh", arch_of("oh", cfg["oh"]))
    st = build_magnifier("stmemm", arch_of("stmemm", cfg["stmemm"]))
    assert isinstance(oh, OhMagNet)
    syn = SyntheticConfig.from_mapping(cfg["synthetic"])
    assert syn.size == (384 if config == "paper" else 64)
    assert syn.alpha_max == (100.0 if config == "paper" else 30.0)
    assert cfg["init"] == ("scratch" if config == "paper" else "shipped")
    assert st.dim == (60 if config == "paper" else 32)
    mg = P.section("magnify", raw)
    assert mg["latent_alpha"] == 10 and mg["frames"]["oh"][0] == 6
    assert mg["frames"]["stmemm"] == [5, 8, 10, 12, 15]          # GAM-MM-MER: α 5 + augmentation
    assert mg["frames_databases"] == {"stmemm": ["casme2", "samm", "smic"]}


def test_magnifier_stage_starts_from_the_shipped_weights(tmp_path, capsys):
    from pipeline import params as P
    from pipeline.magnification.train import arch_of, shipped_weights_path

    project = P.section("magnifier", P.load("params.yaml"))
    params = json.loads(json.dumps(PARAMS))
    mg = params["magnifier"]
    mg["init"] = "shipped"
    mg["verify"]["n_per_alpha"] = 1
    for kind in ("oh", "stmemm"):
        mg[kind] = {"iterations": 3, "batch_size": 2, "lr": 1e-3, **arch_of(kind, project[kind])}
    rc = magnifier_stage.main(["--params", _write_params(tmp_path / "p.yaml", params),
                               "--out", str(tmp_path / "m"), "--metrics", str(tmp_path / "j.json")])
    assert rc == 0
    metrics = json.loads((tmp_path / "j" / "detail.json").read_text())
    assert metrics["init"] == "shipped"
    for kind in ("oh", "stmemm"):
        info = metrics[kind]["train"]
        assert info["init"] == "shipped" and "finetune" not in info
        shipped, _ = load_magnifier(shipped_weights_path(kind))
        written, _ = load_magnifier(tmp_path / "m" / f"{kind}.pt")
        for k, v in shipped.state_dict().items():
            assert torch.equal(written.state_dict()[k], v)
        assert info["shipped_train"]["iterations_done"] > 0

    # another architecture than the shipped one: a clear error pointing to init: scratch
    mg["oh"]["n_dec_resblk"] = 1
    rc = magnifier_stage.main(["--params", _write_params(tmp_path / "p.yaml", params),
                               "--out", str(tmp_path / "m2"), "--metrics", str(tmp_path / "k.json")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "shipped weights" in err and "init: scratch" in err
    assert not (tmp_path / "m2").exists()

"""The realism statistics (issue #30's table) on synthetic pairs with known motion and shading.

Every pair is drawn analytically at 112 px: a smooth texture T, an apex built so that the flow
given to the statistics (never computed) is exact, apex(x + u, y + v) = onset(x, y), and where
asked a known shading change.  Expected values follow from the construction: head = |d| / IOD;
for the non-rigid field s·((x − c)/a, (y − c)/b) over the face ellipse (semi-axes a, b, centre c)
the non-rigid magnitude is s·ρ with ρ² uniform on [0, 1], so its q-th percentile is s·√q; a shift
d of A·sin(kx) changes the grey levels by 2A·|sin(k d / 2)|·|cos(…)|, blurred by exp(−k²σ²/2),
mean |cos| = 2/π.  The benchmark script is run on a tiny cache written here.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import realism as R
from pipeline.databases.aus import CD6ME_AU_COLUMNS
from pipeline.features.cache import CacheWriter

S = 112
C = S / 2.0                                 # centre of the face mask
A_X, A_Y = 0.42 * S, 0.48 * S               # its semi-axes
CROP_BOX = np.array([300.0, 250.0, 224.0, 3.0, 80.0], dtype=np.float32)  # IOD 80 * 112 / 224
IOD = 40.0
YS, XS = np.mgrid[0:S, 0:S].astype(np.float64)
RHO = np.sqrt(((XS - C) / A_X) ** 2 + ((YS - C) / A_Y) ** 2)   # elliptical radius, 1 on the mask edge
K = 2 * math.pi / 16                        # texture: period 16 px


def texture(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A smooth 2-D texture, grey levels about 28..228."""
    return 128 + 50 * np.sin(K * x) + 50 * np.sin(0.8 * K * y + 0.7)


def rgb(grey_levels: np.ndarray) -> np.ndarray:
    """Grey levels → RGB uint8 with equal channels (OpenCV's grey then gives them back)."""
    g = np.clip(np.rint(grey_levels), 0, 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


def linear_warp(d: tuple[float, float], s: float) -> tuple[np.ndarray, np.ndarray]:
    """Flow d + s·((x − c)/a, (y − c)/b) (H, W, 3) and the map (X, Y) → onset point it came from."""
    flow = np.zeros((S, S, 3), dtype=np.float32)
    flow[..., 0] = d[0] + s * (XS - C) / A_X
    flow[..., 1] = d[1] + s * (YS - C) / A_Y
    # x ↦ x + d + diag(s/a, s/b)(x − c) is affine: the apex pixel (X, Y) shows onset point
    src_x = C + (XS - C - d[0]) / (1 + s / A_X)
    src_y = C + (YS - C - d[1]) / (1 + s / A_Y)
    return flow, np.stack([src_x, src_y])


# -- geometry -------------------------------------------------------------------------------------

def test_iod_and_mask():
    assert R.iod_crop_px(CROP_BOX, S) == pytest.approx(IOD)
    assert np.allclose(R.iod_crop_px(np.stack([CROP_BOX, CROP_BOX * [1, 1, 2, 1, 1]]), S),
                       [IOD, IOD / 2])
    with pytest.raises(ValueError, match="crop_box"):
        R.iod_crop_px(np.array([0, 0, 0, 0, 10.0]))
    mask = R.face_mask(S)
    assert mask.shape == (S, S) and mask.dtype == bool
    assert mask.sum() == pytest.approx(math.pi * A_X * A_Y, rel=0.01)     # the ellipse's area
    assert mask[int(C), int(C)] and not mask[0, 0] and not mask[int(C), 5]
    assert np.array_equal(mask, RHO <= 1)


def test_grey_is_opencv_grey_blurred():
    flat = rgb(np.full((S, S), 100.0))
    assert np.allclose(R.grey(flat), 100.0, atol=1e-4)
    img = np.zeros((S, S, 3), np.uint8)
    img[int(C), int(C)] = (255, 0, 0)                         # one red pixel
    g = R.grey(img)
    assert g.dtype == np.float32
    # BT.601 red weight 0.299 → 76 grey levels, spread by the σ = 1 px Gaussian: peak 76/(2π)
    assert g.sum() == pytest.approx(76, rel=0.01)
    assert g.max() == pytest.approx(76 / (2 * math.pi), rel=0.03)
    with pytest.raises(ValueError, match="RGB"):
        R.grey(np.zeros((S, S), np.uint8))


# -- a known rigid shift ----------------------------------------------------------------------------

def test_rigid_shift():
    d = (1.2, -0.5)
    amp = 100.0
    onset = rgb(128 + amp * np.sin(K * XS))
    apex = rgb(128 + amp * np.sin(K * (XS - d[0])))        # content moved by d (the y part: none)
    flow = np.zeros((S, S, 3), np.float32)
    flow[..., 0], flow[..., 1] = d
    stats = R.sample_statistics(onset, apex, flow, CROP_BOX)
    assert stats["head"] == pytest.approx(100 * math.hypot(*d) / IOD, rel=1e-6)   # 3.25 % IOD
    assert stats["expression_p95"] == pytest.approx(0, abs=1e-9)
    assert stats["expression_p99"] == pytest.approx(0, abs=1e-9)
    # |A sin(k(x − d)) − A sin(kx)| = 2A |sin(k d/2)| |cos(k(x − d/2))|, blurred, mean |cos| = 2/π
    blur = math.exp(-(K ** 2) / 2)
    expected_raw = 2 * amp * abs(math.sin(K * d[0] / 2)) * blur * 2 / math.pi
    assert stats["raw_change"] == pytest.approx(expected_raw, rel=0.05)
    # the flow explains the change: only interpolation is left (a sign error would give about 2)
    assert stats["unexplained"] < 0.08
    assert stats["iod_px"] == pytest.approx(IOD)


# -- a known non-rigid warp -------------------------------------------------------------------------

def test_nonrigid_warp():
    d, s = (0.3, 0.2), 2.0
    flow, (src_x, src_y) = linear_warp(d, s)
    onset, apex = rgb(texture(XS, YS)), rgb(texture(src_x, src_y))
    mask = R.face_mask(S)
    assert np.allclose(R.rigid_shift(flow, mask), d, atol=1e-6)        # the mask is symmetric
    assert R.head_motion(flow, IOD, mask) == pytest.approx(100 * math.hypot(*d) / IOD, rel=1e-5)
    assert np.allclose(R.nonrigid_flow(flow, mask), s * RHO, atol=1e-5)
    assert R.expression_p95(flow, IOD, mask) == pytest.approx(100 * s * math.sqrt(0.95) / IOD,
                                                              rel=0.01)
    assert R.expression_p99(flow, IOD, mask) == pytest.approx(100 * s * math.sqrt(0.99) / IOD,
                                                              rel=0.01)
    # "moves most": the outer ring ρ² > 0.9; "still half": the inner ρ² < 0.5
    moving, still = R.moving_region(flow, mask), R.still_region(flow, mask)
    assert moving.sum() == round(0.1 * mask.sum()) and still.sum() == round(0.5 * mask.sum())
    assert not (moving & still).any() and not (moving & ~mask).any()
    assert _iou(moving, mask & (RHO ** 2 > 0.9)) > 0.9
    assert _iou(still, RHO ** 2 < 0.5) > 0.95
    # a pure warp: the flow explains it everywhere
    assert R.raw_change(onset, apex, mask) > 5
    assert R.unexplained_share(onset, apex, flow, mask) < 0.08
    assert R.unexplained_share_moving(onset, apex, flow, mask) < 0.08


def test_head_is_the_median_not_the_mean():
    """A local motion of 3 px on a fifth of the face leaves the head at d; it is the expression."""
    d = (0.4, 0.3)
    flow = np.zeros((S, S, 3), np.float32)
    flow[..., 0], flow[..., 1] = d
    local = RHO ** 2 < 0.2                                     # a fifth of the mask
    flow[local, 1] += 3.0
    mask = R.face_mask(S)
    assert R.head_motion(flow, IOD, mask) == pytest.approx(100 * 0.5 / IOD, rel=1e-6)
    assert R.expression_p95(flow, IOD, mask) == pytest.approx(100 * 3.0 / IOD, rel=1e-5)
    assert R.expression_p99(flow, IOD, mask) == pytest.approx(100 * 3.0 / IOD, rel=1e-5)
    assert np.array_equal(R.moving_region(flow, mask) & ~local, np.zeros((S, S), bool))


# -- a known shading change -------------------------------------------------------------------------

def test_uniform_shading_is_unexplained():
    """Apex = onset + δ and no motion: raw change δ, all of it unexplained."""
    delta = 6.0
    onset, apex = rgb(texture(XS, YS)), rgb(texture(XS, YS) + delta)
    flow = np.zeros((S, S, 3), np.float32)
    mask = R.face_mask(S)
    assert R.raw_change(onset, apex, mask) == pytest.approx(delta, abs=0.05)
    assert R.unexplained_share(onset, apex, flow, mask) == pytest.approx(1.0, abs=0.01)


def test_shading_where_the_face_moves_most():
    """The warp above plus shading δ on the outer face (ρ > 0.8), whose texture is flat.

    Where the face moves most (ρ² > 0.9, inside the shaded zone) the whole change is the shading:
    share 1, residual δ; the still half (ρ² < 0.5) only moves: residual about 0.  Over the whole
    mask the residual is δ times the share of the mask whose apex point is shaded.
    """
    d, s, delta = (0.3, 0.2), 2.0, 8.0
    flow, (src_x, src_y) = linear_warp(d, s)

    def weight(rho):  # texture inside ρ < 0.6, flat beyond 0.7 (smooth step)
        t = np.clip((rho - 0.6) / 0.1, 0, 1)
        return 1 - t * t * (3 - 2 * t)

    def onset_at(x, y):
        rho = np.sqrt(((x - C) / A_X) ** 2 + ((y - C) / A_Y) ** 2)
        return 128 + (texture(x, y) - 128) * weight(rho)

    shading = delta * (RHO > 0.8)                                # drawn on the apex
    onset, apex = rgb(onset_at(XS, YS)), rgb(onset_at(src_x, src_y) + shading)
    mask = R.face_mask(S)
    assert R.unexplained_share_moving(onset, apex, flow, mask) == pytest.approx(1.0, abs=0.03)
    moving, still = R.residual_moving_still(onset, apex, flow, mask)
    assert moving == pytest.approx(delta, rel=0.03)
    assert still < 0.05 * delta
    assert R.residual_moving_over_still(onset, apex, flow, mask) > 20
    res = R.residual(onset, apex, flow)[mask].mean()
    # pulled back, the shading sits where the apex point x + w(x) has ρ > 0.8
    pulled_rho = np.hypot((XS + flow[..., 0] - C) / A_X, (YS + flow[..., 1] - C) / A_Y)
    shaded = (mask & (pulled_rho > 0.8)).sum() / mask.sum()
    assert res == pytest.approx(delta * shaded, rel=0.05)
    share = R.unexplained_share(onset, apex, flow, mask)
    assert 0.2 < share < 0.95 and share == pytest.approx(res / R.raw_change(onset, apex, mask))


def test_identical_frames_give_undefined_shares():
    onset = rgb(texture(XS, YS))
    stats = R.sample_statistics(onset, onset, np.zeros((S, S, 3), np.float32), CROP_BOX)
    assert stats["raw_change"] == 0 and stats["head"] == 0
    assert math.isnan(stats["unexplained"]) and math.isnan(stats["unexplained_moving"])
    assert R.summarise([1.0, float("nan"), 3.0, 2.0]) == (2.0, pytest.approx(1.2),
                                                          pytest.approx(2.8), 3)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


# -- the benchmark script on a tiny cache -----------------------------------------------------------

def _bench():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_realism.py"
    spec = importlib.util.spec_from_file_location("bench_realism", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_run(root: Path) -> None:
    """Three samples (two CASME II with a rigid shift of 1.3 px, one SAMM with the warp) and a
    stand-in ground truth beside the frame folders."""
    d = (1.2, -0.5)
    rigid = np.zeros((S, S, 3), np.float32)
    rigid[..., 0], rigid[..., 1] = d
    warp, (src_x, src_y) = linear_warp((0.3, 0.2), 2.0)
    onset = rgb(texture(XS, YS))
    samples = {
        "casme2/sub01/EP01": (rgb(texture(XS - d[0], YS - d[1])), rigid),
        "casme2/sub02/EP02": (rgb(texture(XS - d[0], YS - d[1])), rigid),
        "samm/006/006_1_2": (rgb(texture(src_x, src_y)), warp),
    }
    feats = root / "data" / "features"
    with CacheWriter(feats / "faces.h5", "faces", {"sizes": [S]}) as faces, \
            CacheWriter(feats / "flow.h5", "flow", {"size": S}) as flow:
        for sid, (apex, f) in samples.items():
            faces.append(sid, {"crop112/onset": onset, "crop112/apex": apex,
                               "crop_box": CROP_BOX,
                               "frame_numbers/onset": np.int32(10),
                               "frame_numbers/apex": np.int32(12)})
            flow.append(sid, {"onset_apex": f})
    rows = []
    for i, sid in enumerate(samples):
        db, subject, material = sid.split("/")
        rows.append({"sample_id": sid, "database": db, "subject": subject, "material": material,
                     "row": i, "onset": 10, "apex": 12, "offset": 14,
                     "frame_dir": f"data/standin/{db}/{subject}/{material}",
                     "frames": "a.jpg|b.jpg", "n_frames": 2, "au": "12",
                     **{au: 0 for au in CD6ME_AU_COLUMNS},
                     "emotion": "happiness", "emotion5": "", "emotion3": ""})
    (root / "data" / "index").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(root / "data" / "index" / "samples.csv", index=False)
    (root / "data" / "standin" / "ground_truth").mkdir(parents=True)
    (root / "data" / "standin" / "ground_truth" / "build.json").write_text(
        json.dumps({"profile": "tiny", "seed": 3}))


def test_bench_realism_table(tmp_path, capsys):
    bench = _bench()
    _write_run(tmp_path)
    assert bench.main(["--root", str(tmp_path), "--csv", str(tmp_path / "per_sample.csv")]) == 0
    out = capsys.readouterr().out
    assert "data: STAND-IN (profile tiny, seed 3" in out
    lines = out.splitlines()
    head = next(line for line in lines if line.startswith("| head: rigid shift"))
    # 100 · 1.3 / 40 = 3.25 % IOD on both CASME II samples; reference 0.13; ratio 25
    assert "| 3.25 (3.25–3.25) | 0.13 (0.06–0.55) | 25.00 |" in head
    p95 = next(line for line in lines if line.startswith("| expression: 95th"))
    assert "| 0.00 (0.00–0.00) | 0.38 (0.21–1.95) | 0.00 |" in p95
    for ref in ("0.48 (0.32–2.60)", "0.92 (0.53–2.20)", "0.69 (0.45–0.80)", "0.66 (0.39–0.75)"):
        assert ref in out
    assert "real CASME II reference, STANDIN.md / issue #30" in out
    samm = next(line for line in lines if line.startswith("| samm (1) |")).split("|")
    assert samm[2].strip() == "0.90 (0.90–0.90)"                       # 100 · |(0.3, 0.2)| / 40
    assert float(samm[3].split()[0]) == pytest.approx(100 * 2 * math.sqrt(0.95) / IOD, abs=0.01)
    assert any(line.startswith("| casme2 (2) |") for line in lines)
    assert any(line.startswith("| all (3) |") for line in lines)
    per_sample = pd.read_csv(tmp_path / "per_sample.csv")
    assert list(per_sample["sample_id"]) == ["casme2/sub01/EP01", "casme2/sub02/EP02",
                                             "samm/006/006_1_2"]
    assert per_sample["head"].tolist() == pytest.approx([3.25, 3.25, 100 * math.hypot(0.3, 0.2) / IOD])


def test_bench_realism_without_caches(tmp_path, capsys):
    bench = _bench()
    with pytest.raises(SystemExit) as exc:
        bench.main(["--root", str(tmp_path)])
    message = str(exc.value.code)
    assert "\n" not in message and "faces.h5 not found" in message
    assert "needs a run's caches" in message

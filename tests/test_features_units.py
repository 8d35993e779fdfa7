"""Feature building blocks: optical strain, TV-L1, alignment geometry, frame plans, parallel map."""

from __future__ import annotations

import math
import time

import cv2
import numpy as np
import pytest

from pipeline.features import align, faces, flow
from pipeline.parallel import parallel_map, resolve_n_jobs

# ---------------------------------------------------------------------------------------------
# Optical strain against analytic displacement fields


def test_strain_of_linear_field_is_exact_everywhere():
    a, b, c = 0.03, -0.02, 0.05
    ys, xs = np.mgrid[0:40, 0:50].astype(np.float64)
    field = np.stack([a * xs, b * ys + c * xs], axis=2)        # u = a·x, v = b·y + c·x
    eps = flow.optical_strain(field)
    assert eps.shape == (40, 50) and eps.dtype == np.float32
    # u_x = a, v_y = b, u_y = 0, v_x = c  →  ε = sqrt(a² + b² + c²/2), also on the border.
    np.testing.assert_allclose(eps, math.sqrt(a**2 + b**2 + c**2 / 2), rtol=1e-6)


def test_strain_uses_central_differences_inside():
    ys, xs = np.mgrid[0:30, 0:30].astype(np.float64)
    k = 0.01
    field = np.stack([k * xs**2, k * ys * xs], axis=2)          # u = k x², v = k x y
    eps = flow.optical_strain(field).astype(np.float64)
    # u_x = 2kx, v_y = kx, u_y = 0, v_x = ky; central differences are exact for quadratics.
    expect = np.sqrt((2 * k * xs) ** 2 + (k * xs) ** 2 + 0.5 * (k * ys) ** 2)
    np.testing.assert_allclose(eps[1:-1, 1:-1], expect[1:-1, 1:-1], rtol=1e-5, atol=1e-7)
    # A pure rotation has no strain: u = −θy, v = θx.
    theta = 0.02
    rot = np.stack([-theta * ys, theta * xs], axis=2)
    assert np.abs(flow.optical_strain(rot)).max() < 1e-6


def _texture(size: int = 96, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.uniform(0, 255, (size // 4, size // 4)).astype(np.float32)
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_CUBIC)
    return np.clip(cv2.GaussianBlur(img, (0, 0), 1.5), 0, 255).astype(np.uint8)


def test_tvl1_recovers_a_subpixel_translation_with_the_documented_sign():
    first = _texture()
    m = np.float32([[1, 0, 0.6], [0, 1, -0.4]])                  # content moves by (+0.6, −0.4)
    second = cv2.warpAffine(first, m, first.shape[::-1], flags=cv2.INTER_CUBIC,
                            borderMode=cv2.BORDER_REFLECT)
    img = flow.flow_image(first, second, {})
    assert img.shape == (96, 96, 3) and img.dtype == np.float32
    inner = img[16:-16, 16:-16]
    np.testing.assert_allclose(inner[..., 0].mean(), 0.6, atol=0.05)
    np.testing.assert_allclose(inner[..., 1].mean(), -0.4, atol=0.05)
    assert inner[..., 2].mean() < 0.05                           # a translation has no strain


def test_compute_pairs_shapes_and_bad_arguments():
    a, b = _texture(seed=1)[:48, :48], _texture(seed=2)[:48, :48]
    frames = {"onset": a, "apex": b, "offset": a, "pseudo_apex": np.stack([a, b, b])}
    tvl1 = {"nscales": 2, "warps": 2}
    out, n = flow.compute_pairs(frames, ("onset_apex", "onset_pseudo", "offset_apex"), tvl1)
    assert n == 2                                    # only (a, b) and (a, a) are distinct
    assert out["onset_apex"].shape == (48, 48, 3)
    assert out["onset_pseudo"].shape == (3, 48, 48, 3)
    np.testing.assert_array_equal(out["onset_pseudo"][0], flow.flow_image(a, a, tvl1))
    np.testing.assert_array_equal(out["onset_pseudo"][1], out["onset_apex"])
    with pytest.raises(ValueError, match="unknown TV-L1 arguments"):
        flow.check_tvl1({"innerIterations": 30})
    with pytest.raises(ValueError, match="grey uint8"):
        flow.tvl1_flow(a.astype(np.float32), b, {})


# ---------------------------------------------------------------------------------------------
# Alignment


def test_box_levels_the_eyes_and_scales_by_the_interocular_distance():
    right, left = np.array([40.0, 60.0]), np.array([80.0, 50.0])  # eye line tilted by −14°
    box = align.box_from_eyes(right, left, crop_side=2.5, centre_below=0.4)
    iod = math.hypot(40, -10)
    assert box.iod == pytest.approx(iod) and box.side == pytest.approx(2.5 * iod)
    assert box.angle == pytest.approx(math.degrees(math.atan2(-10, 40)))
    u = align.to_crop_units(np.stack([right, left]), box)
    # Eyes level, symmetric about the centre, 1/2.5 of the side apart, 0.4/2.5 above the centre.
    np.testing.assert_allclose(u[:, 1], 0.5 - 0.4 / 2.5, atol=1e-6)
    np.testing.assert_allclose(u[:, 0], [0.5 - 0.2, 0.5 + 0.2], atol=1e-6)
    with pytest.raises(ValueError, match="eye line"):
        align.box_from_eyes(right, right)


@pytest.mark.parametrize("size", [32, 200])                     # downscaled and upscaled paths
def test_warp_puts_a_frame_point_where_the_crop_matrix_says(size):
    frame = np.zeros((240, 320, 3), np.uint8)
    p = np.array([171.0, 93.0])
    cv2.circle(frame, (int(p[0]), int(p[1])), 6, (255, 255, 255), -1)
    box = align.CropBox(cx=160.0, cy=120.0, side=120.0, angle=12.0, iod=40.0)
    crop = align.warp_crops(frame, box, [size])[size]
    assert crop.shape == (size, size, 3)
    grey = crop[..., 0].astype(np.float64)
    ys, xs = np.mgrid[0:size, 0:size]
    found = np.array([(grey * xs).sum(), (grey * ys).sum()]) / grey.sum()
    expect = align.crop_matrix(box, size) @ np.array([*p, 1.0])
    assert np.linalg.norm(found - expect) < 0.03                 # pixels of the crop


# ---------------------------------------------------------------------------------------------
# Frame plans


def test_uniform_sequence_and_repeat_of_the_last_frame():
    assert faces.uniform_positions(10, 8) == (0, 1, 3, 4, 5, 6, 8, 9)
    assert faces.uniform_positions(8, 8) == tuple(range(8))
    assert faces.uniform_positions(5, 8) == (0, 1, 2, 3, 4, 4, 4, 4)
    assert faces.uniform_positions(1, 3) == (0, 0, 0)


def test_plan_clips_the_pseudo_apex_window_at_the_offset_and_survives_gaps():
    numbers = (10, 11, 12, 14, 15, 16)                           # frame 13 missing
    plan = faces.plan_frames(numbers, apex=13, window=6, length=4)
    assert plan.onset == 0 and plan.offset == 5
    assert plan.apex == 2                                        # nearest number, lower on a tie
    assert plan.pseudo_apex == (2, 3, 4, 5, 5, 5)
    assert plan.sequence == (0, 2, 3, 5)
    row = {"sample_id": "x/s/m", "frame_dir": "/nowhere", "apex": 12,
           "frames": "reg_EP01_5-10.jpg|reg_EP01_5-11.jpg|reg_EP01_5-12.jpg"}
    sf = faces.sample_frames(row)
    assert sf.numbers == (10, 11, 12) and sf.paths[0] == "/nowhere/reg_EP01_5-10.jpg"
    with pytest.raises(faces.SampleFailure, match="'frames' is empty"):
        faces.sample_frames(row | {"frames": ""})
    with pytest.raises(faces.SampleFailure, match="apex"):
        faces.sample_frames(row | {"apex": ""})


def test_faces_config_rejects_bad_parameters():
    with pytest.raises(ValueError, match="faces.detector"):
        faces.FacesConfig.from_params({"detector": "haar"})
    with pytest.raises(ValueError, match="faces.pseudo_apex_window"):
        faces.FacesConfig.from_params({"pseudo_apex_window": 0})
    cfg = faces.FacesConfig.from_params({"detector": "dlib", "sizes": [64, 112, 64]})
    assert cfg.sizes == (112, 64) and cfg.fallback == "mediapipe"


# ---------------------------------------------------------------------------------------------
# Parallel map


def _slow_square(x: int) -> int:
    time.sleep(0.02 * (5 - x % 5))                               # later items finish first
    return x * x


def _fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("bad item 3")
    return x


def test_parallel_map_keeps_input_order_on_both_backends():
    from distributed import LocalCluster

    items = list(range(12))
    expect = [x * x for x in items]
    assert list(parallel_map(_slow_square, items, backend="local", n_jobs=1)) == expect
    assert list(parallel_map(_slow_square, iter(items), backend="local", n_jobs=2,
                             total=12, progress=False)) == expect
    with LocalCluster(host="127.0.0.1", protocol="tcp://", processes=False, n_workers=1,
                      threads_per_worker=3, dashboard_address=None) as cluster:
        got = list(parallel_map(_slow_square, items, backend="dask",
                                scheduler=cluster.scheduler_address, window=4, progress=False))
        assert got == expect
        with pytest.raises(ValueError, match="bad item 3"):
            list(parallel_map(_fail_on_three, items, backend="dask",
                              scheduler=cluster.scheduler_address, progress=False))
    with pytest.raises(ValueError, match="parallel.backend"):
        next(parallel_map(_slow_square, items, backend="spark"))
    assert resolve_n_jobs(1) == 1 and resolve_n_jobs(-1) >= 1

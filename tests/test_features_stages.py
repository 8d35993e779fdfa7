"""The faces, flow and patches stages on small samples made from the face photos.

The samples (pipeline.features.synthetic) move rigidly by a known translation per frame, so the
crops (one box per sample), the TV-L1 flow and the landmarks have known values.  Bad samples (no
face, an unreadable frame, a missing frame) must be recorded, counted and left out; both parallel
backends must give identical files; a stage killed midway must leave no final file and a re-run
must give the same file as an uninterrupted run.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.features import faces as faces_mod
from pipeline.features.cache import CacheDataset, CacheError, FeatureCache
from pipeline.features.faces import load_index, run_faces
from pipeline.features.flow import run_flow
from pipeline.features.patches import REGIONS, run_patches
from pipeline.features.stage import Item, StageFailed, read_failures
from pipeline.features.synthetic import write_samples
from pipeline.params import section

ROOT = Path(__file__).resolve().parents[1]
SHIFT = (0.25, 0.125)          # rigid translation per frame (pixels of the 200 px frame)
N_FRAMES = 10
LOCAL = {"backend": "local", "n_jobs": 1, "scheduler": None}


@pytest.fixture(scope="module")
def photos_dir(faces_dir) -> Path:
    """The photos of ``neutral_front`` (conftest: ``$MER_FACES_DIR`` or ``../shared/faces``)."""
    d = faces_dir / "neutral_front"
    assert d.is_dir(), f"{faces_dir} has no neutral_front/ folder of photos"
    return d


@pytest.fixture(scope="module")
def model_path(landmarker_model) -> str:
    """The MediaPipe bundle (conftest: ``$MER_LANDMARKER_MODEL`` or ``../shared/models``)."""
    return str(landmarker_model)


@pytest.fixture(scope="module")
def params(model_path) -> dict:
    """The project's params.yaml with small sizes for the tests."""
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["config"] = "quick"
    p["faces"].update(sizes=[96, 64], sequence_size=48, pseudo_apex_window=3,
                      sequence_length=8, landmarker_model=model_path, max_failed_share=0.45)
    p["flow"].update(size=64, pairs=["onset_apex", "onset_pseudo", "offset_apex"])
    p["patches"].update(size=96, patch_size=20, magnified={})
    p["parallel"] = dict(LOCAL)
    return p


@pytest.fixture(scope="module")
def data(tmp_path_factory, photos_dir) -> dict:
    """Frames and samples.csv: 5 clean samples, 1 with a blank onset, 4 bad ones."""
    root = tmp_path_factory.mktemp("features")
    photos = sorted(photos_dir.glob("*.jpg"))
    good = write_samples(root / "toy", photos[:5], n_frames=N_FRAMES, shift=SHIFT, bump=0.0)
    later = write_samples(root / "later", photos[5:6], n_frames=N_FRAMES, shift=SHIFT, bump=0.0,
                          database="later")
    blank = np.full((200, 200, 3), 128, np.uint8)
    cv2.imwrite(str(Path(later.frame_dir[0]) / "img101.png"), blank)   # onset without a face
    bad = write_samples(root / "bad", photos[6:10], n_frames=N_FRAMES, shift=SHIFT, bump=0.0,
                        database="bad")
    noface, broken, missing, mixed = (Path(d) for d in bad.frame_dir)
    for f in noface.iterdir():
        cv2.imwrite(str(f), blank)
    (broken / "img104.png").write_bytes(b"not a png at all")
    (missing / "img106.png").unlink()
    small = cv2.resize(cv2.imread(str(mixed / "img110.png")), (150, 150))
    cv2.imwrite(str(mixed / "img110.png"), small)                       # offset of another size
    index = pd.concat([good, later, bad]).sort_values("sample_id").reset_index(drop=True)
    index.to_csv(root / "samples.csv", index=False)
    return {"root": root, "index": root / "samples.csv", "good": list(good.sample_id),
            "later": later.sample_id[0], "noface": bad.sample_id[0], "broken": bad.sample_id[1],
            "missing": bad.sample_id[2], "mixed": bad.sample_id[3],
            "broken_file": broken / "img104.png", "missing_file": missing / "img106.png",
            "mixed_file": mixed / "img110.png"}


@pytest.fixture(scope="module")
def faces_run(data, params, tmp_path_factory):
    out = tmp_path_factory.mktemp("faces_out")
    handler = _Capture()
    logger = logging.getLogger("faces")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        summary = run_faces(load_index(data["index"]), section("faces", params), out / "faces.h5",
                            out / "faces_failures.csv", LOCAL, source=data["index"])
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return {"h5": out / "faces.h5", "failures": out / "faces_failures.csv", "summary": summary,
            "log": handler.lines}


@pytest.fixture(scope="module")
def flow_run(faces_run, params, tmp_path_factory):
    out = tmp_path_factory.mktemp("flow_out")
    run_flow(faces_run["h5"], section("flow", params), out / "flow.h5", out / "flow_failures.csv",
             LOCAL)
    return {"h5": out / "flow.h5", "failures": out / "flow_failures.csv"}


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(host="127.0.0.1", protocol="tcp://", processes=False, n_workers=1,
                      threads_per_worker=2, dashboard_address=None) as c:
        yield c


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _datasets(path: Path) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(path, "r") as h5:
        h5.visititems(
            lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
        out["__attrs__"] = {k: str(v) for k, v in h5.attrs.items()}
    return out


def _assert_same_files(a: Path, b: Path) -> None:
    da, db = _datasets(a), _datasets(b)
    assert sorted(da) == sorted(db)
    assert da.pop("__attrs__") == db.pop("__attrs__")
    for name in da:
        np.testing.assert_array_equal(da[name], db[name], err_msg=name)


def _crop_shift(box: np.ndarray, frames: float, size: int) -> np.ndarray:
    """Displacement in a crop of side ``size`` of the content moved by ``frames`` × SHIFT."""
    _, _, side, angle, _ = box
    t = math.radians(angle)
    rot = np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]])
    return size / side * rot @ (frames * np.asarray(SHIFT))


# ---------------------------------------------------------------------------------------------
# faces


def test_faces_layout_frame_numbers_and_alignment(faces_run, data):
    c = FeatureCache(faces_run["h5"], "faces", expect_params={"sizes": [96, 64]})
    assert c.sample_ids == sorted(data["good"] + [data["later"]])
    n = len(c)
    for s in (96, 64):
        assert c.datasets[f"crop{s}/onset"][0] == (n, s, s, 3)
        assert c.datasets[f"crop{s}/pseudo_apex"][0] == (n, 3, s, s, 3)
    assert c.datasets["seq48/frames"][0] == (n, 8, 48, 48, 3)
    assert str(c.datasets["crop64/apex"][1]) == "uint8"
    assert c.datasets["landmarks"][0] == (n, 478, 2)
    i = c.index_of(data["good"][0])
    assert c.read("frame_numbers/onset", i) == 101 and c.read("frame_numbers/offset", i) == 110
    assert c.read("frame_numbers/apex", i) == 106
    np.testing.assert_array_equal(c.read("frame_numbers/pseudo_apex", i), [106, 107, 108])
    np.testing.assert_array_equal(c.read("frame_numbers/sequence", i),
                                  [101, 102, 104, 105, 106, 107, 109, 110])
    # Eye centres of the stored landmarks: level, and where the crop geometry puts them.
    from pipeline.facedetect import eye_centres

    right, left = eye_centres(c.read("landmarks", i))
    side, below = 2.8, 0.5
    np.testing.assert_allclose(right, [0.5 - 0.5 / side, 0.5 - below / side], atol=1e-4)
    np.testing.assert_allclose(left, [0.5 + 0.5 / side, 0.5 - below / side], atol=1e-4)
    box = c.read("crop_box", i)
    assert box[2] == pytest.approx(side * box[4], rel=1e-5)
    # The sequence frame at position 4 is the apex frame (106), resampled at 48 px.
    seq = c.read("seq48/frames", i).astype(float)
    apex48 = cv2.resize(c.read("crop96/apex", i), (48, 48), interpolation=cv2.INTER_AREA)
    assert np.abs(seq[4] - apex48).mean() < 2.0
    assert np.abs(seq[0] - apex48).mean() > np.abs(seq[4] - apex48).mean()


def test_one_crop_box_for_all_frames_keeps_a_frame_translation(faces_run, data):
    """The onset's box crops every frame; a translation of the frame survives in the crops."""
    from pipeline.features.align import warp_crops

    c = FeatureCache(faces_run["h5"], "faces")
    index = load_index(data["index"]).set_index("sample_id")
    term = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 200, 1e-6)
    for sid in data["good"]:
        i = c.index_of(sid)
        box = c.read("crop_box", i)
        frame_dir = Path(index.loc[sid, "frame_dir"])
        # Every stored frame is the stored box applied to that frame's file.
        for name, number in (("onset", 101), ("apex", 106), ("offset", 110)):
            frame = cv2.cvtColor(cv2.imread(str(frame_dir / f"img{number}.png")), cv2.COLOR_BGR2RGB)
            again = warp_crops(frame, faces_mod.crop_box(box), [96])[96]
            assert np.abs(again.astype(int) - c.read(f"crop96/{name}", i)).max() <= 1, (sid, name)
        # The content moved by k × SHIFT in the frame moves by A · k × SHIFT in the crop.
        onset = cv2.cvtColor(c.read("crop96/onset", i), cv2.COLOR_RGB2GRAY)
        for name, k in (("offset", N_FRAMES - 1), ("apex", 5)):
            other = cv2.cvtColor(c.read(f"crop96/{name}", i), cv2.COLOR_RGB2GRAY)
            _, warp = cv2.findTransformECC(onset, other, np.eye(2, 3, dtype=np.float32),
                                           cv2.MOTION_TRANSLATION, term, None, 1)
            np.testing.assert_allclose(warp[:, 2], _crop_shift(box, k, 96), atol=0.05,
                                       err_msg=f"{sid} {name}")


def test_faces_failures_are_recorded_counted_and_absent(faces_run, data):
    fail = read_failures(faces_run["failures"]).set_index("sample_id")
    assert sorted(fail.index) == sorted([data["noface"], data["broken"], data["missing"],
                                         data["mixed"]])
    assert set(fail["stage"]) == {"faces"}
    assert "no face found in any of the 10 frames" in fail.loc[data["noface"], "reason"]
    assert str(data["broken_file"]) in fail.loc[data["broken"], "reason"]
    assert "unreadable" in fail.loc[data["broken"], "reason"]
    assert str(data["missing_file"]) in fail.loc[data["missing"], "reason"]
    assert f"{data['mixed_file']}: frame is 150x150" in fail.loc[data["mixed"], "reason"]
    s = faces_run["summary"]
    assert (s.n_samples, s.n_written, s.n_failed) == (10, 6, 4)
    assert s.fixes == {"later_frame": 1}
    assert any(re.search(r"10 samples: 6 written .* 4 failed \(40.0%.*later_frame 1", m)
               for m in faces_run["log"])


def test_blank_onset_takes_the_box_of_the_next_frame(faces_run, data):
    c = FeatureCache(faces_run["h5"], "faces")
    i = c.index_of(data["later"])
    assert c.read("detection/frame", i) == 102 and c.read("detection/detector", i) == 0
    assert np.isfinite(c.read("landmarks", i)).all()
    assert c.read("crop96/onset", i).std() < 1.0                 # the blank onset, cropped
    assert c.read("crop96/apex", i).std() > 20.0


def test_fallback_detector_when_the_configured_one_finds_nothing(data, params, monkeypatch):
    real = faces_mod._detector

    def no_mediapipe(kind, model):
        return (lambda image: None) if kind == "mediapipe" else real(kind, model)

    monkeypatch.setattr(faces_mod, "_detector", no_mediapipe)
    cfg = faces_mod.FacesConfig.from_params(section("faces", params))
    row = load_index(data["index"]).set_index("sample_id", drop=False).loc[data["good"][0]]
    done = faces_mod.process_sample(Item(row["sample_id"], faces_mod.sample_frames(row.to_dict())),
                                    cfg, cfg.landmarker_model)
    assert done.fixes == ("fallback_detector",)
    assert done.arrays["detection/detector"] == 1                # dlib
    assert done.arrays["landmarks"].shape == (478, 2) and np.isnan(done.arrays["landmarks"]).all()
    assert done.arrays["crop64/onset"].std() > 20.0


def test_too_many_failures_fail_the_stage_without_a_cache(data, params, tmp_path):
    index = load_index(data["index"])
    index = index[index.sample_id.isin([data["good"][0], data["noface"]])]
    p = section("faces", params) | {"max_failed_share": 0.2}
    with pytest.raises(StageFailed,
                       match=r"1 of 2 samples failed \(50.0% > faces.max_failed_share"):
        run_faces(index, p, tmp_path / "faces.h5", tmp_path / "faces_failures.csv", LOCAL)
    assert not (tmp_path / "faces.h5").exists()
    assert list(tmp_path.glob(".faces.h5*")) == []
    assert list(read_failures(tmp_path / "faces_failures.csv").sample_id) == [data["noface"]]
    with pytest.raises(ValueError, match="missing columns"):
        run_faces(index.drop(columns=["frames"]), p, tmp_path / "x.h5", tmp_path / "x.csv", LOCAL)


def test_faces_identical_on_dask(faces_run, data, params, cluster, tmp_path):
    par = {"backend": "dask", "n_jobs": 1, "scheduler": cluster.scheduler_address}
    run_faces(load_index(data["index"]), section("faces", params), tmp_path / "faces.h5",
              tmp_path / "faces_failures.csv", par)
    _assert_same_files(faces_run["h5"], tmp_path / "faces.h5")
    assert (tmp_path / "faces_failures.csv").read_text() == faces_run["failures"].read_text()


# ---------------------------------------------------------------------------------------------
# flow


def test_flow_values_follow_the_known_translation(flow_run, faces_run, data):
    fl = FeatureCache(flow_run["h5"], "flow", expect_params={"size": 64})
    fc = FeatureCache(faces_run["h5"], "faces")
    assert fl.sample_ids == fc.sample_ids                        # faces' failures are absent
    assert fl.datasets["onset_apex"][0] == (6, 64, 64, 3)
    assert fl.datasets["onset_pseudo"][0] == (6, 3, 64, 64, 3)
    assert str(fl.datasets["offset_apex"][1]) == "float32"
    assert list(pd.read_csv(flow_run["failures"]).columns) == ["sample_id", "stage", "reason"]
    assert fl.params["faces"]["sizes"] == [96, 64]
    for sid in data["good"]:
        i, box = fl.index_of(sid), fc.read("crop_box", fc.index_of(sid))
        inner = (slice(13, -13), slice(13, -13))                 # the face, not the border
        for name, k, frames in (("onset_apex", None, 5), ("offset_apex", None, -4),
                                ("onset_pseudo", 2, 7)):
            f = fl.read(name, i) if k is None else fl.read(name, i)[k]
            uv = f[inner][..., :2].reshape(-1, 2).mean(axis=0)
            np.testing.assert_allclose(uv, _crop_shift(box, frames, 64), atol=0.1,
                                       err_msg=f"{sid} {name}")
            assert np.median(f[inner][..., 2]) < 0.03            # rigid motion: little strain


def test_flow_needs_the_crop_size_and_checks_its_parameters(faces_run, params, tmp_path):
    p = section("flow", params)
    with pytest.raises(CacheError, match=r"no crops of size 80.*crop sizes \[64, 96\]"):
        run_flow(faces_run["h5"], p | {"size": 80}, tmp_path / "f.h5", tmp_path / "f.csv", LOCAL)
    with pytest.raises(ValueError, match="flow.pairs: unknown pairs"):
        run_flow(faces_run["h5"], p | {"pairs": ["onset_magnified"]}, tmp_path / "f.h5",
                 tmp_path / "f.csv", LOCAL)
    with pytest.raises(CacheError, match="feature cache not found"):
        run_flow(tmp_path / "none.h5", p, tmp_path / "f.h5", tmp_path / "f.csv", LOCAL)
    with pytest.raises(CacheError, match="schema 'flow', expected 'faces'"):
        run_flow(_copy_as_flow_schema(faces_run["h5"], tmp_path), p, tmp_path / "f.h5",
                 tmp_path / "f.csv", LOCAL)
    assert not (tmp_path / "f.h5").exists()


def _copy_as_flow_schema(src: Path, tmp: Path) -> Path:
    dst = tmp / "wrong.h5"
    dst.write_bytes(src.read_bytes())
    with h5py.File(dst, "a") as h5:
        h5.attrs["schema"] = "flow"
    return dst


def test_flow_identical_on_a_dask_cluster(flow_run, faces_run, params, cluster, tmp_path):
    par = {"backend": "dask", "n_jobs": 1, "scheduler": cluster.scheduler_address}
    run_flow(faces_run["h5"], section("flow", params), tmp_path / "flow.h5",
             tmp_path / "flow_failures.csv", par)
    _assert_same_files(flow_run["h5"], tmp_path / "flow.h5")


def _start_stage(stage: str, args: list[str], cwd: Path) -> tuple[subprocess.Popen, list[bytes]]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", f"stages.{stage}", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    chunks: list[bytes] = []

    def drain():
        while block := proc.stderr.read1(4096):
            chunks.append(block)

    threading.Thread(target=drain, daemon=True).start()
    return proc, chunks


def _wait_progress(proc, chunks, pattern: str, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if re.search(pattern, b"".join(chunks).decode(errors="replace")):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    raise AssertionError(f"no progress {pattern!r}: {b''.join(chunks).decode(errors='replace')}")


@pytest.mark.slow
def test_killed_flow_stage_leaves_no_file_and_rerun_matches(flow_run, faces_run, params, tmp_path):
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(copy.deepcopy(params)))
    out = tmp_path / "features" / "flow.h5"
    args = ["--params", str(pfile), "--faces", str(faces_run["h5"]), "--out", str(out),
            "--failures", str(tmp_path / "features" / "flow_failures.csv")]
    # SIGTERM: the stage unwinds and removes its temporary file.
    proc, chunks = _start_stage("flow", args, ROOT)
    _wait_progress(proc, chunks, r"flow:\s+\d+%.*\b[1-5]/6")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 128 + signal.SIGTERM
    left = sorted(p.name for p in out.parent.iterdir())
    assert not out.exists() and not [n for n in left if n.startswith(".flow.h5")], (
        left, b"".join(chunks).decode(errors="replace"))
    # Ctrl-C: one line, no traceback, ended by SIGINT (the shell shows 130), no temporary.
    proc, chunks = _start_stage("flow", args, ROOT)
    _wait_progress(proc, chunks, r"flow:\s+\d+%.*\b[1-5]/6")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == -signal.SIGINT
    end = time.monotonic() + 10   # the drain thread reads what is left on the pipe
    while b"nothing was written" not in b"".join(chunks) and time.monotonic() < end:
        time.sleep(0.02)
    err = b"".join(chunks).decode(errors="replace")
    assert "Traceback" not in err and err.count("interrupted") == 1, err
    assert not out.exists() and not list(out.parent.glob(".flow.h5*")), err
    # SIGKILL: no chance to clean up; the partial file exists only under its temporary name.
    proc, chunks = _start_stage("flow", args, ROOT)
    _wait_progress(proc, chunks, r"flow:\s+\d+%.*\b[1-5]/6")
    proc.kill()
    proc.wait(60)
    assert not out.exists()
    assert len(list(out.parent.glob(".flow.h5.*.h5"))) == 1
    # Re-run to completion: the same datasets and attributes as the uninterrupted run.
    proc, chunks = _start_stage("flow", args, ROOT)
    assert proc.wait(300) == 0, b"".join(chunks).decode(errors="replace")
    _assert_same_files(flow_run["h5"], out)
    # ... and the killed run's temporary file is gone (removed by the re-run, which logs it)
    assert list(out.parent.glob(".flow.h5.*")) == []
    assert "left by process" in b"".join(chunks).decode(errors="replace")


# ---------------------------------------------------------------------------------------------
# patches


def test_patches_landmarks_regions_and_halves(faces_run, params, tmp_path):
    summary = run_patches(faces_run["h5"], section("patches", params), tmp_path / "patches.h5",
                          tmp_path / "patches_failures.csv", LOCAL)
    assert summary.n_written == 6 and summary.fixes == {}
    pc = FeatureCache(tmp_path / "patches.h5", "patches", expect_params={"patch_size": 20})
    fc = FeatureCache(faces_run["h5"], "faces")
    assert pc.sample_ids == fc.sample_ids
    assert pc.datasets["landmarks68"][0] == (6, 68, 2)
    assert pc.datasets["halves/eyes"][0] == (6, 48, 96, 3)
    for name in REGIONS:
        assert pc.datasets[f"regions/{name}"][0] == (6, 20, 20, 3)
    from pipeline.facedetect import eye_centres

    for i in range(len(pc)):
        crop = fc.read("crop96/apex", i)
        lm68 = pc.read("landmarks68", i)
        # dlib's eyes on the apex crop agree with MediaPipe's on the onset (rigid motion only).
        mp = fc.read("landmarks", i) * 96 - 0.5
        if np.isfinite(mp).all():
            for a, b in zip(eye_centres(lm68), eye_centres(mp), strict=True):
                assert np.linalg.norm(a - b) < 3.0               # pixels of the 96 px crop
        centres = pc.read("region_centres", i)
        k = list(REGIONS).index("mouth")
        np.testing.assert_allclose(centres[k], lm68[48:68].mean(axis=0), atol=1e-4)
        mouth = cv2.getRectSubPix(crop, (20, 20), tuple(float(v) for v in centres[k]))
        np.testing.assert_array_equal(pc.read("regions/mouth", i), mouth)
        np.testing.assert_array_equal(pc.read("halves/eyes", i), crop[:48])
        np.testing.assert_array_equal(pc.read("halves/mouth", i), crop[48:])
    with pytest.raises(CacheError, match=r"no apex crops of size 112"):
        run_patches(faces_run["h5"], section("patches", params) | {"size": 112},
                    tmp_path / "p.h5", tmp_path / "p.csv", LOCAL)


def test_patches_landmarks_on_magnified_frames(faces_run, params, tmp_path):
    from pipeline.features.cache import CacheWriter

    fc = FeatureCache(faces_run["h5"], "faces")
    mag = tmp_path / "magnified.h5"
    # stand-in magnified frames: α 5 is the apex crop itself, α 7.5 the crop at 64 px
    with CacheWriter(mag, "magnified", {"synthetic": True}) as w:
        for i, sid in enumerate(fc.sample_ids):
            crop = fc.read("crop96/apex", i)
            w.append(sid, {"frames/stmemm/alpha5/apex": crop,
                           "frames/stmemm/alpha7.5/apex": cv2.resize(
                               crop, (64, 64), interpolation=cv2.INTER_AREA)})
    cfg = section("patches", params) | {"magnified": {"stmemm": [5, 7.5]}}
    run_patches(faces_run["h5"], cfg, tmp_path / "patches.h5", tmp_path / "p.csv", LOCAL,
                magnified_path=mag)
    pc = FeatureCache(tmp_path / "patches.h5", "patches")
    assert pc.datasets["magnified/stmemm/alpha5/landmarks68"][0] == (len(pc), 68, 2)
    for i in range(len(pc)):
        # the same frame gives the same points; the half-size frame about the scaled points
        np.testing.assert_array_equal(pc.read("magnified/stmemm/alpha5/landmarks68", i),
                                      pc.read("landmarks68", i))
        small = pc.read("magnified/stmemm/alpha7.5/landmarks68", i)
        scaled = (pc.read("landmarks68", i) + 0.5) * 64 / 96 - 0.5
        assert np.abs(small - scaled).mean() < 1.5                  # pixels of the 64 px frame
        np.testing.assert_allclose(pc.read("magnified/stmemm/alpha7.5/box", i),
                                   pc.read("box", i) * 64 / 96, rtol=1e-6)
    with pytest.raises(ValueError, match="no magnified.h5 was given"):
        run_patches(faces_run["h5"], cfg, tmp_path / "q.h5", tmp_path / "q.csv", LOCAL)
    with pytest.raises(CacheError, match=r"alpha10/apex"):
        run_patches(faces_run["h5"], cfg | {"magnified": {"stmemm": [10]}}, tmp_path / "q.h5",
                    tmp_path / "q.csv", LOCAL, magnified_path=mag)
    partial = tmp_path / "partial.h5"
    with CacheWriter(partial, "magnified", {"synthetic": True}) as w:
        w.append(fc.sample_ids[0], {"frames/stmemm/alpha5/apex": fc.read("crop96/apex", 0)})
    with pytest.raises(CacheError, match="samples of .* are missing"):
        run_patches(faces_run["h5"], cfg | {"magnified": {"stmemm": [5]}}, tmp_path / "q.h5",
                    tmp_path / "q.csv", LOCAL, magnified_path=partial)
    assert not (tmp_path / "q.h5").exists()


def test_patches_use_the_fallback_box_when_dlib_finds_no_face():
    from pipeline.features import patches

    blank = np.full((96, 96, 3), 128, np.uint8)
    done = patches._process(Item("x", blank), 20, (0.1, 0.2, 0.9, 0.8))
    assert done.fixes == ("fallback_box",) and done.arrays["fallback_box"] == 1
    np.testing.assert_allclose(done.arrays["box"], [9.5, 19.0, 85.5, 76.0])


# ---------------------------------------------------------------------------------------------
# readers


def test_cache_dataset_reads_only_the_batch_rows(flow_run, faces_run, monkeypatch):
    import torch

    fl, fc = FeatureCache(flow_run["h5"], "flow"), FeatureCache(faces_run["h5"], "faces")
    ids = list(reversed(fl.sample_ids))
    ds = CacheDataset({"flow": (fl, "onset_apex"), "apex": (fc, "crop64/apex")}, ids,
                      targets=np.arange(len(ids)))
    calls = []
    for cache in (fl, fc):
        orig = cache.read
        monkeypatch.setattr(cache, "read", lambda n, r, _o=orig: calls.append((n, r)) or _o(n, r))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, [1, 3]), batch_size=2)
    batch = next(iter(loader))
    assert batch["flow"].shape == (2, 64, 64, 3) and batch["apex"].dtype == torch.uint8
    assert sorted(calls) == sorted([("onset_apex", fl.index_of(ids[1])),
                                    ("onset_apex", fl.index_of(ids[3])),
                                    ("crop64/apex", fc.index_of(ids[1])),
                                    ("crop64/apex", fc.index_of(ids[3]))])
    np.testing.assert_array_equal(batch["flow"][1].numpy(),
                                  FeatureCache(flow_run["h5"], "flow").read(
                                      "onset_apex", fl.index_of(ids[3])))
    with pytest.raises(CacheError, match="built with other parameters"):
        FeatureCache(flow_run["h5"], "flow", expect_params={"size": 112})
    with pytest.raises(CacheError, match="samples missing"):
        CacheDataset({"flow": (fl, "onset_apex")}, ["nope/x/y"])

"""Face detectors on a real photo: both find the face, eye centres agree between them."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline import facedetect


@pytest.fixture(scope="module")
def photo(faces_dir):
    img = cv2.imread(str(faces_dir / "neutral_front" / "001_03.jpg"))
    assert img is not None
    return cv2.cvtColor(cv2.resize(img, (450, 450)), cv2.COLOR_BGR2RGB)


def test_mediapipe_and_dlib_agree_on_eye_centres(photo, landmarker_model):
    with facedetect.FaceLandmarker(landmarker_model) as mp_lm:
        mp_pts = mp_lm(photo)
    dl_pts = facedetect.DlibLandmarker()(photo)
    assert mp_pts.shape == (478, 2) and dl_pts.shape == (68, 2)
    for a, b in zip(facedetect.eye_centres(mp_pts), facedetect.eye_centres(dl_pts), strict=True):
        assert np.linalg.norm(a - b) < 6.0          # pixels, on a 450 px photo
    right, left = facedetect.eye_centres(mp_pts)
    assert right[0] < left[0]                       # subject's right eye on the image left


def test_no_face_and_bad_input(landmarker_model):
    blank = np.full((200, 200, 3), 128, np.uint8)
    with facedetect.FaceLandmarker(landmarker_model) as lm:
        assert lm(blank) is None
    assert facedetect.DlibLandmarker()(blank) is None
    with pytest.raises(ValueError, match="uint8"):
        facedetect.DlibLandmarker()(blank.astype(np.float32))
    with pytest.raises(ValueError, match="unknown face detector"):
        facedetect.make_landmarker("haar")
    with pytest.raises(ValueError, match="expected 478/468 or 68"):
        facedetect.eye_centres(np.zeros((5, 2)))


def test_landmarker_bundle_missing_gives_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(facedetect.assets, "download",
                        lambda url, dest, sha: (_ for _ in ()).throw(
                            facedetect.assets.AssetError(f"{url}: download failed (offline)")))
    with pytest.raises(facedetect.assets.AssetError) as err:
        facedetect.FaceLandmarker(tmp_path / "nope.task")
    assert "nope.task" in str(err.value) and "storage.googleapis.com" in str(err.value)

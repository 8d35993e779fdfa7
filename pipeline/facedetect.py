"""Face detection and landmarks: MediaPipe Face Landmarker (Tasks API) and dlib.

Two detectors behind one interface, :class:`FaceLandmarker` (478 MediaPipe points) and
:class:`DlibLandmarker` (HOG detector + the 68-point iBUG predictor shipped by the
``face-recognition-models`` package).  Both take an RGB ``uint8`` image ``(H, W, 3)`` and return
landmarks in pixels, or ``None`` when no face is found.  Eye centres, used for alignment, come from
:func:`eye_centres`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import numpy as np

from pipeline import assets

log = logging.getLogger("facedetect")

# MediaPipe 478-point mesh: eye contour indices (subject's right eye is on the image left).
MP_RIGHT_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
MP_LEFT_EYE = (362, 382, 381, 380, 374, 373, 390, 249, 263, 466, 388, 387, 386, 385, 384, 398)
# iBUG 68-point scheme (0-based).
DLIB_RIGHT_EYE = tuple(range(36, 42))
DLIB_LEFT_EYE = tuple(range(42, 48))
#: Points that move little with the 12 CD6ME AUs, for registering one frame's head pose to
#: another's (a similarity transform, :func:`pipeline.features.align.similarity_transform`): the
#: nose ridge, the eye corners, the forehead midline and the face sides at the ear line.  Eye
#: corners move slightly with AU6/AU7, the nose tip with AU9; the least-squares fit averages that.
MP_STABLE = (6, 168, 197, 195, 5, 4, 33, 133, 362, 263, 10, 151, 9, 234, 454, 127, 356)
DLIB_STABLE = (27, 28, 29, 30, 36, 39, 42, 45, 0, 16, 1, 15)
#: Chin (menton) point of each scheme.
MP_CHIN = 152
DLIB_CHIN = 8


class FaceLandmarker:
    """MediaPipe Face Landmarker, IMAGE mode, one face.

    Parameters
    ----------
    model_path : path, optional
        ``face_landmarker.task``; ``None`` → ``$MER_LANDMARKER_MODEL``; the file is verified by
        SHA-256 and downloaded from its official URL when no local copy verifies
        (:data:`pipeline.assets.FACE_LANDMARKER`).

    Raises
    ------
    pipeline.assets.AssetError
        When the bundle can be had neither locally nor from its URL.
    """

    n_points = 478

    def __init__(self, model_path: str | os.PathLike | None = None, allow_download: bool = True):
        from mediapipe.tasks import python as mp_tasks
        from mediapipe.tasks.python import vision

        local = model_path or os.environ.get("MER_LANDMARKER_MODEL")
        path = assets.resolve(assets.FACE_LANDMARKER, local, allow_download=allow_download)
        options = vision.FaceLandmarkerOptions(
            base_options=mp_tasks.BaseOptions(model_asset_path=str(path)),
            running_mode=vision.RunningMode.IMAGE,
            num_faces=1,
        )
        self._landmarker = vision.FaceLandmarker.create_from_options(options)

    def __call__(self, image: np.ndarray) -> np.ndarray | None:
        """Landmarks ``(478, 2) float32`` in pixels (x, y) of ``image``, or ``None``."""
        import mediapipe as mp

        image = _as_rgb(image)
        result = self._landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=image))
        if not result.face_landmarks:
            return None
        h, w = image.shape[:2]
        pts = np.array([(p.x * w, p.y * h) for p in result.face_landmarks[0]], dtype=np.float32)
        return pts

    def close(self) -> None:
        if getattr(self, "_landmarker", None) is not None:
            self._landmarker.close()
            self._landmarker = None

    def __enter__(self) -> FaceLandmarker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # MediaPipe's own finaliser is noisy at interpreter exit
        try:
            self.close()
        except Exception:  # noqa: BLE001 - best effort at shutdown
            pass


def dlib_model_path(filename: str) -> Path:
    """Path of the model file ``filename`` inside the installed ``face-recognition-models``.

    Located without importing the package (its import needs ``pkg_resources``).  Files:
    ``shape_predictor_68_face_landmarks.dat``, ``shape_predictor_5_face_landmarks.dat``,
    ``dlib_face_recognition_resnet_model_v1.dat``, ``mmod_human_face_detector.dat``.

    Raises
    ------
    FileNotFoundError
        If the package or the file is not installed.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the face-recognition-models package is not installed")
    for loc in spec.submodule_search_locations:
        cand = Path(loc) / "models" / filename
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"{filename} not found in face-recognition-models")


def dlib_predictor_path() -> Path:
    """Path of ``shape_predictor_68_face_landmarks.dat`` (:func:`dlib_model_path`)."""
    return dlib_model_path("shape_predictor_68_face_landmarks.dat")


class DlibLandmarker:
    """dlib HOG frontal face detector + the 68-point iBUG shape predictor.

    Parameters
    ----------
    upsample : int
        Times the detector upsamples the image (1 finds faces down to about 40 px).
    """

    n_points = 68

    def __init__(self, upsample: int = 1):
        import dlib

        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(dlib_predictor_path()))
        self.upsample = upsample

    def detect(self, image: np.ndarray) -> tuple[float, float, float, float] | None:
        """Largest face box ``(left, top, right, bottom)`` in pixels, or ``None``."""
        rects = self._detector(_as_rgb(image), self.upsample)
        if len(rects) == 0:
            return None
        r = max(rects, key=lambda r: r.width() * r.height())
        return float(r.left()), float(r.top()), float(r.right()), float(r.bottom())

    def landmarks(self, image: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
        """68 landmarks ``(68, 2) float32`` (pixels) inside ``box`` (left, top, right, bottom)."""
        import dlib

        rect = dlib.rectangle(*(int(round(v)) for v in box))
        shape = self._predictor(_as_rgb(image), rect)
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)

    def __call__(self, image: np.ndarray) -> np.ndarray | None:
        """Landmarks ``(68, 2) float32`` in pixels, or ``None`` when no face is detected."""
        box = self.detect(image)
        return None if box is None else self.landmarks(image, box)

    def close(self) -> None:
        pass

    def __enter__(self) -> DlibLandmarker:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def make_landmarker(kind: str, model_path: str | os.PathLike | None = None):
    """``"mediapipe"`` → :class:`FaceLandmarker`, ``"dlib"`` → :class:`DlibLandmarker`.

    Raises
    ------
    ValueError
        For any other kind.
    """
    if kind == "mediapipe":
        return FaceLandmarker(model_path)
    if kind == "dlib":
        return DlibLandmarker()
    raise ValueError(f"unknown face detector {kind!r}; expected 'mediapipe' or 'dlib'")


def eye_centres(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centres of the subject's right and left eye, each ``(2,) float32`` pixels.

    Works on 478-point MediaPipe and 68-point iBUG landmarks (the right eye is on the image left).

    Raises
    ------
    ValueError
        For any other number of points.
    """
    n = len(landmarks)
    if n >= 468:
        right, left = MP_RIGHT_EYE, MP_LEFT_EYE
    elif n == 68:
        right, left = DLIB_RIGHT_EYE, DLIB_LEFT_EYE
    else:
        raise ValueError(f"eye_centres: expected 478/468 or 68 landmarks, got {n}")
    pts = np.asarray(landmarks, dtype=np.float32)
    return pts[list(right)].mean(axis=0), pts[list(left)].mean(axis=0)


def stable_indices(n_points: int) -> tuple[int, ...]:
    """Indices of the rigid-registration points (:data:`MP_STABLE` or :data:`DLIB_STABLE`).

    Raises
    ------
    ValueError
        For a scheme other than 478/468 (MediaPipe) or 68 (iBUG) points.
    """
    if n_points >= 468:
        return MP_STABLE
    if n_points == 68:
        return DLIB_STABLE
    raise ValueError(f"stable_indices: expected 478/468 or 68 landmarks, got {n_points}")


def chin_index(n_points: int) -> int:
    """Index of the chin (menton) point: 152 (MediaPipe) or 8 (iBUG 68).

    Raises
    ------
    ValueError
        For another scheme.
    """
    if n_points >= 468:
        return MP_CHIN
    if n_points == 68:
        return DLIB_CHIN
    raise ValueError(f"chin_index: expected 478/468 or 68 landmarks, got {n_points}")


def _as_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {image.shape}")
    return np.ascontiguousarray(image)

"""Where the stand-in's face photos come from, and which of them are usable.

The photos are the 102 neutral frontal images of the Face Research Lab London Set (DeBruine &
Jones 2017, CC BY 4.0).  They are never part of the repository.  In order, the build uses:

1. the configured folder (``standin.faces_dir``),
2. else ``$MER_FACES_DIR``,
3. else a download into the asset cache (``pipeline.assets.cache_dir()/faces``) from the pinned
   URLs of the shipped manifest ``faces_manifest.csv`` (file, identity, url, sha256, bytes), each
   file checked against its SHA-256.

A folder holds the photos at the manifest's relative paths (``neutral_front/001_03.jpg`` …) or
any other JPEG/PNG photos (identity = file stem).  Each photo's landmarks come from MediaPipe's
Face Landmarker; a photo without a detectable face is skipped and reported.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline import assets
from pipeline.params import env_or

log = logging.getLogger("standin")

#: The shipped manifest of the London-set photos.
MANIFEST = Path(__file__).with_name("faces_manifest.csv")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class StandinError(RuntimeError):
    """The stand-in cannot be built: missing or unusable photos, bad parameters."""


@dataclass(frozen=True)
class ManifestEntry:
    """One photo of the manifest: relative path, identity, pinned URL, SHA-256, size in bytes."""

    file: str
    identity: str
    url: str
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Photo:
    """A photo on disk: path relative to its folder (POSIX), identity, absolute path."""

    file: str
    identity: str
    path: Path


def load_manifest(path: str | os.PathLike = MANIFEST) -> list[ManifestEntry]:
    """Read a manifest CSV with columns ``file, identity, url, sha256, bytes``.

    Raises
    ------
    StandinError
        If the file is missing or lacks a column.
    """
    path = Path(path)
    if not path.is_file():
        raise StandinError(f"{path}: face photo manifest not found")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        need = {"file", "identity", "url", "sha256", "bytes"}
        missing = need - set(reader.fieldnames or ())
        if missing:
            raise StandinError(f"{path}: manifest lacks the columns {sorted(missing)}")
        return [ManifestEntry(r["file"], r["identity"], r["url"], r["sha256"].lower(),
                              int(r["bytes"])) for r in reader]


def download_faces(dest: str | os.PathLike, entries: list[ManifestEntry]) -> Path:
    """Make ``dest`` hold every manifest photo, downloading those missing or corrupt.

    Parameters
    ----------
    dest : path
        Folder; photos land at ``dest / entry.file``.
    entries : list of ManifestEntry

    Returns
    -------
    Path
        ``dest``.

    Raises
    ------
    pipeline.assets.AssetError
        Naming the photo and its URL when a download fails or its SHA-256 does not match (the
        file is then not left in ``dest``).
    """
    dest = Path(dest)
    fetched = 0
    for e in entries:
        target = dest / e.file
        if target.is_file() and assets.sha256_of(target) == e.sha256:
            continue
        try:
            assets.download(e.url, target, e.sha256)
        except assets.AssetError as exc:
            raise assets.AssetError(f"face photo {e.file} (identity {e.identity}): {exc}") from exc
        fetched += 1
    if fetched:
        log.info("downloaded %d face photos into %s", fetched, dest)
    return dest


def resolve_faces_dir(configured: str | os.PathLike | None = None, allow_download: bool = True,
                      manifest: str | os.PathLike = MANIFEST) -> Path:
    """The folder of face photos: configured, else ``$MER_FACES_DIR``, else downloaded.

    Raises
    ------
    StandinError
        If a configured folder does not exist, or none is configured and downloading is off.
    pipeline.assets.AssetError
        If the download fails.
    """
    local = env_or(str(configured) if configured is not None else None, "MER_FACES_DIR")
    if local:
        p = Path(local)
        if not p.is_dir():
            raise StandinError(f"{p}: face photo folder not found (set standin.faces_dir or "
                               "MER_FACES_DIR to the folder holding neutral_front/001_03.jpg …)")
        return p
    if not allow_download:
        raise StandinError("no face photo folder configured (standin.faces_dir, MER_FACES_DIR) "
                           "and downloading is disabled")
    return download_faces(assets.cache_dir() / "faces", load_manifest(manifest))


def list_photos(folder: str | os.PathLike, manifest: str | os.PathLike = MANIFEST) -> list[Photo]:
    """Every JPEG/PNG under ``folder`` (recursively), sorted by relative path.

    The identity is the manifest's for a file at a manifest path, else the file stem.

    Raises
    ------
    StandinError
        If the folder does not exist or holds no photo.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise StandinError(f"{folder}: face photo folder not found")
    try:
        ids = {e.file: e.identity for e in load_manifest(manifest)}
    except StandinError:
        ids = {}
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise StandinError(f"{folder}: no face photos (*.jpg, *.jpeg, *.png) found")
    out = []
    for p in files:
        rel = p.relative_to(folder).as_posix()
        out.append(Photo(file=rel, identity=ids.get(rel, p.stem), path=p))
    return out


def read_rgb(path: str | os.PathLike) -> np.ndarray | None:
    """A photo as RGB ``(H, W, 3) uint8``, or ``None`` if it cannot be decoded."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        return None
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _landmark_batch(paths: list[str], model: str | None) -> list[tuple[np.ndarray | None, str]]:
    """Landmarks of each photo, or ``(None, reason)``; one MediaPipe instance per batch."""
    from pipeline.facedetect import FaceLandmarker

    out: list[tuple[np.ndarray | None, str]] = []
    with FaceLandmarker(model) as lm:
        for p in paths:
            img = read_rgb(p)
            if img is None:
                out.append((None, "unreadable image"))
                continue
            pts = lm(img)
            out.append((pts, "") if pts is not None else (None, "no face found"))
    return out


def select_identities(photos: list[Photo], needed: int, landmarker_model: str | os.PathLike | None,
                      n_jobs: int = 1, min_iod_px: float = 0.0) -> tuple[list[tuple[Photo, np.ndarray]], list[dict]]:
    """The first ``needed`` usable photos of ``photos`` (in the given order) with landmarks.

    Photos are tried in order, in batches of what is still missing, so no more photos are
    landmarked than necessary; a photo that cannot be decoded, where no face is found, or whose
    face is too small is skipped and reported.

    Parameters
    ----------
    photos : list of Photo
        In the order identities should be taken (the build shuffles them with the seed).
    needed : int
    landmarker_model : path or None
        ``face_landmarker.task``; ``None``: ``$MER_LANDMARKER_MODEL``, else download.
    n_jobs : int
        Worker processes for landmarking.
    min_iod_px : float
        Smallest usable inter-ocular distance, pixels.

    Returns
    -------
    usable : list of (Photo, ndarray of shape (478, 2) float32)
    skipped : list of dict
        ``{"file", "identity", "reason"}`` per skipped photo.

    Raises
    ------
    StandinError
        If no photo at all is usable (naming the folder).
    """
    from joblib import Parallel, delayed

    from pipeline.facedetect import eye_centres

    model = str(landmarker_model) if landmarker_model else None
    usable: list[tuple[Photo, np.ndarray]] = []
    skipped: list[dict] = []
    pos = 0
    while len(usable) < needed and pos < len(photos):
        batch = photos[pos:pos + (needed - len(usable))]
        pos += len(batch)
        paths = [str(p.path) for p in batch]
        jobs = max(1, min(n_jobs if n_jobs > 0 else (os.cpu_count() or 1), len(batch) // 8))
        if jobs > 1:
            chunks = [paths[i::jobs] for i in range(jobs)]
            parts = Parallel(n_jobs=jobs)(delayed(_landmark_batch)(c, model) for c in chunks)
            results: list = [None] * len(paths)
            for i, part in enumerate(parts):
                results[i::jobs] = part
        else:
            results = _landmark_batch(paths, model)
        for photo, (pts, reason) in zip(batch, results, strict=True):
            if pts is not None:
                right, left = eye_centres(pts)
                iod = float(np.hypot(*(left - right)))
                if iod < min_iod_px:
                    pts, reason = None, f"face too small (inter-ocular distance {iod:.0f} px)"
            if pts is None:
                log.warning("face photo %s skipped: %s", photo.path, reason)
                skipped.append({"file": photo.file, "identity": photo.identity, "reason": reason})
            else:
                usable.append((photo, np.asarray(pts, np.float32)))
    if not usable:
        folder = _common_folder(photos)
        raise StandinError(f"{folder}: no usable face photo among {len(photos)} files "
                           f"(first problems: {skipped[:3]})")
    return usable, skipped


def _common_folder(photos: list[Photo]) -> str:
    if not photos:
        return "<no photos>"
    root = photos[0].path
    for _ in range(len(Path(photos[0].file).parts)):
        root = root.parent
    return str(root)

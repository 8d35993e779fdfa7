"""Resolving external files by SHA-256: a configured local copy, else a download.

The pipeline ships no model weights and no photos.  Each external file is named by its official
URL and SHA-256 (facts, kept in this module or in a shipped manifest); :func:`resolve` returns a
verified local path, trying in order: the configured path, the user cache
(``$MER_CACHE_DIR`` or ``~/.cache/mer-pipeline/assets``), then a download from the URL into that
cache.  A file whose checksum does not match is never used.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pipeline.io import atomic_path

log = logging.getLogger("assets")


class AssetError(RuntimeError):
    """An external file could be found neither locally nor at its URL, or its checksum is wrong."""


@dataclass(frozen=True)
class Asset:
    """An external file: its file name, SHA-256 (hex) and official URL."""

    name: str
    sha256: str
    url: str


FACE_LANDMARKER = Asset(
    name="face_landmarker.task",
    sha256="64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff",
    url=(
        "https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/"
        "float16/1/face_landmarker.task"
    ),
)


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def cache_dir() -> Path:
    """The user cache for downloaded assets (``$MER_CACHE_DIR`` or ``~/.cache/mer-pipeline/assets``)."""
    return Path(os.environ.get("MER_CACHE_DIR") or Path.home() / ".cache" / "mer-pipeline" / "assets")


def download(url: str, dest: str | os.PathLike, sha256: str, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` atomically and check its SHA-256.

    Raises
    ------
    AssetError
        On a network error or a checksum mismatch (``dest`` is then not created).
    """
    dest = Path(dest)
    try:
        with atomic_path(dest) as tmp:
            with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
                while block := resp.read(1 << 20):
                    out.write(block)
            got = sha256_of(tmp)
            if got != sha256:
                raise AssetError(f"{url}: SHA-256 {got} does not match the expected {sha256}")
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise AssetError(f"{url}: download failed ({exc})") from exc
    return dest


def resolve(asset: Asset, local: str | os.PathLike | None = None, allow_download: bool = True) -> Path:
    """A verified local path to ``asset``.

    Parameters
    ----------
    asset : Asset
    local : path, optional
        A configured copy: a file, or a folder holding ``asset.name``.
    allow_download : bool
        Whether to try the official URL when no local copy verifies.

    Raises
    ------
    AssetError
        Naming the local path tried (and why it failed) and the URL, when neither gives the file.
    """
    tried = []
    candidates = []
    if local:
        p = Path(local)
        candidates.append(p / asset.name if p.is_dir() else p)
    candidates.append(cache_dir() / asset.name)
    for cand in candidates:
        if not cand.is_file():
            tried.append(f"{cand} (not found)")
            continue
        got = sha256_of(cand)
        if got == asset.sha256:
            return cand
        tried.append(f"{cand} (SHA-256 {got[:12]}… is not the expected {asset.sha256[:12]}…)")
    if allow_download:
        dest = cache_dir() / asset.name
        try:
            log.info("downloading %s from %s", asset.name, asset.url)
            return download(asset.url, dest, asset.sha256)
        except AssetError as exc:
            tried.append(str(exc))
    raise AssetError(
        f"{asset.name} is needed (SHA-256 {asset.sha256}); tried: " + "; ".join(tried)
        + f". Give a local copy (parameter or environment variable) or allow the download from {asset.url}"
    )

"""Shared fixtures: the face photos, the MediaPipe bundle, and a tiny stand-in build.

``faces_dir``, ``landmarker_model`` and ``realsheets_dir`` come from ``$MER_FACES_DIR`` /
``$MER_LANDMARKER_MODEL`` / ``$MER_REALSHEETS_DIR``, else from the workplace's ``../shared`` folder
beside the repository (tests/shared_data.py).  When neither exists the tests that need them are
skipped on a developer machine and fail on CI (``CI=true``), where they must run.

Every test runs torch on one intra-op thread (``_one_torch_thread``): the tensors are small, the
results do not depend on the machine's core count, and two threads oversubscribe a busy 2-core
machine badly (up to 10x slower steps measured).  Stages a test runs in a subprocess keep their
own setting.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from shared_data import external


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    """Folder of the London-set photos (holding ``neutral_front/001_03.jpg`` …)."""
    return external("MER_FACES_DIR", "faces")


@pytest.fixture(scope="session")
def landmarker_model() -> Path:
    """MediaPipe ``face_landmarker.task``."""
    return external("MER_LANDMARKER_MODEL", "models/face_landmarker.task")


@pytest.fixture(scope="session")
def realsheets_dir() -> Path:
    """The public copies of the real annotation sheets (``../shared/realsheets``)."""
    return external("MER_REALSHEETS_DIR", "realsheets")


@pytest.fixture(scope="session")
def standin_tiny(tmp_path_factory, faces_dir, landmarker_model) -> Path:
    """The stand-in's ``tiny`` profile (seed 0), built once per test session.

    Returns the output folder: ``<key>/`` database roots, ``ground_truth/``, ``contact_sheets/``.
    Treat it as read-only: other tests share it.
    """
    from pipeline.standin import build_standin

    out = tmp_path_factory.mktemp("standin") / "tiny"
    build_standin(out, "tiny", seed=0, faces_dir=faces_dir, landmarker_model=landmarker_model,
                  n_jobs=1)
    return out

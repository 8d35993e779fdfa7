"""Where the tests find what lives outside the repository, and what happens when it is missing.

The face photos, the MediaPipe bundle and the public annotation sheets come from an environment
variable, else from the workplace's ``../shared`` folder beside the repository; an optional
package (grad-cam, installed by ``./mer`` without its dependencies) is imported by name.  When one
is missing, a test is skipped on a developer machine and fails on CI (``CI=true``), where all of
them must be present.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def on_ci() -> bool:
    """True when ``$CI`` is ``true`` (any case): missing test data fails instead of skipping."""
    return os.environ.get("CI", "").strip().lower() == "true"


def _missing(msg: str):
    if on_ci():
        pytest.fail(msg)
    pytest.skip(msg)


def shared_path(env_var: str, shared_rel: str) -> Path:
    """``$env_var`` if set, else ``<repo>/../shared/<shared_rel>`` (not checked)."""
    value = os.environ.get(env_var)
    return Path(value) if value else REPO.parent / "shared" / shared_rel


def external(env_var: str, shared_rel: str) -> Path:
    """:func:`shared_path`, skipping the calling test (failing it under ``CI=true``) if absent."""
    path = shared_path(env_var, shared_rel)
    if not path.exists():
        _missing(f"{path} not found ({env_var} is {'set' if os.environ.get(env_var) else 'not set'}"
                 f"); set {env_var} to a local copy")
    return path


def require_module(name: str, hint: str) -> ModuleType:
    """Import ``name``; skip the calling test without it (fail it under ``CI=true``)."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        _missing(f"cannot import {name} ({exc}); {hint}")
        raise  # pragma: no cover - pytest.skip / pytest.fail raise

"""requirements.lock agrees with pyproject.toml, and the environment is the lock.

``./mer`` installs requirements.lock (every package pinned, with hashes; written by
``tools/update-lock``) and requirements-nodeps.txt, then the project with ``--no-deps``; so a
requirement added to or changed in pyproject.toml reaches nobody until the lock is regenerated.
These tests fail when the two disagree: every dependency of pyproject.toml (and of its ``test``
extra, and of each extra it requests, such as ``dask[distributed]``) must be pinned in the lock at
a version its specifier allows.
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
NODEPS = ROOT / "requirements-nodeps.txt"
#: The platform the lock is compiled for (tools/update-lock: Linux x86_64, Python 3.11).
TARGET = {**default_environment(), "python_version": "3.11", "sys_platform": "linux",
          "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
          "implementation_name": "cpython", "platform_python_implementation": "CPython"}
#: A second OpenCV build beside opencv-contrib-python (MediaPipe's) shadows its cv2 module.
FORBIDDEN = ("opencv-python", "opencv-python-headless", "opencv-contrib-python-headless")


def pins(text: str, source: str) -> dict[str, tuple[Version, int]]:
    """The ``name==version`` entries of a pip requirements file with their hash counts.

    Parameters
    ----------
    text : str
        The file's text (pip's format: ``name==version \\`` then ``--hash=sha256:…`` lines).
    source : str
        The file's name, for the errors.

    Returns
    -------
    dict
        Canonical package name → (pinned version, number of ``--hash`` options).

    Raises
    ------
    ValueError
        An entry that is not pinned with ``==``, or a package listed twice.
    """
    out: dict[str, tuple[Version, int]] = {}
    for entry in re.sub(r"\\\n", " ", text).splitlines():
        entry = entry.split("#", 1)[0].strip()
        if not entry:
            continue
        spec, _, options = entry.partition(" --")
        req = Requirement(spec.strip())
        exact = [s for s in req.specifier if s.operator == "=="]
        if len(exact) != 1 or len(req.specifier) != 1 or "*" in exact[0].version:
            raise ValueError(f"{source}: {spec.strip()!r} is not pinned with ==")
        name = canonicalize_name(req.name)
        if name in out:
            raise ValueError(f"{source}: {req.name} is listed twice")
        out[name] = (Version(exact[0].version), len(re.findall(r"--hash=sha256:[0-9a-f]{64}",
                                                               "--" + options)))
    return out


def disagreements(pyproject: dict, locked: dict[str, tuple[Version, int]]) -> list[str]:
    """The requirements of ``pyproject`` (dependencies, ``test`` extra) the lock does not meet.

    A requirement whose marker is false on the lock's target (Linux x86_64, Python 3.11) is not
    needed.  One line per problem: missing from the lock, or pinned outside its specifier.
    """
    project = pyproject["project"]
    wanted = [*project["dependencies"], *project.get("optional-dependencies", {}).get("test", [])]
    problems = []
    for text in wanted:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate(TARGET):
            continue
        name = canonicalize_name(req.name)
        if name not in locked:
            problems.append(f"{text}: not in requirements.lock")
        elif not req.specifier.contains(locked[name][0], prereleases=True):
            problems.append(f"{text}: requirements.lock pins {req.name}=={locked[name][0]}")
    return problems


@pytest.fixture(scope="module")
def locked() -> dict[str, tuple[Version, int]]:
    return pins(LOCK.read_text(), LOCK.name)


@pytest.fixture(scope="module")
def nodeps() -> dict[str, tuple[Version, int]]:
    return pins(NODEPS.read_text(), NODEPS.name)


def test_pyproject_and_lock_agree(locked):
    problems = disagreements(tomllib.loads((ROOT / "pyproject.toml").read_text()), locked)
    assert not problems, ("pyproject.toml and requirements.lock disagree (run tools/update-lock):\n"
                          + "\n".join(problems))


def test_disagreements_are_found():
    pyproject = {"project": {"dependencies": ["numpy>=2.0,<3", "scipy>=1.13", "h5py",
                                              "pywin32; sys_platform == 'win32'"],
                             "optional-dependencies": {"test": ["pytest>=8"]}}}
    lock = pins("numpy==1.26.4 \\\n    --hash=sha256:" + "0" * 64 + "\nscipy==1.17.1\n"
                "pytest==9.0.2\n", "lock")
    assert disagreements(pyproject, lock) == [
        "numpy>=2.0,<3: requirements.lock pins numpy==1.26.4", "h5py: not in requirements.lock"]
    assert lock["numpy"] == (Version("1.26.4"), 1)
    with pytest.raises(ValueError, match=r"lock: 'numpy>=2' is not pinned with =="):
        pins("numpy>=2\n", "lock")


def test_extras_requested_by_pyproject_are_in_the_lock(locked):
    # dask[distributed]: the packages the extra adds must be pinned too (from dask's metadata).
    missing = []
    for text in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        req = Requirement(text)
        for extra in req.extras:
            for dep in map(Requirement, importlib.metadata.requires(req.name) or []):
                env = {**TARGET, "extra": extra}
                if dep.marker is not None and dep.marker.evaluate(env) \
                        and "extra" in str(dep.marker) \
                        and canonicalize_name(dep.name) not in locked:
                    missing.append(f"{req.name}[{extra}] needs {dep}")
    assert not missing, "\n".join(missing)


def test_every_locked_package_has_hashes_and_no_second_opencv(locked, nodeps):
    unhashed = sorted(n for n, (_, n_hashes) in {**locked, **nodeps}.items() if n_hashes == 0)
    assert not unhashed, f"entries without --hash (pip --require-hashes refuses them): {unhashed}"
    assert "opencv-contrib-python" in locked
    assert not [n for n in FORBIDDEN if n in locked]
    assert set(nodeps) == {"grad-cam", "ttach"}
    assert not set(nodeps) & set(locked), "a package is both locked and installed without deps"


def test_the_environment_is_the_lock(locked, nodeps):
    """The packages installed here are the pinned ones (./mer reinstalls when the lock changes)."""
    wrong = []
    for name, (version, _) in {**locked, **nodeps}.items():
        try:
            have = Version(importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            wrong.append(f"{name}: not installed (lock: {version})")
            continue
        if have != version:
            wrong.append(f"{name}: {have} installed, lock: {version}")
    assert not wrong, ("this environment was not installed from requirements.lock (./mer "
                       "installs it):\n" + "\n".join(wrong))

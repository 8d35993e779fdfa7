"""Atomic file and folder writes, JSON helpers and stage logging.

Nothing a stage writes may look complete when the stage was interrupted: every output is written
under a temporary name in the same folder and renamed into place (``os.replace``) at the end.
Temporary names carry the host and process id (``.<name>.tmp-<host>-<pid>-<random>``); a process
killed outright (SIGKILL, or SIGTERM without a handler) cannot remove its own, so the next write of
the same output removes those of processes on this host that no longer run, and logs it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def setup_logging(level: int = logging.INFO) -> None:
    """One line per message on stderr: ``stage-name: message``."""
    logging.basicConfig(level=level, stream=sys.stderr, format="%(name)s: %(message)s", force=True)


log = logging.getLogger("io")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}.tmp-{_host()}-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of ``path`` left by killed processes of this host.

    Only names written by :func:`atomic_path` / :func:`atomic_dir` on this host
    (``.<name>.tmp-<host>-<pid>-…``) whose process no longer exists are removed; another host's
    or a running process's temporaries are left alone.

    Returns
    -------
    list of Path
        What was removed.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = re.compile(rf"\.{re.escape(path.name)}\.tmp-{re.escape(_host())}-(\d+)-.+")
    removed = []
    for candidate in path.parent.iterdir():
        m = pattern.fullmatch(candidate.name)
        if not m or int(m.group(1)) == os.getpid() or _pid_alive(int(m.group(1))):
            continue
        if candidate.is_dir() and not candidate.is_symlink():
            shutil.rmtree(candidate, ignore_errors=True)
        else:
            candidate.unlink(missing_ok=True)
        log.warning("removed %s, left by process %s that was killed", candidate, m.group(1))
        removed.append(candidate)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; move it onto ``path`` if the block succeeds.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp creates 0600; outputs get the usual mode
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; swap it in for ``path`` on success.

    An existing ``path`` is replaced only after the block has finished without error.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically (NaN/inf become ``null``)."""
    with atomic_path(path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n", encoding="utf-8")


def read_json(path: str | os.PathLike) -> Any:
    with Path(path).open(encoding="utf-8") as fh:
        return json.load(fh)

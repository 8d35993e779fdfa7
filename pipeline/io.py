"""Atomic file and folder writes, JSON helpers and stage logging.

Nothing a stage writes may look complete when the stage was interrupted: every output is written
under a temporary name in the same folder and renamed into place (``os.replace``) at the end.
Temporary names carry the host and process id (``.<name>.tmp-<host>-<pid>-<random>``); a process
killed outright (SIGKILL, or SIGTERM without a handler) cannot remove its own, so the next write of
the same output removes those of processes on this host that no longer run, and logs it.  Because
DVC may restore a stage from its run cache without running it, every stage (:func:`start_stage`)
and ``./mer`` (``python -m pipeline.io sweep``) also sweep the output folders of ``dvc.yaml``
for temporaries of dead processes (:func:`sweep_stale_temporaries`).

:func:`start_stage` also turns the failures a user can cause or fix into one line on stderr
instead of a traceback: Ctrl-C (exit status 130), a write error (``OSError``: disk full,
read-only folder, permissions; the message names the path and the cause, exit status 1).  It
also starts the stage's clock: :func:`record_stage_time` writes the wall time of a finished stage
(``metrics/stages/<stage>.json``, a declared output that no other stage reads, so a timing that
differs between two runs never makes DVC re-run anything downstream).
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
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def setup_logging(level: int = logging.INFO) -> None:
    """One line per message on stderr: ``stage-name: message``."""
    logging.basicConfig(level=level, stream=sys.stderr, format="%(name)s: %(message)s", force=True)


log = logging.getLogger("io")


def describe_os_error(exc: OSError) -> str:
    """One line for a write or read error: the path(s), the cause, and a hint for a full disk.

    ``h5py`` raises ``OSError`` subclasses whose message holds HDF5's own wording ("Can't
    write data … No space left on device"); both are reduced to ``<path>: <cause>``.
    """
    import errno

    path = exc.filename or ""
    if exc.filename2:
        path = f"{path} -> {exc.filename2}"
    cause = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
    full = exc.errno == errno.ENOSPC or "No space left" in str(exc)
    if full:
        cause = "no space left on device (free space or point the output elsewhere, then re-run)"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        cause += " (the folder must be writable)"
    return f"{path}: {cause}" if path else cause


#: Signals received by the handlers of :func:`start_stage` (SIGINT, SIGTERM).
_signals: list[int] = []


_deferred = [0]


def _on_signal(signum: int, frame: Any) -> None:
    # Raised at once, unless inside defer_signals() (HDF5 writes: an exception raised inside an
    # HDF5 callback is dropped there and may crash the library); raise_pending_signal raises it
    # again afterwards.
    _signals.append(signum)
    if not _deferred[0]:
        _raise_for(signum)


@contextlib.contextmanager
def defer_signals() -> Iterator[None]:
    """Hold SIGINT / SIGTERM (from :func:`start_stage`'s handlers) until the block ends, then
    raise them (:func:`raise_pending_signal`).  For code that must not be interrupted between
    two bytecodes, such as the write callbacks of an HDF5 file."""
    _deferred[0] += 1
    try:
        yield
    finally:
        _deferred[0] -= 1
    if not _deferred[0]:
        raise_pending_signal()


def _raise_for(signum: int) -> None:
    import signal

    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def raise_pending_signal() -> None:
    """Raise again a SIGINT (``KeyboardInterrupt``) or SIGTERM (``SystemExit(143)``) received
    since :func:`start_stage`; long loops call it once per item."""
    if _signals:
        _raise_for(_signals[0])


def start_stage(name: str) -> logging.Logger:
    """What every stage does first: one-line logging, the sweep of stale temporaries
    (:func:`sweep_stale_temporaries`), and one-line failures for what a user can fix.

    An uncaught ``KeyboardInterrupt`` (Ctrl-C) prints ``<name>: interrupted`` and the process
    exits with status 130; an uncaught ``OSError`` prints :func:`describe_os_error` (exit 1);
    other exceptions keep their traceback (they are bugs).  A SIGTERM ends the stage with status
    143.  The temporaries of the stage are removed by the ``finally`` blocks of
    :func:`atomic_path` / :func:`atomic_dir` on the way out.

    Returns
    -------
    logging.Logger
        The stage's logger.
    """
    setup_logging()
    _STAGE_CLOCK[name] = (time.perf_counter(), time.time())
    stage_log = logging.getLogger(name)
    try:
        sweep_stale_temporaries()
    except OSError as exc:  # a read-only tree: the stage itself will say so when it writes
        stage_log.debug("sweep skipped: %s", exc)
    previous = sys.excepthook

    def hook(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
        if issubclass(kind, KeyboardInterrupt):
            # Python then ends the process by SIGINT: the shell sees exit status 130.
            sys.stderr.write(f"{name}: interrupted (Ctrl-C); nothing was written\n")
            sys.stderr.flush()
            return
        if isinstance(exc, OSError):
            sys.stderr.write(f"{name}: error: {describe_os_error(exc)}\n")
            sys.stderr.flush()
            return
        from pipeline.params import ParamsError

        if isinstance(exc, ParamsError):
            sys.stderr.write("".join(f"{name}: {line}\n" for line in str(exc).splitlines()))
            sys.stderr.flush()
            return
        previous(kind, exc, tb)

    sys.excepthook = hook
    previous_unraisable = sys.unraisablehook

    def unraisable(info: Any) -> None:
        if isinstance(info.exc_value, KeyboardInterrupt | SystemExit) and _signals:
            return  # recorded; raised again by raise_pending_signal
        previous_unraisable(info)

    sys.unraisablehook = unraisable
    import signal

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    return stage_log


#: Stage name → (perf_counter, epoch seconds) at :func:`start_stage`.
_STAGE_CLOCK: dict[str, tuple[float, float]] = {}


def stage_time_path(stage: str, params_path: str | os.PathLike = "params.yaml") -> Path:
    """Where a stage's wall time goes: ``metrics/stages/<stage>.json`` beside the parameter file
    (the project root under DVC; a test's folder when it passes its own ``--params``)."""
    return Path(params_path).parent / "metrics" / "stages" / f"{stage}.json"


def record_stage_time(stage: str, path: str | os.PathLike, **extra: Any) -> dict[str, Any]:
    """Write the wall time of stage ``stage`` since :func:`start_stage` to ``path`` (atomically).

    Parameters
    ----------
    stage : str
        The name given to :func:`start_stage` (``train@sssnet`` for a train stage).
    path : path
        A JSON file (:func:`stage_time_path`, or ``metrics/<method>/stage.json``).
    **extra
        Further JSON fields (e.g. ``workers``).

    Returns
    -------
    dict
        ``{"stage", "wall_seconds" (float, s, 0.1 s resolution), "started_utc", "finished_utc"
        (ISO 8601), "cpu_count", "git_commit", "git_modified"}`` (:func:`code_version`) plus
        ``extra``.

    Raises
    ------
    KeyError
        If :func:`start_stage` was not called for ``stage`` (or for its part before ``@``).
    """
    import datetime as _dt

    key = stage if stage in _STAGE_CLOCK else stage.split("@")[0]
    if key not in _STAGE_CLOCK:
        raise KeyError(f"record_stage_time: stage {stage!r} was not started (start_stage)")
    t0, wall0 = _STAGE_CLOCK[key]

    def iso(t: float) -> str:
        return _dt.datetime.fromtimestamp(t, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    record = {"stage": stage, "wall_seconds": round(time.perf_counter() - t0, 1),
              "started_utc": iso(wall0), "finished_utc": iso(time.time()),
              "cpu_count": os.cpu_count(), **code_version(), **extra}
    write_json(path, record)
    return record


#: Tracked paths whose uncommitted changes make a run differ from its commit (:func:`code_version`).
RUN_INPUTS: tuple[str, ...] = ("pipeline", "stages", "params.yaml", "dvc.yaml", "pyproject.toml")


def code_version() -> dict[str, Any]:
    """The git commit of the code in the current folder and whether what a run executes differs
    from it.

    Returns
    -------
    dict
        ``{"git_commit": 40 hex digits | None, "git_modified": bool | None}`` (None outside a git
        checkout or without git).  ``git_modified``: uncommitted changes to the files the stages
        run or read (:data:`RUN_INPUTS`: ``pipeline/``, ``stages/``, ``params.yaml``,
        ``dvc.yaml``, ``pyproject.toml``); documentation and tests do not count.
    """
    import subprocess

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, check=True,
                                  timeout=60).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "--verify", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no", "--", *RUN_INPUTS) \
        if commit else None
    return {"git_commit": commit or None, "git_modified": None if status is None else bool(status)}


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


_TMP_NAME = re.compile(r"\.(?P<name>.+)\.(?:tmp-(?P<host>[A-Za-z0-9_.]+)-(?P<pid>\d+)-.+|old-(?P<oldpid>\d+))")


def _remove(candidate: Path, pid: str) -> None:
    if candidate.is_dir() and not candidate.is_symlink():
        shutil.rmtree(candidate, ignore_errors=True)
    else:
        candidate.unlink(missing_ok=True)
    log.warning("removed %s, left by process %s that was killed", candidate, pid)


def output_folders(dvc_yaml: str | os.PathLike = "dvc.yaml") -> list[Path]:
    """The folders where the outputs of ``dvc.yaml`` and their temporaries live.

    The parent folder of every ``outs``/``metrics``/``plots`` path of every stage, and the path
    itself when it is a folder (``${...}`` templated paths give their literal parent).  Without a
    readable ``dvc.yaml``: ``data``, ``data/features``, ``data/index``, ``models``, ``metrics``.
    """
    import yaml

    fallback = ["data", "data/features", "data/index", "models", "metrics", "reports"]
    try:
        stages = (yaml.safe_load(Path(dvc_yaml).read_text(encoding="utf-8")) or {}).get("stages")
    except (OSError, yaml.YAMLError):
        stages = None
    if not isinstance(stages, dict):
        return [Path(p) for p in fallback]
    outs: set[str] = set()
    for stage in stages.values():
        body = stage.get("do", stage) if isinstance(stage, dict) else {}
        for kind in ("outs", "metrics", "plots"):
            for entry in body.get(kind) or []:
                outs.update(entry if isinstance(entry, dict) else [entry])
    folders: set[Path] = set()
    for out in outs:
        literal = Path(str(out).split("${")[0] or ".")
        folders.add(literal if "${" in str(out) else literal.parent)
        if "${" not in str(out):
            folders.add(literal)
    return sorted(f for f in folders if str(f) not in ("", "."))


def sweep_stale_temporaries(folders: list[str | os.PathLike] | None = None) -> list[Path]:
    """Remove, in ``folders`` (default :func:`output_folders`), every temporary of this host
    left by a process that no longer runs: ``.<name>.tmp-<host>-<pid>-…`` of
    :func:`atomic_path` / :func:`atomic_dir` and ``.<name>.old-<pid>`` of :func:`atomic_dir`.

    Cheap: one directory listing per folder (no recursion).  Another host's or a running
    process's temporaries are left alone.

    Returns
    -------
    list of Path
        What was removed.
    """
    removed = []
    for folder in (output_folders() if folders is None else folders):
        folder = Path(folder)
        if not folder.is_dir():
            continue
        try:
            names = list(folder.iterdir())
        except OSError:
            continue
        for candidate in names:
            m = _TMP_NAME.fullmatch(candidate.name)
            if not m or (m["host"] is not None and m["host"] != _host()):
                continue
            pid = int(m["pid"] or m["oldpid"])
            if pid == os.getpid() or _pid_alive(pid):
                continue
            _remove(candidate, str(pid))
            removed.append(candidate)
    return removed


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
        _remove(candidate, m.group(1))
        removed.append(candidate)
    return removed


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """An ``OSError`` without a file name (pandas, json writers) gets the output's path."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise


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
        with _naming(path):
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
        with _naming(path):
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


if __name__ == "__main__":
    # python -m pipeline.io sweep: remove the temporaries of dead processes (./mer runs it).
    if sys.argv[1:] != ["sweep"]:
        sys.exit("usage: python -m pipeline.io sweep")
    setup_logging()
    sweep_stale_temporaries()

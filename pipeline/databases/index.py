"""The sample table of the ``index`` stage: building it from the configured databases, writing
``data/index/`` and reading it back.

``data/index/`` (docs/internals.md):

* ``samples.csv`` — one row per kept sample, sorted by ``sample_id``, columns
  :data:`BASE_COLUMNS`, then the label columns (the 12 CD6ME AUs ``AU1 AU2 AU4 AU5 AU6 AU7 AU9
  AU10 AU12 AU14 AU15 AU17``, then every other AU labelled present in any kept sample,
  ascending; int 0/1), then :data:`EMOTION_COLUMNS`.
* ``issues.csv`` — every row a reader corrected, fixed, dropped, could not fully read or found
  implausible (:data:`ISSUE_COLUMNS`; ``action`` is ``fixed`` — corrections-table entries
  included, problem ``<field> corrected`` —, ``dropped``, ``unreadable`` or ``noted``: kept
  unchanged, e.g. longer than a micro-expression usually lasts).
* ``frames.csv`` — ``sample_id, n_frames, bytes, fingerprint``: the size and modification time
  of every frame a sample lists, hashed (:func:`frame_fingerprints`).  The database folders are
  not DVC dependencies (tens of thousands of frames), but ``faces`` depends on ``data/index``, so
  replacing frames and re-running ``index`` (``dvc repro -f -s index``) changes this file and
  re-runs ``faces`` and what follows.  One ``stat`` per frame: cheap on the real databases.
* ``summary.json`` — ``{database: {"rows", "kept", "fixed", "dropped", "filtered",
  "unreadable", "noted"}}`` in the configured order: ``rows = kept + dropped + filtered``
  (non-blank data rows); ``filtered`` counts rows left out by design (CAS(ME)^3 rows that are not
  micro-expressions); ``fixed`` / ``unreadable`` / ``noted`` count kept samples with such an
  issue.

Every configured database is validated (root, annotation file, columns, frame tree) before any
row is read, so a misconfigured database stops the stage at once with one message listing every
problem.  A database whose dropped rows exceed ``index.max_bad_share`` of its sample rows stops it
after reading, with the counts.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.databases import KEYS, get_reader
from pipeline.databases.aus import au_column, au_columns
from pipeline.databases.base import (
    DatabaseError,
    DatabaseReader,
    Issue,
    ReaderOptions,
    ReadResult,
    Sample,
    frame_number,
)
from pipeline.io import atomic_dir
from pipeline.params import ParamsError

__all__ = [
    "BASE_COLUMNS", "EMOTION_COLUMNS", "ISSUE_COLUMNS", "IndexBuildError", "IndexOptions",
    "IndexResult", "au_label_columns", "build_index", "check_databases", "frame_number",
    "frame_fingerprints", "frame_numbers", "frame_paths", "load_issues", "load_samples", "resolve_roots",
    "write_index",
]

#: Columns of ``samples.csv`` before the AU label columns.
BASE_COLUMNS: tuple[str, ...] = ("sample_id", "database", "subject", "material", "row", "onset",
                                 "apex", "offset", "frame_dir", "frames", "n_frames", "au")
#: Columns of ``samples.csv`` after the AU label columns.
EMOTION_COLUMNS: tuple[str, ...] = ("emotion", "emotion5", "emotion3")
#: Columns of ``issues.csv``.
ISSUE_COLUMNS: tuple[str, ...] = ("database", "row", "file", "sample_id", "problem", "action",
                                  "detail")
#: Keys of each database's entry in ``summary.json``.
SUMMARY_KEYS: tuple[str, ...] = ("rows", "kept", "fixed", "dropped", "filtered", "unreadable",
                                 "noted")
_INT_COLUMNS = ("row", "onset", "apex", "offset", "n_frames")
#: Separator of the frame file names in the ``frames`` column.
FRAME_SEPARATOR = "|"


class IndexBuildError(RuntimeError):
    """A database has more unusable rows than ``index.max_bad_share`` allows (or none usable)."""


@dataclass(frozen=True)
class IndexOptions:
    """The ``index`` section of ``params.yaml``.

    Attributes
    ----------
    max_bad_share : float
        Largest fraction (0–1) of a database's sample rows that may be dropped.
    drop_k_marked_aus : bool
        4DME: zero the AUs marked ``(k)``.
    au_alternatives : {"all", "first", "none"}
        Reading of AU cells with ``or`` (``R12 or R15``).
    """

    max_bad_share: float = 0.2
    drop_k_marked_aus: bool = True
    au_alternatives: str = "all"

    def __post_init__(self) -> None:
        share = self.max_bad_share
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share <= 1:
            raise ParamsError(f"params.yaml: index.max_bad_share must be a fraction in [0, 1], "
                              f"got {share!r}")
        try:
            self.reader_options()
        except ValueError as exc:
            raise ParamsError(f"params.yaml: {exc}") from None

    @classmethod
    def from_params(cls, section: Mapping[str, Any]) -> IndexOptions:
        """From the resolved ``index`` section (unknown keys are an error).

        Raises
        ------
        ParamsError
            On an unknown key or a value out of range.
        """
        known = {"max_bad_share", "drop_k_marked_aus", "au_alternatives"}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ParamsError(f"params.yaml: unknown key(s) in section index: {unknown}; "
                              f"known: {sorted(known)}")
        return cls(**dict(section))

    def reader_options(self) -> ReaderOptions:
        """The options every reader takes."""
        return ReaderOptions(drop_k_marked_aus=self.drop_k_marked_aus,
                             au_alternatives=self.au_alternatives)


@dataclass
class IndexResult:
    """The outputs of :func:`build_index`.

    Attributes
    ----------
    samples : DataFrame
        ``samples.csv`` (one row per kept sample, sorted by ``sample_id``).
    issues : DataFrame
        ``issues.csv``.
    summary : dict
        ``summary.json``.
    results : list of ReadResult
        Each reader's raw result, in the configured order.
    """

    samples: pd.DataFrame
    issues: pd.DataFrame
    summary: dict[str, dict[str, int]]
    results: list[ReadResult]


def resolve_roots(data: Mapping[str, Any], standin_out: str | os.PathLike | None = None
                  ) -> dict[str, Path]:
    """The root folder of each configured database.

    Parameters
    ----------
    data : mapping
        The resolved ``data`` section: ``source`` (``standin`` | ``real``), ``databases`` (keys),
        ``roots`` (key → folder; used when ``source: real``).
    standin_out : path, optional
        ``standin.out``: with ``source: standin`` each database's root is
        ``<standin_out>/<key>`` (the stand-in writes every database there in its release
        layout).

    Returns
    -------
    dict of str to Path
        Key → root, in the order of ``data.databases``.

    Raises
    ------
    ParamsError
        On an unknown source or key, a repeated key, a missing root, or no ``standin_out``.
    """
    source = data.get("source")
    keys = data.get("databases")
    if not isinstance(keys, list | tuple) or not keys:
        raise ParamsError(f"params.yaml: data.databases must be a non-empty list of keys "
                          f"({', '.join(KEYS)}), got {keys!r}")
    unknown = [k for k in keys if k not in KEYS]
    if unknown:
        raise ParamsError(f"params.yaml: data.databases: unknown key(s) {unknown}; known: "
                          f"{', '.join(KEYS)}")
    repeated = sorted(k for k, n in Counter(keys).items() if n > 1)
    if repeated:
        raise ParamsError(f"params.yaml: data.databases lists {repeated} more than once")
    if source == "standin":
        if standin_out in (None, ""):
            raise ParamsError("params.yaml: data.source is standin but standin.out is not set")
        return {k: Path(standin_out) / k for k in keys}
    if source == "real":
        roots = data.get("roots") or {}
        missing = [k for k in keys if roots.get(k) in (None, "")]
        if missing:
            raise ParamsError(f"params.yaml: data.source is real but data.roots has no folder "
                              f"for {missing}")
        return {k: Path(os.path.expanduser(str(roots[k]))) for k in keys}
    raise ParamsError(f"params.yaml: data.source must be 'standin' or 'real', got {source!r}")


def check_databases(roots: Mapping[str, str | os.PathLike],
                    options: IndexOptions | None = None) -> list[DatabaseReader]:
    """Build and validate the reader of every database, before any row is read.

    Parameters
    ----------
    roots : mapping of str to path
        Key → root folder (:func:`resolve_roots`).
    options : IndexOptions, optional

    Returns
    -------
    list of DatabaseReader
        Checked readers (annotation files loaded), in the order of ``roots``.

    Raises
    ------
    DatabaseError
        Listing every database whose root, annotation file, columns or frame tree is wrong.
    """
    options = options or IndexOptions()
    readers, errors = [], []
    for key, root in roots.items():
        try:
            reader = get_reader(key)(root, options.reader_options())
            reader.check()
            readers.append(reader)
        except DatabaseError as exc:
            errors.append(str(exc))
    if errors:
        head = (f"{len(errors)} of the {len(roots)} configured databases cannot be read "
                "(nothing was indexed):")
        raise DatabaseError("\n".join([head] + [f"  - {e}" for e in errors]))
    return readers


def _bad_share_error(result: ReadResult, max_bad_share: float) -> str | None:
    s = result.summary()
    candidates = s["rows"] - s["filtered"]
    if candidates == 0:
        return (f"{result.database}: {result.spreadsheet} has no sample rows "
                f"({s['rows']} rows, {s['filtered']} filtered)")
    if s["dropped"] / candidates <= max_bad_share:
        return None
    problems = Counter(i.problem for i in result.issues if i.action == "dropped")
    top = ", ".join(f"{p} x{n}" for p, n in problems.most_common(4))
    first = next(i for i in result.issues if i.action == "dropped")
    return (f"{result.database}: {s['dropped']} of {candidates} sample rows unusable "
            f"({s['dropped'] / candidates:.0%} > index.max_bad_share {max_bad_share:.0%}) in "
            f"{result.spreadsheet}: {top}; first: row {first.row} {first.sample_id or ''} "
            f"{first.problem}: {first.detail}")


def samples_table(samples: Sequence[Sample]) -> pd.DataFrame:
    """The ``samples.csv`` table of kept samples (sorted by ``sample_id``).

    Parameters
    ----------
    samples : sequence of Sample

    Returns
    -------
    DataFrame
        Columns :data:`BASE_COLUMNS` + AU columns + :data:`EMOTION_COLUMNS`; ints as int64.
    """
    seen: set[int] = set()
    for s in samples:
        seen |= s.aus
    labels = au_columns(seen)
    records = []
    for s in sorted(samples, key=lambda s: s.sample_id):
        rec: dict[str, Any] = {
            "sample_id": s.sample_id, "database": s.database, "subject": s.subject,
            "material": s.material, "row": s.row, "onset": s.onset, "apex": s.apex,
            "offset": s.offset, "frame_dir": s.frame_dir,
            "frames": FRAME_SEPARATOR.join(s.frames), "n_frames": len(s.frames), "au": s.au}
        rec.update({c: 0 for c in labels})
        rec.update({au_column(n): 1 for n in s.aus})
        rec.update(emotion=s.emotion, emotion5=s.emotion5, emotion3=s.emotion3)
        records.append(rec)
    columns = [*BASE_COLUMNS, *labels, *EMOTION_COLUMNS]
    df = pd.DataFrame.from_records(records, columns=columns)
    for c in (*_INT_COLUMNS, *labels):
        df[c] = df[c].astype("int64")
    return df


def issues_table(issues: Sequence[Issue]) -> pd.DataFrame:
    """The ``issues.csv`` table (in reading order: database, then row)."""
    df = pd.DataFrame.from_records([i.__dict__ for i in issues], columns=list(ISSUE_COLUMNS))
    df["row"] = df["row"].astype("int64")
    return df


def build_index(roots: Mapping[str, str | os.PathLike], options: IndexOptions | None = None
                ) -> IndexResult:
    """Read every configured database and build the sample table.

    Parameters
    ----------
    roots : mapping of str to path
        Database key → root folder, in the order wanted in ``summary.json``
        (:func:`resolve_roots`).
    options : IndexOptions, optional
        ``params.yaml`` section ``index``.

    Returns
    -------
    IndexResult

    Raises
    ------
    DatabaseError
        Before any row is read, if a database's layout is wrong (:func:`check_databases`).
    IndexBuildError
        After reading, if a database has no sample row or drops more than ``max_bad_share`` of
        them (every such database is named with its counts and commonest problems).
    """
    options = options or IndexOptions()
    readers = check_databases(roots, options)
    results = [r.read() for r in readers]
    errors = [e for r in results if (e := _bad_share_error(r, options.max_bad_share))]
    if errors:
        raise IndexBuildError("\n".join(["too many unusable rows (see the issues below; "
                                         "index.max_bad_share in params.yaml):"]
                                        + [f"  - {e}" for e in errors]))
    samples = [s for r in results for s in r.samples]
    return IndexResult(
        samples=samples_table(samples),
        issues=issues_table([i for r in results for i in r.issues]),
        summary={r.database: r.summary() for r in results},
        results=results,
    )


#: Columns of ``frames.csv``.
FINGERPRINT_COLUMNS: tuple[str, ...] = ("sample_id", "n_frames", "bytes", "fingerprint")


def frame_fingerprints(samples: pd.DataFrame, base: str | os.PathLike | None = None
                       ) -> pd.DataFrame:
    """One row per sample: its listed frames' count, total size and a hash of their stats.

    The fingerprint is the SHA-1 (hex) of ``name, size, st_mtime_ns`` of every listed frame in
    order (``name, missing`` for a frame that does not exist), so a replaced, edited, truncated
    or touched frame changes it; contents are not read (one ``stat`` per frame).

    Parameters
    ----------
    samples : DataFrame
        :func:`samples_table` / :func:`load_samples` rows (``sample_id``, ``frame_dir``,
        ``frames``).
    base : path, optional
        Folder relative ``frame_dir`` values are relative to (default: the working folder).

    Returns
    -------
    DataFrame
        Columns :data:`FINGERPRINT_COLUMNS`; ``bytes`` int (sum of the existing frames' sizes).
    """
    rows = []
    for row in samples.itertuples(index=False):
        digest = hashlib.sha1()
        total = 0
        paths = frame_paths(row, base)
        for path in paths:
            try:
                st = os.stat(path)
            except OSError:
                digest.update(f"{path.name}\tmissing\n".encode())
                continue
            total += st.st_size
            digest.update(f"{path.name}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        rows.append((row.sample_id, len(paths), total, digest.hexdigest()))
    return pd.DataFrame(rows, columns=list(FINGERPRINT_COLUMNS))


def write_index(result: IndexResult, out_dir: str | os.PathLike) -> Path:
    """Write ``samples.csv``, ``issues.csv``, ``frames.csv`` (:func:`frame_fingerprints`) and
    ``summary.json`` into ``out_dir`` atomically (the folder is replaced as a whole only when all
    are written).

    Returns
    -------
    Path
        ``out_dir``.
    """
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        result.samples.to_csv(tmp / "samples.csv", index=False, lineterminator="\n")
        result.issues.to_csv(tmp / "issues.csv", index=False, lineterminator="\n")
        frame_fingerprints(result.samples).to_csv(tmp / "frames.csv", index=False,
                                                  lineterminator="\n")
        (tmp / "summary.json").write_text(json.dumps(result.summary, indent=2) + "\n",
                                          encoding="utf-8")
    return out_dir


def _table_path(path: str | os.PathLike, name: str) -> Path:
    path = Path(path)
    return path / name if path.is_dir() else path


def au_label_columns(samples: pd.DataFrame) -> list[str]:
    """The AU label columns of a sample table, in table order (``AU1`` … ``AU17``, others)."""
    return [c for c in samples.columns if c.startswith("AU") and c[2:].isdigit()]


def load_samples(path: str | os.PathLike = "data/index") -> pd.DataFrame:
    """Read ``samples.csv``.

    Parameters
    ----------
    path : path
        The file, or the folder holding it (``data/index``).

    Returns
    -------
    DataFrame
        One row per sample, columns as written; strings as ``str`` (``subject`` ``"006"`` stays
        text; empty labels are ``""``, not NaN), frame numbers, ``row``, ``n_frames`` and the AU
        columns as int64.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If it lacks a column of :data:`BASE_COLUMNS` / :data:`EMOTION_COLUMNS` or a CD6ME AU
        column, or repeats a ``sample_id``.
    """
    from pipeline.databases.aus import CD6ME_AU_COLUMNS

    path = _table_path(path, "samples.csv")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: sample table not found (run `dvc repro index`)")
    df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    missing = [c for c in (*BASE_COLUMNS, *CD6ME_AU_COLUMNS, *EMOTION_COLUMNS)
               if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: not a sample table of the index stage; missing columns "
                         f"{missing}")
    for c in (*_INT_COLUMNS, *au_label_columns(df)):
        try:
            df[c] = df[c].astype("int64")
        except ValueError as exc:
            raise ValueError(f"{path}: column {c} must hold integers ({exc})") from None
    dup = df["sample_id"][df["sample_id"].duplicated()]
    if len(dup):
        raise ValueError(f"{path}: repeated sample_id {list(dup[:5])}")
    return df


def load_issues(path: str | os.PathLike = "data/index") -> pd.DataFrame:
    """Read ``issues.csv`` (the file or its folder); ``row`` as int64, the rest as ``str``."""
    path = _table_path(path, "issues.csv")
    df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    missing = [c for c in ISSUE_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: not an issues table of the index stage; missing {missing}")
    df["row"] = df["row"].astype("int64")
    return df


def _field(row: Any, name: str) -> Any:
    try:
        return row[name]
    except (KeyError, TypeError, IndexError):
        return getattr(row, name)


def frame_paths(row: Any, base: str | os.PathLike | None = None) -> list[Path]:
    """The frame files of a sample, onset..offset in frame order.

    Parameters
    ----------
    row : pandas Series, mapping or namedtuple
        A row of :func:`load_samples` (fields ``frame_dir`` and ``frames``).
    base : path, optional
        Folder that relative ``frame_dir`` values are relative to (default: the working folder,
        i.e. the project root the stages run from).

    Returns
    -------
    list of Path
        ``n_frames`` paths.
    """
    folder = Path(_field(row, "frame_dir"))
    if base is not None and not folder.is_absolute():
        folder = Path(base) / folder
    frames = str(_field(row, "frames"))
    return [folder / name for name in frames.split(FRAME_SEPARATOR)] if frames else []


def frame_numbers(row: Any) -> list[int]:
    """The frame numbers of a sample's frames (:func:`frame_number` of each name), ascending."""
    frames = str(_field(row, "frames"))
    return [frame_number(name) for name in frames.split(FRAME_SEPARATOR)] if frames else []

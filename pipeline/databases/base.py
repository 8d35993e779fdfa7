"""What the seven database readers share: spreadsheet loading, frame listing, onset/apex/offset
validation and the recording of every row a reader fixes or drops.

A reader (one subclass of :class:`DatabaseReader` per database, after the one-class-per-database
design of the CD6ME reference tooling ``meb``, Varanka et al., IEEE TAFFC 2024) declares its
release layout — the annotation file name(s), the header names of the columns it uses, the frame
tree — and overrides a few hooks for its quirks.  Unlike ``meb``, which hard-codes corrections of
individual rows and prints, a reader here keeps such per-row facts as data and applies general
rules, and reports each application as an :class:`Issue` (``fixed``, ``dropped``, ``unreadable``
or ``noted``), so that the same code runs on the real releases and on the stand-in, and nothing
disappears unnoticed.

First, the **corrections table** of the database (``corrections/<key>.csv`` beside the readers,
:func:`load_corrections`): known fixes of single cells of a named release file — the CD6ME
benchmark's choice for ``or`` AU cells, typo'd offsets, reversed onset/offset, apexes it measured
— each row naming the file, row, subject, file name, field, old value, new value and its source
(the reference tooling's file and line, or the database's errata).  A correction is applied only
when the row holds the subject, file name and old value it names (recorded ``fixed``, problem
``<field> corrected``); one that does not fit is recorded (``unreadable``, "correction not
applied") and the general rules apply; a file that fits none of its table's rows (another
revision, the stand-in) gets none.

Then the rules every reader applies (DATASETS.md, "Per database"):

* **Frames.** A sample's folder is listed for ``.jpg``/``.jpeg``/``.bmp``/``.png`` files (any case;
  hidden files such as macOS ``._img1.jpg`` are skipped).  A frame's number is the last run of
  digits in its file stem (``img46.jpg`` → 46, ``006_05562.jpg`` → 5562, ``reg_EP01_5-113.jpg`` →
  113).  Frames are sorted by that number, ties by the integer of all digits of the name and then
  by name — for a folder whose names differ only in the frame number this is DATASETS.md's "integer
  made of the digits", and it stays right with inconsistent zero padding (``-99`` before
  ``-0113``).  Of two files with the same number the first in that order is used (``fixed``);
  image files without a digit are ignored (``fixed``).
* **Onset / offset.** A missing, ``/`` or non-integral cell, or an offset before the onset, makes
  the row unusable (``dropped``): no rule recovers the extent of the movement.
* **Duration** (plausibility): at the release's frame rate (:attr:`DatabaseReader.fps`), a row
  longer than :data:`MAX_DURATION_S` (60 s) is dropped — a typo in a frame number, not a facial
  movement — and one longer than :data:`ME_DURATION_LIMIT_S` (1 s, twice the usual 0.5 s limit of
  a micro-expression) is kept as annotated and recorded (``noted``), as the CD6ME benchmark keeps
  it.
* **Apex.** A missing, ``/`` or non-integral apex, or one outside [onset, offset], is set to the
  middle frame ``onset + (offset − onset) // 2`` (``fixed``) — the rule the protocols use for the
  apex-free SMIC, and the frame that is, on average, nearest the true apex.  Clamping into the
  range instead would put the apex on the onset or offset, where there is no movement at all.
* **Frames on disk.** A missing folder, or no frame between onset and offset, drops the row.  An
  onset (offset) frame absent from the folder moves the onset (offset) inward to the first (last)
  frame present (``fixed``); an absent apex frame moves the apex to the nearest frame present
  (``fixed``, ties to the earlier frame); gaps inside onset..offset are recorded (``fixed``: the
  frame list skips them).  Fewer than two frames between onset and offset drop the row (no motion
  can be measured).
* **Identity.** A row without subject or file name, or repeating the subject and file name of an
  earlier row, is dropped.
* **Labels.** AU cells are read by :func:`pipeline.databases.aus.parse_aus`; tokens without an AU
  and empty cells are recorded as ``unreadable`` (the sample is kept with the AUs that were read),
  ``or`` alternatives and tokens with several numbers as ``fixed``.  An empty emotion cell is
  ``unreadable``.
* **Blank rows** (every cell empty) are not annotation rows and are skipped without a record;
  a row with any content counts in ``rows``.

Row numbers are 0-based positions among the data rows below the header, as pandas numbers them
(blank rows included), so they match the CD6ME tooling's row references.
"""

from __future__ import annotations

import logging
import math
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from tqdm import tqdm

from pipeline.databases import emotions
from pipeline.databases.aus import ALTERNATIVES, PLUS, ParsedAUs, cell_text, parse_aus

log = logging.getLogger("index")

#: File name extensions of frames (compared lower-case).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".bmp", ".png"})
#: What a reader did about a row (the ``action`` column of ``issues.csv``): ``noted`` keeps the
#: row unchanged and records something implausible about it.
ACTIONS = ("fixed", "dropped", "unreadable", "noted")
#: The usual upper limit of a micro-expression's duration (onset to offset), seconds; a longer
#: sample is kept and recorded (``noted``).  Twice the 0.5 s of the common definition (Yan et al.
#: 2013), because the releases annotate offsets generously: 277 of the 860 CAS(ME)^3 part A rows
#: the CD6ME benchmark keeps last longer than 1 s at 30 fps.
ME_DURATION_LIMIT_S = 1.0
#: A sample longer than this (seconds) cannot be a facial movement's onset..offset: a typo in a
#: frame number (CAS(ME)^3 part A row 708, 5..3460 at 30 fps = 115 s); it is dropped unless a
#: corrections table fixes it.  The longest row the CD6ME benchmark keeps lasts 24.3 s.
MAX_DURATION_S = 60.0
#: How many leading sheet rows are searched for the header row.
HEADER_SEARCH_ROWS = 40

_DIGIT_RUNS = re.compile(r"\d+")
_INTEGER_TEXT = re.compile(r"^[+]?\d+(?:\.0*)?$")


class DatabaseError(ValueError):
    """A configured database does not have its release's layout: missing root, annotation file,
    column or frame tree.  The message names the file and what was expected."""


# ---------------------------------------------------------------------------------------------
# Frames


def frame_number(filename: str | os.PathLike) -> int:
    """The frame number of a frame file: the last run of digits in its stem.

    Parameters
    ----------
    filename : str or path
        File name or path (``img46.jpg``, ``006_05562.jpg``, ``reg_EP01_5-113.jpg``).

    Returns
    -------
    int
        46, 5562, 113.

    Raises
    ------
    ValueError
        If the stem holds no digit.
    """
    stem = Path(filename).stem
    runs = _DIGIT_RUNS.findall(stem)
    if not runs:
        raise ValueError(f"{filename}: no frame number (no digit in the file name)")
    return int(runs[-1])


def _digits_value(name: str) -> int:
    runs = _DIGIT_RUNS.findall(Path(name).stem)
    return int("".join(runs)) if runs else -1


def frame_sort_key(name: str) -> tuple[int, int, str]:
    """Sort key of a frame file: (frame number, integer of all digits, name)."""
    return frame_number(name), _digits_value(name), name


@dataclass(frozen=True)
class FrameListing:
    """The frames of one sample folder.

    Attributes
    ----------
    names : tuple of str
        Frame file names, sorted by :func:`frame_sort_key`, one per frame number.
    numbers : tuple of int
        Their frame numbers, strictly increasing.
    duplicates : tuple of str
        Files left out because an earlier file has the same frame number.
    unnumbered : tuple of str
        Image files without a digit in the name (left out).
    """

    names: tuple[str, ...]
    numbers: tuple[int, ...]
    duplicates: tuple[str, ...] = ()
    unnumbered: tuple[str, ...] = ()


def list_frames(folder: str | os.PathLike) -> FrameListing:
    """List the frame files of a sample folder.

    Parameters
    ----------
    folder : path
        The sample's frame folder.

    Returns
    -------
    FrameListing
        Image files (:data:`IMAGE_EXTENSIONS`, hidden files skipped) ordered by frame number.

    Raises
    ------
    FileNotFoundError
        If ``folder`` does not exist or is not a folder.
    """
    entries: list[tuple[tuple[int, int, str], str]] = []
    unnumbered: list[str] = []
    with os.scandir(folder) as it:
        for entry in it:
            name = entry.name
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            if not entry.is_file():
                continue
            try:
                entries.append((frame_sort_key(name), name))
            except ValueError:
                unnumbered.append(name)
    entries.sort()
    names: list[str] = []
    numbers: list[int] = []
    duplicates: list[str] = []
    for key, name in entries:
        if numbers and numbers[-1] == key[0]:
            duplicates.append(name)
            continue
        names.append(name)
        numbers.append(key[0])
    return FrameListing(tuple(names), tuple(numbers), tuple(duplicates), tuple(sorted(unnumbered)))


def parse_frame(value: Any) -> tuple[int | None, str]:
    """Read an onset / apex / offset cell.

    Parameters
    ----------
    value : int, float, str or None
        The cell (``123``, ``123.0``, ``" 123 "``, ``"/"``, NaN).

    Returns
    -------
    frame : int or None
        The frame number, or ``None`` when the cell is unusable.
    problem : str
        ``""`` when usable, else ``"missing"`` (empty / NaN / ``/`` / ``-``) or ``"not a frame
        number"`` (negative, non-integral, text).
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None, "missing"
    if isinstance(value, bool):
        return None, "not a frame number"
    if isinstance(value, int):
        return (value, "") if value >= 0 else (None, "not a frame number")
    if isinstance(value, float):
        if value.is_integer() and value >= 0:
            return int(value), ""
        return None, "not a frame number"
    text = cell_text(value)
    if text in ("", "/", "-", "\\"):
        return None, "missing"
    if _INTEGER_TEXT.match(text):
        return int(float(text)), ""
    return None, "not a frame number"


def integer_of(value: Any) -> int | None:
    """An integral cell (``6``, ``6.0``, ``"006"``) as int, else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else None
    text = cell_text(value)
    return int(float(text)) if _INTEGER_TEXT.match(text) else None


# ---------------------------------------------------------------------------------------------
# Spreadsheets


def subject_candidates(value: Any, patterns: Sequence[str]) -> list[str]:
    """Candidate folder names of a subject cell.

    An integral cell (``6``, ``6.0``, ``"006"``) gives ``pattern.format(n)`` for each pattern
    (``"sub{:02d}"`` → ``sub06``); a text cell gives itself, preceded by the first pattern applied
    to its trailing number when the text is that pattern with other zero padding (``sub6`` →
    ``sub06``).  An empty cell gives ``[]``.
    """
    n = integer_of(value)
    if n is not None:
        return list(dict.fromkeys(p.format(n) for p in patterns))
    text = cell_text(value)
    if not text:
        return []
    trailing = re.search(r"\d+$", text)
    if trailing:
        canonical = patterns[0].format(int(trailing.group()))
        same_prefix = re.sub(r"\d+$", "", canonical).casefold() == text[: trailing.start()].casefold()
        if same_prefix and canonical != text:
            return [canonical, text]
    return [text]


def _norm(name: Any) -> str:
    return " ".join(cell_text(name).split()).casefold()


@dataclass
class Sheet:
    """The first worksheet of an annotation file, below its header row.

    Attributes
    ----------
    path : Path
        The ``.xlsx`` file.
    header_row : int
        0-based sheet row of the header (0 for all releases but SAMM).
    columns : list of str
        Column names as pandas gives them (a blank header cell at position i is
        ``"Unnamed: i"``; a repeated name gets ``.1``, ``.2``, …).
    rows : list of tuple
        Data rows as openpyxl gives the cells (int, float, str, datetime or ``None``), padded to
        ``len(columns)``; trailing blank rows removed, blank rows in between kept (pandas' view).
    """

    path: Path
    header_row: int
    columns: list[str]
    rows: list[tuple[Any, ...]]

    def find(self, names: Sequence[str]) -> int | None:
        """Index of the first column whose name matches one of ``names`` (case and white space
        insensitive), in the order of ``names``."""
        normed = [_norm(c) for c in self.columns]
        for name in names:
            if _norm(name) in normed:
                return normed.index(_norm(name))
        return None


def _pandas_names(header: Sequence[Any]) -> list[str]:
    names: list[str] = []
    counts: dict[str, int] = {}
    for i, cell in enumerate(header):
        name = cell_text(cell) or f"Unnamed: {i}"
        if name in counts:
            counts[name] += 1
            name = f"{name}.{counts[name]}"
        else:
            counts[name] = 0
        names.append(name)
    return names


def load_sheet(path: str | os.PathLike, required: Mapping[str, Sequence[str]]) -> Sheet:
    """Load the first worksheet of an annotation file and find its header row.

    The header is the first of the leading :data:`HEADER_SEARCH_ROWS` rows that holds, for every
    entry of ``required``, one of its accepted names (so SAMM's free-text preamble is skipped
    whatever its length).

    Parameters
    ----------
    path : path
        ``.xlsx`` file, or a legacy ``.xls`` file when the package ``xlrd`` is installed
        (CAS(ME)^3's full part-A file ``CAS(ME)3_part_A_v2.xls``).
    required : mapping of str to sequence of str
        Role (``"onset"``) → accepted header names (``("OnsetF",)``, ``("Action Units", "AU")``).

    Returns
    -------
    Sheet

    Raises
    ------
    DatabaseError
        If the file cannot be read as a workbook (an ``.xls`` without ``xlrd``: the message says
        to install it or save the file as ``.xlsx``), or no header row holds every required
        column (the message lists what is missing and the closest row found).
    """
    path = Path(path)
    raw = _xls_rows(path) if path.suffix.lower() == ".xls" else _xlsx_rows(path)
    return _find_header(path, raw, required)


def _xls_rows(path: Path) -> list[tuple[Any, ...]]:
    """The first worksheet of a legacy ``.xls`` (BIFF) workbook, read with ``xlrd`` if present."""
    try:
        import xlrd
    except ImportError:
        raise DatabaseError(
            f"{path}: a legacy .xls workbook; reading it needs the package xlrd (pip install "
            f"xlrd), or open it once in a spreadsheet program and save it as "
            f"{path.with_suffix('.xlsx').name} beside it") from None
    try:
        book = xlrd.open_workbook(str(path))
        sheet = book.sheet_by_index(0)
        empty = (xlrd.XL_CELL_EMPTY, xlrd.XL_CELL_BLANK)
        return [tuple(None if c.ctype in empty else c.value for c in sheet.row(r))
                for r in range(sheet.nrows)]
    except Exception as exc:  # xlrd raises many types for a damaged file
        raise DatabaseError(f"{path}: cannot be read as an .xls workbook ({exc})") from exc


def _xlsx_rows(path: Path) -> list[tuple[Any, ...]]:
    """The first worksheet of an ``.xlsx`` workbook, as openpyxl gives the cells."""
    import openpyxl

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # openpyxl's notes on unsupported Excel extensions
            wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
            try:
                ws = wb.worksheets[0]
                ws.reset_dimensions()  # some writers record a wrong sheet size
                raw = [tuple(r) for r in ws.iter_rows(values_only=True)]
            finally:
                wb.close()
    except Exception as exc:  # openpyxl raises many types for a damaged or foreign file
        raise DatabaseError(f"{path}: cannot be read as an .xlsx workbook ({exc})") from exc
    return raw


def _find_header(path: Path, raw: list[tuple[Any, ...]], required: Mapping[str, Sequence[str]]
                 ) -> Sheet:
    def blank(row: tuple[Any, ...]) -> bool:
        return all(cell_text(c) == "" for c in row)

    while raw and blank(raw[-1]):
        raw.pop()
    width = max((len(r) for r in raw), default=0)
    raw = [r + (None,) * (width - len(r)) for r in raw]

    best, best_found = -1, -1
    for h, row in enumerate(raw[:HEADER_SEARCH_ROWS]):
        normed = {_norm(c) for c in row if cell_text(c)}
        found = sum(any(_norm(n) in normed for n in names) for names in required.values())
        if found == len(required):
            while width > 0 and all(cell_text(r[width - 1]) == "" for r in raw[h:]):
                width -= 1  # trailing all-blank columns are not columns
            rows = [r[:width] for r in raw[h + 1:]]
            return Sheet(path, h, _pandas_names(raw[h][:width]), rows)
        if found > best_found:
            best, best_found = h, found
    expected = "; ".join(" or ".join(repr(n) for n in names) for names in required.values())
    if best < 0:
        raise DatabaseError(f"{path}: the first worksheet is empty; expected a header row with "
                            f"the columns {expected}")
    normed = {_norm(c) for c in raw[best] if cell_text(c)}
    missing = [" or ".join(repr(n) for n in names) for names in required.values()
               if not any(_norm(n) in normed for n in names)]
    present = [cell_text(c) for c in raw[best] if cell_text(c)]
    raise DatabaseError(
        f"{path}: no header row with the expected columns {expected}; the closest, sheet row "
        f"{best + 1}, lacks {', '.join(missing)} (it has {present})")


# ---------------------------------------------------------------------------------------------
# Corrections tables

#: Folder of the corrections tables, one CSV per database key (``casme3a.csv``).
CORRECTIONS_DIR = Path(__file__).with_name("corrections")
#: Columns of a corrections table.
CORRECTION_COLUMNS = ("file", "row", "subject", "material", "field", "was", "value", "source",
                      "reason")
#: Roles a correction may change.
CORRECTABLE = ("onset", "apex", "offset", "au", "emotion")


@dataclass(frozen=True)
class Correction:
    """One row of a corrections table: a known fix of one cell of one release file.

    Attributes
    ----------
    file : str
        The annotation file it applies to (file name, compared case-insensitively).
    row : int
        0-based data row (pandas' view, as :class:`Sheet` numbers them).
    subject, material : str
        The row's ``Subject`` and ``Filename`` cells as text: the row is corrected only when they
        match (so a table never lands on another revision's row).
    field : str
        Role of the cell: one of :data:`CORRECTABLE`.
    was : str
        The cell as the release has it (text, ``""`` for empty); must match too.
    value : str
        The corrected cell (text; frame numbers as integers).
    source : str
        Where the fact comes from: the reference tooling's file and line, or the database's
        errata file.
    reason : str
        Why.
    """

    file: str
    row: int
    subject: str
    material: str
    field: str
    was: str
    value: str
    source: str
    reason: str


def load_corrections(key: str, folder: str | os.PathLike | None = None) -> list[Correction]:
    """The corrections table of database ``key`` (empty when it has none).

    Parameters
    ----------
    key : str
        Database key; the table is ``<folder>/<key>.csv``.
    folder : path, optional
        Default :data:`CORRECTIONS_DIR`.

    Returns
    -------
    list of Correction
        In table order.

    Raises
    ------
    DatabaseError
        If the table lacks a column of :data:`CORRECTION_COLUMNS`, has a non-integral or negative
        row, a field outside :data:`CORRECTABLE`, or two corrections of the same cell.
    """
    import csv

    path = Path(folder if folder is not None else CORRECTIONS_DIR) / f"{key}.csv"
    if not path.is_file():
        return []
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in CORRECTION_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DatabaseError(f"{path}: corrections table lacks the columns {missing}")
        out: list[Correction] = []
        seen: set[tuple[str, int, str]] = set()
        for n, rec in enumerate(reader, start=2):
            row = integer_of(rec["row"])
            if row is None or row < 0:
                raise DatabaseError(f"{path}:{n}: row must be a data row number, got "
                                    f"{rec['row']!r}")
            if rec["field"] not in CORRECTABLE:
                raise DatabaseError(f"{path}:{n}: field must be one of {CORRECTABLE}, got "
                                    f"{rec['field']!r}")
            cell = (rec["file"].casefold(), row, rec["field"])
            if cell in seen:
                raise DatabaseError(f"{path}:{n}: a second correction of {rec['field']} in row "
                                    f"{row} of {rec['file']}")
            seen.add(cell)
            out.append(Correction(rec["file"], row, *(cell_text(rec[c]) for c in (
                "subject", "material", "field", "was", "value", "source", "reason"))))
    return out


# ---------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class Issue:
    """One thing a reader fixed, dropped or could not read (a row of ``issues.csv``).

    Attributes
    ----------
    database : str
        Database key.
    row : int
        0-based data row of the annotation file (pandas' view).
    file : str
        The file or folder concerned: the annotation file for cell problems, the frame folder for
        frame problems.
    sample_id : str
        ``database/subject/material`` when known, else ``""``.
    problem : str
        What was wrong (``"apex missing"``, ``"frames folder missing"``, …).
    action : str
        One of :data:`ACTIONS`.
    detail : str
        The values involved and what the reader did.
    """

    database: str
    row: int
    file: str
    sample_id: str
    problem: str
    action: str
    detail: str


@dataclass(frozen=True)
class Sample:
    """One kept micro-expression sample (a row of ``samples.csv`` before the AU columns).

    Frame numbers are those of the frame file names (frames, not seconds); ``frames`` are the file
    names of the frames onset..offset inclusive in frame order; ``aus`` the AU numbers labelled
    present.
    """

    database: str
    subject: str
    material: str
    row: int
    onset: int
    apex: int
    offset: int
    frame_dir: str
    frames: tuple[str, ...]
    au: str
    aus: frozenset[int]
    emotion: str
    emotion5: str
    emotion3: str

    @property
    def sample_id(self) -> str:
        """``"{database}/{subject}/{material}"``."""
        return f"{self.database}/{self.subject}/{self.material}"


@dataclass
class ReadResult:
    """Everything one reader produced.

    Attributes
    ----------
    database : str
        Key.
    spreadsheet : Path
        The annotation file read.
    samples : list of Sample
        Kept samples in sheet order.
    issues : list of Issue
        Every fix, drop and unreadable cell, in sheet order.
    rows : int
        Non-blank data rows.
    filtered : int
        Rows left out by design, not by error (CAS(ME)^3 rows that are not micro-expressions).
    """

    database: str
    spreadsheet: Path
    samples: list[Sample]
    issues: list[Issue]
    rows: int
    filtered: int = 0

    def summary(self) -> dict[str, int]:
        """``{"rows", "kept", "fixed", "dropped", "filtered", "unreadable", "noted"}``: ``rows =
        kept + dropped + filtered``; ``fixed`` / ``unreadable`` / ``noted`` count kept samples
        with at least one issue of that action."""
        kept_rows = {s.row for s in self.samples}

        def rows_with(action: str) -> int:
            return len({i.row for i in self.issues if i.action == action and i.row in kept_rows})

        dropped = len({i.row for i in self.issues if i.action == "dropped"})
        return {"rows": self.rows, "kept": len(self.samples), "fixed": rows_with("fixed"),
                "dropped": dropped, "filtered": self.filtered,
                "unreadable": rows_with("unreadable"), "noted": rows_with("noted")}


@dataclass(frozen=True)
class ReaderOptions:
    """Reading choices a user may change (``params.yaml`` section ``index``).

    Attributes
    ----------
    drop_k_marked_aus : bool
        4DME: zero the AUs marked ``(k)`` (DATASETS.md; the CD6ME default).
    au_alternatives : {"all", "first", "none"}
        How AU cells with ``or`` (``R12 or R15``) are read (:func:`~pipeline.databases.aus.parse_aus`).
    """

    drop_k_marked_aus: bool = True
    au_alternatives: str = "all"

    def __post_init__(self) -> None:
        if self.au_alternatives not in ALTERNATIVES:
            raise ValueError(f"index.au_alternatives must be one of {ALTERNATIVES}, "
                             f"got {self.au_alternatives!r}")
        if not isinstance(self.drop_k_marked_aus, bool):
            raise ValueError(f"index.drop_k_marked_aus must be true or false, "
                             f"got {self.drop_k_marked_aus!r}")


class _Dropped(Exception):
    """Internal: the current row was dropped (its issue is already recorded)."""


@dataclass
class RowContext:
    """The row a reader is working on: its cells by role and the issues recorded so far."""

    reader: DatabaseReader
    row: int
    cells: dict[str, Any]
    values: tuple[Any, ...]
    issues: list[Issue] = field(default_factory=list)
    sample_id: str = ""
    dropped: bool = False

    def text(self, role: str) -> str:
        """The cell of ``role`` as stripped text (``""`` when empty or the column is absent)."""
        return cell_text(self.cells.get(role))

    def record(self, problem: str, action: str, detail: str, file: str | os.PathLike | None = None
               ) -> None:
        """Record an issue of this row (``file`` defaults to the annotation file)."""
        assert action in ACTIONS, action
        where = str(file) if file is not None else str(self.reader.spreadsheet)
        self.issues.append(Issue(self.reader.key, self.row, where, self.sample_id, problem, action,
                                 detail))

    def fix(self, problem: str, detail: str, file: str | os.PathLike | None = None) -> None:
        """Record a problem a rule fixed (the sample is kept)."""
        self.record(problem, "fixed", detail, file)

    def unreadable(self, problem: str, detail: str, file: str | os.PathLike | None = None) -> None:
        """Record a cell (part) that could not be read (the sample is kept without it)."""
        self.record(problem, "unreadable", detail, file)

    def note(self, problem: str, detail: str, file: str | os.PathLike | None = None) -> None:
        """Record something implausible about a row that is kept unchanged."""
        self.record(problem, "noted", detail, file)

    def drop(self, problem: str, detail: str, file: str | os.PathLike | None = None) -> _Dropped:
        """Record why the row is dropped; ``raise ctx.drop(...)`` ends the row."""
        self.record(problem, "dropped", detail, file)
        self.dropped = True
        return _Dropped(problem)


# ---------------------------------------------------------------------------------------------
# Readers


class DatabaseReader:
    """Base of the database readers.

    Parameters
    ----------
    root : path
        The database's root folder: the folder holding the release's annotation file and frame
        tree (``data.roots.<key>`` in ``params.yaml``, or ``<standin.out>/<key>``).
    options : ReaderOptions, optional
        Reading choices.

    Subclasses set the class attributes below and override the hooks ``subject_names``,
    ``sample_dirs`` and, for their quirks, ``materials``, ``select``, ``read_apex``, ``read_aus``,
    ``read_emotion``.  :meth:`check` validates the layout without reading frames; :meth:`read`
    reads every row.
    """

    #: Database key (``casme2``).
    key: ClassVar[str] = ""
    #: Human name (``CASME II``).
    title: ClassVar[str] = ""
    #: Accepted annotation file names under the root, in order of preference.
    spreadsheets: ClassVar[tuple[str, ...]] = ()
    #: Top folder of the frame tree under the root (``None``: the root itself).
    frames_folder: ClassVar[str | None] = None
    #: The frame layout under the root, for messages (``CASME2_RAW_selected/sub{NN}/{Filename}/``).
    layout: ClassVar[str] = ""
    #: Role → accepted header names.  Roles: subject, material, onset, apex, offset, au, emotion
    #: (apex and au may be absent: SMIC) and reader-specific ones.
    columns: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: Roles whose column a release may lack (role → accepted header names).
    optional_columns: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: Separators of the AU cell.
    au_separators: ClassVar[str] = PLUS
    #: Frame rate of the release's videos (frames per second), for the duration check.
    fps: ClassVar[float] = 0.0

    def __init__(self, root: str | os.PathLike, options: ReaderOptions | None = None):
        self.root = Path(root)
        self.options = options or ReaderOptions()
        self.spreadsheet: Path | None = None
        self.sheet: Sheet | None = None
        self._roles: dict[str, int] = {}
        self._children: dict[Path, dict[str, str]] = {}
        self._listings: dict[Path, FrameListing | None] = {}

    # -- layout ----------------------------------------------------------------------------

    def find_spreadsheet(self) -> Path:
        """The annotation file under the root: the first of :attr:`spreadsheets` present (exact
        name, else the same name in another letter case).

        Raises
        ------
        DatabaseError
            If the root or the file is missing.
        """
        expected = " or ".join(self.spreadsheets)
        if not self.root.is_dir():
            raise DatabaseError(
                f"{self.key}: database root {self.root} not found (or not a folder); expected "
                f"the {self.title} release folder holding {expected}")
        for name in self.spreadsheets:
            if (self.root / name).is_file():
                return self.root / name
        lower = {p.name.casefold(): p for p in self.root.iterdir() if p.is_file()}
        for name in self.spreadsheets:
            if name.casefold() in lower:
                return lower[name.casefold()]
        present = sorted(p.name for p in self.root.iterdir() if p.suffix.lower() in (".xlsx",
                                                                                    ".xls"))
        raise DatabaseError(
            f"{self.root / self.spreadsheets[0]}: {self.title} annotation file not found; "
            f"expected {expected} in {self.root}"
            + (f" (spreadsheets there: {present})" if present else ""))

    def check(self) -> None:
        """Validate the layout: root, annotation file, its columns, the frame tree's top folder.

        Loads the annotation file (kept for :meth:`read`); lists no frame.

        Raises
        ------
        DatabaseError
            Naming the file or folder and what was expected.
        """
        path = self.find_spreadsheet()
        sheet = load_sheet(path, self.columns)
        self._roles = {}
        for role, names in self.columns.items():
            index = sheet.find(names)
            assert index is not None  # load_sheet found every role
            self._roles[role] = index
        for role, names in self.optional_columns.items():
            index = sheet.find(names)
            if index is not None:
                self._roles[role] = index
        self.check_sheet(sheet)
        if self.frames_folder is not None and not self._child(self.root,
                                                               self.frames_folder).is_dir():
            raise DatabaseError(
                f"{self.root / self.frames_folder}: {self.title} frame folder not found; expected "
                f"the release's frame tree {self.layout} under {self.root}")
        self.spreadsheet, self.sheet = path, sheet

    def check_sheet(self, sheet: Sheet) -> None:
        """Hook: further structural checks of the loaded sheet (raise :class:`DatabaseError`)."""

    # -- hooks -----------------------------------------------------------------------------

    def subject_names(self, value: Any) -> list[str]:
        """Candidate folder names of a subject cell, the canonical one first (``[]``: missing).

        The sample's subject is the first candidate whose sample folder exists, else the first.
        """
        text = cell_text(value)
        return [text] if text else []

    def materials(self, sheet: Sheet) -> list[str]:
        """The material (sample folder) name of every data row (``""`` when empty)."""
        index = self._roles["material"]
        return [cell_text(row[index]) for row in sheet.rows]

    def sample_dirs(self, subject: str, material: str, ctx: RowContext) -> list[Path]:
        """Candidate frame folders of a sample, the release layout's first."""
        raise NotImplementedError

    def note_folder(self, ctx: RowContext, expected: Path, found: Path) -> None:
        """Hook: the sample's frames were found in ``found``, a later candidate of
        :meth:`sample_dirs`, not in the release layout's ``expected`` folder."""

    def select(self, ctx: RowContext) -> bool:
        """Hook: ``False`` leaves the row out by design (counted as ``filtered``)."""
        return True

    def check_duration(self, ctx: RowContext, onset: int, offset: int) -> None:
        """The plausibility check of a row's extent at the release's frame rate.

        ``(offset - onset + 1) / fps`` seconds longer than :data:`MAX_DURATION_S` drops the row (a
        typo in a frame number); longer than :data:`ME_DURATION_LIMIT_S` is recorded (``noted``)
        and kept, as the CD6ME benchmark keeps such rows.  Readers without ``fps`` skip it.
        """
        if self.fps <= 0:
            return
        seconds = (offset - onset + 1) / self.fps
        where = f"onset {onset}, offset {offset}: {offset - onset + 1} frames"
        if seconds > MAX_DURATION_S:
            raise ctx.drop("implausible duration",
                           f"{where} = {seconds:.1f} s at {self.fps:g} fps, longer than "
                           f"{MAX_DURATION_S:g} s: a typo in the onset or offset")
        if seconds > ME_DURATION_LIMIT_S:
            ctx.note("long for a micro-expression",
                     f"{where} = {seconds:.2f} s at {self.fps:g} fps (> {ME_DURATION_LIMIT_S:g} "
                     "s); kept as annotated")

    def read_apex(self, ctx: RowContext, onset: int, offset: int) -> int:
        """The apex frame: the annotated one, or the middle frame when it is unusable."""
        middle = onset + (offset - onset) // 2
        apex, problem = parse_frame(ctx.cells.get("apex"))
        if apex is None:
            ctx.fix(f"apex {problem}",
                    f"apex cell {ctx.text('apex')!r}; apex set to the middle frame "
                    f"onset + (offset - onset) // 2 = {middle}")
            return middle
        if not onset <= apex <= offset:
            ctx.fix("apex outside onset..offset",
                    f"apex {apex} not in {onset}..{offset}; apex set to the middle frame "
                    f"onset + (offset - onset) // 2 = {middle}")
            return middle
        return apex

    def parse_au_cell(self, ctx: RowContext) -> ParsedAUs:
        """The AU cell parsed with this database's separators and the configured ``or`` rule."""
        return parse_aus(ctx.cells.get("au"), self.au_separators, self.options.au_alternatives)

    def note_aus(self, ctx: RowContext, parsed: ParsedAUs) -> None:
        """Record what :func:`parse_aus` could not read plainly."""
        if parsed.empty:
            ctx.unreadable("AU cell empty", "no AU read")
        for token in parsed.unreadable:
            ctx.unreadable("AU token unreadable",
                           f"{token!r} in {parsed.text!r} gives no AU (no FACS code 1-99)")
        for token in parsed.alternatives:
            rule = {"all": "every alternative taken", "first": "the first alternative taken",
                    "none": "no alternative taken"}[self.options.au_alternatives]
            ctx.fix("AU alternatives",
                    f"{token!r} in {parsed.text!r}: {rule} (index.au_alternatives="
                    f"{self.options.au_alternatives}); AUs {_aus_text(parsed.aus)}")
        for token in parsed.several:
            ctx.fix("AU token with several numbers",
                    f"{token!r} in {parsed.text!r} read as one AU per number; AUs "
                    f"{_aus_text(parsed.aus)}")

    def read_aus(self, ctx: RowContext) -> frozenset[int]:
        """The AUs labelled present (AU numbers); databases without AUs give none."""
        if "au" not in self._roles:
            return frozenset()
        parsed = self.parse_au_cell(ctx)
        self.note_aus(ctx, parsed)
        return frozenset(parsed.aus)

    def read_emotion(self, ctx: RowContext) -> str:
        """The release's emotion, normalised (:func:`pipeline.databases.emotions.normalise`)."""
        emotion = emotions.normalise(ctx.cells.get("emotion"))
        if not emotion:
            ctx.unreadable("emotion missing", "empty emotion cell; emotion labels left empty")
        return emotion

    # -- reading ---------------------------------------------------------------------------

    def _child(self, parent: Path, name: str) -> Path:
        """``parent / name``, matching an existing child in another letter case if needed."""
        exact = parent / name
        if exact.exists():
            return exact
        if parent not in self._children:
            try:
                self._children[parent] = {n.casefold(): n for n in os.listdir(parent)}
            except OSError:
                self._children[parent] = {}
        actual = self._children[parent].get(name.casefold())
        return parent / actual if actual else exact

    def path(self, *parts: str) -> Path:
        """The root joined with ``parts``, each matched case-insensitively when not exact."""
        out = self.root
        for part in parts:
            out = self._child(out, part)
        return out

    def _listing(self, folder: Path) -> FrameListing | None:
        if folder not in self._listings:
            try:
                self._listings[folder] = list_frames(folder)
            except (FileNotFoundError, NotADirectoryError):
                self._listings[folder] = None
        return self._listings[folder]

    def read(self) -> ReadResult:
        """Read every data row of the annotation file.

        Returns
        -------
        ReadResult
            Kept samples and every issue; row problems never raise.

        Raises
        ------
        DatabaseError
            If the layout is wrong (:meth:`check`, run first when it has not been).
        """
        if self.sheet is None:
            self.check()
        assert self.sheet is not None and self.spreadsheet is not None
        materials = self.materials(self.sheet)
        corrections = self.corrections()
        samples: list[Sample] = []
        issues: list[Issue] = []
        seen: dict[str, int] = {}
        rows = filtered = 0
        for i, values in enumerate(tqdm(self.sheet.rows, desc=self.key, unit="row", leave=False,
                                        disable=None)):
            if all(cell_text(v) == "" for v in values):
                continue
            rows += 1
            ctx = RowContext(self, i, {r: values[j] for r, j in self._roles.items()}, values)
            subjects = self.subject_names(ctx.cells.get("subject"))
            if subjects and materials[i]:  # provisional, for issues recorded before the folder
                ctx.sample_id = f"{self.key}/{subjects[0]}/{materials[i]}"
            for correction in corrections.pop(i, []):
                self._correct(ctx, correction)
            try:
                if not self.select(ctx):
                    filtered += 1
                    continue
                samples.append(self._read_row(ctx, materials[i], seen))
                seen[samples[-1].sample_id] = i
            except _Dropped:
                pass
            finally:
                issues.extend(ctx.issues)
        for row, left in sorted(corrections.items()):
            log.warning("%s: %s has no data row %d; %d correction(s) of the corrections table not "
                        "applied (%s)", self.key, self.spreadsheet.name, row, len(left),
                        left[0].source)
        return ReadResult(self.key, self.spreadsheet, samples, issues, rows, filtered)

    def corrections(self) -> dict[int, list[Correction]]:
        """The corrections of the annotation file being read, by data row.

        Only those of the table (:func:`load_corrections`) whose ``file`` is this annotation
        file's name (the extension aside: ``.xls`` saved as ``.xlsx`` is the same file); a field
        whose column this file lacks is an error.  When not one of them fits the file (row, subject,
        file name and old value all as the table says) the file is another revision or the
        stand-in, and none is applied (logged); otherwise each that does not fit is recorded on
        its row (``unreadable``, "correction not applied").

        Raises
        ------
        DatabaseError
            If the table is malformed or corrects a column the file does not have.
        """
        assert self.spreadsheet is not None
        stem = self.spreadsheet.stem.casefold()
        out: dict[int, list[Correction]] = {}
        for c in load_corrections(self.key):
            if Path(c.file).stem.casefold() != stem:  # .xls and the same file saved as .xlsx
                continue
            if c.field not in self._roles:
                raise DatabaseError(f"{CORRECTIONS_DIR / (self.key + '.csv')}: corrects the "
                                    f"{c.field} of row {c.row}, but {self.spreadsheet} has no "
                                    f"such column")
            out.setdefault(c.row, []).append(c)
        fits = sum(self._fits(c) for rows in out.values() for c in rows)
        if out and not fits:
            log.info("%s: none of the %d corrections for %s fits this file's rows (another "
                     "revision, or the stand-in); none applied", self.key,
                     sum(map(len, out.values())), self.spreadsheet.name)
            return {}
        return out

    def _fits(self, c: Correction) -> bool:
        """The sheet's row ``c.row`` has the subject, file name and cell the correction names."""
        assert self.sheet is not None
        if c.row >= len(self.sheet.rows):
            return False
        values = self.sheet.rows[c.row]
        found = (values[self._roles["subject"]], values[self._roles["material"]],
                 values[self._roles[c.field]])
        return all(_same_cell(cell_text(v), e)
                   for v, e in zip(found, (c.subject, c.material, c.was), strict=True))

    def _correct(self, ctx: RowContext, c: Correction) -> None:
        """Apply one correction to the row's cells when the row is the one the table names."""
        found = {"subject": ctx.text("subject"), "material": ctx.text("material"),
                 c.field: ctx.text(c.field)}
        expected = {"subject": c.subject, "material": c.material, c.field: c.was}
        if not all(_same_cell(found[k], expected[k]) for k in found):
            ctx.unreadable("correction not applied",
                           f"the corrections table changes {c.field} {c.was!r} -> {c.value!r} "
                           f"in row {c.row} ({c.subject} {c.material}), but the row has "
                           f"{found}; the general rules apply (source: {c.source})")
            return
        ctx.cells[c.field] = c.value
        ctx.fix(f"{c.field} corrected",
                f"{c.field} {c.was!r} -> {c.value!r} from the corrections table: {c.reason} "
                f"(source: {c.source})")

    def _read_row(self, ctx: RowContext, material: str, seen: Mapping[str, int]) -> Sample:
        subjects = self.subject_names(ctx.cells.get("subject"))
        if not subjects:
            raise ctx.drop("subject missing", f"subject cell {ctx.text('subject')!r}")
        if not material:
            raise ctx.drop("file name missing", f"file name cell {ctx.text('material')!r}")
        subject, folder = subjects[0], None
        for candidate in subjects:
            dirs = self.sample_dirs(candidate, material, ctx)
            found = next((d for d in dirs if d.is_dir()), None)
            if found is not None:
                subject, folder = candidate, found
                break
        ctx.sample_id = f"{self.key}/{subject}/{material}"
        expected = self.sample_dirs(subject, material, ctx)[0]
        if folder is None:
            folder = expected
        elif folder != expected:
            self.note_folder(ctx, expected, folder)
        if ctx.sample_id in seen:
            raise ctx.drop("duplicate sample",
                           f"same subject and file name as row {seen[ctx.sample_id]}")

        onset, problem = parse_frame(ctx.cells.get("onset"))
        if onset is None:
            raise ctx.drop(f"onset {problem}", f"onset cell {ctx.text('onset')!r}")
        offset, problem = parse_frame(ctx.cells.get("offset"))
        if offset is None:
            raise ctx.drop(f"offset {problem}", f"offset cell {ctx.text('offset')!r}")
        if offset < onset:
            raise ctx.drop("offset before onset", f"onset {onset}, offset {offset}")
        self.check_duration(ctx, onset, offset)
        apex = self.read_apex(ctx, onset, offset)

        onset, apex, offset, names = self._frames(ctx, folder, onset, apex, offset)

        aus = self.read_aus(ctx)
        emotion = self.read_emotion(ctx)
        return Sample(
            database=self.key, subject=subject, material=material, row=ctx.row, onset=onset,
            apex=apex, offset=offset, frame_dir=folder.as_posix(), frames=names,
            au=ctx.text("au"), aus=aus, emotion=emotion,
            emotion5=emotions.emotion5(self.key, emotion),
            emotion3=emotions.emotion3(self.key, emotion))

    def _frames(self, ctx: RowContext, folder: Path, onset: int, apex: int, offset: int
                ) -> tuple[int, int, int, tuple[str, ...]]:
        listing = self._listing(folder)
        if listing is None:
            raise ctx.drop("frames folder missing", f"expected the folder {folder} "
                           f"({self.layout} under {self.root})", folder)
        if listing.duplicates:
            ctx.fix("duplicate frame numbers", f"{len(listing.duplicates)} files repeat a frame "
                    f"number and are ignored: {_first(listing.duplicates)}", folder)
        if listing.unnumbered:
            ctx.fix("frame files without number", f"{len(listing.unnumbered)} image files have "
                    f"no digit and are ignored: {_first(listing.unnumbered)}", folder)
        if not listing.numbers:
            raise ctx.drop("no frames", "the folder holds no frame image (.jpg, .bmp, .png)",
                           folder)
        inside = [(n, name) for n, name in zip(listing.numbers, listing.names, strict=True)
                  if onset <= n <= offset]
        if not inside:
            raise ctx.drop("no frames between onset and offset",
                           f"annotated {onset}..{offset}; the folder holds frames "
                           f"{listing.numbers[0]}..{listing.numbers[-1]}", folder)
        numbers = [n for n, _ in inside]
        if numbers[0] != onset:
            ctx.fix("onset frame missing", f"no frame {onset} on disk; onset moved to the first "
                    f"frame after it, {numbers[0]}", folder)
            onset = numbers[0]
        if numbers[-1] != offset:
            ctx.fix("offset frame missing", f"no frame {offset} on disk; offset moved to the "
                    f"last frame before it, {numbers[-1]}", folder)
            offset = numbers[-1]
        if len(numbers) < 2:
            raise ctx.drop("fewer than 2 frames",
                           f"only frame {numbers[0]} lies between onset and offset", folder)
        if apex not in numbers:
            nearest = min(numbers, key=lambda n: (abs(n - apex), n))
            ctx.fix("apex frame missing", f"no frame {apex} on disk; apex moved to the nearest "
                    f"frame, {nearest}", folder)
            apex = nearest
        gaps = offset - onset + 1 - len(numbers)
        if gaps:
            present = set(numbers)
            missing = [n for n in range(onset, offset + 1) if n not in present]
            ctx.fix("frames missing", f"frames not on disk: {_first([str(m) for m in missing])} "
                    f"({gaps} of {onset}..{offset}); the frame list skips them", folder)
        return onset, apex, offset, tuple(name for _, name in inside)


def _same_cell(a: str, b: str) -> bool:
    """Two cells as text are the same: equal text, or the same integer (``4`` and ``04``)."""
    if a == b:
        return True
    n = integer_of(a)
    return n is not None and n == integer_of(b)


def _first(items: Sequence[str], n: int = 5) -> str:
    head = ", ".join(items[:n])
    return head + (f", … ({len(items)} in all)" if len(items) > n else "")


def _aus_text(aus: Iterable[int]) -> str:
    aus = list(aus)
    return "+".join(str(a) for a in aus) if aus else "none"

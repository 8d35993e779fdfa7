"""Evaluation protocols: CD6ME leave-one-database-out and leave-one-subject-out emotion tasks.

Definitions from DATASETS.md:

* **CD6ME** (Varanka et al., IEEE TAFFC 2024): micro-AU detection over the 12 AUs
  :data:`CD6ME_AUS` on the six databases :data:`CD6ME_DATABASES`; six folds, each holding one
  database out for testing and training a fresh model on the other five.  Every sample of those
  databases is kept, also those with none of the 12 AUs.
* **LOSO emotion recognition** on CASME II, SAMM and SMIC-HS separately (5 classes for CASME II
  and SAMM, 3 classes for all three) and on the MEGC 2019-style composite SMIC-HS + CASME II +
  SAMM in 3 classes (:data:`EMOTION_TASKS`).  Each fold holds every sample of one subject out;
  the subject identity is ``database/subject``, so equal subject names in two databases are two
  people.

Every fold is checked in code: the test and training parts share no database (CD6ME) or no
subject (LOSO, and also for CD6ME since databases have disjoint people), and an inner
validation split (:func:`inner_split`) is drawn from the training subjects only.  Model selection
never looks at the test fold.
"""

from __future__ import annotations

import logging
import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pipeline.databases.aus import CD6ME_AU_COLUMNS

log = logging.getLogger("protocols")

__all__ = [
    "CD6ME_AUS",
    "CD6ME_DATABASES",
    "EMOTION_TASKS",
    "EmotionTask",
    "Fold",
    "ProtocolError",
    "assert_disjoint",
    "cd6me_folds",
    "cd6me_table",
    "emotion_table",
    "fold_seed",
    "inner_split",
    "loso_folds",
    "subject_identity",
]

#: The 12 CD6ME action units, in the column order of ``samples.csv`` and of every output.
CD6ME_AUS: tuple[str, ...] = CD6ME_AU_COLUMNS

#: The six CD6ME databases (one leave-one-database-out fold each).
CD6ME_DATABASES: tuple[str, ...] = ("casme", "casme2", "samm", "fourd", "mmew", "casme3a")


class ProtocolError(ValueError):
    """The sample table does not allow the requested protocol, or a fold is not disjoint."""


@dataclass(frozen=True)
class EmotionTask:
    """One LOSO emotion-recognition task.

    Attributes
    ----------
    key : str
        Name used in the metrics files, ``"<database>-<classes>"`` or ``"composite-3"``.
    databases : tuple of str
        Database keys whose samples take part.
    column : str
        Label column of ``samples.csv`` (``emotion5`` or ``emotion3``); rows where it is empty
        (e.g. CASME II fear and sadness, ``others`` in three classes) are not part of the task.
    classes : tuple of str
        Class names; the class index of a sample is its position here.
    per_database : bool
        Whether the pooled results are also reported per database (the composite).
    """

    key: str
    databases: tuple[str, ...]
    column: str
    classes: tuple[str, ...]
    per_database: bool = False

    @property
    def n_classes(self) -> int:
        return len(self.classes)


_THREE = ("negative", "positive", "surprise")

#: The standard LOSO tasks of DATASETS.md, keyed by :attr:`EmotionTask.key`.
EMOTION_TASKS: dict[str, EmotionTask] = {
    t.key: t
    for t in (
        EmotionTask("casme2-5", ("casme2",), "emotion5",
                    ("disgust", "happiness", "repression", "surprise", "others")),
        EmotionTask("casme2-3", ("casme2",), "emotion3", _THREE),
        EmotionTask("samm-5", ("samm",), "emotion5",
                    ("anger", "happiness", "contempt", "surprise", "others")),
        EmotionTask("samm-3", ("samm",), "emotion3", _THREE),
        EmotionTask("smic-3", ("smic",), "emotion3", _THREE),
        EmotionTask("composite-3", ("smic", "casme2", "samm"), "emotion3", _THREE,
                    per_database=True),
    )
}


@dataclass(frozen=True)
class Fold:
    """One train/test split of a protocol.

    Attributes
    ----------
    name : str
        File-safe fold name (``metrics/<method>/folds/<name>.json``): the held-out database for
        CD6ME (``"samm"``), ``"<task>__<database>_<subject>"`` for LOSO.
    held_out : str
        The held-out database key (CD6ME) or subject identity ``database/subject`` (LOSO).
    task : str
        ``"cd6me"`` or the :class:`EmotionTask` key.
    train, test : ndarray of int64
        Row positions into the protocol's sample table.
    """

    name: str
    held_out: str
    task: str
    train: np.ndarray = field(repr=False)
    test: np.ndarray = field(repr=False)


def subject_identity(table: pd.DataFrame) -> np.ndarray:
    """The LOSO identity ``database/subject`` of every row.

    Returns
    -------
    ndarray of shape (N,), object (str)
    """
    return (table["database"].astype(str) + "/" + table["subject"].astype(str)).to_numpy(object)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "x"


def fold_seed(seed: int, fold_name: str) -> int:
    """A per-fold seed that depends on the run seed and the fold's name only (not on fold order).

    Returns
    -------
    int in [0, 2**31)
    """
    return (int(seed) * 1_000_003 + zlib.crc32(fold_name.encode("utf-8"))) % (2**31)


def assert_disjoint(fold: Fold, table: pd.DataFrame, by: Iterable[str] = ("subject",)) -> None:
    """Raise unless the fold's training and test rows share no group.

    Parameters
    ----------
    fold : Fold
    table : DataFrame
        The protocol's sample table (positions of ``fold.train``/``fold.test`` index its rows).
    by : iterable of {"subject", "database", "sample"}
        Groupings that must not cross the split; ``"subject"`` uses :func:`subject_identity`.

    Raises
    ------
    ProtocolError
        Naming the fold and the shared groups; also if train and test overlap in positions or
        the test part is empty.
    """
    if len(fold.test) == 0:
        raise ProtocolError(f"fold {fold.name}: empty test set")
    if np.intersect1d(fold.train, fold.test).size:
        raise ProtocolError(f"fold {fold.name}: a sample is both in training and test")
    columns = {
        "subject": subject_identity(table),
        "database": table["database"].to_numpy(object),
        "sample": table["sample_id"].to_numpy(object),
    }
    for key in by:
        if key not in columns:
            raise ValueError(f"unknown grouping {key!r}")
        shared = set(columns[key][fold.train]) & set(columns[key][fold.test])
        if shared:
            raise ProtocolError(
                f"fold {fold.name}: {key}s in both training and test: {sorted(shared)[:5]}")


def cd6me_table(samples: pd.DataFrame,
                databases: Sequence[str] = CD6ME_DATABASES) -> pd.DataFrame:
    """The CD6ME sample table: every sample of the CD6ME databases present, sorted by sample id.

    Parameters
    ----------
    samples : DataFrame
        ``samples.csv`` (docs/internals.md); needs ``sample_id``, ``database``, ``subject`` and
        the 12 columns :data:`CD6ME_AUS` (0/1).
    databases : sequence of str
        The databases of the protocol (default: the six of CD6ME).

    Returns
    -------
    DataFrame
        The selected rows with a fresh 0..N−1 index.

    Raises
    ------
    ProtocolError
        If fewer than two of the databases are present (no leave-one-database-out possible).

    A database of the protocol with no sample is logged as a warning and left out of the folds.
    """
    missing_cols = [c for c in ("sample_id", "database", "subject", *CD6ME_AUS)
                    if c not in samples.columns]
    if missing_cols:
        raise ProtocolError(f"samples table lacks the columns {missing_cols}")
    present = [db for db in databases if (samples["database"] == db).any()]
    absent = [db for db in databases if db not in present]
    if absent:
        log.warning("CD6ME: no samples of %s; leave-one-database-out over %s only",
                    absent, present)
    if len(present) < 2:
        raise ProtocolError(
            f"CD6ME needs at least two of the databases {list(databases)}; found {present}")
    table = samples[samples["database"].isin(present)].sort_values("sample_id")
    return table.reset_index(drop=True)


def cd6me_folds(table: pd.DataFrame) -> list[Fold]:
    """The leave-one-database-out folds of a CD6ME table (one per database, in CD6ME order).

    Raises
    ------
    ProtocolError
        If a fold is not disjoint in databases and subjects.
    """
    dbs = table["database"].to_numpy(object)
    order = [db for db in CD6ME_DATABASES if db in set(dbs)]
    order += sorted(set(dbs) - set(order))
    folds = []
    for db in order:
        fold = Fold(name=_safe(db), held_out=db, task="cd6me",
                    train=np.flatnonzero(dbs != db), test=np.flatnonzero(dbs == db))
        assert_disjoint(fold, table, by=("database", "subject", "sample"))
        folds.append(fold)
    return folds


def emotion_table(samples: pd.DataFrame, task: EmotionTask) -> tuple[pd.DataFrame, np.ndarray]:
    """The samples of one LOSO task and their class indices.

    Parameters
    ----------
    samples : DataFrame
        ``samples.csv``; needs ``sample_id``, ``database``, ``subject`` and ``task.column``.
    task : EmotionTask

    Returns
    -------
    table : DataFrame
        Rows of ``task.databases`` whose label is not empty, sorted by sample id, index 0..N−1.
    labels : ndarray of shape (N,), int64
        Class index into ``task.classes``.

    Raises
    ------
    ProtocolError
        If the label column is missing, or a label is not one of ``task.classes`` (naming the
        label and a sample).
    """
    if task.column not in samples.columns:
        raise ProtocolError(f"samples table lacks the label column {task.column!r} ({task.key})")
    labels = samples[task.column].fillna("").astype(str).str.strip().str.lower()
    mask = samples["database"].isin(task.databases) & (labels != "")
    table = samples[mask].assign(_label=labels[mask]).sort_values("sample_id")
    table = table.reset_index(drop=True)
    index = {c: i for i, c in enumerate(task.classes)}
    unknown = table[~table["_label"].isin(list(index))]
    if len(unknown):
        row = unknown.iloc[0]
        raise ProtocolError(
            f"{task.key}: label {row['_label']!r} of {row['sample_id']} ({task.column}) is not one "
            f"of the task's classes {list(task.classes)}")
    y = table["_label"].map(index).to_numpy(np.int64)
    return table.drop(columns="_label"), y


def loso_folds(table: pd.DataFrame, task: EmotionTask) -> list[Fold]:
    """Leave-one-subject-out folds of a task's table, one per subject identity (sorted).

    Raises
    ------
    ProtocolError
        If fewer than two subjects, or a fold is not subject-disjoint.
    """
    subjects = subject_identity(table)
    unique = sorted(set(subjects))
    if len(unique) < 2:
        raise ProtocolError(f"{task.key}: LOSO needs at least two subjects, found {unique}")
    folds = []
    for subject in unique:
        fold = Fold(name=f"{task.key}__{_safe(subject.replace('/', '_'))}", held_out=subject,
                    task=task.key, train=np.flatnonzero(subjects != subject),
                    test=np.flatnonzero(subjects == subject))
        assert_disjoint(fold, table, by=("subject", "sample"))
        folds.append(fold)
    return folds


def inner_split(train: np.ndarray, table: pd.DataFrame, share: float,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split a fold's training rows into inner-training and validation rows by subject.

    The validation subjects are drawn (seeded) from the training subjects only, so selecting an
    epoch on them never looks at the test fold.

    Parameters
    ----------
    train : ndarray of int
        Positions of the fold's training rows in ``table``.
    table : DataFrame
    share : float
        Fraction (0, 1) of the training subjects put into validation (at least one subject,
        at most all but one).
    seed : int

    Returns
    -------
    inner_train, validation : ndarray of int64
        Disjoint in subjects, together equal to ``train``.

    Raises
    ------
    ProtocolError
        If ``share`` is not in (0, 1) or the training part has fewer than two subjects.
    """
    if not 0.0 < share < 1.0:
        raise ProtocolError(f"inner validation share must be in (0, 1), got {share}")
    subjects = subject_identity(table)[train]
    unique = np.array(sorted(set(subjects)), dtype=object)
    if len(unique) < 2:
        raise ProtocolError("inner validation needs at least two training subjects")
    rng = np.random.default_rng(seed)
    n_val = int(min(len(unique) - 1, max(1, round(share * len(unique)))))
    val_subjects = set(rng.choice(unique, size=n_val, replace=False).tolist())
    is_val = np.array([s in val_subjects for s in subjects], dtype=bool)
    return np.asarray(train[~is_val], np.int64), np.asarray(train[is_val], np.int64)

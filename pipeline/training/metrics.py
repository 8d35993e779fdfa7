"""Evaluation metrics of the two protocols, computed on pooled test predictions.

Definitions (DATASETS.md, "CD6ME" and "Emotion recognition"):

* **CD6ME AU detection** (Varanka et al., "Data leakage and evaluation issues in
  micro-expression analysis", IEEE TAFFC 2024): each AU's score is thresholded (probability 0.5,
  i.e. logit 0), the test predictions of all leave-one-database-out folds are pooled, and the
  *binary* F1 of the positive class is computed per AU on the pooled samples; the reported
  "Average" is the mean of the 12 F1s.  The per-database view takes, for each fold, the mean of
  its 12 binary F1s and then the mean over folds.  Macro-F1 over both classes is *not* used.
  Beside F1 (ours, not part of the CD6ME protocol): the ROC AUC of each AU's *scores* on the
  pooled samples and their mean (``auc_mean``, ``auc_per_au``).  F1 at the 0.5 threshold cannot
  tell a model that ranks samples from one that outputs ≈ 0.5 for everything (both losses the
  methods use are minimised by a constant 0.5 when nothing is learned, and such a model's F1 is a
  coin flip near the all-positive floor); the AUC is 0.5 for any constant or random score.
* **LOSO emotion recognition**: accuracy, UF1 (unweighted mean of the per-class F1) and UAR
  (unweighted mean of the per-class recall) on the test predictions pooled over all
  leave-one-subject-out folds (Ruan et al., ACM MM 2022, Eq. 9–11; MEGC 2019).

Conventions where a definition is undefined (``0 / 0``):

* an AU whose labels hold a single class in the evaluated set has no ROC AUC: ``None`` in
  ``auc_per_au`` (``null`` in JSON), left out of ``auc_mean`` (NaN when no AU has one);
* a binary F1 with no positive among labels *and* predictions is 0 (scikit-learn's
  ``zero_division=0``, as the CD6ME reference tooling computes it with scikit-learn);
* UF1 and UAR average over the classes present in ``y_true`` of the evaluated set (UAR's
  per-class recall is undefined for an absent class).  On pooled LOSO predictions every class of
  the task is present; on a single subject's fold only some are.

Scikit-learn computes the per-class counts; this module fixes which samples are pooled and how
the per-AU / per-class numbers are averaged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, recall_score, roc_auc_score

__all__ = [
    "au_fold_summary",
    "binary_f1_per_au",
    "cd6me_summary",
    "emotion_metrics",
    "mean_of",
    "roc_auc_per_au",
    "threshold_scores",
]


def threshold_scores(scores: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Binary AU decisions from probabilities.

    Parameters
    ----------
    scores : ndarray of shape (N, K), float
        Per-AU probabilities in [0, 1] (sigmoid of the logits).
    threshold : float
        Decision threshold (CD6ME: 0.5, i.e. logit 0).

    Returns
    -------
    ndarray of shape (N, K), int64
        1 where ``scores >= threshold``.
    """
    return (np.asarray(scores, dtype=np.float64) >= threshold).astype(np.int64)


def _as_binary_matrix(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (samples, AUs), got shape {a.shape}")
    if a.size and not np.isin(a, (0, 1)).all():
        raise ValueError(f"{name} must hold only 0/1 values")
    return a.astype(np.int64)


def binary_f1_per_au(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Binary F1 of the positive class for every AU column.

    Parameters
    ----------
    y_true, y_pred : ndarray of shape (N, K), 0/1
        Labels and thresholded predictions; K AUs (12 for CD6ME).

    Returns
    -------
    ndarray of shape (K,), float64
        F1 = 2 TP / (2 TP + FP + FN) per AU, a fraction in [0, 1]; 0 where the AU is neither
        labelled nor predicted in any sample.

    Raises
    ------
    ValueError
        If the shapes differ, are not 2-D, or hold values other than 0/1.
    """
    y_true = _as_binary_matrix(y_true, "y_true")
    y_pred = _as_binary_matrix(y_pred, "y_pred")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in shape")
    if y_true.shape[0] == 0:
        return np.zeros(y_true.shape[1])
    return np.asarray(
        [f1_score(y_true[:, k], y_pred[:, k], average="binary", pos_label=1, zero_division=0)
         for k in range(y_true.shape[1])],
        dtype=np.float64,
    )


def roc_auc_per_au(y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC AUC of every AU column's scores (scikit-learn ``roc_auc_score``, ties count ½).

    Parameters
    ----------
    y_true : ndarray of shape (N, K), 0/1
        Labels.
    scores : ndarray of shape (N, K), float
        Per-AU scores (probabilities or logits; only their order matters).

    Returns
    -------
    ndarray of shape (K,), float64
        AUC in [0, 1] per AU; 0.5 for a constant score; NaN where the labels of the AU hold one
        class only (no AUC defined).

    Raises
    ------
    ValueError
        If the shapes differ, are not 2-D, the labels are not 0/1 or a score is not finite.
    """
    y_true = _as_binary_matrix(y_true, "y_true")
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != y_true.shape:
        raise ValueError(f"y_true {y_true.shape} and scores {scores.shape} differ in shape")
    if not np.isfinite(scores).all():
        raise ValueError("scores hold non-finite values")
    out = np.full(y_true.shape[1], np.nan)
    for k in range(y_true.shape[1]):
        if 0 < y_true[:, k].sum() < y_true.shape[0]:
            out[k] = roc_auc_score(y_true[:, k], scores[:, k])
    return out


def _auc_fields(y_true: np.ndarray, scores: np.ndarray, aus: Sequence[str]) -> dict:
    auc = roc_auc_per_au(y_true, scores)
    defined = auc[np.isfinite(auc)]
    return {
        "auc_mean": float(defined.mean()) if defined.size else float("nan"),
        "auc_per_au": {au: (float(v) if np.isfinite(v) else None)
                       for au, v in zip(aus, auc, strict=True)},
    }


def au_fold_summary(y_true: np.ndarray, y_pred: np.ndarray, aus: Sequence[str],
                    scores: np.ndarray | None = None) -> dict:
    """F1 per AU and their mean on one set of samples (one fold, or the pooled folds).

    Parameters
    ----------
    y_true, y_pred : ndarray of shape (N, K), 0/1
    aus : sequence of K str
        AU names in column order (e.g. ``"AU1"``).
    scores : ndarray of shape (N, K), float, optional
        The scores ``y_pred`` was thresholded from; adds the ROC AUC fields.

    Returns
    -------
    dict
        ``{"f1_mean": float, "f1_per_au": {au: float}, "n_samples": int}``, with ``scores``
        also ``"auc_mean": float`` and ``"auc_per_au": {au: float | None}``
        (:func:`roc_auc_per_au`; module docstring for undefined AUCs).
    """
    if len(aus) != np.shape(y_true)[1]:
        raise ValueError(f"{len(aus)} AU names for {np.shape(y_true)[1]} columns")
    f1 = binary_f1_per_au(y_true, y_pred)
    out = {
        "f1_mean": float(f1.mean()) if f1.size else float("nan"),
        "f1_per_au": {au: float(v) for au, v in zip(aus, f1, strict=True)},
        "n_samples": int(np.shape(y_true)[0]),
    }
    if scores is not None:
        out.update(_auc_fields(y_true, scores, aus))
    return out


def cd6me_summary(y_true: np.ndarray, y_pred: np.ndarray, databases: Sequence[str],
                  aus: Sequence[str], scores: np.ndarray | None = None) -> dict:
    """The CD6ME numbers from the pooled test predictions of all leave-one-database-out folds.

    Parameters
    ----------
    y_true, y_pred : ndarray of shape (N, K), 0/1
        Labels and thresholded predictions of every test sample of every fold (each sample is in
        exactly one test fold).
    databases : sequence of N str
        Database key of each sample, which is also its test fold under leave-one-database-out.
    aus : sequence of K str
    scores : ndarray of shape (N, K), float, optional
        The pooled scores ``y_pred`` was thresholded from.

    Returns
    -------
    dict
        ``f1_mean`` (mean over AUs of the pooled binary F1 — the published "Average"),
        ``f1_per_au``, ``f1_per_database`` (per fold: mean of its K binary F1s),
        ``f1_database_mean`` (mean of those over folds), ``n_samples``; with ``scores`` also
        ``auc_mean`` and ``auc_per_au`` (pooled ROC AUC, :func:`roc_auc_per_au`).  Fractions
        in [0, 1].

    Raises
    ------
    ValueError
        On inconsistent lengths or non-binary inputs.
    """
    databases = np.asarray(databases, dtype=object)
    if len(databases) != np.shape(y_true)[0]:
        raise ValueError(f"{len(databases)} database keys for {np.shape(y_true)[0]} samples")
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    out = au_fold_summary(y_true, y_pred, aus, scores)
    per_db: dict[str, float] = {}
    for db in sorted(set(databases.tolist())):
        mask = databases == db
        per_db[db] = float(binary_f1_per_au(y_true[mask], y_pred[mask]).mean())
    return {
        "f1_mean": out["f1_mean"],
        "f1_per_au": out["f1_per_au"],
        "f1_per_database": per_db,
        "f1_database_mean": float(np.mean(list(per_db.values()))) if per_db else float("nan"),
        "n_samples": out["n_samples"],
        **{k: out[k] for k in ("auc_mean", "auc_per_au") if k in out},
    }


def emotion_metrics(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray,
                    class_names: Sequence[str] | None = None) -> dict:
    """Accuracy, UF1 and UAR of single-label emotion predictions.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (N,), int
        Class indices (0 … C−1) of labels and predictions, pooled over all test folds.
    class_names : sequence of C str, optional
        Names in index order; when given, the result also holds the per-class F1 and recall.

    Returns
    -------
    dict
        ``{"accuracy", "uf1", "uar", "n_samples"}`` (fractions in [0, 1]); with ``class_names``
        also ``"f1_per_class"`` and ``"recall_per_class"`` over the classes present in ``y_true``.
        UF1 = mean over the classes present in ``y_true`` of 2 TP_c / (2 TP_c + FP_c + FN_c);
        UAR = mean over the same classes of TP_c / n_c.

    Raises
    ------
    ValueError
        On different lengths or an empty input.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must be equal 1-D shapes")
    if y_true.size == 0:
        raise ValueError("no samples to evaluate")
    present = np.unique(y_true)
    f1 = f1_score(y_true, y_pred, labels=present, average=None, zero_division=0)
    recall = recall_score(y_true, y_pred, labels=present, average=None, zero_division=0)
    out: dict = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "uf1": float(np.mean(f1)),
        "uar": float(np.mean(recall)),
        "n_samples": int(y_true.size),
    }
    if class_names is not None:
        names = list(class_names)
        if present.max() >= len(names):
            raise ValueError(f"class index {present.max()} outside the {len(names)} class names")
        out["f1_per_class"] = {names[c]: float(v) for c, v in zip(present, f1, strict=True)}
        out["recall_per_class"] = {names[c]: float(v) for c, v in zip(present, recall, strict=True)}
    return out


def mean_of(values: Mapping[str, float]) -> float:
    """Plain mean of a mapping's values (NaN when empty)."""
    return float(np.mean(list(values.values()))) if values else float("nan")

"""Protocol metrics: hand-computed cases, scikit-learn on the same predictions, pooled vs per-fold."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

from pipeline.training.metrics import (
    au_fold_summary,
    binary_f1_per_au,
    cd6me_summary,
    emotion_metrics,
    roc_auc_per_au,
    threshold_scores,
)


def test_binary_f1_hand_computed():
    # AU a: TP 1, FP 1, FN 1 -> 2/(2+1+1) = 0.5; AU b: perfect; AU c: never labelled nor predicted
    # -> 0 (zero_division=0); AU d: TP 0, FP 2 -> 0.
    y_true = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
    y_pred = np.array([[1, 1, 0, 1], [0, 0, 0, 1], [1, 1, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_allclose(binary_f1_per_au(y_true, y_pred), [0.5, 1.0, 0.0, 0.0])


def test_threshold_is_inclusive_at_one_half():
    np.testing.assert_array_equal(threshold_scores(np.array([[0.49999, 0.5, 0.9]])), [[0, 1, 1]])


def test_pooled_differs_from_per_fold_mean_hand_computed():
    # One AU, two databases (= two leave-one-database-out folds).
    # fold A: y [1, 0], p [1, 0]          -> F1 1.0
    # fold B: y [1, 1, 1, 0], p [0, 0, 1, 1] -> TP 1, FP 1, FN 2 -> 2/5 = 0.4
    # pooled: TP 2, FP 1, FN 2 -> 4/7; per-database mean: 0.7
    y = np.array([[1], [0], [1], [1], [1], [0]])
    p = np.array([[1], [0], [0], [0], [1], [1]])
    dbs = ["a", "a", "b", "b", "b", "b"]
    s = cd6me_summary(y, p, dbs, ["AU1"])
    assert s["f1_mean"] == pytest.approx(4 / 7)
    assert s["f1_per_au"] == {"AU1": pytest.approx(4 / 7)}
    assert s["f1_per_database"] == {"a": pytest.approx(1.0), "b": pytest.approx(0.4)}
    assert s["f1_database_mean"] == pytest.approx(0.7)
    assert s["n_samples"] == 6


def test_cd6me_summary_matches_sklearn_on_random_predictions():
    rng = np.random.default_rng(3)
    n, k = 300, 12
    y = (rng.random((n, k)) < np.linspace(0.03, 0.4, k)).astype(int)
    p = (rng.random((n, k)) < 0.25).astype(int)
    dbs = rng.choice(["casme", "casme2", "samm", "fourd", "mmew", "casme3a"], n)
    aus = [f"AU{i}" for i in range(k)]
    s = cd6me_summary(y, p, dbs, aus)
    ref = f1_score(y, p, average=None, zero_division=0)
    np.testing.assert_allclose([s["f1_per_au"][a] for a in aus], ref)
    assert s["f1_mean"] == pytest.approx(f1_score(y, p, average="macro", zero_division=0))
    per_db = {db: f1_score(y[dbs == db], p[dbs == db], average="macro", zero_division=0)
              for db in set(dbs)}
    assert s["f1_per_database"] == pytest.approx(per_db)
    assert s["f1_database_mean"] == pytest.approx(np.mean(list(per_db.values())))
    # The two views differ on the same predictions (that is why both are reported).
    assert s["f1_mean"] != pytest.approx(s["f1_database_mean"], abs=1e-9)
    # Binary F1, not macro over both classes (which would be much higher).
    both = np.mean([f1_score(y[:, j], p[:, j], average="macro") for j in range(k)])
    assert both > s["f1_mean"] + 0.1


def test_au_fold_summary_fields():
    out = au_fold_summary(np.array([[1, 0]]), np.array([[1, 1]]), ["AU1", "AU2"])
    assert out == {"f1_mean": 0.5, "f1_per_au": {"AU1": 1.0, "AU2": 0.0}, "n_samples": 1}


def test_bad_au_inputs_raise():
    with pytest.raises(ValueError, match="0/1"):
        binary_f1_per_au(np.array([[2]]), np.array([[1]]))
    with pytest.raises(ValueError, match="shape"):
        binary_f1_per_au(np.zeros((2, 3), int), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="database keys"):
        cd6me_summary(np.zeros((2, 1), int), np.zeros((2, 1), int), ["a"], ["AU1"])


def test_emotion_hand_computed():
    # classes 0, 1, 2; y = [0 0 0 1 1 2], p = [0 0 1 1 2 2]
    # class 0: TP 2, FP 0, FN 1 -> F1 4/5, recall 2/3
    # class 1: TP 1, FP 1, FN 1 -> F1 1/2, recall 1/2
    # class 2: TP 1, FP 1, FN 0 -> F1 2/3, recall 1
    y = [0, 0, 0, 1, 1, 2]
    p = [0, 0, 1, 1, 2, 2]
    m = emotion_metrics(y, p, ["negative", "positive", "surprise"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["uf1"] == pytest.approx((4 / 5 + 1 / 2 + 2 / 3) / 3)
    assert m["uar"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert m["n_samples"] == 6
    assert m["f1_per_class"]["negative"] == pytest.approx(0.8)


def test_emotion_matches_sklearn_and_pooling_matters():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 200)
    p = np.where(rng.random(200) < 0.5, y, rng.integers(0, 5, 200))
    m = emotion_metrics(y, p)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, p))
    assert m["uf1"] == pytest.approx(f1_score(y, p, average="macro"))
    assert m["uar"] == pytest.approx(balanced_accuracy_score(y, p))
    # LOSO: pooled UF1 differs from the mean of per-subject UF1s.
    subjects = rng.integers(0, 10, 200)
    per_subject = np.mean([emotion_metrics(y[subjects == s], p[subjects == s])["uf1"]
                           for s in range(10)])
    assert abs(per_subject - m["uf1"]) > 1e-3


def test_emotion_uses_classes_present_in_labels():
    # A predicted class absent from the labels counts as an error but gets no F1/recall term.
    m = emotion_metrics([0, 0, 1, 1], [0, 2, 1, 1])
    assert m["uar"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["uf1"] == pytest.approx((2 / 3 + 1.0) / 2)
    with pytest.raises(ValueError, match="no samples"):
        emotion_metrics([], [])


def test_roc_auc_hand_computed_and_undefined():
    # AU a: positives scored 0.9, 0.4; negatives 0.5, 0.1 -> 3 of 4 pairs ordered: 0.75.
    # AU b: constant score -> 0.5.  AU c: no positive -> undefined (NaN / None, not in the mean).
    y = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0]])
    s = np.array([[0.9, 0.5, 0.2], [0.4, 0.5, 0.3], [0.5, 0.5, 0.1], [0.1, 0.5, 0.9]])
    auc = roc_auc_per_au(y, s)
    np.testing.assert_allclose(auc[:2], [0.75, 0.5])
    assert np.isnan(auc[2])
    out = cd6me_summary(y, threshold_scores(s), ["a"] * 4, ["AU1", "AU2", "AU3"], scores=s)
    assert out["auc_per_au"] == {"AU1": 0.75, "AU2": 0.5, "AU3": None}
    assert out["auc_mean"] == pytest.approx(0.625)
    with pytest.raises(ValueError, match="differ in shape"):
        roc_auc_per_au(y, s[:, :2])


def test_roc_auc_matches_sklearn_and_ignores_threshold():
    rng = np.random.default_rng(5)
    y = (rng.random((200, 4)) < 0.3).astype(int)
    s = rng.random((200, 4)) + 0.5 * y  # informative scores, all above 0.5 for some
    auc = roc_auc_per_au(y, s)
    np.testing.assert_allclose(auc, [roc_auc_score(y[:, k], s[:, k]) for k in range(4)])
    assert (auc > 0.6).all()
    # a monotone transform of the scores changes F1 at 0.5, not the AUC
    np.testing.assert_allclose(roc_auc_per_au(y, s / 10), auc)

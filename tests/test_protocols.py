"""CD6ME leave-one-database-out and LOSO folds: membership, disjointness, labels, inner split."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from pipeline.training.protocols import (
    CD6ME_AUS,
    CD6ME_DATABASES,
    EMOTION_TASKS,
    Fold,
    ProtocolError,
    assert_disjoint,
    cd6me_folds,
    cd6me_table,
    emotion_table,
    fold_seed,
    inner_split,
    loso_folds,
    subject_identity,
)


def _samples(n_subjects: int = 3, per_subject: int = 2, databases=(*CD6ME_DATABASES, "smic")):
    rows = []
    rng = np.random.default_rng(0)
    e5 = {"casme2": ["disgust", "happiness", "repression", "surprise", "others"],
          "samm": ["anger", "happiness", "contempt", "surprise", "others"]}
    for db in databases:
        for s in range(n_subjects):
            for k in range(per_subject):
                label5 = e5[db][(s + k) % 5] if db in e5 else ""
                label3 = {"happiness": "positive", "surprise": "surprise", "others": ""}.get(
                    label5, "negative")
                if db == "smic":
                    label3 = ["positive", "negative", "surprise"][(s + k) % 3]
                rows.append({"sample_id": f"{db}/s{s}/m{k}", "database": db,
                             # the same subject name in every database: different people
                             "subject": f"s{s}",
                             **{au: int(rng.random() < 0.3) for au in CD6ME_AUS},
                             "emotion5": label5, "emotion3": label3})
    return pd.DataFrame(rows).sample(frac=1.0, random_state=1).reset_index(drop=True)


def test_cd6me_folds_leave_one_database_out():
    table = cd6me_table(_samples())
    assert "smic" not in set(table["database"])
    assert list(table["sample_id"]) == sorted(table["sample_id"])
    folds = cd6me_folds(table)
    assert [f.held_out for f in folds] == list(CD6ME_DATABASES)
    tested = np.concatenate([f.test for f in folds])
    assert sorted(tested) == list(range(len(table)))  # each sample tested exactly once
    for f in folds:
        assert set(table["database"].iloc[f.test]) == {f.held_out}
        assert f.held_out not in set(table["database"].iloc[f.train])
        assert len(f.train) + len(f.test) == len(table)
        # people: subject names repeat across databases, identities do not
        ids = subject_identity(table)
        assert not set(ids[f.train]) & set(ids[f.test])


def test_cd6me_with_a_missing_database_warns(caplog):
    s = _samples(databases=("casme", "samm", "mmew"))
    with caplog.at_level(logging.WARNING):
        table = cd6me_table(s)
    assert "no samples of" in caplog.text
    assert [f.held_out for f in cd6me_folds(table)] == ["casme", "samm", "mmew"]
    with pytest.raises(ProtocolError, match="at least two"):
        cd6me_table(_samples(databases=("casme", "smic")))
    with pytest.raises(ProtocolError, match="columns"):
        cd6me_table(s.drop(columns=["AU17"]))


def test_assert_disjoint_catches_leaks():
    table = cd6me_table(_samples())
    a = np.flatnonzero(table["sample_id"] == "casme/s0/m0")
    b = np.flatnonzero(table["sample_id"] == "casme/s0/m1")
    with pytest.raises(ProtocolError, match="subjects in both"):
        assert_disjoint(Fold("leak", "x", "cd6me", train=a, test=b), table)
    with pytest.raises(ProtocolError, match="databases in both"):
        assert_disjoint(Fold("leak", "x", "cd6me", train=a, test=b), table, by=("database",))
    with pytest.raises(ProtocolError, match="both in training and test"):
        assert_disjoint(Fold("leak", "x", "cd6me", train=a, test=a), table)
    with pytest.raises(ProtocolError, match="empty test"):
        assert_disjoint(Fold("e", "x", "cd6me", train=a, test=a[:0]), table)


@pytest.mark.parametrize("key", sorted(EMOTION_TASKS))
def test_loso_folds_one_subject_each(key):
    task = EMOTION_TASKS[key]
    table, y = emotion_table(_samples(), task)
    assert set(table["database"]) == set(task.databases)
    assert (table[task.column] != "").all()
    assert y.min() >= 0 and y.max() < task.n_classes
    folds = loso_folds(table, task)
    ids = subject_identity(table)
    assert len(folds) == len(set(ids))
    assert sorted(np.concatenate([f.test for f in folds])) == list(range(len(table)))
    for f in folds:
        assert set(ids[f.test]) == {f.held_out}
        assert f.held_out not in set(ids[f.train])
        assert f.name.startswith(f"{key}__") and "/" not in f.name


def test_emotion_labels_checked_and_empty_rows_left_out():
    s = _samples(per_subject=3)
    task = EMOTION_TASKS["casme2-3"]
    table, y = emotion_table(s, task)
    n_others = ((s["database"] == "casme2") & (s["emotion5"] == "others")).sum()
    assert n_others > 0
    assert len(table) == (s["database"] == "casme2").sum() - n_others
    assert [task.classes[i] for i in y] == list(table["emotion3"])
    s.loc[s.index[s["database"] == "casme2"][0], "emotion3"] = "fear"
    with pytest.raises(ProtocolError, match="'fear' of casme2/"):
        emotion_table(s, task)


def test_composite_has_three_databases_and_distinct_people():
    table, _ = emotion_table(_samples(), EMOTION_TASKS["composite-3"])
    folds = loso_folds(table, EMOTION_TASKS["composite-3"])
    # subject "s0" exists in smic, casme2 and samm: three people, three folds
    assert sum(f.held_out.endswith("/s0") for f in folds) == 3


def test_inner_split_draws_training_subjects_only():
    table = cd6me_table(_samples(n_subjects=5))
    fold = cd6me_folds(table)[0]
    tr, va = inner_split(fold.train, table, 0.2, seed=7)
    ids = subject_identity(table)
    assert sorted(np.concatenate([tr, va])) == sorted(fold.train)
    assert not set(ids[tr]) & set(ids[va])
    assert not set(ids[va]) & set(ids[fold.test])
    assert len(set(ids[va])) == round(0.2 * len(set(ids[fold.train])))
    tr2, va2 = inner_split(fold.train, table, 0.2, seed=7)
    np.testing.assert_array_equal(va, va2)
    with pytest.raises(ProtocolError):
        inner_split(fold.train, table, 1.0, seed=0)


def test_fold_seed_depends_on_name_not_order():
    # pinned values: CRC-32 of the name (no per-process hash), independent of any fold list
    assert fold_seed(0, "casme") == 538328274
    assert fold_seed(7, "samm") == 1928743243
    assert fold_seed(0, "casme") != fold_seed(1, "casme")
    assert fold_seed(0, "casme") != fold_seed(0, "samm")
    assert 0 <= fold_seed(123456, "x") < 2**31

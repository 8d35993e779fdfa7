"""The readers read the stand-in with no special case: every row is accounted for, every kept
sample matches its ground truth, and the only issues are the quirks the stand-in injected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.databases.aus import CD6ME_AUS
from pipeline.databases.index import IndexOptions, build_index
from pipeline.standin import KEYS

# what each injected quirk makes a reader record (pipeline/databases/base.py)
QUIRK_PROBLEMS = {"apex_missing": "apex missing", "au_question": "AU token unreadable",
                  "au_or": "AU alternatives"}


@pytest.fixture(scope="module")
def index(standin_tiny):
    return build_index({k: standin_tiny / k for k in KEYS}, IndexOptions())


def _gt(root: Path, key: str) -> list[dict]:
    return json.loads((root / "ground_truth" / f"{key}.json").read_text())["samples"]


def test_index_counts_equal_the_ground_truth(index, standin_tiny):
    for key in KEYS:
        gt = _gt(standin_tiny, key)
        micro = [s for s in gt if s["expression_type"] == "micro"]
        summary = index.summary[key]
        assert summary["rows"] == len(gt)
        assert summary["kept"] == len(micro)
        assert summary["filtered"] == len(gt) - len(micro) == 0   # micro rows only
        assert summary["dropped"] == 0
        assert (index.samples["database"] == key).sum() == len(micro)


def test_index_samples_match_the_ground_truth(index, standin_tiny):
    samples = index.samples.set_index("sample_id")
    for key in KEYS:
        for s in _gt(standin_tiny, key):
            if s["expression_type"] != "micro":
                continue
            sid = f"{key}/{s['subject_folder']}/{s['material_unique']}"
            assert sid in samples.index, sid
            row = samples.loc[sid]
            assert Path(row["frame_dir"]) == standin_tiny / key / s["folder"]
            assert row["frames"].split("|") == s["frame_files"]
            assert (row["onset"], row["offset"]) == (s["onset"], s["offset"])
            middle = s["onset"] + (s["offset"] - s["onset"]) // 2
            want_apex = middle if key == "smic" or s["annotated_apex"] is None else s["annotated_apex"]
            assert row["apex"] == want_apex
            if key != "smic":
                want = set(s["label_aus"]) | set(s["au_alternatives"] or ())   # au_alternatives=all
                got = {au for au in CD6ME_AUS if row[f"AU{au}"] == 1}
                assert got == want & set(CD6ME_AUS), (sid, s["au_cell"])
            emotion = s["emotion"].lower()
            assert row["emotion"] == ("repression" if key == "mmew" and emotion == "others"
                                      else emotion)


def test_index_issues_are_exactly_the_injected_quirks(index, standin_tiny):
    issues = index.issues
    got = {(r.database, int(r.row), r.problem) for r in issues.itertuples()}
    want = {(key, s["row"], QUIRK_PROBLEMS[q]) for key in KEYS for s in _gt(standin_tiny, key)
            for q in s["quirks"]}
    assert want and got == want

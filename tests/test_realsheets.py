"""The readers on the real releases' own annotation files agree with the CD6ME reference tooling.

For each public copy in ``../shared/realsheets/`` (beside the repository; see its README) the test
builds the expected sample table the way the reference (tvaranka/meb) reads the file — pandas,
meb's sample naming and AU rule, meb's row fixes as listed in tests/cd6me_reference.py — without
the project's readers or corrections tables; lays out a temporary release tree with an empty
frame file for every frame onset..offset of every expected sample; runs the reader; and compares
the whole table: sample id, subject, onset, apex, offset, number of frames, the 12 CD6ME AUs and
the emotion (lower-cased).  The sheets are read in place, never copied into the repository.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
from cd6me_reference import (
    CASME2_2019_FIXES,
    CASME2_UPDATED_FIXES,
    CASME3A_FIXES,
    COUNTS,
    MEB,
    SAMM_FIXES,
)
from shared_data import shared_path

from pipeline.databases import READERS
from pipeline.databases.aus import CD6ME_AU_COLUMNS, CD6ME_AUS

#: ``$MER_REALSHEETS_DIR``, else ``../shared/realsheets`` beside the repository (CI).
REALSHEETS = shared_path("MER_REALSHEETS_DIR", "realsheets")
CASME3A_FILE = "cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx"
SAMM_FILE = "SAMM_Micro_FACS_Codes_v2.xlsx"
CASME2_FILE = "CASME2-coding-20190701.xlsx"

#: Every test needs the sheets: skipped without them on a developer machine, failed on CI.
pytestmark = pytest.mark.usefixtures("realsheets_dir")

COLUMNS = ["sample_id", "subject", "onset", "apex", "offset", "n_frames", *CD6ME_AU_COLUMNS,
           "emotion"]


# -- the reference's table, built without the project's readers -------------------------------

def meb_aus(cell) -> set[int]:
    """meb's AU rule: split the text on '+', keep each token's digits."""
    digits = ("".join(ch for ch in token if ch.isdigit()) for token in str(cell).split("+"))
    return {int(d) for d in digits if d}


def apply_fixes(df: pd.DataFrame, fixes: dict[str, dict[int, object]]) -> pd.DataFrame:
    df = df.copy()
    for column, rows in fixes.items():
        if df[column].dtype != object:
            df[column] = df[column].astype(object)
        for row, value in rows.items():
            df.loc[row, column] = value
    return df


def expected_table(df: pd.DataFrame, key: str, subject: str, material: str, onset: str,
                   apex: str, offset: str, au: str, emotion: str, subject_name) -> pd.DataFrame:
    records = []
    for _, r in df.iterrows():
        sub = subject_name(r[subject])
        rec = {"sample_id": f"{key}/{sub}/{r[material]}", "subject": sub,
               "onset": int(r[onset]), "apex": int(r[apex]), "offset": int(r[offset])}
        rec["n_frames"] = rec["offset"] - rec["onset"] + 1
        aus = meb_aus(r[au])
        rec.update({f"AU{n}": int(n in aus) for n in CD6ME_AUS})
        rec["emotion"] = str(r[emotion]).strip().lower()
        records.append(rec)
    return pd.DataFrame.from_records(records, columns=COLUMNS)


def meb_materials(df: pd.DataFrame) -> list[str]:
    """meb's names of CAS(ME)^3 samples: a run of consecutive rows of one subject and Filename
    gets the suffixes 2, 3, … after its first row."""
    materials = [str(m) for m in df["Filename"]]
    subjects = list(df["Subject"])
    num = 2
    for i in range(len(materials) - 1):
        if "".join(c for c in materials[i] if not c.isdigit()) == materials[i + 1] \
                and subjects[i] == subjects[i + 1]:
            materials[i + 1] += str(num)
            num += 1
        else:
            num = 2
    return materials


def expected_casme3a() -> pd.DataFrame:
    df = pd.read_excel(REALSHEETS / CASME3A_FILE)
    df["Filename"] = meb_materials(df)
    df = apply_fixes(df, {k.capitalize(): v for k, v in CASME3A_FIXES.items()})
    return expected_table(df, "casme3a", "Subject", "Filename", "Onset", "Apex", "Offset", "AU",
                          "emotion", str)


def samm_frame() -> pd.DataFrame:
    raw = pd.read_excel(REALSHEETS / SAMM_FILE)
    header = raw.loc[12].tolist()
    df = raw.iloc[13:].reset_index(drop=True)
    df.columns = header
    return df


def expected_samm() -> pd.DataFrame:
    df = apply_fixes(samm_frame(), {"Offset Frame": SAMM_FIXES["offset"],
                                    "Apex Frame": SAMM_FIXES["apex"],
                                    "Action Units": SAMM_FIXES["AU"]})
    return expected_table(df, "samm", "Subject", "Filename", "Onset Frame", "Apex Frame",
                          "Offset Frame", "Action Units", "Estimated Emotion", str)


def expected_casme2() -> pd.DataFrame:
    df = apply_fixes(pd.read_excel(REALSHEETS / CASME2_FILE),
                     {"ApexFrame": CASME2_2019_FIXES["apex"]})
    return expected_table(df, "casme2", "Subject", "Filename", "OnsetFrame", "ApexFrame",
                          "OffsetFrame", "Action Units", "Estimated Emotion",
                          lambda s: f"sub{int(s):02d}")


# -- release trees of empty frame files -------------------------------------------------------

def touch_frames(folder: Path, numbers, name) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k in numbers:
        fd = os.open(folder / name(k), os.O_CREAT | os.O_WRONLY, 0o644)
        os.close(fd)


def link_sheet(root: Path, name: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / name).symlink_to(REALSHEETS / name)


def read_table(key: str, root: Path):
    result = READERS[key](root).read()
    records = []
    for s in result.samples:
        rec = {"sample_id": s.sample_id, "subject": s.subject, "onset": s.onset, "apex": s.apex,
               "offset": s.offset, "n_frames": len(s.frames)}
        rec.update({f"AU{n}": int(n in s.aus) for n in CD6ME_AUS})
        rec["emotion"] = s.emotion
        records.append(rec)
    return pd.DataFrame.from_records(records, columns=COLUMNS), result


def assert_same_table(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    got = got.sort_values("sample_id").reset_index(drop=True)
    expected = expected.sort_values("sample_id").reset_index(drop=True)
    assert list(got["sample_id"]) == list(expected["sample_id"])
    diff = (got != expected).any(axis=1)
    assert not diff.any(), (f"{int(diff.sum())} rows differ from {MEB}:\n"
                            f"got:\n{got[diff].head(10)}\nexpected:\n{expected[diff].head(10)}")


def read_release(tmp_path: Path, key: str, sheet: str, expected: pd.DataFrame, top: str, name):
    """Lay out ``<top>/{subject}/{material}/`` with the frames of every expected sample, read it,
    and assert the whole table equals ``expected``; returns the table and the ReadResult."""
    assert len(expected) == COUNTS[key]
    root = tmp_path / key
    link_sheet(root, sheet)
    for r in expected.itertuples():
        subject, material = r.sample_id.split("/")[1:]
        touch_frames(root / top / subject / material, range(r.onset, r.offset + 1),
                     lambda k, s=subject: name(s, k))
    got, result = read_table(key, root)
    assert_same_table(got, expected)
    return got, result


# -- tests ------------------------------------------------------------------------------------

@pytest.mark.parametrize("tree", ["video", "sample"])
def test_casme3a_matches_reference(tmp_path, tree):
    """Part A's ME label file (no expression-type column) from the release's one-folder-per-video
    tree and from the reference extraction's one-folder-per-sample tree."""
    expected = expected_casme3a()
    assert len(expected) == COUNTS["casme3a"]
    root = tmp_path / "casme3a"
    link_sheet(root, CASME3A_FILE)
    folders: dict[Path, set[int]] = {}
    for r in expected.itertuples():
        subject, material = r.sample_id.split("/")[1:]
        video = material.rstrip("0123456789") or material
        name = video if tree == "video" else material
        folder = root / "ME_A" / subject / name / "color"
        folders.setdefault(folder, set()).update(range(r.onset, r.offset + 1))
    for folder, numbers in folders.items():
        touch_frames(folder, sorted(numbers), lambda k: f"{k}.jpg")

    got, result = read_table("casme3a", root)
    assert result.summary()["kept"] == 860 and result.filtered == 0
    assert_same_table(got, expected)
    fixed = {(i.row, i.problem) for i in result.issues if i.action == "fixed"}
    assert {(128, "apex corrected"), (708, "offset corrected"), (749, "onset corrected"),
            (750, "onset corrected"), (750, "apex corrected"), (796, "offset corrected"),
            (798, "offset corrected")} <= fixed
    assert not [i for i in result.issues if i.action in ("dropped", "unreadable")]
    # the plausibility check notes the long rows (meb keeps them): > 1 s at 30 fps
    noted = {i.row for i in result.issues if i.action == "noted"}
    assert noted == set(expected.index[expected["n_frames"] > 30])  # expected is in sheet order
    assert len(noted) == 277


def test_samm_matches_reference(tmp_path):
    """SAMM v2: title rows above the header, subjects as text, the benchmark's choice for every
    ``or`` AU cell and its apexes."""
    got, result = read_release(tmp_path, "samm", SAMM_FILE, expected_samm(), "SAMM",
                               lambda subject, k: f"{subject}_{k:05d}.jpg")
    corrected = sorted(i.row for i in result.issues if i.problem == "au corrected")
    assert corrected == sorted(SAMM_FIXES["AU"])
    assert not [i for i in result.issues if i.problem == "AU alternatives"]
    assert [(i.row, i.action, i.detail.split(" gives")[0]) for i in result.issues
            if i.action in ("dropped", "unreadable")] == \
        [(120, "unreadable", "'soft focus' in 'R14+17+soft focus'")]


def test_casme2_matches_reference(tmp_path):
    """CASME II, 2019-07-01 revision: the one missing apex gets the benchmark's value."""
    got, result = read_release(tmp_path, "casme2", CASME2_FILE, expected_casme2(),
                               "CASME2_RAW_selected", lambda subject, k: f"img{k}.jpg")
    assert [(i.row, i.problem) for i in result.issues if i.action != "noted"] == \
        [(29, "apex corrected")]


def test_casme2_reference_rows_do_not_fit_the_2019_revision():
    """Why only row 29 of meb's CASME II fixes is carried over: its row numbers belong to its own
    file; on the 2019 revision five of its apexes would fall outside onset..offset."""
    df = pd.read_excel(REALSHEETS / CASME2_FILE)
    outside = sorted(r for r, apex in CASME2_UPDATED_FIXES["apex"].items()
                     if not df.loc[r, "OnsetFrame"] <= apex <= df.loc[r, "OffsetFrame"])
    assert outside == [60, 117, 234, 237, 238]
    missing = [r for r, v in df["ApexFrame"].items() if not str(v).strip().isdigit()]
    assert missing == list(CASME2_2019_FIXES["apex"]) == [29]

"""Corrections tables (pipeline/databases/corrections/) and the duration plausibility check, on
tiny fixtures: a correction lands only on the row it names, is recorded, and runs before the
general rules; malformed tables fail with their line."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures_databases import CASME2_HEADER, build_casme2, write_sheet

from pipeline.databases import KEYS, READERS, DatabaseError
from pipeline.databases import base as db_base
from pipeline.databases.base import CORRECTION_COLUMNS, load_corrections

SHEET = "CASME2-coding-20140508.xlsx"
HEAD = ",".join(CORRECTION_COLUMNS)


def _table(folder: Path, *lines: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "casme2.csv").write_text("\n".join([HEAD, *lines]) + "\n", encoding="utf-8")
    return folder


def _read(root: Path, monkeypatch, folder: Path):
    monkeypatch.setattr(db_base, "CORRECTIONS_DIR", folder)
    return READERS["casme2"](root).read()


def _issues(result, row: int) -> list[tuple[str, str]]:
    return [(i.problem, i.action) for i in result.issues if i.row == row]


def test_shipped_tables_are_well_formed():
    for key in KEYS:
        for c in load_corrections(key):
            assert c.source.startswith("tvaranka/meb@f731b0a ") and c.reason and c.file
    assert len(load_corrections("casme3a")) == 11 and len(load_corrections("samm")) == 8


def test_correction_applies_before_the_general_rules(tmp_path, monkeypatch):
    root = build_casme2(tmp_path / "CASME2")
    folder = _table(tmp_path / "tables",
                    f"{SHEET},2,2,EP01_11f,apex,,8,test:1,measured apex",
                    f"{SHEET},1,1,EP03_02,au,4+L10,4,test:2,the benchmark's choice",
                    f"{SHEET},6,4,EP01_01,offset,40,51,test:3,offset typo")
    r = _read(root, monkeypatch, folder)
    by_id = {s.sample_id: s for s in r.samples}
    assert by_id["casme2/sub02/EP01_11f"].apex == 8          # not the middle frame 7
    assert _issues(r, 2) == [("apex corrected", "fixed")]
    assert by_id["casme2/sub01/EP03_02"].aus == frozenset({4})
    s = by_id["casme2/sub04/EP01_01"]                       # dropped before: offset 40 < onset 50
    assert (s.onset, s.apex, s.offset) == (50, 51, 51)
    assert _issues(r, 6) == [("offset corrected", "fixed")]
    detail = next(i.detail for i in r.issues if i.row == 6)
    assert "'40' -> '51'" in detail and "test:3" in detail and "offset typo" in detail


def test_correction_that_does_not_fit_its_row_is_recorded(tmp_path, monkeypatch):
    root = build_casme2(tmp_path / "CASME2")
    folder = _table(tmp_path / "tables",
                    f"{SHEET},2,2,EP01_11f,apex,,8,test:1,measured apex",
                    f"{SHEET},3,2,EP01_12,apex,99,2,test:2,old value differs")
    r = _read(root, monkeypatch, folder)
    assert _issues(r, 3) == [("correction not applied", "unreadable"),
                             ("frames missing", "fixed")]
    assert next(s for s in r.samples if s.row == 3).apex == 3  # the release's value stays


def test_table_of_another_revision_is_not_applied(tmp_path, monkeypatch):
    root = build_casme2(tmp_path / "CASME2")
    folder = _table(tmp_path / "tables", f"{SHEET},2,9,EP09_09,apex,,8,test:1,another file",
                    "CASME2-coding-updated.xlsx,2,2,EP01_11f,apex,,8,test:2,another file name")
    r = _read(root, monkeypatch, folder)
    assert not [i for i in r.issues if "correct" in i.problem]
    assert next(s for s in r.samples if s.row == 2).apex == 7   # middle frame, general rule


@pytest.mark.parametrize("line, message", [
    (f"{SHEET},x,1,EP02_01f,apex,48,47,t,r", "row must be a data row number"),
    (f"{SHEET},0,1,EP02_01f,subject,1,2,t,r", "field must be one of"),
])
def test_malformed_table_fails_with_its_line(tmp_path, line, message):
    folder = _table(tmp_path, line)
    with pytest.raises(DatabaseError, match=rf"casme2.csv:2: {message}"):
        load_corrections("casme2", folder)


def test_repeated_correction_of_a_cell_fails(tmp_path):
    line = f"{SHEET},0,1,EP02_01f,apex,48,47,t,r"
    with pytest.raises(DatabaseError, match="a second correction of apex in row 0"):
        load_corrections("casme2", _table(tmp_path, line, line))


def test_duration_check_notes_long_rows_and_drops_typos(tmp_path):
    """CASME II at 200 fps: 1 s = 200 frames, 60 s = 12000 frames."""
    root = tmp_path / "CASME2"
    write_sheet(root / SHEET, CASME2_HEADER, [
        [1, "EP01", None, 10, 20, 30, None, "4", "others"],        # 21 frames: fine
        [1, "EP02", None, 10, 20, 260, None, "4", "others"],       # 251 frames, 1.26 s: noted
        [1, "EP03", None, 10, 20, 12010, None, "4", "others"],     # 60.005 s: dropped
    ])
    top = root / "CASME2_RAW_selected" / "sub01"
    for name, last in (("EP01", 30), ("EP02", 260), ("EP03", 40)):
        (top / name).mkdir(parents=True)
        for k in range(10, last + 1):
            (top / name / f"img{k}.jpg").touch()
    r = READERS["casme2"](root).read()
    assert [s.material for s in r.samples] == ["EP01", "EP02"]
    assert [(i.row, i.problem, i.action) for i in r.issues] == [
        (1, "long for a micro-expression", "noted"), (2, "implausible duration", "dropped")]
    assert r.summary()["noted"] == 1 and r.summary()["dropped"] == 1

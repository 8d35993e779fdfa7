"""The seven database readers on tiny fixtures in their release layouts (tests/fixtures_databases.py):
the exact samples and issues each must produce, and the structural errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures_databases import (
    CASME2_HEADER,
    CASME3A_HEADER,
    build_casme,
    build_casme2,
    build_casme3a,
    build_casme3a_full,
    build_fourd,
    build_mmew,
    build_samm,
    build_smic,
    write_frames,
    write_sheet,
)

from pipeline.databases import KEYS, READERS, DatabaseError, ReaderOptions, get_reader
from pipeline.databases.base import list_frames


def read(key: str, root: Path, **options):
    return READERS[key](root, ReaderOptions(**options)).read()


def table(result) -> list[tuple]:
    """(sample_id, row, onset, apex, offset, n_frames, AUs, emotion, emotion5, emotion3)."""
    return [(s.sample_id, s.row, s.onset, s.apex, s.offset, len(s.frames), tuple(sorted(s.aus)),
             s.emotion, s.emotion5, s.emotion3) for s in result.samples]


def problems(result) -> list[tuple]:
    return [(i.row, i.sample_id, i.problem, i.action) for i in result.issues]


def test_registry():
    assert KEYS == ("casme", "casme2", "samm", "mmew", "fourd", "casme3a", "smic")
    for key, cls in READERS.items():
        assert cls.key == key
        assert cls.__doc__ and cls.__module__.endswith(key)
    with pytest.raises(DatabaseError, match="unknown database key 'casme4'"):
        get_reader("casme4")


def test_casme(tmp_path):
    r = read("casme", build_casme(tmp_path / "CASME"))
    assert r.spreadsheet.name == "casme.xlsx"
    assert table(r) == [
        ("casme/sub01/EP01_5", 0, 10, 12, 14, 5, (4, 10), "disgust", "", "negative"),
        ("casme/sub01/EP01_6", 1, 3, 5, 7, 5, (12,), "happiness", "", "positive"),
        ("casme/sub02/EP02_1", 2, 20, 22, 24, 5, (), "surprise", "", "surprise"),
        ("casme/sub03/EP03_1", 5, 100, 101, 103, 4, (12,), "tense", "", ""),
    ]
    # frames sorted by frame number despite the inconsistent zero padding, outside ones left out
    assert r.samples[0].frames == ("reg_EP01_5-010.jpg", "reg_EP01_5-11.jpg",
                                   "reg_EP01_5-0012.jpg", "reg_EP01_5-13.jpg",
                                   "reg_EP01_5-14.jpg")
    assert r.samples[0].frame_dir == (tmp_path / "CASME" / "sub01" / "EP01_5").as_posix()
    assert r.samples[3].au == "12"  # numeric cell kept as text
    assert problems(r) == [
        (1, "casme/sub01/EP01_6", "apex missing", "fixed"),
        (2, "casme/sub02/EP02_1", "apex outside onset..offset", "fixed"),
        (2, "casme/sub02/EP02_1", "AU token unreadable", "unreadable"),
        (3, "casme/sub02/EP02_2", "frames folder missing", "dropped"),
        (5, "casme/sub03/EP03_1", "offset frame missing", "fixed"),
        (6, "casme/sub03/EP03_2", "onset not a frame number", "dropped"),
    ]
    assert r.summary() == {"rows": 6, "kept": 4, "fixed": 3, "dropped": 2, "filtered": 0,
                           "unreadable": 1, "noted": 0}
    # the issue names the folder it expected
    missing = r.issues[3]
    assert missing.file == str(tmp_path / "CASME" / "sub02" / "EP02_2")
    assert "sub02/EP02_2" in missing.detail


def test_casme_au_column_named_au(tmp_path):
    r = read("casme", build_casme(tmp_path / "CASME", au_header="AU"))
    assert [tuple(sorted(s.aus)) for s in r.samples] == [(4, 10), (12,), (), (12,)]


def test_casme2(tmp_path):
    r = read("casme2", build_casme2(tmp_path / "CASME2"))
    assert r.spreadsheet.name == "CASME2-coding-20140508.xlsx"
    assert table(r) == [
        ("casme2/sub01/EP02_01f", 0, 46, 48, 50, 5, (12,), "happiness", "happiness", "positive"),
        ("casme2/sub01/EP03_02", 1, 10, 12, 14, 5, (4, 10), "disgust", "disgust", "negative"),
        ("casme2/sub02/EP01_11f", 2, 5, 7, 9, 5, (14,), "repression", "repression",
         "negative"),
        ("casme2/sub02/EP01_12", 3, 1, 3, 6, 5, (1, 2), "surprise", "surprise", "surprise"),
        ("casme2/sub03/EP19_05f", 4, 20, 22, 24, 5, (4, 7), "fear", "", ""),
        ("casme2/sub03/EP19_06", 5, 30, 31, 33, 4, (1, 2), "others", "others", ""),
    ]
    assert r.samples[0].frames == tuple(f"img{k}.jpg" for k in range(46, 51))
    assert r.samples[3].frames == ("img1.jpg", "img2.jpg", "img3.jpg", "img5.jpg", "img6.jpg")
    assert problems(r) == [
        (2, "casme2/sub02/EP01_11f", "apex missing", "fixed"),
        (3, "casme2/sub02/EP01_12", "frames missing", "fixed"),
        (5, "casme2/sub03/EP19_06", "AU alternatives", "fixed"),
        (6, "casme2/sub04/EP01_01", "offset before onset", "dropped"),
        (7, "casme2/sub01/EP02_01f", "duplicate sample", "dropped"),
    ]
    assert "frames not on disk: 4" in r.issues[1].detail
    assert r.summary() == {"rows": 8, "kept": 6, "fixed": 3, "dropped": 2, "filtered": 0,
                           "unreadable": 0, "noted": 0}


def test_casme2_prefers_the_updated_coding_file(tmp_path):
    root = build_casme2(tmp_path / "CASME2", spreadsheet="CASME2-coding-updated.xlsx")
    assert read("casme2", root).spreadsheet.name == "CASME2-coding-updated.xlsx"
    # both present: the updated one is read
    write_sheet(root / "CASME2-coding-20140508.xlsx", CASME2_HEADER,
                [[1, "EP02_01f", None, 46, 48, 50, None, "R12", "happiness"]])
    r = read("casme2", root)
    assert r.spreadsheet.name == "CASME2-coding-updated.xlsx" and len(r.samples) == 6


def test_samm(tmp_path):
    r = read("samm", build_samm(tmp_path / "SAMM"))
    reader = READERS["samm"](tmp_path / "SAMM")
    reader.check()
    assert reader.sheet.header_row == 12  # sheet row 13
    assert table(r) == [
        ("samm/006/006_1_2", 0, 5562, 5564, 5566, 5, (12, 15), "contempt", "contempt",
         "negative"),
        ("samm/006/006_1_3", 1, 100, 102, 104, 5, (4, 7), "anger", "anger", "negative"),
        ("samm/007/007_3_1", 2, 10, 12, 14, 5, (12, 15), "happiness", "happiness", "positive"),
        ("samm/007/007_3_2", 3, 20, 22, 24, 5, (7, 10), "other", "others", ""),
        ("samm/007/007_3_3", 4, 30, 31, 33, 4, (14, 28), "disgust", "", "negative"),
    ]
    assert r.samples[0].frames[0] == "006_05562.jpg"
    assert problems(r) == [
        (2, "samm/007/007_3_1", "AU alternatives", "fixed"),
        (3, "samm/007/007_3_2", "apex outside onset..offset", "fixed"),
        (5, "samm/008/008_1_1", "frames folder missing", "dropped"),
    ]


@pytest.mark.parametrize("mode, aus", [("all", (12, 15)), ("first", (12,)), ("none", ())])
def test_samm_or_rule_follows_the_option(tmp_path, mode, aus):
    r = read("samm", build_samm(tmp_path / "SAMM"), au_alternatives=mode)
    assert tuple(sorted(r.samples[2].aus)) == aus
    assert f"index.au_alternatives={mode}" in r.issues[0].detail


def test_samm_preamble_of_other_length(tmp_path):
    """The header is found by its names, whatever the number of free-text rows above it."""
    from fixtures_databases import SAMM_HEADER
    root = tmp_path / "SAMM"
    write_sheet(root / "SAMM_Micro_FACS_Codes_v2.xlsx", SAMM_HEADER,
                [[6, "006_1_2", 1, 5562, 5564, 5566, 5, "Micro", "12", None, "Happiness"]],
                preamble=[["a note"]] * 13)
    write_frames(root / "SAMM" / "006" / "006_1_2", [f"006_{k:05d}.jpg" for k in range(5562,
                                                                                      5567)])
    r = read("samm", root)
    assert [s.sample_id for s in r.samples] == ["samm/006/006_1_2"]
    assert r.samples[0].row == 0


def test_mmew(tmp_path):
    r = read("mmew", build_mmew(tmp_path / "MMEW"))
    assert table(r) == [
        ("mmew/S01/S01_o_1", 0, 1, 3, 5, 5, (4, 7), "repression", "", "negative"),
        ("mmew/S01/S01_h_1", 1, 2, 4, 6, 5, (6, 12), "happiness", "", "positive"),
        ("mmew/2/S02_s_1", 2, 1, 2, 4, 4, (1, 2, 5), "surprise", "", "surprise"),
    ]
    # others is read in its release folder 'others'
    assert r.samples[0].frame_dir.endswith("Micro_Expression/others/S01_o_1")
    assert r.samples[2].frame_dir.endswith("Micro_Expression/fear/S02_s_1")
    assert problems(r) == [
        (2, "mmew/2/S02_s_1", "sample under another emotion folder", "fixed"),
        (3, "mmew/S03/S03_d_1", "no frames between onset and offset", "dropped"),
    ]
    assert "annotated 50..60; the folder holds frames 1..10" in r.issues[1].detail


@pytest.mark.parametrize("drop_k, first", [(True, (24, 45)), (False, (4, 7, 24, 45))])
def test_fourd(tmp_path, drop_k, first):
    r = read("fourd", build_fourd(tmp_path / "4DME"), drop_k_marked_aus=drop_k)
    assert table(r) == [
        ("fourd/S01/S01_M_01", 0, 10, 12, 14, 5, first, "negative", "", "negative"),
        ("fourd/S01/S01_M_02", 1, 1, 2, 3, 3, (1, 2), "surprise", "", "surprise"),
        ("fourd/S02/S02_M_01", 2, 5, 6, 8, 4, (6, 12), "positive", "", "positive"),
        ("fourd/S02/S02_M_02", 3, 5, 7, 9, 5, (14,), "negative+surprise", "", ""),
    ]
    assert r.samples[0].frames[0] == "S01_M_01_10.jpg"
    assert problems(r) == [
        (2, "fourd/S02/S02_M_01", "AU cell and one-hot columns disagree", "fixed"),
        (3, "fourd/S02/S02_M_02", "apex missing", "fixed"),
        (3, "fourd/S02/S02_M_02", "one-hot AU cell unreadable", "unreadable"),
    ]


def test_casme3a(tmp_path):
    """The ME label file: no expression-type column, every row a sample."""
    r = read("casme3a", build_casme3a(tmp_path / "CASME3"))
    assert table(r) == [
        ("casme3a/spNO.1/a", 0, 0, 2, 4, 5, (4, 7), "disgust", "", "negative"),
        ("casme3a/spNO.1/a2", 1, 20, 22, 24, 5, (7, 43), "happy", "", "positive"),
        ("casme3a/spNO.1/a3", 2, 30, 31, 33, 4, (1, 2), "surprise", "", "surprise"),
        ("casme3a/spNO.2/b", 3, 5, 6, 8, 4, (12,), "others", "", ""),
    ]
    # the repeated Filename shares the video's frame folder
    assert {s.frame_dir for s in r.samples[:3]} == {
        (tmp_path / "CASME3" / "ME_A" / "spNO.1" / "a" / "color").as_posix()}
    assert r.samples[1].frames == tuple(f"{k}.jpg" for k in range(20, 25))
    assert problems(r) == [(4, "casme3a/spNO.2/c", "offset before onset", "dropped")]
    assert r.summary() == {"rows": 5, "kept": 4, "fixed": 0, "dropped": 1, "filtered": 0,
                           "unreadable": 0, "noted": 0}


def test_casme3a_full_file(tmp_path):
    """The full part-A file: micro rows only, numbered among themselves; no emotion column."""
    r = read("casme3a", build_casme3a_full(tmp_path / "CASME3"))
    assert table(r) == [
        ("casme3a/spNO.1/a", 0, 0, 2, 4, 5, (4, 7), "", "", ""),
        ("casme3a/spNO.1/a2", 2, 20, 22, 24, 5, (7, 43), "", "", ""),
        ("casme3a/spNO.1/a3", 3, 30, 31, 33, 4, (1, 2), "", "", ""),
        ("casme3a/spNO.2/b", 4, 5, 6, 8, 4, (12,), "", "", ""),
    ]
    # the macro-expression row is filtered, not an issue; the untyped row is dropped
    assert [p for p in problems(r) if p[2] != "emotion missing"] == [
        (5, "casme3a/spNO.2/c", "expression type missing", "dropped")]
    assert r.summary() == {"rows": 6, "kept": 4, "fixed": 0, "dropped": 1, "filtered": 1,
                           "unreadable": 4, "noted": 0}


def test_casme3a_needs_emotion_or_expression_type(tmp_path):
    root = build_casme3a(tmp_path / "CASME3")
    write_sheet(root / "cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx", CASME3A_HEADER[:-1],
                [["spNO.1", "a", 0, 2, 4, "4", "I"]])
    with pytest.raises(DatabaseError, match="neither the ME label file's 'emotion' column"):
        READERS["casme3a"](root).check()


def test_xls_without_xlrd_says_what_to_do(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "xlrd", None)  # import fails as if not installed
    root = tmp_path / "CASME3"
    root.mkdir()
    (root / "CAS(ME)3_part_A_v2.xls").write_bytes(b"\xd0\xcf\x11\xe0")
    (root / "ME_A").mkdir()
    with pytest.raises(DatabaseError, match=r"needs the package xlrd .* save it as "
                                            r"CAS\(ME\)3_part_A_v2\.xlsx"):
        READERS["casme3a"](root).check()


def test_casme3a_per_sample_folders(tmp_path):
    """The reference extraction's tree, one folder per sample ({Filename}{n}/color), is read where
    it exists; the video's folder otherwise (issue #11: trying the video first dropped a2)."""
    root = build_casme3a(tmp_path / "CASME3")
    video = root / "ME_A" / "spNO.1" / "a"
    r = read("casme3a", root)
    a2 = next(s for s in r.samples if s.material == "a2")
    assert a2.frame_dir.endswith("ME_A/spNO.1/a/color") and a2.onset == 20
    (video.parent / "a2" / "color").mkdir(parents=True)
    for k in range(20, 25):
        (video / "color" / f"{k}.jpg").rename(video.parent / "a2" / "color" / f"{k}.jpg")
    r = read("casme3a", root)
    a2 = next(s for s in r.samples if s.material == "a2")
    assert a2.frame_dir.endswith("ME_A/spNO.1/a2/color") and a2.onset == 20
    assert a2.frames == tuple(f"{k}.jpg" for k in range(20, 25))
    assert not [i for i in r.issues if i.sample_id.endswith("/a2")]


def test_smic(tmp_path):
    r = read("smic", build_smic(tmp_path / "SMIC"))
    assert table(r) == [
        ("smic/s1/s1_po_01", 0, 25460, 25463, 25466, 7, (), "positive", "", "positive"),
        ("smic/s1/s1_ne_01", 1, 100, 102, 105, 6, (), "negative", "", "negative"),
        ("smic/s2/s2_sur_01", 2, 1, 2, 4, 4, (), "surprise", "", "surprise"),
    ]
    assert r.samples[0].frames[0] == "image025460.bmp" and r.samples[0].au == ""
    # the protocol's apex is not an issue; only the missing folder is
    assert problems(r) == [(3, "smic/s3/s3_po_01", "frames folder missing", "dropped")]


def test_frame_listing(tmp_path):
    folder = write_frames(tmp_path / "f", ["img2.jpg", "img10.JPG", "img1.png", "img1.bmp",
                                           "._img3.jpg", "cover.jpg", "notes.txt", "img3.jpeg"])
    listing = list_frames(folder)
    assert listing.names == ("img1.bmp", "img2.jpg", "img3.jpeg", "img10.JPG")
    assert listing.numbers == (1, 2, 3, 10)
    assert listing.duplicates == ("img1.png",)
    assert listing.unnumbered == ("cover.jpg",)


def test_frame_folder_quirks_are_recorded(tmp_path):
    root = build_casme2(tmp_path / "CASME2")
    folder = root / "CASME2_RAW_selected" / "sub01" / "EP03_02"
    write_frames(folder, ["img12.png", "Thumbs.jpg"])
    r = read("casme2", root)
    got = [(i.problem, i.action) for i in r.issues if i.sample_id == "casme2/sub01/EP03_02"]
    assert got == [("duplicate frame numbers", "fixed"), ("frame files without number", "fixed")]
    sample = next(s for s in r.samples if s.material == "EP03_02")
    assert sample.frames[2] == "img12.jpg"


def test_onset_offset_on_disk_and_apex_moved(tmp_path):
    root = build_casme2(tmp_path / "CASME2")
    folder = root / "CASME2_RAW_selected" / "sub01" / "EP03_02"   # onset 10, apex 12, offset 14
    for k in (10, 12, 14):
        (folder / f"img{k}.jpg").unlink()
    r = read("casme2", root)
    s = next(s for s in r.samples if s.material == "EP03_02")
    assert (s.onset, s.apex, s.offset, s.frames) == (11, 11, 13, ("img11.jpg", "img13.jpg"))
    got = [i.problem for i in r.issues if i.sample_id == "casme2/sub01/EP03_02"]
    assert got == ["onset frame missing", "offset frame missing", "apex frame missing",
                   "frames missing"]
    (folder / "img13.jpg").unlink()
    r = read("casme2", root)
    assert [i.problem for i in r.issues if i.sample_id == "casme2/sub01/EP03_02"][-1] == (
        "fewer than 2 frames")


# -- structural errors: clear, naming the file and what was expected ---------------------------


def test_missing_root(tmp_path):
    with pytest.raises(DatabaseError, match=r"samm: database root .*nowhere not found.*"
                                            r"SAMM_Micro_FACS_Codes_v2\.xlsx"):
        READERS["samm"](tmp_path / "nowhere").check()


def test_missing_spreadsheet(tmp_path):
    root = build_casme2(tmp_path / "CASME2")
    (root / "CASME2-coding-20140508.xlsx").rename(root / "coding.xlsx")
    with pytest.raises(DatabaseError) as err:
        READERS["casme2"](root).check()
    msg = str(err.value)
    assert ("CASME2-coding-updated.xlsx or CASME2-coding-20190701.xlsx or "
            "CASME2-coding-20140508.xlsx") in msg
    assert "coding.xlsx" in msg and str(root) in msg


def test_spreadsheet_name_in_other_case(tmp_path):
    root = build_smic(tmp_path / "SMIC")
    (root / "smic.xlsx").rename(root / "SMIC.xlsx")
    assert len(read("smic", root).samples) == 3


def test_missing_column(tmp_path):
    root = tmp_path / "CASME2"
    header = [h if h != "OnsetFrame" else "Onset" for h in CASME2_HEADER]
    write_sheet(root / "CASME2-coding-20140508.xlsx", header,
                [[1, "EP02_01f", None, 46, 48, 50, None, "R12", "happiness"]])
    (root / "CASME2_RAW_selected").mkdir()
    with pytest.raises(DatabaseError) as err:
        READERS["casme2"](root).check()
    msg = str(err.value)
    assert "CASME2-coding-20140508.xlsx" in msg and "lacks 'OnsetFrame'" in msg
    assert "sheet row 1" in msg


def test_missing_frame_tree(tmp_path):
    root = build_samm(tmp_path / "SAMM")
    (root / "SAMM").rename(root / "frames")
    with pytest.raises(DatabaseError, match=r"SAMM: .*frame folder not found; expected .*"
                                            r"SAMM/\{Subject:03d\}/\{Filename\}/"):
        READERS["samm"](root).check()


def test_fourd_without_one_hot_columns(tmp_path):
    root = tmp_path / "4DME"
    write_sheet(root / "4DME_Labelling_Micro_release v1.xlsx",
                ["sub_ID", "fold_name", "Onset", "Apex", "Offset", "AUs", "Emotion"],
                [["S01", "S01_M_01", 1, 2, 3, "AU4", "Negative"]])
    (root / "gray_micro").mkdir()
    with pytest.raises(DatabaseError, match="no one-hot AU columns; expected .*AU1 … AU64"):
        READERS["fourd"](root).check()


def test_damaged_workbook(tmp_path):
    root = tmp_path / "SMIC"
    root.mkdir()
    (root / "smic.xlsx").write_bytes(b"not a zip file")
    with pytest.raises(DatabaseError, match=r"smic\.xlsx: cannot be read as an \.xlsx workbook"):
        READERS["smic"](root).check()


def test_empty_workbook(tmp_path):
    root = tmp_path / "SMIC"
    write_sheet(root / "smic.xlsx", [], [])
    with pytest.raises(DatabaseError, match="first worksheet is empty"):
        READERS["smic"](root).check()

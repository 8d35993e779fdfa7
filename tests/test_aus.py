"""AU-string parser, emotion labels and the frame-number rule (DATASETS.md)."""

from __future__ import annotations

import math

import pytest

from pipeline.databases import emotions
from pipeline.databases.aus import (
    CD6ME_AU_COLUMNS,
    PLUS_AND_COMMAS,
    au_columns,
    cell_text,
    parse_aus,
)
from pipeline.databases.base import frame_number, frame_sort_key, parse_frame, subject_candidates


@pytest.mark.parametrize("cell, aus", [
    # every example of DATASETS.md
    ("R12", (12,)),
    ("4+L10", (4, 10)),
    ("R12 + R15", (12, 15)),
    ("4+7", (4, 7)),
    ("AU4(k)+7(k)+4+24+45", (4, 7, 24, 45)),
    ("L1", (1,)),
    ("12L", (12,)),
    ("10A/B", (10,)),
    ("4D", (4,)),
    ("ref(7B)", (7,)),
    ("ref(7B)+43", (7, 43)),
    ("T28", (28,)),
    ("T28+14", (14, 28)),
    ("AU4", (4,)),
    ("?", ()),
    ("", ()),
    # more
    ("L1+R2+4", (1, 2, 4)),
    ("1+2+4+5+6+7+9+10+12+14+15+17", (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17)),
    ("  R14A  ", (14,)),
    ("4+4", (4,)),
    ("4++7+", (4, 7)),
    ("AU 12", (12,)),
    ("R12B + L14C", (12, 14)),
    (None, ()),
    (float("nan"), ()),
    (12, (12,)),
    (4.0, (4,)),
])
def test_au_rule(cell, aus):
    assert parse_aus(cell).aus == aus


def test_question_mark_and_letters_are_unreadable_tokens():
    p = parse_aus("4+?+B")
    assert p.aus == (4,)
    assert p.unreadable == ("?", "B")
    assert not p.alternatives and not p.several


def test_empty_cell_is_empty_and_not_unreadable():
    for cell in ("", None, float("nan"), "   "):
        p = parse_aus(cell)
        assert p.empty and p.aus == () and p.unreadable == ()


@pytest.mark.parametrize("mode, aus", [("all", (12, 15)), ("first", (12,)), ("none", ())])
def test_or_alternatives(mode, aus):
    p = parse_aus("R12 or R15", alternatives=mode)
    assert p.aus == aus
    assert p.alternatives == ("R12 or R15",)
    # not AU1215 whatever the mode
    assert 1215 not in p.aus


def test_or_inside_a_longer_cell():
    p = parse_aus("4 + R12 OR R15 + 43", alternatives="first")
    assert p.aus == (4, 12, 43)
    assert p.alternatives == ("R12 OR R15",)
    # "or" only as a word: 'for', 'ref' are not alternatives
    assert parse_aus("ref(7B)").alternatives == ()


def test_several_numbers_in_one_token():
    p = parse_aus("L1R2+12 15")
    assert p.aus == (1, 2, 12, 15)
    assert p.several == ("L1R2", "12 15")


def test_numbers_outside_the_facs_range_are_unreadable():
    p = parse_aus("1215+0+4")
    assert p.aus == (4,)
    assert p.unreadable == ("1215", "0")


def test_non_integral_numeric_cell_is_unreadable():
    p = parse_aus(1.5)
    assert p.aus == () and p.unreadable == ("1.5",)


def test_casme3_commas():
    assert parse_aus("4\uff0c7", separators=PLUS_AND_COMMAS).aus == (4, 7)   # Chinese comma
    assert parse_aus("1,2+L12", separators=PLUS_AND_COMMAS).aus == (1, 2, 12)
    assert parse_aus("4\u30017", separators=PLUS_AND_COMMAS).aus == (4, 7)   # ideographic
    # without comma separators, '1,2' is one token with two numbers
    p = parse_aus("1,2")
    assert p.aus == (1, 2) and p.several == ("1,2",)


def test_k_marks():
    p = parse_aus("AU4(k)+7(k)+4+24+45")
    assert p.k_marked == (4, 7)
    assert parse_aus("AU4(K)+AU7 ( k )").k_marked == (4, 7)
    assert parse_aus("4+7").k_marked == ()


def test_bad_alternatives_mode():
    with pytest.raises(ValueError, match="alternatives must be one of"):
        parse_aus("4", alternatives="some")


def test_cell_text():
    assert cell_text(None) == ""
    assert cell_text(math.nan) == ""
    assert cell_text(12) == "12"
    assert cell_text(12.0) == "12"
    assert cell_text(1.5) == "1.5"
    assert cell_text("  R12  +  R15 ") == "R12 + R15"


def test_au_columns_order():
    assert au_columns(set()) == list(CD6ME_AU_COLUMNS)
    assert CD6ME_AU_COLUMNS == ("AU1", "AU2", "AU4", "AU5", "AU6", "AU7", "AU9", "AU10", "AU12",
                                "AU14", "AU15", "AU17")
    assert au_columns({43, 4, 24, 3, 12}) == [*CD6ME_AU_COLUMNS, "AU3", "AU24", "AU43"]


@pytest.mark.parametrize("name, n", [
    ("img46.jpg", 46), ("006_05562.jpg", 5562), ("reg_EP01_5-113.jpg", 113),
    ("reg_EP01_5-0113.jpg", 113), ("image025460.bmp", 25460), ("S01_M_01_12.jpg", 12),
    ("0.jpg", 0), ("dir/sub01/img7.png", 7),
])
def test_frame_number(name, n):
    assert frame_number(name) == n


def test_frame_number_without_digits():
    with pytest.raises(ValueError, match="no frame number"):
        frame_number("Thumbs.jpg")


def test_frame_order_survives_inconsistent_padding():
    names = ["reg_EP01_5-0113.jpg", "reg_EP01_5-99.jpg", "reg_EP01_5-100.jpg"]
    assert sorted(names, key=frame_sort_key) == ["reg_EP01_5-99.jpg", "reg_EP01_5-100.jpg",
                                                 "reg_EP01_5-0113.jpg"]
    names = [f"img{k}.jpg" for k in (10, 9, 100, 1)]
    assert sorted(names, key=frame_sort_key) == ["img1.jpg", "img9.jpg", "img10.jpg",
                                                 "img100.jpg"]


@pytest.mark.parametrize("cell, out", [
    (12, (12, "")), (12.0, (12, "")), (" 12 ", (12, "")), ("12.0", (12, "")), (0, (0, "")),
    ("/", (None, "missing")), (None, (None, "missing")), (math.nan, (None, "missing")),
    ("", (None, "missing")), ("x", (None, "not a frame number")),
    (12.5, (None, "not a frame number")), (-3, (None, "not a frame number")),
    ("12 3", (None, "not a frame number")),
])
def test_parse_frame(cell, out):
    assert parse_frame(cell) == out


def test_subject_candidates():
    assert subject_candidates(1, ("sub{:02d}",)) == ["sub01"]
    assert subject_candidates("01", ("sub{:02d}",)) == ["sub01"]
    assert subject_candidates(3.0, ("sub{:02d}",)) == ["sub03"]
    assert subject_candidates("sub1", ("sub{:02d}",)) == ["sub01", "sub1"]
    assert subject_candidates("sub01", ("sub{:02d}",)) == ["sub01"]
    assert subject_candidates(6, ("{:03d}",)) == ["006"]
    assert subject_candidates("006", ("{:03d}",)) == ["006"]
    assert subject_candidates(2, ("s{}", "s{:02d}", "{}")) == ["s2", "s02", "2"]
    assert subject_candidates("spNO.1", ("spNO.{}", "{}")) == ["spNO.1"]
    assert subject_candidates(None, ("{}",)) == []
    assert subject_candidates("  ", ("{}",)) == []


def test_emotion_labels():
    norm = emotions.normalise
    assert norm("  Happiness ") == "happiness"
    assert norm(None) == ""
    # CASME II, 5 and 3 classes
    c2 = {e: (emotions.emotion5("casme2", e), emotions.emotion3("casme2", e))
          for e in ("happiness", "disgust", "repression", "surprise", "others", "fear", "sadness")}
    assert c2 == {"happiness": ("happiness", "positive"), "disgust": ("disgust", "negative"),
                  "repression": ("repression", "negative"), "surprise": ("surprise", "surprise"),
                  "others": ("others", ""), "fear": ("", ""), "sadness": ("", "")}
    # SAMM: 'Other' -> others; disgust, fear, sadness negative in 3 classes only
    samm = {e: (emotions.emotion5("samm", norm(e)), emotions.emotion3("samm", norm(e)))
            for e in ("Anger", "Contempt", "Happiness", "Surprise", "Other", "Fear", "Sadness",
                      "Disgust")}
    assert samm == {"Anger": ("anger", "negative"), "Contempt": ("contempt", "negative"),
                    "Happiness": ("happiness", "positive"), "Surprise": ("surprise", "surprise"),
                    "Other": ("others", ""), "Fear": ("", "negative"),
                    "Sadness": ("", "negative"), "Disgust": ("", "negative")}
    # SMIC and the general rule
    assert [emotions.emotion3("smic", e) for e in ("positive", "negative", "surprise")] == [
        "positive", "negative", "surprise"]
    assert emotions.emotion5("smic", "positive") == ""
    assert emotions.emotion3("casme3a", "happy") == "positive"
    assert emotions.emotion3("casme3a", "sad") == "negative"
    assert emotions.emotion3("casme", "tense") == ""
    assert emotions.emotion3("fourd", "negative+surprise") == ""

"""Tiny fixtures of the seven databases in their release layouts (DATASETS.md), for tests.

Each ``build_<key>(root)`` writes the annotation spreadsheet (openpyxl, with the release's
preamble, blank columns, one-hot columns) and a few tiny JPEG/BMP frames under ``root``, including
rows with the real releases' quirks, and returns ``root``.  The rows and what a reader must make
of them are listed in each builder's docstring; ``tests/test_readers.py`` asserts them.
:func:`build_all` writes all seven (``<base>/<key>``) and returns the roots, so other tests can
run the ``index`` stage on them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import openpyxl

_IMAGES: dict[str, bytes] = {}


def image_bytes(ext: str = ".jpg", size: int = 8) -> bytes:
    """An encoded tiny grey image (``size`` x ``size`` px) in the format of ``ext``."""
    key = f"{ext}{size}"
    if key not in _IMAGES:
        img = np.full((size, size, 3), 128, np.uint8)
        img[: size // 2] = 64
        ok, buf = cv2.imencode(ext, img)
        assert ok
        _IMAGES[key] = buf.tobytes()
    return _IMAGES[key]


def write_frames(folder: Path, names: Iterable[str]) -> Path:
    """Write a tiny image under each of ``names`` into ``folder`` (created); names with another
    extension get a few bytes of text."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        ext = Path(name).suffix.lower()
        data = image_bytes(ext) if ext in (".jpg", ".jpeg", ".bmp", ".png") else b"not an image"
        (folder / name).write_bytes(data)
    return folder


def numbered(pattern: str, numbers: Iterable[int]) -> list[str]:
    """``pattern.format(k)`` for each frame number ``k``."""
    return [pattern.format(k) for k in numbers]


def write_sheet(path: Path, header: Sequence[Any], rows: Sequence[Sequence[Any]],
                preamble: Sequence[Sequence[Any]] = ()) -> Path:
    """Write one worksheet: ``preamble`` rows, the header row, the data rows (``None`` = blank)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    wb = openpyxl.Workbook()
    ws = wb.active
    for r, row in enumerate([*preamble, header, *rows], start=1):
        for c, value in enumerate(row, start=1):
            if value is not None:
                ws.cell(row=r, column=c, value=value)
    wb.save(path)
    return path


# ---------------------------------------------------------------------------------------------


CASME_HEADER = ["Subject", "Filename", None, "OnsetF", "ApexF1", "ApexF2", "OffsetF", None,
                "Action Units", "Emotion"]


def build_casme(root: Path, au_header: str = "Action Units") -> Path:
    """CASME: ``casme.xlsx`` (blank columns 2 and 7) and ``sub{NN}/{Filename}/reg_*-{k}.jpg``.

    Rows: 0 clean (frames with inconsistent zero padding, extra frames outside onset..offset);
    1 apex ``/`` (→ middle 5); 2 subject as text ``"2"``, apex outside (→ 22), AU ``?``; 3 no
    frame folder (dropped); 4 blank; 5 subject 3.0, AU cell the number 12, offset 104 not on disk
    (→ 103); 6 onset ``x`` (dropped).
    """
    header = [au_header if h == "Action Units" else h for h in CASME_HEADER]
    rows = [
        [1, "EP01_5", None, 10, 12, 13, 14, None, "4+L10", "disgust"],
        [1, "EP01_6", None, 3, "/", None, 7, None, "R12", "Happiness "],
        ["2", "EP02_1", None, 20, 30, None, 24, None, "?", "surprise"],
        [2, "EP02_2", None, 1, 2, None, 5, None, "1+2", "surprise"],
        [None] * 10,
        [3.0, "EP03_1", None, 100, 101, None, 104, None, 12, "tense"],
        [3, "EP03_2", None, "x", 5, None, 9, None, "4", "fear"],
    ]
    write_sheet(root / "casme.xlsx", header, rows)
    padded = {8: "8", 9: "09", 10: "010", 11: "11", 12: "0012", 13: "13", 14: "14", 15: "015"}
    write_frames(root / "sub01" / "EP01_5", [f"reg_EP01_5-{v}.jpg" for v in padded.values()])
    write_frames(root / "sub01" / "EP01_6", numbered("reg_EP01_6-{}.jpg", range(1, 10)))
    write_frames(root / "sub02" / "EP02_1", numbered("reg_EP02_1-{}.jpg", range(20, 25)))
    write_frames(root / "sub03" / "EP03_1", numbered("reg_EP03_1-{}.jpg", range(100, 104)))
    write_frames(root / "sub03" / "EP03_2", numbered("reg_EP03_2-{}.jpg", range(1, 10)))
    return root


CASME2_HEADER = ["Subject", "Filename", None, "OnsetFrame", "ApexFrame", "OffsetFrame", None,
                 "Action Units", "Estimated Emotion"]


def build_casme2(root: Path, spreadsheet: str = "CASME2-coding-20140508.xlsx") -> Path:
    """CASME II: the coding sheet and ``CASME2_RAW_selected/sub{NN}/{Filename}/img{k}.jpg``.

    Rows: 0 clean happiness; 1 disgust ``4+L10``; 2 apex empty (→ 7), repression; 3 frame 4
    missing on disk (gap recorded), surprise; 4 subject ``"03"``, fear (no 5-/3-class label);
    5 ``L1 or L2`` (→ AU1 + AU2), others; 6 offset before onset (dropped); 7 repeats row 0
    (dropped).
    """
    rows = [
        [1, "EP02_01f", None, 46, 48, 50, None, "R12", "happiness"],
        [1, "EP03_02", None, 10, 12, 14, None, "4+L10", "disgust"],
        [2, "EP01_11f", None, 5, None, 9, None, "14", "repression"],
        [2, "EP01_12", None, 1, 3, 6, None, "1+2", "surprise"],
        ["03", "EP19_05f", None, 20, 22, 24, None, "4+7", "fear"],
        [3, "EP19_06", None, 30, 31, 33, None, "L1 or L2", "others"],
        [4, "EP01_01", None, 50, 51, 40, None, "4", "sadness"],
        [1, "EP02_01f", None, 46, 47, 50, None, "R12", "happiness"],
    ]
    write_sheet(root / spreadsheet, CASME2_HEADER, rows)
    top = root / "CASME2_RAW_selected"
    write_frames(top / "sub01" / "EP02_01f", numbered("img{}.jpg", range(45, 52)))
    write_frames(top / "sub01" / "EP03_02", numbered("img{}.jpg", range(10, 15)))
    write_frames(top / "sub02" / "EP01_11f", numbered("img{}.jpg", range(5, 10)))
    write_frames(top / "sub02" / "EP01_12", numbered("img{}.jpg", [1, 2, 3, 5, 6]))
    write_frames(top / "sub03" / "EP19_05f", numbered("img{}.jpg", range(20, 25)))
    write_frames(top / "sub03" / "EP19_06", numbered("img{}.jpg", range(30, 34)))
    write_frames(top / "sub04" / "EP01_01", numbered("img{}.jpg", range(40, 52)))
    return root


SAMM_HEADER = ["Subject", "Filename", "Inducement Code", "Onset Frame", "Apex Frame",
               "Offset Frame", "Duration", "Type", "Action Units", "Notes", "Estimated Emotion"]
SAMM_PREAMBLE = [["SAMM: Spontaneous Actions and Micro-Movements"], [],
                 ["Micro-movement FACS codes, version 2"], ["Coded by three FACS coders"], [],
                 ["Columns:"], ["Subject - participant number"], ["Filename - movement folder"],
                 ["Onset/Apex/Offset - frame numbers"], ["Action Units - FACS codes"], [],
                 ["Contact: the SAMM team"]]


def build_samm(root: Path) -> Path:
    """SAMM: 12 preamble rows, header on sheet row 13, ``SAMM/{Subject:03d}/{Filename}/``.

    Rows: 0 ``R12 + R15`` contempt; 1 ``4+7`` anger; 2 subject ``"007"``, ``R12 or R15``,
    happiness; 3 apex outside (→ 22), ``10A/B+ref(7B)``, Other; 4 ``T28+14`` Disgust; 5 no frame
    folder (dropped).
    """
    rows = [
        [6, "006_1_2", 1, 5562, 5564, 5566, 5, "Micro - 1/2", "R12 + R15", None, "Contempt"],
        [6, "006_1_3", 1, 100, 102, 104, 5, "Micro - 1/2", "4+7", None, "Anger"],
        ["007", "007_3_1", 3, 10, 12, 14, 5, "Micro - 1/2", "R12 or R15", "or", "Happiness"],
        [7, "007_3_2", 3, 20, 25, 24, 5, "Micro - 1/2", "10A/B+ref(7B)", None, "Other"],
        [7, "007_3_3", 3, 30, 31, 33, 4, "Micro - 1/2", "T28+14", None, "Disgust"],
        [8, "008_1_1", 1, 40, 41, 42, 3, "Micro - 1/2", "4", None, "Fear"],
    ]
    write_sheet(root / "SAMM_Micro_FACS_Codes_v2.xlsx", SAMM_HEADER, rows, SAMM_PREAMBLE)
    top = root / "SAMM"
    write_frames(top / "006" / "006_1_2", numbered("006_{:05d}.jpg", range(5562, 5567)))
    write_frames(top / "006" / "006_1_3", numbered("006_{:05d}.jpg", range(99, 106)))
    write_frames(top / "007" / "007_3_1", numbered("007_{:05d}.jpg", range(10, 15)))
    write_frames(top / "007" / "007_3_2", numbered("007_{:05d}.jpg", range(20, 25)))
    write_frames(top / "007" / "007_3_3", numbered("007_{:05d}.jpg", range(30, 34)))
    return root


MMEW_HEADER = ["Subject", "Filename", "OnsetFrame", "ApexFrame", "OffsetFrame", "Action Units",
               "Estimated Emotion", "remarks"]


def build_mmew(root: Path) -> Path:
    """MMEW: ``MMEW_Micro_Exp.xlsx`` and ``Micro_Expression/{emotion}/{Filename}/{k}.jpg``.

    Rows: 0 ``others`` (→ repression, folder ``others``); 1 happiness with a remark; 2 subject
    the number 2, frames under ``fear/`` though annotated surprise (found, recorded); 3 onset..offset
    50..60 but frames 1..10 on disk (dropped).
    """
    rows = [
        ["S01", "S01_o_1", 1, 3, 5, "4+7", "others", None],
        ["S01", "S01_h_1", 2, 4, 6, "6+12", "happiness", "blink at the offset"],
        [2, "S02_s_1", 1, 2, 4, "1+2+5", "surprise", None],
        ["S03", "S03_d_1", 50, 55, 60, "9", "disgust", None],
    ]
    write_sheet(root / "MMEW_Micro_Exp.xlsx", MMEW_HEADER, rows)
    top = root / "Micro_Expression"
    write_frames(top / "others" / "S01_o_1", numbered("{}.jpg", range(1, 8)))
    write_frames(top / "happiness" / "S01_h_1", numbered("{}.jpg", range(1, 8)))
    write_frames(top / "fear" / "S02_s_1", numbered("{}.jpg", range(1, 5)))
    write_frames(top / "disgust" / "S03_d_1", numbered("{}.jpg", range(1, 11)))
    (top / "surprise").mkdir(parents=True, exist_ok=True)
    return root


FOURD_HEADER = ["sub_ID", "fold_name", "Onset", "Apex", "Offset", "AUs", "Emotion",
                *[f"AU{n}" for n in range(1, 65)]]


def _one_hot(aus: Iterable[int], odd: dict[int, Any] | None = None) -> list[Any]:
    cells: list[Any] = [1 if n in set(aus) else 0 for n in range(1, 65)]
    for n, v in (odd or {}).items():
        cells[n - 1] = v
    return cells


def build_fourd(root: Path) -> Path:
    """4DME: the labelling sheet with one-hot ``AU1``…``AU64``, ``gray_micro/{sub}/{fold}/``.

    Rows: 0 ``AU4(k)+7(k)+4+24+45`` with one-hot 4, 7, 24, 45 (→ 24, 45 with (k) zeroed);
    1 ``AU1+AU2`` agreeing; 2 ``AU12`` but one-hot 6 and 12 (disagreement recorded, one-hot used);
    3 apex ``/`` (→ 7), one-hot AU17 cell ``"x"`` (unreadable), emotion ``Negative+Surprise``.
    """
    rows = [
        ["S01", "S01_M_01", 10, 12, 14, "AU4(k)+7(k)+4+24+45", "Negative",
         *_one_hot([4, 7, 24, 45])],
        ["S01", "S01_M_02", 1, 2, 3, "AU1+AU2", "Surprise", *_one_hot([1, 2])],
        ["S02", "S02_M_01", 5, 6, 8, "AU12", "Positive", *_one_hot([6, 12])],
        ["S02", "S02_M_02", 5, "/", 9, "AU14", "Negative+Surprise",
         *_one_hot([14], {17: "x"})],
    ]
    write_sheet(root / "4DME_Labelling_Micro_release v1.xlsx", FOURD_HEADER, rows)
    top = root / "gray_micro"
    for sub, fold, frames in [("S01", "S01_M_01", range(10, 15)), ("S01", "S01_M_02", range(1, 4)),
                              ("S02", "S02_M_01", range(5, 9)), ("S02", "S02_M_02", range(5, 10))]:
        write_frames(top / sub / fold, numbered(f"{fold}_{{}}.jpg", frames))
    return root


#: The ME label file's header: no expression-type column (every row is a micro-expression).
CASME3A_HEADER = ["Subject", "Filename", "Onset", "Apex", "Offset", "AU", "Objective class",
                  "emotion"]
#: The full part-A file's header: no emotion, an expression-type column.
CASME3A_FULL_HEADER = ["Subject", "Filename", "Onset", "Apex", "Offset", "AU", "Expression type",
                       "Objective class"]


def _casme3a_frames(root: Path) -> Path:
    top = root / "ME_A"
    write_frames(top / "spNO.1" / "a" / "color", numbered("{}.jpg", range(0, 36)))
    write_frames(top / "spNO.2" / "b" / "color", numbered("{}.jpg", range(0, 11)))
    write_frames(top / "spNO.2" / "c" / "color", numbered("{}.jpg", range(0, 5)))
    return root


def build_casme3a(root: Path) -> Path:
    """CAS(ME)^3 part A: the ME label file and ``ME_A/{Subject}/{Filename}/color/{k}.jpg``.

    Cells typed as in the real v2 file (frame numbers int, a one-AU cell int, ``+`` only).  Rows: 0
    ``a``; 1 ``a`` (→ ``a2``), ``ref(7B)+43``; 2 ``a`` (→ ``a3``); 3 ``b``, others; 4 ``c`` offset
    before the onset (dropped).
    """
    rows = [
        ["spNO.1", "a", 0, 2, 4, "4+7", "I", "disgust"],
        ["spNO.1", "a", 20, 22, 24, "ref(7B)+43", "II", "happy"],
        ["spNO.1", "a", 30, 31, 33, "1+2", "III", "surprise"],
        ["spNO.2", "b", 5, 6, 8, 12, "II", "others"],
        ["spNO.2", "c", 3, 2, 1, 4, "I", "sad"],
    ]
    write_sheet(root / "cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx", CASME3A_HEADER, rows)
    return _casme3a_frames(root)


def build_casme3a_full(root: Path) -> Path:
    """CAS(ME)^3 part A: the full file (macro and micro rows), saved as ``.xlsx``.

    Rows: 0 ``a`` micro, AU ``4，7`` (Chinese comma); 1 ``a`` macro (filtered); 2 ``a`` micro (→
    ``a2``), ``ref(7B)+43``; 3 ``a`` micro (→ ``a3``), ``1,2``; 4 ``b`` micro; 5 empty expression
    type (dropped).
    """
    rows = [
        ["spNO.1", "a", 0, 2, 4, "4\uff0c7", "Micro-expression", "I"],
        ["spNO.1", "a", 10, 11, 13, "L12+R12", "Macro-expression", "II"],
        ["spNO.1", "a", 20, 22, 24, "ref(7B)+43", "Micro-expression", "II"],
        ["spNO.1", "a", 30, 31, 33, "1,2", "micro-expression", "III"],
        ["spNO.2", "b", 5, 6, 8, "12", "Micro-expression", "II"],
        ["spNO.2", "c", 1, 2, 3, "4", None, "I"],
    ]
    write_sheet(root / "CAS(ME)3_part_A_v2.xlsx", CASME3A_FULL_HEADER, rows)
    return _casme3a_frames(root)


SMIC_HEADER = [None, "subject", "material", "onset", "offset", "emotion"]


def build_smic(root: Path) -> Path:
    """SMIC-HS: ``smic.xlsx`` (blank first column) and ``HS/{s}/micro/{emotion}/{material}/``.

    Rows: 0 positive 25460..25466 (apex → 25463), BMP frames; 1 negative 100..105 (apex → 102);
    2 subject the number 2 (→ folder ``s2``), surprise; 3 no frame folder (dropped).
    """
    rows = [
        [0, "s1", "s1_po_01", 25460, 25466, "positive"],
        [1, "s1", "s1_ne_01", 100, 105, "negative"],
        [2, 2, "s2_sur_01", 1, 4, "surprise"],
        [3, "s3", "s3_po_01", 1, 4, "positive"],
    ]
    write_sheet(root / "smic.xlsx", SMIC_HEADER, rows)
    top = root / "HS"
    write_frames(top / "s1" / "micro" / "positive" / "s1_po_01",
                 numbered("image{:06d}.bmp", range(25460, 25467)))
    write_frames(top / "s1" / "micro" / "negative" / "s1_ne_01",
                 numbered("image{:06d}.bmp", range(100, 106)))
    write_frames(top / "s2" / "micro" / "surprise" / "s2_sur_01",
                 numbered("image{:06d}.bmp", range(1, 5)))
    (top / "s3" / "micro" / "positive").mkdir(parents=True, exist_ok=True)
    return root


BUILDERS: dict[str, Callable[[Path], Path]] = {
    "casme": build_casme, "casme2": build_casme2, "samm": build_samm, "mmew": build_mmew,
    "fourd": build_fourd, "casme3a": build_casme3a, "smic": build_smic,
}


def build_all(base: Path, keys: Iterable[str] = tuple(BUILDERS)) -> dict[str, Path]:
    """Write the fixture of each database key under ``base/<key>``; returns key → root."""
    return {key: BUILDERS[key](base / key) for key in keys}

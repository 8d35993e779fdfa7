"""Writing each simulated database exactly in its real release's layout (DATASETS.md).

=========  ==================================================  ===========================================
key        annotation file (in the database root)               frames
=========  ==================================================  ===========================================
casme      ``casme.xlsx``                                      ``sub{NN}/{Filename}/reg_{Filename}-{k}.jpg``
casme2     ``CASME2-coding-20140508.xlsx``                      ``CASME2_RAW_selected/sub{NN}/{Filename}/img{k}.jpg``
samm       ``SAMM_Micro_FACS_Codes_v2.xlsx``                    ``SAMM/{NNN}/{Filename}/{NNN}_{k:05d}.jpg`` (grey)
mmew       ``MMEW_Micro_Exp.xlsx``                              ``Micro_Expression/{emotion}/{Filename}/{k}.jpg``
fourd      ``4DME_Labelling_Micro_release v1.xlsx``             ``gray_micro/{sub_ID}/{fold_name}/{fold_name}_{k:04d}.jpg`` (grey)
casme3a    ``cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx``        ``ME_A/{Subject}/{Filename}/color/{k}.jpg`` (per video)
smic       ``smic.xlsx``                                        ``HS/{subject}/micro/{emotion}/{material}/image{k:06d}.jpg``
=========  ==================================================  ===========================================

Sheet layouts (pandas' ``read_excel`` view; blank headers read as ``Unnamed: n``), with the cell
types of the real files (checked against the public copies of the SAMM v2, CAS(ME)^3 part A v2 and
CASME II annotation files; a quirk the real file does not have is not written):

- casme: ``Subject, Filename, Unnamed: 2, OnsetF, ApexF1, ApexF2, OffsetF, Unnamed: 7, AU,
  Emotion`` (ApexF2 is the release's second-apex column, mostly empty; the AU column is named
  ``AU`` as the CD6ME reference tooling reads it).  Frame numbers are zero-padded to 3 or 4 digits
  in some folders and not at all in others.
- casme2: ``Subject, Filename, Unnamed: 2, OnsetFrame, ApexFrame, OffsetFrame, Unnamed: 6,
  Action Units, Estimated Emotion``.
- samm: worksheet ``MICRO_ONLY``; 13 sheet rows of free text and blank rows as in v2 (pandas reads
  the first as its header, so the real header is its data row 12, sheet row 14):
  ``Subject, Filename, Inducement Code, Onset Frame, Apex Frame, Offset Frame, Duration, Micro,
  Action Units, Estimated Emotion, Objective Classes, Notes``.  ``Subject`` is text (``006``), the
  frame numbers, ``Inducement Code``, ``Duration`` and ``Objective Classes`` are integers, an AU
  cell holding one plain number is an integer (``4``), others text (``4+7``, ``R12 + R15``);
  ``Micro`` is ``Micro - 1/2``.
- mmew: ``Subject, Filename, OnsetFrame, ApexFrame, OffsetFrame, Action Units, Estimated Emotion,
  remarks`` (a missing apex is an empty cell).
- fourd: ``sub_ID, fold_name, Onset, Apex, Offset, AUs, Emotion, AU1 … AU64`` (one-hot, ``(k)``
  AUs included as 1).
- casme3a: the ME label file: worksheet ``label``, ``Subject, Filename, Onset, Apex, Offset, AU,
  Objective class, emotion`` — no expression-type column and only micro-expression rows (the
  macro-expressions stay in the videos); every cell is text, as in v2 (``"355"``, ``"R12"``,
  ``"II"``); AU cells joined by ``+`` only; rows of one video share a Filename and are
  consecutive.
- smic: ``Unnamed: 0`` (blank), ``subject, material, onset, offset, emotion`` — no apex, no AUs.

xlsx files are written deterministically: fixed document dates and zip entry times, so the same
plan gives the same bytes.
"""

from __future__ import annotations

import datetime
import io
import os
import re
import zipfile
from pathlib import Path

import openpyxl

from pipeline.standin.labels import Clip, DatabasePlan, Sample

SHEET_FILES: dict[str, str] = {
    "casme": "casme.xlsx",
    "casme2": "CASME2-coding-20140508.xlsx",
    "samm": "SAMM_Micro_FACS_Codes_v2.xlsx",
    "mmew": "MMEW_Micro_Exp.xlsx",
    "fourd": "4DME_Labelling_Micro_release v1.xlsx",
    "casme3a": "cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx",
    "smic": "smic.xlsx",
}

#: Header of each sheet as written (``None``: a blank header cell).
HEADERS: dict[str, list[str | None]] = {
    "casme": ["Subject", "Filename", None, "OnsetF", "ApexF1", "ApexF2", "OffsetF", None, "AU",
              "Emotion"],
    "casme2": ["Subject", "Filename", None, "OnsetFrame", "ApexFrame", "OffsetFrame", None,
               "Action Units", "Estimated Emotion"],
    "samm": ["Subject", "Filename", "Inducement Code", "Onset Frame", "Apex Frame", "Offset Frame",
             "Duration", "Micro", "Action Units", "Estimated Emotion", "Objective Classes",
             "Notes"],
    "mmew": ["Subject", "Filename", "OnsetFrame", "ApexFrame", "OffsetFrame", "Action Units",
             "Estimated Emotion", "remarks"],
    "fourd": ["sub_ID", "fold_name", "Onset", "Apex", "Offset", "AUs", "Emotion",
              *[f"AU{i}" for i in range(1, 65)]],
    "casme3a": ["Subject", "Filename", "Onset", "Apex", "Offset", "AU", "Objective class",
                "emotion"],
    "smic": [None, "subject", "material", "onset", "offset", "emotion"],
}

#: Worksheet names of the real files (openpyxl's default elsewhere).
SHEET_TITLES: dict[str, str] = {"samm": "MICRO_ONLY", "casme3a": "label"}

#: SAMM's preamble: the 13 sheet rows above the header, as ``{column: text}`` (blank rows empty),
#: laid out as in v2 (title and a note in row 1, a dated update note, a symbol key, AU help).
SAMM_PREAMBLE: tuple[dict[int, str], ...] = (
    {0: "SAMM - Spontaneous Actions and Micro-Movements: micro-movement FACS codes (v2 layout)",
     4: "STAND-IN: simulated data written by the mer-pipeline stand-in benchmark, not the real "
        "SAMM annotations. Faces: Face Research Lab London Set (DeBruine & Jones 2017, CC BY 4.0), "
        "altered."},
    {},
    {0: "Frames: SAMM/<Subject>/<Filename>/<Subject>_<frame>.jpg, greyscale.",
     8: "See ground_truth/samm.json beside the database root for the simulated truth."},
    {4: "Estimated Emotion: the coders' estimate; Objective Classes: AU-based classes 1-7."},
    {},
    {0: "Symbol Key:"},
    {0: '"or" = either of two AUs (the coders were unsure)'},
    {0: "Onset, Apex and Offset Frame: frame numbers in the participant's video; Duration: "
        "Offset Frame - Onset Frame + 1 (200 fps in the release)."},
    {},
    {0: "AU Help:"},
    {0: '"L2 or R2" = Unilateral AU 2 on the left or right side of the face.'},
    {0: '"A"-"E" after an AU number = its intensity.'},
    {},
)
#: SAMM's ``Micro`` column (every row of v2 holds this text).
SAMM_MICRO = "Micro - 1/2"
#: CAS(ME)^3's ``Objective class`` is a Roman numeral.
ROMAN = {1: "I", 2: "II", 3: "III", 4: "IV", 5: "V", 6: "VI", 7: "VII"}


def _au_cell(key: str, cell: str) -> object:
    """An AU cell typed as the release types it: SAMM (and CASME II, CASME, MMEW) store a cell of
    one plain number as an integer; CAS(ME)^3 stores text; empty → blank."""
    if not cell:
        return None
    if key != "casme3a" and cell.isdigit():
        return int(cell)
    return cell


_FIXED_DATE = datetime.datetime(2000, 1, 1, 0, 0, 0)
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def frame_name(naming: dict, k: int) -> str:
    """File name of frame ``k`` of a clip: ``{stem}{k}`` zero-padded to ``pad`` digits, ``.jpg``."""
    pad = int(naming.get("pad", 0))
    num = f"{k:0{pad}d}" if pad else str(k)
    return f"{naming.get('stem', '')}{num}.jpg"


def frame_dir(root: str | os.PathLike, clip: Clip) -> Path:
    """The folder of a clip's frames under a database root."""
    return Path(root) / clip.folder


def _apex_cell(key: str, s: Sample) -> object:
    if s.annotated_apex is None:
        return None if key == "mmew" else "/"
    return int(s.annotated_apex)


def sheet_rows(plan: DatabasePlan) -> list[list[object]]:
    """The sheet's rows (header first; SAMM: preamble, header, data) as written.

    Parameters
    ----------
    plan : DatabasePlan

    Returns
    -------
    list of list
        Cell values (``None``: blank cell).
    """
    key = plan.key
    subj = plan.subjects
    rows: list[list[object]] = []
    if key == "samm":
        width = len(HEADERS[key])
        rows.extend([[line.get(j) for j in range(width)] if line else [] for line in SAMM_PREAMBLE])
    rows.append(list(HEADERS[key]))
    for s in plan.samples:
        sub = subj[s.subject]
        clip = plan.clips[s.clip]
        au = _au_cell(key, s.au_cell)
        apex = _apex_cell(key, s)
        if key == "casme":
            rows.append([sub.name, s.material, None, s.onset, apex, None, s.offset, None, au,
                         s.emotion])
        elif key == "casme2":
            rows.append([sub.name, s.material, None, s.onset, apex, s.offset, None, au, s.emotion])
        elif key == "samm":
            inducement = int(s.material.split("_")[1])
            notes = "eye blink" if any(e.kind == "blink" for e in clip.events) else None
            rows.append([sub.folder, s.material, inducement, s.onset, apex, s.offset,
                         s.offset - s.onset + 1, SAMM_MICRO, au, s.emotion, s.objective_class,
                         notes])
        elif key == "mmew":
            remarks = "blink" if any(e.kind == "blink" for e in clip.events) else None
            rows.append([sub.name, s.material, s.onset, apex, s.offset, au, s.emotion, remarks])
        elif key == "fourd":
            onehot = [0] * 64
            for tok in re.split(r"\+", s.au_cell):
                digits = "".join(ch for ch in tok if ch.isdigit())
                if digits and 1 <= int(digits) <= 64:
                    onehot[int(digits) - 1] = 1
            rows.append([sub.name, s.material, s.onset, apex, s.offset, au, s.emotion, *onehot])
        elif key == "casme3a":
            if s.expression_type != "micro":
                raise ValueError(f"casme3a: the ME label file lists micro-expressions only, not "
                                 f"row {s.row} ({s.expression_type})")
            rows.append([sub.name, s.material, str(s.onset), str(apex), str(s.offset), au,
                         ROMAN[s.objective_class], s.emotion])
        else:
            rows.append([None, sub.name, s.material, s.onset, s.offset, s.emotion])
    return rows


def write_sheet(plan: DatabasePlan, root: str | os.PathLike) -> Path:
    """Write the database's annotation spreadsheet into ``root``; returns its path."""
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = SHEET_TITLES.get(plan.key, "Sheet1")
    for row in sheet_rows(plan):
        ws.append(row)
    path = Path(root) / SHEET_FILES[plan.key]
    save_workbook(wb, path)
    return path


def save_workbook(wb: openpyxl.Workbook, path: str | os.PathLike) -> None:
    """Save an openpyxl workbook with fixed dates so the bytes depend on the content only.

    openpyxl stamps ``docProps/core.xml`` with the current time and its zip entries with the
    local time; both are replaced by fixed values (2000-01-01, 1980-01-01).
    """
    wb.properties.created = _FIXED_DATE
    wb.properties.modified = _FIXED_DATE
    wb.properties.creator = "mer-pipeline stand-in"
    wb.properties.lastModifiedBy = "mer-pipeline stand-in"
    buf = io.BytesIO()
    wb.save(buf)
    buf.seek(0)
    stamp = _FIXED_DATE.strftime("%Y-%m-%dT%H:%M:%SZ")
    out = io.BytesIO()
    with zipfile.ZipFile(buf) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename == "docProps/core.xml":
                text = data.decode("utf-8")
                text = re.sub(r"(<dcterms:(?:created|modified)[^>]*>)[^<]*(</dcterms:)",
                              rf"\g<1>{stamp}\g<2>", text)
                data = text.encode("utf-8")
            zi = zipfile.ZipInfo(info.filename, date_time=_ZIP_DATE)
            zi.compress_type = zipfile.ZIP_DEFLATED
            zi.external_attr = 0o600 << 16
            zout.writestr(zi, data)
    Path(path).write_bytes(out.getvalue())


ATTRIBUTION = """\
# Attribution: Face Research Lab London Set (altered)

The frames of this stand-in benchmark were rendered from the neutral frontal photographs of the
Face Research Lab London Set, **altered**: each photo was resized, rotated, colour-graded or turned
grey, and warped frame by frame with simulated facial action-unit motions, head motion, blinks,
illumination flicker, sensor noise and JPEG compression.

> DeBruine, L., & Jones, B. (2017). Face Research Lab London Set (Version 5). figshare.
> https://doi.org/10.6084/m9.figshare.5047666.v5

Licensed under CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/). All individuals gave
signed consent for their images to be used "in lab-based and web-based studies in their original
or altered forms and to illustrate research". Anything derived from these frames that you
redistribute must carry this attribution and say that the photos were altered.

The spreadsheets and folder layouts imitate those of the real micro-expression databases (CASME,
CASME II, SAMM, MMEW, 4DME, CAS(ME)^3, SMIC) so that the same readers run on both; the annotations
are simulated and say nothing about the real databases. Scores on this stand-in say nothing about
real-data accuracy.
"""


def write_attribution(folder: str | os.PathLike) -> None:
    """Write ``ATTRIBUTION.md`` into ``folder``."""
    Path(folder, "ATTRIBUTION.md").write_text(ATTRIBUTION, encoding="utf-8")

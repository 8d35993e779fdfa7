"""CAS(ME)^3 part A (Li et al., "CAS(ME)^3: a third generation facial spontaneous
micro-expression database with depth information and high ecological validity", IEEE TPAMI 2022):
colour, 30 fps; the micro-expressions of part A.

Release layouts read (DATASETS.md)::

    <root>/cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx   (or the full CAS(ME)3_part_A_v2.xls[x])
    <root>/ME_A/{Subject}/{Filename}/color/{k}.jpg      one folder per video (the release)
    <root>/ME_A/{Subject}/{Filename}{n}/color/{k}.jpg   one folder per sample (the CD6ME tooling's
                                                        extraction; n = 2, 3, … for the n-th sample
                                                        of a video, none for the first)

k is the JPEG index in the video (``JpgIndex``: onset, apex and offset are such indices).

Annotation files, header in the first row:

* ``cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx`` (preferred; 860 rows, the file the CD6ME tooling
  reads): ``Subject``, ``Filename``, ``Onset``, ``Apex``, ``Offset``, ``AU``, ``Objective class``,
  ``emotion``.  There is no expression-type column: every row is a micro-expression.
* the full part-A file ``CAS(ME)3_part_A_v2.xls`` (also read saved as ``.xlsx``): the same columns
  without ``emotion``, plus ``Expression type`` (``Micro-expression`` / ``Macro-expression``;
  3346 macro and 860 micro rows in v2).  Only micro-expression rows are samples; the others are
  left out by design and counted as ``filtered`` in ``summary.json``, not as issues; a row with an
  empty ``Expression type`` cannot be classed and is dropped (recorded).  Without ``emotion`` every
  sample's emotion is recorded as ``unreadable``.  Reading ``.xls`` needs the package ``xlrd``.

Corrections and assumptions:

* ``Filename`` names the video (the stimulus), so several micro-expressions of one subject share
  it: the second micro-expression row of a subject with the same ``Filename`` becomes
  ``{Filename}2``, the third ``{Filename}3``, … in sheet order (DATASETS.md; counted over
  micro-expression rows only, so the numbering does not depend on the filtered rows).  On the v2
  label file this gives the CD6ME tooling's names for all 860 rows (its rule numbers runs of
  consecutive rows; the repeats of v2 are all consecutive).
* Frames: the per-sample folder ``{Filename}{n}/color/`` when it exists, else the video's folder
  ``{Filename}/color/`` (the first sample of a video has the same folder in both trees), so both
  trees are read without a setting.
* The corrections table ``corrections/casme3a.csv`` applies the CD6ME tooling's fixes of rows 128
  (apex), 708 (a typo'd offset: 5..3460), 749 (onset after the offset), 750 (frame 0 does not
  exist) and 796, 798 (offset 0), each recorded in ``issues.csv``; the full file v2 already has
  the fixed onset/offset values of rows 749, 796 and 798.
* AU cells are split on ``+`` and on ASCII, Chinese full-width (``，``) and ideographic (``、``)
  commas (part A's v2 files have only ``+``; part C has commas).
* ``Subject`` is read as written (``spNO.1``); an integral cell also matches ``spNO.{n}``.
* Emotion: column ``emotion`` (happy, disgust, fear, anger, sad, surprise, others; three rows
  ``Others``), lower-cased; no 5-class label; 3 classes by the general rule.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pipeline.databases.aus import PLUS_AND_COMMAS, cell_text
from pipeline.databases.base import (
    DatabaseError,
    DatabaseReader,
    RowContext,
    Sheet,
    subject_candidates,
)

MICRO = "microexpression"


def expression_type(value: Any) -> str:
    """``Expression type`` cell normalised: lower-case, without spaces, hyphens, underscores."""
    return re.sub(r"[\s_\-]", "", cell_text(value)).casefold()


class Casme3aReader(DatabaseReader):
    """Reader of CAS(ME)^3 part A micro-expressions (key ``casme3a``)."""

    key = "casme3a"
    title = "CAS(ME)^3 part A"
    spreadsheets = ("cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx", "CAS(ME)3_part_A_v2.xlsx",
                    "CAS(ME)3_part_A_v2.xls")
    frames_folder = "ME_A"
    layout = "ME_A/{Subject}/{Filename}/color/ (or ME_A/{Subject}/{Filename}{n}/color/)"
    fps = 30
    columns = {
        "subject": ("Subject",),
        "material": ("Filename",),
        "onset": ("Onset",),
        "apex": ("Apex",),
        "offset": ("Offset",),
        "au": ("AU",),
    }
    optional_columns = {
        "emotion": ("emotion",),
        "expression_type": ("Expression type",),
    }
    au_separators = PLUS_AND_COMMAS

    def subject_names(self, value: Any) -> list[str]:
        """As written (an integer also as ``spNO.{n}``)."""
        return subject_candidates(value, ("spNO.{}", "{}"))

    def materials(self, sheet: Sheet) -> list[str]:
        """``Filename``, with ``2``, ``3``, … appended to repeats within a subject."""
        subject_col, material_col = self._roles["subject"], self._roles["material"]
        type_col = self._roles.get("expression_type")
        counts: dict[tuple[str, str], int] = {}
        out = []
        for row in sheet.rows:
            name = cell_text(row[material_col])
            if name and (type_col is None or expression_type(row[type_col]) == MICRO):
                key = (cell_text(row[subject_col]), name)
                counts[key] = counts.get(key, 0) + 1
                if counts[key] > 1:
                    name = f"{name}{counts[key]}"
            out.append(name)
        return out

    def check_sheet(self, sheet: Sheet) -> None:
        """The ME label file must have ``emotion``; the full file must have ``Expression type``.

        Raises
        ------
        DatabaseError
            If the file has neither column (it is then neither of the two files).
        """
        if "emotion" not in self._roles and "expression_type" not in self._roles:
            raise DatabaseError(
                f"{sheet.path}: neither the ME label file's 'emotion' column nor the full part-A "
                f"file's 'Expression type' column found (columns: {sheet.columns})")

    def select(self, ctx: RowContext) -> bool:
        """Micro-expression rows only (every row of the ME label file)."""
        if "expression_type" not in self._roles:
            return True
        kind = expression_type(ctx.cells.get("expression_type"))
        if not kind:
            raise ctx.drop("expression type missing",
                           "empty 'Expression type' cell; cannot tell a micro-expression")
        return kind == MICRO

    def sample_dirs(self, subject: str, material: str, ctx: RowContext) -> list[Path]:
        """``<root>/ME_A/{Subject}/{Filename}{n}/color/`` (one folder per sample), then
        ``…/{Filename}/color/`` (the video); the same folder for a video's first sample."""
        video = self.path(self.frames_folder, subject, ctx.text("material"), "color")
        if material == ctx.text("material"):
            return [video]
        return [self.path(self.frames_folder, subject, material, "color"), video]

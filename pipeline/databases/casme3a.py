"""CAS(ME)^3 part A (Li et al., "CAS(ME)^3: a third generation facial spontaneous
micro-expression database with depth information and high ecological validity", IEEE TPAMI 2022):
colour, 30 fps; the micro-expressions of part A.

Release layout read (DATASETS.md)::

    <root>/cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx
    <root>/ME_A/{Subject}/{Filename}/color/{k}.jpg        k = JPEG index in the video

Annotation file ``cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx``, header in the first row.  Columns
used: ``Subject``, ``Filename``, ``Onset``, ``Apex``, ``Offset``, ``AU``, ``emotion``,
``Expression type``.  ``Objective class`` is not needed and not required.

Corrections and assumptions:

* Only rows whose ``Expression type`` is ``Micro-expression`` (any case, hyphen or space) are
  samples; the others (macro-expressions) are left out by design and counted as ``filtered`` in
  ``summary.json`` — not issues.  A row with an empty ``Expression type`` cannot be classed and
  is dropped (recorded).
* ``Filename`` names the video (the stimulus), so several micro-expressions of one subject share
  it: the second micro-expression row of a subject with the same ``Filename`` becomes
  ``{Filename}2``, the third ``{Filename}3``, … in sheet order (DATASETS.md; counted over
  micro-expression rows only, so the numbering does not depend on the filtered rows).  The frames
  stay in the video's folder ``{Filename}/color/``; a copy cut per sample into
  ``{Filename}{n}/color/`` is used when the video folder is absent.
* AU cells are split on ``+`` and on ASCII, Chinese full-width (``，``) and ideographic (``、``)
  commas.
* ``Subject`` is read as written (``spNO.1``); an integral cell also matches ``spNO.{n}``.
* Apex/onset/offset: the general rules of :mod:`pipeline.databases.base` (the CD6ME tooling
  patches rows 128, 708, 749, 750, 796 and 798 by hand; not reproduced).
* Emotion: column ``emotion`` (happy, disgust, fear, anger, sad, surprise, others); no 5-class
  label; 3 classes by the general rule.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pipeline.databases.aus import PLUS_AND_COMMAS, cell_text
from pipeline.databases.base import DatabaseReader, RowContext, Sheet, subject_candidates

MICRO = "microexpression"


def expression_type(value: Any) -> str:
    """``Expression type`` cell normalised: lower-case, without spaces, hyphens, underscores."""
    return re.sub(r"[\s_\-]", "", cell_text(value)).casefold()


class Casme3aReader(DatabaseReader):
    """Reader of CAS(ME)^3 part A micro-expressions (key ``casme3a``)."""

    key = "casme3a"
    title = "CAS(ME)^3 part A"
    spreadsheets = ("cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx",)
    frames_folder = "ME_A"
    layout = "ME_A/{Subject}/{Filename}/color/"
    columns = {
        "subject": ("Subject",),
        "material": ("Filename",),
        "onset": ("Onset",),
        "apex": ("Apex",),
        "offset": ("Offset",),
        "au": ("AU",),
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
        type_col = self._roles["expression_type"]
        counts: dict[tuple[str, str], int] = {}
        out = []
        for row in sheet.rows:
            name = cell_text(row[material_col])
            if name and expression_type(row[type_col]) == MICRO:
                key = (cell_text(row[subject_col]), name)
                counts[key] = counts.get(key, 0) + 1
                if counts[key] > 1:
                    name = f"{name}{counts[key]}"
            out.append(name)
        return out

    def select(self, ctx: RowContext) -> bool:
        """Micro-expression rows only."""
        kind = expression_type(ctx.cells.get("expression_type"))
        if not kind:
            raise ctx.drop("expression type missing",
                           "empty 'Expression type' cell; cannot tell a micro-expression")
        return kind == MICRO

    def sample_dirs(self, subject: str, material: str, ctx: RowContext) -> list[Path]:
        """``<root>/ME_A/{Subject}/{Filename}/color/`` (the video), then ``…/{material}/color/``."""
        video = self.path(self.frames_folder, subject, ctx.text("material"), "color")
        if material == ctx.text("material"):
            return [video]
        return [video, self.path(self.frames_folder, subject, material, "color")]

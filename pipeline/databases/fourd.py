"""4DME — the 4D spontaneous micro-expression database (Li et al., "4DME: a spontaneous 4D
micro-expression dataset with multimodalities", IEEE TAFFC 2022): grey 2-D frames.

Release layout read (DATASETS.md)::

    <root>/4DME_Labelling_Micro_release v1.xlsx
    <root>/gray_micro/{sub_ID}/{fold_name}/…_{k}.jpg       frame number after the last ``_``

Annotation file ``4DME_Labelling_Micro_release v1.xlsx``, header in the first row.  Columns used:
``sub_ID``, ``fold_name``, ``Onset``, ``Apex``, ``Offset``, ``AUs`` (``AU4(k)+7(k)+4+24+45``),
``Emotion``, and the one-hot columns ``AU1`` … ``AU64`` that the release already carries (every
column named ``AU<n>``; at least one must exist).

Corrections and assumptions:

* AU labels come from the one-hot columns (the release's own coding, as in the CD6ME tooling).
  The ``AUs`` string is parsed too: when its AUs (apart from ``(k)``-marked ones) differ from the
  one-hot columns the row is recorded (``fixed``: the one-hot columns are used).  A one-hot cell
  that is not 0/1/empty is recorded (``unreadable``) and read as 0.
* ``(k)`` marks: with ``index.drop_k_marked_aus: true`` (default, DATASETS.md and CD6ME) every AU
  with a ``(k)``-marked token is zeroed — also when the same AU is listed again without the mark
  (``AU4(k)+…+4`` zeroes AU4, as the CD6ME tooling does).  This is the protocol's convention, not
  a data error, so it is not recorded per row.
* The frame-file prefix before the last ``_`` is not fixed by DATASETS.md; any prefix is accepted
  (the frame number is the last run of digits).  ``sub_ID`` is read as written; an integral cell
  also matches a folder named with 2- or 3-digit zero padding.
* Emotion: no 5-class label; 3 classes by the general rule (4DME's ``positive`` / ``negative`` /
  ``surprise`` map to themselves; mixed labels such as ``negative+surprise`` get none).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from pipeline.databases.base import (
    DatabaseError,
    DatabaseReader,
    RowContext,
    Sheet,
    subject_candidates,
)

_ONE_HOT = re.compile(r"AU\s*(\d+)", re.IGNORECASE)


def _one_hot(value: Any) -> bool | None:
    """A one-hot cell: 1 → True, 0 or empty → False, anything else → None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return {0: False, 1: True}.get(value)  # type: ignore[call-overload]
    return {"": False, "0": False, "1": True, "0.0": False, "1.0": True}.get(str(value).strip())


class FourdReader(DatabaseReader):
    """Reader of 4DME (key ``fourd``)."""

    key = "fourd"
    title = "4DME"
    spreadsheets = ("4DME_Labelling_Micro_release v1.xlsx",)
    frames_folder = "gray_micro"
    layout = "gray_micro/{sub_ID}/{fold_name}/"
    fps = 60
    columns = {
        "subject": ("sub_ID",),
        "material": ("fold_name",),
        "onset": ("Onset",),
        "apex": ("Apex",),
        "offset": ("Offset",),
        "au": ("AUs",),
        "emotion": ("Emotion",),
    }

    def check_sheet(self, sheet: Sheet) -> None:
        """Find the one-hot ``AU<n>`` columns."""
        self._one_hot: dict[int, int] = {}
        for j, name in enumerate(sheet.columns):
            m = _ONE_HOT.fullmatch(name.strip())
            if m and int(m.group(1)) not in self._one_hot:
                self._one_hot[int(m.group(1))] = j
        if not self._one_hot:
            raise DatabaseError(
                f"{sheet.path}: no one-hot AU columns; expected the 4DME release's columns "
                f"AU1 … AU64 beside 'AUs' (header row {sheet.header_row + 1} has "
                f"{sheet.columns})")

    def subject_names(self, value: Any) -> list[str]:
        """As written (an integer also as 2 or 3 zero-padded digits)."""
        return subject_candidates(value, ("{}", "{:02d}", "{:03d}"))

    def sample_dirs(self, subject: str, material: str, ctx: RowContext) -> list[Path]:
        """``<root>/gray_micro/{sub_ID}/{fold_name}/``."""
        return [self.path(self.frames_folder, subject, material)]

    def read_aus(self, ctx: RowContext) -> frozenset[int]:
        """One-hot columns, ``(k)``-marked AUs zeroed when configured."""
        parsed = self.parse_au_cell(ctx)
        self.note_aus(ctx, parsed)
        one_hot: set[int] = set()
        for n, j in sorted(self._one_hot.items()):
            flag = _one_hot(ctx.values[j])
            if flag is None:
                ctx.unreadable("one-hot AU cell unreadable",
                               f"column AU{n} holds {ctx.values[j]!r}; read as 0")
            elif flag:
                one_hot.add(n)
        marked = set(parsed.k_marked)
        if set(parsed.aus) - marked != one_hot - marked:
            ctx.fix("AU cell and one-hot columns disagree",
                    f"AUs {parsed.text!r} gives {_names(set(parsed.aus) - marked)} besides "
                    f"(k) marks, the one-hot columns {_names(one_hot - marked)}; labels taken "
                    "from the one-hot columns")
        if self.options.drop_k_marked_aus:
            one_hot -= marked
        return frozenset(one_hot)


def _names(aus: set[int]) -> str:
    return "+".join(f"AU{n}" for n in sorted(aus)) or "none"

"""SMIC-HS — the high-speed part of the Spontaneous Micro-expression Corpus (Li et al., "A
spontaneous micro-expression database: inducement, collection and baseline", FG 2013): 100 fps,
colour; no AUs, no apex annotated.

Release layout read (DATASETS.md)::

    <root>/smic.xlsx
    <root>/HS/{subject}/micro/{emotion}/{material}/<frames>

Annotation file ``smic.xlsx``, header in the first row, a blank first column (pandas'
``Unnamed: 0``).  Columns used: ``subject``, ``material``, ``onset``, ``offset``, ``emotion``
(positive, negative, surprise).

Corrections and assumptions:

* Apex: SMIC annotates none.  The protocol's rule ``apex = onset + (offset − onset) // 2``
  (DATASETS.md; the CD6ME tooling and MEGC 2019 alike) is applied to every row; it is part of
  the protocol, not a correction, so it is not recorded as an issue.  (An apex column, if a copy
  of the file has one, is ignored.)
* Frame file names are not fixed by DATASETS.md (the release uses names such as
  ``image{k:06d}.bmp``); any ``.jpg``/``.bmp``/``.png`` name with the frame number as its last
  run of digits is read, and ``onset``/``offset`` are taken to be those numbers.
* ``subject`` is read as written (``s1``); an integral cell matches ``s{n}``, ``s{nn}`` or the
  bare number, whichever folder exists.
* The emotion folder is the ``emotion`` cell as written (matched case-insensitively); when the
  sample is found under another emotion folder that one is used and the row recorded.
* No AU labels (all AU columns 0, ``au`` empty).  Emotion: no 5-class label; 3 classes are the
  release's positive / negative / surprise.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipeline.databases.base import DatabaseReader, RowContext, subject_candidates


class SmicReader(DatabaseReader):
    """Reader of SMIC-HS (key ``smic``)."""

    key = "smic"
    title = "SMIC-HS"
    spreadsheets = ("smic.xlsx",)
    frames_folder = "HS"
    layout = "HS/{subject}/micro/{emotion}/{material}/"
    fps = 100
    columns = {
        "subject": ("subject",),
        "material": ("material",),
        "onset": ("onset",),
        "offset": ("offset",),
        "emotion": ("emotion",),
    }

    def subject_names(self, value: Any) -> list[str]:
        """As written (an integer as ``s{n}``, ``s{nn}`` or ``{n}``)."""
        return subject_candidates(value, ("s{}", "s{:02d}", "{}"))

    def sample_dirs(self, subject: str, material: str, ctx: RowContext) -> list[Path]:
        """``<root>/HS/{subject}/micro/{emotion}/{material}/``, then the other emotion folders."""
        micro = self.path(self.frames_folder, subject, "micro")
        first = self.path(self.frames_folder, subject, "micro", ctx.text("emotion"), material)
        try:
            others = sorted(n for n in os.listdir(micro) if (micro / n).is_dir())
        except OSError:
            others = []
        return [first] + [micro / n / material for n in others if micro / n != first.parent]

    def note_folder(self, ctx: RowContext, expected: Path, found: Path) -> None:
        ctx.fix("sample under another emotion folder",
                f"emotion {ctx.text('emotion')!r} but the frames are in {found} (not {expected}); "
                "frames read from there, emotion kept as annotated", found)

    def read_apex(self, ctx: RowContext, onset: int, offset: int) -> int:
        """The protocol's apex: ``onset + (offset - onset) // 2``."""
        return onset + (offset - onset) // 2

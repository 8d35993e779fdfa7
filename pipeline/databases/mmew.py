"""MMEW — the Micro-and-Macro Expression Warehouse (Ben et al., "Video-based facial
micro-expression analysis: a survey of datasets, features and algorithms", IEEE TPAMI 2021):
90 fps, colour.

Release layout read (DATASETS.md)::

    <root>/MMEW_Micro_Exp.xlsx
    <root>/Micro_Expression/{emotion}/{Filename}/{k}.jpg

Annotation file ``MMEW_Micro_Exp.xlsx``, header in the first row.  Columns used: ``Subject``,
``Filename``, ``OnsetFrame``, ``ApexFrame``, ``OffsetFrame``, ``Action Units``,
``Estimated Emotion``; ``remarks`` is not read (dropped, as in the CD6ME tooling).

Corrections and assumptions:

* The frame folder is the emotion folder of the release (``Micro_Expression/others/…``): the
  ``Estimated Emotion`` cell as written, matched case-insensitively.  When the sample is not there
  but in another emotion folder (a relabelled sample), that folder is used and the row recorded
  (``fixed``).
* Emotion ``others`` is read as ``repression`` (DATASETS.md; the CD6ME tooling's reading of
  MMEW's residual class).  Not recorded as an issue: it is the database's convention, applied to
  every such row.
* ``Subject`` is read as written (text stripped; an integral number without zero padding —
  DATASETS.md does not fix MMEW's subject format and no folder carries it).
* Apex/offset: the general rules of :mod:`pipeline.databases.base` (the CD6ME tooling patches
  16 rows' apex and offset by hand from optical flow; not reproduced).
* No 5-class label; 3 classes by the general rule (``repression`` is negative).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipeline.databases.base import DatabaseReader, RowContext, subject_candidates


class MmewReader(DatabaseReader):
    """Reader of MMEW (key ``mmew``)."""

    key = "mmew"
    title = "MMEW"
    spreadsheets = ("MMEW_Micro_Exp.xlsx",)
    frames_folder = "Micro_Expression"
    layout = "Micro_Expression/{emotion}/{Filename}/"
    fps = 90
    columns = {
        "subject": ("Subject",),
        "material": ("Filename",),
        "onset": ("OnsetFrame",),
        "apex": ("ApexFrame",),
        "offset": ("OffsetFrame",),
        "au": ("Action Units",),
        "emotion": ("Estimated Emotion",),
    }
    #: The release's label → the label used (DATASETS.md).
    RENAMED = {"others": "repression"}

    def subject_names(self, value: Any) -> list[str]:
        """As written."""
        return subject_candidates(value, ("{}",))

    def sample_dirs(self, subject: str, material: str, ctx: RowContext) -> list[Path]:
        """``<root>/Micro_Expression/{emotion}/{Filename}/``, then the other emotion folders."""
        top = self.path(self.frames_folder)
        first = self.path(self.frames_folder, ctx.text("emotion"), material)
        try:
            others = sorted(n for n in os.listdir(top) if (top / n).is_dir())
        except OSError:
            others = []
        return [first] + [top / n / material for n in others if top / n != first.parent]

    def note_folder(self, ctx: RowContext, expected: Path, found: Path) -> None:
        ctx.fix("sample under another emotion folder",
                f"emotion {ctx.text('emotion')!r} but the frames are in {found} (not {expected}); "
                "frames read from there, emotion kept as annotated", found)

    def read_emotion(self, ctx: RowContext) -> str:
        """The release's label with ``others`` read as ``repression``."""
        emotion = super().read_emotion(ctx)
        return self.RENAMED.get(emotion, emotion)

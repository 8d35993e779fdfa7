"""SAMM — the Spontaneous Actions and Micro-Movements database (Davison et al., "SAMM: a
spontaneous micro-facial movement dataset", IEEE TAFFC 2018): 200 fps, grey, 2040x1088.

Release layout read (DATASETS.md)::

    <root>/SAMM_Micro_FACS_Codes_v2.xlsx
    <root>/SAMM/{Subject:03d}/{Filename}/{Subject:03d}_{k:05d}.jpg   e.g. SAMM/006/006_1_2/006_05562.jpg

Annotation file ``SAMM_Micro_FACS_Codes_v2.xlsx``: twelve rows of free text (title, licence,
notes) come first; the header row follows them.  The header is found as the first row holding the
column names below, so a preamble of another length is read too; row numbers count the data rows
below the header.  Columns used: ``Subject``, ``Filename``, ``Onset Frame``, ``Apex Frame``,
``Offset Frame``, ``Action Units`` (``R12 + R15``, ``4+7``, intensity letters ``A``–``E``),
``Estimated Emotion`` (Anger, Contempt, Happiness, Surprise, Other, Fear, Sadness, Disgust).
``Inducement Code``, ``Duration``, ``Micro``, ``Objective Classes`` and ``Notes`` are ignored.

Corrections and assumptions:

* ``Subject`` is text in the v2 release (``006``, all 159 rows); an integer or integral float is
  read too.  The subject is the folder name, three digits: ``006``.
* The corrections table ``corrections/samm.csv`` applies the CD6ME benchmark's choice for the five
  ``or`` AU cells of v2 (rows 15, 18, 41, 64, 154, chosen on the optical flow) and its apexes of
  rows 125 (after the offset), 132 (before the onset) and 133.  Its offset fix of row 56 (5739) is
  already in v2.  Other ``or`` cells are read by the ``index.au_alternatives`` rule (default:
  every alternative) and recorded.
* A missing apex → middle frame; an offset past the folder's last frame → last frame (general
  rules, recorded).
* Emotion: the release's label lower-cased (``other`` stays ``other``); 5 classes anger,
  happiness, contempt, surprise, others (= ``other``); disgust, fear and sadness have no 5-class
  label; 3 classes positive = happiness, negative = anger, contempt, disgust, fear, sadness,
  surprise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.databases.base import DatabaseReader, RowContext, subject_candidates


class SammReader(DatabaseReader):
    """Reader of SAMM (key ``samm``)."""

    key = "samm"
    title = "SAMM"
    spreadsheets = ("SAMM_Micro_FACS_Codes_v2.xlsx",)
    frames_folder = "SAMM"
    layout = "SAMM/{Subject:03d}/{Filename}/"
    fps = 200
    columns = {
        "subject": ("Subject",),
        "material": ("Filename",),
        "onset": ("Onset Frame",),
        "apex": ("Apex Frame",),
        "offset": ("Offset Frame",),
        "au": ("Action Units",),
        "emotion": ("Estimated Emotion",),
    }

    def subject_names(self, value: Any) -> list[str]:
        """Three digits: ``006``."""
        return subject_candidates(value, ("{:03d}",))

    def sample_dirs(self, subject: str, material: str, ctx: RowContext) -> list[Path]:
        """``<root>/SAMM/{Subject:03d}/{Filename}/``."""
        return [self.path(self.frames_folder, subject, material)]

"""CASME II (Yan et al., "CASME II: an improved spontaneous micro-expression database and the
baseline evaluation", PLoS ONE 2014): 200 fps, colour, 640x480.

Release layout read (DATASETS.md)::

    <root>/CASME2-coding-20140508.xlsx   (or the updated release's CASME2-coding-updated.xlsx)
    <root>/CASME2_RAW_selected/sub{NN}/{Filename}/img{k}.jpg     k = frame of the original video

Annotation file: ``CASME2-coding-updated.xlsx`` when present, else ``CASME2-coding-20140508.xlsx``
(the updated release corrects labels of the original); header in the first row.  Columns used:
``Subject``, ``Filename`` (``EP02_01f``), ``OnsetFrame``, ``ApexFrame``, ``OffsetFrame``,
``Action Units`` (``R12``, ``4+L10``), ``Estimated Emotion`` (happiness, disgust, repression,
surprise, others, fear, sadness).  Blank columns ``Unnamed: 2`` and ``Unnamed: 6`` are ignored.

Corrections and assumptions:

* ``Subject`` may be an integer, an integral float or text; the subject is the folder name
  ``sub{NN}``.
* The apex cell is missing (``/``) in about 20 rows of the original release; the general rule of
  :mod:`pipeline.databases.base` sets it to the middle frame and records it.  (The CD6ME tooling
  instead writes apex frames it estimated by optical flow for these rows; those are measurements
  on the real data, not a rule, and are not reproduced.)  Likewise an offset beyond the folder's
  last frame (row 60 of the original) is moved to the last frame and recorded.
* Emotion: 5 classes disgust, happiness, repression, surprise, others (fear and sadness have no
  5-class label); 3 classes positive = happiness, negative = disgust + repression, surprise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.databases.base import DatabaseReader, RowContext, subject_candidates


class Casme2Reader(DatabaseReader):
    """Reader of CASME II (key ``casme2``)."""

    key = "casme2"
    title = "CASME II"
    spreadsheets = ("CASME2-coding-updated.xlsx", "CASME2-coding-20140508.xlsx")
    frames_folder = "CASME2_RAW_selected"
    layout = "CASME2_RAW_selected/sub{NN}/{Filename}/"
    columns = {
        "subject": ("Subject",),
        "material": ("Filename",),
        "onset": ("OnsetFrame",),
        "apex": ("ApexFrame",),
        "offset": ("OffsetFrame",),
        "au": ("Action Units",),
        "emotion": ("Estimated Emotion",),
    }

    def subject_names(self, value: Any) -> list[str]:
        """``sub{NN}``."""
        return subject_candidates(value, ("sub{:02d}",))

    def sample_dirs(self, subject: str, material: str, ctx: RowContext) -> list[Path]:
        """``<root>/CASME2_RAW_selected/sub{NN}/{Filename}/``."""
        return [self.path(self.frames_folder, subject, material)]

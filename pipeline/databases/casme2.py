"""CASME II (Yan et al., "CASME II: an improved spontaneous micro-expression database and the
baseline evaluation", PLoS ONE 2014): 200 fps, colour, 640x480.

Release layout read (DATASETS.md)::

    <root>/CASME2-coding-20140508.xlsx   (or the updated release's CASME2-coding-updated.xlsx)
    <root>/CASME2_RAW_selected/sub{NN}/{Filename}/img{k}.jpg     k = frame of the original video

Annotation file, the first present of ``CASME2-coding-updated.xlsx`` (the file the CD6ME tooling
reads), ``CASME2-coding-20190701.xlsx`` (the 2019-07-01 revision: 255 rows, adds ``Objective
Classes``; an apex in every row but row 29, where the CD6ME tooling's file lacks 21) and
``CASME2-coding-20140508.xlsx`` (the original); header in the first row.  Columns used:
``Subject``, ``Filename`` (``EP02_01f``), ``OnsetFrame``, ``ApexFrame``, ``OffsetFrame``,
``Action Units`` (``R12``, ``4+L10``), ``Estimated Emotion`` (happiness, disgust, repression,
surprise, others, fear, sadness).  Blank columns ``Unnamed: 2`` and ``Unnamed: 6`` are ignored.

Corrections and assumptions:

* ``Subject`` may be an integer, an integral float or text; the subject is the folder name
  ``sub{NN}``.
* The corrections table ``corrections/casme2.csv`` gives row 29 of the 2019 revision (sub04
  EP12_01f, apex ``/``) the apex the CD6ME tooling estimated by optical flow (279); its other 20
  apexes and its offset fix (row 60) are for the rows of its own ``CASME2-coding-updated.xlsx``,
  which the 2019 revision numbers differently and already fills (five of its apexes fall outside
  the 2019 rows' onset..offset), so they are not carried over (docs/databases.md,
  "Differences from the CD6ME tooling").  Any other missing apex (``/``) → the middle frame; an offset beyond the folder's
  last frame → the last frame (general rules of :mod:`pipeline.databases.base`, recorded).
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
    spreadsheets = ("CASME2-coding-updated.xlsx", "CASME2-coding-20190701.xlsx",
                    "CASME2-coding-20140508.xlsx")
    frames_folder = "CASME2_RAW_selected"
    layout = "CASME2_RAW_selected/sub{NN}/{Filename}/"
    fps = 200
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

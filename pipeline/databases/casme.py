"""CASME — the Chinese Academy of Sciences Micro-expression database (Yan et al., "CASME
database: a dataset of spontaneous micro-expressions collected from neutralized faces", FG 2013).

Release layout read (DATASETS.md)::

    <root>/casme.xlsx
    <root>/sub{NN}/{Filename}/reg_{Filename}-{k}.jpg     e.g. sub01/EP01_5/reg_EP01_5-113.jpg

Annotation file ``casme.xlsx``, header in the first row.  Columns used: ``Subject``, ``Filename``,
``OnsetF``, ``ApexF1``, ``OffsetF``, ``Action Units`` (some versions name it ``AU``; both are
accepted, ``Action Units`` first), ``Emotion``.  Two blank columns (pandas' ``Unnamed: 2``,
``Unnamed: 7``) and ``ApexF2`` are ignored.

Corrections and assumptions:

* Frame names of the cropped release carry the frame number after the last ``-`` with
  inconsistent zero padding (``-113``, ``-0113``); the frame number is the last run of digits and
  frames are ordered by it (:mod:`pipeline.databases.base`).
* ``Subject`` may be an integer (``1``), an integral float or text (``"01"``, ``"sub1"``); the
  subject is the frame folder's name ``sub{NN}`` (``sub01``).
* The general rules of :mod:`pipeline.databases.base` (missing or out-of-range apex → middle
  frame; onset/offset frames missing on disk → moved inward; unusable onset/offset → dropped).
  The CD6ME tooling instead patches rows 40, 42, 43, 54 and 140 by hand from the frame folders;
  the rules here reach the same kind of result and record it.
* Emotion: the release's label; no 5-class label; 3-class by the general rule of
  :mod:`pipeline.databases.emotions` (``tense`` has none).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.databases.base import DatabaseReader, RowContext, subject_candidates


class CasmeReader(DatabaseReader):
    """Reader of CASME (key ``casme``)."""

    key = "casme"
    title = "CASME"
    spreadsheets = ("casme.xlsx",)
    frames_folder = None
    layout = "sub{NN}/{Filename}/"
    fps = 60
    columns = {
        "subject": ("Subject",),
        "material": ("Filename",),
        "onset": ("OnsetF",),
        "apex": ("ApexF1",),
        "offset": ("OffsetF",),
        "au": ("Action Units", "AU"),
        "emotion": ("Emotion",),
    }

    def subject_names(self, value: Any) -> list[str]:
        """``sub{NN}``."""
        return subject_candidates(value, ("sub{:02d}",))

    def sample_dirs(self, subject: str, material: str, ctx: RowContext) -> list[Path]:
        """``<root>/sub{NN}/{Filename}/``."""
        return [self.path(subject, material)]

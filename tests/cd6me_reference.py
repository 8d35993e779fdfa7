"""What the CD6ME reference tooling does to the real annotation files, written down as facts.

Source: tvaranka/meb @ f731b0a981683a24f6be2e026208811849dee3ad, ``meb/datasets/datasets.py``
(Apache-2.0; facts only: which row, which field, which value) and ``meb/datasets/dataset_utils.py``
(how it reads AUs and names samples).  Row numbers are meb's: 0-based data rows of
``pandas.read_excel`` (SAMM: the rows below its header row, ``df.iloc[13:].reset_index()``).

The real-sheet tests (tests/test_realsheets.py) build the expected sample table from these facts
and the sheets themselves, read with pandas the way meb reads them — independently of the
project's readers and of their corrections tables.

How meb reads (``dataset_utils.extract_action_units``, ``Casme3A._separate_duplicate_materials``):

* AUs: the cell as text, split on ``+``, each token reduced to its digits; a non-empty digit
  string is an AU.
* CAS(ME)^3 A: a row whose ``Filename`` equals the previous row's (digits removed) and whose
  ``Subject`` is the same gets the suffix 2, 3, … (a counter over the run).
* Subjects: CASME II ``f"{Subject:02d}"`` (the project's folder name is ``sub`` + that), SAMM
  the cell as text (``006``), CAS(ME)^3 the cell (``spNO.1``).
* Emotions: the cell as written (the project lower-cases; SAMM's v2 has ``Other``, meb replaces only
  ``Others``).
"""

from __future__ import annotations

#: The CD6ME tooling's git revision the facts were read from.
MEB = "tvaranka/meb@f731b0a981683a24f6be2e026208811849dee3ad"

#: CAS(ME)^3 part A, ``cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx`` (datasets.py:472-475).
CASME3A_FIXES: dict[str, dict[int, int]] = {
    "apex": {128: 123, 750: 1},            # :472, :475
    "onset": {749: 2647, 750: 1},          # :473, :475
    "offset": {708: 34, 796: 1845, 798: 2403},  # :474
}

#: SAMM, ``SAMM_Micro_FACS_Codes_v2.xlsx`` (datasets.py:248-259).
SAMM_FIXES: dict[str, dict[int, object]] = {
    "offset": {56: 5739},                                # :248 (v2 already has 5739)
    "apex": {125: 1105, 132: 4945, 133: 5130},           # :250
    "AU": {15: "R12 + R15", 18: "R12 + R15", 41: "L14", 64: "R14", 154: "R14A"},  # :253-259
}

#: CASME II, meb's own file ``CASME2-coding-updated.xlsx`` (datasets.py:146-194): the offset of
#: row 60 and the apexes it estimated for 21 rows whose apex that file lacks.
CASME2_UPDATED_FIXES: dict[str, dict[int, int]] = {
    "offset": {60: 91},
    "apex": dict(zip(
        [29, 35, 43, 45, 51, 53, 60, 117, 118, 126, 136, 147, 155, 168, 170, 177, 202, 203, 234,
         237, 238],
        [279, 68, 77, 81, 166, 100, 78, 187, 89, 80, 88, 134, 231, 53, 329, 111, 91, 103, 98,
         153, 98], strict=True)),
}

#: Of those, the facts that hold for the 2019-07-01 revision ``CASME2-coding-20190701.xlsx``
#: (255 rows): its only missing apex is row 29 (sub04 EP12_01f), also missing in meb's file at
#: the same row; its other rows have the owners' own apexes, and meb's row numbers do not fit it
#: (five of meb's apexes fall outside the 2019 rows' onset..offset — tested).  A documented
#: difference (docs/databases.md, "Differences from the CD6ME tooling").
CASME2_2019_FIXES: dict[str, dict[int, int]] = {"apex": {29: 279}}

#: Sample counts meb gives on these files.
COUNTS = {"casme3a": 860, "samm": 159, "casme2": 255}

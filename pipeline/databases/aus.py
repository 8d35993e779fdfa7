"""Parsing the action-unit (AU) cells of the released annotation spreadsheets.

The rule (DATASETS.md, "AU strings", after the CD6ME reference tooling of Varanka et al., IEEE
TAFFC 2024): split the cell on ``+`` (CAS(ME)^3 also on ASCII, Chinese and ideographic commas);
from each token keep only its digits — ``R12`` → 12, ``L1`` → 1, ``12L`` → 12, ``10A/B`` → 10,
``4D`` → 4, ``ref(7B)`` → 7, ``T28`` → 28, ``AU4`` → 4, ``AU4(k)`` → 4.  A token with no digit
(``?``) gives no AU.  Letters before or after the number are FACS laterality (L/R/T/U), intensity
(A–E) or reference marks and are discarded.

Where the rule is silent this parser decides, and reports what it decided so that the reader can
record it:

* ``R12 or R15`` — an annotator's uncertain alternatives.  "Keep the digits" would give the
  nonsense AU1215, so a token holding the word ``or`` is split into its alternatives, and
  ``alternatives`` chooses: ``"all"`` (default; AU12 and AU15 — the movement was seen, only its
  code is uncertain; the CD6ME tooling resolved such rows by hand, sometimes to both AUs),
  ``"first"`` (AU12) or ``"none"`` (neither).
* a token with several separate numbers and no ``or`` (``L1R2``, ``12 15``: a missing ``+``) —
  every number is read as an AU.
* a number outside the FACS code range 1–99, or a non-integral numeric cell (``1.5``) — the token
  is unreadable and gives no AU.
* a numeric cell (openpyxl gives ``12`` or ``4.0``) is read as the single AU of that number.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

#: The 12 AUs of the CD6ME protocol, in the order of the sample table's label columns.
CD6ME_AUS: tuple[int, ...] = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17)
#: Their column names in ``data/index/samples.csv``.
CD6ME_AU_COLUMNS: tuple[str, ...] = tuple(f"AU{n}" for n in CD6ME_AUS)

#: Token separators of the AU cells: ``+`` everywhere, commas (ASCII, Chinese full-width and
#: ideographic) in CAS(ME)^3.
PLUS = "+"
PLUS_AND_COMMAS = "+,\uff0c\u3001"

#: Valid FACS codes (AUs 1–46, head/eye positions 50–69, gross behaviour codes up to 99).
FACS_RANGE = (1, 99)

ALTERNATIVES = ("all", "first", "none")

_OR = re.compile(r"\bor\b", re.IGNORECASE)
_DIGITS = re.compile(r"\d+")
_K_MARK = re.compile(r"\(\s*k\s*\)", re.IGNORECASE)


@dataclass(frozen=True)
class ParsedAUs:
    """The AUs read from one cell and everything the parser had to decide.

    Attributes
    ----------
    text : str
        The cell as text (``""`` for an empty cell, ``"12"`` for a numeric 12 or 12.0).
    aus : tuple of int
        AU numbers, ascending, unique.
    k_marked : tuple of int
        AU numbers of tokens carrying a 4DME ``(k)`` mark, ascending, unique.
    unreadable : tuple of str
        Tokens that gave no AU (no digit, or a number outside 1–99).
    alternatives : tuple of str
        Tokens with ``or`` alternatives (``R12 or R15``), resolved as ``alternatives`` chose.
    several : tuple of str
        Tokens holding several numbers without ``or`` (``L1R2``), read as one AU per number.
    """

    text: str
    aus: tuple[int, ...]
    k_marked: tuple[int, ...] = ()
    unreadable: tuple[str, ...] = ()
    alternatives: tuple[str, ...] = ()
    several: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        """True when the cell holds nothing at all (no token)."""
        return self.text == ""


def cell_text(value: Any) -> str:
    """A spreadsheet cell as stripped text: ``None``/NaN → ``""``, ``12``/``12.0`` → ``"12"``.

    Non-integral floats keep their decimal representation (``1.5`` → ``"1.5"``).
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if value.is_integer():
            return str(int(value))
        return repr(value)
    return " ".join(str(value).split())


def _numbers(token: str) -> tuple[list[int], list[str]]:
    """AU numbers in ``token`` and the runs of digits outside the FACS range."""
    good, bad = [], []
    for run in _DIGITS.findall(token):
        n = int(run)
        (good if FACS_RANGE[0] <= n <= FACS_RANGE[1] else bad).append(n)
    return good, [str(b) for b in bad]


def parse_aus(value: Any, separators: str = PLUS, alternatives: str = "all") -> ParsedAUs:
    """Read the AU numbers of one annotation cell.

    Parameters
    ----------
    value : str, int, float or None
        The cell as openpyxl/pandas give it (``"R12 + R15"``, ``"4+L10"``, ``12``, ``4.0``, NaN).
    separators : str
        Characters that separate tokens: :data:`PLUS` (all databases) or
        :data:`PLUS_AND_COMMAS` (CAS(ME)^3).
    alternatives : {"all", "first", "none"}
        How to read a token with ``or`` alternatives (``R12 or R15``): every alternative, the first
        one, or none of them.

    Returns
    -------
    ParsedAUs
        The AUs (ascending) and the tokens the rule could not read plainly.

    Raises
    ------
    ValueError
        If ``alternatives`` is not one of :data:`ALTERNATIVES`.

    Examples
    --------
    >>> parse_aus("R12 + R15").aus
    (12, 15)
    >>> parse_aus("ref(7B)+43").aus
    (7, 43)
    >>> parse_aus("4，7", separators=PLUS_AND_COMMAS).aus
    (4, 7)
    """
    if alternatives not in ALTERNATIVES:
        raise ValueError(f"alternatives must be one of {ALTERNATIVES}, got {alternatives!r}")
    if isinstance(value, float) and not math.isnan(value) and not value.is_integer():
        text = cell_text(value)
        return ParsedAUs(text=text, aus=(), unreadable=(text,))
    text = cell_text(value)
    aus: set[int] = set()
    k_marked: set[int] = set()
    unreadable: list[str] = []
    alts: list[str] = []
    several: list[str] = []
    for raw in re.split(f"[{re.escape(separators)}]", text) if text else []:
        token = raw.strip()
        if not token:
            continue
        if _OR.search(token):
            parsed = [_numbers(part) for part in _OR.split(token)]
            options = [good for good, bad in parsed if good and not bad]
            if not options:
                unreadable.append(token)
                continue
            alts.append(token)
            if alternatives == "all":
                found = [n for o in options for n in o]
            elif alternatives == "first":
                found = options[0]
            else:
                found = []
        else:
            found, out_of_range = _numbers(token)
            if not found or out_of_range:
                unreadable.append(token)
                continue
            if len(found) > 1:
                several.append(token)
        aus.update(found)
        if _K_MARK.search(token):
            k_marked.update(found)
    return ParsedAUs(
        text=text,
        aus=tuple(sorted(aus)),
        k_marked=tuple(sorted(k_marked)),
        unreadable=tuple(unreadable),
        alternatives=tuple(alts),
        several=tuple(several),
    )


def au_column(n: int) -> str:
    """Column name of AU ``n`` in the sample table (``12`` → ``"AU12"``)."""
    return f"AU{n}"


def au_columns(seen: set[int] | frozenset[int] | tuple[int, ...] | list[int]) -> list[str]:
    """Label columns of the sample table: the 12 CD6ME AUs in protocol order, then every other AU
    in ``seen`` ascending.

    Parameters
    ----------
    seen : iterable of int
        AU numbers present in at least one sample.

    Returns
    -------
    list of str
        ``["AU1", "AU2", "AU4", …, "AU17", "AU<n>", …]``.
    """
    others = sorted(set(seen) - set(CD6ME_AUS))
    return [au_column(n) for n in (*CD6ME_AUS, *others)]

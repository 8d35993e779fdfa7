"""Readers of the seven micro-expression databases and the ``index`` sample table.

One reader class per database (``casme``, ``casme2``, ``samm``, ``mmew``, ``fourd``, ``casme3a``,
``smic``), each documenting its release layout, the annotation file it reads and every
correction it applies; :mod:`pipeline.databases.base` holds what they share,
:mod:`pipeline.databases.aus` the AU-string parser, :mod:`pipeline.databases.emotions` the
5-/3-class labels and :mod:`pipeline.databases.index` the sample table (``data/index/``).

>>> from pipeline.databases import get_reader
>>> reader = get_reader("casme2")("data/raw/CASME2")      # doctest: +SKIP
>>> result = reader.read()                                 # doctest: +SKIP
"""

from __future__ import annotations

from pipeline.databases.base import DatabaseError, DatabaseReader, ReaderOptions
from pipeline.databases.casme import CasmeReader
from pipeline.databases.casme2 import Casme2Reader
from pipeline.databases.casme3a import Casme3aReader
from pipeline.databases.fourd import FourdReader
from pipeline.databases.mmew import MmewReader
from pipeline.databases.samm import SammReader
from pipeline.databases.smic import SmicReader

#: Database key → reader class, in the order of DATASETS.md.
READERS: dict[str, type[DatabaseReader]] = {
    cls.key: cls
    for cls in (CasmeReader, Casme2Reader, SammReader, MmewReader, FourdReader, Casme3aReader,
                SmicReader)
}
#: All database keys.
KEYS: tuple[str, ...] = tuple(READERS)


def get_reader(key: str) -> type[DatabaseReader]:
    """The reader class of database ``key``.

    Raises
    ------
    DatabaseError
        If ``key`` is not one of :data:`KEYS`.
    """
    try:
        return READERS[key]
    except KeyError:
        raise DatabaseError(f"unknown database key {key!r}; known: {', '.join(KEYS)}") from None


__all__ = ["KEYS", "READERS", "DatabaseError", "DatabaseReader", "ReaderOptions", "get_reader"]

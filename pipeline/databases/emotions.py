"""Emotion labels: the release's vocabulary, the 5-class and the 3-class LOSO labels.

Sources: DATASETS.md ("Emotion recognition, leave-one-subject-out"); the five-class CASME II and
SAMM tasks of the MER literature; the three-class composite of MEGC 2019 (See et al., "MEGC 2019 –
the second facial micro-expressions grand challenge", FG 2019).

* ``emotion`` — the release's label, lower-case, stripped, inner white space collapsed.
* ``emotion5`` — only for CASME II (disgust, happiness, repression, surprise, others; fear and
  sadness left out) and SAMM (anger, happiness, contempt, surprise, others; the release's
  ``Other`` becomes ``others``; disgust, fear and sadness left out).  Empty elsewhere.
* ``emotion3`` — ``positive`` (happiness), ``negative``, ``surprise``; empty for ``others`` and for
  anything not covered.  CASME II's negative class is disgust + repression (its fear and sadness
  samples stay out, as in MEGC 2019); SAMM's is anger, contempt, disgust, fear and sadness (which
  gives MEGC 2019's 92 negative SAMM samples); SMIC's labels are already positive / negative /
  surprise.  The other databases (CASME, MMEW, 4DME, CAS(ME)^3) get the same general rule: positive
  = happiness (``happy``, ``positive``), negative = anger, contempt, disgust, fear, sadness,
  repression (``angry``, ``sad``, ``negative``), surprise = surprise; CASME's ``tense``, mixed
  labels such as 4DME's ``negative+surprise`` and ``others`` stay empty.  No protocol of the
  project uses their 3-class labels; they are there for exploration.
"""

from __future__ import annotations

from typing import Any

from pipeline.databases.aus import cell_text

#: 5-class LOSO vocabularies: release label (normalised) → class.
FIVE_CLASS: dict[str, dict[str, str]] = {
    "casme2": {
        "disgust": "disgust",
        "happiness": "happiness",
        "repression": "repression",
        "surprise": "surprise",
        "others": "others",
    },
    "samm": {
        "anger": "anger",
        "happiness": "happiness",
        "contempt": "contempt",
        "surprise": "surprise",
        "other": "others",
        "others": "others",
    },
}

#: The general 3-class rule: release label (normalised) → class.
THREE_CLASS: dict[str, str] = {
    "happiness": "positive",
    "happy": "positive",
    "positive": "positive",
    "anger": "negative",
    "angry": "negative",
    "contempt": "negative",
    "disgust": "negative",
    "fear": "negative",
    "sadness": "negative",
    "sad": "negative",
    "repression": "negative",
    "negative": "negative",
    "surprise": "surprise",
}

#: Labels a database leaves out of the 3-class task although the general rule covers them.
THREE_CLASS_EXCLUDED: dict[str, frozenset[str]] = {"casme2": frozenset({"fear", "sadness"})}


def normalise(value: Any) -> str:
    """A release's emotion cell as a label: lower-case, stripped, single spaces (NaN → ``""``)."""
    return cell_text(value).casefold()


def emotion5(database: str, emotion: str) -> str:
    """The 5-class LOSO label of a normalised ``emotion`` of ``database``, or ``""``.

    Parameters
    ----------
    database : str
        Database key (``casme2``, ``samm``; every other key gives ``""``).
    emotion : str
        Label as :func:`normalise` gives it.
    """
    return FIVE_CLASS.get(database, {}).get(emotion, "")


def emotion3(database: str, emotion: str) -> str:
    """The 3-class label (``positive``, ``negative``, ``surprise``) or ``""``.

    Parameters
    ----------
    database : str
        Database key.
    emotion : str
        Label as :func:`normalise` gives it.
    """
    if emotion in THREE_CLASS_EXCLUDED.get(database, frozenset()):
        return ""
    return THREE_CLASS.get(emotion, "")

"""The label plan of the stand-in: subjects, AU sets, timing, emotions, AU cells and quirks.

Everything random about a stand-in build except the pixels is drawn here, from the seed alone, so
the plan (and the ground truth, which is the plan plus what rendering measured) can be inspected
without rendering (:func:`plan_standin`).

AU sets.  A sample's set of CD6ME AUs is one of a list of *patterns* (FACS combinations seen in
micro-expression databases: AU1+2, AU1+2+5, AU4+7, AU6+12, AU14+17, …), with pattern weights
solved once (bounded least squares, :func:`pattern_weights`) so that the marginal prevalences are
CD6ME's (:data:`TARGET_PREVALENCE`, DATASETS.md: 304/2031 AU1 … 86/2031 AU17) and 10 % of samples
carry none of the 12.  The pattern list encodes the known co-occurrences: AU1 with AU2 strongly,
AU6 with AU12, AU4 rarely with AU1/AU2 and never with AU14.  Each database gets a mild tilt of the
weights (its own label shift, as in CD6ME) with the pooled marginals kept on target; counts are
drawn by quota (largest remainders of ``n · weight``), so a database's prevalences are as exact as
its size allows.  Distractor AUs (AU20, AU24, AU25, AU38, AU43) are added independently; samples
without any of the 12 always carry one.  Blinks (AU45) are nuisance events, coded in the AU cell now
and then.

Emotions.  A FACS-style rule maps the coded AU set to a canonical emotion (happiness: AU12 or
AU6+12; surprise: AU1+2 or AU5 without AU4; fear: AU1+2+4 or AU20; disgust: AU9/AU10; sadness:
AU15 or AU1+4; anger: AU4 with AU5/AU24; contempt: a unilateral AU12/AU14; repression: lip AUs
AU14/AU17/AU24; AU4/AU7 alone: ambiguous "brow" tension), in the spirit of EMFACS and of the
CASME II / SAMM coding guides; each database maps it into its own vocabulary (DATASETS.md) and a
share ``label_noise`` is replaced by another class.  The three LOSO databases draw the class
first, so that their class shares are the release's at any size: SMIC-HS (no AU labels) by quota
on its three classes, then an AU pattern the rule maps to it; CASME II and SAMM by quota on their
release labels (:data:`EMOTION_CLASSES`), then AU sets drawn with the CD6ME pattern weights until
the rule gives that label (rejection sampling, :func:`_draft_of_class`), so their AU sets follow
their emotions (their AU marginals differ from the pooled CD6ME targets, as the real ones do).

Release conventions and quirks.  AU cells follow each release's habits: ``R12``, ``L1+2``,
``4+L10`` (CASME, CASME II, CAS(ME)^3), ``12L`` (MMEW), SAMM's
``R12 + R15`` with intensity letters (``12A`` … ``12E``), 4DME's ``AU4(k)+7(k)+4+24+45`` with
``(k)``-marked AUs (rendered faintly; readers zero them).  A small recorded share of rows carries
a quirk of the real releases: a missing apex (``/`` or an empty cell), a ``?`` token in the AU
cell, or two alternatives joined by ``or``.  Every quirk is listed per sample in the ground truth.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.optimize import lsq_linear

from pipeline.standin.aus import AU_SPECS, CD6ME_AUS
from pipeline.standin.profiles import (
    K_MARKED_IOD,
    KEYS,
    DatabaseProfile,
    Profile,
    allocate_subjects,
)

#: CD6ME marginal prevalences (DATASETS.md: positives / 2031).
TARGET_PREVALENCE: dict[int, float] = {
    1: 0.15, 2: 0.14, 4: 0.35, 5: 0.066, 6: 0.03, 7: 0.12,
    9: 0.058, 10: 0.037, 12: 0.087, 14: 0.136, 15: 0.026, 17: 0.042,
}
#: Share of samples with none of the 12 AUs.
NONE_SHARE = 0.10

#: AU patterns with prior weights (only their relative sizes matter; solved to the targets).
PATTERN_PRIORS: dict[tuple[int, ...], float] = {
    (1, 2): 0.06, (1, 2, 5): 0.015, (1,): 0.035, (2,): 0.03, (1, 4): 0.006, (1, 2, 4): 0.006,
    (1, 4, 15): 0.004, (4,): 0.14, (4, 7): 0.06, (4, 5): 0.015, (5,): 0.02, (4, 9): 0.015,
    (4, 7, 9): 0.008, (9,): 0.02, (9, 10): 0.006, (10,): 0.015, (4, 10): 0.008, (7,): 0.03,
    (6, 12): 0.02, (6,): 0.006, (6, 7, 12): 0.004, (12,): 0.045, (7, 12): 0.005, (14,): 0.08,
    (14, 17): 0.015, (7, 14): 0.01, (15,): 0.01, (15, 17): 0.006, (17,): 0.015, (14, 15): 0.006,
}
#: Chance that an AU that FACS allows unilaterally is scored R or L.
UNILATERAL_P: dict[int, float] = {1: 0.08, 2: 0.1, 4: 0.08, 5: 0.05, 6: 0.1, 7: 0.1, 10: 0.25,
                                  12: 0.3, 14: 0.35, 15: 0.2, 20: 0.3}
#: Independent distractor AUs and their chance per sample.
DISTRACTOR_P: dict[int, float] = {20: 0.02, 24: 0.035, 25: 0.03, 38: 0.02, 43: 0.015}
#: AUs that a coder might confuse (source of the ``X or Y`` quirk).
CONFUSABLE: dict[int, int] = {1: 2, 2: 1, 4: 7, 5: 7, 6: 7, 7: 6, 9: 10, 10: 9, 12: 14, 14: 12,
                              15: 14, 17: 24}

QUIRK_KINDS = ("apex_missing", "au_question", "au_or")
#: The quirks each release's sheet has (issue #11: only those are written).  Checked on the public
#: copies of the real files: CASME II 2019-07-01 has an apex "/" and neither "or" nor "?"; SAMM v2
#: five "or" cells (and a token without an AU, "soft focus", which "?" stands for when no
#: confusable AU is at hand) and no missing apex; CAS(ME)^3 part A v2 and 4DME none of the three
#: (their mistakes are wrong frame numbers, fixed by the corrections tables).  CASME and MMEW are
#: unchecked and keep all three (DATASETS.md: "?", missing or "/" apexes).  SMIC has no AUs or apex.
RELEASE_QUIRKS: dict[str, tuple[str, ...]] = {
    "casme": QUIRK_KINDS, "casme2": ("apex_missing",), "samm": ("au_or",), "mmew": QUIRK_KINDS,
    "fourd": (), "casme3a": (), "smic": ()}

#: Emotion vocabulary of each release (DATASETS.md), and where a canonical emotion goes.
VOCABULARY: dict[str, tuple[str, ...]] = {
    "casme": ("amusement", "sadness", "disgust", "surprise", "contempt", "fear", "repression",
              "tense"),
    "casme2": ("happiness", "disgust", "repression", "surprise", "others", "fear", "sadness"),
    "samm": ("Anger", "Contempt", "Happiness", "Surprise", "Other", "Fear", "Sadness", "Disgust"),
    "mmew": ("happiness", "surprise", "disgust", "fear", "sadness", "anger", "others"),
    "fourd": ("Positive", "Negative", "Surprise", "Repression", "Others"),
    "casme3a": ("happy", "surprise", "disgust", "fear", "sad", "anger", "others"),
    "smic": ("positive", "negative", "surprise"),
}
_EMOTION_MAP: dict[str, dict[str, object]] = {
    "casme": {"happiness": "amusement", "surprise": "surprise", "fear": "fear",
              "disgust": "disgust", "sadness": "sadness", "anger": "tense",
              "contempt": "contempt", "repression": "repression", "brow": "tense",
              "others": {"repression": 0.5, "tense": 0.5}},
    "casme2": {"happiness": "happiness", "surprise": "surprise", "fear": "fear",
               "disgust": "disgust", "sadness": "sadness", "anger": "disgust",
               "contempt": "repression", "repression": "repression",
               "brow": {"disgust": 0.5, "others": 0.5}, "others": "others"},
    "samm": {"happiness": "Happiness", "surprise": "Surprise", "fear": "Fear",
             "disgust": "Disgust", "sadness": "Sadness", "anger": "Anger",
             "contempt": "Contempt", "repression": "Other",
             "brow": {"Anger": 0.8, "Other": 0.2}, "others": "Other"},
    "mmew": {"happiness": "happiness", "surprise": "surprise", "fear": "fear",
             "disgust": "disgust", "sadness": "sadness", "anger": "anger",
             "contempt": "others", "repression": "others",
             "brow": {"disgust": 0.4, "others": 0.6}, "others": "others"},
    "fourd": {"happiness": "Positive", "surprise": "Surprise", "fear": "Negative",
              "disgust": "Negative", "sadness": "Negative", "anger": "Negative",
              "contempt": "Negative", "repression": "Repression",
              "brow": {"Negative": 0.5, "Others": 0.5}, "others": "Others"},
    "casme3a": {"happiness": "happy", "surprise": "surprise", "fear": "fear",
                "disgust": "disgust", "sadness": "sad", "anger": "anger",
                "contempt": "disgust", "repression": "others",
                "brow": {"disgust": 0.3, "anger": 0.2, "others": 0.5}, "others": "others"},
    "smic": {"happiness": "positive", "surprise": "surprise", "fear": "negative",
             "disgust": "negative", "sadness": "negative", "anger": "negative",
             "contempt": "negative", "repression": "negative", "brow": "negative",
             "others": {"negative": 0.5, "positive": 0.25, "surprise": 0.25}},
}
#: Objective classes (Davison et al. 2018, AU-based): I happiness … VII others.
OBJECTIVE_CLASS = {"happiness": 1, "surprise": 2, "anger": 3, "disgust": 4, "fear": 5,
                   "sadness": 6, "contempt": 7, "repression": 7, "brow": 7, "others": 7}

_TILT = 0.25          # log-sd of the per-database tilt of the pattern weights


# ----------------------------------------------------------------------------------------------
# data


@dataclass
class AUAction:
    """A rendered AU: side ``B``/``R``/``L``, apex amplitude, how it is coded.

    ``amplitude_px`` is the apex amplitude in pixels of the database's frames, ``amplitude_iod``
    the same in % of the subject's inter-ocular distance (the unit it is drawn in; 0 for blinks,
    drawn as a share of the lid drop)."""

    au: int
    side: str
    amplitude_px: float
    intensity: str | None = None     # SAMM intensity letter A-E, when written
    k_marked: bool = False           # 4DME "(k)": written but zeroed by readers
    coded: bool = True               # written in the AU cell
    rendered: bool = True            # drawn by this event (False: only written, e.g. a blink
                                     # rendered as its own event but coded in this row)
    amplitude_iod: float = 0.0       # % of the subject's IOD


@dataclass
class Event:
    """A movement in a clip: micro- or macro-expression, or a blink; frame numbers."""

    kind: str
    actions: list[AUAction]
    onset: int
    apex: int
    offset: int


@dataclass
class Subject:
    """A simulated subject: one photo identity and where its face sits in the frames."""

    key: str
    name: object                     # as written in the sheet (int or str)
    folder: str                      # the subject's folder name
    index: int
    identity: int                    # slot in the list of usable photos
    iod_px: float
    centre: tuple[float, float]
    roll_deg: float
    gains: tuple[float, float, float]
    gamma: float


@dataclass
class Clip:
    """A folder of frames: one sample, or (CAS(ME)^3) a video holding several."""

    key: str
    subject: int                     # index into the database's subjects
    folder: str                      # relative to the database root
    first: int                       # frame numbers written: first..last
    last: int
    events: list[Event]
    naming: dict = field(default_factory=dict)
    head: dict = field(default_factory=dict)
    nuisance: dict = field(default_factory=dict)
    seed: int = 0


@dataclass
class Sample:
    """One spreadsheet row."""

    key: str
    row: int                         # 0-based data row below the header
    subject: int
    material: str                    # Filename / fold_name / material as written
    clip: int                        # index into the database's clips
    event: int                       # index into the clip's events
    expression_type: str             # "micro" | "macro"
    onset: int
    apex: int                        # true apex
    offset: int
    annotated_apex: int | None       # as written (None: missing)
    au_cell: str
    label_aus: list[int]             # AUs a DATASETS.md reader gets from the row ((k) dropped)
    au_alternatives: list[int] | None
    canonical_emotion: str
    rule_emotion: str                # the rule's label in the vocabulary, before noise
    emotion: str                     # as written
    objective_class: int
    quirks: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


@dataclass
class DatabasePlan:
    key: str
    profile: DatabaseProfile
    subjects: list[Subject]
    clips: list[Clip]
    samples: list[Sample]


@dataclass
class StandinPlan:
    """The whole label plan of a build."""

    profile: Profile
    seed: int
    n_identities: int
    databases: dict[str, DatabasePlan]

    def to_dict(self) -> dict:
        return {"profile": self.profile.name, "seed": self.seed, "n_identities": self.n_identities,
                "databases": {k: asdict(v) for k, v in self.databases.items()}}


# ----------------------------------------------------------------------------------------------
# random streams


def rng_for(seed: int, *path: int) -> np.random.Generator:
    """An independent generator for ``(seed, *path)`` (NumPy ``SeedSequence`` spawning)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), *map(int, path)]))


def seed_for(seed: int, *path: int) -> int:
    """A 63-bit integer seed for ``(seed, *path)``, recorded in the ground truth."""
    return int(np.random.SeedSequence([int(seed), *map(int, path)]).generate_state(2, np.uint64)[0]
               >> np.uint64(1))


# ----------------------------------------------------------------------------------------------
# AU sets


def pattern_weights(tilts: Sequence[np.ndarray] | None = None,
                    sizes: Sequence[int] | None = None) -> np.ndarray:
    """Weights of :data:`PATTERN_PRIORS` giving the CD6ME marginals (pooled over databases).

    Solves ``min ||w − w0||²`` subject to ``A·w̄ = p`` (each AU's marginal) and ``Σw = 1 −
    NONE_SHARE`` with ``w ≥ 0.4·w0`` (every pattern keeps some weight), where ``w̄`` is the
    size-weighted mean over databases of ``t_d ⊙ w / ⟨t_d, w⟩ · (1 − NONE_SHARE)`` for per-database
    tilts ``t_d`` (fixed-point iterations on the normalisers).

    Parameters
    ----------
    tilts : sequence of ndarray of shape (P,), optional
        Multiplicative tilt of each database; none: one database, no tilt.
    sizes : sequence of int, optional
        Samples of each database.

    Returns
    -------
    ndarray of shape (P,)
        Untilted base weights (sum ``1 − NONE_SHARE``).
    """
    pats = list(PATTERN_PRIORS)
    w0 = np.array([PATTERN_PRIORS[p] for p in pats])
    w0 = w0 / w0.sum() * (1 - NONE_SHARE)
    a = np.array([[1.0 if au in p else 0.0 for p in pats] for au in CD6ME_AUS])
    target = np.array([TARGET_PREVALENCE[au] for au in CD6ME_AUS])
    tilts = [np.ones(len(pats))] if tilts is None else [np.asarray(t, float) for t in tilts]
    sizes = [1] * len(tilts) if sizes is None else list(sizes)
    frac = np.asarray(sizes, float) / float(sum(sizes))
    w = w0.copy()
    for _ in range(8):
        norms = [float(t @ w) / (1 - NONE_SHARE) for t in tilts]
        mix = sum(f * t / n for f, t, n in zip(frac, tilts, norms, strict=True))
        m = np.vstack([a * mix * 100, mix[None, :] * 100, np.eye(len(pats))])
        b = np.concatenate([target * 100, [(1 - NONE_SHARE) * 100], w0])
        w = lsq_linear(m, b, bounds=(0.4 * w0, np.inf), method="bvls").x
    return w


def _tilted(w: np.ndarray, tilt: np.ndarray) -> np.ndarray:
    v = w * tilt
    return v / v.sum() * (1 - NONE_SHARE)


def quota_counts(n: int, probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Integer counts summing to ``n``: floors of ``n·p`` plus the largest remainders.

    Ties among remainders are broken at random (``rng``).
    """
    exp = n * np.asarray(probs, float) / np.sum(probs)
    base = np.floor(exp).astype(int)
    rest = n - int(base.sum())
    rem = exp - base + rng.uniform(0, 1e-9, size=len(exp))
    base[np.argsort(-rem, kind="stable")[:rest]] += 1
    return base


def draw_au_sets(n: int, weights: np.ndarray, rng: np.random.Generator) -> list[tuple[int, ...]]:
    """``n`` CD6ME AU sets by quota over (none, patterns), shuffled."""
    pats = [()] + list(PATTERN_PRIORS)
    probs = np.concatenate([[NONE_SHARE], weights])
    counts = quota_counts(n, probs, rng)
    sets = [p for p, c in zip(pats, counts, strict=True) for _ in range(c)]
    order = rng.permutation(len(sets))
    return [sets[i] for i in order]


#: SMIC-HS class sizes (positive, negative, surprise), Li et al. 2013.
SMIC_CLASSES: dict[str, int] = {"positive": 51, "negative": 70, "surprise": 43}


def _smic_class(pattern: tuple[int, ...]) -> str:
    s = set(pattern)
    if 12 in s:
        return "positive"
    if s and 4 not in s and (s <= {1, 2, 5} or {1, 2} <= s):
        return "surprise"
    return "negative"


def draw_smic_au_sets(n: int, weights: np.ndarray, rng: np.random.Generator) -> list[tuple[int, ...]]:
    """SMIC-HS has no AU labels but three balanced-ish classes: draw the class first (quota on
    :data:`SMIC_CLASSES`), then an AU pattern that a FACS rule maps to it (quota within the
    class, CD6ME pattern weights)."""
    pats = [()] + list(PATTERN_PRIORS)
    probs = np.concatenate([[NONE_SHARE], weights])
    classes = list(SMIC_CLASSES)
    counts = quota_counts(n, np.array([SMIC_CLASSES[c] for c in classes], float), rng)
    sets: list[tuple[int, ...]] = []
    for cls, m in zip(classes, counts, strict=True):
        mask = np.array([_smic_class(p) == cls for p in pats])
        sub = [p for p, keep in zip(pats, mask, strict=True) if keep]
        c = quota_counts(int(m), probs[mask], rng)
        sets.extend(p for p, k in zip(sub, c, strict=True) for _ in range(k))
    order = rng.permutation(len(sets))
    return [sets[i] for i in order]


#: Release class sizes of the two AU-coded LOSO databases (DATASETS.md; CASME II: the 256 CD6ME
#: samples with its 2 fear and 7 sadness rows, SAMM: the 159 of v2 with its 8 fear, 6 sadness and 9
#: disgust rows).  Their stand-ins draw the written class first (quota on these sizes, the same
#: shares as the release at any size) and then an AU set that the FACS rule maps to it, so that
#: even a quick build has every LOSO class in the release's proportion.
EMOTION_CLASSES: dict[str, dict[str, int]] = {
    "casme2": {"disgust": 64, "happiness": 32, "repression": 27, "surprise": 25, "others": 99,
               "fear": 2, "sadness": 7},
    "samm": {"Anger": 57, "Happiness": 26, "Contempt": 12, "Surprise": 15, "Other": 26,
             "Fear": 8, "Sadness": 6, "Disgust": 9},
}
#: Drafts tried per sample before a class-first draw gives up on its class (never reached for
#: the classes above: the rarest, CASME II fear, matches about one draft in 60).
MAX_CLASS_TRIES = 2000


def draw_emotion_classes(key: str, n: int, rng: np.random.Generator) -> list[str]:
    """``n`` release labels of ``key`` by quota on :data:`EMOTION_CLASSES`, shuffled.

    Raises
    ------
    KeyError
        For a database without release class sizes.
    """
    classes = list(EMOTION_CLASSES[key])
    counts = quota_counts(n, np.array([EMOTION_CLASSES[key][c] for c in classes], float), rng)
    labels = [c for c, m in zip(classes, counts, strict=True) for _ in range(m)]
    return [labels[i] for i in rng.permutation(len(labels))]


# ----------------------------------------------------------------------------------------------
# emotions


def canonical_emotion(coded: dict[int, str]) -> str:
    """FACS-style emotion of a coded AU set ``{au: side}`` (see the module docstring)."""
    s = set(coded)
    uni = {a for a, side in coded.items() if side in ("R", "L")}
    if 12 in s and (6 in s or 12 not in uni):
        return "happiness"
    if 12 in s:
        return "contempt"
    if {1, 2} <= s and (4 in s or 20 in s):
        return "fear"
    if ({1, 2} <= s or 5 in s) and 4 not in s:
        return "surprise"
    if 9 in s or 10 in s:
        return "disgust"
    if 14 in s and 14 in uni and not (s & {15, 17, 24}):
        return "contempt"
    if 15 in s or {1, 4} <= s:
        return "sadness"
    if 4 in s and (s & {5, 24}):
        return "anger"
    if s & {14, 17, 24}:
        return "repression"
    if s & {4, 7}:
        return "brow"
    if 1 in s or 2 in s:
        return "surprise"
    return "others"


def map_emotion(key: str, canonical: str, rng: np.random.Generator) -> str:
    """The release's label for a canonical emotion (a draw where the release is ambiguous)."""
    target = _EMOTION_MAP[key][canonical]
    if isinstance(target, str):
        return target
    labels = list(target)
    p = np.array([target[x] for x in labels])
    return labels[int(rng.choice(len(labels), p=p / p.sum()))]


# ----------------------------------------------------------------------------------------------
# AU cells


#: Upper limits (% IOD) of SAMM's intensity letters A … D; E above.  Ours: the quantiles 15, 45,
#: 68 and 86 % of the log-uniform :data:`~pipeline.standin.profiles.AMPLITUDE_IOD` range.
INTENSITY_LIMITS_IOD: tuple[tuple[str, float], ...] = (("A", 0.35), ("B", 0.7), ("C", 1.2),
                                                      ("D", 1.8))


def _intensity_letter(amplitude_iod: float) -> str:
    """SAMM-style intensity A (trace) … E (maximum) from the apex amplitude, % of IOD."""
    for letter, limit in INTENSITY_LIMITS_IOD:
        if amplitude_iod < limit:
            return letter
    return "E"


def au_token(key: str, a: AUAction, first: bool) -> str:
    """One AU as the release writes it."""
    side = a.side if a.side in ("R", "L") else ""
    if key == "fourd":
        tok = f"{'AU' if first else ''}{a.au}"
        return tok + "(k)" if a.k_marked else tok
    if key == "mmew":
        return f"{a.au}{side}"
    if key == "samm":
        return f"{side}{a.au}{a.intensity or ''}"
    return f"{side}{a.au}"


def format_au_cell(key: str, actions: Sequence[AUAction], sep: str = "+") -> str:
    """The AU cell of a row: coded actions in ascending AU order (4DME: ``(k)`` ones first)."""
    coded = [a for a in actions if a.coded]
    if key == "fourd":
        coded = sorted(coded, key=lambda a: (not a.k_marked, a.au))
    else:
        coded = sorted(coded, key=lambda a: a.au)
    return sep.join(au_token(key, a, i == 0) for i, a in enumerate(coded))


# ----------------------------------------------------------------------------------------------
# naming


def _subject_names(key: str, n: int, rng: np.random.Generator) -> list[tuple[object, str]]:
    """(sheet value, folder name) of ``n`` subjects, sorted as the release sorts them."""
    pools = {"casme": 19, "casme2": 26, "samm": 32, "mmew": 36, "fourd": 65, "casme3a": 100,
             "smic": 20}
    lo = 6 if key == "samm" else 1
    hi = max(lo + pools[key] - 1, lo + n - 1)
    nums = sorted(int(x) for x in rng.choice(np.arange(lo, hi + 1), size=n, replace=False))
    if key in ("casme", "casme2"):
        return [(v, f"sub{v:02d}") for v in nums]
    if key == "samm":
        return [(v, f"{v:03d}") for v in nums]
    if key in ("mmew", "fourd"):
        return [(f"S{v:02d}", f"S{v:02d}") for v in nums]
    if key == "casme3a":
        return [(f"spNO.{v}", f"spNO.{v}") for v in nums]
    return [(f"s{v}", f"s{v}") for v in nums]           # smic


_SMIC_CODE = {"positive": "po", "negative": "ne", "surprise": "sur"}


# ----------------------------------------------------------------------------------------------
# the plan


def plan_standin(profile: Profile, seed: int, n_identities: int | None = None,
                 databases: Sequence[str] | None = None) -> StandinPlan:
    """Draw the whole label plan of a stand-in build (no photos, no rendering).

    Parameters
    ----------
    profile : Profile
    seed : int
    n_identities : int, optional
        Usable photos; default: as many as the profile asks for.
    databases : sequence of str, optional
        Keys to plan (default: every key of the profile), planned in :data:`KEYS` order.

    Returns
    -------
    StandinPlan
        Identities are slots ``0..n_identities-1`` (the build maps them to photos), assigned in
        disjoint blocks per database.

    Raises
    ------
    ValueError
        For an unknown key, or fewer identities than databases.
    """
    keys = [k for k in KEYS if databases is None or k in databases]
    unknown = set(databases or ()) - set(KEYS)
    if unknown:
        raise ValueError(f"unknown database keys {sorted(unknown)}; expected some of {KEYS}")
    sub_prof = Profile(name=profile.name, databases={k: profile.databases[k] for k in keys},
                       amplitude_scale=profile.amplitude_scale,
                       macro_amplitude_iod=profile.macro_amplitude_iod,
                       macro_duration_s=profile.macro_duration_s,
                       contact_samples=profile.contact_samples)
    n_ids = sub_prof.total_subjects() if n_identities is None else int(n_identities)
    per_db = allocate_subjects(sub_prof, n_ids)
    # per-database tilts of the pattern weights, pooled marginals kept on the targets
    trng = rng_for(seed, 999)
    tilts = {k: np.exp(trng.normal(0, _TILT, size=len(PATTERN_PRIORS))) for k in KEYS}
    cd_keys = [k for k in keys if k != "smic"] or keys
    base = pattern_weights([tilts[k] for k in cd_keys],
                           [profile.databases[k].n_samples for k in cd_keys])
    plans = {}
    next_identity = 0
    for key in keys:
        ids = list(range(next_identity, next_identity + per_db[key]))
        next_identity += per_db[key]
        plans[key] = _plan_database(profile, profile.databases[key], seed, ids,
                                    _tilted(base, tilts[key]))
    return StandinPlan(profile=sub_prof, seed=int(seed), n_identities=n_ids, databases=plans)


def _duration_frames(rng: np.random.Generator, dbp: DatabaseProfile, dur_range: tuple[float, float],
                     max_frames: int) -> tuple[int, float]:
    """Onset..offset frame count and the drawn duration, seconds (log-uniform in ``dur_range``).

    The count is ``round(d · fps) + 1`` clipped to ``[min_frames, max_frames]``; the duration is
    returned unclipped, so that the head motion can run over the event's own time
    (:func:`_head_time_scale`).
    """
    lo, hi = dur_range
    d = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    return int(min(max(round(d * dbp.fps) + 1, dbp.min_frames), max_frames)), float(d)


def _head_time_scale(unit: list[dict], fps: float) -> float:
    """Seconds of head motion per second of frame time in a clip (1 unless a lone event's frame
    count was clipped).

    A profile whose frame rate is scaled down clips a short event to ``min_frames`` (a long one to
    ``max_frames``): the event's frames then stand for its drawn duration ``d``, not for
    ``(n − 1) / fps``.  The head trajectory (:class:`~pipeline.standin.render.HeadMotion`) runs
    ``d · fps / (n − 1)`` times as fast, so its drift onset → apex is the one of the event's own
    timing in every profile (docs/standin-realism.md, "Quick and full profiles").  A video
    holding several events (CAS(ME)^3) keeps the frame clock.
    """
    if len(unit) != 1:
        return 1.0
    n, d = unit[0]["n_frames"], unit[0]["duration_s"]
    if n == round(d * fps) + 1:
        return 1.0
    return float(d * fps / (n - 1))


def _amplitude(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _action(au: int, side: str, amplitude_iod: float, iod_px: float, **kw) -> AUAction:
    """An AU action drawn in % of IOD, with its amplitude in pixels of the subject's frames."""
    return AUAction(au, side, float(amplitude_iod) * iod_px / 100.0,
                    amplitude_iod=float(amplitude_iod), **kw)


def _plan_database(profile: Profile, dbp: DatabaseProfile, seed: int, identities: list[int],
                   weights: np.ndarray) -> DatabasePlan:
    key = dbp.key
    kidx = KEYS.index(key)
    rng = rng_for(seed, kidx, 1)
    w, h = dbp.frame_size
    n_sub = len(identities)

    # subjects: names, placement in the frame, colour
    subjects = []
    for i, ((name, folder), ident) in enumerate(zip(_subject_names(key, n_sub, rng), identities,
                                                    strict=True)):
        iod = dbp.iod_px * math.exp(rng.normal(0, 0.06))
        centre = (w / 2 + rng.normal(0, 0.03) * w, h * 0.42 + rng.normal(0, 0.03) * h)
        r, g, b = (float(v * math.exp(rng.normal(0, 0.02))) for v in dbp.gains)
        subjects.append(Subject(key=key, name=name, folder=folder, index=i, identity=ident,
                                iod_px=float(iod), centre=(float(centre[0]), float(centre[1])),
                                roll_deg=float(rng.uniform(-3, 3)), gains=(r, g, b),
                                gamma=float(dbp.gamma * math.exp(rng.normal(0, 0.03)))))

    # samples per subject: at least one each, the rest Dirichlet-multinomial (uneven, as real)
    n = dbp.n_samples
    extra = n - n_sub
    if extra < 0:
        raise ValueError(f"{key}: {n} samples cannot cover {n_sub} subjects")
    share = rng.dirichlet(np.full(n_sub, 3.0))
    per_subject = 1 + quota_counts(extra, share, rng)

    # AU sets by quota, then per-sample details
    subj_of = [s for s in range(n_sub) for _ in range(per_subject[s])]
    drafts = []
    if key in EMOTION_CLASSES:
        for i, cls in enumerate(draw_emotion_classes(key, n, rng)):
            drafts.append(_draft_of_class(dbp, rng, subj_of[i], subjects[subj_of[i]].iod_px, cls,
                                          weights))
    else:
        au_sets = (draw_smic_au_sets(n, weights, rng) if key == "smic"
                   else draw_au_sets(n, weights, rng))
        for i in range(n):
            drafts.append(_draft_micro(dbp, rng, subj_of[i], subjects[subj_of[i]].iod_px,
                                       au_sets[i]))
    for _ in range(dbp.n_macro):
        s_idx = int(rng.integers(n_sub))
        drafts.append(_draft_macro(profile, dbp, rng, s_idx, subjects[s_idx].iod_px))

    clips, samples = _layout(profile, dbp, rng, subjects, drafts, seed)
    _inject_quirks(dbp, rng, samples, clips)
    _finalise_rows(samples)
    return DatabasePlan(key=key, profile=dbp, subjects=subjects, clips=clips, samples=samples)


def _draft_micro(dbp: DatabaseProfile, rng: np.random.Generator, subject: int, iod_px: float,
                 au_set: tuple[int, ...]) -> dict:
    """A micro-expression draft; amplitudes drawn in % of IOD (``dbp.amplitude_iod``) and
    converted to pixels with the subject's IOD ``iod_px``."""
    key = dbp.key
    lo, hi = dbp.amplitude_iod
    # sample intensity, each AU around it (correlated within a sample)
    level = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    side_draw = "R" if rng.uniform() < 0.5 else "L"
    actions = []
    for au in au_set:
        uni = AU_SPECS[au].unilateral and rng.uniform() < UNILATERAL_P.get(au, 0) * dbp.unilateral_scale
        amp = float(np.clip(level * math.exp(rng.normal(0, 0.2)), lo * 0.8, hi * 1.2))
        actions.append(_action(au, side_draw if uni else "B", amp, iod_px))
    extras = [au for au, p in DISTRACTOR_P.items() if rng.uniform() < p]
    if not au_set and not extras:
        extras = [int(rng.choice(list(DISTRACTOR_P)))]
    for au in extras:
        uni = AU_SPECS[au].unilateral and rng.uniform() < UNILATERAL_P.get(au, 0)
        actions.append(_action(au, side_draw if uni else "B", _amplitude(rng, lo, hi), iod_px))
    if key == "samm":
        for a in actions:
            if rng.uniform() < 0.45:
                a.intensity = _intensity_letter(a.amplitude_iod)
    if key == "fourd" and rng.uniform() < 0.25:
        free = [au for au in CD6ME_AUS if au not in au_set]
        au = int(rng.choice(free))
        actions.append(_action(au, "B", _amplitude(rng, *K_MARKED_IOD), iod_px, k_marked=True))
    coded = {a.au: a.side for a in actions if not a.k_marked}
    canon = canonical_emotion(coded)
    rule = map_emotion(key, canon, rng)
    emotion = rule
    if rng.uniform() < dbp.label_noise:
        others = [v for v in VOCABULARY[key] if v != rule]
        emotion = others[int(rng.integers(len(others)))]
    n_frames, duration = _duration_frames(rng, dbp, dbp.duration_s, dbp.max_frames)
    return {"kind": "micro", "subject": subject, "actions": actions, "n_frames": n_frames,
            "duration_s": duration,
            "apex_frac": float(rng.uniform(0.25, 0.6)), "canonical": canon, "rule": rule,
            "emotion": emotion,
            "spaced": key == "samm" and rng.uniform() < 0.5,
            "jitter": _apex_jitter(rng, dbp), "blink": rng.uniform() < dbp.blink_rate,
            "blink_coded": rng.uniform() < dbp.blink_coded}


def _draft_of_class(dbp: DatabaseProfile, rng: np.random.Generator, subject: int, iod_px: float,
                    cls: str, weights: np.ndarray) -> dict:
    """A micro-expression draft whose rule label is ``cls``: AU sets drawn with the database's
    pattern weights (none included) until the FACS rule and the release's mapping give ``cls``
    (rejection sampling: the AU sets of a class keep their relative CD6ME weights).  Label noise
    then applies as for every draft.

    Raises
    ------
    RuntimeError
        If :data:`MAX_CLASS_TRIES` drafts never give ``cls`` (a class the rule cannot produce).
    """
    pats = [()] + list(PATTERN_PRIORS)
    probs = np.concatenate([[NONE_SHARE], weights])
    probs = probs / probs.sum()
    for _ in range(MAX_CLASS_TRIES):
        d = _draft_micro(dbp, rng, subject, iod_px, pats[int(rng.choice(len(pats), p=probs))])
        if d["rule"] == cls:
            return d
    raise RuntimeError(f"{dbp.key}: no AU pattern gave the class {cls!r} in {MAX_CLASS_TRIES} "
                       "drafts; the FACS rule cannot produce it")


def _apex_jitter(rng: np.random.Generator, dbp: DatabaseProfile) -> int:
    """Annotation error of the apex, frames (0 for most samples)."""
    if rng.uniform() >= dbp.apex_jitter_rate:
        return 0
    size = int(rng.integers(1, dbp.apex_jitter_frames + 1))
    return size if rng.uniform() < 0.5 else -size


def _draft_macro(profile: Profile, dbp: DatabaseProfile, rng: np.random.Generator,
                 subject: int, iod_px: float) -> dict:
    key = dbp.key
    pats = list(PATTERN_PRIORS)
    au_set = pats[int(rng.integers(len(pats)))]
    lo, hi = profile.macro_amplitude_iod
    actions = [_action(au, "B", _amplitude(rng, lo, hi), iod_px) for au in au_set]
    coded = {a.au: a.side for a in actions}
    canon = canonical_emotion(coded)
    rule = map_emotion(key, canon, rng)
    n_frames, duration = _duration_frames(rng, dbp, profile.macro_duration_s, 3 * dbp.max_frames)
    return {"kind": "macro", "subject": subject, "actions": actions, "n_frames": n_frames,
            "duration_s": duration,
            "apex_frac": float(rng.uniform(0.3, 0.5)), "canonical": canon, "rule": rule,
            "emotion": rule, "spaced": False, "jitter": 0, "blink": False,
            "blink_coded": False}


def _blink_event(dbp: DatabaseProfile, rng: np.random.Generator, first: int, last: int,
                 subject: Subject) -> Event:
    """A blink (AU45) of 0.1–0.25 s inside ``[first, last]``; the renderer caps its amplitude."""
    n = int(min(max(round(rng.uniform(0.1, 0.25) * dbp.fps) + 1, 3), max(3, last - first + 1)))
    onset = int(rng.integers(first, max(first, last - n + 1) + 1))
    offset = min(onset + n - 1, last)
    onset = max(first, offset - n + 1)
    apex = onset + max(1, (offset - onset) // 2) if offset - onset >= 2 else onset
    amp = 0.15 * subject.iod_px        # asks for a full lid drop; render caps to a one-to-one warp
    return Event("blink", [AUAction(45, "B", float(amp))], onset, apex, offset)


def _timing(d: dict, onset: int) -> tuple[int, int, int]:
    n = d["n_frames"]
    offset = onset + n - 1
    apex = onset + int(min(max(round(d["apex_frac"] * (n - 1)), 1), n - 2))
    return onset, apex, offset


def _layout(profile: Profile, dbp: DatabaseProfile, rng: np.random.Generator,
            subjects: list[Subject], drafts: list[dict], seed: int) -> tuple[list[Clip], list[Sample]]:
    """Group drafts into clips (videos for CAS(ME)^3), give frame numbers and material names."""
    key = dbp.key
    kidx = KEYS.index(key)
    by_subject: dict[int, list[dict]] = {}
    for d in drafts:
        by_subject.setdefault(d["subject"], []).append(d)
    clips: list[Clip] = []
    samples: list[Sample] = []

    units_of: list[list[list[dict]]] = []
    for s_idx in range(len(subjects)):
        group = by_subject.get(s_idx, [])
        micro = [d for d in group if d["kind"] == "micro"]
        macro = [d for d in group if d["kind"] == "macro"]
        if key == "casme3a":
            # several micro-expressions of a video share its Filename (consecutive rows); a
            # macro-expression gets a video of its own, so that de-duplicating Filenames gives the
            # same names with or without the macro rows
            videos: list[list[dict]] = []
            for d in micro:
                if videos and len(videos[-1]) < 3 and rng.uniform() < 0.35:
                    videos[-1].append(d)
                else:
                    videos.append([d])
            units_of.append(videos + [[d] for d in macro])
        else:
            units_of.append([[d] for d in micro])
    if key == "casme3a" and not any(len(u) > 1 for units in units_of for u in units):
        for units in units_of:           # make sure even a tiny build has a shared video
            micro_units = [u for u in units if u[0]["kind"] == "micro"]
            if len(micro_units) >= 2:
                micro_units[0].extend(micro_units[1])
                units.remove(micro_units[1])
                break

    for s_idx in range(len(subjects)):
        subj = subjects[s_idx]
        units = units_of[s_idx]
        names = _materials(key, rng, subj, units)
        for unit, name in zip(units, names, strict=True):
            clip_idx = len(clips)
            naming = _frame_naming(key, rng, name, len(samples))
            lo, hi = dbp.first_frame
            cursor = int(rng.integers(lo, hi + 1))
            if key == "casme" and naming["pad"] == 0 and len(samples) % 8 == 0:
                # an unpadded folder whose numbers cross 99 -> 100: text order is not frame order
                cursor = 100 - max(1, unit[0]["n_frames"] // 2)
            events: list[Event] = []
            rows: list[tuple[dict, Event]] = []
            first = cursor
            if key == "casme3a":
                cursor += int(rng.integers(2, 5))          # a few neutral frames before
            for j, d in enumerate(unit):
                if j > 0:
                    cursor = events[-1].offset + int(rng.integers(3, 13))
                onset, apex, offset = _timing(d, cursor)
                ev = Event(d["kind"], d["actions"], onset, apex, offset)
                events.append(ev)
                rows.append((d, ev))
            last = events[-1].offset + (int(rng.integers(2, 5)) if key == "casme3a" else 0)
            if key != "casme3a":
                first = events[0].onset
            for d, ev in rows:
                if d["blink"]:
                    blink = _blink_event(dbp, rng, ev.onset, ev.offset, subj)
                    events.append(blink)
                    if d["blink_coded"]:        # written in this row, rendered as its own event
                        ev.actions = ev.actions + [AUAction(45, "B", blink.actions[0].amplitude_px,
                                                            rendered=False)]
                    break
            # nuisances in face units: head motion in % of the subject's IOD, noise and JPEG at
            # the release's level relative to the face (DatabaseProfile.face_scale)
            trans_iod = float(dbp.head_translation_iod * math.exp(rng.normal(0, 0.4)))
            head = {"translation_px": trans_iod * subj.iod_px / 100.0,
                    "translation_iod": trans_iod,
                    "rotation_deg": float(dbp.head_rotation_deg * math.exp(rng.normal(0, 0.4))),
                    "jitter_px": float(dbp.head_jitter_iod * subj.iod_px / 100.0),
                    "time_scale": _head_time_scale(unit, dbp.fps)}
            nuisance = {"flicker": float(dbp.flicker * rng.uniform(0.5, 1.5)),
                        "flicker_hz": 100.0, "flicker_phase": float(rng.uniform(0, 2 * np.pi)),
                        "noise_sigma": float(dbp.rendered_noise_sigma * rng.uniform(0.8, 1.2)),
                        "jpeg_quality": dbp.rendered_jpeg_quality,
                        "face_scale": dbp.face_scale}
            folder = _clip_folder(key, subj, name, unit[0]["emotion"])
            clips.append(Clip(key=key, subject=s_idx, folder=folder, first=first, last=last,
                              events=events, naming=naming, head=head, nuisance=nuisance,
                              seed=seed_for(seed, kidx, 2, clip_idx)))
            for j, (d, ev) in enumerate(rows):
                samples.append(_sample_from(key, d, ev, s_idx, name, clip_idx, j))
    return clips, samples


def _sample_from(key: str, d: dict, ev: Event, subject: int, material: str, clip: int,
                 event: int) -> Sample:
    jit = d["jitter"]
    ann = ev.apex
    if jit:
        cand = ev.apex + jit
        if not ev.onset <= cand <= ev.offset or cand == ev.apex:
            cand = ev.apex - jit
        ann = cand if ev.onset <= cand <= ev.offset else ev.apex
    sep = " + " if d["spaced"] else "+"    # CAS(ME)^3 part A's v2 files use "+" only (issue #11)
    cell = format_au_cell(key, ev.actions, sep)
    label = sorted({a.au for a in ev.actions if a.coded and not a.k_marked})
    extra = {"au_separator": sep}
    return Sample(key=key, row=-1, subject=subject, material=material, clip=clip, event=event,
                  expression_type=d["kind"], onset=ev.onset, apex=ev.apex, offset=ev.offset,
                  annotated_apex=int(ann), au_cell=cell, label_aus=label, au_alternatives=None,
                  canonical_emotion=d["canonical"], rule_emotion=d["rule"], emotion=d["emotion"],
                  objective_class=OBJECTIVE_CLASS[d["canonical"]], extra=extra)


def _materials(key: str, rng: np.random.Generator, subj: Subject, units: list[list[dict]]) -> list[str]:
    n = len(units)
    if key == "casme":
        eps = rng.choice(np.arange(1, 20), size=n, replace=n > 19)
        names, seen = [], set()
        for e in eps:
            c = 1
            while f"EP{int(e):02d}_{c}" in seen:
                c += 1
            seen.add(f"EP{int(e):02d}_{c}")
            names.append(f"EP{int(e):02d}_{c}")
        return names
    if key == "casme2":
        names, seen = [], set()
        for _ in range(n):
            e = int(rng.integers(1, 20))
            c = 1
            while f"EP{e:02d}_{c:02d}" in seen:
                c += 1
            seen.add(f"EP{e:02d}_{c:02d}")
            names.append(f"EP{e:02d}_{c:02d}" + ("f" if rng.uniform() < 0.15 else ""))
        return names
    if key == "samm":
        counters: dict[int, int] = {}
        names = []
        for _ in range(n):
            ind = int(rng.integers(1, 8))
            counters[ind] = counters.get(ind, 0) + 1
            names.append(f"{subj.name:03d}_{ind}_{counters[ind]}")
        return names
    if key in ("mmew", "fourd"):
        return [f"{subj.folder}_{i + 1:02d}" for i in range(n)]
    if key == "casme3a":
        letters = "abcdefghijklmnopqrstuvwxyz"
        return [letters[i] if i < 26 else letters[i // 26 - 1] + letters[i % 26] for i in range(n)]
    # smic: material code from the (written) emotion
    counters_s: dict[str, int] = {}
    names = []
    for unit in units:
        code = _SMIC_CODE[unit[0]["emotion"]]
        counters_s[code] = counters_s.get(code, 0) + 1
        names.append(f"{subj.folder}_{code}_{counters_s[code]:02d}")
    return names


def _clip_folder(key: str, subj: Subject, name: str, emotion: str) -> str:
    if key == "casme":
        return f"{subj.folder}/{name}"
    if key == "casme2":
        return f"CASME2_RAW_selected/{subj.folder}/{name}"
    if key == "samm":
        return f"SAMM/{subj.folder}/{name}"
    if key == "mmew":
        return f"Micro_Expression/{emotion}/{name}"
    if key == "fourd":
        return f"gray_micro/{subj.folder}/{name}"
    if key == "casme3a":
        return f"ME_A/{subj.folder}/{name}/color"
    return f"HS/{subj.folder}/micro/{emotion}/{name}"


def _frame_naming(key: str, rng: np.random.Generator, name: str, ordinal: int) -> dict:
    """How a clip's frame files are named (see :func:`pipeline.standin.writers.frame_name`)."""
    if key == "casme":
        # inconsistent zero padding across the release: none, 3 or 4 digits (cycled, then shuffled
        # by the material order, so even a tiny build shows both padded and unpadded folders)
        return {"stem": f"reg_{name}-", "pad": (0, 3, 0, 4)[ordinal % 4]}
    if key == "casme2":
        return {"stem": "img", "pad": 0}
    if key == "samm":
        return {"stem": f"{name.split('_')[0]}_", "pad": 5}
    if key == "mmew" or key == "casme3a":
        return {"stem": "", "pad": 0}
    if key == "fourd":
        return {"stem": f"{name}_", "pad": 4}
    return {"stem": "image", "pad": 6}


def _inject_quirks(dbp: DatabaseProfile, rng: np.random.Generator, samples: list[Sample],
                   clips: list[Clip]) -> None:
    """Give a recorded share of micro-expression rows a real release's quirk."""
    key = dbp.key
    if dbp.quirk_rate <= 0:
        return
    kinds = RELEASE_QUIRKS.get(key, QUIRK_KINDS)
    if not kinds:
        return
    micro = [i for i, s in enumerate(samples) if s.expression_type == "micro"]
    n_q = max(1, round(dbp.quirk_rate * len(micro)))
    chosen = sorted(int(i) for i in rng.choice(micro, size=min(n_q, len(micro)), replace=False))
    for j, i in enumerate(chosen):
        s = samples[i]
        kind = kinds[(j + KEYS.index(key)) % len(kinds)]     # every kind shows up across databases
        actions = clips[s.clip].events[s.event].actions
        present = {a.au for a in actions}
        main = [a for a in actions if a.coded and not a.k_marked and a.au in CONFUSABLE
                and CONFUSABLE[a.au] not in present]
        if kind == "au_or" and not main:
            kind = "au_question"
        if kind == "apex_missing":
            s.annotated_apex = None
        elif kind == "au_question":
            s.au_cell = f"{s.au_cell}+?" if s.au_cell else "?"
        else:
            a = main[0]
            alt = CONFUSABLE[a.au]
            tok_a = au_token(key, a, True)
            tok_b = au_token(key, AUAction(alt, a.side if AU_SPECS[alt].unilateral else "B",
                                           a.amplitude_px, a.intensity,
                                           amplitude_iod=a.amplitude_iod), True)
            rest = [au_token(key, b, False) for b in actions if b.coded and b is not a]
            s.au_cell = s.extra["au_separator"].join([f"{tok_a} or {tok_b}", *rest])
            s.au_alternatives = [a.au, alt]
        s.quirks.append(kind)


def _finalise_rows(samples: list[Sample]) -> None:
    """Sort rows as the releases do (subject, then material, then onset) and number them.

    CAS(ME)^3's macro-expressions stay in the videos but are no rows: the ME label file the
    stand-in writes lists micro-expressions only."""
    samples[:] = [s for s in samples if s.key != "casme3a" or s.expression_type == "micro"]
    samples.sort(key=lambda s: (s.subject, s.material, s.onset))
    for r, s in enumerate(samples):
        s.row = r

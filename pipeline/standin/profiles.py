"""Per-database profiles of the stand-in benchmark: sizes, timing, nuisances, label structure.

Three profiles:

``full``
    The real databases' sample counts (CD6ME: casme 189, casme2 256, samm 159, fourd 267,
    mmew 300, casme3a 860 micro-expressions, 86 macro ones in its videos; SMIC-HS 164), frame
    rates (CASME 60, CASME II 200, SAMM 200, MMEW 90, 4DME 60, CAS(ME)^3 30, SMIC-HS 100 fps) and
    frame sizes (CASME cropped faces, CASME II 640x480, SAMM 2040x1088 grey, MMEW 1920x1080,
    4DME 1200x1600 grey, CAS(ME)^3 1280x720, SMIC-HS 640x480).  Built once on demand: several GB
    and tens of minutes on 2 cores.
``quick``
    The default of ``dvc repro``: frame rates scaled down so that a sequence has 5–14 frames,
    frames of 160–320 px with faces of 40–60 px inter-ocular distance.  The four AU-only
    databases have 12 subjects and a few dozen samples each; the three LOSO databases (CASME II
    120, SAMM 144, SMIC-HS 60 samples) have 6 subjects each with many samples, on small frames
    (256x192, 288x160): LOSO folds are subjects and their count drives the cost of every emotion
    method, while the sample count decides whether a LOSO score measures the method or the label
    draw.  At these sizes every class of every LOSO task (5- and 3-class) has about 10 samples or
    more over at least 3 subjects, in the release's shares (:data:`pipeline.standin.labels.
    EMOTION_CLASSES`, SMIC-HS: ``SMIC_CLASSES``); the smallest are CASME II surprise (~11 of
    ~105 5-class samples) and SAMM contempt (~11 of ~115).
``tiny``
    For the tests: 3 subjects × 2 samples per database (CAS(ME)^3 also one macro-expression row
    sharing a video), 5–6 frames per sequence.

Identities.  The photo set has 102 people and the real databases have about 260 subjects in all
(CASME 19, CASME II 26, SAMM 28–32, MMEW 30–36, 4DME 41–65, CAS(ME)^3 part A 100, SMIC-HS 16), so
the full profile gives every database fewer subjects than its release, roughly in proportion with
a floor of 10 (casme 10, casme2 14, samm 14, mmew 12, fourd 14, casme3a 26, smic 12 = 102) and
correspondingly more samples per subject (about 11–33 instead of 5–10).  No identity is shared
between databases in any profile.  With fewer usable photos than a profile asks for, the
subjects are scaled down proportionally (at least one per database); see :func:`allocate_subjects`.

Amplitudes in face units (STANDIN.md item 4; issue #30 item 1).  A micro-expression's apex
amplitude -- the apex displacement of the structure that moves most (:mod:`pipeline.standin.aus`)
-- is drawn log-uniform in ``amplitude_iod``, in % of the subject's inter-ocular distance (IOD),
and turned into pixels of the frame being rendered with that subject's IOD.  The quick, full and
tiny profiles therefore have the same motion relative to the face; only its size in pixels differs
(a 0.5 % IOD motion is 0.5 px on a full CASME II face of 105 px IOD, 0.2 px on a quick one of
44 px).  The ground truth records both.

Calibration of ``amplitude_iod`` (:data:`AMPLITUDE_IOD`, every database):

=====================  ===========================================================================
source                 figure
=====================  ===========================================================================
real CASME II          per-sample 95th / 99th percentile of the non-rigid onset → apex TV-L1 flow,
reference (STANDIN.md, 0.38 (0.21–1.95) / 0.48 (0.32–2.60) % IOD, median (p10–p90), in the
issue #30)             quick configuration's 112-px crops; the stand-in's CASME II is measured the
                       same way by ``benchmarks/bench_realism.py``
Li et al. 2018 (IEEE   micro-expressions are "low intensity": their recognition framework magnifies
TAC 9(4), "Towards     the motion (Eulerian video magnification) before reading it; Liong et al.
reading hidden         2018 (Signal Process. Image Commun. 62, "Less is more") read it from onset
emotions")             and apex alone.  Neither gives a magnitude in face units.
ours                   the range: no paper we found reports per-sample micro-expression
                       displacements in face units, so the range is chosen to reproduce the real
                       reference above (median and spread of the flow percentiles), the same for
                       every release (no source says one release's micro-expressions are larger)
=====================  ===========================================================================

The 99th flow percentile over the face mask reads a smoothed, noisy version of the largest
displacement (TV-L1 regularisation, 112-px crops, sensor noise), so the drawn peak amplitude sits
somewhat above it; ``AMPLITUDE_IOD`` is the range that, measured, gives the reference's median
within the benchmark's tolerance (docs/standin-realism.md holds the measurement).
Macro-expressions (CAS(ME)^3's videos) are drawn in ``macro_amplitude_iod``, 4DME's faint ``(k)``
AUs in :data:`K_MARKED_IOD` (both ours).

Nuisances in face units (STANDIN.md item 5; issue #30 item 3).  Rigid head motion is specified in
% of the subject's IOD (translation scale and tremor) and degrees (in-plane rotation about the eye
midpoint); flicker is a relative gain.  Sensor noise and JPEG quality are specified for the
release's native frames (``noise_sigma`` in grey levels of a native pixel, ``jpeg_quality``) and
rendered relative to the face: a quick-profile face, ``face_scale = iod_px / native_iod_px`` times
the native size, gets ``noise_sigma · face_scale`` (white noise averaged over the ``1/face_scale``
native pixels that one quick pixel stands for) and the JPEG quality whose quantisation step is
``face_scale`` times the native one (libjpeg's step is proportional to ``100 − q`` for q ≥ 50), so
once both are resampled to the same crop they carry about the same noise relative to the face.
The full profile renders the native values.  Per database (each clip draws the translation and
rotation scales times a log-normal factor, sd 0.4, the flicker times U(0.5, 1.5), the noise times
U(0.8, 1.2)):

=======  ========  ======  =======  ======  ====  =============================================
key      head      rot.    flicker  noise   JPEG  recording conditions (source) → levels
         % IOD     deg              grey    q
=======  ========  ======  =======  ======  ====  =============================================
casme2   0.4       0.1     0.002    2.0     90    lab, 200 fps, 640x480, LED lighting chosen
                                                  against flicker (Yan et al. 2014, PLoS ONE
                                                  9(1) e86041); head and raw change calibrated
                                                  to the real CASME II reference (STANDIN.md)
casme    0.45      0.1     0.004    1.5     85    the same lab and protocol at 60 fps (Yan et
                                                  al. 2013, FG); levels ours, near CASME II's
samm     0.6       0.15    0.003    3.0     92    lab, 200 fps, 2040x1088 grey, lighting set up
                                                  for 200 fps (Davison et al. 2018, IEEE TAC
                                                  9(1)); noisier grey sensor; levels ours
mmew     0.5       0.15    0.006    1.2     88    lab, 90 fps, 1920x1080 (Ben et al. 2022, IEEE
                                                  TPAMI 44(9)); levels ours
fourd    0.3       0.1     0.003    1.0     90    4D capture, 60 fps, 1200x1600 grey texture
                                                  frames; the head stays in the capture volume
                                                  (Li et al. 2023, IEEE TAC 14(3)); levels ours
casme3a  1.2       0.25    0.008    2.5     80    30 fps, 1280x720, a more natural elicitation
                                                  (mock crime) with freer head motion and a
                                                  longer onset → apex time (Li et al. 2023, IEEE
                                                  TPAMI 45(3)); levels ours
smic     0.8       0.2     0.01     3.0     85    SMIC-HS, 100 fps, 640x480 (Li et al. 2013,
                                                  FG); levels ours (noisier frames)
=======  ========  ======  =======  ======  ====  =============================================

Only CASME II has a measured reference; the other levels are ours, ordered by the recording
conditions above and kept near CASME II's, so that a head that moves more than the expression
stays possible (the log-normal spread; more often in CAS(ME)^3 and SMIC-HS) but not typical.
Tremor is 0.03 % IOD for every database (ours).  The head trajectory runs in seconds of the
event's own timing: a profile whose frame rate cannot hold a short event clips it to
``min_frames`` (and a long one to ``max_frames``), and the clip's frames then stand for the drawn
duration, the head running ``d · fps / (n − 1)`` times as fast over them
(:func:`pipeline.standin.labels._head_time_scale`; 1 for every unclipped event and for CAS(ME)^3's
videos of several events).  Before, the head ran on the frame clock, so the quick profile's
clipped short events (5 frames at 40 fps for CASME II, where the full profile's 200 fps never
clips) drifted longer onset → apex: over 20 label plans the crop centre's drift was 1.09× the
full profile's, 0.97× with the head on the event's clock (docs/standin-realism.md, "Quick and
full profiles in face units"; ``benchmarks/bench_profiles.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

#: Database keys, in the order every output lists them.
KEYS: tuple[str, ...] = ("casme", "casme2", "samm", "mmew", "fourd", "casme3a", "smic")
#: The six CD6ME databases.
CD6ME_KEYS: tuple[str, ...] = ("casme", "casme2", "samm", "fourd", "mmew", "casme3a")
#: Log-uniform range of micro-expression apex amplitudes, % of IOD (module docstring: calibration).
AMPLITUDE_IOD: tuple[float, float] = (0.25, 2.5)
#: Range of 4DME's ``(k)``-marked AUs (written, zeroed by readers, rendered faintly), % of IOD; ours.
K_MARKED_IOD: tuple[float, float] = (0.08, 0.2)


@dataclass(frozen=True)
class DatabaseProfile:
    """How one simulated database is drawn and rendered.

    Attributes
    ----------
    key : str
        Database key (:data:`KEYS`).
    n_subjects : int
        Subjects (identities) wanted.
    n_samples : int
        Micro-expression rows.
    n_macro : int
        Extra macro-expressions of CAS(ME)^3, in the videos of its micro-expressions; not rows of
        the ME label file the stand-in writes (micro-expressions only).
    fps : float
        Frame rate, frames per second.
    frame_size : tuple of int
        ``(width, height)``, pixels.
    iod_px : float
        Mean inter-ocular distance of the faces, pixels (±6 % per subject).
    grey : bool
        Frames written single-channel.
    duration_s : tuple of float
        Range of onset→offset durations, seconds (log-uniform).
    min_frames, max_frames : int
        Bounds on the onset..offset frame count (inclusive).
    first_frame : tuple of int
        Range of the first onset's frame number.
    native_iod_px : float
        Mean IOD of the release's own frames (the ``full`` profile's ``iod_px``), pixels: the
        face size at which ``noise_sigma`` and ``jpeg_quality`` are specified.
    head_translation_iod : float
        Scale of the rigid head translation, % of the subject's IOD (:class:`~pipeline.standin.
        render.HeadMotion`; a clip draws it times a log-normal factor).
    head_rotation_deg : float
        Scale of the in-plane head rotation, degrees (a face unit already).
    head_jitter_iod : float
        Standard deviation of the frame-to-frame tremor, % of IOD.
    flicker : float
        Relative illumination flicker amplitude (a gain: the same at every face size).
    noise_sigma : float
        Gaussian sensor noise, grey levels, in pixels of the release's native frames; rendered
        as ``noise_sigma · min(1, iod_px / native_iod_px)`` (:meth:`face_scale`) so that, once a
        face is resampled to a common crop, the noise relative to the face is the release's.
    jpeg_quality : int
        JPEG quality of the release's native frames; rendered as
        ``100 − (100 − q) · face_scale`` (the quantisation step of libjpeg's quality scaling is
        proportional to ``100 − q`` for ``q ≥ 50``), the same error relative to the face.
    gains : tuple of float
        White balance (R, G, B).
    gamma : float
    blink_rate : float
        Probability that a clip has a blink (AU45) somewhere.
    blink_coded : float
        Probability that such a blink is written in the AU cell.
    quirk_rate : float
        Share of rows carrying a release quirk (at least one row when > 0).
    label_noise : float
        Share of emotion labels replaced by another class of the vocabulary.
    apex_jitter_rate : float
        Share of samples whose annotated apex differs from the true apex.
    apex_jitter_frames : int
        Largest annotation error, frames.
    unilateral_scale : float
        Multiplies the per-AU chance of a unilateral (R/L) action.
    amplitude_iod : tuple of float
        Log-uniform range of micro-expression apex amplitudes, % of the subject's IOD
        (:data:`AMPLITUDE_IOD` times ``amplitude_scale``).
    """

    key: str
    n_subjects: int
    n_samples: int
    fps: float
    frame_size: tuple[int, int]
    iod_px: float
    grey: bool
    n_macro: int = 0
    duration_s: tuple[float, float] = (1 / 25, 1 / 2)
    min_frames: int = 5
    max_frames: int = 10_000
    first_frame: tuple[int, int] = (1, 100)
    native_iod_px: float = 0.0
    head_translation_iod: float = 0.6
    head_rotation_deg: float = 0.15
    head_jitter_iod: float = 0.03
    flicker: float = 0.005
    noise_sigma: float = 1.5
    jpeg_quality: int = 90
    gains: tuple[float, float, float] = (1.0, 1.0, 1.0)
    gamma: float = 1.0
    blink_rate: float = 0.1
    blink_coded: float = 0.5
    quirk_rate: float = 0.03
    label_noise: float = 0.08
    apex_jitter_rate: float = 0.3
    apex_jitter_frames: int = 3
    unilateral_scale: float = 1.0
    amplitude_iod: tuple[float, float] = AMPLITUDE_IOD

    @property
    def n_rows(self) -> int:
        """Spreadsheet rows: micro plus macro expressions."""
        return self.n_samples + self.n_macro

    @property
    def face_scale(self) -> float:
        """``min(1, iod_px / native_iod_px)``: this profile's faces relative to the release's
        (1 for the full profile, or when ``native_iod_px`` is not set)."""
        if self.native_iod_px <= 0:
            return 1.0
        return min(1.0, self.iod_px / self.native_iod_px)

    @property
    def rendered_noise_sigma(self) -> float:
        """Sensor noise drawn on this profile's frames, grey levels (see ``noise_sigma``)."""
        return self.noise_sigma * self.face_scale

    @property
    def rendered_jpeg_quality(self) -> int:
        """JPEG quality used on this profile's frames (see ``jpeg_quality``)."""
        return int(round(100 - (100 - self.jpeg_quality) * self.face_scale))


@dataclass(frozen=True)
class Profile:
    """A whole stand-in benchmark: one :class:`DatabaseProfile` per key.

    Attributes
    ----------
    name : str
    databases : dict
        Key → DatabaseProfile, in :data:`KEYS` order (each with its ``amplitude_iod``).
    amplitude_scale : float
        The diagnostic multiplier already applied to every ``amplitude_iod`` (1: the benchmark).
    macro_amplitude_iod : tuple of float
        Log-uniform range for macro-expressions, % of IOD (ours: 3–8 px on CAS(ME)^3's native
        80-px IOD, the previous native-pixel range).
    macro_duration_s : tuple of float
        Range of macro-expression durations, seconds.
    contact_samples : int
        Samples per database shown on its contact sheet.
    """

    name: str
    databases: dict[str, DatabaseProfile] = field(default_factory=dict)
    amplitude_scale: float = 1.0
    macro_amplitude_iod: tuple[float, float] = (4.0, 10.0)
    macro_duration_s: tuple[float, float] = (0.5, 2.0)
    contact_samples: int = 4

    def total_subjects(self, keys: tuple[str, ...] | None = None) -> int:
        return sum(self.databases[k].n_subjects for k in (keys or tuple(self.databases)))


# Per-database look: nuisances in face units (module docstring, "Nuisances"), colour, blinks.
_LOOK = {
    "casme": dict(grey=False, head_translation_iod=0.45, head_rotation_deg=0.1, flicker=0.004,
                  noise_sigma=1.5, jpeg_quality=85, gains=(1.04, 1.0, 0.95), gamma=1.05,
                  blink_rate=0.08, blink_coded=0.3, first_frame=(10, 200)),
    "casme2": dict(grey=False, head_translation_iod=0.4, head_rotation_deg=0.1, flicker=0.002,
                   noise_sigma=2.0, jpeg_quality=90, gains=(1.06, 1.0, 0.9), gamma=0.95,
                   blink_rate=0.1, blink_coded=0.3, first_frame=(20, 400)),
    "samm": dict(grey=True, head_translation_iod=0.6, head_rotation_deg=0.15, flicker=0.003,
                 noise_sigma=3.0, jpeg_quality=92, blink_rate=0.15, blink_coded=0.5,
                 first_frame=(1000, 6000)),
    "mmew": dict(grey=False, head_translation_iod=0.5, head_rotation_deg=0.15, flicker=0.006,
                 noise_sigma=1.2, jpeg_quality=88, gains=(0.97, 1.0, 1.05), gamma=1.0,
                 blink_rate=0.1, blink_coded=0.2, first_frame=(1, 40)),
    "fourd": dict(grey=True, head_translation_iod=0.3, head_rotation_deg=0.1, flicker=0.003,
                  noise_sigma=1.0, jpeg_quality=90, blink_rate=0.2, blink_coded=0.9,
                  first_frame=(0, 80)),
    "casme3a": dict(grey=False, head_translation_iod=1.2, head_rotation_deg=0.25, flicker=0.008,
                    noise_sigma=2.5, jpeg_quality=80, gains=(0.95, 1.0, 1.08), gamma=1.1,
                    blink_rate=0.15, blink_coded=0.2, first_frame=(1, 60)),
    "smic": dict(grey=False, head_translation_iod=0.8, head_rotation_deg=0.2, flicker=0.01,
                 noise_sigma=3.0, jpeg_quality=85, gains=(0.92, 1.05, 0.95), gamma=1.15,
                 blink_rate=0.12, blink_coded=0.0, quirk_rate=0.0, first_frame=(100_000, 900_000)),
}

# (n_subjects, n_samples, n_macro, fps, frame_size, iod_px) per profile
_FULL = {
    "casme": (10, 189, 0, 60, (200, 240), 60),
    "casme2": (14, 256, 0, 200, (640, 480), 105),
    "samm": (14, 159, 0, 200, (2040, 1088), 150),
    "mmew": (12, 300, 0, 90, (1920, 1080), 150),
    "fourd": (14, 267, 0, 60, (1200, 1600), 170),
    "casme3a": (26, 860, 86, 30, (1280, 720), 80),
    "smic": (12, 164, 0, 100, (640, 480), 75),
}
_QUICK = {
    "casme": (12, 36, 0, 30, (160, 200), 50),
    "casme2": (6, 120, 0, 40, (256, 192), 44),
    "samm": (6, 144, 0, 40, (288, 160), 42),
    "mmew": (12, 48, 0, 30, (320, 180), 46),
    "fourd": (12, 48, 0, 30, (240, 320), 60),
    "casme3a": (12, 60, 6, 30, (320, 180), 40),
    "smic": (6, 60, 0, 30, (256, 192), 40),
}


def _build(name: str, table: dict, **overrides) -> Profile:
    dbs = {}
    for key in KEYS:
        n_sub, n_s, n_m, fps, size, iod = table[key]
        dbs[key] = DatabaseProfile(key=key, n_subjects=n_sub, n_samples=n_s, n_macro=n_m, fps=fps,
                                   frame_size=size, iod_px=iod, native_iod_px=_FULL[key][5],
                                   **{**_LOOK[key], **overrides})
    return Profile(name=name, databases=dbs)


def get_profile(name: str, amplitude_scale: float = 1.0) -> Profile:
    """The named profile: ``"quick"``, ``"full"`` or ``"tiny"``.

    Parameters
    ----------
    name : str
    amplitude_scale : float
        Multiplies both ends of every database's micro-expression apex amplitude range
        ``amplitude_iod`` (STANDIN.md item 4, % of IOD: :data:`AMPLITUDE_IOD`).  Ours, a
        diagnostic (does a method learn
        larger motions?), not part of the stand-in's specification; 1 is the specified
        benchmark.  The label plan draws the same random numbers at any scale, so every requested
        apex amplitude is multiplied by it (the renderer may still cap an amplitude, recorded in
        the ground truth as ``capped``); macro-expressions, blinks and 4DME's ``(k)`` AUs keep
        theirs.

    Raises
    ------
    ValueError
        For any other name, or an ``amplitude_scale`` that is not a positive finite number.
    """
    if (isinstance(amplitude_scale, bool) or not isinstance(amplitude_scale, int | float)
            or not math.isfinite(amplitude_scale) or amplitude_scale <= 0):
        raise ValueError(f"amplitude_scale must be a positive number, got {amplitude_scale!r}")
    prof = _named_profile(name)
    if amplitude_scale == 1:
        return prof
    k = float(amplitude_scale)
    dbs = {key: replace(d, amplitude_iod=(d.amplitude_iod[0] * k, d.amplitude_iod[1] * k))
           for key, d in prof.databases.items()}
    return replace(prof, databases=dbs, amplitude_scale=k)


def _named_profile(name: str) -> Profile:
    if name == "full":
        return _build("full", _FULL)
    if name == "quick":
        return _build("quick", _QUICK, max_frames=14, apex_jitter_frames=2, quirk_rate=0.04)
    if name == "tiny":
        prof = _build("tiny", _QUICK, max_frames=6, apex_jitter_frames=1, quirk_rate=0.05)
        dbs = {k: replace(d, n_subjects=3, n_samples=6, n_macro=1 if k == "casme3a" else 0,
                          fps=12.0)
               for k, d in prof.databases.items()}
        return Profile(name="tiny", databases=dbs, macro_duration_s=(0.4, 0.5), contact_samples=2)
    raise ValueError(f"unknown stand-in profile {name!r}; expected 'quick', 'full' or 'tiny'")


def allocate_subjects(profile: Profile, n_identities: int) -> dict[str, int]:
    """Subjects per database given the usable photos.

    Every database keeps its profile's count when there are photos enough; otherwise the counts
    are scaled by ``n_identities / total`` (largest remainders, at least one per database).

    Raises
    ------
    ValueError
        If there are fewer usable photos than databases.
    """
    want = {k: d.n_subjects for k, d in profile.databases.items()}
    total = sum(want.values())
    if n_identities >= total:
        return want
    if n_identities < len(want):
        raise ValueError(f"the stand-in needs at least {len(want)} usable face photos (one per "
                         f"database), found {n_identities}")
    spare = n_identities - len(want)
    quota = {k: (v - 1) * spare / (total - len(want)) for k, v in want.items()}
    got = {k: 1 + math.floor(q) for k, q in quota.items()}
    rest = n_identities - sum(got.values())
    for k in sorted(quota, key=lambda k: (-(quota[k] - math.floor(quota[k])), KEYS.index(k)))[:rest]:
        got[k] += 1
    return got

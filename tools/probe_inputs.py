"""Where are the labels in a method's input?  Linear probes on the feature caches (issue #31).

A linear probe asks whether a label can be read from an input at all, before any network is
trained on it: logistic regression (scikit-learn, class-balanced, features standardised on the
training folds) under the method's own protocol, scored as the pipeline scores the method.

* ``--task au``: the CD6ME samples, leave-one-database-out (:func:`cd6me_folds`), one probe per
  AU, mean AU ROC AUC of the pooled decision values (0.5 = nothing; the report's learning bar
  asks 0.60 of a method).  Inputs, from ``faces.h5`` ``seq112/frames`` (the l = 8 onset→offset
  frames AC4AU reads):

  - ``frames-ac@S``: grey frames resized to S px (area), the temporal variance of every pixel
    (the energy of the frames' AC part, what FRD keeps), averaged over 8 × 8 blocks, log;
  - ``ac4au-ac@S``: the same frames through AC4AU's frame encoder (``methods.ac4au.model``, eval
    mode, random weights of seed 0, or ``--ac4au-weights`` for the ``pretrain`` stage's
    MobileFaceNet): the temporal variance of each of the C' feature channels, log; also printed,
    the median ratio ‖F^AC‖ / ‖F‖ (how large the motion is in the features FRD receives).

* ``--task emotion``: composite-3 (SMIC-HS + CASME II + SAMM, three classes), leave-one-subject-
  out (:func:`loso_folds`), one multinomial probe, UF1 (macro F1) of the pooled predictions.
  Inputs, grey and resized to 14 × 14 px: ``raw-apex``, ``raw-apex-onset`` (``faces.h5``
  ``crop112``) and, for each α of ``--alphas``, ``<magnifier>-a<α>-apex`` and
  ``<magnifier>-a<α>-apex-onset`` (``magnified.h5`` ``frames/<magnifier>/alpha<α>/apex``, what
  GAM-MM-MER's patches are cut from).

Run by hand on a finished default run's caches (a few seconds per input; the AC4AU features take
about a minute on one thread)::

    python tools/probe_inputs.py --task au --sizes 32 64 112
    python tools/probe_inputs.py --task au --ac4au-weights models/pretrain/mobilefacenet.pt
    python tools/probe_inputs.py --task emotion --alphas 5 15

Writes nothing.  Exits 2 with a one-line message if a cache, a dataset or a sample is missing, or
the sample table does not allow the protocol.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, roc_auc_score

from pipeline.features.cache import CacheError, FeatureCache
from pipeline.training.data import read_samples
from pipeline.training.protocols import (
    CD6ME_AUS,
    EMOTION_TASKS,
    Fold,
    ProtocolError,
    cd6me_folds,
    cd6me_table,
    emotion_table,
    loso_folds,
)


def probe_auc(features: np.ndarray, labels: np.ndarray, folds: Sequence[Fold],
              c: float = 1.0) -> float:
    """Mean over the label columns of the ROC AUC of pooled out-of-fold linear-probe scores.

    Parameters
    ----------
    features : ndarray of shape (N, D), float
    labels : ndarray of shape (N, K), 0/1
        One binary label per column (the CD6ME AUs).
    folds : sequence of Fold
        Train/test row positions; every row should be in one test set.
    c : float
        Inverse L2 strength of the logistic regression.

    Returns
    -------
    float
        Mean ROC AUC over the columns that have both classes (0.5: no information).

    Raises
    ------
    ValueError
        If ``features`` and ``labels`` differ in rows, or no column has both classes.
    """
    x = np.asarray(features, np.float64)
    y = np.asarray(labels).astype(int)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{x.shape[0]} feature rows for {y.shape[0]} label rows")
    aucs = []
    for k in range(y.shape[1]):
        if y[:, k].min() == y[:, k].max():
            continue
        scores = np.zeros(len(y))
        for fold in folds:
            tr, te = fold.train, fold.test
            if y[tr, k].min() == y[tr, k].max():      # no positive to learn from: uninformed
                continue
            mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-6
            model = LogisticRegression(C=c, class_weight="balanced", max_iter=2000)
            model.fit((x[tr] - mu) / sd, y[tr, k])
            scores[te] = model.decision_function((x[te] - mu) / sd)
        aucs.append(roc_auc_score(y[:, k], scores))
    if not aucs:
        raise ValueError("no label column has both classes")
    return float(np.mean(aucs))


def probe_uf1(features: np.ndarray, labels: np.ndarray, folds: Sequence[Fold],
              c: float = 0.1) -> float:
    """UF1 (macro F1) of pooled out-of-fold predictions of a multinomial linear probe.

    Parameters
    ----------
    features : ndarray of shape (N, D), float
    labels : ndarray of shape (N,), int
        Class indices.
    folds : sequence of Fold
        Train/test row positions (LOSO); every row should be in one test set.
    c : float
        Inverse L2 strength.

    Returns
    -------
    float
        Macro F1 over the classes present in ``labels``.

    Raises
    ------
    ValueError
        If ``features`` and ``labels`` differ in rows.
    """
    x = np.asarray(features, np.float64)
    y = np.asarray(labels).astype(int)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{x.shape[0]} feature rows for {y.shape[0]} labels")
    pred = np.full(len(y), -1)
    for fold in folds:
        tr, te = fold.train, fold.test
        mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-6
        model = LogisticRegression(C=c, class_weight="balanced", max_iter=3000)
        model.fit((x[tr] - mu) / sd, y[tr])
        pred[te] = model.predict((x[te] - mu) / sd)
    return float(f1_score(y, pred, average="macro", labels=np.unique(y)))


def grey_small(images: np.ndarray, side: int) -> np.ndarray:
    """(N, H, W, 3) uint8 → (N, side·side) float32 grey, area-resized."""
    grey = images.astype(np.float32).mean(-1)
    return np.stack([cv2.resize(g, (side, side), interpolation=cv2.INTER_AREA).ravel()
                     for g in grey])


def frames_ac_energy(sequences: np.ndarray, side: int, blocks: int = 8) -> np.ndarray:
    """(N, l, H, W, 3) uint8 → (N, blocks²): log temporal variance of the grey frames per block."""
    out = []
    for seq in sequences:
        grey = seq.astype(np.float32).mean(-1)
        small = np.stack([cv2.resize(g, (side, side), interpolation=cv2.INTER_AREA)
                          for g in grey])
        var = small.var(axis=0)
        b = side // blocks
        out.append(var[:b * blocks, :b * blocks].reshape(blocks, b, blocks, b).mean((1, 3))
                   .ravel())
    return np.log(np.asarray(out) + 1e-6)


def _read(cache: FeatureCache, name: str, ids: Sequence[str]) -> np.ndarray:
    """Dataset ``name`` of ``cache`` at the rows of ``ids``, in their order."""
    return cache.read(name, [cache.index_of(s) for s in ids])


def ac4au_ac_energy(sequences: np.ndarray, params_path: str, weights: str | None,
                    batch: int = 32) -> tuple[np.ndarray, float]:
    """AC4AU frame-encoder features' per-channel log temporal variance, and median ‖F^AC‖/‖F‖."""
    import torch

    from pipeline.models.ac4au import build_ac4au, normalise_frames
    from pipeline.params import load, method_params
    from pipeline.training.methods_ac4au import ac4au_model_config, prepare_sequence

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = ac4au_model_config("ac4au", method_params(load(params_path), "ac4au"))
    cfg["pretrained"] = None
    net = build_ac4au(cfg, "paper")
    if weights:
        from pipeline.pretrain.weights import load_mobilefacenet_stage
        load_mobilefacenet_stage(net, weights)
    net.eval()
    size, length = int(cfg["input_size"]), int(cfg["sequence_length"])
    energy, ratio = [], []
    with torch.no_grad():
        for i in range(0, len(sequences), batch):
            x = torch.from_numpy(np.stack([prepare_sequence(s, length, size)
                                           for s in sequences[i:i + batch]]))
            feats = net.frame_features(normalise_frames(x))            # (B, l, C')
            ac = feats - feats.mean(dim=1, keepdim=True)
            energy.append((ac ** 2).mean(dim=1).numpy())
            ratio.append((ac.norm(dim=2).mean(1) / feats.norm(dim=2).mean(1)).numpy())
    return np.log(np.concatenate(energy) + 1e-12), float(np.median(np.concatenate(ratio)))


def run_au(args: argparse.Namespace) -> None:
    table = cd6me_table(read_samples(args.samples))
    folds = cd6me_folds(table)
    labels = table[list(CD6ME_AUS)].to_numpy(int)
    faces = FeatureCache(Path(args.features) / "faces.h5", "faces")
    seqs = _read(faces, "seq112/frames", table["sample_id"].tolist())
    print(f"CD6ME, {len(table)} samples, {len(folds)} folds; mean AU ROC AUC of the probes")
    for side in args.sizes:
        print(f"  frames-ac@{side}: {probe_auc(frames_ac_energy(seqs, side), labels, folds):.3f}",
              flush=True)
    feats, ratio = ac4au_ac_energy(seqs, args.params, args.ac4au_weights)
    start = args.ac4au_weights or "random weights (seed 0)"
    print(f"  ac4au-ac ({start}): {probe_auc(feats, labels, folds):.3f}; "
          f"median ‖F^AC‖/‖F‖ {ratio:.2g}", flush=True)


def run_emotion(args: argparse.Namespace) -> None:
    task = EMOTION_TASKS["composite-3"]
    table, y = emotion_table(read_samples(args.samples), task)
    folds = loso_folds(table, task)
    ids = table["sample_id"].tolist()
    feats = {}
    faces = FeatureCache(Path(args.features) / "faces.h5", "faces")
    onset = grey_small(_read(faces, "crop112/onset", ids), 14)
    apex = grey_small(_read(faces, "crop112/apex", ids), 14)
    feats["raw-apex"], feats["raw-apex-onset"] = apex, apex - onset
    magnified = FeatureCache(Path(args.features) / "magnified.h5", "magnified")
    for a in args.alphas:
        mag = grey_small(_read(magnified, f"frames/{args.magnifier}/alpha{a}/apex", ids), 14)
        feats[f"{args.magnifier}-a{a}-apex"] = mag
        feats[f"{args.magnifier}-a{a}-apex-onset"] = mag - onset
    counts = np.bincount(y, minlength=task.n_classes)
    print(f"composite-3, {len(table)} samples ({dict(zip(task.classes, counts.tolist(), strict=True))}), "
          f"{len(folds)} LOSO folds; UF1 of the probes")
    for name, x in feats.items():
        print(f"  {name}: {probe_uf1(x, y, folds):.3f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", choices=("au", "emotion"), required=True)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 112],
                    help="frame sides for frames-ac (multiples of 8)")
    ap.add_argument("--ac4au-weights", default=None,
                    help="MobileFaceNet weights for ac4au-ac (default: random)")
    ap.add_argument("--alphas", type=int, nargs="+", default=[5, 15])
    ap.add_argument("--magnifier", default="stmemm")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--samples", default="data/index/samples.csv")
    ap.add_argument("--features", default="data/features")
    args = ap.parse_args(argv)
    try:
        (run_au if args.task == "au" else run_emotion)(args)
    except (CacheError, ProtocolError, OSError, KeyError) as exc:
        print(f"probe_inputs: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

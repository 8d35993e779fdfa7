"""Figures of the report, rendered offline with matplotlib's Agg backend (PNG files).

DVC's own Vega plots need a network connection to draw; these images do not, and ``dvc plots
show`` lists them (the folder is declared under ``plots:`` in ``dvc.yaml``).  Every title carries
the data label, in capitals when the numbers come from the stand-in benchmark.

* :func:`plot_au_heatmap` — methods × AUs heatmaps of binary F1 and ROC AUC of every CD6ME method
  (the published per-AU F1 are in the report's table);
* :func:`plot_confusions` — confusion matrices (row-normalised, counts annotated) of one emotion
  method, one panel per LOSO task;
* :func:`plot_curves` — training loss per epoch of one method, every fold thin and the mean bold.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import confusion_matrix  # noqa: E402

from pipeline.io import atomic_path  # noqa: E402

__all__ = ["data_tag", "plot_au_heatmap", "plot_confusions", "plot_curves"]


def data_tag(labels: Sequence[str]) -> str:
    """Title suffix for the data labels of the plotted results.

    ``"STAND-IN DATA (standin-quick) — not comparable with published numbers"`` when any label
    is a stand-in, ``"real data"`` otherwise.
    """
    labels = sorted(set(labels))
    standin = [lab for lab in labels if lab.startswith("standin")]
    if standin:
        return f"STAND-IN DATA ({', '.join(labels)}) — not comparable with published numbers"
    return f"{', '.join(labels) or 'real'} data"


def _save(fig: plt.Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_au_heatmap(f1: Mapping[str, Mapping[str, float]], auc: Mapping[str, Mapping[str, float]],
                    aus: Sequence[str], tag: str, path: str | os.PathLike) -> Path:
    """Methods × AUs heatmaps of binary F1 (left) and ROC AUC (right), values written in the cells.

    One row per method (in the given order), one column per AU plus a last ``mean`` column; both
    colour scales span [0, 1] (viridis; missing values blank), so the two panels and two reports
    compare by colour; a cell without a value (an AU without both classes has no AUC) stays grey.
    Sized to read at page width (about 1,100 px wide at any method count).

    Parameters
    ----------
    f1 : mapping method → {AU: F1}
        Pooled binary F1 per AU (fractions; CD6ME, ARCHITECTURE.md "Metrics files").
    auc : mapping method → {AU: AUC}
        ROC AUC of the pooled scores per AU (NaN or absent where not measured).
    aus : sequence of str
        AU order of the columns.
    tag : str
        :func:`data_tag` of the results (in the title).
    path : path
        Output PNG (written atomically).

    Returns
    -------
    Path

    Raises
    ------
    ValueError
        If ``f1`` is empty.
    """
    methods = list(f1)
    if not methods:
        raise ValueError("plot_au_heatmap: no AU method to plot")
    cols = [*aus, "mean"]

    def grid(values: Mapping[str, Mapping[str, float]]) -> np.ndarray:
        out = np.full((len(methods), len(cols)), np.nan)
        for i, m in enumerate(methods):
            row = [np.nan if v is None else float(v)
                   for v in (values.get(m, {}).get(a) for a in aus)]
            out[i, :-1] = row
            if np.isfinite(row).any():
                out[i, -1] = np.nanmean(row)
        return out

    height = 1.5 + 0.28 * len(methods)
    fig, axes = plt.subplots(1, 2, figsize=(10.0, height), sharey=True, layout="constrained")
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#eeeeee")
    image = None
    for ax, (name, values) in zip(axes, (("binary F1", f1), ("ROC AUC", auc)), strict=True):
        g = grid(values)
        image = ax.imshow(np.ma.masked_invalid(g), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
        for (r, c), v in np.ndenumerate(g):
            if np.isfinite(v):
                ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=6.5,
                        color="black" if v > 0.55 else "white")
        ax.axvline(len(aus) - 0.5, color="white", lw=2)
        ax.set_xticks(range(len(cols)), [c.removeprefix("AU") for c in cols], fontsize=7.5)
        ax.set_xlabel("AU", fontsize=8, labelpad=1)
        ax.set_title(name, fontsize=9)
        ax.tick_params(length=0)
    axes[0].set_yticks(range(len(methods)), methods, fontsize=7.5)
    fig.colorbar(image, ax=axes, fraction=0.025, pad=0.01)
    fig.suptitle(f"CD6ME per-AU scores, pooled over folds — {tag}", fontsize=9)
    return _save(fig, path)


def plot_confusions(predictions: pd.DataFrame, classes: Mapping[str, Sequence[str]], method: str,
                    tag: str, path: str | os.PathLike) -> Path:
    """Row-normalised confusion matrices of an emotion method, one panel per task.

    Parameters
    ----------
    predictions : DataFrame
        ``metrics/<method>/predictions.csv`` (columns ``task``, ``true``, ``pred``).
    classes : mapping task → class names
        Class order of each task.
    method, tag : str
    path : path

    Raises
    ------
    ValueError
        If ``predictions`` lacks the columns or holds no task.
    """
    for col in ("task", "true", "pred"):
        if col not in predictions.columns:
            raise ValueError(f"{method}: predictions lack the column {col!r}")
    tasks = [t for t in dict.fromkeys(predictions["task"]) if t in classes]
    if not tasks:
        raise ValueError(f"{method}: no known task in the predictions")
    ncol = min(3, len(tasks))
    nrow = int(np.ceil(len(tasks) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.9 * nrow), squeeze=False)
    for ax in axes.flat[len(tasks):]:
        ax.axis("off")
    for ax, task in zip(axes.flat, tasks, strict=False):
        part = predictions[predictions["task"] == task]
        names = list(classes[task])
        cm = confusion_matrix(part["true"], part["pred"], labels=names)
        norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.5 else "black")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
        ax.set_title(f"{task} (n={len(part)})", fontsize=9)
    fig.suptitle(f"{method}: LOSO confusion matrices — {tag}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_curves(curves: pd.DataFrame, method: str, tag: str, path: str | os.PathLike) -> Path:
    """Training loss (and validation score when present) per epoch, every fold and the mean.

    Parameters
    ----------
    curves : DataFrame
        ``metrics/<method>/curves.csv`` (``fold``, ``epoch``, ``train_loss``, optionally
        ``task``, ``val_score``).
    method, tag : str
    path : path

    Raises
    ------
    ValueError
        If the columns are missing or there are no rows.
    """
    for col in ("fold", "epoch", "train_loss"):
        if col not in curves.columns:
            raise ValueError(f"{method}: curves lack the column {col!r}")
    if curves.empty:
        raise ValueError(f"{method}: no training curves")
    has_val = "val_score" in curves.columns and curves["val_score"].notna().any()
    fig, axes = plt.subplots(1, 2 if has_val else 1, figsize=(10 if has_val else 6, 4),
                             squeeze=False)
    groups = curves["task"] if "task" in curves.columns else pd.Series("all", index=curves.index)
    colours = {g: f"C{i}" for i, g in enumerate(dict.fromkeys(groups))}
    panels = [("train_loss", "training loss")] + ([("val_score", "inner-validation score")]
                                                   if has_val else [])
    for ax, (col, label) in zip(axes.flat, panels, strict=True):
        for _fold, part in curves.groupby("fold", sort=False):
            g = groups.loc[part.index[0]]
            ax.plot(part["epoch"], part[col], color=colours[g], alpha=0.25, lw=0.8)
        for g, part in curves.groupby(groups, sort=False):
            mean = part.groupby("epoch")[col].mean()
            ax.plot(mean.index, mean.values, color=colours[g], lw=2.2,
                    label=f"{g} (mean of {part['fold'].nunique()} folds)")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{method}: training curves — {tag}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)

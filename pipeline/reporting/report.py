"""The comparison of every method with the published numbers beside ours.

:func:`write_report` reads the full metrics record ``metrics/<method>/detail.json`` of every
method (``metrics/<method>.json`` holds only the headline DVC shows), its predictions and training
curves under ``metrics/<method>/``, and writes:

* ``reports/report.md`` and ``reports/report.html`` — one table for CD6ME AU detection (F1 mean,
  per-database mean and per-AU F1, "ours / paper") and one for LOSO emotion recognition
  (accuracy, UF1, UAR per database and class count, ours and the paper's), the data label of
  every row, the magnifiers' per-α verification table of ``metrics/magnifier/detail.json`` when it
  exists (:func:`magnifier_cells`), the sources of the published numbers, and the figures;
* ``reports/figures/*.png`` — the methods × AUs heatmap of F1 and AUC (``au_heatmap.png``),
  confusion matrices, training curves
  (:mod:`pipeline.reporting.plots`, Agg backend, offline);
* ``reports/au_f1.csv`` (``au`` + one column per AU method) and ``reports/emotion.csv`` (one row
  per method and task), for ``dvc plots``;
* ``metrics/summary.json`` — the headline numbers of every method beside the published ones, in
  one file for scripts (not declared as DVC metrics: each method's ``metrics/<method>.json`` is).

Every table and figure title says "STAND-IN DATA" when any shown result comes from the stand-in
benchmark (the ``data`` field of the metrics files): stand-in scores say nothing about the real
databases and are never presented as comparable with the papers'.
"""

from __future__ import annotations

import html
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.io import atomic_path, read_json, write_json
from pipeline.reporting.plots import data_tag, plot_au_heatmap, plot_confusions, plot_curves
from pipeline.reporting.published import Published, published_for
from pipeline.training.protocols import CD6ME_AUS, EMOTION_TASKS

log = logging.getLogger("report")

__all__ = ["AU_HEATMAP", "ReportError", "absent_class_folds", "au_table", "emotion_table",
           "learning_cells", "learning_verdicts", "load_metrics", "magnifier_cells",
           "metrics_record_path", "write_report"]

#: File name (under ``reports/figures/``) of the methods × AUs heatmap of F1 and AUC.
AU_HEATMAP = "au_heatmap.png"

EMOTION_KEYS = ("accuracy", "uf1", "uar")
#: The bar a learned method clears to count as learning (ours, issues #12 and #31): CD6ME pooled
#: F1 at least this much above the best constant predictor's, with mean AU ROC AUC at least
#: :data:`MIN_AUC`; LOSO composite-3 UF1 at least :data:`MARGIN_UF1` above the best constant's.
MARGIN_F1 = 0.05
MIN_AUC = 0.60
MARGIN_UF1 = 0.05
#: The LOSO task the verdict reads.
VERDICT_TASK = "composite-3"


class ReportError(ValueError):
    """A metrics file is missing or not in the format of ARCHITECTURE.md."""


def metrics_record_path(metrics_dir: str | os.PathLike, name: str) -> Path:
    """The full metrics record of ``name``: ``metrics/<name>/detail.json``, or, for a run written
    before the headline/detail split, ``metrics/<name>.json`` (which then held everything)."""
    detail = Path(metrics_dir) / name / "detail.json"
    return detail if detail.is_file() else Path(metrics_dir) / f"{name}.json"


def load_metrics(metrics_dir: str | os.PathLike, methods: Sequence[str]) -> dict[str, dict]:
    """Read the full metrics record of every method (:func:`metrics_record_path`).

    ``metrics/<method>.json`` holds only the headline numbers DVC shows; the per-AU,
    per-database and composite per-database numbers the report needs are in
    ``metrics/<method>/detail.json`` (ARCHITECTURE.md, "Metrics files").

    Raises
    ------
    ReportError
        Naming the file, if one is missing or lacks the fields of its task.
    """
    out = {}
    for m in methods:
        path = metrics_record_path(metrics_dir, m)
        if not path.is_file():
            raise ReportError(f"{path}: metrics of method {m!r} not found (run `dvc repro train@{m}`)")
        data = read_json(path)
        task = data.get("task")
        need = {"au": ("f1_mean", "f1_per_au", "f1_database_mean", "data"),
                "emotion": ("results", "data")}.get(task)
        if need is None:
            raise ReportError(f"{path}: 'task' must be 'au' or 'emotion', got {task!r}")
        absent = [k for k in need if k not in data]
        if absent:
            raise ReportError(f"{path}: missing fields {absent} for task {task!r}")
        out[m] = data
    return out


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    return f"{float(v):.3f}"


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


def au_table(metrics: Mapping[str, dict], published: Mapping[str, Published | None]) -> pd.DataFrame:
    """One row per CD6ME method: ours and the paper's F1 (fractions; NaN where not published).

    Returns
    -------
    DataFrame
        Columns ``method, data, epochs`` (the training budget; None for a constant predictor or
        a metrics file written before it), ``f1_mean, paper_f1_mean, f1_database_mean, auc_mean,
        n_samples, source``, ``f1_mean_sd``, ``f1_database_mean_sd``, ``auc_mean_sd`` (NaN for one seed),
        ``n_seeds`` and, per AU, ``<AU>``, ``paper_<AU>`` and ``auc_<AU>`` (ROC AUC of the pooled
        scores, ours only — the papers publish F1; NaN in metrics files written before it).
    """
    rows = []
    for m, d in metrics.items():
        if d["task"] != "au":
            continue
        pub = published.get(m)
        row = {"method": m, "data": d["data"], "epochs": d.get("epochs"), "f1_mean": d["f1_mean"],
               "paper_f1_mean": pub.f1_mean if pub and pub.f1_mean is not None else np.nan,
               "f1_database_mean": d["f1_database_mean"],
               "auc_mean": _num(d.get("auc_mean")), "n_samples": d.get("n_samples"),
               "source": pub.source if pub else ""}
        row.update(_seed_spread(d, ("f1_mean", "f1_database_mean", "auc_mean")))
        auc = d.get("auc_per_au") or {}
        for au in CD6ME_AUS:
            row[au] = d["f1_per_au"].get(au, np.nan)
            row[f"paper_{au}"] = pub.f1_per_au.get(au, np.nan) if pub else np.nan
            row[f"auc_{au}"] = _num(auc.get(au))
        rows.append(row)
    return pd.DataFrame(rows)


def emotion_table(metrics: Mapping[str, dict],
                  published: Mapping[str, Published | None]) -> pd.DataFrame:
    """One row per emotion method and result key (``casme2-5``, ``composite-3/samm``, …).

    Returns
    -------
    DataFrame
        Columns ``method, data, epochs, result, database, classes, n_samples, accuracy, uf1, uar,
        accuracy_sd, uf1_sd, uar_sd`` (NaN for one seed), ``n_seeds, paper_accuracy, paper_uf1,
        paper_uar, source``.
    """
    rows = []
    for m, d in metrics.items():
        if d["task"] != "emotion":
            continue
        pub = published.get(m)
        for key, r in d["results"].items():
            base, _, sub = key.partition("/")
            task = EMOTION_TASKS.get(base)
            classes = task.n_classes if task else int(base.rsplit("-", 1)[-1])
            db = (f"{base.rsplit('-', 1)[0]} → {sub}" if sub else base.rsplit("-", 1)[0])
            paper = pub.results.get(key, {}) if pub else {}
            sd = ((d.get("sd") or {}).get("results") or {}).get(key) or {}
            rows.append({
                "method": m, "data": d["data"], "epochs": d.get("epochs"), "result": key,
                "database": db, "classes": classes,
                "n_samples": r.get("n_samples"),
                **{k: r.get(k, np.nan) for k in EMOTION_KEYS},
                **{f"{k}_sd": sd.get(k, np.nan) for k in EMOTION_KEYS},
                "n_seeds": len(d.get("seeds") or [None]),
                **{f"paper_{k}": paper.get(k, np.nan) for k in EMOTION_KEYS},
                "source": pub.source if pub and paper else ""})
    return pd.DataFrame(rows)


def _seed_spread(d: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """``<key>_sd`` of a metrics dict's top-level ``keys`` (NaN without an ``sd`` block) and
    ``n_seeds`` (:mod:`pipeline.training.seeds`)."""
    sd = d.get("sd") or {}
    out: dict[str, Any] = {f"{k}_sd": sd.get(k, np.nan) for k in keys}
    out["n_seeds"] = len(d.get("seeds") or [None])
    return out


def _within_spread(values: pd.Series, sds: pd.Series, groups: pd.Series | None = None) -> pd.Series:
    """True where a value is below the best of its group by less than the seed spread.

    The spread of a pair is the larger of the two standard deviations over seeds; rows without an
    sd (one seed) are never marked, nor is the best row itself.
    """
    keys = groups if groups is not None else pd.Series(0, index=values.index)
    out = pd.Series(False, index=values.index)
    for _, idx in values.groupby(keys).groups.items():
        v = values.loc[idx].astype(float)
        if v.notna().sum() < 2:
            continue
        best = v.idxmax()
        for i in idx:
            if i == best or not np.isfinite(v[i]):
                continue
            pair = [float(sds.get(j, np.nan)) for j in (i, best)]
            finite = [x for x in pair if np.isfinite(x)]
            out[i] = bool(finite and v[best] - v[i] < max(finite))
    return out


def _with_sd(v: Any, sd: Any, near: bool = False) -> str:
    text = _fmt(v)
    if sd is not None and isinstance(sd, float) and np.isfinite(sd):
        text += f" ± {sd:.3f}"
    return text + (" ≈" if near else "")


def absent_class_folds(metrics_dir: str | os.PathLike, methods: Sequence[str]) -> pd.DataFrame:
    """LOSO folds whose training part lacks a class present in their test part.

    Reads ``metrics/<method>/folds/*.json`` (field ``classes_absent_from_training``, written by
    :mod:`pipeline.training.run`) of every listed emotion method.

    Returns
    -------
    DataFrame
        Columns ``task, fold, held_out, classes, methods`` (one row per fold and class set; the
        methods it was seen in), sorted by task and fold.
    """
    found: dict[tuple[str, str, str, str], list[str]] = {}
    for m in methods:
        for path in sorted((Path(metrics_dir) / m / "folds").glob("*.json")):
            d = read_json(path)
            absent = d.get("classes_absent_from_training")
            if d.get("task") != "emotion" or not absent:
                continue
            task = next(iter(d.get("results") or {"?": None}))
            key = (task, str(d.get("fold")), str(d.get("held_out")), ", ".join(absent))
            found.setdefault(key, []).append(m)
    rows = [{"task": t, "fold": f, "held_out": h, "classes": c, "methods": ", ".join(ms)}
            for (t, f, h, c), ms in sorted(found.items())]
    return pd.DataFrame(rows, columns=["task", "fold", "held_out", "classes", "methods"])


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _epochs(value: Any) -> str:
    """The training budget's epochs, "–" for a constant predictor (or an older metrics file)."""
    return "–" if value is None or pd.isna(value) else str(int(value))


def learning_verdicts(au: pd.DataFrame, emo: pd.DataFrame) -> pd.DataFrame:
    """Whether each learned method beats the best constant predictor of its protocol.

    A method is a constant predictor when its metrics carry no ``epochs`` (only trained methods
    write them, :mod:`pipeline.training.run`).  Bars (ours, issues #12 and #31): CD6ME
    ``f1_mean ≥ best constant f1_mean + MARGIN_F1`` and ``auc_mean ≥ MIN_AUC``; LOSO
    ``composite-3`` UF1 ``≥ best constant UF1 + MARGIN_UF1``.

    Parameters
    ----------
    au, emo : DataFrame
        :func:`au_table` and :func:`emotion_table`.

    Returns
    -------
    DataFrame
        One row per learned method: ``method, protocol`` (cd6me | loso), ``score`` (F1 or UF1),
        ``auc`` (NaN for LOSO), ``bar`` (the score to reach), ``best_constant`` (its name),
        ``learns`` (bool).  Empty when a protocol has no constant predictor to compare with.
    """
    task = emo[emo["result"] == VERDICT_TASK] if len(emo) else emo
    rows = (_against_best_constant(au, "f1_mean", "cd6me", MARGIN_F1, MIN_AUC)
            + _against_best_constant(task, "uf1", "loso", MARGIN_UF1, None))
    return pd.DataFrame(rows, columns=["method", "protocol", "score", "auc", "bar",
                                       "best_constant", "learns"])


def _against_best_constant(table: pd.DataFrame, score: str, protocol: str, margin: float,
                           min_auc: float | None) -> list[dict[str, Any]]:
    """:func:`learning_verdicts`' rows for one protocol's table (constants: no ``epochs``)."""
    if not len(table):
        return []
    trained = table["epochs"].notna()
    if trained.all() or not trained.any():
        return []
    consts = table[~trained]
    best = consts.loc[consts[score].idxmax()]
    bar = float(best[score]) + margin
    rows = []
    for _, r in table[trained].iterrows():
        auc = r["auc_mean"] if min_auc is not None else np.nan
        learns = r[score] >= bar and (min_auc is None or auc >= min_auc)
        rows.append({"method": r["method"], "protocol": protocol, "score": r[score], "auc": auc,
                     "bar": bar, "best_constant": best["method"], "learns": bool(learns)})
    return rows


def learning_cells(verdicts: pd.DataFrame) -> tuple[str, list[str], list[list[str]]]:
    """The note, header and rows of the "does each method learn?" table (:func:`learning_verdicts`)."""
    note = (f"A learned method counts as learning when it beats the best constant predictor of "
            f"its protocol: CD6ME F1 mean by at least {MARGIN_F1:.2f} with mean AU ROC AUC at "
            f"least {MIN_AUC:.2f}; LOSO {VERDICT_TASK} UF1 by at least {MARGIN_UF1:.2f}. "
            f"{int(verdicts['learns'].sum())} of {len(verdicts)} learned methods do.")
    header = ["method", "protocol", "score (F1 / UF1)", "AUC mean", "bar", "best constant",
              "learns?"]
    rows = [[r["method"], r["protocol"], _fmt(r["score"]), _fmt(r["auc"]), _fmt(r["bar"]),
             r["best_constant"], "yes" if r["learns"] else "**no**"]
            for _, r in verdicts.iterrows()]
    return note, header, rows


def _au_cells(au: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    header = ["method", "data", "epochs", "F1 mean (ours / paper)", "per-database mean",
              "AUC mean (ours)", "n", *[f"{a} F1 (ours / paper), AUC" for a in CD6ME_AUS]]
    rows = []
    near = _within_spread(au["f1_mean"], au.get("f1_mean_sd", pd.Series(dtype=float)))
    for i, r in au.iterrows():
        rows.append([r["method"], r["data"], _epochs(r.get("epochs")),
                     f"{_with_sd(r['f1_mean'], r.get('f1_mean_sd'), near[i])} / "
                     f"{_fmt(r['paper_f1_mean'])}",
                     _with_sd(r["f1_database_mean"], r.get("f1_database_mean_sd")),
                     _with_sd(r["auc_mean"], r.get("auc_mean_sd")), str(r["n_samples"]),
                     *[f"{_fmt(r[a])} / {_fmt(r[f'paper_{a}'])}, {_fmt(r[f'auc_{a}'])}"
                       for a in CD6ME_AUS]])
    return header, rows


def _emo_cells(emo: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    header = ["method", "data", "epochs", "database", "classes", "n", "Acc (ours / paper)",
              "UF1 (ours / paper)", "UAR (ours / paper)"]
    rows = []
    near = {k: _within_spread(emo[k], emo[f"{k}_sd"], emo["result"]) for k in EMOTION_KEYS}
    for i, r in emo.iterrows():
        rows.append([r["method"], r["data"], _epochs(r.get("epochs")), r["database"],
                     str(r["classes"]), str(r["n_samples"]),
                     *[f"{_with_sd(r[k], r[f'{k}_sd'], near[k][i])} / {_fmt(r[f'paper_{k}'])}"
                       for k in EMOTION_KEYS]])
    return header, rows


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def magnifier_cells(metrics_dir: str | os.PathLike) -> tuple[list[str], list[list[str]]] | None:
    """The per-α verification table of the magnifier stage (None when it has not run).

    Reads the full record ``metrics/magnifier/detail.json`` (or an older run's
    ``metrics/magnifier.json``, :func:`metrics_record_path`).

    One row per magnifier (``oh``, ``stmemm``, ``eulerian``): per factor the median
    measured/expected amplification with its IQR and the PSNR (dB) against the ground truth, and
    whether every median lies in the target range.

    Raises
    ------
    ReportError
        If the file exists but lacks the per-α entries.
    """
    path = metrics_record_path(metrics_dir, "magnifier")
    if not path.is_file():
        return None
    m = read_json(path)
    try:
        alphas = [float(a) for a in m["verification"]["alphas"]]
        lo, hi = m["verification"]["target"]["ratio_range"]
        keys = [f"alpha{int(a) if a.is_integer() else a}" for a in alphas]
        header = ["magnifier"] + [f"α = {k[5:]}: ratio (IQR), PSNR" for k in keys] + [
            f"all in [{lo:g}, {hi:g}]"]
        rows = []
        for name in ("oh", "stmemm", "eulerian"):
            if name not in m:
                continue
            cells = [f"{m[name][k]['ratio_median']:.3f} ({m[name][k]['ratio_iqr']:.3f}), "
                     f"{m[name][k]['psnr']:.1f} dB" for k in keys]
            ok = all(lo <= m[name][k]["ratio_median"] <= hi for k in keys)
            rows.append([name] + cells + ["yes" if ok else "no"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ReportError(f"{path}: malformed magnifier metrics ({exc!r})") from exc
    return header, rows


def _sources(published: Mapping[str, Published | None]) -> list[str]:
    return [f"{m}: {p.name} — {p.source}" + (f" ({p.note})" if p.note else "")
            for m, p in published.items() if p is not None]


def write_report(metrics_dir: str | os.PathLike, methods: Sequence[str],
                 published_keys: Mapping[str, str | None], reports_dir: str | os.PathLike,
                 summary_path: str | os.PathLike) -> dict[str, Any]:
    """Write the report (module docstring) and return the summary written to ``summary_path``.

    Parameters
    ----------
    metrics_dir : path
        ``metrics/``.
    methods : sequence of str
        Method names, in table order.
    published_keys : mapping method → key of :data:`pipeline.reporting.published.PUBLISHED`
        (None: nothing published for that method).
    reports_dir : path
        ``reports/`` (figures go to ``reports/figures/``).
    summary_path : path
        ``metrics/summary.json``.

    Raises
    ------
    ReportError
        If a metrics file is missing or malformed.
    """
    reports_dir = Path(reports_dir)
    figures = reports_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    metrics = load_metrics(metrics_dir, methods)
    published = {m: published_for(published_keys.get(m)) for m in methods}
    labels = [d["data"] for d in metrics.values()]
    tag = data_tag(labels)
    au = au_table(metrics, published)
    emo = emotion_table(metrics, published)
    figure_files: list[str] = []

    if len(au):
        f1 = {r["method"]: {a: r[a] for a in CD6ME_AUS} for _, r in au.iterrows()}
        auc = {r["method"]: {a: r[f"auc_{a}"] for a in CD6ME_AUS} for _, r in au.iterrows()}
        plot_au_heatmap(f1, auc, CD6ME_AUS, data_tag(au["data"].tolist()),
                        figures / AU_HEATMAP)
        figure_files.append(AU_HEATMAP)
        wide = pd.DataFrame({"au": list(CD6ME_AUS)})
        for m, vals in f1.items():
            wide[m] = [round(float(vals[a]), 6) for a in CD6ME_AUS]
        with atomic_path(reports_dir / "au_f1.csv", suffix=".csv") as tmp:
            wide.to_csv(tmp, index=False)
    with atomic_path(reports_dir / "emotion.csv", suffix=".csv") as tmp:
        (emo if len(emo) else pd.DataFrame(columns=["method", "result"])).to_csv(
            tmp, index=False, float_format="%.6f")

    for m, d in metrics.items():
        mdir = Path(metrics_dir) / m
        own_tag = data_tag([d["data"]])
        if d["task"] == "emotion" and (mdir / "predictions.csv").is_file():
            preds = pd.read_csv(mdir / "predictions.csv", dtype=str, keep_default_na=False)
            classes = {k: t.classes for k, t in EMOTION_TASKS.items()}
            plot_confusions(preds, classes, m, own_tag, figures / f"confusion_{m}.png")
            figure_files.append(f"confusion_{m}.png")
        curves_file = mdir / "curves.csv"
        if curves_file.is_file():
            curves = pd.read_csv(curves_file)
            if len(curves):
                plot_curves(curves, m, own_tag, figures / f"curves_{m}.png")
                figure_files.append(f"curves_{m}.png")

    au_title = f"CD6ME micro-AU detection, binary F1 pooled over folds — {data_tag(au['data'].tolist()) if len(au) else tag}"
    emo_title = f"LOSO emotion recognition — {data_tag(emo['data'].tolist()) if len(emo) else tag}"
    md = [f"# Micro-expression methods compared with the published numbers — {tag}", "",
          "Values are fractions in [0, 1]; “ours / paper”, – where the paper gives no number. "
          "Published numbers were obtained on the real databases. “epochs”: each trained "
          "method's training epochs (`params.yaml`: `train.budget: learn`, the default, gives every "
          "learned method of a protocol the same `train.learn_epochs`, except the methods of "
          "`train.learn_longer`, measured to need more; `smoke` trains one epoch, a check that "
          "they run, not a result)."]
    if any(lab.startswith("standin") for lab in labels):
        md += ["", "**These results come from the stand-in benchmark (simulated micro-expressions "
               "on real faces). They exercise the pipeline and say nothing about accuracy on the "
               "real databases; they are not comparable with the published numbers.**"]
    parts_html = []
    if len(au):
        header, rows = _au_cells(au)
        md += ["", f"## {au_title}", "", markdown_table(header, rows)]
        parts_html.append(f"<h2>{html.escape(au_title)}</h2>{_html_table(header, rows)}")
    if len(emo):
        header, rows = _emo_cells(emo)
        md += ["", f"## {emo_title}", "", markdown_table(header, rows)]
        parts_html.append(f"<h2>{html.escape(emo_title)}</h2>{_html_table(header, rows)}")
    verdicts = learning_verdicts(au, emo)
    if len(verdicts):
        note, header, rows = learning_cells(verdicts)
        title = f"Does each method learn? — {tag}"
        md += ["", f"## {title}", "", note, "", markdown_table(header, rows)]
        parts_html.append(f"<h2>{html.escape(title)}</h2><p>{html.escape(note)}</p>"
                          f"{_html_table(header, rows)}")
    mag = magnifier_cells(metrics_dir)
    if mag is not None:
        mag_title = ("Magnifiers: measured / expected amplification on held-out synthetic "
                     "translations (metrics/magnifier/detail.json)")
        md += ["", f"## {mag_title}", "", markdown_table(*mag)]
        parts_html.append(f"<h2>{html.escape(mag_title)}</h2>{_html_table(*mag)}")
    n_seeds = max([int(v) for t in (au, emo) if len(t) for v in t["n_seeds"]] or [1])
    if n_seeds > 1:
        seed_note = (f"Scores are means ± sample standard deviation over up to {n_seeds} training "
                     "seeds (`train.seeds`); ≈ marks a score below the best of its column (per "
                     "database and class count for LOSO) by less than the seed spread (the larger "
                     "of the two sds): that difference is not resolved.")
        md += ["", seed_note]
        parts_html.append(f"<p>{html.escape(seed_note)}</p>")
    absent = absent_class_folds(metrics_dir, [m for m, d in metrics.items()
                                              if d["task"] == "emotion"])
    if len(absent):
        title = ("LOSO folds whose training part lacks a class of their test part — "
                 f"{data_tag(emo['data'].tolist()) if len(emo) else tag}")
        note = ("These test samples cannot be classified right (the model never saw their class), "
                "and class-weighted training favours the classes rare in training: the scores of "
                "these tasks partly measure the label draw, not the method.")
        header = ["task", "fold (held-out subject)", "classes absent from training", "methods"]
        rows = [[r["task"], f"{r['fold']} ({r['held_out']})", r["classes"], r["methods"]]
                for _, r in absent.iterrows()]
        md += ["", f"## {title}", "", note, "", markdown_table(header, rows)]
        parts_html.append(f"<h2>{html.escape(title)}</h2><p>{html.escape(note)}</p>"
                          f"{_html_table(header, rows)}")
        log.warning("report: %d LOSO folds lack a test class in training", len(absent))
    sources = _sources(published)
    if sources:
        md += ["", "## Sources of the published numbers", ""] + [f"- {s}" for s in sources]
    md += ["", "## Figures", ""] + [f"![{f}](figures/{f})" for f in figure_files]
    with atomic_path(reports_dir / "report.md", suffix=".md") as tmp:
        tmp.write_text("\n".join(md) + "\n", encoding="utf-8")
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(tag)}</title><style>body{{font-family:sans-serif}}"
        "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #bbb;"
        "padding:2px 6px}</style></head><body>"
        f"<h1>Methods compared with the published numbers — {html.escape(tag)}</h1>"
        + "".join(parts_html)
        + ("<h2>Sources</h2><ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in sources)
           + "</ul>" if sources else "")
        + "".join(f"<p><img src='figures/{f}' style='max-width:100%'></p>" for f in figure_files)
        + "</body></html>")
    with atomic_path(reports_dir / "report.html", suffix=".html") as tmp:
        tmp.write_text(page, encoding="utf-8")

    summary: dict[str, Any] = {"data": sorted(set(labels)), "au": {}, "emotion": {}}
    for _, r in au.iterrows():
        summary["au"][r["method"]] = {"f1_mean": r["f1_mean"],
                                      "f1_database_mean": r["f1_database_mean"],
                                      "auc_mean": r["auc_mean"],
                                      "paper_f1_mean": r["paper_f1_mean"]}
        summary["au"][r["method"]].update({k: r[k] for k in ("f1_mean_sd", "f1_database_mean_sd",
                                                             "auc_mean_sd")
                                           if np.isfinite(r[k])})
    for _, r in emo.iterrows():
        entry = {k: r[k] for k in EMOTION_KEYS}
        entry.update({f"{k}_sd": r[f"{k}_sd"] for k in EMOTION_KEYS if np.isfinite(r[f"{k}_sd"])})
        entry.update({f"paper_{k}": r[f"paper_{k}"] for k in EMOTION_KEYS
                      if np.isfinite(r[f"paper_{k}"])})
        summary["emotion"].setdefault(r["method"], {})[r["result"]] = entry
    write_json(summary_path, summary)
    log.info("report: %d AU and %d emotion methods, %d figures (%s)", len(au),
             emo["method"].nunique() if len(emo) else 0, len(figure_files), tag)
    return summary

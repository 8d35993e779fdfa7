"""Publish a run's results as a committed page: ``docs/results.md``, written, never edited by hand.

    python -m pipeline.publish [--command "dvc repro"] [--out docs/results.md]

``reports/`` and ``metrics/`` are not in git, so a fresh clone has no results to read; this
command turns the outputs of a finished run into one Markdown page and one figure under ``docs/``
(issue #33).  The page holds, all read from files the pipeline wrote:

* a header: the commit the stages ran at (from their records, and whether tracked files differed
  from it), the date of the run (the report stage's finish time) and of publication, the machine (CPU model, logical cores, OS), the
  environment (Python and the versions of torch, numpy, scipy, scikit-learn, h5py, DVC), whether
  ``dvc status`` found every stage up to date, and the data label (STAND-IN and its profile, or
  real);
* the command that produced the run and the parameters that decide its numbers (``config``,
  ``seed``, ``train.budget``, ``train.seeds``, ``standin.profile``, ``data.source``);
* the key results: per CD6ME AU method F1 mean, per-database mean, AUC mean and n (the paper's F1
  mean beside it), per LOSO emotion method and task UF1, UAR and accuracy, the magnifiers' median
  measured/expected amplification per α (the tables come from :mod:`pipeline.reporting.report`);
* the stage-time table: each stage's wall time as the stage recorded it
  (``metrics/stages/<stage>.json``, ``metrics/<method>/stage.json``;
  :func:`pipeline.io.record_stage_time`);
* the methods × AUs heatmap of F1 and AUC (``reports/figures/au_heatmap.png``, copied to
  ``docs/figures/au_heatmap.png`` with a 256-colour palette, Pillow, to stay small).

Errors (one line, exit status 1): a missing metrics file or figure names the file and the stage
to run.  (Not under ``pipeline/reporting``, a dependency of the report stage: changing this page's
layout does not make a finished run out of date.)
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import logging
import os
import platform
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from pipeline.io import atomic_path, code_version, read_json, setup_logging
from pipeline.params import ParamsError, load, method_params, section
from pipeline.reporting.plots import data_tag
from pipeline.reporting.published import published_for
from pipeline.reporting.report import (
    AU_HEATMAP,
    ReportError,
    _epochs,
    _fmt,
    au_table,
    emotion_table,
    learning_cells,
    learning_verdicts,
    load_metrics,
    magnifier_cells,
    markdown_table,
)

log = logging.getLogger("publish")

__all__ = ["PACKAGES", "PublishError", "cpu_model", "environment", "publish", "stage_times"]

#: Distributions whose versions the header names.
PACKAGES: tuple[str, ...] = ("torch", "numpy", "scipy", "scikit-learn", "h5py", "dvc")


class PublishError(ValueError):
    """A run output the page needs is missing (the message names it and the stage to run)."""


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else :func:`platform.processor`)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def environment() -> dict[str, str]:
    """``{"python": …, "<package>": version | "not installed"}`` for :data:`PACKAGES`."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _dvc_status() -> str:
    """"every stage up to date", the stale stages, or why it could not be checked."""
    try:
        res = subprocess.run(["dvc", "status", "--json"], capture_output=True, text=True,
                             timeout=600)
        stale = json.loads(res.stdout or "{}") if res.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, json.JSONDecodeError):
        stale = None
    if stale is None:
        return "not checked (`dvc status` failed)"
    if not stale:
        return "every stage up to date (`dvc status`)"
    return f"**outputs not up to date** with the code and parameters: {', '.join(sorted(stale))}"


def stage_times(metrics_dir: str | os.PathLike) -> pd.DataFrame:
    """Each stage's recorded wall time (:func:`pipeline.io.record_stage_time`).

    Reads ``metrics/stages/*.json`` and ``metrics/*/stage.json``.

    Returns
    -------
    DataFrame
        Columns ``stage, wall_seconds, started_utc, finished_utc, git_commit, git_modified`` in
        order of start; empty when no stage recorded one.
    """
    metrics_dir = Path(metrics_dir)
    files = [*sorted((metrics_dir / "stages").glob("*.json")),
             *sorted(metrics_dir.glob("*/stage.json"))]
    rows = []
    for f in files:
        d = read_json(f)
        if isinstance(d, dict) and "wall_seconds" in d:
            rows.append({k: d.get(k) for k in ("stage", "wall_seconds", "started_utc",
                                               "finished_utc", "git_commit", "git_modified")})
    frame = pd.DataFrame(rows, columns=["stage", "wall_seconds", "started_utc", "finished_utc",
                                        "git_commit", "git_modified"])
    return frame.sort_values("started_utc", kind="stable").reset_index(drop=True)


def _duration(seconds: float) -> str:
    seconds = float(seconds)
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s:02d} s" if m else f"{seconds:.1f} s"


def _commits(times: pd.DataFrame) -> str:
    """The commit(s) the stages ran at, from their records; HEAD now when none recorded one."""
    recorded = times.dropna(subset=["git_commit"]) if len(times) else times
    if not len(recorded):
        now = code_version()
        return (f"`{now['git_commit']}` (now; the stages recorded none)" if now["git_commit"]
                else "unknown (not a git checkout)")
    parts = []
    for commit, group in recorded.groupby("git_commit", sort=False):
        modified = bool(group["git_modified"].fillna(False).astype(bool).any())
        parts.append(f"`{commit}`" + (" with uncommitted changes to tracked files"
                                      if modified else "")
                     + ("" if len(recorded) == len(group) else
                        f" ({len(group)} of {len(recorded)} stages)"))
    return "; ".join(parts)


def _run_parameters(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The parameters that decide a run's numbers, as YAML values (``null``, ``[0, 1]``)."""
    train = params.get("train") or {}
    values = [("config", params.get("config")), ("seed", params.get("seed")),
              ("data.source", (params.get("data") or {}).get("source")),
              ("standin.profile", (params.get("standin") or {}).get("profile")),
              ("train.budget", train.get("budget", "learn")), ("train.seeds", train.get("seeds"))]
    return [(k, json.dumps(v).strip('"')) for k, v in values]


def publish(metrics_dir: str | os.PathLike, reports_dir: str | os.PathLike,
            params_path: str | os.PathLike, out: str | os.PathLike, figure_out: str | os.PathLike,
            command: str, methods: Sequence[str] | None = None,
            check_status: bool = True, note: str | None = None) -> str:
    """Write the results page (module docstring) and copy its figure.

    Parameters
    ----------
    metrics_dir, reports_dir : path
        A finished run's ``metrics/`` and ``reports/``.
    params_path : path
        The ``params.yaml`` the run used.
    out : path
        The page (``docs/results.md``), written atomically.
    figure_out : path
        Where the heatmap is copied (``docs/figures/au_heatmap.png``); the page links to it
        relative to ``out``.
    command : str
        The command that produced the run, as the page states it.
    methods : sequence of str, optional
        Methods in table order (default: ``report.methods`` or every ``methods`` entry).
    check_status : bool
        Run ``dvc status`` and state whether every output is up to date.
    note : str, optional
        A sentence on the run's circumstances (e.g. other load on the machine), shown as such.

    Returns
    -------
    str
        The Markdown written.

    Raises
    ------
    PublishError
        If a method's metrics or the heatmap are missing.
    """
    metrics_dir, reports_dir, out, figure_out = (Path(p) for p in (metrics_dir, reports_dir,
                                                                   out, figure_out))
    params = load(params_path)
    if methods is None:
        options = section("report", params) if "report" in params else {}
        methods = list(options.get("methods") or (params.get("methods") or {}))
    try:
        metrics = load_metrics(metrics_dir, methods)
    except ReportError as exc:
        raise PublishError(str(exc)) from None
    heatmap = reports_dir / "figures" / AU_HEATMAP
    if not heatmap.is_file():
        raise PublishError(f"{heatmap}: not found (run `dvc repro report`)")
    published = {m: published_for(method_params(params, m).get("published")) for m in methods}
    au = au_table(metrics, published)
    emo = emotion_table(metrics, published)
    tag = data_tag([d["data"] for d in metrics.values()])
    times = stage_times(metrics_dir)
    report_time = times.loc[times["stage"] == "report", "finished_utc"]
    run_date = str(report_time.iloc[0]) if len(report_time) else "not recorded"
    commits = _commits(times)
    publisher = code_version()["git_commit"] or "unknown"
    env = environment()
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    md = ["# Results of a default run", "",
          "<!-- Generated by `python -m pipeline.publish`; do not edit by hand: run the "
          "pipeline, then the command again. -->", "",
          f"**Data: {tag}.**"]
    if "STAND-IN" in tag:
        md += ["", "These scores come from the stand-in benchmark (simulated micro-expressions on "
               "real face photos, docs/internals.md). They show that the pipeline runs and what "
               "each method learns of the stand-in; they say nothing about accuracy on the real "
               "databases and are not comparable with the published numbers beside them."]
    md += ["", "## How these numbers were produced", "",
           markdown_table(["", ""], [
               ["command", f"`{command}`, then `python -m pipeline.publish`"],
               ["commit", commits],
               ["page", f"written by `python -m pipeline.publish` at `{publisher}`"],
               ["run finished", f"{run_date} (report stage); page written {now}"],
               ["outputs", _dvc_status() if check_status else "not checked"],
               ["machine", f"{cpu_model()}, {os.cpu_count()} logical cores, "
                           f"{platform.system()} {platform.release()}"],
               ["environment", ", ".join(f"{k} {v}" for k, v in env.items())],
               *[[f"`{k}`", f"`{v}`"] for k, v in _run_parameters(params)]])]
    if note:
        md += ["", f"Note from the person who ran it: {note}"]

    if len(au):
        rows = [[r["method"], _epochs(r.get("epochs")), _fmt(r["f1_mean"]),
                 _fmt(r["f1_database_mean"]), _fmt(r["auc_mean"]), str(r["n_samples"]),
                 _fmt(r["paper_f1_mean"])] for _, r in au.iterrows()]
        md += ["", f"## CD6ME micro-AU detection — {data_tag(au['data'].tolist())}", "",
               "Binary F1 pooled over the six leave-one-database-out folds (`f1_mean`), the mean "
               "of the per-database F1 (`f1_database_mean`), ROC AUC of the pooled scores "
               "(`auc_mean`), from `metrics/<method>.json`; the paper's F1 mean was measured on "
               "the real databases.", "",
               markdown_table(["method", "epochs", "F1 mean", "per-database F1", "AUC mean", "n",
                               "paper F1 (real data)"], rows),
               "", f"![Methods × AUs: F1 and AUC]({os.path.relpath(figure_out, out.parent)})", "",
               "Per-AU F1 and AUC of every method (`reports/figures/au_heatmap.png`; per-AU "
               "numbers in `metrics/<method>/detail.json`)."]
    if len(emo):
        main_rows = emo[~emo["result"].str.contains("/", regex=False)]
        rows = [[r["method"], _epochs(r.get("epochs")), r["result"], str(r["n_samples"]),
                 _fmt(r["uf1"]), _fmt(r["uar"]), _fmt(r["accuracy"])] for _, r in main_rows.iterrows()]
        md += ["", f"## LOSO emotion recognition — {data_tag(emo['data'].tolist())}", "",
               "Leave-one-subject-out, predictions pooled over folds (`results.<task>` of "
               "`metrics/<method>.json`; per-database results of the composite task in "
               "`metrics/<method>/detail.json` and the report).", "",
               markdown_table(["method", "epochs", "task", "n", "UF1", "UAR", "accuracy"], rows)]
    verdicts = learning_verdicts(au, emo)
    if len(verdicts):
        note, header, rows = learning_cells(verdicts)
        md += ["", f"## Does each method learn? — {tag}", "", note, "",
               markdown_table(header, rows)]
    mag = magnifier_cells(metrics_dir)
    if mag is not None:
        md += ["", "## Magnifiers: median measured / expected amplification", "",
               "On held-out synthetic translations (`metrics/magnifier/detail.json`, the report's "
               "table: median with its IQR, PSNR).", "", markdown_table(*mag)]
    if len(times):
        rows = [[r["stage"], _duration(r["wall_seconds"]), str(r["finished_utc"])]
                for _, r in times.iterrows()]
        first, last = times["started_utc"].min(), times["finished_utc"].max()
        elapsed = (pd.Timestamp(last) - pd.Timestamp(first)).total_seconds()
        rows.append(["**sum of stages**", _duration(times["wall_seconds"].sum()), ""])
        md += ["", "## Stage times", "",
               f"Wall time of each stage as it recorded it (`metrics/stages/*.json`, "
               f"`metrics/<method>/stage.json`), in order of start; first start to last finish "
               f"{_duration(elapsed)}. Timings depend on the machine and on its other load "
               f"at the time.", "",
               markdown_table(["stage", "wall time", "finished (UTC)"], rows)]
    text = "\n".join(md) + "\n"
    figure_out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(figure_out, suffix=".png") as tmp:
        # a 256-colour palette keeps the committed copy small (the heatmap has few colours)
        with Image.open(heatmap) as img:
            img.convert("RGB").quantize(colors=256).save(tmp, format="PNG", optimize=True)
    with atomic_path(out, suffix=".md") as tmp:
        tmp.write_text(text, encoding="utf-8")
    log.info("wrote %s and %s (%d AU, %d emotion methods, %d stage times)", out, figure_out,
             len(au), emo["method"].nunique() if len(emo) else 0, len(times))
    return text


def main(argv: list[str] | None = None) -> int:
    """Command line (module docstring); 0 on success, 1 with a one-line error."""
    ap = argparse.ArgumentParser(prog="python -m pipeline.publish",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--metrics", default="metrics")
    ap.add_argument("--reports", default="reports")
    ap.add_argument("--out", default="docs/results.md")
    ap.add_argument("--figure", default="docs/figures/au_heatmap.png")
    ap.add_argument("--command", default="dvc repro",
                    help="the command that produced the run, as the page states it "
                         "(default: %(default)s)")
    ap.add_argument("--no-status", action="store_true", help="skip `dvc status`")
    ap.add_argument("--note", help="a sentence on the run's circumstances, shown under the header")
    args = ap.parse_args(argv)
    setup_logging()
    try:
        publish(args.metrics, args.reports, args.params, args.out, args.figure, args.command,
                check_status=not args.no_status, note=args.note)
    except (PublishError, ParamsError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

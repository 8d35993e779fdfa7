"""Repeated training seeds: mean and sd of every metric, per-seed files, the report's spread marks
and its flag on LOSO folds whose training part lacks a test class."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import training_synth
import yaml

from pipeline.io import write_json
from pipeline.reporting.report import absent_class_folds, write_report
from pipeline.training.data import read_samples
from pipeline.training.protocols import EMOTION_TASKS, Fold
from pipeline.training.run import classes_absent_from_training
from pipeline.training.seeds import SeedError, aggregate_seeds, resolve_seeds


def test_aggregate_is_generic_over_the_metric_dict():
    a = {"task": "au", "data": "standin-quick", "f1_mean": 0.2, "n_samples": 10,
         "f1_per_au": {"AU1": 0.1, "AU4": 0.5}, "auc_per_au": {"AU1": 0.6},
         "paper": {"f1_mean": 0.405}}
    b = {**a, "f1_mean": 0.4, "f1_per_au": {"AU1": 0.3, "AU4": 0.5}, "auc_per_au": {"AU1": 0.8},
         "paper": {"f1_mean": 0.405}}
    out = aggregate_seeds([a, b], [0, 7])
    assert out["f1_mean"] == pytest.approx(0.3)
    assert out["sd"]["f1_mean"] == pytest.approx(math.sqrt(0.02))        # ddof 1
    assert out["f1_per_au"] == pytest.approx({"AU1": 0.2, "AU4": 0.5})
    assert out["sd"]["f1_per_au"]["AU4"] == 0.0
    assert out["sd"]["auc_per_au"]["AU1"] == pytest.approx(math.sqrt(0.02))  # a field added later
    assert out["n_samples"] == 10 and isinstance(out["n_samples"], int) and "n_samples" not in out["sd"]
    assert out["paper"] == {"f1_mean": 0.405} and "paper" not in out["sd"]
    assert out["seeds"] == [0, 7] and out["task"] == "au"
    # one seed: the values as they are, no sd
    one = aggregate_seeds([a], [3])
    assert one == {**a, "seeds": [3]}
    # NaN of one seed is left out of the mean
    c = {**b, "f1_mean": float("nan")}
    assert aggregate_seeds([a, c], [0, 1])["f1_mean"] == pytest.approx(0.2)


def test_aggregate_and_seed_errors():
    with pytest.raises(SeedError, match="different keys"):
        aggregate_seeds([{"r": {"a": 1.0}}, {"r": {"b": 1.0}}], [0, 1])
    with pytest.raises(SeedError, match="differs across seeds"):
        aggregate_seeds([{"data": "standin-quick"}, {"data": "real"}], [0, 1])
    with pytest.raises(SeedError, match="2 results for 1 seeds"):
        aggregate_seeds([{}, {}], [0])
    assert resolve_seeds(None, 5) == [5]
    assert resolve_seeds([0, 1, 2], 5) == [0, 1, 2]
    for bad in ([], "0,1", [0, 0], [0.5], [True]):
        with pytest.raises(SeedError):
            resolve_seeds(bad, 0)


def test_absent_classes_of_a_fold():
    y = np.array([0, 0, 1, 2, 2, 1])
    fold = Fold(name="t__s", held_out="s", task="t", train=np.array([0, 1, 3]),
                test=np.array([2, 4, 5]))
    assert classes_absent_from_training(y, fold, fold.train, ("a", "b", "c")) == ["b"]
    assert classes_absent_from_training(y, fold, np.array([0, 2, 3]), ("a", "b", "c")) == []


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("seeds")
    csv, feats = training_synth.build(root, n_subjects=3, per_subject=4, size=16, seed=2)
    return read_samples(csv), feats


def test_stage_runs_every_seed_and_writes_mean_sd(synth, tmp_path, monkeypatch):
    from stages import train as train_stage

    samples, feats = synth
    params = {"config": "quick", "seed": 0, "data": {"source": "standin"},
              "standin": {"profile": "tiny"},
              "train": {"device": "cpu", "save_checkpoints": False, "seeds": [0, 1, 2]},
              "methods": {"prev": {"family": "constant", "rule": "prevalence", "task": "emotion",
                                   "protocol": "loso", "tasks": ["composite-3"]},
                          "maj": {"family": "constant", "rule": "majority", "task": "emotion",
                                  "protocol": "loso", "tasks": ["composite-3"], "seeds": None}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    samples.to_csv(tmp_path / "samples.csv", index=False)
    monkeypatch.chdir(tmp_path)
    for m in ("prev", "maj"):
        assert train_stage.main([m, "--samples", "samples.csv", "--features", str(feats)]) == 0
    out = json.loads(Path("metrics/prev.json").read_text())
    per_seed = [json.loads(Path(f"metrics/prev/seeds/{s}.json").read_text()) for s in (0, 1, 2)]
    uf1 = [p["results"]["composite-3"]["uf1"] for p in per_seed]
    assert out["seeds"] == [0, 1, 2]
    assert out["results"]["composite-3"]["uf1"] == pytest.approx(np.mean(uf1))
    assert out["sd"]["results"]["composite-3"]["uf1"] == pytest.approx(np.std(uf1, ddof=1))
    assert len(set(uf1)) > 1                      # the prevalence draws depend on the seed
    # the first seed keeps the single-run layout, the others their own folders
    assert Path("metrics/prev/predictions.csv").is_file()
    assert Path("metrics/prev/seeds/1/predictions.csv").is_file()
    assert Path("metrics/prev/seeds/2/folds").is_dir() and Path("models/prev/seed2").is_dir()
    # methods.<name>.seeds overrides train.seeds: one run, no sd
    maj = json.loads(Path("metrics/maj.json").read_text())
    assert maj["seeds"] == [0] and "sd" not in maj

    # the report: mean ± sd, ≈ where the difference is within the spread, summary sd
    summary = write_report("metrics", ["prev", "maj"], {}, "reports", "metrics/summary.json")
    md = Path("reports/report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| prev |")
               and "| composite |" in line)
    sd = out["sd"]["results"]["composite-3"]["uf1"]
    assert f"{out['results']['composite-3']['uf1']:.3f} ± {sd:.3f}" in row
    assert "training seeds" in md
    assert summary["emotion"]["prev"]["composite-3"]["uf1_sd"] == pytest.approx(sd)
    assert "uf1_sd" not in summary["emotion"]["maj"]["composite-3"]


def test_report_marks_differences_within_the_spread_and_absent_classes(tmp_path):
    metrics = tmp_path / "metrics"
    base = {"task": "emotion", "protocol": "loso", "data": "standin-quick"}
    res = {"accuracy": 0.5, "uar": 0.5, "n_samples": 30}
    write_json(metrics / "a.json", {**base, "results": {"smic-3": {**res, "uf1": 0.50}},
                                    "seeds": [0, 1], "sd": {"results": {"smic-3": {"uf1": 0.05}}}})
    write_json(metrics / "b.json", {**base, "results": {"smic-3": {**res, "uf1": 0.47}},
                                    "seeds": [0, 1], "sd": {"results": {"smic-3": {"uf1": 0.01}}}})
    write_json(metrics / "c.json", {**base, "results": {"smic-3": {**res, "uf1": 0.30}},
                                    "seeds": [0, 1], "sd": {"results": {"smic-3": {"uf1": 0.01}}}})
    classes = EMOTION_TASKS["smic-3"].classes
    write_json(metrics / "a" / "folds" / "smic-3__smic_s1.json", {
        **base, "fold": "smic-3__smic_s1", "held_out": "smic/s1",
        "results": {"smic-3": res}, "classes_absent_from_training": [classes[0]]})
    write_json(metrics / "a" / "folds" / "smic-3__smic_s2.json", {
        **base, "fold": "smic-3__smic_s2", "held_out": "smic/s2",
        "results": {"smic-3": res}, "classes_absent_from_training": []})
    absent = absent_class_folds(metrics, ["a", "b", "c"])
    assert absent.to_dict("records") == [{"task": "smic-3", "fold": "smic-3__smic_s1",
                                          "held_out": "smic/s1", "classes": classes[0],
                                          "methods": "a"}]
    write_report(metrics, ["a", "b", "c"], {}, tmp_path / "reports", tmp_path / "summary.json")
    md = (tmp_path / "reports" / "report.md").read_text()
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| method |"))
    uf1 = [c.strip() for c in header.strip("|").split("|")].index("UF1 (ours / paper)")

    def uf1_cell(method: str) -> str:
        row = next(line for line in lines if line.startswith(f"| {method} |"))
        return [c.strip() for c in row.strip("|").split("|")][uf1]

    assert uf1_cell("b") == "0.470 ± 0.010 ≈ / –"  # 0.03 below the best, spread 0.05
    assert uf1_cell("a") == "0.500 ± 0.050 / –"    # the best itself: no mark
    assert uf1_cell("c") == "0.300 ± 0.010 / –"    # 0.20 below: resolved
    assert "lacks a class of their test part" in md and "smic-3__smic_s1 (smic/s1)" in md

"""The report stage: tables with published numbers, stand-in labelling, figures, summary."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
import training_synth
import yaml

from pipeline.io import write_json
from pipeline.reporting.published import PUBLISHED, published_for
from pipeline.reporting.report import ReportError, write_report
from pipeline.training.data import read_samples
from pipeline.training.protocols import CD6ME_AUS
from pipeline.training.seeds import run_method_seeds

METHODS = {
    "constant_positive": ({"family": "constant", "rule": "all_positive", "task": "au",
                           "protocol": "cd6me"}, None),
    "sssnet": ({"family": "constant", "rule": "prevalence", "task": "au", "protocol": "cd6me"},
               "sssnet_cd6me"),
    "majority_loso": ({"family": "constant", "rule": "majority", "task": "emotion",
                       "protocol": "loso"}, "gam_mm_mer_loso"),
}


@pytest.fixture(scope="module")
def metrics_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    csv, feats = training_synth.build(root / "data", n_subjects=3, per_subject=3, size=16)
    samples = read_samples(csv)
    out = root / "metrics"
    for name, (params, _) in METHODS.items():
        run_method_seeds(name, params, samples, feats, root / "models" / name, out / name,
                         out / f"{name}.json", "standin-quick", [0])
    # training curves of a trained method (two folds, three epochs)
    pd.DataFrame({"fold": ["casme"] * 3 + ["samm"] * 3, "epoch": [1, 2, 3] * 2,
                  "train_loss": [0.7, 0.5, 0.4, 0.8, 0.6, 0.5], "lr": 1e-3}).to_csv(
        out / "sssnet" / "curves.csv", index=False)
    # and its training budget (run_method writes "epochs" for trained methods only); the report
    # reads the full record, metrics/<method>/detail.json
    ours = json.loads((out / "sssnet" / "detail.json").read_text())
    write_json(out / "sssnet" / "detail.json", {**ours, "epochs": 6})
    return out


def _write(metrics_dir: Path, tmp_path: Path):
    keys = {m: pub for m, (_, pub) in METHODS.items()}
    return write_report(metrics_dir, list(METHODS), keys, tmp_path / "reports",
                        tmp_path / "summary.json")


def test_report_tables_figures_and_summary(metrics_dir, tmp_path):
    summary = _write(metrics_dir, tmp_path)
    reports = tmp_path / "reports"
    md = (reports / "report.md").read_text()
    # every title says stand-in
    titles = [line for line in md.splitlines() if line.startswith("#")]
    assert all("STAND-IN" in t for t in titles if not t.startswith("## Sources")
               and not t.startswith("## Figures"))
    assert "not comparable with the published numbers" in md
    # ours and the paper's side by side (SSSNet: published CD6ME average 0.405, AU4 0.875)
    ours = json.loads((metrics_dir / "sssnet" / "detail.json").read_text())
    row = next(line for line in md.splitlines() if line.startswith("| sssnet |"))
    assert f"{ours['f1_mean']:.3f} / 0.405" in row
    # the training budget after the data label, "–" for a constant predictor
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:3] == ["standin-quick", "6"]
    constant = next(line for line in md.splitlines() if line.startswith("| constant_positive |"))
    assert [c.strip() for c in constant.strip("|").split("|")][2] == "–"
    # the AUC beside the F1 (ours only): the cell after the per-database mean
    assert cells[5] == f"{ours['auc_mean']:.3f}"
    assert cells[7].endswith(f", {ours['auc_per_au']['AU1']:.3f}")
    assert "/ 0.875" in row
    assert "Khor et al., SCIA 2025, Table 1" in md
    emo_rows = [line for line in md.splitlines() if line.startswith("| majority_loso |")]
    assert len(emo_rows) == 9  # 6 tasks + composite per database
    assert any("casme2 | 5 |" in r and "/ 0.861" in r for r in emo_rows)  # GAM-MM-MER 86.09
    assert "STAND-IN" in (reports / "report.html").read_text()
    # figures: real PNGs
    figs = sorted(p.name for p in (reports / "figures").glob("*.png"))
    assert figs == ["au_heatmap.png", "confusion_majority_loso.png", "curves_sssnet.png"]
    for f in figs:
        img = mpimg.imread(reports / "figures" / f)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    # the methods × AUs heatmap reads at page width (the grouped bars were 4,324 px wide)
    heat = mpimg.imread(reports / "figures" / "au_heatmap.png")
    assert 800 < heat.shape[1] <= 1300 and heat.shape[0] < heat.shape[1]
    # plot data for dvc
    wide = pd.read_csv(reports / "au_f1.csv")
    assert list(wide["au"]) == list(CD6ME_AUS)
    assert list(wide.columns[1:]) == ["constant_positive", "sssnet"]
    assert wide["sssnet"].tolist() == pytest.approx([ours["f1_per_au"][a] for a in CD6ME_AUS],
                                                    abs=1e-6)
    emo = pd.read_csv(reports / "emotion.csv")
    assert set(emo["result"]) >= {"casme2-5", "composite-3/samm"}
    # summary for dvc metrics
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["data"] == ["standin-quick"]
    assert written["au"]["sssnet"]["paper_f1_mean"] == pytest.approx(0.405)
    assert written["au"]["constant_positive"]["paper_f1_mean"] is None
    assert written["emotion"]["majority_loso"]["casme2-3"]["paper_uf1"] == pytest.approx(0.9122)
    assert summary["au"]["sssnet"]["f1_mean"] == pytest.approx(ours["f1_mean"])
    assert written["au"]["sssnet"]["auc_mean"] == pytest.approx(ours["auc_mean"])


def test_real_data_is_not_labelled_stand_in(tmp_path):
    metrics = tmp_path / "metrics"
    write_json(metrics / "a.json", {
        "task": "au", "protocol": "cd6me", "data": "real", "f1_mean": 0.4,
        "f1_per_au": {a: 0.4 for a in CD6ME_AUS}, "f1_per_database": {"casme": 0.4},
        "f1_database_mean": 0.4, "n_samples": 10})
    write_report(metrics, ["a"], {"a": None}, tmp_path / "r", tmp_path / "s.json")
    md = (tmp_path / "r" / "report.md").read_text()
    assert "STAND-IN" not in md and "real data" in md
    # a metrics file without the epochs and AUC fields (written before them) shows "–"
    row = next(line for line in md.splitlines() if line.startswith("| a |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "–" and cells[5] == "–"


def test_missing_or_malformed_metrics_named(tmp_path):
    with pytest.raises(ReportError, match=r"nope\.json.*dvc repro train@nope"):
        write_report(tmp_path, ["nope"], {}, tmp_path / "r", tmp_path / "s.json")
    write_json(tmp_path / "bad.json", {"task": "au", "data": "real"})
    with pytest.raises(ReportError, match=r"bad\.json: missing fields"):
        write_report(tmp_path, ["bad"], {}, tmp_path / "r", tmp_path / "s.json")


def test_published_numbers_are_consistent():
    for key, pub in PUBLISHED.items():
        assert pub.source, key
        if pub.task == "au":
            assert pub.f1_mean is not None, key
        if pub.task == "au" and pub.f1_per_au:  # (InfuseNet Table 3 prints averages only)
            assert set(pub.f1_per_au) == set(CD6ME_AUS), key
            # the printed average is the mean of the printed per-AU values (rounding)
            assert np.mean(list(pub.f1_per_au.values())) == pytest.approx(pub.f1_mean, abs=6e-4)
        for res in pub.results.values():
            assert all(0 < v < 1 for v in res.values())
    assert published_for(None) is None
    with pytest.raises(KeyError, match="known"):
        published_for("nope")


def test_report_stage_cli(metrics_dir, tmp_path, monkeypatch):
    from stages import report as report_stage

    params = {"config": "quick", "methods": {m: {**p, **({"published": k} if k else {})}
                                             for m, (p, k) in METHODS.items()},
              "report": {"methods": None}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    assert report_stage.main(["--metrics", str(metrics_dir), "--reports", "reports"]) == 0
    assert Path("reports/report.md").is_file() and (metrics_dir / "summary.json").is_file()


def test_report_shows_the_magnifier_verification_table(tmp_path):
    from pipeline.io import write_json
    from pipeline.reporting.report import ReportError, magnifier_cells

    assert magnifier_cells(tmp_path) is None
    entry = {f"alpha{a}": {"ratio_median": r, "ratio_iqr": 0.1, "psnr": 30.0}
             for a, r in ((5, 0.95), (10, 0.9), (20, 0.7))}
    write_json(tmp_path / "magnifier.json", {
        "verification": {"alphas": [5, 10, 20], "target": {"ratio_range": [0.8, 1.2]}},
        "oh": entry, "eulerian": {**entry, "alpha20": {**entry["alpha20"], "ratio_median": 1.0}}})
    header, rows = magnifier_cells(tmp_path)
    assert header[1].startswith("α = 5") and header[-1] == "all in [0.8, 1.2]"
    assert rows[0] == ["oh", "0.950 (0.100), 30.0 dB", "0.900 (0.100), 30.0 dB",
                       "0.700 (0.100), 30.0 dB", "no"]
    assert rows[1][0] == "eulerian" and rows[1][-1] == "yes"
    write_json(tmp_path / "magnifier.json", {"verification": {}})
    with pytest.raises(ReportError, match="malformed magnifier metrics"):
        magnifier_cells(tmp_path)


def test_publish_writes_the_results_page_from_the_run(metrics_dir, tmp_path):
    import numpy
    import sklearn
    from PIL import Image

    from pipeline.publish import PublishError, cpu_model, publish

    params = {"config": "quick", "seed": 0, "data": {"source": "standin"},
              "standin": {"profile": "quick"}, "train": {"budget": "learn", "seeds": None},
              "methods": {m: {**p, **({"published": k} if k else {})}
                          for m, (p, k) in METHODS.items()}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out, figure = tmp_path / "docs" / "results.md", tmp_path / "docs" / "figures" / "h.png"
    args = (metrics_dir, tmp_path / "reports", tmp_path / "params.yaml", out, figure, "dvc repro")
    with pytest.raises(PublishError, match=r"au_heatmap\.png: not found.*dvc repro report"):
        publish(*args, check_status=False)
    _write(metrics_dir, tmp_path)
    stages = metrics_dir / "stages"
    write_json(stages / "faces.json", {"stage": "faces", "wall_seconds": 125.0,
                                       "started_utc": "2026-01-01T10:00:00Z",
                                       "finished_utc": "2026-01-01T10:02:05Z",
                                       "git_commit": "a" * 40, "git_modified": False})
    write_json(stages / "report.json", {"stage": "report", "wall_seconds": 4.0,
                                        "started_utc": "2026-01-01T10:05:00Z",
                                        "finished_utc": "2026-01-01T10:05:04Z",
                                        "git_commit": "a" * 40, "git_modified": False})
    md = publish(*args, check_status=False, note="shared machine")
    assert out.read_text() == md
    # the committed copy: the same picture in a palette (a few colour steps at most)
    original = mpimg.imread(tmp_path / "reports" / "figures" / "au_heatmap.png")[..., :3]
    copy = np.asarray(Image.open(figure).convert("RGB"), dtype=float) / 255
    assert copy.shape == original.shape and np.abs(copy - original).mean() < 0.01
    assert figure.stat().st_size < 200_000
    assert "do not edit by hand" in md and "STAND-IN" in md and "shared machine" in md
    assert f"`{'a' * 40}`" in md and "uncommitted" not in md
    assert "2026-01-01T10:05:04Z (report stage)" in md
    assert cpu_model() in md and f"numpy {numpy.__version__}" in md
    assert f"scikit-learn {sklearn.__version__}" in md and "h5py " in md and "torch " in md
    assert "| `standin.profile` | `quick` |" in md and "| `train.budget` | `learn` |" in md
    assert "| `train.seeds` | `null` |" in md
    # the headline numbers of metrics/<method>.json, the paper's beside them
    head = json.loads((metrics_dir / "sssnet.json").read_text())
    row = next(line for line in md.splitlines() if line.startswith("| sssnet |"))
    assert row.split(" | ")[2:5] == [f"{head['f1_mean']:.3f}", f"{head['f1_database_mean']:.3f}",
                                     f"{head['auc_mean']:.3f}"] and row.endswith("| 0.405 |")
    emo = json.loads((metrics_dir / "majority_loso.json").read_text())["results"]
    emo_rows = [line for line in md.splitlines() if line.startswith("| majority_loso |")]
    assert len(emo_rows) == len(emo) == 6                  # the tasks, not the breakdowns
    assert f"| {emo['casme2-5']['uf1']:.3f} |" in next(r for r in emo_rows if "casme2-5" in r)
    # stage times in order of start, their sum, first start to last finish
    assert "| faces | 2 min 05 s |" in md and "| report | 4.0 s |" in md
    assert "| **sum of stages** | 2 min 09 s |" in md and "last finish 5 min 04 s" in md
    assert "](figures/h.png)" in md


def test_heatmap_colours_a_zero_f1_and_leaves_a_missing_auc_grey(tmp_path):
    from pipeline.reporting.plots import plot_au_heatmap

    f1 = {"a": {au: 0.0 for au in CD6ME_AUS}}
    auc = {"a": {au: (None if au == "AU1" else 1.0) for au in CD6ME_AUS}}
    img = mpimg.imread(plot_au_heatmap(f1, auc, CD6ME_AUS, "t", tmp_path / "h.png"))[..., :3]
    pixels = img.reshape(-1, 3).astype(float)

    def count(colour) -> int:
        return int((np.abs(pixels - np.asarray(colour[:3])).max(axis=1) < 0.01).sum())

    viridis = matplotlib.colormaps["viridis"]
    # F1 0 is dark purple (11 AUs + the mean), AUC 1 yellow, the AU without an AUC grey
    assert count(viridis(0.0)) > 11 * count((0.933, 0.933, 0.933)) > 0
    assert count(viridis(1.0)) > 10 * count((0.933, 0.933, 0.933))


def test_learning_verdicts_compare_each_learned_method_with_the_best_constant():
    """The "does each method learn?" table: constants have no epochs; the bar is the best
    constant's score plus the margin (CD6ME with the AUC floor too), on composite-3 for LOSO."""
    from pipeline.reporting.report import MARGIN_F1, MARGIN_UF1, learning_verdicts

    au = pd.DataFrame({"method": ["c_pos", "c_prev", "good", "lucky_f1", "ranks", "flat"],
                       "epochs": [None, None, 8, 8, 8, 8],
                       "f1_mean": [0.179, 0.114, 0.30, 0.30, 0.20, 0.179 + MARGIN_F1],
                       "auc_mean": [0.5, 0.4, 0.75, 0.55, 0.80, 0.60]})
    emo = pd.DataFrame({"method": ["c_maj", "c_prev", "m", "m", "n"],
                        "epochs": [None, None, 8, 8, 8],
                        "result": ["composite-3"] * 3 + ["casme2-5", "composite-3"],
                        "uf1": [0.257, 0.348, 0.40, 0.90, 0.348 + MARGIN_UF1 - 0.001]})
    v = learning_verdicts(au, emo).set_index("method")
    assert list(v.index) == ["good", "lucky_f1", "ranks", "flat", "m", "n"]
    assert v["best_constant"].tolist() == ["c_pos"] * 4 + ["c_prev"] * 2
    assert v.loc["good", "bar"] == pytest.approx(0.229)
    assert v.loc["m", "bar"] == pytest.approx(0.398)
    # F1 without ranking, ranking without F1, and both at the bar exactly
    assert v["learns"].to_dict() == {"good": True, "lucky_f1": False, "ranks": False,
                                     "flat": True, "m": True, "n": False}
    # the casme2-5 score of "m" is not what the LOSO verdict reads
    assert v.loc["m", "score"] == pytest.approx(0.40)
    # no constant to compare with: no verdict
    assert learning_verdicts(au[au["epochs"].notna()], emo[emo["epochs"].notna()]).empty


def test_report_says_which_methods_learn(metrics_dir, tmp_path):
    _write(metrics_dir, tmp_path)
    md = (tmp_path / "reports" / "report.md").read_text()
    assert "## Does each method learn? — STAND-IN" in md
    row = next(line for line in md.splitlines() if line.startswith("| sssnet | cd6me |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # the fixture's "sssnet" is a prevalence draw given epochs: it is judged, and at the floor
    assert cells[5] == "constant_positive" and cells[6] == "**no**"
    assert "0 of 1 learned methods do." in md

"""The files DVC declares as metrics hold the headline numbers only (issue #33, ARCHITECTURE.md
"Metrics files"); the detail lives beside them, and every stage records its wall time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import training_synth
import yaml

from pipeline.magnification.train import magnifier_headline
from pipeline.params import load, method_params
from pipeline.training.data import read_samples
from pipeline.training.protocols import CD6ME_AUS, EMOTION_TASKS
from pipeline.training.seeds import headline_metrics

ROOT = Path(__file__).resolve().parents[1]
#: Issue #33: the declared metrics of a whole default run fit `dvc exp show` (1,318 before).
MAX_DECLARED_NUMBERS = 400


def leaves(obj) -> list:
    """Every leaf of a JSON value (a list's items count one by one, as DVC flattens them)."""
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in leaves(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in leaves(v)]
    return [obj]


def numbers(obj) -> int:
    return sum(isinstance(v, int | float) and not isinstance(v, bool) for v in leaves(obj))


@pytest.fixture(scope="module")
def stage_run(tmp_path_factory):
    """`python -m stages.train` of one AU and one emotion method (every LOSO task), two seeds."""
    from stages import train as train_stage

    root = tmp_path_factory.mktemp("layout")
    csv, feats = training_synth.build(root / "data", n_subjects=3, per_subject=3, size=16)
    params = {"config": "quick", "seed": 0, "data": {"source": "standin"},
              "standin": {"profile": "tiny"},
              "train": {"device": "cpu", "save_checkpoints": False, "seeds": [0, 1]},
              "methods": {"prev": {"family": "constant", "rule": "prevalence", "task": "au",
                                   "protocol": "cd6me", "published": "sssnet_cd6me"},
                          "emo": {"family": "constant", "rule": "prevalence",
                                  "task": "emotion", "protocol": "loso"}}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    read_samples(csv).to_csv(root / "samples.csv", index=False)
    for m in ("prev", "emo"):
        assert train_stage.main([m, "--params", str(root / "params.yaml"), "--samples",
                                 str(root / "samples.csv"), "--features", str(feats),
                                 "--models", str(root / "models"),
                                 "--metrics", str(root / "metrics")]) == 0
    return root / "metrics"


def test_au_headline_keys_and_detail(stage_run):
    head = json.loads((stage_run / "prev.json").read_text())
    detail = json.loads((stage_run / "prev" / "detail.json").read_text())
    assert set(head) == {"task", "protocol", "data", "f1_mean", "auc_mean", "f1_database_mean",
                         "n_samples", "seeds", "sd"}
    assert set(head["sd"]) == {"f1_mean", "auc_mean", "f1_database_mean"}
    # the same numbers under the same keys as the full record
    for k in ("f1_mean", "auc_mean", "f1_database_mean", "n_samples"):
        assert head[k] == detail[k]
    assert head["sd"]["f1_mean"] == detail["sd"]["f1_mean"]
    # the detail keeps per-AU, per-database, their sds and the published block
    assert set(detail["f1_per_au"]) == set(CD6ME_AUS) == set(detail["auc_per_au"])
    assert len(detail["f1_per_database"]) == 6 and "AU4" in detail["sd"]["f1_per_au"]
    assert detail["paper"]["f1_mean"] == pytest.approx(0.405)
    assert numbers(head) == 4 + 2 + 3          # headline, two seeds, three sds
    assert numbers(detail) > 5 * numbers(head)


def test_emotion_headline_keys(stage_run):
    head = json.loads((stage_run / "emo.json").read_text())
    detail = json.loads((stage_run / "emo" / "detail.json").read_text())
    assert set(head) == {"task", "protocol", "data", "results", "seeds", "sd"}
    assert set(head["results"]) == set(EMOTION_TASKS)          # no composite-3/<db> breakdowns
    assert any("/" in k for k in detail["results"])
    for task, r in head["results"].items():
        assert set(r) == {"uf1", "uar", "accuracy"}
        assert r["uf1"] == detail["results"][task]["uf1"]      # results.<task>.uf1 as before
    assert numbers(head) == 2 * 3 * len(EMOTION_TASKS) + 2
    assert head == headline_metrics(detail)


def test_stage_records_its_wall_time_beside_the_metrics(stage_run):
    rec = json.loads((stage_run / "prev" / "stage.json").read_text())
    assert rec["stage"] == "train@prev" and rec["seeds"] == [0, 1]
    assert 0 <= rec["wall_seconds"] < 3600 and rec["finished_utc"] >= rec["started_utc"]


def test_magnifier_headline_keeps_ratio_medians_only():
    alpha = {"ratio_median": 0.9, "ratio_iqr": 0.1, "psnr": 30.0, "ssim": 0.9, "n": 64,
             "angle_error_deg_median": 2.0}
    full = {"data": "synthetic", "config": "quick", "device": "cpu", "init": "shipped",
            "verification": {"alphas": [5.0, 10.0], "pairs_per_alpha": 64},
            "oh": {"alpha5": alpha, "alpha10": alpha, "arch": {"channels": 16},
                   "train": {"iterations": 0}, "alpha1_psnr_vs_b": 33.0,
                   "meets_target_all_alphas": True, "meets_target": True},
            "eulerian": {"alpha5": alpha, "alpha10": alpha, "levels": 5,
                         "meets_target_all_alphas": False}}
    head = magnifier_headline(full)
    assert head == {"data": "synthetic", "config": "quick", "init": "shipped",
                    "oh": {"alpha5": {"ratio_median": 0.9}, "alpha10": {"ratio_median": 0.9},
                           "meets_target_all_alphas": True},
                    "eulerian": {"alpha5": {"ratio_median": 0.9},
                                 "alpha10": {"ratio_median": 0.9},
                                 "meets_target_all_alphas": False}}


def _declared_metrics(dvc: dict) -> list[str]:
    out = []
    for stage in dvc["stages"].values():
        keys = list(stage["foreach"]) if "foreach" in stage else [None]
        body = stage["do"] if "foreach" in stage else stage
        for entry in body.get("metrics", []):
            path = next(iter(entry)) if isinstance(entry, dict) else entry
            out += [path.replace("${key}", k) if k else path for k in keys]
    return out


def test_default_run_declares_at_most_400_numbers(stage_run):
    """The declared metrics of a whole default `dvc repro`, from the stage-level run above: every
    train@<method> declares the headline of its task, the magnifier its ratio medians."""
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    declared = _declared_metrics(dvc)
    assert "metrics/summary.json" not in declared            # it repeats every headline
    params = load(ROOT / "params.yaml")
    au = json.loads((stage_run / "prev.json").read_text())
    emo = json.loads((stage_run / "emo.json").read_text())
    # one seed (the default train.seeds: null) and a trained method's "epochs"
    au_numbers = numbers({**au, "sd": None, "seeds": [0]}) + 1
    emo_numbers = numbers({**emo, "sd": None, "seeds": [0]}) + 1
    assert au_numbers == 6 and emo_numbers == 3 * len(EMOTION_TASKS) + 2
    total = 0
    for path in declared:
        name = Path(path).stem
        if name == "magnifier":
            alphas = params["magnifier"]["verify"]["alphas"]
            full = {k: {f"alpha{a}": {"ratio_median": 1.0, "psnr": 30.0} for a in alphas}
                    for k in ("oh", "stmemm", "eulerian")}
            total += len(leaves(magnifier_headline(full)))
            continue
        m = method_params(params, name)
        if m["task"] == "au":
            total += au_numbers
        else:
            n_tasks = len(m.get("tasks") or EMOTION_TASKS)
            total += 3 * n_tasks + 2
    assert len(declared) == len(params["methods"]) + 1
    print("declared numbers of a default run:", total)
    assert total <= MAX_DECLARED_NUMBERS


def test_code_version_counts_only_what_a_run_executes(tmp_path, monkeypatch):
    import subprocess

    from pipeline.io import code_version

    monkeypatch.chdir(tmp_path)
    assert code_version() == {"git_commit": None, "git_modified": None}   # not a checkout
    for rel in ("pipeline/x.py", "docs/a.md", "tests/test_x.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("1\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert code_version() == {"git_commit": head, "git_modified": False}
    (tmp_path / "docs/a.md").write_text("2\n")
    (tmp_path / "tests/test_x.py").write_text("2\n")
    (tmp_path / "pipeline/new.py").write_text("untracked\n")
    assert code_version()["git_modified"] is False
    (tmp_path / "pipeline/x.py").write_text("2\n")
    assert code_version() == {"git_commit": head, "git_modified": True}
